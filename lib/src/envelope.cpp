// The envelope (docs/messaging.md): publishing in place, reading once, validated.
#include "shmbus/envelope.hpp"

#include <capnp/serialize.h>
#include <sys/random.h>

#include <cstring>

#include "envelope.capnp.h"
#include "shmbus/message.hpp"

namespace shmbus {

uint64_t envelope_schema_id() { return capnp::typeId<schema::Envelope>(); }

namespace {

uint64_t random64() {
  uint64_t v = 0;
  while (v == 0) {
    if (getrandom(&v, sizeof v, 0) != ssize_t(sizeof v)) {
      timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      v = uint64_t(ts.tv_nsec) * 0x9E3779B97F4A7C15ull ^ uint64_t(ts.tv_sec);
    }
  }
  return v;
}

bool hex(std::string_view s, uint64_t& out) {
  out = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return false;  // W3C: lower-case only
    out = (out << 4) | uint64_t(d);
  }
  return true;
}

void put_hex(std::string& o, uint64_t v, int digits) {
  static const char* d = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) o += d[(v >> (4 * i)) & 15];
}

size_t align8(size_t n) { return (n + 7) & ~size_t(7); }

void fill(schema::Envelope::Builder b, const Envelope& env, uint64_t payload_schema_id) {
  b.setPayloadSchemaId(payload_schema_id);
  b.setCorrelationId(env.correlation_id);
  b.setCausationId(env.causation_id);
  if (!env.reply_to.empty()) b.setReplyTo(env.reply_to);
  b.setContentVersion(env.content_version);
  b.setStatus(env.status);
  if (env.trace.valid()) {
    auto t = b.initTrace();
    t.setTraceIdHigh(env.trace.trace_hi);
    t.setTraceIdLow(env.trace.trace_lo);
    t.setParentId(env.trace.parent_id);
    t.setFlags(env.trace.flags);
    if (!env.trace.state.empty()) t.setTraceState(env.trace.state);
  }
}

bool check_limits(const Envelope& env) {
  return env.reply_to.size() <= kMaxReplyTo && env.trace.state.size() <= kMaxTraceState;
}

std::string jstr(std::string_view s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += char(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += char(c);
    }
  }
  return o + "\"";
}

}  // namespace

std::optional<TraceContext> TraceContext::parse(std::string_view s) {
  // 00-<32>-<16>-<2>: 55 characters.
  if (s.size() != 55 || s.substr(0, 3) != "00-" || s[35] != '-' || s[52] != '-') return std::nullopt;
  TraceContext t;
  uint64_t f = 0;
  if (!hex(s.substr(3, 16), t.trace_hi) || !hex(s.substr(19, 16), t.trace_lo) ||
      !hex(s.substr(36, 16), t.parent_id) || !hex(s.substr(53, 2), f))
    return std::nullopt;
  t.flags = uint8_t(f);
  if (!t.valid()) return std::nullopt;
  return t;
}

std::string TraceContext::traceparent() const {
  std::string o = "00-";
  put_hex(o, trace_hi, 16);
  put_hex(o, trace_lo, 16);
  o += '-';
  put_hex(o, parent_id, 16);
  o += '-';
  put_hex(o, flags, 2);
  return o;
}

TraceContext TraceContext::fresh() {
  TraceContext t;
  t.trace_hi = random64();
  t.trace_lo = random64();
  t.parent_id = random64();
  t.flags = 1;
  return t;
}

TraceContext TraceContext::child() const {
  TraceContext t = *this;
  t.parent_id = random64();
  return t;
}

Status publish_enveloped(Publisher& pub, const Envelope& env, std::span<const std::byte> payload,
                         uint64_t message_id, uint64_t payload_schema_id) {
  if (!check_limits(env) || payload.size() > (1u << 29) - 1) return Status::too_large;
  // Upper bound of the serialized size: segment table, root pointer, the root
  // (4 data words + 4 pointers), the payload, the reply-to text, the trace struct
  // (4 + 1 words) and its tracestate text.
  const size_t need = 8 + 8 + 64 + align8(payload.size()) + align8(env.reply_to.size() + 1) + 40 +
                      align8(env.trace.state.size() + 1);
  if (need > pub.max_payload()) return Status::too_large;
  MessageClaim m(pub, uint32_t(need));
  if (!m) return m.status();
  auto b = m.init_root<schema::Envelope>();
  fill(b, env, payload_schema_id);
  if (!payload.empty()) {
    auto d = b.initPayload(uint32_t(payload.size()));
    std::memcpy(d.begin(), payload.data(), payload.size());
  }
  return m.commit(message_id, envelope_schema_id());
}

