// Replay correctness over a log of millions of messages and many segment files
// while the producer keeps publishing; a slow consumer under policy spill.
#include <time.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <thread>

#include "shmbus/spill/archiver.hpp"
#include "spill_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

uint64_t env_u64(const char* name, uint64_t dflt) {
  const char* v = getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : dflt;
}

struct TimeMark {
  uint64_t t;
  uint64_t next_seq;  // first sequence committed after t
};

}  // namespace

TEST_CASE("Replay from random points over millions of messages equals the produced stream", "[spill]") {
  const uint64_t N = env_u64("SHMBUS_REPLAY_MESSAGES", 2'000'000);
  const uint32_t span = 56;
  std::string prefix = unique_prefix("replay");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "t.replay";
  bus.create_topic(topic, durable_topic(1 << 20));
  TopicGuard guard{bus, topic};
  TempDir dir;
  spill::Archiver a;
  spill::LogConfig lc;
  lc.state_dir = dir.path;
  lc.flush = spill::FlushPolicy::none;
  lc.segment_bytes = 4 << 20;
  lc.index_interval = 32 << 10;
  a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
  a.start();

  std::atomic<uint64_t> produced{0};
  std::vector<TimeMark> marks(N / 50'000 + 2);
  std::atomic<size_t> nmarks{0};
  std::atomic<bool> failed{false};
  std::thread producer([&] {
    Publisher pub = bus.publisher(topic, patient_publisher());
    for (uint64_t i = 1; i <= N; ++i) {
      if (i % 50'000 == 0) {
        marks[nmarks.load(std::memory_order_relaxed)] = {shm::monotonic_ns(), i};
        nmarks.fetch_add(1, std::memory_order_release);
      }
      if (publish_one(pub, i, span) != i) {
        failed = true;
        return;
      }
      produced.store(i, std::memory_order_release);
      if (i % 250 == 0) {  // paced (~150k msgs/s), so that replays catch up with it live
        timespec ts{0, 1'000'000};
        nanosleep(&ts, nullptr);
      }
    }
  });

  Rng rng(env_u64("SHMBUS_SEED", uint64_t(time(nullptr))));
  std::printf("replay stress: seed printed by Catch is irrelevant; N=%llu\n", (unsigned long long)N);
  uint64_t total_read = 0, handovers = 0, laps = 0;
  int kinds_seen[4] = {0, 0, 0, 0};
  for (int round = 0; round < 14 && !failed; ++round) {
    // Wait (bounded) until some history exists.
    while (produced.load(std::memory_order_acquire) < 100'000 && !failed) std::this_thread::yield();
    const uint64_t now_seq = produced.load(std::memory_order_acquire);
    int kind = round < 4 ? round : int(rng.next() % 4);
    if (kind == 3 && now_seq + 30'000 > N) kind = 1;  // "latest" needs a producer still going
    ReplayOptions o;
    o.state_dir = dir.path;
    uint64_t first = 0;
    switch (kind) {
      case 0:
        o.start = StartAt::earliest();
        first = 1;
        break;
      case 1:
        first = 1 + rng.next() % now_seq;
        o.start = StartAt::sequence(first);
        break;
      case 2: {
        size_t nm = nmarks.load(std::memory_order_acquire);
        if (nm == 0) {
          o.start = StartAt::earliest();
          first = 1;
          break;
        }
        TimeMark m = marks[rng.next() % nm];
        o.start = StartAt::time(m.t);
        first = m.next_seq;
        break;
      }
      case 3:
        o.start = StartAt::latest();
        first = 0;  // whatever is next
        break;
    }
    ++kinds_seen[kind];
    ReplaySubscriber sub = replay_subscriber(bus, topic, o);
    // Read well past what had been produced when we started: into the live ring.
    const uint64_t target = std::min<uint64_t>(N, produced.load() + 20'000);
    uint64_t expect = first;
    View v;
    for (;;) {
      Status s = sub.poll_wait(v, 30'000'000'000);
      if (s == Status::corrupt) FAIL("a corrupt record was reported");
      INFO("kind " << kind << " first " << first << " expect " << expect << " target " << target
                   << " produced " << produced.load() << " source " << int(sub.source()) << " handovers "
                   << sub.stats().handovers << " laps " << sub.stats().lapped << " from_log "
                   << sub.stats().from_log << " from_ring " << sub.stats().from_ring);
      REQUIRE(s == Status::ok);
      if (expect == 0) expect = v.sequence();
      REQUIRE(v.sequence() == expect);
      REQUIRE(payload_ok(v.sequence(), v.data(), v.size(), span));
      ++total_read;
      if ((expect & 1023) == 0) sub.release(v);
      if (expect >= target) break;
      ++expect;
    }
    sub.release_all();
    handovers += sub.stats().handovers;
    laps += sub.stats().lapped;
    CHECK(sub.stats().corrupt == 0);
  }
  producer.join();
  REQUIRE(!failed);
  Publisher probe = bus.publisher(topic, patient_publisher());
  REQUIRE(wait_durable(probe, N, 60'000'000'000) == Status::ok);
  // A hand-over that does not depend on a replay catching up with the live producer
  // above (on a loaded machine none may): from the end of the log into the ring, then
  // what is published next comes from the ring, no gap, no duplicate.
  const uint64_t more = 100;
  {
    ReplayOptions o;
    o.state_dir = dir.path;
    o.start = StartAt::sequence(N - 5000);
    ReplaySubscriber sub = replay_subscriber(bus, topic, o);
    View v;
    for (uint64_t expect = N - 5000; expect <= N; ++expect) {
      REQUIRE(sub.poll_wait(v, 30'000'000'000) == Status::ok);
      REQUIRE(v.sequence() == expect);
      REQUIRE(payload_ok(v.sequence(), v.data(), v.size(), span));
      sub.release(v);
    }
    // The end of the log, with nothing newer published: the subscriber hands over to
    // the ring (two empty polls: arm, then confirm). Messages published from now on
    // come from the ring even if the archiver logs them first.
    for (int i = 0; i < 100 && sub.source() != ReplaySource::ring; ++i) REQUIRE(sub.poll(v) == Status::empty);
    REQUIRE(sub.source() == ReplaySource::ring);
    for (uint64_t expect = N + 1; expect <= N + more; ++expect) {
      REQUIRE(publish_one(probe, expect, span) == expect);
      REQUIRE(sub.poll_wait(v, 30'000'000'000) == Status::ok);
      REQUIRE(v.sequence() == expect);
      REQUIRE(payload_ok(v.sequence(), v.data(), v.size(), span));
      sub.release(v);
    }
    CHECK(sub.poll(v) == Status::empty);
    CHECK(sub.source() == ReplaySource::ring);
    CHECK(sub.stats().handovers == 1);
    CHECK(sub.stats().from_ring >= more);
    CHECK(sub.stats().corrupt == 0);
  }
  REQUIRE(wait_durable(probe, N + more, 60'000'000'000) == Status::ok);
  a.stop();
  auto st = a.stats()[0];
  std::printf(
      "replay stress: %llu messages, %llu segments rolled, %llu replayed, %llu live handovers, %llu laps\n",
      (unsigned long long)st.records, (unsigned long long)st.segments_rolled, (unsigned long long)total_read,
      (unsigned long long)handovers, (unsigned long long)laps);
  CHECK(st.records == N + more);
  CHECK(st.segments_rolled >= 10);
  for (int k = 0; k < 4; ++k) CHECK(kinds_seen[k] > 0);
}

TEST_CASE("A consumer 100x slower than the producer under spill never holds it back and gets every message",
          "[spill]") {
  const uint64_t N = env_u64("SHMBUS_SLOW_MESSAGES", 30'000);
  std::string prefix = unique_prefix("slow");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  spill::LogConfig lc;
  lc.flush = spill::FlushPolicy::interval;
  lc.segment_bytes = 1 << 20;

  // The producer's time for N messages on a durable topic (its archiver running), from
  // a thread; failed when a publish did not return the expected sequence.
  std::atomic<bool> failed{false};
  auto produce = [&](const std::string& t, std::atomic<uint64_t>& ns) {
    return std::thread([&, t] {
      Publisher pub = bus.publisher(t, patient_publisher());
      uint64_t t0 = shm::monotonic_ns();
      for (uint64_t i = 1; i <= N; ++i)
        if (publish_one(pub, i) != i) {
          failed = true;
          return;
        }
      ns = shm::monotonic_ns() - t0;
    });
  };

  // Baseline, in this run: the same producer, topic shape and archiver, no consumer.
  std::atomic<uint64_t> baseline_ns{0};
  {
    const std::string base = "t.base";
    bus.create_topic(base, durable_topic(256 << 10));
    TopicGuard base_guard{bus, base};
    TempDir base_dir;
    spill::Archiver ba;
    spill::LogConfig bl = lc;
    bl.state_dir = base_dir.path;
    ba.add_partition(bus.provider().open(base, 0, Role::admin, 5000), bl);
    ba.start();
    produce(base, baseline_ns).join();
    ba.stop();
    REQUIRE(!failed);
  }

  const std::string topic = "t.slow";
  bus.create_topic(topic, durable_topic(256 << 10));
  TopicGuard guard{bus, topic};
  TempDir dir;
  spill::Archiver a;
  lc.state_dir = dir.path;
  a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
  a.start();

  ReplayOptions o;
  o.state_dir = dir.path;
  o.start = StartAt::latest();
  ReplaySubscriber sub = replay_subscriber(bus, topic, o);

  std::atomic<uint64_t> producer_ns{0};
  std::thread producer = produce(topic, producer_ns);
  // ~100x the producer's per-message cost: a nap every few messages.
  uint64_t expect = 1;
  View v;
  const uint64_t consumer_t0 = shm::monotonic_ns();
  while (expect <= N) {
    Status s = sub.poll_wait(v, 30'000'000'000);
    REQUIRE(s == Status::ok);
    REQUIRE(v.sequence() == expect);
    REQUIRE(payload_ok(v.sequence(), v.data(), v.size()));
    sub.release(v);
    if (expect % 4 == 0) {
      timespec ts{0, 400'000};
      nanosleep(&ts, nullptr);
    }
    ++expect;
  }
  const uint64_t consumer_ns = shm::monotonic_ns() - consumer_t0;
  producer.join();
  REQUIRE(!failed);
  const double slower = double(consumer_ns) / double(producer_ns.load());
  std::printf("slow consumer: %.0fx slower than the producer\n", slower);
  CHECK(sub.poll(v) == Status::empty);
  CHECK(sub.source() == ReplaySource::ring);  // merged back into the live ring
  const auto& st = sub.stats();
  std::printf(
      "slow consumer: producer %.1f ms for %llu msgs (%.0f msgs/s; %.1f ms with no consumer); "
      "consumer lapped %llu times, %llu from log, %llu from ring\n",
      producer_ns.load() / 1e6, (unsigned long long)N, N / (producer_ns.load() / 1e9),
      baseline_ns.load() / 1e6, (unsigned long long)st.lapped, (unsigned long long)st.from_log,
      (unsigned long long)st.from_ring);
  CHECK(st.lapped >= 1);
  CHECK(st.from_log > 0);
  // Not held back: the producer finished long before the consumer (a producer paced by
  // this consumer takes about as long as it), and within a generous bound of its own
  // time with no consumer at all (the consumer and its log reads share 2 cores with it).
  CHECK(producer_ns.load() * 10 < consumer_ns);
  CHECK(producer_ns.load() < 5 * baseline_ns.load() + 200'000'000ull);
  a.stop();
}

// A replay from `latest` joins at the ring's tail position; what is new is what lies
// at or after it. A multi-producer claim moves the tail in two steps (a pending word
// naming the claim's LAST sequence with the position still at its first frame, then
// the position past it): a reader joining in between used to take the word's
// sequence as its first and drop the batch's other frames. The window is recreated
// here by putting the pending tail back while the reader joins.
TEST_CASE("Replay from latest joined while a multi-frame claim's tail is pending delivers the whole batch",
          "[spill]") {
  std::string prefix = unique_prefix("rlatest");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "t.latest";
  TopicConfig c = durable_topic(1 << 20);
  c.multi_producer = true;
  bus.create_topic(topic, c);
  TopicGuard guard{bus, topic};
  TempDir dir;
  spill::Archiver a;
  spill::LogConfig lc;
  lc.state_dir = dir.path;
  lc.flush = spill::FlushPolicy::none;
  a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
  a.start();
  auto admin = bus.provider().open(topic, 0, Role::admin, 5000);
  shm::DataHeader* d = admin->refs().data;
  Publisher pub = bus.publisher(topic, patient_publisher());
  for (uint64_t i = 1; i <= 10; ++i) REQUIRE(publish_one(pub, i) == i);
  const uint64_t batch_pos = shm::aref(d->tail_pos).load(std::memory_order_acquire);
  BatchView bv;
  REQUIRE(pub.claim_n(5, 256, bv) == Status::ok);
  REQUIRE(bv.sequence == 11);
  const uint64_t end_pos = shm::aref(d->tail_pos).load(std::memory_order_acquire);
  const uint64_t end_word = shm::aref(d->tail_seq).load(std::memory_order_acquire);
  REQUIRE(shm::tail_seq_of(end_word) == 16);
  // The pending step of that claim (producer slot 0): position at the first frame,
  // the word naming sequence 15.
  shm::aref(d->tail_seq).store(shm::tail_word(15, 1), std::memory_order_seq_cst);
  shm::aref(d->tail_pos).store(batch_pos, std::memory_order_seq_cst);
  ReplayOptions o;
  o.state_dir = dir.path;
  o.start = StartAt::latest();
  ReplaySubscriber sub = replay_subscriber(bus, topic, o);
  shm::aref(d->tail_pos).store(end_pos, std::memory_order_seq_cst);
  shm::aref(d->tail_seq).store(end_word, std::memory_order_seq_cst);
  uint32_t used[5];
  for (uint32_t i = 0; i < 5; ++i) {
    used[i] = payload_len(11 + i);
    fill_payload(11 + i, bv.data(i), used[i]);
  }
  REQUIRE(pub.commit_n(5, used) == Status::ok);
  REQUIRE(publish_one(pub, 16) == 16);
  View v;
  for (uint64_t want = 11; want <= 16; ++want) {
    REQUIRE(sub.poll_wait(v, 5'000'000'000) == Status::ok);
    CHECK(v.sequence() == want);
    CHECK(payload_ok(v.sequence(), v.data(), v.size()));
    sub.release(v);
  }
  CHECK(sub.poll(v) == Status::empty);
}
