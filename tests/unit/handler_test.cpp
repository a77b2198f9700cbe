// HandlerRunner (issue "messaging contract"): retries with backoff and jitter, the
// circuit breaker, dead letters with their envelope, order, and what stop() leaves.
// Time is a fake clock the injected sleep advances: no real waiting, exact figures.
#include <catch2/catch.hpp>

#include <capnp/serialize.h>

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <atomic>
#include <algorithm>
#include <cstdio>
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

// ---- Middleware and the worker pool -------------------------------------------------

TEST_CASE("layers: run in order around the handler, first outermost; an empty layer is refused") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hlay")}), "h.layers"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  std::vector<std::string> trail;
  auto tag = [&](std::string n) -> Layer {
    return [&trail, n](HandlerFn inner) -> HandlerFn {
      return [&trail, n, inner](const View& v) {
        trail.push_back(n + "<");
        Outcome o = inner(v);
        trail.push_back(">" + n);
        return o;
      };
    };
  };
  HandlerOptions o;
  o.layers = {tag("a"), tag("b")};
  HandlerRunner run(
      g.bus, g.topic,
      [&](const View&) {
        trail.push_back("h");
        return Outcome::ack();
      },
      o);
  Publisher p = g.bus.publisher(g.topic);
  publish(p, 1);
  REQUIRE(run.step(0));
  CHECK(trail == std::vector<std::string>{"a<", "b<", "h", ">b", ">a"});
  HandlerOptions bad;
  bad.layers = {Layer{}};
  CHECK_THROWS_AS(HandlerRunner(
                      g.bus, g.topic, [](const View&) { return Outcome::ack(); }, bad),
                  Error);
  CHECK_THROWS_AS(layers::timeout(0), Error);
}

TEST_CASE(
    "layers::timeout: an overrun attempt is a retry with code 408, then dead-lettered; the deadline is "
    "visible to the handler") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("htmo")}), "h.slow"};
  TopicGuard gd{g.bus, "h.slow.dlq"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  g.bus.create_topic(gd.topic, {.capacity = 1 << 16, .multi_producer = true});
  Subscriber dlq = g.bus.subscriber(gd.topic);
  HandlerOptions o;
  o.retry = {
      .max_attempts = 3, .initial_backoff_ns = 100, .max_backoff_ns = 100, .multiplier = 1.0, .jitter = 0};
  o.breaker.failure_threshold = 100;
  FakeTime t;
  t.apply(o);
  o.layers = {layers::timeout(10'000'000, [&t] { return t.now; })};
  std::vector<int64_t> deadlines;
  CHECK(attempt_deadline_ns() == INT64_MAX);
  HandlerRunner run(
      g.bus, g.topic,
      [&](const View& v) {
        deadlines.push_back(attempt_deadline_ns() - t.now);
        if (text(v) == "m1")
          t.now += 50'000'000;  // m1 always takes 50 ms
        else
          t.now += 9'000'000;  // the others 9 ms: in time
        return Outcome::ack();
      },
      o);
  CHECK(attempt_deadline_ns() == INT64_MAX);
  Publisher p = g.bus.publisher(g.topic);
  publish(p, 3);
  while (run.step(0)) {
  }
  CHECK(run.stats().handled == 3);
  CHECK(run.stats().acked == 2);
  CHECK(run.stats().attempts == 5);  // m0, m1 x3, m2
  CHECK(run.stats().dead_lettered == 1);
  for (int64_t d : deadlines) CHECK(d == 10'000'000);
  CHECK(attempt_deadline_ns() == INT64_MAX);
  auto dl = drain_dlq(dlq);
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].payload == "m1");
  CHECK(dl[0].code == kTimeoutCode);
  CHECK(dl[0].attempts == 3);
  CHECK(dl[0].message.find("timeout: the attempt took 50.000 ms, the limit is 10.000 ms") == 0);
}

