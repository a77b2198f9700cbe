// README guarantees, each checked in-process on a direct bus:
//  * "a producer issues a futex wake only when someone sleeps": the producer bumps
//    DataHeader::data_futex exactly when it issues a wake (ring.hpp,
//    notify_data_waiters), so the word counts its wakes. A subscriber that polls
//    without sleeping must see N commits with no wake; a sleeping one gets one per
//    commit it sleeps through.
//  * MessageReader's nesting and traversal limits (docs/protocol.md, message.hpp):
//    a deep message and an amplifying one (many pointers to one list) are refused
//    cleanly (read_message: Status::malformed), not crashed on or walked unbounded.
#include <capnp/any.h>

#include <atomic>
#include <catch2/catch.hpp>

#include <sys/syscall.h>
#include <unistd.h>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "shmbus/shmbus.hpp"
#include "shmbus/message.hpp"
#include "../test_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {
uint32_t data_futex(const Publisher& p) {
  return shm::aref(p.refs().data->data_futex).load(std::memory_order_seq_cst);
}
uint64_t waiter_bits(const Publisher& p) {
  return shm::aref(p.refs().wake->data_waiter_bits[0]).load(std::memory_order_seq_cst);
}
}  // namespace

TEST_CASE(
    "a producer issues no futex wake while its subscriber polls without sleeping, one per commit while it "
    "sleeps",
    "[guarantee]") {
  TopicGuard g{Bus::direct({.shm_prefix = unique_prefix("nowake")}), "g.nowake"};
  g.bus.create_topic(g.topic, {.capacity = 4 << 20, .policy = Policy::block});
  Publisher pub = g.bus.publisher(g.topic);
  const uint64_t n = 20'000;
  {
    SubscriberOptions so;
    so.wait = WaitStrategy::busy_spin;
    Subscriber sub = g.bus.subscriber(g.topic, so);
    std::atomic<uint64_t> got{0};
    const uint32_t f0 = data_futex(pub);
    std::thread t([&] {
      View v;
      while (got.load(std::memory_order_relaxed) < n) {
        if (sub.poll(v) != Status::ok) continue;  // poll never sleeps
        got.fetch_add(1, std::memory_order_relaxed);
        sub.release(v);
      }
    });
    uint64_t x = 0;
    for (uint64_t i = 0; i < n; ++i, ++x) {
      REQUIRE(waiter_bits(pub) == 0);
      REQUIRE(pub.offer(&x, sizeof x) == Status::ok);
    }
    t.join();
    CHECK(got.load() == n);
    const uint32_t f1 = data_futex(pub);
    std::printf("polling subscriber: %llu commits, data_futex %u -> %u (wakes issued: %u)\n",
                (unsigned long long)n, f0, f1, f1 - f0);
    CHECK(f1 == f0);
  }
  // The same producer with a subscriber that sleeps before every message: one wake each.
  {
    SubscriberOptions so;
    so.wait = WaitStrategy::futex;
    Subscriber sub = g.bus.subscriber(g.topic, so);
    const int m = 50;
    std::atomic<int> got{0};
    std::atomic<pid_t> tid{0};
    std::thread t([&] {
      tid = pid_t(syscall(SYS_gettid));
      View v;
      while (got.load() < m) {
        if (sub.poll_wait(v, 5'000'000'000) != Status::ok) continue;
        got.fetch_add(1);
        sub.release(v);
      }
    });
    const uint32_t f0 = data_futex(pub);
    uint64_t x = 0;
    for (int i = 0; i < m; ++i) {
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (waiter_bits(pub) == 0 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
      REQUIRE(waiter_bits(pub) != 0);
      // Its bit is raised before its last re-check: only once the kernel has it asleep
      // is a commit sure to find the bit still set (else it finds the data itself).
      REQUIRE(shmbus::test::wait_until_asleep(tid));
      REQUIRE(pub.offer(&x, sizeof x) == Status::ok);
      while (got.load() <= i && std::chrono::steady_clock::now() < until) std::this_thread::yield();
      REQUIRE(got.load() == i + 1);
    }
    t.join();
    const uint32_t f1 = data_futex(pub);
    std::printf("sleeping subscriber: %d commits, wakes issued: %u\n", m, f1 - f0);
    CHECK(f1 - f0 == uint32_t(m));
  }
}

namespace {
// Publishes one segment of raw words as a flat Cap'n Proto message and reads its root
// as AnyPointer, walking the whole tree (targetSize).
Status read_words(const std::vector<uint64_t>& seg, uint64_t* size_out = nullptr) {
  TopicGuard g{Bus::direct({.shm_prefix = unique_prefix("capnp")}), "g.capnp"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 20});
  Publisher pub = g.bus.publisher(g.topic);
  Subscriber sub = g.bus.subscriber(g.topic);
  std::vector<uint64_t> msg(seg.size() + 1);
  const uint32_t table[2] = {0, uint32_t(seg.size())};  // one segment of seg.size() words
  std::memcpy(msg.data(), table, 8);
  std::memcpy(msg.data() + 1, seg.data(), seg.size() * 8);
  REQUIRE(pub.offer(msg.data(), msg.size() * 8) == Status::ok);
  View v;
  REQUIRE(sub.poll(v) == Status::ok);
  uint64_t size = 0;
  Status s = read_message<capnp::AnyPointer>(
      v, [&](capnp::AnyPointer::Reader r) { size = r.targetSize().wordCount; });
  sub.release(v);
  if (size_out) *size_out = size;
  return s;
}
// A chain of `depth` structs, each with one pointer to the next (offset 0: the word after).
std::vector<uint64_t> deep(int depth) {
  std::vector<uint64_t> w(size_t(depth) + 1, uint64_t(1) << 48);  // struct ptr: 0 data words, 1 pointer
  w.back() = 0;
  return w;
}
// A root struct with `p` pointers, every one a list pointer to the same `l`-word list.
std::vector<uint64_t> amplifying(uint32_t p, uint32_t l) {
  std::vector<uint64_t> w;
  w.push_back(uint64_t(p) << 48);  // root: struct, 0 data words, p pointers, right after
  for (uint32_t i = 0; i < p; ++i) {
    const uint64_t off = p - 1 - i;  // from the word after pointer i to the list
    w.push_back(1 | (off << 2) | (uint64_t(5) << 32) | (uint64_t(l) << 35));  // list of 8-byte elements
  }
  for (uint32_t i = 0; i < l; ++i) w.push_back(i);
  return w;
}
}  // namespace

TEST_CASE("MessageReader refuses a deep and an amplifying message cleanly", "[guarantee][capnp]") {
  uint64_t size = 0;
  // Within the limits the same shapes read fine (the words are well-formed).
  REQUIRE(read_words(deep(20), &size) == Status::ok);
  CHECK(size == 20);
  REQUIRE(read_words(amplifying(4, 4), &size) == Status::ok);
  CHECK(size == 4 + 4 * 4);
  // Past the nesting limit (64).
  CHECK(read_words(deep(1000)) == Status::malformed);
  // 500 pointers to one 500-word list: 250,000 words traversed from a ~1,000-word payload,
  // past the payload-based traversal limit (8 x payload words + 64).
  auto t0 = std::chrono::steady_clock::now();
  CHECK(read_words(amplifying(500, 500)) == Status::malformed);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
}
