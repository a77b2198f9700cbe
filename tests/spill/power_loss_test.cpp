// Power loss: what the archiver acknowledged (DataHeader::durable_seq) survives the
// loss of everything that was not synced, and the recovered log is a clean prefix of
// the produced stream. Runs with LD_PRELOAD=libshmbus_powerloss_shim.so
// (tests/spill/powerloss_shim.c), which records per log file the length covered by
// each completed fdatasync/fsync and io_uring FSYNC; at "power off" the files are cut
// back to those lengths, or keep their length with the unsynced tail zeroed, garbled
// or replaced by stale bytes of the same file (a never-synced file disappears), as a
// crash of the machine could leave them; then the log is recovered and read back.
// `batch`: every acknowledged message survives. `interval` (a weaker contract): what a
// completed periodic fdatasync covered survives. Both fail when the archiver
// acknowledges before the fdatasync completed (or skips it).
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <thread>

#include "shmbus/spill/archiver.hpp"
#include "shmbus/spill_format.hpp"
#include "log_check.hpp"
#include "spill_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

struct Shim {
  void (*scan)() = nullptr;
  void (*power_off)() = nullptr;
  void (*reset)() = nullptr;
  long long (*apply)(const char*, int, uint64_t) = nullptr;
  void (*stats)(uint64_t*, uint64_t*, uint64_t*) = nullptr;
  Shim() {
    scan = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "powerloss_scan"));
    power_off = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "powerloss_power_off"));
    reset = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "powerloss_reset"));
    apply =
        reinterpret_cast<long long (*)(const char*, int, uint64_t)>(dlsym(RTLD_DEFAULT, "powerloss_apply"));
    stats =
        reinterpret_cast<void (*)(uint64_t*, uint64_t*, uint64_t*)>(dlsym(RTLD_DEFAULT, "powerloss_stats"));
  }
  bool loaded() const { return scan && power_off && reset && apply && stats; }
};

Shim& shim() {
  static Shim s;
  if (!s.loaded())
    FAIL(
        "the power-loss shim is not loaded: run with "
        "LD_PRELOAD=<build>/tests/spill/libshmbus_powerloss_shim.so "
        "(meson test does)");
  return s;
}

// What the disk holds past the synced length of a file after the power cut.
enum class Tail : int { cut = 0, zeros = 1, garbage = 2, stale = 3 };
const char* tail_name(Tail t) {
  switch (t) {
    case Tail::cut: return "cut";
    case Tail::zeros: return "zeros";
    case Tail::garbage: return "garbage";
    case Tail::stale: return "stale records";
  }
  return "?";
}

struct Round {
  uint64_t acked = 0, recovered = 0;
  long long lost = 0;
  uint64_t libc_syncs = 0, uring_syncs = 0;
};

