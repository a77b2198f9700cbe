// Spill log: format, archiver, recovery of torn tails, replay hand-over, retention,
// injected I/O errors. Short tests (suite 'sanitize' too).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "shmbus/spill/archiver.hpp"
#include "shmbus/spill_format.hpp"
#include "spill_util.hpp"

using namespace shmbus;
using namespace shmbus::test;
using spill::Archiver;
using spill::FlushPolicy;
using spill::LogConfig;

namespace {

struct Fixture {
  std::string prefix = unique_prefix("spill");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  std::string topic = "t.spill";
  TopicGuard guard{bus, topic};
  TempDir dir;
  explicit Fixture(uint64_t cap = 1 << 20) { bus.create_topic(topic, durable_topic(cap)); }
  std::shared_ptr<PartitionMapping> admin() { return bus.provider().open(topic, 0, Role::admin, 5000); }
  LogConfig log_cfg(FlushPolicy f = FlushPolicy::none, uint64_t seg = 256 << 10) {
    LogConfig c;
    c.state_dir = dir.path;
    c.flush = f;
    c.segment_bytes = seg;
    c.index_interval = 4096;
    c.flush_interval_ms = 2;
    return c;
  }
  std::string pdir() const { return spill::partition_dir(dir.path, topic, 0); }
};

// Reads the whole log; checks every record against the deterministic payloads.
uint64_t check_log(const std::string& pdir, uint64_t first, uint64_t last) {
  spill::ChunkArena arena;
  spill::LogReader rd(pdir, arena);
  rd.seek_earliest();
  uint64_t expect = first, n = 0;
  spill::RecordView rv;
  while (rd.next(rv) == spill::LogReader::Next::ok) {
    REQUIRE(rv.seq() == expect);
    REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
    ++expect;
    ++n;
    arena.release(rv.seq());
  }
  REQUIRE(expect == last + 1);
  return n;
}

uint64_t wait_archived(Publisher& pub, uint64_t seq) {
  REQUIRE(wait_durable(pub, seq, 30'000'000'000) == Status::ok);
  return durable_sequence_approx(pub);
}

}  // namespace

TEST_CASE("CRC32C matches the Castagnoli check value", "[spill][sanitize]") {
  const char* s = "123456789";
  CHECK(spill::crc32c(0, s, 9) == 0xE3069283u);
  CHECK(spill::crc32c(spill::crc32c(0, s, 4), s + 4, 5) == 0xE3069283u);
  std::vector<unsigned char> big(1000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i * 7);
  CHECK(spill::crc32c(0, big.data() + 3, 997) ==
        spill::crc32c(spill::crc32c(0, big.data() + 3, 500), big.data() + 503, 497));
}

TEST_CASE("The archiver logs every committed frame, in order, across segment roll-overs",
          "[spill][sanitize]") {
  auto policy = GENERATE(FlushPolicy::none, FlushPolicy::interval, FlushPolicy::batch);
  Fixture f;
  Archiver a;
  a.add_partition(f.admin(), f.log_cfg(policy, 64 << 10));
  a.start();
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  const uint64_t N = 20000;
  for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pub, i) == i);
  wait_archived(pub, N);
  a.stop();
  auto st = a.stats();
  REQUIRE(st.size() == 1);
  CHECK(st[0].records == N);
  CHECK(st[0].segments_rolled > 5);
  CHECK(st[0].io_errors == 0);
  CHECK(check_log(f.pdir(), 1, N) == N);
  CHECK(spill::list_segments(f.pdir()).size() == st[0].segments_rolled + 1);
  CHECK(spill::next_sequence_after_log(f.dir.path, f.topic, 0) == N + 1);
}

