// HandlerRunner (issue "messaging contract"): retries with backoff and jitter, the
// circuit breaker, dead letters with their envelope, order, and what stop() leaves.
// Time is a fake clock the injected sleep advances: no real waiting, exact figures.
#include <catch2/catch.hpp>

#include <capnp/serialize.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "envelope.capnp.h"
#include "shmbus/handler.hpp"
#include "test_util.hpp"

using namespace shmbus;
using shmbus::test::TopicGuard;

namespace {

struct FakeTime {
  int64_t now = 1'000'000'000;
  std::vector<int64_t> sleeps;
  void apply(HandlerOptions& o) {
    o.clock = [this] { return now; };
    o.sleep = [this](int64_t ns) {
      sleeps.push_back(ns);
      now += ns;
    };
  }
};

// "m<i>" (appended: g++ 12's -Wrestrict misfires on mname(i) at -O2).
std::string mname(int i) {
  std::string m = "m";
  m += std::to_string(i);
  return m;
}

std::string text(const View& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size()); }

void publish(Publisher& p, int n, int from = 0) {
  for (int i = from; i < from + n; ++i) {
    const std::string m = mname(i);
    REQUIRE(p.offer(m.data(), m.size(), uint64_t(1000 + i)) == Status::ok);
  }
}

struct DlqEntry {
  std::string message, handler, topic, payload;
  uint32_t code, attempts, partition;
  uint64_t sequence, message_id, first, last;
  schema::DeadLetter::Reason reason;
  uint32_t max_attempts;
};

std::vector<DlqEntry> drain_dlq(Subscriber& s) {
  std::vector<DlqEntry> out;
  View v;
  while (s.poll(v) == Status::ok) {
    CHECK(v.schema_id() == capnp::typeId<schema::DeadLetter>());
    kj::ArrayPtr<const capnp::word> w(reinterpret_cast<const capnp::word*>(v.data()), v.size() / 8);
    capnp::FlatArrayMessageReader r(w);
    auto d = r.getRoot<schema::DeadLetter>();
    auto p = d.getPayload();
    out.push_back({d.getMessage(), d.getHandler(), d.getOriginalTopic(),
                   std::string(reinterpret_cast<const char*>(p.begin()), p.size()), d.getCode(),
                   d.getAttempts(), d.getPartition(), d.getSequence(), d.getMessageId(),
                   d.getFirstFailureNs(), d.getLastFailureNs(), d.getReason(),
                   d.getRetry().getMaxAttempts()});
    s.release(v);
  }
  return out;
}

}  // namespace

