// Spill log: format, archiver, recovery of torn tails, replay hand-over, retention,
// injected I/O errors. Short tests (suite 'sanitize' too).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <catch2/catch.hpp>
#include <thread>

#include "shmbus/shm/ring.hpp"
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
uint64_t check_log(const std::string& pdir, uint64_t first, uint64_t last, uint32_t span = 120) {
  spill::ChunkArena arena;
  spill::LogReader rd(pdir, arena);
  rd.seek_earliest();
  uint64_t expect = first, n = 0;
  spill::RecordView rv;
  while (rd.next(rv) == spill::LogReader::Next::ok) {
    REQUIRE(rv.seq() == expect);
    REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len, span));
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
    spill::ArchiverConfig small;
    small.buffer_bytes = 16 << 10;  // batches of at most 16 KiB: the log holds many
    Archiver a(small);
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
  REQUIRE(scan.index.size() >= 2);  // one entry per batch at least 4096 B after the previous one
  const uint64_t last_batch_first = [&] {
    int fd = open(path.c_str(), O_RDONLY);
    uint64_t first = 0;
    for (uint64_t off = spill::kFileHeaderSize; off < size;) {
      spill::BatchHeader bh;
      if (pread(fd, &bh, sizeof bh, off_t(off)) != ssize_t(sizeof bh) || bh.batch_len == 0) break;
      first = bh.first_seq;
      off += bh.batch_len;
    }
    close(fd);
    return first;
  }();
  REQUIRE(last_batch_first > 1);

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
    // The whole last batch goes: the log ends where the batch before it ended.
    auto rec = spill::recover_partition_log(f.pdir(), 4096);
    CHECK(rec.last_seq == last_batch_first - 1);
    CHECK(rec.last_seq < N);
    CHECK(check_log(f.pdir(), 1, last_batch_first - 1) == last_batch_first - 1);
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
    // The batches (3000 messages of 16..128 B need more than one 256 KiB buffer).
    std::vector<std::pair<uint64_t, spill::BatchHeader>> batches;
    for (uint64_t off = spill::kFileHeaderSize; off < size;) {
      spill::BatchHeader bh;
      REQUIRE(pread(fd, &bh, sizeof bh, off_t(off)) == ssize_t(sizeof bh));
      REQUIRE(bh.batch_len >= spill::kBatchHeaderSize + spill::kMsgHeaderSize);
      batches.push_back({off, bh});
      off += bh.batch_len;
    }
    REQUIRE(batches.size() >= 2);
    // Garble a byte in the middle of a batch after the first: the messages of the
    // batches wholly before it are delivered, exactly these (the rest of a sealed
    // segment after a corrupt batch is skipped, docs/spill-log.md).
    const auto& victim = batches[batches.size() / 2];
    unsigned char b;
    off_t at = off_t(victim.first + victim.second.batch_len / 2);
    uint64_t before = 0;
    for (const auto& [off, bh] : batches)
      if (off < victim.first) before += bh.count;
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
    // The torn last batch goes as a whole: the log keeps 1..kept.
    const uint64_t kept = spill::scan_segment(path, 4096).last_seq;
    REQUIRE(kept < N);
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
    CHECK(n == kept + 500);  // 1..kept, then N+1..N+500 (the ring no longer held the rest)
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

namespace {

// Checks every write submitted to a segment (the on_write hook): block-aligned, and no
// byte of the log (below the logical end of an earlier write) ever changed.
struct WriteShadow {
  struct File {
    std::vector<std::byte> bytes;
    std::vector<bool> logical;
  };
  std::mutex mu;
  std::map<std::string, std::map<uint64_t, File>> files;  // by partition dir, segment
  uint64_t writes = 0, changed = 0, unaligned = 0;
  void hook(spill::ArchiverConfig& ac) {
    ac.on_write = [this](const std::string& dir, uint64_t seg, uint64_t off, const std::byte* d, uint32_t len,
                         uint64_t end) {
      std::lock_guard<std::mutex> g(mu);
      ++writes;
      if (off % 4096 || len % 4096) ++unaligned;
      File& sh = files[dir][seg];
      if (sh.bytes.size() < off + len) {
        sh.bytes.resize(off + len);
        sh.logical.resize(off + len);
      }
      for (uint64_t i = 0; i < len; ++i) {
        if (sh.logical[off + i] && sh.bytes[off + i] != d[i]) ++changed;
        sh.bytes[off + i] = d[i];
        if (off + i < end) sh.logical[off + i] = true;
      }
    };
  }
};

}  // namespace

// Direct I/O rewrites the block the log ends in (padded with zeros, then completed by
// the next write). What makes that safe under a power loss is that no write ever
// changes a byte of the log once written: a torn rewrite (any mix of the old and new
// sectors) still holds every acknowledged byte. Checked here on every write the
// archiver submits, with buffers small enough to fill (carried blocks), bursts that
// drain the ring (padded blocks), injected write errors (rewrites from a block
// boundary) and segment roll-overs.
TEST_CASE("Direct I/O: every write is block-aligned and never changes a byte the log already holds",
          "[spill][sanitize]") {
  auto policy = GENERATE(FlushPolicy::interval, FlushPolicy::batch);
  Fixture f;
  spill::ArchiverConfig ac;
  ac.buffer_bytes = 16 << 10;
  ac.buffer_count = 4;
  ac.batch_buffer_count = 0;
  WriteShadow shadow;
  shadow.hook(ac);
  ac.fault = [](spill::IoOp op, uint64_t n) { return op == spill::IoOp::write && n % 97 == 13 ? EIO : 0; };
  Archiver a(ac);
  a.add_partition(f.admin(), f.log_cfg(policy, 128 << 10));
  a.start();
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  Rng rng(policy == FlushPolicy::batch ? 7 : 11);
  const uint64_t N = 30000;
  for (uint64_t i = 1; i <= N; ++i) {
    REQUIRE(publish_one(pub, i, 600) == i);
    if (rng.next() % 64 == 0) wait_archived(pub, i);  // the ring drains: a padded block
  }
  wait_archived(pub, N);
  a.stop();
  auto st = a.stats()[0];
  INFO(shadow.writes << " writes, " << st.segments_rolled << " roll-overs, " << st.io_errors
                     << " injected errors");
  CHECK(st.direct_io);
  CHECK(shadow.writes > 100);
  CHECK(st.io_errors > 0);
  CHECK(st.segments_rolled > 3);
  CHECK(shadow.unaligned == 0);
  CHECK(shadow.changed == 0);
  // Sealed segments and, after a clean stop, the active one end at their last batch.
  for (const auto& s : spill::list_segments(f.pdir())) {
    const auto sc = spill::scan_segment(s.path, 4096);
    CHECK(sc.valid_bytes == s.size);
    CHECK_FALSE(sc.tail_invalid);
  }
  spill::ChunkArena arena;
  spill::LogReader rd(f.pdir(), arena);
  rd.seek_earliest();
  uint64_t expect = 1;
  spill::RecordView rv;
  while (rd.next(rv) == spill::LogReader::Next::ok) {
    REQUIRE(rv.seq() == expect);
    REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len, 600));
    arena.release(rv.seq());
    ++expect;
  }
  CHECK(expect == N + 1);
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

