// Request/response over topics (docs/messaging.md, "Request/response").
//
//   shmbus::Requester req(bus);                      // creates its own reply topic
//   shmbus::Reply r;
//   if (req.request("pricing.quote", bytes, 500'000'000, r) == shmbus::Status::ok) use(r.payload);
//   else /* Status::timed_out: no reply in time (a dead responder is a timeout) */;
//
//   shmbus::Responder resp(bus, "pricing.quote", [](const shmbus::View& q, const shmbus::Envelope&) {
//     return shmbus::Response{.payload = price(q)};
//   });
//   resp.run([&] { return stopping.load(); });
//
// A request is an enveloped message (envelope.hpp) on the service topic, with a
// correlation id and the requester's reply topic as reply-to. The responder answers on
// that topic with an enveloped reply carrying the same correlation id (and the
// request's message id as causation id). The requester matches replies by correlation
// id: several requests may be in flight; a reply whose request timed out (or was
// never sent by this requester) is dropped and counted, never taken for another's.
//
// Reply topics: one per Requester, created by it (policy fail: a responder never
// waits on a slow requester; a reply that does not fit is dropped and the request
// times out), removed by its destructor. Through shmbusd the reply topic is
// ephemeral: owned by this process's daemon connection, so the daemon removes it
// when the requester ends in any way (SIGKILL included) and no daemon restart
// restores it. Only this uid may subscribe to it; any uid may publish (responders
// of other uids must answer), see docs/messaging.md "Who may answer". In direct mode
// (Bus::direct) there are no ephemeral topics: a SIGKILLed requester leaves its
// reply topic behind, as before.
//
// Responders (through shmbusd) answer only on ephemeral topics: a request cannot
// make a responder publish into an ordinary topic with the responder's rights (the
// confused deputy); such requests are handled, not answered, and counted (refused).
// A reply topic that does not exist is given up at once (no open timeout).
//
// Forged replies: a reply is taken only if it carries the request's correlation id
// AND, as causation id, the request frame's message id: two independent 64-bit
// values from getrandom(2) per request (128 bits a forger must guess). Anything else
// is dropped and counted (stale, forged, malformed).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shmbus/bus.hpp"
#include "shmbus/envelope.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus {

struct Reply {
  Envelope envelope;               // correlation id, status, trace ...
  uint64_t payload_schema_id = 0;  // the reply payload's schema id (0: opaque)
  uint64_t message_id = 0;
  uint32_t producer_id = 0;
  std::vector<std::byte> payload;  // copied out of the reply ring
};

// The reply topic's default mode: through shmbusd, only the requester's uid
// subscribes, any uid publishes (other bits: write only). In direct mode this
// default becomes 0660 (segment files others could write are rings anyone could
// corrupt), as before.
inline constexpr uint32_t kReplyTopicMode = 0602;

struct RequesterOptions {
  std::string reply_topic;  // "": "reply.<pid>.<16 random hex digits>"
  // Through shmbusd `ephemeral` is always set (see above).
  TopicConfig reply_config{
      .capacity = 1u << 20, .policy = Policy::fail, .multi_producer = true, .mode = kReplyTopicMode};
  PublisherOptions publisher;  // for the request topics
  size_t max_in_flight = 4096;
};

struct RequesterStats {
  uint64_t sent = 0;
  uint64_t replies = 0;  // replies matched to a request in flight
  uint64_t timeouts = 0;
  uint64_t stale = 0;      // replies to no request in flight (timed out, forgotten, unknown)
  uint64_t forged = 0;     // a request's correlation id without its causation id: dropped
  uint64_t malformed = 0;  // frames on the reply topic that are no valid reply envelope
};

class Requester {
 public:
  explicit Requester(Bus& bus, RequesterOptions opts = {});
  ~Requester();
  Requester(const Requester&) = delete;
  Requester& operator=(const Requester&) = delete;

  // Publishes a request on `topic` (enveloped: correlation id, reply-to, trace);
  // its correlation id in `corr`. Returns the publish status (ok, back_pressured ...;
  // back_pressured also when max_in_flight requests are waiting). Opening a topic for
  // the first time throws Error like Bus::publisher (not found, permission denied).
  Status send(const std::string& topic, std::span<const std::byte> request, uint64_t& corr,
              uint64_t schema_id = 0, const TraceContext* trace = nullptr);
  // The reply to `corr`, waiting up to timeout_ns (< 0: no limit). ok: `out` is it.
  // timed_out: none came in time, and `corr` is forgotten (its reply, if it comes
  // later, is stale). Replies to other requests in flight that arrive meanwhile are
  // kept for them. closed: `corr` is not in flight (never sent, already answered, or
  // given up). interrupted: interrupt() ended the wait; `corr` stays in flight.
  Status await(uint64_t corr, int64_t timeout_ns, Reply& out);
  // send + await.
  Status request(const std::string& topic, std::span<const std::byte> request, int64_t timeout_ns, Reply& out,
                 uint64_t schema_id = 0);
  // Stops waiting for `corr`: its reply will be dropped as stale.
  void forget(uint64_t corr) { inflight_.erase(corr); }
  // Ends an await blocked in another thread at once (interrupted); raised while none
  // waits, it ends the next wait once. The one call that may run concurrently with
  // another on this requester (never with its destruction); async-signal-safe.
  void interrupt() { sub_->interrupt(); }

