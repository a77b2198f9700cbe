// shmbus::HandlerRunner — a handler over one partition of a topic, with retries
// (exponential backoff and jitter), a circuit breaker and dead letters
// (docs/messaging.md).
//
//   shmbus::HandlerRunner run(bus, "orders", [&](const shmbus::View& v) {
//     if (!db.insert(v)) return shmbus::Outcome::retry("db busy");
//     return shmbus::Outcome::ack();
//   });
//   run.run([&] { return stopping.load(); });
//
// Order: one runner handles its partition's messages one at a time, in order. A
// message is released only once acked or dead-lettered, so a retry or an open
// breaker holds the ring (a tethered subscription then back-pressures producers):
// there is no queue in between to grow. A handler that throws is retried like one
// that returned Outcome::retry (the exception's what() is the reason).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/bus.hpp"
#include "shmbus/dedup.hpp"
#include "shmbus/envelope.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus {

// What a handler says about one message.
struct Outcome {
  enum class Kind : uint8_t {
    ack,     // done: the message is released
    retry,   // transient failure: try again per the retry policy
    reject,  // permanent failure: dead-letter it now
  };
  Kind kind = Kind::ack;
  uint32_t code = 0;            // application error code (in the dead letter)
  std::string message;          // the reason (in the dead letter)
  int64_t retry_after_ns = -1;  // retry: wait this long instead of the backoff

  static Outcome ack() { return {}; }
  static Outcome retry(std::string why, uint32_t code = 0, int64_t after_ns = -1) {
    return {Kind::retry, code, std::move(why), after_ns};
  }
  static Outcome reject(std::string why, uint32_t code = 0) {
    return {Kind::reject, code, std::move(why), -1};
  }
};

struct RetryPolicy {
  uint32_t max_attempts = 5;  // handler calls per message, the first included (>= 1)
  int64_t initial_backoff_ns = 1'000'000;
  int64_t max_backoff_ns = 1'000'000'000;
  double multiplier = 2.0;
  double jitter = 0.2;  // each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]
  // The wait before attempt `attempt` (2 = the first retry):
  // min(initial * multiplier^(attempt - 2), max), jittered by `rnd` (any 64 random bits).
  int64_t backoff_ns(uint32_t attempt, uint64_t rnd) const;
};

struct BreakerPolicy {
  uint32_t failure_threshold = 5;    // consecutive failed attempts that open the breaker
  int64_t open_ns = 1'000'000'000;   // how long it stays open before a trial (half-open)
  uint32_t half_open_successes = 1;  // successful trials that close it again
};

// closed -> (failure_threshold consecutive failures) -> open -> (open_ns) ->
// half-open: one attempt at a time; a failure re-opens it, half_open_successes
// successes close it. Time is passed in (CLOCK_MONOTONIC ns), so it is testable.
class CircuitBreaker {
 public:
  enum class State : uint8_t { closed, open, half_open };
  explicit CircuitBreaker(BreakerPolicy p = {}) : p_(p) {}
  // May an attempt start at `now_ns`? (An open breaker turns half-open here.)
  bool allow(int64_t now_ns);
  void on_success();
  void on_failure(int64_t now_ns);
  State state() const { return state_; }
  int64_t open_until_ns() const { return open_until_; }
  uint64_t times_opened() const { return opened_; }

 private:
  BreakerPolicy p_;
  State state_ = State::closed;
  uint32_t failures_ = 0;
  uint32_t successes_ = 0;
  int64_t open_until_ = 0;
  uint64_t opened_ = 0;
};

using HandlerFn = std::function<Outcome(const View&)>;

// ---- Middleware ------------------------------------------------------------------
// A layer wraps a handler in another (tower's Layer, Watermill's middleware).
// HandlerOptions::layers = {a, b, c} runs a(b(c(handler))): `a` sees every attempt
// first and the outcome last. The runner itself is the outermost recoverer: a layer
// or handler that throws is a retry whose reason is the exception's what().
using Layer = std::function<HandlerFn(HandlerFn)>;

