// The envelope: the messaging contract's optional header extension (docs/messaging.md).
//
// The fixed 48-byte frame header (message id, schema id, producer, sequence, time) is
// not grown for everyone. A message that needs correlation / causation ids, a W3C
// trace context, a reply-to topic, a content version or a reply status is published
// as a Cap'n Proto `Envelope` (lib/schema/envelope.capnp) around its payload; the
// frame's schema id is the Envelope's type id, which is how a reader knows.
//
//   shmbus::Envelope e;
//   e.correlation_id = 42;
//   e.trace = shmbus::TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").value();
//   shmbus::publish_enveloped(pub, e, bytes, /*message_id=*/7, capnp::typeId<Order>());
//
//   shmbus::EnvelopedView ev;
//   if (ev.open(view) == shmbus::Status::ok) {
//     ev.envelope().correlation_id; ev.payload().schema_id();  // the payload's own type id
//   }
//
// Reading: the envelope's fields are copied out and validated once (ring bytes are
// untrusted); the payload view points into the frame (no copy), with the frame's
// header fields except its schema id, which is the payload's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <capnp/message.h>

#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus {

// The Envelope's Cap'n Proto type id: the frame schema id that flags an envelope.
uint64_t envelope_schema_id();

// W3C Trace Context, `traceparent` version 00.
struct TraceContext {
  uint64_t trace_hi = 0, trace_lo = 0;  // the 128-bit trace id
  uint64_t parent_id = 0;               // the sender's span id
  uint8_t flags = 0;                    // 0x01: sampled
  std::string state;                    // `tracestate`, verbatim (<= 512 bytes)

  // Both ids non-zero (the W3C rule for a valid traceparent).
  bool valid() const { return (trace_hi | trace_lo) != 0 && parent_id != 0; }
  // "00-<32 hex>-<16 hex>-<2 hex>", lower-case hex; nullopt if malformed or all-zero ids.
  static std::optional<TraceContext> parse(std::string_view traceparent);
  std::string traceparent() const;
  // A new trace with random ids (sampled).
  static TraceContext fresh();
  // The same trace, a new random span id (what a handler puts on what it sends).
  TraceContext child() const;
};

struct Envelope {
  uint64_t correlation_id = 0;
  uint64_t causation_id = 0;
  std::string reply_to;  // a topic name, <= 255 bytes
  TraceContext trace;    // not sent when !trace.valid()
  uint32_t content_version = 0;
  uint32_t status = 0;  // replies: the application's status (0: ok)
};

// Limits a reader enforces on what it copies out of the ring.
inline constexpr size_t kMaxReplyTo = 255;
inline constexpr size_t kMaxTraceState = 512;

// Publishes `payload` (any bytes, or a flat Cap'n Proto message of type
// payload_schema_id) inside an Envelope, built in place in the ring (one copy of the
// payload, as offer()). The frame's message id is message_id, its schema id the
// Envelope's.
Status publish_enveloped(Publisher& pub, const Envelope& env, std::span<const std::byte> payload,
                         uint64_t message_id = 0, uint64_t payload_schema_id = 0);
// Same for a message built anywhere (serialized flat into the envelope).
Status publish_enveloped(Publisher& pub, const Envelope& env, capnp::MessageBuilder& payload,
                         uint64_t message_id = 0, uint64_t payload_schema_id = 0);

// The envelope of a frame, read once and validated. Not copyable or movable: payload()
// points at a header kept inside it. A frame that is not an envelope opens as itself
// (enveloped() false, payload() the frame).
class EnvelopedView {
 public:
  EnvelopedView() = default;
  EnvelopedView(const EnvelopedView&) = delete;
  EnvelopedView& operator=(const EnvelopedView&) = delete;

  // ok, or malformed (an envelope schema id over bytes that are not a valid Envelope,
  // or over-long reply-to / tracestate). Never throws.
  Status open(const View& v) noexcept;
  bool enveloped() const { return enveloped_; }
  const Envelope& envelope() const { return env_; }
  // The payload: in the frame's memory; header as the frame's, schema id the payload's.
  const View& payload() const { return payload_; }
  // The frame itself.
  const View& frame() const { return frame_; }

 private:
  View frame_, payload_;
  shm::FrameHeader hdr_{};
  Envelope env_;
  bool enveloped_ = false;
};

// The envelope as one JSON object ({"correlationId":"…","traceparent":"00-…",...}),
// 64-bit ids as strings like Cap'n Proto's JSON. Used by `shmbus tail/replay`.
std::string envelope_json(const Envelope& e, uint64_t payload_schema_id);

}  // namespace shmbus
