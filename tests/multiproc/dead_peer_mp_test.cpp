// Processes that die with SIGKILL in the middle of the stream.
//  * A subscriber killed while holding views: its cursor pins the ring until the
//    publisher proves the owner dead (kill(pid, 0)) and frees the slot; the
//    producer (policy block) then goes on, and the live subscriber misses nothing.
//  * A producer killed mid-stream on a single-producer partition, several times:
//    each new producer process takes the partition over (RingWriter::recover_sp)
//    and the subscribers get every committed message exactly once, then the new
//    producer's messages, with a dense partition sequence.
#include "mp_fixture.hpp"

using namespace shmbus;
using namespace shmbus::test;

TEST_CASE("a subscriber process killed while holding views holds the producer back only until its cursor is reclaimed") {
  const uint64_t seed = test_seed("dead subscriber");
  const uint32_t max_body = 1024;
  const uint64_t count = 20'000;  // ~10 MiB through a 64 KiB ring: far past the dead cursor
  MpTopic t("deadsub", {.capacity = 64 << 10, .policy = Policy::block});
  Child doomed, live;
  start_ready(doomed, t.args("sub", seed, max_body, {"producers=1", "die_holding=40", "watchdog_s=120"}));
  start_ready(live, t.args("sub", seed, max_body, {"producers=1", "batch=16", "watchdog_s=300"}));
  const pid_t doomed_pid = doomed.pid();
  Child pub(t.args("pub", seed, max_body,
                   {"count=" + std::to_string(count), "block_timeout_ms=10000", "watchdog_s=300"}));
  {
    INFO(doomed.describe());
    REQUIRE(doomed.await("holding", 60'000) == "40");
  }
  doomed.kill_now();  // SIGKILL with 40 views unreleased, and reaped: kill(pid, 0) fails
  require_ok(pub, 300'000);
  require_ok(live, 60'000);
  CHECK(pub.num("published") == count);
  CHECK(pub.num("reclaimed") == 1);        // the dead cursor, once
  CHECK(pub.num("blocked_waits") > 0);     // it did hold the producer back...
  CHECK(pub.num("back_pressured") == 0);   // ...but no wait ran into its timeout
  CHECK(live.num("received") == count);
  CHECK(live.num("frame_seq_last") == count + 1);
  // The dead subscriber's slot is free again.
  auto m = t.guard.bus.provider().open(t.guard.topic, 0, Role::admin, 5000);
  const shm::RingRefs& r = m->refs();
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    if (shm::aref(r.slots[i].pid).load(std::memory_order_acquire) != uint32_t(doomed_pid)) continue;
    CHECK(shm::aref(r.slots[i].state).load(std::memory_order_acquire) != shm::kSlotActive);
  }
}

namespace {

void producer_takeover(int kills, uint64_t final_count, const char* what) {
  const uint64_t seed = test_seed(what);
  const uint32_t max_body = 2048;
  const uint32_t producers = uint32_t(kills + 1);
  MpTopic t("takeover", {.capacity = 256 << 10, .policy = Policy::block});
  Child subs[2];
  const char* batches[2] = {"batch=1", "batch=64"};
  for (int i = 0; i < 2; ++i)
    start_ready(subs[i], t.args("sub", seed, max_body,
                                {"producers=" + std::to_string(producers), "ends=1", "ordered=1",
                                 batches[i], "watchdog_s=600"}));
  Rng rng(seed);
  std::vector<uint64_t> progress(producers, 0);
  for (int k = 0; k < kills; ++k) {
    progress[k] = 1000 + rng.next() % 20000;
    Child p(t.args("pub", seed, max_body,
                   {"producer=" + std::to_string(k), "forever=1",
                    "progress_at=" + std::to_string(progress[k]), "watchdog_s=300"}));
    {
      INFO(p.describe());
      REQUIRE(p.await("progress", 120'000) == std::to_string(progress[k]));
    }
    // A random point past the progress report: mid-claim, mid-build, mid-commit.
    for (uint64_t i = rng.next() % 300'000; i > 0; --i) shm::cpu_relax();
    p.kill_now();
  }
  Child last(t.args("pub", seed, max_body,
                    {"producer=" + std::to_string(kills), "count=" + std::to_string(final_count),
                     "watchdog_s=300"}));
  require_ok(last, 300'000);
  CHECK(last.num("published") == final_count);
  for (auto& s : subs) require_ok(s, 60'000);
  uint64_t total = 0;
  for (uint32_t p = 0; p < producers; ++p) {
    const std::string k = "p" + std::to_string(p) + ".count";
    INFO("producer " << p);
    // Both subscribers saw the same committed messages of each dead producer...
    CHECK(subs[0].num(k) == subs[1].num(k));
    // ...at least as many as it had reported published before it was killed.
    if (p < producers - 1) CHECK(subs[0].num(k) >= progress[p]);
    else CHECK(subs[0].num(k) == final_count);
    total += subs[0].num(k);
  }
  for (auto& s : subs) {
    CHECK(s.num("received") == total);
    CHECK(s.num("frame_seq_last") == total + 1);  // dense across every takeover, end marker last
  }
}

}  // namespace

TEST_CASE("producers killed mid-stream on a single-producer partition are taken over without a lost or repeated message") {
  producer_takeover(4, 20'000, "producer takeover");
}

TEST_CASE("twenty producer takeovers after SIGKILL at random points lose and repeat nothing", "[.long]") {
  producer_takeover(20, 100'000, "producer takeover, long");
}