Status publish_enveloped(Publisher& pub, const Envelope& env, capnp::MessageBuilder& payload,
                         uint64_t message_id, uint64_t payload_schema_id) {
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(payload);
  auto bytes = flat.asBytes();
  return publish_enveloped(
      pub, env, std::span<const std::byte>(reinterpret_cast<const std::byte*>(bytes.begin()), bytes.size()),
      message_id, payload_schema_id);
}

Status EnvelopedView::open(const View& v) noexcept {
  frame_ = v;
  payload_ = v;
  env_ = Envelope{};
  enveloped_ = false;
  if (!v) return Status::ok;
  // The frame's header is copied once and only the copy is used; the envelope's
  // scalars and texts are copied out once and validated; the payload's place is
  // checked to lie inside the frame.
  std::memcpy(&hdr_, &v.header(), sizeof hdr_);
  if (hdr_.schema_id != envelope_schema_id()) return Status::ok;
  try {
    const uint32_t len = hdr_.payload_len == v.size() ? v.size() : 0;
    if (len < 8 || (reinterpret_cast<uintptr_t>(v.data()) & 7) != 0) return Status::malformed;
    capnp::ReaderOptions ro;
    ro.traversalLimitInWords = len / 8 + 64;
    ro.nestingLimit = 8;
    capnp::FlatArrayMessageReader r(
        kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(v.data()), len / 8), ro);
    auto e = r.getRoot<schema::Envelope>();
    const uint64_t psid = e.getPayloadSchemaId();
    env_.correlation_id = e.getCorrelationId();
    env_.causation_id = e.getCausationId();
    env_.content_version = e.getContentVersion();
    env_.status = e.getStatus();
    if (e.hasReplyTo()) {
      auto t = e.getReplyTo();
      if (t.size() > kMaxReplyTo) return Status::malformed;
      env_.reply_to.assign(t.begin(), t.size());
      if (env_.reply_to.find('\0') != std::string::npos) return Status::malformed;
    }
    if (e.hasTrace()) {
      auto t = e.getTrace();
      env_.trace.trace_hi = t.getTraceIdHigh();
      env_.trace.trace_lo = t.getTraceIdLow();
      env_.trace.parent_id = t.getParentId();
      env_.trace.flags = t.getFlags();
      if (t.hasTraceState()) {
        auto s = t.getTraceState();
        if (s.size() > kMaxTraceState) return Status::malformed;
        env_.trace.state.assign(s.begin(), s.size());
      }
    }
    const std::byte* p = v.data();
    uint32_t plen = 0;
    if (e.hasPayload()) {
      auto d = e.getPayload();
      p = reinterpret_cast<const std::byte*>(d.begin());
      plen = uint32_t(d.size());
      if (p < v.data() || p + plen > v.data() + len) return Status::malformed;  // never outside the frame
    }
    hdr_.schema_id = psid;
    hdr_.payload_len = plen;
    shm::FrameView f;
    f.hdr = &hdr_;
    f.payload = p;
    f.payload_len = plen;
    f.pos = v.position();
    f.next = v.next_position();
    payload_ = View(f);
    enveloped_ = true;
    return Status::ok;
  } catch (...) {
    env_ = Envelope{};
    payload_ = v;
    return Status::malformed;
  }
}

std::string envelope_json(const Envelope& e, uint64_t payload_schema_id) {
  // Every 64-bit id in hex, as the tools print message and schema ids everywhere.
  const auto hex = [](uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%016llx", static_cast<unsigned long long>(v));
    return std::string(b);
  };
  const std::string id = hex(payload_schema_id);
  std::string o =
      "{\"correlationId\":\"" + hex(e.correlation_id) + "\",\"causationId\":\"" + hex(e.causation_id) + "\"";
  if (!e.reply_to.empty()) o += ",\"replyTo\":" + jstr(e.reply_to);
  if (e.trace.valid()) {
    o += ",\"traceparent\":\"" + e.trace.traceparent() + "\"";
    if (!e.trace.state.empty()) o += ",\"tracestate\":" + jstr(e.trace.state);
  }
  o += ",\"contentVersion\":" + std::to_string(e.content_version) +
       ",\"status\":" + std::to_string(e.status) + ",\"payloadSchemaId\":\"" + id + "\"}";
  return o;
}

}  // namespace shmbus
