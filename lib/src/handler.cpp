// HandlerRunner: retries, circuit breaker, dead letters (docs/messaging.md).
#include "shmbus/handler.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "envelope.capnp.h"

namespace shmbus {

int64_t RetryPolicy::backoff_ns(uint32_t attempt, uint64_t rnd) const {
  if (attempt < 2) return 0;
  double d = double(initial_backoff_ns) * std::pow(multiplier < 1.0 ? 1.0 : multiplier, double(attempt - 2));
  const double cap = double(max_backoff_ns);
  if (!(d <= cap)) d = cap;  // also catches inf/nan
  const double j = std::clamp(jitter, 0.0, 1.0);
  // rnd's top 53 bits as a uniform [0, 1), scaled to [1 - j, 1 + j].
  const double u = double(rnd >> 11) * 0x1.0p-53;
  d *= 1.0 - j + 2.0 * j * u;
  return d < 0 ? 0 : int64_t(d);
}

bool CircuitBreaker::allow(int64_t now_ns) {
  if (state_ == State::open) {
    if (now_ns < open_until_) return false;
    state_ = State::half_open;
    successes_ = 0;
  }
  return true;
}

void CircuitBreaker::on_success() {
  failures_ = 0;
  if (state_ == State::half_open && ++successes_ >= std::max<uint32_t>(1, p_.half_open_successes))
    state_ = State::closed;
}

void CircuitBreaker::on_failure(int64_t now_ns) {
  if (state_ == State::half_open || ++failures_ >= std::max<uint32_t>(1, p_.failure_threshold)) {
    state_ = State::open;
    open_until_ = now_ns + p_.open_ns;
    failures_ = 0;
    ++opened_;
  }
}

namespace {
int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

thread_local int64_t t_attempt_deadline = INT64_MAX;

std::string ms_text(int64_t ns) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f ms", double(ns) / 1e6);
  return b;
}

const char* kind_name(Outcome::Kind k) {
  switch (k) {
    case Outcome::Kind::ack: return "ack";
    case Outcome::Kind::retry: return "retry";
    case Outcome::Kind::reject: return "reject";
  }
  return "?";
}

void hex_into(std::string& o, uint64_t v) {
  static const char* d = "0123456789abcdef";
  for (int i = 60; i >= 0; i -= 4) o += d[(v >> i) & 15];
}
}  // namespace

int64_t attempt_deadline_ns() { return t_attempt_deadline; }

