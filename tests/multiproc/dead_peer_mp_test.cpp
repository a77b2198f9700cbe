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

TEST_CASE(
    "a subscriber process killed while holding views holds the producer back only until its cursor is "
    "reclaimed") {
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
  CHECK(pub.num("reclaimed") == 1);       // the dead cursor, once
  CHECK(pub.num("blocked_waits") > 0);    // it did hold the producer back...
  CHECK(pub.num("back_pressured") == 0);  // ...but no wait ran into its timeout
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
                                {"producers=" + std::to_string(producers), "ends=1", "ordered=1", batches[i],
                                 "watchdog_s=600"}));
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
  Child last(t.args(
      "pub", seed, max_body,
      {"producer=" + std::to_string(kills), "count=" + std::to_string(final_count), "watchdog_s=300"}));
  require_ok(last, 300'000);
  CHECK(last.num("published") == final_count);
  for (auto& s : subs) require_ok(s, 60'000);
  uint64_t total = 0;
  for (uint32_t p = 0; p < producers; ++p) {
    const std::string k = std::string("p").append(std::to_string(p)).append(".count");  // (g++ 12 -Wrestrict)
    INFO("producer " << p);
    // Both subscribers saw the same committed messages of each dead producer...
    CHECK(subs[0].num(k) == subs[1].num(k));
    // ...at least as many as it had reported published before it was killed.
    if (p < producers - 1)
      CHECK(subs[0].num(k) >= progress[p]);
    else
      CHECK(subs[0].num(k) == final_count);
    total += subs[0].num(k);
  }
  for (auto& s : subs) {
    CHECK(s.num("received") == total);
    CHECK(s.num("frame_seq_last") == total + 1);  // dense across every takeover, end marker last
  }
}

}  // namespace

TEST_CASE(
    "producers killed mid-stream on a single-producer partition are taken over without a lost or repeated "
    "message") {
  producer_takeover(4, 20'000, "producer takeover");
}

TEST_CASE("twenty producer takeovers after SIGKILL at random points lose and repeat nothing", "[.long]") {
  producer_takeover(20, 100'000, "producer takeover, long");
}

// A subscriber process that exits without closing (_exit: no destructor runs, so its
// tethered cursor slot stays held at position 0). In direct mode nobody but the
// blocked publisher can free it: after it has been held back reclaim_after_ns by the
// dead cursor it proves the owner dead and reclaims the slot. The publisher must then
// go on, within reclaim_after_ns plus a scheduling margin.
TEST_CASE(
    "a subscriber that exited without closing is reclaimed by the blocked publisher within "
    "reclaim_after_ns") {
  const int64_t reclaim_ns = 200'000'000;
  const int64_t margin_ns = 2'000'000'000;
  const uint32_t cap = 64 << 10;
  MpTopic t("exitsub", {.capacity = cap, .policy = Policy::block});
  int p[2];
  REQUIRE(pipe(p) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    Bus bus = Bus::direct({.shm_prefix = t.prefix});
    Subscriber sub = bus.subscriber(t.guard.topic);
    char c = 'r';
    ssize_t w = write(p[1], &c, 1);
    (void)w;
    _exit(0);  // no Subscriber destructor: the slot stays active under a dead pid
  }
  close(p[1]);
  char c = 0;
  REQUIRE(read(p[0], &c, 1) == 1);
  close(p[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);  // reaped: kill(pid, 0) now fails
  REQUIRE(WIFEXITED(status));

  PublisherOptions po;
  po.reclaim_after_ns = reclaim_ns;
  po.block_timeout_ns = 30'000'000'000;  // far past the bound: only the reclaim can free it
  Publisher pub = t.guard.bus.publisher(t.guard.topic, po);
  std::vector<char> body(200, 'x');
  const int n = int(3 * cap / body.size());  // three laps past the dead cursor
  int64_t worst_ns = 0;
  for (int i = 0; i < n; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(pub.offer(body.data(), body.size()) == Status::ok);
    int64_t dt =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    worst_ns = std::max(worst_ns, dt);
  }
  std::printf(
      "dead subscriber (exited without closing): publisher held back %.1f ms at most "
      "(reclaim_after_ns %.1f ms, bound %.1f ms)\n",
      worst_ns / 1e6, reclaim_ns / 1e6, (reclaim_ns + margin_ns) / 1e6);
  CHECK(pub.stats().reclaimed_cursors == 1);
  CHECK(pub.stats().blocked_waits > 0);       // the dead cursor did hold it back...
  CHECK(worst_ns >= reclaim_ns / 2);          // ...for about reclaim_after_ns...
  CHECK(worst_ns <= reclaim_ns + margin_ns);  // ...and no longer than the bound
  // The slot is free again.
  const shm::RingRefs& r = pub.refs();
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    if (shm::aref(r.slots[i].pid).load(std::memory_order_acquire) != uint32_t(pid)) continue;
    CHECK(shm::aref(r.slots[i].state).load(std::memory_order_acquire) != shm::kSlotActive);
  }
}
