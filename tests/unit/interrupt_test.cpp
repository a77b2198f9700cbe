// interrupt(): a wait blocked in one thread is ended from another at once
// (Subscriber, Publisher; the C ABI's *_interrupt, Go's context and Rust's
// interrupt handle stand on it). The waits here are long (20 s) or forever: a lost
// interrupt shows as timed_out (or the test's own timeout), never as a pass.
#include <catch2/catch.hpp>

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include "shmbus/shmbus.hpp"
#include "../test_util.hpp"

using namespace shmbus;

namespace {

using test::wait_until_asleep;

constexpr int64_t kLong = 20'000'000'000;  // far longer than any interrupt may take

}  // namespace

TEST_CASE("Subscriber::interrupt ends a poll_wait sleeping in another thread", "[unit][interrupt]") {
  Bus bus = Bus::direct({.shm_prefix = test::unique_prefix("intr")});
  test::TopicGuard g{bus, "intr.sub"};
  bus.create_topic("intr.sub", {.capacity = 8192});
  Publisher pub = bus.publisher("intr.sub");
  const WaitStrategy strategy = GENERATE(WaitStrategy::futex, WaitStrategy::hybrid, WaitStrategy::busy_spin);
  CAPTURE(int(strategy));
  SubscriberOptions so;
  so.wait = strategy;
  Subscriber sub = bus.subscriber("intr.sub", so);
  std::atomic<pid_t> tid{0};
  auto waiter = std::async(std::launch::async, [&] {
    tid = pid_t(syscall(SYS_gettid));
    View v;
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = sub.poll_wait(v, kLong);
    return std::pair{s, std::chrono::steady_clock::now() - t0};
  });
  if (strategy != WaitStrategy::busy_spin) REQUIRE(wait_until_asleep(tid));
  sub.interrupt();
  auto [s, took] = waiter.get();
  CHECK(s == Status::interrupted);
  CHECK(took < std::chrono::seconds(5));
  // Taken once: the next wait runs its course, and messages still arrive.
  View v;
  CHECK(sub.poll_wait(v, 1'000'000) == Status::timed_out);
  REQUIRE(pub.offer("x", 1, 7) == Status::ok);
  REQUIRE(sub.poll_wait(v, kLong) == Status::ok);
  CHECK(v.message_id() == 7);
}

TEST_CASE("an interrupt raised while nothing waits ends the next wait once", "[unit][interrupt]") {
  Bus bus = Bus::direct({.shm_prefix = test::unique_prefix("intr")});
  test::TopicGuard g{bus, "intr.early"};
  bus.create_topic("intr.early", {.capacity = 8192});
  Publisher pub = bus.publisher("intr.early");
  Subscriber sub = bus.subscriber("intr.early");
  sub.interrupt();
  sub.interrupt();  // raised twice before a wait: still one
  View v;
  CHECK(sub.wait_for(kLong) == Status::interrupted);
  CHECK(sub.wait_for(1'000'000) == Status::timed_out);
  // A message that is there wins over a pending interrupt (poll first), and the
  // interrupt then ends the following wait.
  REQUIRE(pub.offer("y", 1, 8) == Status::ok);
  sub.interrupt();
  REQUIRE(sub.poll_wait(v, kLong) == Status::ok);
  sub.release(v);
  CHECK(sub.poll_wait(v, kLong) == Status::interrupted);
  CHECK_FALSE(sub.wait(1'000'000));
}

TEST_CASE("Publisher::interrupt ends a claim blocked for space in another thread", "[unit][interrupt]") {
  Bus bus = Bus::direct({.shm_prefix = test::unique_prefix("intr")});
  test::TopicGuard g{bus, "intr.pub"};
  bus.create_topic("intr.pub", {.capacity = 4096, .policy = Policy::block});
  const WaitStrategy strategy = GENERATE(WaitStrategy::futex, WaitStrategy::hybrid, WaitStrategy::busy_spin);
  CAPTURE(int(strategy));
  PublisherOptions po;
  po.block_timeout_ns = kLong;
  po.wait = strategy;
  Publisher pub = bus.publisher("intr.pub", po);
  Subscriber sub = bus.subscriber("intr.pub");  // tethered, reads nothing yet
  char body[200] = {};
  uint64_t sent = 0;
  {
    // Fill the ring with a policy-fail view of it: try_claim never waits.
    ClaimView c;
    while (pub.try_claim(sizeof body, c) == Status::ok)
      REQUIRE(pub.commit(sizeof body, ++sent) == Status::ok);
  }
  REQUIRE(sent > 0);
  std::atomic<pid_t> tid{0};
  auto blocked = std::async(std::launch::async, [&] {
    tid = pid_t(syscall(SYS_gettid));
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = pub.offer(body, sizeof body, sent + 1);
    return std::pair{s, std::chrono::steady_clock::now() - t0};
  });
  if (strategy != WaitStrategy::busy_spin) REQUIRE(wait_until_asleep(tid));
  pub.interrupt();
  auto [s, took] = blocked.get();
  CHECK(s == Status::interrupted);
  CHECK(took < std::chrono::seconds(5));
  CHECK(pub.stats().back_pressured == 0);  // an interrupt is not a timeout
  // Nothing was published by the interrupted offer, and the ring still works.
  uint64_t got = 0;
  View v;
  while (sub.poll(v) == Status::ok) {
    CHECK(v.message_id() == ++got);
    sub.release(v);
  }
  CHECK(got == sent);
  REQUIRE(pub.offer(body, sizeof body, sent + 1) == Status::ok);
  REQUIRE(sub.poll_wait(v, kLong) == Status::ok);
  CHECK(v.message_id() == sent + 1);
}

TEST_CASE("Publisher::interrupt ends a wait_durable sleeping in another thread", "[unit][interrupt]") {
  // A topic nothing archives: its durable sequence never moves, so only the
  // interrupt (or the 20 s timeout, a failure here) ends the wait.
  Bus bus = Bus::direct({.shm_prefix = test::unique_prefix("intr")});
  test::TopicGuard g{bus, "intr.dur"};
  bus.create_topic("intr.dur", {.capacity = 4096});
  Publisher pub = bus.publisher("intr.dur");
  char body[8] = {};
  REQUIRE(pub.offer(body, sizeof body) == Status::ok);
  std::atomic<pid_t> tid{0};
  auto blocked = std::async(std::launch::async, [&] {
    tid = pid_t(syscall(SYS_gettid));
    return pub.wait_durable(1, kLong);
  });
  REQUIRE(wait_until_asleep(tid));  // past the 20 us spin, in the futex wait
  pub.interrupt();
  CHECK(blocked.get() == Status::interrupted);
  // Taken once: the next wait runs to its own timeout.
  CHECK(pub.wait_durable(1, 1'000'000) == Status::timed_out);
}
