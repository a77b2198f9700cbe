// Request/response over topics (docs/messaging.md).
#include "shmbus/request.hpp"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

namespace shmbus {

namespace {

constexpr size_t kMaxReplyPublishers = 64;

int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// 64 bits from the kernel's CSPRNG (getrandom blocks only until it is seeded, once
// per boot). Correlation ids must be unguessable: no weaker fallback.
uint64_t random64() {
  uint64_t v = 0;
  size_t got = 0;
  while (got < sizeof v) {
    const ssize_t n = getrandom(reinterpret_cast<char*>(&v) + got, sizeof v - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorCode::system, std::string("getrandom: ") + strerror(errno), errno);
    }
    got += size_t(n);
  }
  return v;
}

uint64_t random_nonzero64() {
  for (;;)
    if (const uint64_t v = random64()) return v;
}

std::string hex16(uint64_t v) {
  static const char* d = "0123456789abcdef";
  std::string o(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) o[size_t(i)] = d[v & 15];
  return o;
}

}  // namespace

Requester::Requester(Bus& bus, RequesterOptions opts) : bus_(bus), opts_(std::move(opts)) {
  reply_topic_ = opts_.reply_topic;
  if (reply_topic_.empty()) {
    reply_topic_ = "reply.";
    reply_topic_ += std::to_string(getpid());
    reply_topic_ += '.';
    reply_topic_ += hex16(random64());
  }
  if (reply_topic_.size() > kMaxReplyTo)
    throw Error(ErrorCode::invalid_argument,
                "reply topic name longer than " + std::to_string(kMaxReplyTo) + " bytes");
  TopicConfig cfg = opts_.reply_config;
  ephemeral_ = bus_.provider().ephemeral_topics();
  cfg.ephemeral = ephemeral_;
  if (!ephemeral_ && cfg.mode == kReplyTopicMode) cfg.mode = 0660;  // direct mode: as before
  bus_.create_topic(reply_topic_, cfg);
  try {
    sub_ = std::make_unique<Subscriber>(bus_.subscriber(reply_topic_));
  } catch (...) {
    try {
      bus_.remove_topic(reply_topic_);
    } catch (...) {
    }
    throw;
  }
}

Requester::~Requester() {
  pubs_.clear();
  sub_.reset();
  try {
    bus_.remove_topic(reply_topic_);
  } catch (...) {
  }
}

Status Requester::send(const std::string& topic, std::span<const std::byte> request, uint64_t& corr,
                       uint64_t schema_id, const TraceContext* trace) {
  corr = 0;
  if (inflight_.size() >= opts_.max_in_flight) return Status::back_pressured;
  auto it = pubs_.find(topic);
  if (it == pubs_.end()) it = pubs_.emplace(topic, bus_.publisher(topic, opts_.publisher)).first;
  Envelope e;
  // Fresh random ids per request (never a counter): the correlation id, and the
  // frame's message id that the reply must carry back as causation id.
  do e.correlation_id = random_nonzero64();
  while (inflight_.count(e.correlation_id));
  const uint64_t nonce = random_nonzero64();
  e.reply_to = reply_topic_;
  e.trace = trace && trace->valid() ? trace->child() : TraceContext::fresh();
  const Status s = publish_enveloped(it->second, e, request, nonce, schema_id);
  if (s != Status::ok) return s;
  inflight_.emplace(e.correlation_id, Pending{nonce, nullptr});
  ++stats_.sent;
  corr = e.correlation_id;
  return Status::ok;
}

void Requester::take(const View& v) {
  EnvelopedView ev;
  if (ev.open(v) != Status::ok || !ev.enveloped() || ev.envelope().correlation_id == 0) {
    ++stats_.malformed;
    return;
  }
  auto it = inflight_.find(ev.envelope().correlation_id);
  if (it == inflight_.end() || it->second.reply) {  // not waited for, or a second reply
    ++stats_.stale;
    return;
  }
  if (ev.envelope().causation_id != it->second.nonce) {  // knows the correlation id only
    ++stats_.forged;
    return;
  }
  auto r = std::make_unique<Reply>();
  r->envelope = ev.envelope();
  r->payload_schema_id = ev.payload().schema_id();
  r->message_id = v.message_id();
  r->producer_id = v.producer_id();
  r->payload.assign(ev.payload().data(), ev.payload().data() + ev.payload().size());
  it->second.reply = std::move(r);
  ++stats_.replies;
}

Status Requester::await(uint64_t corr, int64_t timeout_ns, Reply& out) {
  auto it = inflight_.find(corr);
  if (it == inflight_.end()) return Status::closed;  // not in flight (never sent, or given up)
  const int64_t deadline = timeout_ns < 0 ? INT64_MAX : mono_ns() + timeout_ns;
  for (;;) {
    it = inflight_.find(corr);
    if (it != inflight_.end() && it->second.reply) {
      out = std::move(*it->second.reply);
      inflight_.erase(it);
      return Status::ok;
    }
    const int64_t left = deadline == INT64_MAX ? -1 : deadline - mono_ns();
    if (deadline != INT64_MAX && left <= 0) break;
    View v;
    const Status s = sub_->poll_wait(v, left);
    if (s == Status::ok) {
      take(v);
      sub_->release(v);
    } else if (s == Status::corrupt) {
      ++stats_.malformed;
    } else if (s == Status::interrupted) {
      return Status::interrupted;  // still in flight: the caller decides
    }
  }
  inflight_.erase(corr);
  ++stats_.timeouts;
  return Status::timed_out;
}

