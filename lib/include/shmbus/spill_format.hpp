// The spill log on disk: segment files, records, the sparse index, and the reader
// that replay (lib) and recovery (daemon/spill) share. Normative description:
// docs/spill-log.md ("On-disk format").
//
//   <state-dir>/<topic>/<partition>/<first-seq %020>.log   records, append-only
//   <state-dir>/<topic>/<partition>/<first-seq %020>.idx   sparse index (a hint; rebuilt on recovery)
//
// A segment file starts with a 64-byte SegmentFileHeader, then records:
//
//    0        4        8               16                      64
//   +--------+--------+----------------+-----------------------+-------------------+
//   |rec_len |crc32c  |ring_pos        | FrameHeader (48 B,    | payload, zero-    |
//   |u32     |u32     |u64             |  as it was in the ring)| padded to 8       |
//   +--------+--------+----------------+-----------------------+-------------------+
//   rec_len = 64 + align8(payload_len); crc32c covers bytes [0,4) and [8, rec_len).
//
// Bytes read from a log file are untrusted: every record is bounds- and
// CRC-checked before anything in it is used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "shmbus/shm/layout.hpp"

namespace shmbus::spill {

inline constexpr uint64_t kLogMagic = 0x3147'4f4c'424d'4853ULL;  // "SHMBLOG1"
inline constexpr uint32_t kLogVersion = 1;
inline constexpr uint32_t kFileHeaderSize = 64;
inline constexpr uint32_t kRecordPrefix = 16;
inline constexpr uint32_t kRecordOverhead = kRecordPrefix + shm::kFrameHeaderSize;  // 64
inline constexpr uint32_t kMaxRecord = 1u << 30;
// CursorSlot::name_hash of the archiver's (tethered) cursor: replay finds the
// archiver's position by it, and a restarted archiver adopts its old slot.
inline constexpr uint64_t kArchiverNameHash = 0x7370'696c'6c61'7263ULL;  // "crallips"

struct SegmentFileHeader {
  uint64_t magic;        // 0  kLogMagic
  uint32_t version;      // 8  kLogVersion
  uint32_t header_size;  // 12 kFileHeaderSize
  uint64_t first_seq;    // 16 sequence of the first record (also the file name)
  uint64_t ring_epoch;   // 24 DataHeader::created_ns of the ring the records came from
  uint64_t created_ns;   // 32 CLOCK_REALTIME when the file was created
  uint32_t partition;    // 40
  uint32_t flags;        // 44 reserved, 0
  uint64_t reserved;     // 48
  uint32_t reserved2;    // 56
  uint32_t crc;          // 60 crc32c of bytes [0, 60)
};
static_assert(sizeof(SegmentFileHeader) == kFileHeaderSize, "update docs/spill-log.md");

struct IndexEntry {
  uint64_t seq;     // sequence of the record at `offset`
  uint64_t ts;      // its timestamp_ns
  uint64_t offset;  // byte offset of the record in the .log file
};
static_assert(sizeof(IndexEntry) == 24, "update docs/spill-log.md");

// CRC32C (Castagnoli), hardware crc32 instruction when available, else a table.
uint32_t crc32c(uint32_t crc, const void* data, size_t n) noexcept;

constexpr uint32_t record_size(uint32_t payload_len) {
  return kRecordOverhead + uint32_t(shm::align_frame(payload_len));
}

// Writes one record (prefix + header + payload + padding) at dst, which must have
// record_size(payload_len) bytes. Returns the record length.
uint32_t encode_record(std::byte* dst, uint64_t ring_pos, const shm::FrameHeader& hdr,
                       const std::byte* payload, uint32_t payload_len) noexcept;

void fill_file_header(SegmentFileHeader& h, uint64_t first_seq, uint64_t epoch, uint32_t partition);
bool file_header_ok(const SegmentFileHeader& h) noexcept;

// A validated record inside some buffer.
struct RecordView {
  const std::byte* rec = nullptr;
  uint32_t rec_len = 0;
  uint64_t ring_pos = 0;
  const shm::FrameHeader* hdr = nullptr;  // 8-aligned when the buffer is
  const std::byte* payload = nullptr;
  uint32_t payload_len = 0;
  uint64_t ring_end() const { return ring_pos + shm::commit_length(hdr->commit); }
  uint64_t seq() const { return hdr->sequence; }
  uint64_t ts() const { return hdr->timestamp_ns; }
};

enum class Check : uint8_t { ok, need_more, end, bad };
// Validates the record at p with `avail` bytes readable. ok: *out filled.
// need_more: the prefix says the record is longer than avail (read more, or a torn
// tail). end: rec_len == 0 (unwritten space). bad: impossible length or CRC mismatch.
Check check_record(const std::byte* p, size_t avail, RecordView* out) noexcept;

std::string segment_file_name(uint64_t first_seq);
std::string index_file_name(uint64_t first_seq);
std::string partition_dir(const std::string& state_dir, const std::string& topic, uint32_t p);

struct SegmentInfo {
  uint64_t first_seq = 0;
  std::string path;  // .log
  uint64_t size = 0;
  int64_t mtime_s = 0;
};
// The partition's segment files, ascending by first sequence. Missing dir: empty.
std::vector<SegmentInfo> list_segments(const std::string& dir);

struct ScanResult {
  bool header_ok = false;
  uint64_t epoch = 0;
  uint64_t valid_bytes = 0;  // end of the last valid record (>= kFileHeaderSize if header_ok)
  uint64_t records = 0;
  uint64_t first_seq = 0, last_seq = 0, last_ts = 0, last_ring_end = 0;
  bool tail_invalid = false;  // bytes after valid_bytes that are not a valid record
  std::vector<IndexEntry> index;
};
// Reads a whole segment file, validating every record; stops at the first invalid.
ScanResult scan_segment(const std::string& path, uint64_t index_interval);

struct RecoveryResult {
  bool empty = true;  // no record in the log
  uint64_t last_seq = 0, last_ts = 0, last_ring_end = 0, epoch = 0;
  uint64_t active_first_seq = 0;  // the last segment (appendable) if !empty
  uint64_t active_size = 0;
  std::vector<IndexEntry> active_index;
  uint64_t truncated_bytes = 0;  // torn tail removed
  uint32_t removed_files = 0;    // empty or header-less trailing segments removed
  uint64_t total_bytes = 0;
};
// Writer-side recovery: validates the last segment record by record, truncates a
// torn or corrupt tail (and fsyncs), removes trailing segments without records,
// rewrites the last segment's index. Throws shmbus::Error on I/O failure.
RecoveryResult recover_partition_log(const std::string& dir, uint64_t index_interval);

// ---------------------------------------------------------------------------
// Buffers handed out as views. A chunk is reused only once every view handed
// out from it has been released (tags are the sequences delivered from it).
class ChunkArena {
 public:
  struct Chunk {
    std::byte* data = nullptr;
    size_t cap = 0;
    size_t begin = 0, end = 0;  // user-defined window
    uint64_t max_tag = 0;       // highest tag handed out from this chunk
  };
  explicit ChunkArena(size_t chunk_size = 1 << 20) : chunk_size_(chunk_size) {}
  ~ChunkArena();
  ChunkArena(const ChunkArena&) = delete;
  ChunkArena& operator=(const ChunkArena&) = delete;