// The deadline of the attempt running on this thread (CLOCK_MONOTONIC ns, the
// innermost layers::timeout's), INT64_MAX outside one. A C++ handler cannot be
// pre-empted: one that may take long reads this and gives up early (cooperative,
// like a Go handler watching its context).
int64_t attempt_deadline_ns();

// Outcome code of an attempt that overran its layers::timeout.
inline constexpr uint32_t kTimeoutCode = 408;

// Counters a layers::metrics layer keeps (atomics: a HandlerPool's threads share one).
struct HandlerMetrics {
  std::atomic<uint64_t> attempts{0}, acks{0}, retries{0}, rejects{0};
  // Attempt duration histogram: bucket i counts attempts of [2^i, 2^(i+1)) ns
  // (bucket 0 also 0 ns, the last one everything longer).
  static constexpr size_t kBuckets = 40;
  std::atomic<uint64_t> duration_log2_ns[kBuckets]{};
  std::atomic<uint64_t> duration_sum_ns{0};
};

// What a layers::trace layer reports per attempt. The ids are the ones structured
// logs print in every language (docs/messaging.md "Trace and logs"): hex, 16 digits.
struct TraceRecord {
  const std::string* handler = nullptr;  // HandlerOptions::name of the layer's creator
  uint64_t message_id = 0, sequence = 0, correlation_id = 0, causation_id = 0;
  uint32_t producer_id = 0;
  TraceContext parent;  // the message's trace context (from its envelope; invalid if none)
  TraceContext span;    // this attempt's span: parent.child(), or a fresh trace
  Outcome::Kind outcome = Outcome::Kind::ack;
  uint32_t code = 0;
  int64_t duration_ns = 0;
};
using TraceSink = std::function<void(const TraceRecord&)>;

namespace layers {
// An attempt that takes longer than `ns` counts as failed: Outcome::retry("timeout:
// ...", kTimeoutCode) whatever it returned (a reject stays a reject). Its work may have
// been done: retried handlers must be idempotent, as with every retry.
Layer timeout(int64_t ns, std::function<int64_t()> clock = {});
// Counts attempts, outcomes and attempt durations into `m` (which outlives the runner).
Layer metrics(HandlerMetrics& m, std::function<int64_t()> clock = {});
// Reports each attempt to `sink` with the message's ids and trace context (read from
// its envelope, if it has one) and a span id of its own.
Layer trace(std::string handler_name, TraceSink sink, std::function<int64_t()> clock = {});
// A TraceSink writing one JSON object per line to `out` (structured log):
// {"event":"attempt","handler":..,"message_id":"<16 hex>","sequence":N,"trace_id":"<32 hex>",
//  "span_id":"<16 hex>","parent_span_id":..,"correlation_id":..,"outcome":"ack|retry|reject",
//  "code":N,"duration_ns":N}
TraceSink json_lines(FILE* out);
}  // namespace layers

struct HandlerOptions {
  std::string name = "handler";  // in dead letters and logs
  std::vector<Layer> layers;     // middleware around the handler, first outermost
  RetryPolicy retry;
  BreakerPolicy breaker;
  SubscriberOptions subscriber;  // partition, durable name, tethered (default) ...
  std::string dlq_topic;         // "": "<topic>.dlq"
  // Used to create the dead-letter topic if it does not exist (multi-producer: the
  // runners of every partition share it). Make it durable on a daemon to keep dead
  // letters while nobody reads them.
  TopicConfig dlq_config{.capacity = 1u << 20, .multi_producer = true};
  uint64_t seed = 0;  // jitter generator; 0: from the clock
  // Dedup (dedup.hpp; not owned, outlives the runner): a message the window has seen
  // is released without calling the handler (stats().duplicates); every finished
  // message (acked or dead-lettered) is recorded and committed, with the window's
  // application state (DedupWindow::set_app_state from the handler), before it is
  // released. With a durable subscriber name this makes the handler's effects on
  // that state effectively once across restarts and producer retries.
  DedupWindow* dedup = nullptr;
  // Time and waiting (tests inject a clock; production uses CLOCK_MONOTONIC and a
  // sleep that returns early when `stop` is asked for).
  std::function<int64_t()> clock;
  std::function<void(int64_t ns)> sleep;
};