namespace layers {

Layer timeout(int64_t ns, std::function<int64_t()> clock) {
  if (ns <= 0) throw Error(ErrorCode::invalid_argument, "layers::timeout: the limit must be > 0 ns");
  if (!clock) clock = mono_ns;
  return [ns, clock](HandlerFn inner) -> HandlerFn {
    return [ns, clock, inner = std::move(inner)](const View& v) {
      const int64_t start = clock();
      const int64_t saved = t_attempt_deadline;
      t_attempt_deadline = std::min(saved, start + ns);
      Outcome o;
      try {
        o = inner(v);
      } catch (...) {
        t_attempt_deadline = saved;
        throw;
      }
      t_attempt_deadline = saved;
      const int64_t took = clock() - start;
      if (took > ns && o.kind != Outcome::Kind::reject)
        return Outcome::retry("timeout: the attempt took " + ms_text(took) + ", the limit is " + ms_text(ns),
                              kTimeoutCode);
      return o;
    };
  };
}

Layer metrics(HandlerMetrics& m, std::function<int64_t()> clock) {
  if (!clock) clock = mono_ns;
  return [&m, clock](HandlerFn inner) -> HandlerFn {
    return [&m, clock, inner = std::move(inner)](const View& v) {
      // Relaxed: counters, read after the runners stopped or as approximate live figures.
      m.attempts.fetch_add(1, std::memory_order_relaxed);
      const int64_t start = clock();
      Outcome o;
      try {
        o = inner(v);
      } catch (...) {
        o = Outcome::retry("exception");  // counted as the runner will treat it; rethrown below
        const int64_t d = std::max<int64_t>(0, clock() - start);
        m.retries.fetch_add(1, std::memory_order_relaxed);
        m.duration_sum_ns.fetch_add(uint64_t(d), std::memory_order_relaxed);
        m.duration_log2_ns[d ? std::min<size_t>(size_t(std::bit_width(uint64_t(d))) - 1,
                                                HandlerMetrics::kBuckets - 1)
                             : 0]
            .fetch_add(1, std::memory_order_relaxed);
        throw;
      }
      const int64_t d = std::max<int64_t>(0, clock() - start);
      (o.kind == Outcome::Kind::ack     ? m.acks
       : o.kind == Outcome::Kind::retry ? m.retries
                                        : m.rejects)
          .fetch_add(1, std::memory_order_relaxed);
      m.duration_sum_ns.fetch_add(uint64_t(d), std::memory_order_relaxed);
      m.duration_log2_ns[d ? std::min<size_t>(size_t(std::bit_width(uint64_t(d))) - 1,
                                              HandlerMetrics::kBuckets - 1)
                           : 0]
          .fetch_add(1, std::memory_order_relaxed);
      return o;
    };
  };
}

Layer trace(std::string handler_name, TraceSink sink, std::function<int64_t()> clock) {
  if (!sink) throw Error(ErrorCode::invalid_argument, "layers::trace: no sink");
  if (!clock) clock = mono_ns;
  auto name = std::make_shared<const std::string>(std::move(handler_name));
  return [name, sink, clock](HandlerFn inner) -> HandlerFn {
    return [name, sink, clock, inner = std::move(inner)](const View& v) {
      TraceRecord r;
      r.handler = name.get();
      r.message_id = v.message_id();
      r.sequence = v.sequence();
      r.producer_id = v.producer_id();
      // The envelope is read from a copy (EnvelopedView validates it); a frame that is
      // no envelope, or a malformed one, has no parent trace.
      EnvelopedView ev;
      if (ev.open(v) == Status::ok && ev.enveloped()) {
        const Envelope& e = ev.envelope();
        r.correlation_id = e.correlation_id;
        r.causation_id = e.causation_id;
        if (e.trace.valid()) r.parent = e.trace;
      }
      r.span = r.parent.valid() ? r.parent.child() : TraceContext::fresh();
      const int64_t start = clock();
      Outcome o;
      try {
        o = inner(v);
      } catch (const std::exception& ex) {
        r.outcome = Outcome::Kind::retry;
        r.duration_ns = clock() - start;
        sink(r);
        throw;
      }
      r.outcome = o.kind;
      r.code = o.code;
      r.duration_ns = clock() - start;
      sink(r);
      return o;
    };
  };
}

TraceSink json_lines(FILE* out) {
  return [out](const TraceRecord& r) {
    std::string l = "{\"event\":\"attempt\",\"handler\":\"";
    for (char c : r.handler ? *r.handler : std::string())
      if (c == '"' || c == '\\')
        l += '\\', l += c;
      else if (uint8_t(c) >= 0x20)
        l += c;
    l += "\",\"message_id\":\"";
    hex_into(l, r.message_id);
    l +=
        "\",\"sequence\":" + std::to_string(r.sequence) + ",\"producer_id\":" + std::to_string(r.producer_id);
    l += ",\"trace_id\":\"";
    hex_into(l, r.span.trace_hi);
    hex_into(l, r.span.trace_lo);
    l += "\",\"span_id\":\"";
    hex_into(l, r.span.parent_id);
    l += '"';
    if (r.parent.valid()) {
      l += ",\"parent_span_id\":\"";
      hex_into(l, r.parent.parent_id);
      l += '"';
    }
    if (r.correlation_id) {
      l += ",\"correlation_id\":\"";
      hex_into(l, r.correlation_id);
      l += '"';
    }
    if (r.causation_id) {
      l += ",\"causation_id\":\"";
      hex_into(l, r.causation_id);
      l += '"';
    }
    l += ",\"outcome\":\"";
    l += kind_name(r.outcome);
    l +=
        "\",\"code\":" + std::to_string(r.code) + ",\"duration_ns\":" + std::to_string(r.duration_ns) + "}\n";
    std::fputs(l.c_str(), out);  // one call per line: stdio locks the stream per call
  };
}

}  // namespace layers

HandlerRunner::HandlerRunner(Bus& bus, const std::string& topic, HandlerFn fn, HandlerOptions opts)
    : bus_(bus), topic_(topic), fn_(std::move(fn)), opts_(std::move(opts)),
      sub_(bus.subscriber(topic, opts_.subscriber)),
      dlq_topic_(opts_.dlq_topic.empty() ? topic + ".dlq" : opts_.dlq_topic), breaker_(opts_.breaker) {
  if (!fn_) throw Error(ErrorCode::invalid_argument, "HandlerRunner: no handler");
  // Innermost first, so that layers[0] ends up outermost.
  for (auto it = opts_.layers.rbegin(); it != opts_.layers.rend(); ++it) {
    if (!*it) throw Error(ErrorCode::invalid_argument, "HandlerRunner: an empty layer");
    fn_ = (*it)(std::move(fn_));
    if (!fn_) throw Error(ErrorCode::invalid_argument, "HandlerRunner: a layer returned no handler");
  }
  if (opts_.retry.max_attempts == 0) opts_.retry.max_attempts = 1;
  if (!opts_.clock) opts_.clock = mono_ns;
  rng_ = opts_.seed ? opts_.seed : uint64_t(mono_ns()) | 1;
}