// One power cut: an archiver under `flush` with a producer running, the power goes off
// once at least `target` messages are acknowledged (paced: at most ~250k messages/s, so
// that many periodic syncs run meanwhile); then the disk as `tail` leaves it
// is recovered and read back. Requires the recovered log to be a clean prefix of the
// stream holding every acknowledged message.
Round power_cut(spill::FlushPolicy flush, uint64_t segment_bytes, uint64_t target, Tail tail, bool paced) {
  Shim& sh = shim();
  sh.reset();
  std::string prefix = unique_prefix("plos");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "t.power";
  bus.create_topic(topic, durable_topic(1 << 20));
  TopicGuard guard{bus, topic};
  TempDir dir;
  spill::ArchiverConfig ac;
  // Called by the archiver for every completion while its CQE is still in the ring:
  // the shim counts the FSYNC completions it finds there.
  ac.fault = [](spill::IoOp, uint64_t) {
    shim().scan();
    return 0;
  };
  spill::Archiver a(ac);
  spill::LogConfig lc;
  lc.state_dir = dir.path;
  lc.flush = flush;
  lc.flush_interval_ms = 2;  // interval: many periodic syncs per round
  lc.segment_bytes = segment_bytes;
  lc.index_interval = 4096;
  a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
  a.start();

  Publisher pub = bus.publisher(topic, patient_publisher());
  std::atomic<bool> stop{false}, failed{false};
  std::atomic<uint64_t> produced{0};
  std::thread producer([&] {
    if (paced) return paced_producer(pub, stop, failed, produced);
    for (uint64_t i = 1; !stop.load(std::memory_order_relaxed); ++i)
      if (publish_one(pub, i) != i) {
        failed = true;
        return;
      }
  });
  Round r;
  REQUIRE(wait_durable(pub, target, 30'000'000'000) == Status::ok);
  // The acknowledgement read first, then the power cut: every sync that an ack up to
  // `acked` depended on completed (and was recorded) before the ack was published.
  r.acked = durable_sequence_approx(pub);
  sh.power_off();
  stop = true;
  producer.join();
  a.stop();  // more writes and syncs happen: all after the power went off
  REQUIRE(!failed);
  const std::string pdir = spill::partition_dir(dir.path, topic, 0);
  // Stale bytes: the segment's own records from its first one on, replayed at the
  // synced end (well-formed records with old sequences).
  r.lost = sh.apply(dir.path.c_str(), int(tail), spill::kFileHeaderSize);
  REQUIRE(r.lost >= 0);

  auto rec = spill::recover_partition_log(pdir, lc.index_interval);
  r.recovered = check_log_prefix(pdir);
  uint64_t dropped;
  sh.stats(&r.libc_syncs, &r.uring_syncs, &dropped);
  std::printf(
      "power loss (%s flush, %llu-byte segments, tail %s): acknowledged %llu, recovered %llu, %lld bytes "
      "lost; syncs seen: %llu fdatasync/fsync, %llu io_uring\n",
      flush == spill::FlushPolicy::batch ? "batch" : "interval", (unsigned long long)segment_bytes,
      tail_name(tail), (unsigned long long)r.acked, (unsigned long long)r.recovered, r.lost,
      (unsigned long long)r.libc_syncs, (unsigned long long)r.uring_syncs);
  INFO("acknowledged " << r.acked << ", the recovered log ends at " << r.recovered << " (tail "
                       << tail_name(tail) << ")");
  CHECK(dropped == 0);
  CHECK(rec.last_seq == r.recovered);
  REQUIRE(r.recovered >= r.acked);  // every acknowledged message survived the power loss
  return r;
}

}  // namespace

TEST_CASE("Power loss under batch flush: every acknowledged message is in the recovered log", "[spill]") {
  Rng rng(Catch::rngSeed() ? Catch::rngSeed() : 7);
  long long lost_total = 0;
  for (int round = 0; round < 4; ++round) {
    // Roll-overs (their libc fdatasync) are part of it: 128 KiB segments.
    Round r =
        power_cut(spill::FlushPolicy::batch, 128 << 10, 3000 + rng.next() % 12000, Tail(round % 4), false);
    lost_total += r.lost;
  }
  // The model cut something (else it proved nothing): unsynced tails existed.
  CHECK(lost_total > 0);
}

// `interval`: acknowledged (durable_seq) only once a periodic fdatasync that covered
// the message completed, so a power cut to the synced length keeps every acknowledged
// message; what was written but not yet synced may be lost, but only as a whole tail:
// the recovered log is a clean prefix (nothing torn, nothing invented), whatever the
// disk left past the synced length.
TEST_CASE(
    "Power loss under interval flush: what a completed fdatasync covered survives, the log is a clean prefix",
    "[spill]") {
  Rng rng(Catch::rngSeed() ? Catch::rngSeed() : 11);
  long long lost_total = 0;
  uint64_t uring_syncs = 0;
  for (int round = 0; round < 5; ++round) {
    // One segment (only the periodic io_uring fdatasync acknowledges), then 256 KiB
    // segments (roll-overs sync too).
    const uint64_t seg = round < 4 ? 64ull << 20 : 256 << 10;
    Round r =
        power_cut(spill::FlushPolicy::interval, seg, 3000 + rng.next() % 12000, Tail((round + 1) % 4), true);
    lost_total += r.lost;
    uring_syncs += r.uring_syncs;
  }
  CHECK(uring_syncs > 0);  // the periodic fdatasync ran (and was seen by the shim)
  CHECK(lost_total > 0);   // unsynced tails existed
}