TEST_CASE(
    "layers::metrics counts attempts and outcomes; layers::trace reports the envelope's trace as parent") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hmet")}), "h.met"};
  TopicGuard gd{g.bus, "h.met.dlq"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  g.bus.create_topic(gd.topic, {.capacity = 1 << 16, .multi_producer = true});
  HandlerMetrics m;
  std::vector<TraceRecord> recs;
  char* logbuf = nullptr;
  size_t loglen = 0;
  FILE* log = open_memstream(&logbuf, &loglen);
  REQUIRE(log);
  TraceSink to_json = layers::json_lines(log);
  HandlerOptions o;
  o.name = "billing";
  o.retry = {.max_attempts = 2, .initial_backoff_ns = 1, .max_backoff_ns = 1, .multiplier = 1.0, .jitter = 0};
  FakeTime t;
  t.apply(o);
  o.layers = {layers::metrics(m, [&t] { return t.now; }), layers::trace(
                                                              "billing",
                                                              [&](const TraceRecord& r) {
                                                                recs.push_back(r);
                                                                to_json(r);
                                                              },
                                                              [&t] { return t.now; })};
  HandlerRunner run(
      g.bus, g.topic,
      [&](const View& v) {
        t.now += 1500;
        EnvelopedView ev;
        REQUIRE(ev.open(v) == Status::ok);
        const std::string m =
            std::string(reinterpret_cast<const char*>(ev.payload().data()), ev.payload().size());
        if (m == "bad") return Outcome::retry("nope", 7);
        return Outcome::ack();
      },
      o);
  Publisher p = g.bus.publisher(g.topic);
  Envelope e;
  e.correlation_id = 0xabcdef0123456789ull;
  e.causation_id = 0x42;
  e.trace = *TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  const std::string good = "good", bad = "bad";
  REQUIRE(publish_enveloped(p, e, std::as_bytes(std::span(good.data(), good.size())), 0x1111) == Status::ok);
  REQUIRE(publish_enveloped(p, e, std::as_bytes(std::span(bad.data(), bad.size())), 0x2222) == Status::ok);
  REQUIRE(p.offer("plain", 5, 0x3333) == Status::ok);  // no envelope: a fresh trace
  while (run.step(0)) {
  }
  std::fclose(log);
  std::string lines(logbuf, loglen);
  std::free(logbuf);
  CHECK(m.attempts.load() == 4);  // good, bad x2, plain
  CHECK(m.acks.load() == 2);
  CHECK(m.retries.load() == 2);
  CHECK(m.rejects.load() == 0);
  CHECK(m.duration_sum_ns.load() == 4 * 1500);
  CHECK(m.duration_log2_ns[10].load() == 4);  // 1500 ns is in [1024, 2048)
  REQUIRE(recs.size() == 4);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(recs[i].parent.trace_hi == 0x0af7651916cd43ddull);
    CHECK(recs[i].span.trace_hi == 0x0af7651916cd43ddull);
    CHECK(recs[i].span.trace_lo == 0x8448eb211c80319cull);
    CHECK(recs[i].parent.parent_id == 0xb7ad6b7169203331ull);
    CHECK(recs[i].span.parent_id != 0xb7ad6b7169203331ull);
    CHECK(recs[i].correlation_id == 0xabcdef0123456789ull);
    CHECK(recs[i].causation_id == 0x42);
  }
  CHECK(recs[0].outcome == Outcome::Kind::ack);
  CHECK(recs[1].outcome == Outcome::Kind::retry);
  CHECK(recs[1].code == 7);
  CHECK_FALSE(recs[3].parent.valid());
  CHECK(recs[3].span.valid());
  CHECK(recs[3].message_id == 0x3333);
  CHECK(lines.find("{\"event\":\"attempt\",\"handler\":\"billing\",\"message_id\":\"0000000000001111\"") ==
        0);
  CHECK(lines.find("\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\"") != std::string::npos);
  CHECK(lines.find("\"parent_span_id\":\"b7ad6b7169203331\"") != std::string::npos);
  CHECK(lines.find("\"correlation_id\":\"abcdef0123456789\"") != std::string::npos);
  CHECK(lines.find("\"outcome\":\"retry\",\"code\":7,\"duration_ns\":1500}") != std::string::npos);
  CHECK(std::count(lines.begin(), lines.end(), '\n') == 4);
}