HandlerRunner::~HandlerRunner() = default;

uint64_t HandlerRunner::next_rand() {
  uint64_t x = rng_;  // xorshift64*
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_ = x;
  return x * 0x2545F4914F6CDD1DULL;
}

void HandlerRunner::wait_ns(int64_t ns, const std::function<bool()>& stop) {
  if (ns <= 0) return;
  if (opts_.sleep) return opts_.sleep(ns);
  // In slices, so that stop() is seen within 10 ms.
  const int64_t end = opts_.clock() + ns;
  for (int64_t now = opts_.clock(); now < end; now = opts_.clock()) {
    if (stop && stop()) return;
    std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<int64_t>(end - now, 10'000'000)));
  }
}

void HandlerRunner::run(const std::function<bool()>& stop) {
  while (!(stop && stop())) step(10'000'000, stop);
}

bool HandlerRunner::step(int64_t wait_ns_, const std::function<bool()>& stop) {
  View v;
  Status s = sub_.poll_wait(v, wait_ns_);
  if (s == Status::lapped) {
    ++stats_.lapped;
    return false;
  }
  if (s != Status::ok) return false;
  DedupWindow* dd = opts_.dedup;
  if (!sub_.options().tethered) {
    // The producer may overwrite an untethered view while the handler retries: copy
    // it (header and payload), check the copy is intact, hand the handler the copy.
    copy_.resize(sizeof(shm::FrameHeader) + v.size());
    std::memcpy(copy_.data(), &v.header(), sizeof(shm::FrameHeader));
    std::memcpy(copy_.data() + sizeof(shm::FrameHeader), v.data(), v.size());
    if (sub_.check(v) != Status::ok) {
      ++stats_.lapped;
      sub_.release(v);
      return false;
    }
    shm::FrameView f;
    f.hdr = reinterpret_cast<const shm::FrameHeader*>(copy_.data());
    f.payload = copy_.data() + sizeof(shm::FrameHeader);
    f.payload_len = v.size();
    f.pos = v.position();
    f.next = v.next_position();
    View c(f);
    if (dd && dd->seen(c)) {
      ++stats_.duplicates;
      sub_.release(v);
      return true;
    }
    if (!handle(c, stop)) return false;
    if (dd) {
      dd->record(c);
      dd->commit();
    }
    sub_.release(v);
    return true;
  }
  if (dd && dd->seen(v)) {
    ++stats_.duplicates;
    sub_.release(v);
    return true;
  }
  if (!handle(v, stop)) return false;
  if (dd) {  // recorded and committed before the release: a restart finds it seen
    dd->record(v);
    dd->commit();
  }
  sub_.release(v);
  return true;
}

// Runs the handler on one message until it is acked or dead-lettered (true), or
// stop() is asked for first (false: the message stays unreleased).
bool HandlerRunner::handle(const View& v, const std::function<bool()>& stop) {
  uint32_t attempt = 1;
  int64_t first_fail = 0, last_fail = 0;
  for (;;) {
    // An open breaker: no attempt until its open time is over. (A closed one needs no
    // clock read: the success path reads no clock at all.)
    while (breaker_.state() != CircuitBreaker::State::closed && !breaker_.allow(opts_.clock())) {
      if (stop && stop()) return false;
      wait_ns(breaker_.open_until_ns() - opts_.clock(), stop);
    }
    Outcome o;
    ++stats_.attempts;
    try {
      o = fn_(v);
    } catch (const std::exception& e) {
      o = Outcome::retry(std::string("exception: ") + e.what());
    } catch (...) {
      o = Outcome::retry("exception: (not a std::exception)");
    }
    if (o.kind == Outcome::Kind::ack) {
      breaker_.on_success();
      ++stats_.acked;
      ++stats_.handled;
      return true;
    }
    const int64_t now = opts_.clock();
    breaker_.on_failure(now);
    if (!first_fail) first_fail = now;
    last_fail = now;
    if (o.kind == Outcome::Kind::reject || attempt >= opts_.retry.max_attempts) {
      dead_letter(v, o, attempt, first_fail, last_fail);
      ++stats_.dead_lettered;
      ++stats_.handled;
      return true;
    }
    ++attempt;
    ++stats_.retries;
    wait_ns(o.retry_after_ns >= 0 ? o.retry_after_ns : opts_.retry.backoff_ns(attempt, next_rand()), stop);
    if (stop && stop()) return false;
  }
}

