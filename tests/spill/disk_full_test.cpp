// Disk full: the spill log on a 1 MiB tmpfs. Producers see back-pressure with a
// clear reason (archiver_error == ENOSPC), the archiver stays up, and archiving
// resumes by itself when space returns. Needs root (mount); exit 77 = skipped.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <thread>
#include <cstdio>
#include <vector>

#include "shmbus/spill/archiver.hpp"
#include "log_check.hpp"
#include "spill_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

static std::string g_mnt;

TEST_CASE("A full disk back-pressures producers with ENOSPC and archiving resumes when space returns",
          "[spill]") {
  // Ballast that we delete later to give the space back.
  const std::string ballast = g_mnt + "/ballast";
  {
    int fd = open(ballast.c_str(), O_WRONLY | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    std::vector<char> b(64 << 10, 'x');
    for (int i = 0; i < 9; ++i) REQUIRE(write(fd, b.data(), b.size()) == ssize_t(b.size()));
    close(fd);
  }
  std::string prefix = unique_prefix("full");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "t.full";
  bus.create_topic(topic, durable_topic(64 << 10));
  TopicGuard guard{bus, topic};
  spill::Archiver a;
  spill::LogConfig lc;
  lc.state_dir = g_mnt + "/state";
  lc.flush = spill::FlushPolicy::batch;
  lc.segment_bytes = 64 << 10;
  a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
  a.start();
  PublisherOptions po = patient_publisher();
  po.block_timeout_ns = 20'000'000;  // give up quickly: we want to see the back-pressure
  Publisher pub = bus.publisher(topic, po);

  uint64_t seq = 0;
  bool full = false;
  for (int i = 0; i < 2'000'000 && !full; ++i) {
    uint64_t s = publish_one(pub, seq + 1);
    if (s) {
      seq = s;
      continue;
    }
    if (archiver_error(pub) == ENOSPC) full = true;
  }
  REQUIRE(full);
  INFO("published " << seq << " before the disk filled");
  CHECK(a.running());
  // The stats are a snapshot the archiver refreshes: wait (bounded) for the count.
  auto st = a.stats()[0];
  for (int i = 0; i < 500 && st.io_errors == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    st = a.stats()[0];
  }
  CHECK(st.io_errors >= 1);  // every failed write, sync or segment creation counts
  const uint64_t durable_when_full = durable_sequence_approx(pub);
  CHECK(durable_when_full < seq);
  // Still full: publishing stops again at once or after a few messages (a retried
  // write may fit what a sealed segment's trimmed padding gave back), and the archiver
  // still runs.
  bool stopped = false;
  for (int i = 0; i < 1000 && !stopped; ++i) {
    const uint64_t s = publish_one(pub, seq + 1);
    if (s)
      seq = s;
    else
      stopped = true;
  }
  CHECK(stopped);
  CHECK(a.running());

  REQUIRE(unlink(ballast.c_str()) == 0);  // space returns
  const uint64_t total = seq + 2000;
  while (seq < total) {
    uint64_t s = publish_one(pub, seq + 1);
    if (s)
      seq = s;
    else
      REQUIRE(archiver_error(pub) != 0);  // only while still recovering
  }
  REQUIRE(wait_durable(pub, total, 30'000'000'000) == Status::ok);
  CHECK(archiver_error(pub) == 0);
  a.stop();
  CHECK(a.stats()[0].last_error == 0);
  // The log is exactly the stream: nothing lost, duplicated or torn by the short writes.
  CHECK(check_log_prefix(spill::partition_dir(lc.state_dir, topic, 0)) == total);
}

// Run by tests/catch_main.cpp before the test cases (exit 77 = skipped).
int shmbus_test_setup() {
  if (geteuid() != 0) {
    std::fprintf(stderr, "disk-full test needs root (mount -t tmpfs): skipped\n");
    return 77;
  }
  char tmpl[] = "/var/tmp/shmbus-full-XXXXXX";
  if (!mkdtemp(tmpl)) return 77;
  g_mnt = tmpl;
  if (mount("tmpfs", g_mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
    std::perror("mount tmpfs: skipped");
    rmdir(g_mnt.c_str());
    return 77;
  }
  return 0;
}

void shmbus_test_teardown() {
  umount2(g_mnt.c_str(), MNT_DETACH);
  rmdir(g_mnt.c_str());
}
