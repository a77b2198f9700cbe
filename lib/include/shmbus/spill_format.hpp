// The spill log on disk: segment files, records, the sparse index, and the reader
// that replay (lib) and recovery (daemon/spill) share. Normative description:
// docs/spill-log.md ("On-disk format").
//
//   <state-dir>/<topic>/<partition>/<first-seq %020>.log   records, append-only
//   <state-dir>/<topic>/<partition>/<first-seq %020>.idx   sparse index (a hint; rebuilt on recovery)
//
// A segment file starts with a 64-byte SegmentFileHeader whose `version` says what
// follows. Version 2 (written): batches, each one header and one CRC32C for N messages
// with an 8-byte message header each (fields equal to the previous message's, or
// implied by it, are not repeated):
//
//    0        4        8        12       16       24       32       40       48      56
//   +--------+--------+--------+--------+--------+--------+--------+--------+--------+
//   |len u32 |crc u32 |count   |producer|first_  |first_  |base_ts |message_|schema_ | messages...
//   |        |        |u32     |u32     |seq     |ring_pos|        |id      |id      |
//   +--------+--------+--------+--------+--------+--------+--------+--------+--------+
//   message: u32 (payload_len bits 0..23 | flags bits 24..31), u32 ts delta,
//            one u64 per flag set (in flag-bit order), payload zero-padded to 8.
//   crc32c = crc(crc(crc(0, [12, len)), [0, 4)), [8, 12)).
//
// Version 1 (read only; segments written before the change keep replaying):
//
//    0        4        8               16                      64
//   +--------+--------+----------------+-----------------------+-------------------+
//   |rec_len |crc32c  |ring_pos        | FrameHeader (48 B,    | payload, zero-    |
//   |u32     |u32     |u64             |  as it was in the ring)| padded to 8       |
//   +--------+--------+----------------+-----------------------+-------------------+
//   rec_len = 64 + align8(payload_len); crc32c covers bytes [0,4) and [8, rec_len).
//
// Bytes read from a log file are untrusted: every record and batch is bounds- and
// CRC-checked, and every message of a batch decoded and checked, before anything in
// it is used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "shmbus/shm/layout.hpp"

namespace shmbus::shm {
struct RingRefs;
}