  Chunk& current();
  // Switches to a chunk able to hold `need` bytes, starting with a copy of
  // [keep, keep + keep_len) at offset 0 (window = [0, keep_len)). Reuses the
  // current chunk when nothing handed out from it is outstanding.
  Chunk& fresh(size_t need, const std::byte* keep, size_t keep_len);
  void mark(uint64_t tag) {
    if (tag > current().max_tag) current().max_tag = tag;
  }
  // Everything with tag <= t is released.
  void release(uint64_t t);
  bool busy(const Chunk& c) const { return c.max_tag > released_; }
  size_t retained() const { return retained_.size(); }

 private:
  Chunk take(size_t need);
  size_t chunk_size_;
  Chunk cur_{};
  std::deque<Chunk> retained_;
  std::vector<Chunk> free_;
  uint64_t released_ = 0;
};

// Sequential reader over a partition's log, for replay. Not thread-safe.
// Reads with pread into private chunks (not mmap: recovery may truncate a file a
// reader has open, which would SIGBUS a mapping).
class LogReader {
 public:
  enum class Next : uint8_t { ok, end, corrupt };
  explicit LogReader(std::string dir, ChunkArena& arena);
  ~LogReader();
  LogReader(const LogReader&) = delete;
  LogReader& operator=(const LogReader&) = delete;

  void seek_earliest();
  void seek_sequence(uint64_t seq);  // first record with sequence >= seq
  void seek_time(uint64_t ts_ns);    // first record (in log order) with timestamp >= ts_ns
  // Next record. end: nothing more right now (call again later). corrupt: an
  // invalid record in a sealed segment was skipped (the rest of that segment).
  Next next(RecordView& out);

  uint64_t skipped_corrupt() const { return corrupt_; }
  uint64_t gaps() const { return gaps_; }         // records lost to retention while reading
  uint64_t file_epoch() const { return epoch_; }  // ring epoch of the current segment
  const std::string& dir() const { return dir_; }

 private:
  bool open_segment(const SegmentInfo& s, uint64_t offset);
  void close_segment();
  bool refill(size_t need);
  void drop_window();
  Check peek(RecordView& rv);
  bool later_segment_exists();
  bool advance_file();
  uint64_t index_offset(const SegmentInfo& s, bool by_time, uint64_t key);
  bool first_ts(const SegmentInfo& s, uint64_t& ts);

  std::string dir_;
  ChunkArena& arena_;
  int fd_ = -1;
  uint64_t cur_first_ = 0;
  bool have_file_ = false;
  uint64_t pos_ = 0;      // file offset of the next record
  uint64_t win_off_ = 0;  // file offset of arena chunk byte `begin`
  uint64_t min_seq_ = 0;
  uint64_t min_ts_ = 0;
  bool ts_filter_ = false;
  uint64_t epoch_ = 0;
  uint64_t corrupt_ = 0, gaps_ = 0;
  uint64_t last_seq_ = 0;
};

}  // namespace shmbus::spill
