// shmbus::spill::Archiver — appends the frames of durable partitions to the spill
// log with io_uring. The daemon owns one; tests drive it directly.
//
//   spill::Archiver a({.queue_depth = 64});
//   a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000),
//                   {.state_dir = "/var/lib/shmbus", .flush = FlushPolicy::batch});
//   a.start();   ...   a.stop();
//
// Per partition it holds a TETHERED cursor slot (name_hash kArchiverNameHash):
// under policy `spill` it is the only cursor that bounds the producer. Frames are
// copied (with their CRC) into registered buffers and written with batched,
// linked io_uring submissions; the cursor is released only when the write has
// completed (the bytes are in the page cache, which outlives this process), and
// DataHeader::durable_seq advances per the flush policy (docs/spill-log.md).
//
// Threading: one archiver thread runs every partition (io_uring itself is the
// queue between the ring readers and the writer — the kernel does the writes).
// add_partition() may be called before start() or while running (it is handed to
// the thread); stats() is a racy snapshot. Errors (disk full, EIO) never stop the
// thread: the partition reports the errno in DataHeader::archiver_error, stops
// releasing the ring (producers see back-pressure per policy) and retries with
// back-off; it resumes on its own when the write succeeds.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/segment.hpp"
#include "shmbus/spill_format.hpp"

namespace shmbus::spill {

enum class FlushPolicy : uint8_t {
  none,      // acknowledged when written to the page cache (survives a process crash)
  interval,  // fdatasync every flush_interval_ms; acknowledged when synced
  batch,     // fdatasync linked after each batch write; acknowledged when synced
};
const char* to_string(FlushPolicy p) noexcept;

struct LogConfig {
  std::string state_dir;  // log lives in <state_dir>/<topic>/<partition>/
  FlushPolicy flush = FlushPolicy::interval;
  uint32_t flush_interval_ms = 10;
  uint64_t segment_bytes = 64ull << 20;  // roll over to a new file at this size
  uint64_t retention_bytes = 0;          // 0: unlimited. Whole sealed segments are deleted.
  int64_t retention_age_s = 0;           // 0: unlimited. By the segment's last write.
  uint64_t index_interval = 64 << 10;    // one sparse index entry per this many log bytes
};

enum class IoOp : uint8_t { write, fsync };

struct ArchiverConfig {
  uint32_t queue_depth = 64;  // io_uring SQ entries: bounds the I/O in flight
  // 16 x 1 MiB: with direct I/O the device gets 1 MiB writes (x1.2-1.4 over 256 KiB
  // ones at 1 KiB `interval`, docs/spill-log.md "Direct I/O, measured"); through the
  // page cache 32 x 256 KiB had measured better (a batch stays in L2 while the kernel
  // copies it again), but `none` alone uses that path now.
  uint32_t buffer_count = 16;         // registered staging buffers, shared by all partitions
  uint32_t buffer_bytes = 1 << 20;    // per staging buffer (a larger record gets its own)
  uint32_t max_batch_records = 8192;  // records per partition per loop turn (fairness)
  uint32_t max_inflight_writes = 8;   // per partition, flush none/interval (batch: 1)
  // Batch flush syncs once per staging buffer: its partitions take bigger
  // registered buffers from a second pool while there are any (then the small ones).
  uint32_t batch_buffer_count = 4;
  uint32_t batch_buffer_bytes = 1 << 20;
  // none/interval: ask for writeback of every this many bytes written
  // (sync_file_range WRITE, asynchronous; 0 = leave it to the kernel's flusher).
  uint64_t writeback_kick_bytes = 2 << 20;
  int64_t idle_wait_ns = 10'000'000;   // longest sleep when there is nothing to do
  int64_t retry_min_ns = 1'000'000;    // back-off after a failed write: 1 ms doubling ...
  int64_t retry_max_ns = 100'000'000;  // ... to 100 ms
  // `interval` and `batch` partitions write their segments with O_DIRECT from the
  // registered buffers (no page-cache copy; docs/spill-log.md, "Direct I/O") when
  // the file system takes it, else through the page cache. `none` always uses the
  // page cache (its acknowledgement is "written to the page cache").
  bool direct_io = true;
  // Test hook: called for every data write submitted to a segment file (retries
  // included) with the file's first sequence, the write's file offset and bytes, and
  // the log's logical end after it (bytes past it are padding). Archiver thread.
  std::function<void(const std::string& dir, uint64_t seg_first, uint64_t off, const std::byte* data,
                     uint32_t len, uint64_t logical_end)>
      on_write;
  // Test hook (fault injection): called for every completed operation with its kind
  // and its 0-based number among operations of that kind; a non-zero errno makes the
  // archiver treat the operation as failed with it.
  std::function<int(IoOp, uint64_t)> fault;
};

struct PartitionStats {
  std::string topic;
  uint32_t partition = 0;
  uint64_t records = 0;
  uint64_t bytes = 0;  // log bytes written
  uint64_t writes = 0, fsyncs = 0;
  uint64_t segments_rolled = 0, segments_deleted = 0;
  uint64_t io_errors = 0, retries = 0;
  uint64_t archived_seq = 0, durable_seq = 0;
  uint64_t gaps = 0;       // frames the log missed (resumed past them)
  int last_error = 0;      // errno, 0 = healthy now
  bool direct_io = false;  // the active segment is written with O_DIRECT
};

class Archiver {
 public:
  explicit Archiver(ArchiverConfig cfg = {});
  ~Archiver();
  Archiver(const Archiver&) = delete;
  Archiver& operator=(const Archiver&) = delete;

  // Recovers the partition's log (truncating a torn tail), joins its tethered
  // cursor (adopting the slot of a dead archiver, resuming right after the last
  // logged frame) and starts archiving it. The mapping must be read-write (the
  // daemon's, or Role::admin). Throws shmbus::Error (system, incompatible,
  // already_exists when a live archiver holds the partition).
  void add_partition(std::shared_ptr<PartitionMapping> m, const LogConfig& cfg);

  // Stops archiving the partition: waits for its I/O in flight (bounded, 30 s, else
  // Error(timed_out)), drops what was staged but not written, closes its files and
  // frees its cursor slot. The log files stay; the caller removes them if it wants.
  // For the daemon's topic deletion. No-op for a partition not archived here.
  void remove_partition(const std::string& topic, uint32_t partition);

  // Starts (or, after stop(), resumes) the archiver thread. After stop(true) the
  // partitions have no cursor any more: throws Error(invalid_argument) (archive them
  // with a new Archiver, which recovers the log and joins the ring afresh).
  void start();
  // Finishes the I/O in flight, syncs (interval/batch), stops the thread. The
  // cursor slots stay taken unless leave_cursors: a restarted archiver adopts them,
  // so no frame escapes the log meanwhile. What could not be written (a write that
  // kept failing) stays staged: start() retries it before anything after it.
  void stop(bool leave_cursors = false);
  bool running() const { return running_.load(std::memory_order_acquire); }

  std::vector<PartitionStats> stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  std::atomic<bool> running_{false};
};

// The next sequence a recreated ring of this partition must start at so that the
// log's sequences keep growing (0 when the log is empty). For the daemon, when it
// creates the segments of an existing durable topic.
uint64_t next_sequence_after_log(const std::string& state_dir, const std::string& topic, uint32_t partition);

}  // namespace shmbus::spill