namespace shmbus::spill {

inline constexpr uint64_t kLogMagic = 0x3147'4f4c'424d'4853ULL;  // "SHMBLOG1"
inline constexpr uint32_t kLogVersion = 2;                       // what the archiver writes
inline constexpr uint32_t kLogVersionV1 = 1;                     // still read (one record per frame)
inline constexpr uint32_t kFileHeaderSize = 64;
// Version 1 records.
inline constexpr uint32_t kRecordPrefix = 16;
inline constexpr uint32_t kRecordOverhead = kRecordPrefix + shm::kFrameHeaderSize;  // 64
inline constexpr uint32_t kMaxRecord = 1u << 30;  // also the largest version 2 batch
// Version 2 batches.
inline constexpr uint32_t kBatchHeaderSize = 56;
inline constexpr uint32_t kMsgHeaderSize = 8;
inline constexpr uint32_t kMaxShortPayload = (1u << 24) - 1;  // else kMsgLongLen
// Message flags (bits 24..31 of the message's first word): each set flag adds one
// u64 after the 8-byte message header, in this order.
inline constexpr uint32_t kMsgSeq = 1u << 0;        // sequence (else previous + 1)
inline constexpr uint32_t kMsgRingPos = 1u << 1;    // ring position (else the previous frame's end)
inline constexpr uint32_t kMsgFrameLen = 1u << 2;   // frame length (else align8(48 + payload_len))
inline constexpr uint32_t kMsgProducer = 1u << 3;   // producer_id (else the previous one)
inline constexpr uint32_t kMsgMessageId = 1u << 4;  // message_id (else the previous one)
inline constexpr uint32_t kMsgSchemaId = 1u << 5;   // schema_id (else the previous one)
inline constexpr uint32_t kMsgTs = 1u << 6;         // timestamp_ns (ts delta must be 0)
inline constexpr uint32_t kMsgLongLen = 1u << 7;    // payload_len (bits 0..23 must be 0)
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

// Version 2: the header of a batch. "Previous" values for its first message are
// the header's: so the first message never carries kMsgSeq or kMsgRingPos.
struct BatchHeader {
  uint32_t batch_len;       // 0  bytes of the batch, header included; multiple of 8; 0 = unwritten
  uint32_t crc;             // 4  see the file comment
  uint32_t count;           // 8  messages in the batch (>= 1)
  uint32_t producer_id;     // 12 the first message's
  uint64_t first_seq;       // 16 the first message's sequence
  uint64_t first_ring_pos;  // 24 the first message's ring position
  uint64_t base_ts;         // 32 the first message's timestamp_ns
  uint64_t message_id;      // 40 the first message's
  uint64_t schema_id;       // 48 the first message's
};
static_assert(sizeof(BatchHeader) == kBatchHeaderSize, "update docs/spill-log.md");
static_assert(offsetof(BatchHeader, batch_len) == 0);
static_assert(offsetof(BatchHeader, crc) == 4);
static_assert(offsetof(BatchHeader, count) == 8);
static_assert(offsetof(BatchHeader, producer_id) == 12);
static_assert(offsetof(BatchHeader, first_seq) == 16);
static_assert(offsetof(BatchHeader, first_ring_pos) == 24);
static_assert(offsetof(BatchHeader, base_ts) == 32);
static_assert(offsetof(BatchHeader, message_id) == 40);
static_assert(offsetof(BatchHeader, schema_id) == 48);
static_assert(kBatchHeaderSize % 8 == 0 && kMsgHeaderSize % 8 == 0, "payloads stay 8-aligned");

struct IndexEntry {
  uint64_t seq;     // sequence of the record (version 2: first message of the batch) at `offset`
  uint64_t ts;      // its timestamp_ns
  uint64_t offset;  // byte offset of the record in the .log file
};
static_assert(sizeof(IndexEntry) == 24, "update docs/spill-log.md");

// CRC32C (Castagnoli), hardware crc32 instruction when available, else a table.
uint32_t crc32c(uint32_t crc, const void* data, size_t n) noexcept;

// Version 1 record size (reading only; the v1 writer is gone).
constexpr uint32_t record_size_v1(uint32_t payload_len) {
  return kRecordOverhead + uint32_t(shm::align_frame(payload_len));
}

// ---------------------------------------------------------------------------
// Version 2 writer: one batch built in place in a buffer.
//   BatchWriter w; size = w.first_size(pos, hdr) + ...; w.begin(dst, pos, hdr, payload, len);
//   while (...) { size = w.next_size(pos, hdr); w.append(pos, hdr, payload, len); }
//   w.finish();   // writes length, count and CRC; the batch is w.size() bytes at dst
// The CRC is computed as the bytes are written (still in cache). Does not allocate.
class BatchWriter {
 public:
  // Bytes the message takes as the first of a new batch (batch header included).
  static uint32_t first_size(const shm::FrameHeader& h) noexcept;
  // Bytes the message takes appended to this batch.
  uint32_t next_size(uint64_t ring_pos, const shm::FrameHeader& h) const noexcept;
  // Starts a batch at dst with its first message; returns the bytes written.
  uint32_t begin(std::byte* dst, uint64_t ring_pos, const shm::FrameHeader& h, const std::byte* payload,
                 uint32_t payload_len) noexcept;
  uint32_t append(uint64_t ring_pos, const shm::FrameHeader& h, const std::byte* payload,
                  uint32_t payload_len) noexcept;
  void finish() noexcept;
  uint32_t size() const noexcept { return len_; }
  uint32_t count() const noexcept { return count_; }
  bool open() const noexcept { return base_ != nullptr && !finished_; }