namespace {

uint32_t archiver_pid_of(const std::shared_ptr<PartitionMapping>& m) {
  return shm::aref(m->refs().data->archiver_pid).load(std::memory_order_relaxed);
}

}  // namespace

// stop() then start() on the same Archiver object. stop() drains: what is staged is
// written, padded (direct I/O), and the active segment cut back to its last batch. A
// write that keeps failing through the drain stays staged: after start() it must be
// retried (the same bytes at the same offset) before anything after it, never dropped
// (the ring was not released for it, but the archiver reads on from where it was).
// Checked: every record once, in order; every write block-aligned and never changing a
// byte of the log; the archiver's pid published again.
TEST_CASE("Direct I/O: stop() then start() on the same archiver loses, repeats or rewrites nothing",
          "[spill][sanitize]") {
  auto policy = GENERATE(FlushPolicy::interval, FlushPolicy::batch);
  Fixture f;
  spill::ArchiverConfig ac;
  ac.buffer_bytes = 16 << 10;
  ac.buffer_count = 4;
  ac.batch_buffer_count = 0;
  WriteShadow shadow;
  shadow.hook(ac);
  std::atomic<bool> fail_writes{false};
  std::atomic<uint64_t> failed{0};
  ac.fault = [&](spill::IoOp op, uint64_t) -> int {
    if (op != spill::IoOp::write || !fail_writes.load()) return 0;
    ++failed;
    return EIO;
  };
  Archiver a(ac);
  auto m = f.admin();
  a.add_partition(m, f.log_cfg(policy, 128 << 10));
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  a.start();
  uint64_t seq = 0;
  auto publish = [&](int n) {
    for (int i = 0; i < n; ++i) {
      ++seq;
      REQUIRE(publish_one(pub, seq, 600) == seq);
    }
  };
  for (int round = 0; round < 8; ++round) {
    INFO("round " << round);
    publish(300);  // staged or in flight when stop() comes
    if (round % 2) {
      // The disk fails from here until after the stop: the drain cannot write.
      fail_writes = true;
      const uint64_t before = failed.load();
      publish(100);
      const uint64_t deadline = shm::monotonic_ns() + 10'000'000'000ull;
      while (failed.load() == before && shm::monotonic_ns() < deadline) std::this_thread::yield();
      REQUIRE(failed.load() > before);
    }
    a.stop();
    fail_writes = false;
    publish(100);  // while stopped: the ring holds them
    a.start();
    CHECK(archiver_pid_of(m) == uint32_t(getpid()));
    REQUIRE(wait_durable(pub, seq, 10'000'000'000) == Status::ok);  // the restarted archiver acknowledges
  }
  publish(300);
  CHECK(wait_durable(pub, seq, 10'000'000'000) == Status::ok);
  a.stop();
  auto st = a.stats()[0];
  INFO(shadow.writes << " writes, " << st.io_errors << " injected errors");
  CHECK(st.direct_io);
  CHECK(st.io_errors > 0);
  CHECK(shadow.unaligned == 0);
  CHECK(shadow.changed == 0);
  for (const auto& s : spill::list_segments(f.pdir())) {
    const auto sc = spill::scan_segment(s.path, 4096);
    CHECK(sc.valid_bytes == s.size);
    CHECK_FALSE(sc.tail_invalid);
  }
  CHECK(check_log(f.pdir(), 1, seq, 600) == seq);
}

// stop(true) gives the cursor slots back: the ring is no longer held, so this archiver
// cannot resume where it was. start() refuses (a new Archiver recovers the log and
// joins the ring afresh) instead of running without a cursor.
TEST_CASE("An archiver stopped with leave_cursors refuses to start again", "[spill][sanitize]") {
  Fixture f;
  Archiver a;
  a.add_partition(f.admin(), f.log_cfg(FlushPolicy::interval));
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  a.start();
  REQUIRE(publish_one(pub, 1) == 1);
  wait_archived(pub, 1);
  a.stop(true);
  REQUIRE_THROWS_AS(a.start(), Error);
  CHECK_FALSE(a.running());
  Archiver b;
  b.add_partition(f.admin(), f.log_cfg(FlushPolicy::interval));
  b.start();
  REQUIRE(publish_one(pub, 2) == 2);
  wait_archived(pub, 2);
  b.stop();
  CHECK(check_log(f.pdir(), 1, 2) == 2);
}

// stop(true) gives the cursor back and no archiver is left: producers must not see the
// pid of one (the cursor slot was cleared before the pid, which was then skipped).
TEST_CASE("An archiver stopped with leave_cursors clears its pid", "[spill][sanitize]") {
  Fixture f;
  auto m = f.admin();
  Archiver a;
  a.add_partition(m, f.log_cfg(FlushPolicy::interval));
  a.start();
  CHECK(archiver_pid_of(m) == uint32_t(getpid()));
  a.stop(true);
  CHECK(archiver_pid_of(m) == 0);
}

// Archiver `a` stops with a write that kept failing still staged at the log's end. A
// second archiver of the same process adopts the cursor (same pid: taken over in
// place), recovers the log (cut where a's failing write starts), and writes and
// acknowledges its own records there. a.start() must refuse: resuming would resubmit
// a's staged bytes over b's acknowledged ones, and two archivers would run one cursor.
// a's stop() must leave b's pid in place.
TEST_CASE("A stopped archiver whose cursor another archiver adopted refuses to start", "[spill][sanitize]") {
  auto policy = GENERATE(FlushPolicy::interval, FlushPolicy::batch);
  Fixture f;
  auto cfg = f.log_cfg(policy, 128 << 10);
  auto small = [] {
    spill::ArchiverConfig ac;
    ac.buffer_bytes = 16 << 10;
    ac.buffer_count = 4;
    ac.batch_buffer_count = 0;
    return ac;
  };
  spill::ArchiverConfig ac = small();
  WriteShadow shadow_a, shadow_b;  // one per archiver: b rewrites what a never acknowledged
  shadow_a.hook(ac);
  std::atomic<bool> fail_writes{false};
  std::atomic<uint64_t> failed{0};
  ac.fault = [&](spill::IoOp op, uint64_t) -> int {
    if (op != spill::IoOp::write || !fail_writes.load()) return 0;
    ++failed;
    return EIO;
  };
  Archiver a(ac);
  auto m = f.admin();
  a.add_partition(m, cfg);
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  a.start();
  uint64_t seq = 0;
  auto publish = [&](int n) {
    for (int i = 0; i < n; ++i) {
      ++seq;
      REQUIRE(publish_one(pub, seq, 600) == seq);
    }
  };
  publish(300);
  wait_archived(pub, seq);
  fail_writes = true;  // a's next write fails until after its stop: it stays staged
  publish(100);
  const uint64_t deadline = shm::monotonic_ns() + 10'000'000'000ull;
  while (failed.load() == 0 && shm::monotonic_ns() < deadline) std::this_thread::yield();
  REQUIRE(failed.load() > 0);
  a.stop();
  fail_writes = false;
  CHECK(archiver_pid_of(m) == 0);

  spill::ArchiverConfig bc = small();
  shadow_b.hook(bc);
  Archiver b(bc);
  b.add_partition(f.admin(), cfg);  // adopts the cursor a held (same pid)
  b.start();
  publish(300);
  wait_archived(pub, seq);  // b wrote and acknowledged everything, a's staged records too

  REQUIRE_THROWS_AS(a.start(), Error);
  CHECK_FALSE(a.running());
  a.stop();  // as its destructor does: b's pid and cursor stay
  CHECK(archiver_pid_of(m) == uint32_t(getpid()));
  publish(100);
  wait_archived(pub, seq);
  b.stop();
  CHECK(shadow_b.unaligned == 0);
  CHECK(shadow_b.changed == 0);
  CHECK(check_log(f.pdir(), 1, seq, 600) == seq);
}

// The `starved` mark of a partition that found no staging buffer makes the others
// leave one free for it. A starved partition whose pumps then stop before asking for a
// buffer (here: its ring's head frame turns corrupt, EBADMSG) must lose the mark, or the
// others keep one buffer back for good: with two buffers a busy partition can then
// never carry its partial last block into a next buffer and pads (and rewrites) the
// block at every write. Counted in the busy partition's writes that start before the
// end of its previous one (a padded block written again), not in time.
TEST_CASE("Direct I/O: a starved partition that stops asking for buffers stops holding one back",
          "[spill][sanitize]") {
  const std::string prefix = unique_prefix("spill-starve");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  TempDir dir;
  const std::string tp = "t.busy", tq = "t.quiet";
  bus.create_topic(tp, durable_topic(8 << 20));
  TopicGuard gp{bus, tp};
  bus.create_topic(tq, durable_topic(1 << 20));
  TopicGuard gq{bus, tq};
  const std::string dp = spill::partition_dir(dir.path, tp, 0);
  auto mq = bus.provider().open(tq, 0, Role::admin, 5000);
  const shm::RingRefs qr = mq->refs();
  const uint64_t qhead = shm::aref(qr.data->tail_pos).load(std::memory_order_acquire);

  spill::ArchiverConfig ac;
  ac.buffer_bytes = 16 << 10;
  ac.buffer_count = 2;
  ac.batch_buffer_count = 0;
  // Archiver thread only. P takes both buffers in the first turn (a carried one and a
  // padded one), Q then finds none: starved. P's third write is submitted when both are
  // free again, before Q's next pump: Q's head frame is made corrupt there.
  uint64_t p_writes = 0, p_after = 0, p_overlaps = 0, p_prev_end = 0;
  ac.on_write = [&](const std::string& d, uint64_t, uint64_t off, const std::byte*, uint32_t len, uint64_t) {
    if (d != dp) return;
    if (++p_writes == 3) {
      shm::FrameHeader* h = qr.frame_at(qhead);
      const uint64_t w = shm::aref(h->commit).load(std::memory_order_relaxed);
      shm::aref(h->commit).store((w & ~uint64_t(0xffffffff)) | 3u, std::memory_order_release);  // length 3
    } else if (p_writes > 3) {
      ++p_after;
      p_overlaps += off < p_prev_end;
    }
    p_prev_end = off + len;
  };
  Archiver a(ac);
  LogConfig lc;
  lc.state_dir = dir.path;
  lc.flush = FlushPolicy::interval;
  lc.segment_bytes = 64 << 20;
  a.add_partition(bus.provider().open(tp, 0, Role::admin, 5000), lc);  // pumped first
  a.add_partition(mq, lc);
  Publisher pp = bus.publisher(tp, patient_publisher());
  Publisher pq = bus.publisher(tq, patient_publisher());
  const uint64_t N = 8000;  // ~5 MiB: a few hundred 16 KiB writes
  for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pp, i, 1200) == i);
  REQUIRE(publish_one(pq, 1) == 1);
  a.start();
  wait_archived(pp, N);
  a.stop();
  INFO(p_after << " writes after Q's frame turned corrupt, " << p_overlaps
               << " of them rewrote a padded block");
  CHECK(a.stats()[0].direct_io);
  CHECK(a.stats()[1].last_error == EBADMSG);
  REQUIRE(p_after > 100);
  // Carrying again: every other write at most (a carried buffer, then a padded one
  // while the carried one holds the other buffer). Stale mark: nearly every write.
  CHECK(p_overlaps * 4 < p_after * 3);
  CHECK(check_log(dp, 1, N, 1200) == N);
}

// Staging buffers are shared by all partitions (default: 16 x 1 MiB), which are pumped
// in order, each turn. A partition takes up to max_inflight_writes + 1 buffers a turn,
// and under `interval` a full buffer carries its last block into the next one and is
// freed only with it: the partitions pumped first take every buffer freed while they
// have records waiting. Here six busy partitions, each with 28 MiB waiting, are
// archived before two quiet ones with a record each: the quiet ones must get a buffer
// while the busy ones still have most of their backlog (measured in what the busy ones
// had written when a quiet one's first write was submitted, not in time): 19 MiB of
// 168 with the fix (one round of the 16 buffers), 91-120 MiB before it, and with
// producers keeping the busy rings full the quiet ones waited as long as that lasted
// (over 1 GiB written in a run with 64 MiB rings).
TEST_CASE("Default buffers: busy partitions do not starve the others of staging buffers",
          "[spill][sanitize]") {
  const std::string prefix = unique_prefix("spill-fair");
  Bus bus = Bus::direct({.shm_prefix = prefix});
  TempDir dir;
  constexpr int kBusy = 6, kQuiet = 2, kRecords = 900;
  constexpr uint32_t kLen = 32 << 10;
  std::vector<std::string> topics, dirs;
  std::vector<std::unique_ptr<TopicGuard>> guards;
  for (int i = 0; i < kBusy + kQuiet; ++i) {
    topics.push_back("t.fair" + std::to_string(i));
    dirs.push_back(spill::partition_dir(dir.path, topics.back(), 0));
    TopicConfig tc = durable_topic(i < kBusy ? 32 << 20 : 1 << 20);
    tc.max_payload = kLen;
    bus.create_topic(topics.back(), tc);
    guards.emplace_back(new TopicGuard{bus, topics.back()});  // no temporary: its destructor removes
  }
  spill::ArchiverConfig ac;                 // the defaults: 16 x 1 MiB, direct I/O
  std::map<std::string, uint64_t> written;  // bytes submitted, by partition dir (archiver thread)
  std::vector<uint64_t> busy_when_first(kQuiet, 0);
  ac.on_write = [&](const std::string& d, uint64_t, uint64_t, const std::byte*, uint32_t len, uint64_t) {
    for (int q = 0; q < kQuiet; ++q)
      if (d == dirs[kBusy + q] && !written[d])
        for (int i = 0; i < kBusy; ++i) busy_when_first[q] += written[dirs[i]];
    written[d] += len;
  };
  Archiver a(ac);
  for (int i = 0; i < kBusy + kQuiet; ++i) {  // the busy ones first: they are pumped first
    LogConfig lc;
    lc.state_dir = dir.path;
    lc.flush = FlushPolicy::interval;
    a.add_partition(bus.provider().open(topics[i], 0, Role::admin, 5000), lc);
  }
  std::vector<Publisher> pubs;
  for (auto& t : topics) pubs.push_back(bus.publisher(t, patient_publisher()));
  for (int i = 0; i < kBusy; ++i)
    for (uint64_t n = 1; n <= kRecords; ++n) {
      ClaimView cv;
      REQUIRE(pubs[i].claim(kLen, cv) == Status::ok);
      REQUIRE(cv.sequence == n);
      std::memset(cv.data, int(n), kLen);
      std::memcpy(cv.data, &n, 8);
      REQUIRE(pubs[i].commit(kLen) == Status::ok);
    }
  for (int q = kBusy; q < kBusy + kQuiet; ++q) REQUIRE(publish_one(pubs[q], 1) == 1);
  a.start();
  for (int i = 0; i < kBusy; ++i) CHECK(wait_durable(pubs[i], kRecords, 30'000'000'000) == Status::ok);
  for (int q = kBusy; q < kBusy + kQuiet; ++q) CHECK(wait_durable(pubs[q], 1, 30'000'000'000) == Status::ok);
  a.stop();
  const uint64_t backlog = uint64_t(kBusy) * kRecords * kLen;
  for (int q = 0; q < kQuiet; ++q) {
    INFO("quiet partition " << q << ": its first write came after " << (busy_when_first[q] >> 20)
                            << " MiB of the busy ones' " << (backlog >> 20) << " MiB");
    CHECK(busy_when_first[q] < backlog / 4);
  }
  for (int q = kBusy; q < kBusy + kQuiet; ++q) CHECK(check_log(dirs[q], 1, 1) == 1);
  for (int i = 0; i < kBusy; ++i) {
    spill::ChunkArena arena;
    spill::LogReader rd(dirs[i], arena);
    rd.seek_earliest();
    spill::RecordView rv;
    uint64_t expect = 1;
    while (rd.next(rv) == spill::LogReader::Next::ok) {
      uint64_t head = 0;
      if (rv.payload_len == kLen) std::memcpy(&head, rv.payload, 8);
      REQUIRE(rv.seq() == expect);
      REQUIRE(head == expect);
      arena.release(rv.seq());
      ++expect;
    }
    CHECK(expect == kRecords + 1);
  }
}

// --------------------------------------------------------------------------- format v2
namespace {

struct Msg {
  uint64_t pos;
  shm::FrameHeader h;
  std::vector<std::byte> payload;
};

Msg make_msg(uint64_t seq, uint64_t pos, uint32_t plen, uint64_t ts, uint32_t producer = 7, uint64_t mid = 0,
             uint64_t schema = 0xabc, uint32_t extra_frame = 0) {
  Msg m;
  m.pos = pos;
  m.payload.resize(plen);
  if (plen) fill_payload(seq, m.payload.data(), plen);
  m.h = {};
  m.h.commit = shm::make_commit(uint32_t(shm::align_frame(shm::kFrameHeaderSize + plen)) + extra_frame,
                                shm::kFrameData);
  m.h.payload_len = plen;
  m.h.producer_id = producer;
  m.h.sequence = seq;
  m.h.timestamp_ns = ts;
  m.h.message_id = mid;
  m.h.schema_id = schema;
  return m;
}
uint64_t end_of(const Msg& m) { return m.pos + shm::commit_length(m.h.commit); }

// Encodes msgs as one batch at the end of out; returns the batch's offset in out.
size_t append_batch(std::vector<std::byte>& out, const std::vector<Msg>& msgs) {
  // Room for the worst case (every optional field present), trimmed after.
  uint64_t room = spill::kBatchHeaderSize;
  for (const Msg& m : msgs) room += spill::kMsgHeaderSize + 8 * 8 + shm::align_frame(m.h.payload_len);
  const size_t at = out.size();
  out.resize(at + room, std::byte{0xee});
  spill::BatchWriter w;
  const uint32_t n =
      w.begin(out.data() + at, msgs[0].pos, msgs[0].h, msgs[0].payload.data(), msgs[0].h.payload_len);
  REQUIRE(n == spill::BatchWriter::first_size(msgs[0].h));  // the size the archiver reserves
  for (size_t i = 1; i < msgs.size(); ++i) {
    const uint32_t want = w.next_size(msgs[i].pos, msgs[i].h);
    REQUIRE(w.append(msgs[i].pos, msgs[i].h, msgs[i].payload.data(), msgs[i].h.payload_len) == want);
  }
  w.finish();
  REQUIRE(w.count() == msgs.size());
  out.resize(at + w.size());
  return at;
}

void require_same(const Msg& m, const shm::FrameHeader& h, uint64_t pos, const std::byte* payload) {
  REQUIRE(h.sequence == m.h.sequence);
  REQUIRE(h.commit == m.h.commit);
  REQUIRE(h.payload_len == m.h.payload_len);
  REQUIRE(h.producer_id == m.h.producer_id);
  REQUIRE(h.timestamp_ns == m.h.timestamp_ns);
  REQUIRE(h.message_id == m.h.message_id);
  REQUIRE(h.schema_id == m.h.schema_id);
  REQUIRE(pos == m.pos);
  if (!m.payload.empty()) REQUIRE(std::memcmp(payload, m.payload.data(), m.payload.size()) == 0);
  REQUIRE(reinterpret_cast<uintptr_t>(payload) % 8 == 0);  // Cap'n Proto reads words in place
}

}  // namespace

TEST_CASE("Format v2: every frame header field round-trips through a batch", "[spill][sanitize]") {
  std::vector<Msg> msgs;
  msgs.push_back(make_msg(10, 1000, 64, 1'000'000'000));
  msgs.push_back(make_msg(11, end_of(msgs.back()), 64, 1'000'000'100));  // all implied
  // A sequence gap, padding in the ring before it, a 5 s time step, other producer,
  // message and schema ids, a frame longer than its payload needs (several producers).
  msgs.push_back(make_msg(13, end_of(msgs.back()) + 4096, 100, 6'000'000'100, 8, 99, 0xdef, 24));
  msgs.push_back(make_msg(14, end_of(msgs.back()), 5, 5'999'999'000, 8, 99, 0xdef));  // time goes back
  msgs.push_back(make_msg(15, end_of(msgs.back()), 0, 5'999'999'001, 8, 100, 0xdef));
  msgs.push_back(make_msg(16, end_of(msgs.back()), 1, 5'999'999'002, 8, 100, 0));
  msgs.push_back(make_msg(17, end_of(msgs.back()), (1u << 24) + 3, 5'999'999'003, 8, 100, 0));  // long
  msgs.push_back(make_msg(18, end_of(msgs.back()), 8, 5'999'999'004, 9, 100, 0));
  std::vector<std::byte> buf;
  REQUIRE(append_batch(buf, msgs) == 0);
  spill::BatchInfo bi;
  REQUIRE(spill::check_batch(buf.data(), buf.size(), &bi) == spill::Check::ok);
  CHECK(bi.len == buf.size());
  CHECK(bi.count == msgs.size());
  CHECK(bi.first_seq == 10);
  CHECK(bi.first_ts == 1'000'000'000);
  CHECK(bi.last_seq == 18);
  CHECK(bi.last_ts == 5'999'999'004);
  CHECK(bi.last_ring_end == end_of(msgs.back()));
  spill::BatchDecoder d;
  d.start(buf.data(), uint32_t(buf.size()));
  shm::FrameHeader h;
  uint64_t pos;
  const std::byte* pl;
  for (const Msg& m : msgs) {
    REQUIRE(d.next(h, pos, pl));
    require_same(m, h, pos, pl);
  }
  CHECK_FALSE(d.next(h, pos, pl));
  CHECK(d.done());
  // Well-formed CRC, wrong content: the decoder refuses it (the CRC is not the only check).
  auto resealed = [&](auto&& edit) {
    std::vector<std::byte> b = buf;
    edit(b);
    uint32_t c = spill::crc32c(0, b.data() + 12, b.size() - 12);
    c = spill::crc32c(c, b.data(), 4);
    c = spill::crc32c(c, b.data() + 8, 4);
    std::memcpy(b.data() + 4, &c, 4);
    return spill::check_batch(b.data(), b.size(), nullptr);
  };
  CHECK(resealed([](auto&) {}) == spill::Check::ok);  // the helper itself
  CHECK(resealed([](auto& b) { b[8] = std::byte(uint8_t(b[8]) + 1); }) == spill::Check::bad);  // count + 1
  CHECK(resealed([](auto& b) { b[8] = std::byte(uint8_t(b[8]) - 1); }) == spill::Check::bad);  // count - 1
  CHECK(resealed([](auto& b) { b[spill::kBatchHeaderSize + 3] |= std::byte{1}; }) ==
        spill::Check::bad);  // kMsgSeq on the first message
  CHECK(resealed([](auto& b) { b[spill::kBatchHeaderSize + 2] = std::byte{0x7f}; }) ==
        spill::Check::bad);  // a payload longer than the batch
  // A batch that is shorter than it says, or empty, is not a batch.
  CHECK(spill::check_batch(buf.data(), buf.size() - 8, nullptr) == spill::Check::need_more);
  std::vector<std::byte> zero(64, std::byte{0});
  CHECK(spill::check_batch(zero.data(), zero.size(), nullptr) == spill::Check::end);
}

TEST_CASE("Format v2: a batch with any bytes changed under a valid CRC is refused or decodes inside itself",
          "[spill][sanitize]") {
  // The CRC only says the bytes are the ones written; the decoder must still hold when
  // a writer (or an attacker who can write the log) sealed wrong contents.
  Rng rng(20261201);
  uint64_t ok = 0, bad = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<Msg> msgs;
    uint64_t seq = 1 + rng.next() % 1000, pos = rng.next() % 100000 * 8, ts = rng.next() % 1'000'000'000;
    const uint32_t n = 1 + uint32_t(rng.next() % 6);
    for (uint32_t k = 0; k < n; ++k) {
      const uint64_t r = rng.next();
      msgs.push_back(make_msg(seq, pos, uint32_t(r % 40), ts, uint32_t(7 + (r >> 8) % 2), (r >> 9) % 2,
                              0xabc + (r >> 10) % 2, uint32_t((r >> 11) % 2) * 8));
      seq += 1 + (r >> 12) % 2;
      pos = end_of(msgs.back()) + ((r >> 13) % 2) * 64;
      ts += (r >> 14) % 3 == 0 ? 5'000'000'000ull : (r >> 16) % 1000;
    }
    std::vector<std::byte> b;
    append_batch(b, msgs);
    const int edits = 1 + int(rng.next() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng.next() % b.size();
      if (at >= 4 && at < 8) continue;  // the CRC itself is recomputed below
      b[at] ^= std::byte(uint8_t(1 + rng.next() % 255));
    }
    uint32_t len;
    std::memcpy(&len, b.data(), 4);
    if (len > b.size()) len = uint32_t(b.size()) & ~7u;  // keep the claimed length readable
    if (len < 12) continue;
    std::memcpy(b.data(), &len, 4);
    uint32_t c = spill::crc32c(0, b.data() + 12, len - 12);
    c = spill::crc32c(c, b.data(), 4);
    c = spill::crc32c(c, b.data() + 8, 4);
    std::memcpy(b.data() + 4, &c, 4);
    spill::BatchInfo bi;
    if (spill::check_batch(b.data(), len, &bi) != spill::Check::ok) {
      ++bad;
      continue;
    }
    ++ok;
    spill::BatchDecoder d;
    d.start(b.data(), len);
    shm::FrameHeader h;
    uint64_t p;
    const std::byte* pl;
    uint32_t seen = 0;
    uint64_t prev = 0;
    while (d.next(h, p, pl)) {
      ++seen;
      REQUIRE(pl >= b.data() + spill::kBatchHeaderSize);
      REQUIRE(pl + h.payload_len <= b.data() + len);
      REQUIRE(shm::commit_length(h.commit) >= shm::kFrameHeaderSize + h.payload_len);
      REQUIRE((seen == 1 || h.sequence > prev));
      prev = h.sequence;
    }
    REQUIRE(d.done());
    REQUIRE(seen == bi.count);
  }
  INFO("accepted " << ok << ", refused " << bad);
  CHECK(bad > 300);  // edits of headers and lengths break the structure (898 with this seed)
  CHECK(ok > 300);   // edits of payload bytes stay valid (2102 with this seed)
}

TEST_CASE("Format v2: a 64 B message costs at most 80 B of log (25 %) in a batch", "[spill][sanitize]") {
  auto size = GENERATE(64u, 1024u);
  const uint32_t n = 1000;
  std::vector<Msg> msgs;
  uint64_t pos = 0, ts = 5'000'000'000;
  for (uint32_t i = 0; i < n; ++i) {
    msgs.push_back(make_msg(1 + i, pos, size, ts));
    pos = end_of(msgs.back());
    ts += 100 + i % 7;
  }
  std::vector<std::byte> buf;
  append_batch(buf, msgs);
  const double per_msg = double(buf.size()) / n;
  INFO("log bytes per " << size << " B message: " << per_msg);
  CHECK(buf.size() == spill::kBatchHeaderSize + n * (spill::kMsgHeaderSize + size));
  CHECK(per_msg <= 1.25 * size);
  if (size == 64) CHECK(per_msg <= 80.0);
  CHECK(spill::check_batch(buf.data(), buf.size(), nullptr) == spill::Check::ok);
}

TEST_CASE("Format v2: recovery keeps exactly the complete, valid batches (every cut, every flipped byte)",
          "[spill][sanitize]") {
  TempDir dir("/dev/shm");  // many small recoveries: tmpfs makes their fdatasync cheap
  const std::string pdir = spill::partition_dir(dir.path, "t", 0);
  REQUIRE(system(("mkdir -p '" + pdir + "'").c_str()) == 0);
  // Three batches of 3, 4 and 5 messages (sequences 1..12).
  std::vector<std::byte> golden(spill::kFileHeaderSize);
  spill::SegmentFileHeader fh;
  spill::fill_file_header(fh, 1, 77, 0);
  std::memcpy(golden.data(), &fh, sizeof fh);
  std::vector<size_t> starts;
  uint64_t seq = 1, pos = 0, ts = 1'000'000;
  for (uint32_t count : {3u, 4u, 5u}) {
    std::vector<Msg> msgs;
    for (uint32_t k = 0; k < count; ++k, ++seq) {
      msgs.push_back(make_msg(seq, pos, payload_len(seq), ts));
      pos = end_of(msgs.back());
      ts += 1000;
    }
    starts.push_back(append_batch(golden, msgs));
  }
  const size_t end_b = starts[2], end_c = golden.size();
  const std::string path = pdir + "/" + spill::segment_file_name(1);
  auto write_file = [&](const std::vector<std::byte>& bytes, size_t n) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, bytes.data(), n) == ssize_t(n));
    close(fd);
  };
  auto file_size = [&] {
    struct stat st;
    REQUIRE(stat(path.c_str(), &st) == 0);
    return uint64_t(st.st_size);
  };
  // What a reader gets: 1..last, every payload intact, then the end.
  auto read_all = [&](uint64_t last) {
    spill::ChunkArena arena;
    spill::LogReader rd(pdir, arena);
    rd.seek_earliest();
    spill::RecordView rv;
    uint64_t expect = 1;
    while (rd.next(rv) == spill::LogReader::Next::ok) {
      REQUIRE(rv.seq() == expect);
      REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
      ++expect;
    }
    REQUIRE(expect == last + 1);
  };
  // Control: intact, all three batches.
  write_file(golden, end_c);
  auto r = spill::recover_partition_log(pdir, 4096);
  REQUIRE(r.last_seq == 12);
  REQUIRE(r.truncated_bytes == 0);
  read_all(12);
  uint64_t cuts = 0, flips = 0;
  for (size_t cut = end_b; cut < end_c; ++cut) {  // torn at every byte of the last batch
    write_file(golden, cut);
    read_all(7);  // before recovery a reader stops at the torn batch
    r = spill::recover_partition_log(pdir, 4096);
    REQUIRE(r.last_seq == 7);
    REQUIRE(r.active_size == end_b);
    REQUIRE(file_size() == end_b);
    read_all(7);
    ++cuts;
  }
  // Any byte of the last batch flipped: that batch goes, the first two stay. Any byte
  // of the middle batch flipped: only the first stays (nothing after a bad batch).
  for (size_t at = starts[1]; at < end_c; ++at) {
    for (unsigned char mask : {0x01, 0x80}) {
      std::vector<std::byte> bad = golden;
      bad[at] ^= std::byte{mask};
      write_file(bad, bad.size());
      r = spill::recover_partition_log(pdir, 4096);
      const bool last = at >= end_b;
      REQUIRE(r.last_seq == (last ? 7u : 3u));
      REQUIRE(file_size() == (last ? end_b : starts[1]));
      read_all(last ? 7 : 3);
      ++flips;
    }
  }
  CHECK(cuts == end_c - end_b);
  CHECK(flips == 2 * (end_c - starts[1]));
}

TEST_CASE("Format v2: replay starts at any sequence inside a batch", "[spill][sanitize]") {
  Fixture f;
  spill::ArchiverConfig ac;
  ac.buffer_bytes = 64 << 10;  // several batches even when the archiver finds all 6000 at once
  Archiver a(ac);
  a.add_partition(f.admin(), f.log_cfg(FlushPolicy::none, 1 << 20));
  a.start();
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  const uint64_t N = 6000;
  for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pub, i) == i);
  wait_archived(pub, N);
  a.stop();
  auto segs = spill::list_segments(f.pdir());
  REQUIRE(segs.size() == 1);
  // The batches of the file, and the timestamps of every message in log order.
  std::vector<std::pair<uint64_t, spill::BatchInfo>> batches;
  std::vector<uint64_t> ts(N + 1);
  {
    int fd = open(segs[0].path.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    std::vector<std::byte> all(segs[0].size);
    REQUIRE(pread(fd, all.data(), all.size(), 0) == ssize_t(all.size()));
    close(fd);
    for (size_t off = spill::kFileHeaderSize; off < all.size();) {
      spill::BatchInfo bi;
      REQUIRE(spill::check_batch(all.data() + off, all.size() - off, &bi) == spill::Check::ok);
      batches.push_back({off, bi});
      spill::BatchDecoder d;
      d.start(all.data() + off, bi.len);
      shm::FrameHeader h;
      uint64_t pos;
      const std::byte* pl;
      while (d.next(h, pos, pl)) ts[h.sequence] = h.timestamp_ns;
      off += bi.len;
    }
  }
  // Every index entry points at the start of a batch and names its first message.
  {
    std::string idx = f.pdir() + "/" + spill::index_file_name(segs[0].first_seq);
    int fd = open(idx.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    spill::IndexEntry e;
    uint64_t entries = 0;
    while (read(fd, &e, sizeof e) == ssize_t(sizeof e)) {
      bool found = false;
      for (auto& [off, bi] : batches)
        found |= off == e.offset && bi.first_seq == e.seq && bi.first_ts == e.ts;
      REQUIRE(found);
      ++entries;
    }
    close(fd);
    CHECK(entries >= 1);
  }
  // The biggest batch that is not the first: replay from every sequence in it and
  // around its edges.
  size_t bi_at = 1;
  REQUIRE(batches.size() >= 2);
  for (size_t i = 1; i < batches.size(); ++i)
    if (batches[i].second.count > batches[bi_at].second.count) bi_at = i;
  const spill::BatchInfo& big = batches[bi_at].second;
  REQUIRE(big.count >= 3);
  INFO("batches " << batches.size() << ", the one replayed from holds " << big.count);
  const uint64_t lo = big.first_seq - 1, hi = std::min(big.last_seq + 1, N);
  uint64_t step = std::max<uint64_t>(1, (hi - lo) / 200);
  for (uint64_t s = lo; s <= hi; s += (s == lo || s + 2 > hi ? 1 : step)) {
    spill::ChunkArena arena;
    spill::LogReader rd(f.pdir(), arena);
    rd.seek_sequence(s);
    spill::RecordView rv;
    REQUIRE(rd.next(rv) == spill::LogReader::Next::ok);
    REQUIRE(rv.seq() == s);
    REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
    REQUIRE(rd.next(rv) == spill::LogReader::Next::ok);
    REQUIRE(rv.seq() == s + 1);
  }
  // By time: the first message in log order at or after a timestamp inside the batch.
  const uint64_t mid = big.first_seq + big.count / 2;
  uint64_t want = 1;
  while (ts[want] < ts[mid]) ++want;
  {
    spill::ChunkArena arena;
    spill::LogReader rd(f.pdir(), arena);
    rd.seek_time(ts[mid]);
    spill::RecordView rv;
    REQUIRE(rd.next(rv) == spill::LogReader::Next::ok);
    CHECK(rv.seq() == want);
  }
  // And through a ReplaySubscriber, to the end of the log and into the ring.
  ReplayOptions o;
  o.state_dir = f.dir.path;
  o.start = StartAt::sequence(mid);
  ReplaySubscriber sub = replay_subscriber(f.bus, f.topic, o);
  View v;
  for (uint64_t expect = mid; expect <= N; ++expect) {
    REQUIRE(sub.poll_wait(v, 10'000'000'000) == Status::ok);
    REQUIRE(v.sequence() == expect);
    REQUIRE(payload_ok(v.sequence(), v.data(), v.size()));
    if (expect % 3 == 0) sub.release(v);  // views held across batches stay valid
  }
  CHECK(sub.stats().from_log == N - mid + 1);
}

// --------------------------------------------------------------------------- format v1
namespace {
// The version 1 writer as it was (one record per frame), kept here to produce logs
// written before format v2.
std::vector<std::byte> encode_v1(uint64_t ring_pos, const shm::FrameHeader& hdr, const std::byte* payload) {
  const uint32_t plen = hdr.payload_len;
  const uint32_t len = spill::record_size_v1(plen);
  std::vector<std::byte> dst(len, std::byte{0});
  std::memcpy(dst.data(), &len, 4);
  std::memcpy(dst.data() + 8, &ring_pos, 8);
  std::memcpy(dst.data() + spill::kRecordPrefix, &hdr, sizeof hdr);
  std::memcpy(dst.data() + spill::kRecordOverhead, payload, plen);
  uint32_t c = spill::crc32c(0, dst.data(), 4);
  c = spill::crc32c(c, dst.data() + 8, len - 8);
  std::memcpy(dst.data() + 4, &c, 4);
  return dst;
}
}  // namespace

TEST_CASE("Format v1: a log written before format v2 replays, and archiving continues in a v2 segment",
          "[spill][sanitize]") {
  Fixture f;
  auto m = f.admin();
  const shm::RingRefs& r = m->refs();
  const uint64_t pos0 = shm::aref(r.data->tail_pos).load(std::memory_order_acquire);
  const uint64_t K = 400;
  {
    // Published before any archiver: the frames stay in the ring, and the test writes
    // them to two v1 segments (1..200 sealed, 201..400 active with a torn record after).
    Publisher pub = f.bus.publisher(f.topic, patient_publisher());
    for (uint64_t i = 1; i <= K; ++i) REQUIRE(publish_one(pub, i) == i);
  }
  REQUIRE(system(("mkdir -p '" + f.pdir() + "'").c_str()) == 0);
  uint64_t pos = pos0;
  std::vector<std::byte> seg;
  uint64_t seg_first = 1, v1_active_size = 0;
  auto flush_seg = [&](bool torn) {
    std::vector<std::byte> out(spill::kFileHeaderSize);
    spill::SegmentFileHeader fh;
    spill::fill_file_header(fh, seg_first, r.data->created_ns, 0, spill::kLogVersionV1);
    std::memcpy(out.data(), &fh, sizeof fh);
    out.insert(out.end(), seg.begin(), seg.end());
    v1_active_size = out.size();
    if (torn) out.insert(out.end(), seg.begin(), seg.begin() + 40);  // half a record
    std::string path = f.pdir() + "/" + spill::segment_file_name(seg_first);
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, out.data(), out.size()) == ssize_t(out.size()));
    close(fd);
    seg.clear();
  };
  for (uint64_t i = 1; i <= K; ++i) {
    const shm::FrameHeader h = *r.frame_at(pos);
    REQUIRE(shm::commit_type(h.commit) == shm::kFrameData);
    REQUIRE(h.sequence == i);
    auto rec = encode_v1(pos, h, reinterpret_cast<const std::byte*>(r.frame_at(pos)) + shm::kFrameHeaderSize);
    seg.insert(seg.end(), rec.begin(), rec.end());
    pos += shm::commit_length(h.commit);
    if (i == 200) {
      flush_seg(false);
      seg_first = 201;
    }
  }
  flush_seg(true);
  // The v1 log reads as it is, from the start and from a sequence (its index is absent).
  CHECK(check_log(f.pdir(), 1, K) == K);
  {
    spill::ChunkArena arena;
    spill::LogReader rd(f.pdir(), arena);
    rd.seek_sequence(321);
    spill::RecordView rv;
    REQUIRE(rd.next(rv) == spill::LogReader::Next::ok);
    CHECK(rv.seq() == 321);
    CHECK(rv.ring_pos >= pos0);
  }
  // The archiver recovers it (the torn record goes), leaves it in v1 and continues
  // right after it in a new v2 segment.
  Archiver a;
  a.add_partition(f.admin(), f.log_cfg(FlushPolicy::interval, 1 << 20));
  a.start();
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  const uint64_t M = K + 1000;
  for (uint64_t i = K + 1; i <= M; ++i) REQUIRE(publish_one(pub, i) == i);
  wait_archived(pub, M);
  a.stop();
  auto segs = spill::list_segments(f.pdir());
  REQUIRE(segs.size() == 3);
  CHECK(segs[1].size == v1_active_size);
  CHECK(segs[2].first_seq == K + 1);
  uint32_t versions[3];
  for (int i = 0; i < 3; ++i) {
    spill::SegmentFileHeader fh;
    int fd = open(segs[size_t(i)].path.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    REQUIRE(pread(fd, &fh, sizeof fh, 0) == ssize_t(sizeof fh));
    close(fd);
    versions[i] = fh.version;
  }
  CHECK(versions[0] == 1);
  CHECK(versions[1] == 1);
  CHECK(versions[2] == 2);
  CHECK(check_log(f.pdir(), 1, M) == M);
  // Replay from a v1 sequence across the formats into the live ring.
  ReplayOptions o;
  o.state_dir = f.dir.path;
  o.start = StartAt::sequence(150);
  ReplaySubscriber sub = replay_subscriber(f.bus, f.topic, o);
  View v;
  for (uint64_t expect = 150; expect <= M + 10; ++expect) {
    if (expect == M + 1)
      for (uint64_t i = M + 1; i <= M + 10; ++i) REQUIRE(publish_one(pub, i) == i);
    REQUIRE(sub.poll_wait(v, 10'000'000'000) == Status::ok);
    REQUIRE(v.sequence() == expect);
    REQUIRE(payload_ok(v.sequence(), v.data(), v.size()));
    sub.release(v);
  }
  CHECK(sub.stats().from_log == M - 150 + 1);
  CHECK(sub.stats().from_ring == 10);
  // A garbled version 1 record in the sealed first file: never delivered, reported,
  // the rest of that file skipped, the next files read.
  {
    int fd = open(segs[0].path.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    uint64_t off = spill::kFileHeaderSize;
    for (int i = 0; i < 99; ++i) {  // to record 100
      uint32_t len = 0;
      REQUIRE(pread(fd, &len, 4, off_t(off)) == 4);
      off += len;
    }
    unsigned char b;
    const off_t at = off_t(off + spill::kRecordOverhead + 3);  // in its payload
    REQUIRE(pread(fd, &b, 1, at) == 1);
    b ^= 0x10;
    REQUIRE(pwrite(fd, &b, 1, at) == 1);
    close(fd);
  }
  spill::ChunkArena arena;
  spill::LogReader rd(f.pdir(), arena);
  rd.seek_earliest();
  spill::RecordView rv;
  uint64_t expect = 1, corrupt = 0;
  for (;;) {
    auto n = rd.next(rv);
    if (n == spill::LogReader::Next::end) break;
    if (n == spill::LogReader::Next::corrupt) {
      ++corrupt;
      REQUIRE(expect == 100);
      expect = 201;
      continue;
    }
    REQUIRE(rv.seq() == expect);
    REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
    ++expect;
  }
  CHECK(corrupt == 1);
  CHECK(expect == M + 1);  // M+1.. were published after the archiver stopped
}

// --------------------------------------------------------------------------- direct I/O attacks
// A full buffer's carried block is written (and the buffer acknowledged) only with its
// successor. With a backlog in the ring, that successor fills too: when no buffer is
// free for it to carry into (here: two buffers, the carried one and it; in general
// partitions x 2 >= buffer_count), it must be written padded, else the carried buffer
// waits for it and it waits for a buffer forever (before the fix: nothing acknowledged).
TEST_CASE("Direct I/O: a backlog bigger than all staging buffers is archived (carried chains end)",
          "[spill][sanitize]") {
  Fixture f;
  spill::ArchiverConfig ac;
  ac.buffer_bytes = 16 << 10;
  ac.buffer_count = 2;
  ac.batch_buffer_count = 0;
  Archiver a(ac);
  a.add_partition(f.admin(), f.log_cfg(FlushPolicy::interval, 1 << 20));
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  // ~600 KiB waiting in the ring before the archiver starts: it never drains it
  // before every buffer is full.
  const uint64_t N = 1000;
  for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pub, i, 1000) == i);
  a.start();
  CHECK(wait_durable(pub, N, 5'000'000'000) == Status::ok);
  a.stop();
  auto st = a.stats()[0];
  CHECK(st.direct_io);
  CHECK(st.records == N);
  CHECK(st.io_errors == 0);
  CHECK(check_log(f.pdir(), 1, N, 1000) == N);
}

// A reader tailing the active segment reads blocks while they are padded, carried and
// rewritten with O_DIRECT (and through the page cache it reads with), and new segments
// as they are created: it must see each record once, in order, intact; zeros after the
// last batch, and a new segment whose header is not written yet, mean "not yet" (the
// reader skipped such a segment as corrupt, losing all its records, in most runs).
TEST_CASE("Direct I/O: a reader tailing the active segment sees every record once while blocks are rewritten",
          "[spill][sanitize]") {
  auto policy = GENERATE(FlushPolicy::interval, FlushPolicy::batch);
  Fixture f;
  spill::ArchiverConfig ac;
  ac.buffer_bytes = 8 << 10;
  ac.buffer_count = 4;
  ac.batch_buffer_count = 0;
  ac.fault = [](spill::IoOp op, uint64_t n) { return op == spill::IoOp::write && n % 61 == 7 ? EIO : 0; };
  ac.retry_min_ns = 10'000;
  Archiver a(ac);
  a.add_partition(f.admin(), f.log_cfg(policy, 64 << 10));
  a.start();
  Publisher pub = f.bus.publisher(f.topic, patient_publisher());
  const uint64_t N = 6000;
  std::atomic<bool> failed{false};
  std::thread producer([&] {
    Rng rng(policy == FlushPolicy::batch ? 3 : 5);
    for (uint64_t i = 1; i <= N && !failed; ++i) {
      if (publish_one(pub, i, 700) != i) failed = true;
      if (rng.next() % 32 == 0 && wait_durable(pub, i, 10'000'000'000) != Status::ok) failed = true;
    }
  });
  spill::ChunkArena arena;
  spill::LogReader rd(f.pdir(), arena);
  rd.seek_earliest();
  uint64_t expect = 1, corrupt = 0, bad = 0;
  const uint64_t deadline = shm::monotonic_ns() + 20'000'000'000ull;
  spill::RecordView rv;
  while (expect <= N && !failed && shm::monotonic_ns() < deadline) {
    const auto k = rd.next(rv);
    if (k == spill::LogReader::Next::ok) {
      if (rv.seq() != expect || !payload_ok(rv.seq(), rv.payload, rv.payload_len, 700)) {
        ++bad;
        break;
      }
      arena.release(rv.seq());
      ++expect;
    } else if (k == spill::LogReader::Next::corrupt) {
      ++corrupt;
      break;
    } else {
      std::this_thread::yield();  // nothing new yet: poll again
    }
  }
  failed = failed || expect <= N;
  producer.join();
  a.stop();
  INFO("read up to " << expect - 1 << " of " << N);
  CHECK_FALSE(failed.load());
  CHECK(bad == 0);
  CHECK(corrupt == 0);
  CHECK(a.stats()[0].segments_rolled > 3);
  CHECK(a.stats()[0].io_errors > 0);
}