Status Requester::request(const std::string& topic, std::span<const std::byte> request, int64_t timeout_ns,
                          Reply& out, uint64_t schema_id) {
  uint64_t corr = 0;
  const Status s = send(topic, request, corr, schema_id);
  if (s != Status::ok) return s;
  return await(corr, timeout_ns, out);
}

Responder::Responder(Bus& bus, const std::string& topic, RespondFn fn, SubscriberOptions sub)
    : bus_(bus), topic_(topic), fn_(std::move(fn)), sub_(bus.subscriber(topic, sub)) {}

Responder::~Responder() = default;

Publisher* Responder::reply_publisher(const std::string& topic, bool& refused) {
  refused = false;
  auto it = pubs_.find(topic);
  if (it != pubs_.end()) return &it->second;
  if (pubs_.size() >= kMaxReplyPublishers) pubs_.erase(pubs_.begin());
  try {
    // Through shmbusd reply topics are ephemeral (a Requester's); anything else is
    // not a reply topic, and publishing there with our rights is what the request's
    // sender may not be able to do itself.
    if (bus_.provider().ephemeral_topics() && !bus_.provider().is_ephemeral(topic)) {
      refused = true;
      return nullptr;
    }
    PublisherOptions po;
    po.block_timeout_ns = 0;
    po.open_timeout_ms = 0;  // a reply topic exists before its request: missing = gone
    return &pubs_.emplace(topic, bus_.publisher(topic, po)).first->second;
  } catch (const Error&) {
    return nullptr;  // gone (the requester ended), or not ours to write
  }
}

Status Responder::next(int64_t wait_ns, PendingRequest& out) {
  if (pending_) {  // not answered: no reply
    PendingRequest old;
    old.token = pending_;
    skip(old);
  }
  View v;
  const Status s = sub_.poll_wait(v, wait_ns);
  if (s != Status::ok) return s;
  // On the heap: the payload View points at a header inside it, which must outlive
  // this call (and every copy of `out`).
  auto ev = std::make_shared<EnvelopedView>();
  if (ev->open(v) != Status::ok) {
    ++stats_.malformed;
    sub_.release(v);
    return Status::malformed;
  }
  ++stats_.requests;
  out.payload = ev->payload();
  out.envelope = ev->envelope();
  out.enveloped = ev->enveloped();
  out.opened = std::move(ev);
  out.frame = v;
  out.token = pending_ = ++next_token_;
  return Status::ok;
}

ReplyOutcome Responder::reply(const PendingRequest& preq, const Response& r) {
  if (!pending_ || preq.token != pending_) return ReplyOutcome::not_pending;
  pending_ = 0;
  // The frame is the subscriber's last polled one: release_all frees exactly it.
  struct Release {
    Subscriber& s;
    ~Release() { s.release_all(); }
  } release{sub_};
  if (!r.reply) return ReplyOutcome::not_wanted;
  const Envelope& req = preq.envelope;
  if (!preq.enveloped || req.reply_to.empty() || req.correlation_id == 0) {
    ++stats_.no_reply_to;
    return ReplyOutcome::no_reply_to;
  }
  Envelope e;
  e.correlation_id = req.correlation_id;
  e.causation_id = preq.frame.message_id();
  e.status = r.status;
  if (req.trace.valid()) e.trace = req.trace.child();
  bool refused = false;
  Publisher* p = reply_publisher(req.reply_to, refused);
  Status s = p ? publish_enveloped(*p, e, r.payload, 0, r.schema_id) : Status::closed;
  if (s == Status::closed && p) {
    // The reply topic may have been removed and made again: reopen once.
    pubs_.erase(req.reply_to);
    p = reply_publisher(req.reply_to, refused);
    s = p ? publish_enveloped(*p, e, r.payload, 0, r.schema_id) : Status::closed;
  }
  if (s == Status::ok) {
    ++stats_.replied;
    return ReplyOutcome::replied;
  }
  if (refused) {
    ++stats_.refused;
    return ReplyOutcome::refused;
  }
  ++stats_.undeliverable;
  return s == Status::too_large ? ReplyOutcome::too_large : ReplyOutcome::undeliverable;
}

bool Responder::step(int64_t wait_ns) {
  if (!fn_) throw Error(ErrorCode::invalid_argument, "Responder: no function (use next/reply)");
  PendingRequest req;
  const Status s = next(wait_ns, req);
  if (s == Status::malformed) return true;
  if (s != Status::ok) return false;
  Response r;
  try {
    r = fn_(req.payload, req.envelope);
  } catch (const std::exception& e) {
    // Answered at once rather than left to time out: status 500, the reason as payload.
    fail(req, e.what());
    return true;
  }
  reply(req, r);
  return true;
}

ReplyOutcome Responder::fail(const PendingRequest& req, std::string_view what) {
  if (!pending_ || req.token != pending_) return ReplyOutcome::not_pending;
  ++stats_.failed;
  const std::string why = std::string("exception: ") + std::string(what);
  Response r;
  r.payload.assign(reinterpret_cast<const std::byte*>(why.data()),
                   reinterpret_cast<const std::byte*>(why.data()) + why.size());
  r.status = kStatusFailed;
  return reply(req, r);
}

void Responder::run(const std::function<bool()>& stop) {
  while (!(stop && stop())) step(10'000'000);
}

}  // namespace shmbus
