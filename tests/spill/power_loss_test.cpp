// Power loss under `batch` flush: every acknowledged message survives the loss of
// everything that was not synced. Runs with LD_PRELOAD=libshmbus_powerloss_shim.so
// (tests/spill/powerloss_shim.c), which records per log file the length covered by
// each completed fdatasync/fsync and io_uring FSYNC; at "power off" the files are cut
// back to those lengths (a never-synced file disappears), as a crash of the machine
// would leave them, then the log is recovered and read back.
// Fails when the archiver acknowledges before the fdatasync completed (or skips it).
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <thread>

#include "shmbus/spill/archiver.hpp"
#include "shmbus/spill_format.hpp"
#include "spill_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

struct Shim {
  void (*scan)() = nullptr;
  void (*power_off)() = nullptr;
  void (*reset)() = nullptr;
  long long (*apply)(const char*) = nullptr;
  void (*stats)(uint64_t*, uint64_t*, uint64_t*) = nullptr;
  Shim() {
    scan = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "powerloss_scan"));
    power_off = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "powerloss_power_off"));
    reset = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "powerloss_reset"));
    apply = reinterpret_cast<long long (*)(const char*)>(dlsym(RTLD_DEFAULT, "powerloss_apply"));
    stats = reinterpret_cast<void (*)(uint64_t*, uint64_t*, uint64_t*)>(dlsym(RTLD_DEFAULT, "powerloss_stats"));
  }
  bool loaded() const { return scan && power_off && reset && apply && stats; }
};

}  // namespace

TEST_CASE("Power loss under batch flush: every acknowledged message is in the recovered log", "[spill]") {
  static Shim shim;
  if (!shim.loaded())
    FAIL("the power-loss shim is not loaded: run with LD_PRELOAD=<build>/tests/spill/libshmbus_powerloss_shim.so "
         "(meson test does)");
  Rng rng(Catch::rngSeed() ? Catch::rngSeed() : 7);
  long long lost_total = 0;
  const int rounds = 4;
  for (int round = 0; round < rounds; ++round) {
    shim.reset();
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
      shim.scan();
      return 0;
    };
    spill::Archiver a(ac);
    spill::LogConfig lc;
    lc.state_dir = dir.path;
    lc.flush = spill::FlushPolicy::batch;
    lc.segment_bytes = 128 << 10;  // roll-overs (their libc fdatasync) are part of it
    lc.index_interval = 4096;
    a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
    a.start();

    Publisher pub = bus.publisher(topic, patient_publisher());
    std::atomic<bool> stop{false}, failed{false};
    std::thread producer([&] {
      for (uint64_t i = 1; !stop.load(std::memory_order_relaxed); ++i)
        if (publish_one(pub, i) != i) {
          failed = true;
          return;
        }
    });
    // Power goes off once at least `target` messages were acknowledged, mid-stream.
    const uint64_t target = 3000 + rng.next() % 12000;
    REQUIRE(wait_durable(pub, target, 30'000'000'000) == Status::ok);
    // The acknowledgement read first, then the power cut: every sync that an ack up to
    // `acked` depended on completed (and was recorded) before the ack was published.
    const uint64_t acked = durable_sequence_approx(pub);
    shim.power_off();
    stop = true;
    producer.join();
    a.stop();  // more writes and syncs happen: all after the power went off
    REQUIRE(!failed);
    const std::string pdir = spill::partition_dir(dir.path, topic, 0);
    const long long lost = shim.apply(dir.path.c_str());
    REQUIRE(lost >= 0);
    lost_total += lost;

    auto rec = spill::recover_partition_log(pdir, lc.index_interval);
    spill::ChunkArena arena;
    spill::LogReader rd(pdir, arena);
    rd.seek_earliest();
    spill::RecordView rv;
    uint64_t expect = 1;
    while (rd.next(rv) == spill::LogReader::Next::ok) {
      REQUIRE(rv.seq() == expect);
      REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
      arena.release(rv.seq());
      ++expect;
    }
    uint64_t libc_syncs, uring_syncs, dropped;
    shim.stats(&libc_syncs, &uring_syncs, &dropped);
    std::printf("power loss round %d: acknowledged %llu, recovered %llu, %lld bytes lost; syncs seen: "
                "%llu fdatasync/fsync, %llu io_uring\n",
                round, (unsigned long long)acked, (unsigned long long)(expect - 1), lost,
                (unsigned long long)libc_syncs, (unsigned long long)uring_syncs);
    INFO("round " << round << ": acknowledged " << acked << ", the recovered log ends at " << expect - 1);
    CHECK(dropped == 0);
    CHECK(rd.skipped_corrupt() == 0);
    CHECK(rec.last_seq == expect - 1);
    REQUIRE(expect - 1 >= acked);  // every acknowledged message survived the power loss
  }
  // The model cut something (else it proved nothing): unsynced tails existed.
  CHECK(lost_total > 0);
}