TEST_CASE("A torn or garbled tail is truncated on recovery and never delivered", "[spill][sanitize]") {
  Fixture f;
  const uint64_t N = 3000;
  {
    Archiver a;
    a.add_partition(f.admin(), f.log_cfg(FlushPolicy::none, 1 << 20));
    a.start();
    Publisher pub = f.bus.publisher(f.topic, patient_publisher());
    for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pub, i) == i);
    wait_archived(pub, N);
    a.stop();
  }
  auto segs = spill::list_segments(f.pdir());
  REQUIRE(segs.size() == 1);
  const std::string path = segs[0].path;
  const uint64_t size = segs[0].size;
  auto scan = spill::scan_segment(path, 4096);
  REQUIRE(scan.records == N);
  REQUIRE(scan.valid_bytes == size);

  Rng rng(42);
  SECTION("truncate inside the last records") {
    uint64_t cut = size - 1 - rng.next() % 300;
    REQUIRE(truncate(path.c_str(), off_t(cut)) == 0);
    // Before recovery a reader stops at the torn record (it looks like a tail in progress).
    uint64_t before = 0;
    {
      spill::ChunkArena arena;
      spill::LogReader rd(f.pdir(), arena);
      rd.seek_earliest();
      spill::RecordView rv;
      while (rd.next(rv) == spill::LogReader::Next::ok) {
        REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
        ++before;
      }
    }
    auto rec = spill::recover_partition_log(f.pdir(), 4096);
    CHECK(rec.last_seq == before);
    CHECK(rec.truncated_bytes > 0);
    CHECK(rec.last_seq < N);
    CHECK(check_log(f.pdir(), 1, rec.last_seq) == rec.last_seq);
  }
  SECTION("garble a byte of the last record") {
    int fd = open(path.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    unsigned char b;
    off_t at = off_t(size - 5);
    REQUIRE(pread(fd, &b, 1, at) == 1);
    b ^= 0x5a;
    REQUIRE(pwrite(fd, &b, 1, at) == 1);
    close(fd);
    auto rec = spill::recover_partition_log(f.pdir(), 4096);
    CHECK(rec.last_seq == N - 1);
    CHECK(check_log(f.pdir(), 1, N - 1) == N - 1);
  }
  SECTION("garble a record in the middle of a sealed segment: skipped, reported, never delivered") {
    // Seal it: a later segment exists.
    spill::SegmentFileHeader h;
    spill::fill_file_header(h, N + 1, 1, 0);
    std::string next = f.pdir() + "/" + spill::segment_file_name(N + 1);
    int nf = open(next.c_str(), O_WRONLY | O_CREAT, 0644);
    REQUIRE(write(nf, &h, sizeof h) == ssize_t(sizeof h));
    close(nf);
    int fd = open(path.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    unsigned char b;
    off_t at = off_t(size / 2);
    // The records wholly before the garbled byte: exactly these are delivered (the rest
    // of a sealed segment after a corrupt record is skipped, docs/spill-log.md).
    uint64_t before = 0;
    for (uint64_t off = spill::kFileHeaderSize;;) {
      uint32_t len = 0;
      REQUIRE(pread(fd, &len, 4, off_t(off)) == 4);
      REQUIRE(len >= spill::kRecordOverhead);
      if (off + len > uint64_t(at)) break;
      off += len;
      ++before;
    }
    REQUIRE(before > 0);
    REQUIRE(before < N - 1);
    REQUIRE(pread(fd, &b, 1, at) == 1);
    b ^= 0xff;
    REQUIRE(pwrite(fd, &b, 1, at) == 1);
    close(fd);
    spill::ChunkArena arena;
    spill::LogReader rd(f.pdir(), arena);
    rd.seek_earliest();
    spill::RecordView rv;
    uint64_t good = 0, corrupt = 0, prev = 0;
    for (;;) {
      auto n = rd.next(rv);
      if (n == spill::LogReader::Next::end) break;
      if (n == spill::LogReader::Next::corrupt) {
        ++corrupt;
        continue;
      }
      REQUIRE(rv.seq() > prev);
      REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
      prev = rv.seq();
      ++good;
    }
    CHECK(corrupt == 1);
    CHECK(rd.skipped_corrupt() == 1);
    CHECK(good == before);  // every record before the garbled one, in order, no other
    CHECK(prev == before);
  }
  SECTION("recovery then resumed archiving appends right after the last good record") {
    REQUIRE(truncate(path.c_str(), off_t(size - 7)) == 0);
    Archiver a;
    a.add_partition(f.admin(), f.log_cfg(FlushPolicy::batch, 1 << 20));
    a.start();
    // The archiver's slot was left at N's end; the tail record is lost from the
    // log but the ring is past it: the restarted archiver resumes at the log's end.
    Publisher pub = f.bus.publisher(f.topic, patient_publisher());
    for (uint64_t i = N + 1; i <= N + 500; ++i) REQUIRE(publish_one(pub, i) == i);
    wait_archived(pub, N + 500);
    a.stop();
    spill::ChunkArena arena;
    spill::LogReader rd(f.pdir(), arena);
    rd.seek_earliest();
    spill::RecordView rv;
    uint64_t prev = 0, n = 0;
    while (rd.next(rv) == spill::LogReader::Next::ok) {
      REQUIRE(rv.seq() > prev);
      REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
      prev = rv.seq();
      ++n;
      arena.release(rv.seq());
    }
    CHECK(prev == N + 500);
    CHECK(n >= N + 499);
  }
}

TEST_CASE("Replay from earliest, a sequence, a time and latest hands over to the live ring",
          "[spill][sanitize]") {
  Fixture f(64 << 10);
  Archiver a;
  a.add_partition(f.admin(), f.log_cfg(FlushPolicy::none, 32 << 10));
  a.start();
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  const uint64_t N = 5000;
  for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pub, i) == i);
  wait_archived(pub, N);
  const uint64_t t_mid = shm::monotonic_ns();
  for (uint64_t i = N + 1; i <= N + 100; ++i) REQUIRE(publish_one(pub, i) == i);
  wait_archived(pub, N + 100);

  auto start = GENERATE(0, 1, 2, 3);
  ReplayOptions o;
  o.state_dir = f.dir.path;
  uint64_t first = 1;
  if (start == 0) o.start = StartAt::earliest();
  if (start == 1) {
    o.start = StartAt::sequence(1234);
    first = 1234;
  }
  if (start == 2) {
    o.start = StartAt::time(t_mid);
    first = N + 1;
  }
  if (start == 3) {
    o.start = StartAt::latest();
    first = N + 101;
  }
  ReplaySubscriber sub = replay_subscriber(f.bus, f.topic, o);
  // Then the producer goes on: those arrive through the ring.
  const uint64_t M = N + 300;
  uint64_t expect = first;
  View v;
  bool produced_more = false;
  if (start == 3) {
    for (uint64_t i = N + 101; i <= M; ++i) REQUIRE(publish_one(pub, i) == i);
    produced_more = true;
  }
  while (expect <= M) {
    Status s = sub.poll_wait(v, 10'000'000'000);
    REQUIRE(s == Status::ok);
    REQUIRE(v.sequence() == expect);
    REQUIRE(payload_ok(v.sequence(), v.data(), v.size()));
    sub.release(v);
    ++expect;
    if (!produced_more && expect > N + 100) {
      for (uint64_t i = N + 101; i <= M; ++i) REQUIRE(publish_one(pub, i) == i);
      produced_more = true;
    }
  }
  CHECK(sub.poll(v) == Status::empty);
  // Caught up: it reads the live ring now.
  CHECK(sub.source() == ReplaySource::ring);
  if (start != 3) CHECK(sub.stats().handovers >= 1);
  CHECK(sub.stats().from_log + sub.stats().from_ring == M - first + 1);
  a.stop();
}

