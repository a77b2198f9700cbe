// Crash durability: the archiver's process is SIGKILLed at random points under
// batch-flush load, again and again. After every restart every acknowledged
// message is in the log, intact; at the end the log is exactly the produced stream.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <thread>

#include "shmbus/spill_format.hpp"
#include "../child_process.hpp"
#include "log_check.hpp"
#include "spill_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

// The archiver child (archiver_child.cpp): "R" on stdout once archiving; a closed stdin
// is its clean stop.
Child spawn_archiver(const std::string& prefix, const std::string& topic, const std::string& dir,
                     const char* policy, const char* seg) {
  const char* exe = getenv("SHMBUS_SPILL_CHILD");
  REQUIRE(exe != nullptr);
  Child c({exe, prefix, topic, dir, policy, seg}, {}, {}, /*stdin_pipe=*/true);
  INFO(c.describe());
  REQUIRE(c.read_char(30000) == 'R');  // ready (0: it died, or the watchdog)
  return c;
}

}  // namespace

TEST_CASE("SIGKILL of the archiver under batch flush never loses an acknowledged message", "[spill][crash]") {
  const char* t = getenv("SHMBUS_CRASH_TRIALS");
  const int trials = t ? atoi(t) : shmbus::test::trials(100, 20);
  std::string prefix = unique_prefix("crash");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "t.crash";
  bus.create_topic(topic, durable_topic(256 << 10));
  TopicGuard guard{bus, topic};
  TempDir dir;
  const std::string pdir = spill::partition_dir(dir.path, topic, 0);

  // The first archiver must exist before the producer, or early frames are not durable.
  Child c = spawn_archiver(prefix, topic, dir.path, "batch", "1048576");

  std::atomic<bool> stop{false}, failed{false};
  std::atomic<uint64_t> produced{0};
  std::thread producer([&] {
    Publisher pub = bus.publisher(topic, patient_publisher());
    paced_producer(pub, stop, failed, produced);
  });
  auto mapping = bus.provider().open(topic, 0, Role::admin, 5000);
  shm::DataHeader* hdr = mapping->refs().data;
  auto durable = [&] { return shm::aref(hdr->durable_seq).load(std::memory_order_acquire); };

  const uint64_t seed = uint64_t(time(nullptr));
  std::printf("crash test seed %llu, %d trials\n", (unsigned long long)seed, trials);
  Rng rng(seed);
  uint64_t verified = 0;  // every sequence <= verified was checked present
  uint64_t max_acked = 0;
  for (int trial = 0; trial < trials && !failed; ++trial) {
    // The (re)started archiver first acknowledges something new (its recovery is
    // through and it is archiving: under a sanitizer on a loaded machine that can take
    // longer than the whole random window below, and a trial that kills an archiver
    // still starting tests nothing), then works for a random while (a random kill
    // point), then SIGKILL.
    for (int spins = 0; durable() <= max_acked && !failed; ++spins) {
      REQUIRE(spins < 30'000);  // watchdog: 30 s without an acknowledgement
      timespec ts{0, 1'000'000};
      nanosleep(&ts, nullptr);
    }
    uint64_t wait_ns = 500'000 + rng.next() % 15'000'000;
    timespec ts{0, long(wait_ns)};
    nanosleep(&ts, nullptr);
    REQUIRE(kill(c.pid(), SIGKILL) == 0);
    const int status = c.wait(30000);
    REQUIRE(status != -1);
    REQUIRE(WIFSIGNALED(status));
    const uint64_t acked = durable();  // cannot move any more: its writer is dead
    REQUIRE(acked >= max_acked);
    max_acked = acked;
    // Restart: recovery runs in the new archiver; then check what was acknowledged.
    c = spawn_archiver(prefix, topic, dir.path, "batch", "1048576");
    check_log_range(pdir, verified + 1, acked);
    verified = acked;
  }
  // Clean stop after the last restart: the log must be exactly the produced stream.
  stop = true;
  producer.join();
  REQUIRE(!failed);
  const uint64_t last = produced.load();
  for (int spins = 0; durable() < last; ++spins) {
    REQUIRE(spins < 60'000);  // watchdog: 60 s
    timespec ts{0, 1'000'000};
    nanosleep(&ts, nullptr);
  }
  c.close_stdin();
  const int status = c.wait(30000);
  REQUIRE(status != -1);
  CHECK(WIFEXITED(status));
  std::printf("crash test: %d kills, %llu messages, %llu acknowledged before the last kill\n", trials,
              (unsigned long long)last, (unsigned long long)max_acked);
  CHECK(max_acked > 0);
  check_log_range(pdir, 1, last);
  // Nothing beyond the produced stream either.
  spill::ChunkArena arena;
  spill::LogReader rd(pdir, arena);
  rd.seek_sequence(last + 1);
  spill::RecordView rv;
  CHECK(rd.next(rv) == spill::LogReader::Next::end);
}