TEST_CASE("backoff: exponential, capped, jittered within its bounds, reproducible") {
  RetryPolicy p;
  p.initial_backoff_ns = 1000;
  p.max_backoff_ns = 50'000;
  p.multiplier = 3.0;
  p.jitter = 0.25;
  CHECK(p.backoff_ns(1, 0) == 0);
  for (uint32_t a = 2; a < 12; ++a) {
    const double base = std::min(1000.0 * std::pow(3.0, a - 2), 50'000.0);
    for (uint64_t r : {uint64_t(0), ~uint64_t(0), uint64_t(0x8000'0000'0000'0000ull), uint64_t(12345)}) {
      const int64_t d = p.backoff_ns(a, r);
      CHECK(d >= int64_t(base * 0.75) - 1);
      CHECK(d <= int64_t(base * 1.25) + 1);
    }
  }
  CHECK(p.backoff_ns(2, 0) == 750);                          // the lowest jitter
  CHECK(p.backoff_ns(2, 0x8000'0000'0000'0000ull) == 1000);  // the middle
  p.jitter = 0;
  CHECK(p.backoff_ns(4, 99) == 9000);
  CHECK(p.backoff_ns(40, 99) == 50'000);  // capped, no overflow
}

TEST_CASE("circuit breaker: opens after the threshold, half-opens after open_ns, closes or re-opens") {
  CircuitBreaker b({.failure_threshold = 3, .open_ns = 100, .half_open_successes = 2});
  CHECK(b.allow(0));
  b.on_failure(1);
  b.on_failure(2);
  b.on_success();  // consecutive failures only
  b.on_failure(3);
  b.on_failure(4);
  CHECK(b.state() == CircuitBreaker::State::closed);
  b.on_failure(5);
  CHECK(b.state() == CircuitBreaker::State::open);
  CHECK(b.times_opened() == 1);
  CHECK_FALSE(b.allow(104));
  CHECK(b.allow(105));
  CHECK(b.state() == CircuitBreaker::State::half_open);
  b.on_failure(106);  // one failed trial re-opens
  CHECK(b.state() == CircuitBreaker::State::open);
  CHECK(b.open_until_ns() == 206);
  CHECK(b.allow(206));
  b.on_success();
  CHECK(b.state() == CircuitBreaker::State::half_open);
  b.on_success();
  CHECK(b.state() == CircuitBreaker::State::closed);
  CHECK(b.times_opened() == 2);
}

TEST_CASE("handler: a flaky handler is retried with backoff; every message acked once, in order") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hflaky")}), "h.flaky"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  HandlerOptions o;
  o.retry = {.max_attempts = 4,
             .initial_backoff_ns = 1000,
             .max_backoff_ns = 1'000'000,
             .multiplier = 2.0,
             .jitter = 0.0};
  o.breaker.failure_threshold = 100;
  FakeTime t;
  t.apply(o);
  std::map<std::string, int> calls;
  std::vector<std::string> acked;
  HandlerRunner run(
      g.bus, g.topic,
      [&](const View& v) {
        const std::string m = text(v);
        // Every third message fails twice, then succeeds.
        if (++calls[m] <= 2 && (v.message_id() % 3) == 0) return Outcome::retry("flaky");
        acked.push_back(m);
        return Outcome::ack();
      },
      o);
  Publisher p = g.bus.publisher(g.topic);
  publish(p, 30);
  while (run.step(0)) {
  }
  REQUIRE(acked.size() == 30);
  for (int i = 0; i < 30; ++i) CHECK(acked[size_t(i)] == mname(i));
  CHECK(run.stats().acked == 30);
  CHECK(run.stats().retries == 20);  // 10 messages x 2 retries
  CHECK(run.stats().attempts == 50);
  CHECK(run.stats().dead_lettered == 0);
  REQUIRE(t.sleeps.size() == 20);
  for (size_t i = 0; i < t.sleeps.size(); i += 2) {
    CHECK(t.sleeps[i] == 1000);      // before attempt 2
    CHECK(t.sleeps[i + 1] == 2000);  // before attempt 3
  }
}

TEST_CASE(
    "handler: retries exhausted or a rejection dead-letters the message with its envelope; the rest flows") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hdlq")}), "h.orders"};
  TopicGuard gd{g.bus, "h.orders.dlq"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  g.bus.create_topic(gd.topic, {.capacity = 1 << 16, .multi_producer = true});
  Subscriber dlq = g.bus.subscriber(gd.topic);
  HandlerOptions o;
  o.name = "fulfil";
  o.retry = {.max_attempts = 3,
             .initial_backoff_ns = 500,
             .max_backoff_ns = 10'000,
             .multiplier = 2.0,
             .jitter = 0.5};
  o.breaker.failure_threshold = 100;
  o.seed = 42;
  FakeTime t;
  t.apply(o);
  std::vector<std::string> acked;
  HandlerRunner run(
      g.bus, g.topic,
      [&](const View& v) -> Outcome {
        const std::string m = text(v);
        if (m == "m7") return Outcome::retry("downstream 503", 503);
        if (m == "m12") return Outcome::reject("no such customer", 404);
        if (m == "m20") throw std::runtime_error("bad field");
        acked.push_back(m);
        return Outcome::ack();
      },
      o);
  Publisher p = g.bus.publisher(g.topic);
  publish(p, 25);
  while (run.step(0)) {
  }
  CHECK(acked.size() == 22);
  CHECK(run.stats().dead_lettered == 3);
  CHECK(run.stats().handled == 25);
  auto d = drain_dlq(dlq);
  REQUIRE(d.size() == 3);
  CHECK(d[0].payload == "m7");
  CHECK(d[0].message == "downstream 503");
  CHECK(d[0].code == 503);
  CHECK(d[0].attempts == 3);
  CHECK(d[0].reason == schema::DeadLetter::Reason::EXHAUSTED);
  CHECK(d[0].sequence == 8);
  CHECK(d[0].message_id == 1007);
  CHECK(d[0].topic == "h.orders");
  CHECK(d[0].handler == "fulfil");
  CHECK(d[0].max_attempts == 3);
  CHECK(d[0].last > d[0].first);  // two backoffs between the first and the last failure
  CHECK(d[1].payload == "m12");
  CHECK(d[1].attempts == 1);
  CHECK(d[1].code == 404);
  CHECK(d[1].reason == schema::DeadLetter::Reason::REJECTED);
  CHECK(d[1].first == d[1].last);
  CHECK(d[2].payload == "m20");
  CHECK(d[2].message == "exception: bad field");
  CHECK(d[2].attempts == 3);
  // Jittered backoffs stay within [0.5, 1.5] x 500 and 1000.
  REQUIRE(t.sleeps.size() == 4);
  for (size_t i = 0; i < 4; i += 2) {
    CHECK(t.sleeps[i] >= 250);
    CHECK(t.sleeps[i] <= 750);
    CHECK(t.sleeps[i + 1] >= 500);
    CHECK(t.sleeps[i + 1] <= 1500);
  }
}

TEST_CASE(
    "handler: a failing dependency opens the breaker: no calls while open, a trial, then it flows again") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hbrk")}), "h.brk"};
  TopicGuard gd{g.bus, "h.brk.dlq"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  HandlerOptions o;
  o.retry = {
      .max_attempts = 1000, .initial_backoff_ns = 10, .max_backoff_ns = 10, .multiplier = 1.0, .jitter = 0};
  o.breaker = {.failure_threshold = 3, .open_ns = 1'000'000, .half_open_successes = 1};
  FakeTime t;
  t.apply(o);
  bool down = true;
  int64_t down_until = t.now + 5'500'000;  // the dependency is back after 5.5 ms
  std::vector<int64_t> call_times;
  std::vector<std::string> acked;
  HandlerRunner run(
      g.bus, g.topic,
      [&](const View& v) {
        call_times.push_back(t.now);
        if (down && t.now < down_until) return Outcome::retry("dependency down");
        down = false;
        acked.push_back(text(v));
        return Outcome::ack();
      },
      o);
  Publisher p = g.bus.publisher(g.topic);
  publish(p, 10);
  while (run.step(0)) {
  }
  REQUIRE(acked.size() == 10);
  for (int i = 0; i < 10; ++i) CHECK(acked[size_t(i)] == mname(i));
  CHECK(run.stats().dead_lettered == 0);
  // 3 failures open it for 1 ms; each half-open trial fails until 5.5 ms: opened 1 + 5 times.
  CHECK(run.breaker().times_opened() == 6);
  CHECK(run.breaker().state() == CircuitBreaker::State::closed);
  // While open, nobody was called: consecutive calls are >= open_ns apart after the third failure.
  size_t wide_gaps = 0;
  for (size_t i = 1; i < call_times.size(); ++i)
    if (call_times[i] - call_times[i - 1] >= 1'000'000) ++wide_gaps;
  CHECK(wide_gaps == 6);
  CHECK(call_times.size() == 3 + 5 + 10);  // 3 to open, 5 failed trials, then 10 successes
}

TEST_CASE("handler: stop() during retries leaves the message unreleased for the next runner") {
  auto bus = Bus::direct({.shm_prefix = test::unique_prefix("hstop")});
  TopicGuard g{bus, "h.stop"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  Publisher p = g.bus.publisher(g.topic);
  std::vector<std::string> seen;
  {
    HandlerOptions o;
    o.subscriber.name = "worker";
    FakeTime t;
    t.apply(o);
    bool stopping = false;
    HandlerRunner run(
        g.bus, g.topic,
        [&](const View& v) {
          if (text(v) == "m2") {
            stopping = true;  // shutdown asked while m2 is failing
            return Outcome::retry("busy");
          }
          seen.push_back(text(v));
          return Outcome::ack();
        },
        o);
    publish(p, 5);
    while (run.step(0, [&] { return stopping; })) {
    }
    CHECK(run.stats().acked == 2);
  }
  // The durable name resumes at m2: nothing acked is seen again, nothing is skipped.
  HandlerOptions o;
  o.subscriber.name = "worker";
  HandlerRunner again(
      g.bus, g.topic,
      [&](const View& v) {
        seen.push_back(text(v));
        return Outcome::ack();
      },
      o);
  while (again.step(0)) {
  }
  REQUIRE(seen.size() == 5);
  for (int i = 0; i < 5; ++i) CHECK(seen[size_t(i)] == mname(i));
}