TEST_CASE("handler pool: one thread per partition, every message once, in order per partition") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hpool")}), "h.pool"};
  constexpr uint32_t kParts = 4;
  constexpr int kPer = 2000;
  g.bus.create_topic(g.topic, {.partitions = kParts, .capacity = 1 << 16});
  std::mutex mu;
  std::vector<std::vector<uint64_t>> seen(kParts);
  std::atomic<int> done{0};
  std::atomic<int> concurrent{0}, max_concurrent{0};
  HandlerOptions o;
  o.retry = {
      .max_attempts = 3, .initial_backoff_ns = 1000, .max_backoff_ns = 1000, .multiplier = 1.0, .jitter = 0};
  HandlerPool pool(
      g.bus, g.topic,
      [&](const View& v) {
        const int c = concurrent.fetch_add(1) + 1;
        for (int m = max_concurrent.load(); c > m && !max_concurrent.compare_exchange_weak(m, c);) {
        }
        uint64_t id = v.message_id();
        // Every 97th message fails once: a retry must not reorder its partition.
        static thread_local uint64_t failed_once = 0;
        Outcome out = Outcome::ack();
        if (id % 97 == 0 && failed_once != id) {
          failed_once = id;
          out = Outcome::retry("once");
        } else {
          std::lock_guard<std::mutex> l(mu);
          seen[id >> 32].push_back(id & 0xffffffff);
          done.fetch_add(1);
        }
        concurrent.fetch_sub(1);
        return out;
      },
      o);
  REQUIRE(pool.size() == kParts);
  std::vector<std::thread> producers;
  for (uint32_t part = 0; part < kParts; ++part)
    producers.emplace_back([&, part] {
      Publisher p = g.bus.publisher(g.topic, {.partition = part});
      for (int i = 0; i < kPer; ++i) {
        const uint64_t id = (uint64_t(part) << 32) | uint64_t(i);
        while (p.offer(&id, sizeof id, id) != Status::ok) std::this_thread::yield();
      }
    });
  pool.run([&] { return done.load() == int(kParts) * kPer; });
  for (auto& t : producers) t.join();
  for (uint32_t part = 0; part < kParts; ++part) {
    REQUIRE(seen[part].size() == size_t(kPer));
    for (int i = 0; i < kPer; ++i) REQUIRE(seen[part][size_t(i)] == uint64_t(i));
  }
  CHECK(pool.stats().acked == kParts * kPer);
  CHECK(pool.stats().retries == pool.stats().attempts - kParts * kPer);
  CHECK(pool.stats().retries > 0);
  CHECK(max_concurrent.load() <= int(kParts));
  HandlerOptions with_dedup;
  DedupWindow* fake = reinterpret_cast<DedupWindow*>(&with_dedup);
  with_dedup.dedup = fake;
  CHECK_THROWS_AS(HandlerPool(
                      g.bus, g.topic, [](const View&) { return Outcome::ack(); }, with_dedup),
                  Error);
}

TEST_CASE("handler pool: a runner that throws stops the others and run() rethrows it") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hpoolx")}), "h.poolx"};
  g.bus.create_topic(g.topic, {.partitions = 3, .capacity = 1 << 16});
  HandlerOptions o;
  o.dlq_topic = "h.poolx.missing/dlq";  // an invalid topic name: dead-lettering throws
  o.retry.max_attempts = 1;
  HandlerPool pool(
      g.bus, g.topic, [](const View&) { return Outcome::reject("poison"); }, o);
  Publisher p = g.bus.publisher(g.topic, {.partition = 1});
  REQUIRE(p.offer("x", 1) == Status::ok);
  CHECK_THROWS_AS(pool.run([] { return false; }), Error);  // would never return if the others went on
  CHECK(pool.stats().dead_lettered == 0);
}

TEST_CASE("handler: a missing dead-letter topic is created on a direct bus too") {
  TopicGuard g{Bus::direct({.shm_prefix = test::unique_prefix("hdlqmk")}), "h.mk"};
  TopicGuard gd{g.bus, "h.mk.dlq"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  REQUIRE(g.bus.partitions(gd.topic) == 0);
  HandlerRunner run(g.bus, g.topic, [](const View&) { return Outcome::reject("poison", 9); });
  Publisher p = g.bus.publisher(g.topic);
  publish(p, 1);
  REQUIRE(run.step(0));  // before the fix: "topic segment ... does not exist" thrown here
  CHECK(run.stats().dead_lettered == 1);
  REQUIRE(g.bus.partitions(gd.topic) == 1);
  Subscriber dlq = g.bus.subscriber(gd.topic, {.tethered = false});
  (void)dlq;  // the letter was published before this subscriber joined: the topic exists, with one frame
  CHECK(g.bus.partitions(gd.topic) == 1);
}