 private:
  uint32_t flags_for(uint64_t ring_pos, const shm::FrameHeader& h) const noexcept;
  uint32_t put(uint32_t flags, uint64_t ring_pos, const shm::FrameHeader& h, const std::byte* payload,
               uint32_t payload_len) noexcept;
  std::byte* base_ = nullptr;
  uint32_t len_ = 0, count_ = 0, crc_ = 0;
  bool finished_ = false;
  uint64_t seq_ = 0, ring_end_ = 0, ts_ = 0, message_id_ = 0, schema_id_ = 0;
  uint32_t producer_ = 0;
};

// Version 2 reader of one batch whose bytes are private (copied from the file).
// check_batch() walks it once; a batch that passed yields exactly `count` messages.
class BatchDecoder {
 public:
  void start(const std::byte* batch, uint32_t len) noexcept;
  // The next message: its frame header (rebuilt), ring position, payload. false at
  // the end of the batch or on a malformed message (then bad() is true).
  bool next(shm::FrameHeader& h, uint64_t& ring_pos, const std::byte*& payload) noexcept;
  bool bad() const noexcept { return bad_; }
  bool done() const noexcept { return off_ == len_ && !bad_; }
  uint32_t seen() const noexcept { return seen_; }
  uint32_t count() const noexcept { return hdr_.count; }
  const BatchHeader& header() const noexcept { return hdr_; }

 private:
  const std::byte* p_ = nullptr;
  uint32_t len_ = 0, off_ = 0, seen_ = 0;
  bool bad_ = false;
  BatchHeader hdr_{};
  uint64_t seq_ = 0, ring_end_ = 0, ts_ = 0, message_id_ = 0, schema_id_ = 0;
  uint32_t producer_ = 0;
};

void fill_file_header(SegmentFileHeader& h, uint64_t first_seq, uint64_t epoch, uint32_t partition,
                      uint32_t version = kLogVersion);
// Magic, size, CRC and a version this code reads (1 or 2).
bool file_header_ok(const SegmentFileHeader& h) noexcept;

// A validated record inside some buffer.
// A validated message. Version 1: hdr points into the record; version 2: at a
// header rebuilt by the LogReader (valid, like the payload, until released).
struct RecordView {
  const std::byte* rec = nullptr;  // version 1: the record
  uint32_t rec_len = 0;            // version 1: its length
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

// Version 2: validates the batch at p (length, CRC, then every message decoded:
// bounds, flags, sequences growing, count). Same results as check_record.
struct BatchInfo {
  uint32_t len = 0, count = 0;
  uint64_t first_seq = 0, first_ts = 0, last_seq = 0, last_ts = 0, last_ring_end = 0;
};
Check check_batch(const std::byte* p, size_t avail, BatchInfo* out) noexcept;

std::string segment_file_name(uint64_t first_seq);
std::string index_file_name(uint64_t first_seq);
std::string partition_dir(const std::string& state_dir, const std::string& topic, uint32_t p);
// The archiver's read position in a partition's ring (its cursor is the daemon's own,
// embedded in its slot): every data frame below it reached the log before it was
// released. No archiver slot: *present false, and the tail.
uint64_t archiver_position(const shm::RingRefs& r, bool* present = nullptr);

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
  uint32_t version = 0;
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
  uint64_t active_first_seq = 0;  // the last segment (appendable if active_version == kLogVersion)
  uint32_t active_version = 0;
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
  // A second arena released together with this one (LogReader: rebuilt headers).
  ChunkArena& side();
  bool busy(const Chunk& c) const { return c.max_tag > released_; }
  size_t retained() const { return retained_.size(); }

 private:
  Chunk take(size_t need);
  size_t chunk_size_;
  Chunk cur_{};
  std::deque<Chunk> retained_;
  std::vector<Chunk> free_;
  uint64_t released_ = 0;
  std::unique_ptr<ChunkArena> side_;
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
  // seek_*: opens segs[i] at offset, or leaves the reader before it (see the .cpp).
  void seek_open(const std::vector<SegmentInfo>& segs, size_t i, uint64_t offset);
  void close_segment();
  bool refill(size_t need);
  void drop_window();
  Check peek(RecordView& rv, BatchInfo& bi);
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
  uint32_t version_ = 0;  // of the open segment
  bool in_batch_ = false;
  BatchDecoder dec_;
};

}  // namespace shmbus::spill
