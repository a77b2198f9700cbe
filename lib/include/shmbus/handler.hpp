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

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shmbus/bus.hpp"
#include "shmbus/dedup.hpp"
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

struct HandlerOptions {
  std::string name = "handler";  // in dead letters and logs
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

using HandlerFn = std::function<Outcome(const View&)>;

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

}  // namespace shmbus