struct HandlerStats {
  uint64_t handled = 0;  // messages finished (acked or dead-lettered)
  uint64_t acked = 0;
  uint64_t attempts = 0;  // handler calls
  uint64_t retries = 0;   // attempts after a failure
  uint64_t dead_lettered = 0;
  uint64_t lapped = 0;      // untethered: messages lost to the producer overtaking
  uint64_t duplicates = 0;  // dedup: messages released without calling the handler
};

class HandlerRunner {
 public:
  HandlerRunner(Bus& bus, const std::string& topic, HandlerFn fn, HandlerOptions opts = {});
  ~HandlerRunner();
  HandlerRunner(const HandlerRunner&) = delete;
  HandlerRunner& operator=(const HandlerRunner&) = delete;

  // Handles messages until stop() is true (checked between messages, between
  // attempts and while waiting). A message in retry when stop() turns true is not
  // released: a durable subscriber name gets it again on restart.
  void run(const std::function<bool()>& stop);
  // Handles at most one message, waiting up to wait_ns for one. True if a message
  // was finished (acked or dead-lettered).
  bool step(int64_t wait_ns, const std::function<bool()>& stop = {});

  const HandlerStats& stats() const { return stats_; }
  const CircuitBreaker& breaker() const { return breaker_; }
  Subscriber& subscriber() { return sub_; }
  const std::string& dlq_topic() const { return dlq_topic_; }

 private:
  bool handle(const View& v, const std::function<bool()>& stop);
  void dead_letter(const View& v, const Outcome& last, uint32_t attempts, int64_t first_ns, int64_t last_ns);
  void wait_ns(int64_t ns, const std::function<bool()>& stop);
  uint64_t next_rand();

  Bus bus_;
  std::string topic_;
  HandlerFn fn_;
  HandlerOptions opts_;
  Subscriber sub_;
  std::unique_ptr<Publisher> dlq_;
  std::string dlq_topic_;
  CircuitBreaker breaker_;
  HandlerStats stats_;
  uint64_t rng_;
  std::vector<std::byte> copy_;  // untethered: the message, copied before the handler runs
};

// A worker pool across partitions: one HandlerRunner per partition, each on its own
// thread (order is per partition, as for one runner; in flight at most one message
// per partition, held in its ring: no queue). The handler and its layers are called
// from every thread at once: they must be thread-safe. A durable subscriber name
// (opts.subscriber.name) is per partition already. opts.dedup must be null (a window
// belongs to one partition: run HandlerRunners with a window each instead), and
// opts.subscriber.partition is ignored.
class HandlerPool {
 public:
  // partitions: which to run ({}: every partition of the topic).
  HandlerPool(Bus& bus, const std::string& topic, HandlerFn fn, HandlerOptions opts = {},
              std::vector<uint32_t> partitions = {});
  ~HandlerPool();
  HandlerPool(const HandlerPool&) = delete;
  HandlerPool& operator=(const HandlerPool&) = delete;

  // Runs every partition's runner on its own thread until stop() is true (called from
  // every thread: make it cheap and thread-safe, e.g. an atomic), then joins them. The
  // first exception a runner throws stops the others and is rethrown here.
  void run(const std::function<bool()>& stop);
  size_t size() const { return runners_.size(); }
  HandlerRunner& runner(size_t i) { return *runners_[i]; }
  // Sum over the runners (read it after run() returned).
  HandlerStats stats() const;

 private:
  std::vector<std::unique_ptr<HandlerRunner>> runners_;
};

}  // namespace shmbus