  const std::string& reply_topic() const { return reply_topic_; }
  bool reply_topic_ephemeral() const { return ephemeral_; }
  const RequesterStats& stats() const { return stats_; }
  size_t in_flight() const { return inflight_.size(); }

 private:
  void take(const View& v);  // one frame of the reply topic

  Bus bus_;
  RequesterOptions opts_;
  std::string reply_topic_;
  std::unique_ptr<Subscriber> sub_;
  std::map<std::string, Publisher> pubs_;
  // In flight: correlation id -> the request frame's message id (the causation id a
  // reply must carry) and the reply, once it came.
  struct Pending {
    uint64_t nonce = 0;
    std::unique_ptr<Reply> reply;
  };
  std::unordered_map<uint64_t, Pending> inflight_;
  bool ephemeral_ = false;
  RequesterStats stats_;
};

// What a responder's function answers.
struct Response {
  std::vector<std::byte> payload;
  uint64_t schema_id = 0;  // the reply payload's schema id
  uint32_t status = 0;     // application status (0: ok)
  bool reply = true;       // false: no reply (the requester times out)
};

// A function that throws is answered with status 500 and "exception: <what()>".
// (Bindings that call their own function map its error the same way: status 500.)
inline constexpr uint32_t kStatusFailed = 500;
using RespondFn = std::function<Response(const View& request, const Envelope& env)>;

struct ResponderStats {
  uint64_t requests = 0;
  uint64_t replied = 0;
  uint64_t no_reply_to = 0;    // requests without a reply-to topic (handled, not answered)
  uint64_t undeliverable = 0;  // the reply topic is gone or full: reply dropped
  uint64_t refused = 0;  // through shmbusd: reply-to names a topic that is not ephemeral (not a reply topic)
  uint64_t malformed = 0;  // frames that are no valid envelope: skipped
  uint64_t failed = 0;     // the function threw: answered with status 500 and the reason
};

// A request taken by Responder::next, not answered yet. `payload` and `frame` point
// into the service ring: valid until reply()/skip() on it, the next next(), or the
// responder's end.
struct PendingRequest {
  // The opened envelope, shared by copies: `payload`'s frame header lives in it (a
  // View of the payload has the payload's schema id, so not the ring's header).
  std::shared_ptr<const EnvelopedView> opened;
  View payload;       // the request's payload (inside the envelope)
  Envelope envelope;  // correlation id, reply-to, trace ... (empty: not enveloped)
  bool enveloped = false;
  View frame;          // the whole frame (message id = the causation id a reply carries)
  uint64_t token = 0;  // which request this is (reply/skip check it)
};

// What became of a reply (Responder::reply).
enum class ReplyOutcome {
  replied,        // published on the reply topic
  not_wanted,     // Response::reply false, or skip(): nothing published
  no_reply_to,    // the request has no reply-to (or is not enveloped): not answered
  refused,        // through shmbusd: reply-to is not an ephemeral (reply) topic
  undeliverable,  // the reply topic is gone, or full
  too_large,      // the reply can never fit the reply topic's frames (counted undeliverable)
  not_pending,    // the request is not the one pending (answered, skipped or stale): nothing done
};

class Responder {
 public:
  // `fn` may be empty for a responder driven by next()/reply() only (step/run then throw).
  Responder(Bus& bus, const std::string& topic, RespondFn fn, SubscriberOptions sub = {});
  ~Responder();
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;

  // Answers at most one request, waiting up to wait_ns for one. True if one was handled
  // (or a malformed frame skipped). next() + the function + reply().
  bool step(int64_t wait_ns);
  void run(const std::function<bool()>& stop);

  // Two-phase use (what the C ABI, Go and Rust drive): the next request, waiting up to
  // wait_ns (< 0: no limit). ok: `out` is it, pending until reply() or skip() (a
  // request still pending is skipped by the next next()). timed_out, interrupted
  // (interrupt()), or malformed: a frame that is no valid envelope was skipped and
  // counted (call again). Statuses of the subscriber otherwise (corrupt).
  Status next(int64_t wait_ns, PendingRequest& out);
  // Answers `req` with `r` (r.reply false: no reply) and releases it.
  ReplyOutcome reply(const PendingRequest& req, const Response& r);
  // Answers `req` as a function that threw: status 500, "exception: <why>" as payload
  // (counted failed). Bindings map their handler's error through it.
  ReplyOutcome fail(const PendingRequest& req, std::string_view why);
  // Releases `req` without a reply (the requester times out).
  ReplyOutcome skip(const PendingRequest& req) {
    Response none;
    none.reply = false;
    return reply(req, none);
  }
  // Ends a next/step blocked in another thread (interrupted); async-signal-safe.
  void interrupt() { sub_.interrupt(); }
  const ResponderStats& stats() const { return stats_; }
  Subscriber& subscriber() { return sub_; }

 private:
  Publisher* reply_publisher(const std::string& topic, bool& refused);

  Bus bus_;
  std::string topic_;
  RespondFn fn_;
  Subscriber sub_;
  std::map<std::string, Publisher> pubs_;  // reply topics (bounded: kMaxReplyPublishers)
  ResponderStats stats_;
  uint64_t pending_ = 0;  // token of the request taken by next() and not answered (0: none)
  uint64_t next_token_ = 0;
};

}  // namespace shmbus
