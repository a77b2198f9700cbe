// Untethered subscribers that the producer overtakes (P9): they are told
// (Status::lapped), never handed overwritten bytes, and continue at the tail.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "shmbus/shmbus.hpp"
#include "../test_util.hpp"

using namespace shmbus;

namespace {
struct Body {
  uint64_t counter;
  uint64_t sum;  // fnv1a of fill[]
  uint8_t fill[240];
};
uint64_t counter_of(const View& v) {
  uint64_t c = 0;
  std::memcpy(&c, v.data(), sizeof c);
  return c;
}
}  // namespace

TEST_CASE("an untethered subscriber that is lapped gets Status::lapped once, then the new messages",
          "[unit][lapped]") {
  Bus bus = Bus::direct({.shm_prefix = test::unique_prefix("lap")});
  test::TopicGuard g{bus, "lap.t"};
  bus.create_topic("lap.t", {.capacity = 8192, .policy = Policy::fail});
  Publisher pub = bus.publisher("lap.t");
  SubscriberOptions so;
  so.tethered = false;
  Subscriber sub = bus.subscriber("lap.t", so);
  char buf[256] = {};
  uint64_t n = 1;
  std::memcpy(buf, &n, sizeof n);
  REQUIRE(pub.offer(buf, sizeof buf, n) == Status::ok);
  View first;
  REQUIRE(sub.poll(first) == Status::ok);
  REQUIRE(counter_of(first) == 1);
  CHECK(sub.check(first) == Status::ok);
  // The producer is never held back by an untethered subscriber: 3 laps.
  for (n = 2; n <= 100; ++n) {
    std::memcpy(buf, &n, sizeof n);
    REQUIRE(pub.offer(buf, sizeof buf, n) == Status::ok);
  }
  CHECK(sub.check(first) == Status::lapped);  // what `first` pointed to is gone
  View v;
  CHECK(sub.poll(v) == Status::lapped);
  CHECK(sub.stats().lapped == 1);
  CHECK(sub.poll(v) == Status::empty);
  // poll_wait reports a lap instead of sleeping through it.
  for (n = 101; n <= 200; ++n) {
    std::memcpy(buf, &n, sizeof n);
    REQUIRE(pub.offer(buf, sizeof buf, n) == Status::ok);
  }
  CHECK(sub.poll_wait(v, 1'000'000'000) == Status::lapped);
  n = 201;
  std::memcpy(buf, &n, sizeof n);
  REQUIRE(pub.offer(buf, sizeof buf, n) == Status::ok);
  REQUIRE(sub.poll_wait(v, 1'000'000'000) == Status::ok);
  CHECK(counter_of(v) == 201);
  CHECK(sub.check(v) == Status::ok);
  sub.release(v);
  CHECK(sub.stats().lapped == 2);
}

TEST_CASE("an untethered reader racing a fast producer never accepts a torn or overwritten message",
          "[unit][lapped][concurrency]") {
  const uint64_t seed = std::random_device{}();
  INFO("seed " << seed);
  Bus bus = Bus::direct({.shm_prefix = test::unique_prefix("lapr")});
  test::TopicGuard g{bus, "lap.r"};
  bus.create_topic("lap.r", {.capacity = 16384, .policy = Policy::fail});
  Publisher pub = bus.publisher("lap.r");
  SubscriberOptions so;
  so.tethered = false;
  Subscriber sub = bus.subscriber("lap.r", so);
  const uint64_t total = 200'000;
  std::atomic<bool> done{false}, stuck{false};
  std::atomic<uint64_t> sent{0}, accepted_n{0}, reader_pos{0};
  const shm::RingRefs refs = sub.refs();
  std::thread prod([&] {
    uint64_t ckpt = 0;
    bool await_accept = false;
    std::mt19937_64 rng(seed);
    Body b{};
    for (uint64_t i = 1; i <= total; ++i) {
      b.counter = i;
      uint8_t x = uint8_t(rng());
      for (auto& f : b.fill) f = x++;
      b.sum = test::fnv1a(b.fill, sizeof b.fill);
      while (pub.offer(&b, sizeof b, i) != Status::ok) {
      }
      sent.store(i, std::memory_order_release);
      // Every 5000 messages: wait (watchdog) until the reader has caught up with the
      // tail, then send one message alone and wait until it is accepted (nothing can
      // lap it): whatever the scheduler does, both regimes (lapped, intact) happen.
      const uint64_t until = shm::monotonic_ns() + 30'000'000'000ull;
      auto wait_for = [&](auto cond) {
        while (!cond() && !stuck)
          if (shm::monotonic_ns() > until)
            stuck = true;
          else
            std::this_thread::yield();
      };
      if (await_accept) {
        wait_for([&] { return accepted_n.load(std::memory_order_acquire) > ckpt; });
        await_accept = false;
      } else if (i % 5000 == 0 && i < total) {
        const uint64_t tail = shm::aref(refs.data->tail_pos).load(std::memory_order_acquire);
        wait_for([&] { return reader_pos.load(std::memory_order_acquire) >= tail; });
        ckpt = accepted_n.load(std::memory_order_acquire);
        await_accept = true;
      }
      // Bursts of up to ~3 laps, then a pause: both the lapped and the intact
      // regime happen (a pause is pacing, not synchronisation).
      if (rng() % 64 == 0) {
        const uint64_t until = shm::monotonic_ns() + 2'000 + rng() % 30'000;
        while (shm::monotonic_ns() < until) shm::cpu_relax();
      }
    }
    done = true;
  });
  uint64_t last = 0, accepted = 0, torn_caught = 0;
  const uint64_t deadline = shm::monotonic_ns() + 60'000'000'000ull;  // watchdog
  View v;
  Body copy;
  // The producer runs 1000 messages (> 15 laps) ahead first: a lap is certain.
  while (sent.load(std::memory_order_acquire) < 1000) {
    REQUIRE(shm::monotonic_ns() < deadline);
    std::this_thread::yield();
  }
  for (;;) {
    Status s = sub.poll(v);
    if (s != Status::ok) reader_pos.store(sub.position(), std::memory_order_release);
    if (s == Status::ok) {
      std::memcpy(&copy, v.data(), sizeof copy);  // read in place...
      if (sub.check(v) != Status::ok) {           // ...then validate (P9)
        ++torn_caught;
        continue;
      }
      REQUIRE(copy.counter > last);
      REQUIRE(copy.sum == test::fnv1a(copy.fill, sizeof copy.fill));
      last = copy.counter;
      ++accepted;
      accepted_n.store(accepted, std::memory_order_release);
      sub.release(v);
      if (last == total) break;
    } else if (s == Status::empty) {
      if (done && sub.poll(v) == Status::empty) break;
      REQUIRE(shm::monotonic_ns() < deadline);
    } else {
      REQUIRE(s == Status::lapped);
    }
  }
  prod.join();
  CHECK_FALSE(stuck.load());
  INFO("accepted " << accepted << " laps " << sub.stats().lapped << " torn " << torn_caught);
  CHECK(accepted > 0);
  CHECK(sub.stats().lapped > 0);
  CHECK(sub.stats().corrupt == 0);
}