TEST_CASE("Retention deletes whole segment files, oldest first", "[spill][sanitize]") {
  Fixture f;
  Archiver a;
  auto cfg = f.log_cfg(FlushPolicy::none, 32 << 10);
  cfg.retention_bytes = 128 << 10;
  a.add_partition(f.admin(), cfg);
  a.start();
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  const uint64_t N = 20000;
  for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pub, i) == i);
  wait_archived(pub, N);
  a.stop();
  auto segs = spill::list_segments(f.pdir());
  uint64_t total = 0;
  for (auto& s : segs) total += s.size;
  CHECK(a.stats()[0].segments_deleted > 0);
  CHECK(total <= (128 << 10) + (32 << 10));
  // What is left is a contiguous suffix of the stream, every record intact.
  REQUIRE(!segs.empty());
  const uint64_t first = segs[0].first_seq;
  CHECK(first > 1);
  CHECK(check_log(f.pdir(), first, N) == N - first + 1);
  // A replay that asks for deleted history starts at the earliest kept record.
  ReplayOptions o;
  o.state_dir = f.dir.path;
  o.start = StartAt::sequence(1);
  ReplaySubscriber sub = replay_subscriber(f.bus, f.topic, o);
  View v;
  REQUIRE(sub.poll_wait(v, 5'000'000'000) == Status::ok);
  CHECK(v.sequence() == first);
}

TEST_CASE("Injected write and fsync errors: reported, retried, nothing lost or corrupted",
          "[spill][sanitize]") {
  Fixture f;
  spill::ArchiverConfig ac;
  std::atomic<int> injected{0};
  ac.fault = [&](spill::IoOp op, uint64_t n) -> int {
    if (op == spill::IoOp::write && n >= 5 && n < 9) {
      ++injected;
      return EIO;
    }
    if (op == spill::IoOp::fsync && n == 3) {
      ++injected;
      return EIO;
    }
    return 0;
  };
  // What a producer reads while the write errors last: sampled through a publisher's
  // archiver_error() at the completion of the last injected write error (n == 8),
  // when the error of n == 7 is set and no retry has succeeded yet.
  // (archiver_error reads only the data segment's field: safe beside the producer.)
  const Publisher* watch = nullptr;
  std::atomic<int> seen_by_producers{-1};
  ac.fault = [&, inner = ac.fault](spill::IoOp op, uint64_t n) -> int {
    if (op == spill::IoOp::write && n == 8) seen_by_producers = archiver_error(*watch);
    return inner(op, n);
  };
  Archiver a(ac);
  a.add_partition(f.admin(), f.log_cfg(FlushPolicy::batch, 64 << 10));
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  watch = &pub;
  a.start();
  const uint64_t N = 5000;
  for (uint64_t i = 1; i <= N; ++i) {
    REQUIRE(publish_one(pub, i) == i);
    if (i % 50 == 0) wait_durable(pub, i, 5'000'000'000);  // small batches: many writes
  }
  wait_archived(pub, N);
  a.stop();
  auto st = a.stats()[0];
  CHECK(injected.load() == 5);
  CHECK(st.io_errors == 5);
  CHECK(st.retries >= 4);
  CHECK(st.last_error == 0);
  CHECK(archiver_error(pub) == 0);
  CHECK(seen_by_producers.load() == EIO);  // the error was reported to producers
  CHECK(check_log(f.pdir(), 1, N) == N);
}

TEST_CASE("A restarted archiver adopts its cursor and resumes without a gap or a duplicate",
          "[spill][sanitize]") {
  Fixture f(64 << 10);
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  uint64_t seq = 0;
  for (int round = 0; round < 5; ++round) {
    Archiver a;
    a.add_partition(f.admin(), f.log_cfg(FlushPolicy::interval, 16 << 10));
    a.start();
    for (int i = 0; i < 2000; ++i) {
      ++seq;
      REQUIRE(publish_one(pub, seq) == seq);
    }
    wait_archived(pub, seq);
    a.stop();  // keeps the cursor: the ring is held until the next archiver
    // Published while no archiver runs: the ring keeps them (64 KiB holds a few hundred).
    for (int i = 0; i < 200; ++i) {
      ++seq;
      REQUIRE(publish_one(pub, seq) == seq);
    }
  }
  Archiver a;
  a.add_partition(f.admin(), f.log_cfg(FlushPolicy::interval, 16 << 10));
  a.start();
  wait_archived(pub, seq);
  a.stop(true);
  CHECK(check_log(f.pdir(), 1, seq) == seq);
}