void HandlerRunner::dead_letter(const View& v, const Outcome& last, uint32_t attempts, int64_t first_ns,
                                int64_t last_ns) {
  if (!dlq_) {
    // An existing dead-letter topic is used as it is (whatever its settings).
    bool exists = true;
    try {
      exists = bus_.partitions(dlq_topic_) > 0;  // a direct bus answers 0 for a missing topic
    } catch (const Error& e) {
      if (e.code() != ErrorCode::not_found) throw;
      exists = false;
    }
    if (!exists) {
      try {
        bus_.create_topic(dlq_topic_, opts_.dlq_config);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::already_exists) throw;  // made meanwhile by another runner
      }
    }
    PublisherOptions po;
    po.schema_id = capnp::typeId<schema::DeadLetter>();
    dlq_ = std::make_unique<Publisher>(bus_.publisher(dlq_topic_, po));
  }
  capnp::MallocMessageBuilder mb;
  auto d = mb.initRoot<schema::DeadLetter>();
  d.setCode(last.code);
  d.setMessage(last.message);
  d.setAttempts(attempts);
  d.setFirstFailureNs(uint64_t(first_ns));
  d.setLastFailureNs(uint64_t(last_ns));
  d.setHandler(opts_.name);
  auto r = d.initRetry();
  r.setMaxAttempts(opts_.retry.max_attempts);
  r.setInitialBackoffNs(uint64_t(opts_.retry.initial_backoff_ns));
  r.setMaxBackoffNs(uint64_t(opts_.retry.max_backoff_ns));
  r.setMultiplier(opts_.retry.multiplier);
  r.setJitter(opts_.retry.jitter);
  d.setReason(last.kind == Outcome::Kind::reject ? schema::DeadLetter::Reason::REJECTED
                                                 : schema::DeadLetter::Reason::EXHAUSTED);
  d.setOriginalTopic(topic_);
  d.setPartition(sub_.partition());
  d.setSequence(v.sequence());
  d.setMessageId(v.message_id());
  d.setSchemaId(v.schema_id());
  d.setProducerId(v.producer_id());
  d.setTimestampNs(v.timestamp_ns());
  d.setPayload(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(v.data()), v.size()));
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  const Status s =
      dlq_->offer(bytes.begin(), bytes.size(), v.message_id(), capnp::typeId<schema::DeadLetter>());
  if (s != Status::ok)
    throw Error(ErrorCode::timed_out, "dead letter of " + topic_ + " sequence " +
                                          std::to_string(v.sequence()) + " not published to " + dlq_topic_ +
                                          ": " + std::string(to_string(s)));
}

HandlerPool::HandlerPool(Bus& bus, const std::string& topic, HandlerFn fn, HandlerOptions opts,
                         std::vector<uint32_t> partitions) {
  if (opts.dedup)
    throw Error(ErrorCode::invalid_argument,
                "HandlerPool: a dedup window belongs to one partition (run a HandlerRunner per window)");
  if (!fn) throw Error(ErrorCode::invalid_argument, "HandlerPool: no handler");
  if (partitions.empty()) {
    const uint32_t n = bus.partitions(topic);
    for (uint32_t p = 0; p < n; ++p) partitions.push_back(p);
  }
  for (uint32_t p : partitions) {
    HandlerOptions o = opts;
    o.subscriber.partition = p;
    if (opts.seed) o.seed = opts.seed + p;  // distinct jitter per partition, still reproducible
    runners_.push_back(std::make_unique<HandlerRunner>(bus, topic, fn, std::move(o)));
  }
}

HandlerPool::~HandlerPool() = default;

void HandlerPool::run(const std::function<bool()>& stop) {
  std::atomic<bool> failed{false};
  std::exception_ptr first;
  std::mutex mu;
  const std::function<bool()> stop_all = [&] {
    return failed.load(std::memory_order_acquire) || (stop && stop());
  };
  std::vector<std::thread> threads;
  threads.reserve(runners_.size());
  for (auto& r : runners_)
    threads.emplace_back([&, run = r.get()] {
      try {
        run->run(stop_all);
      } catch (...) {
        {
          std::lock_guard<std::mutex> g(mu);
          if (!first) first = std::current_exception();
        }
        failed.store(true, std::memory_order_release);
      }
    });
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

HandlerStats HandlerPool::stats() const {
  HandlerStats s;
  for (const auto& r : runners_) {
    const HandlerStats& x = r->stats();
    s.handled += x.handled;
    s.acked += x.acked;
    s.attempts += x.attempts;
    s.retries += x.retries;
    s.dead_lettered += x.dead_lettered;
    s.lapped += x.lapped;
    s.duplicates += x.duplicates;
  }
  return s;
}

}  // namespace shmbus
