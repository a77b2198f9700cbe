// The spill log on disk: CRC32C, records, segment files, recovery and the reader.
#include "shmbus/spill_format.hpp"
#include "shmbus/shm/ring.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "shmbus/error.hpp"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace shmbus::spill {

// --------------------------------------------------------------------------- CRC32C
namespace {

struct CrcTable {
  uint32_t t[8][256];
  CrcTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};
const CrcTable& table() {
  static const CrcTable tb;
  return tb;
}

uint32_t crc32c_sw(uint32_t crc, const unsigned char* p, size_t n) {
  const auto& t = table().t;
  crc = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= crc;
    crc = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^ t[4][(v >> 24) & 0xff] ^
          t[3][(v >> 32) & 0xff] ^ t[2][(v >> 40) & 0xff] ^ t[1][(v >> 48) & 0xff] ^ t[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_hw(uint32_t crc, const unsigned char* p, size_t n) {
  uint64_t c = ~crc;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c = _mm_crc32_u8(uint32_t(c), *p++);
    --n;
  }
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  while (n--) c = _mm_crc32_u8(uint32_t(c), *p++);
  return ~uint32_t(c);
}
const bool kHaveSse42 = __builtin_cpu_supports("sse4.2");
#endif

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) noexcept {
  auto* p = static_cast<const unsigned char*>(data);
#if defined(__x86_64__)
  if (kHaveSse42) return crc32c_hw(crc, p, n);
#endif
  return crc32c_sw(crc, p, n);
}

// --------------------------------------------------------------------------- records
namespace {
uint32_t record_crc(const std::byte* rec, uint32_t rec_len) {
  uint32_t c = crc32c(0, rec, 4);
  return crc32c(c, rec + 8, rec_len - 8);
}
}  // namespace

Check check_record(const std::byte* p, size_t avail, RecordView* out) noexcept {
  if (avail < 4) return Check::need_more;
  uint32_t len;
  std::memcpy(&len, p, 4);
  if (len == 0) return Check::end;
  if (len < kRecordOverhead || (len & 7) || len > kMaxRecord) return Check::bad;
  if (avail < len) return Check::need_more;
  uint32_t c;
  std::memcpy(&c, p + 4, 4);
  if (c != record_crc(p, len)) return Check::bad;
  const auto* h = reinterpret_cast<const shm::FrameHeader*>(p + kRecordPrefix);
  // The CRC says these are the bytes the archiver wrote; the archiver only writes
  // frames it validated, but check what we rely on anyway.
  if (h->payload_len > len - kRecordOverhead) return Check::bad;
  if (shm::commit_type(h->commit) != shm::kFrameData) return Check::bad;
  if (shm::commit_length(h->commit) < shm::kFrameHeaderSize + h->payload_len) return Check::bad;
  if (out) {
    out->rec = p;
    out->rec_len = len;
    std::memcpy(&out->ring_pos, p + 8, 8);
    out->hdr = h;
    out->payload = p + kRecordOverhead;
    out->payload_len = h->payload_len;
  }
  return Check::ok;
}

// --------------------------------------------------------------------------- batches (v2)
namespace {
// Set bits of the 8 flag bits (no popcnt instruction in the baseline x86-64 target:
// __builtin_popcount would be a libgcc call per message).
inline uint32_t ext_words(uint32_t flags) {
  uint32_t n = 0;
  for (flags &= 0xff; flags; flags &= flags - 1) ++n;
  return n;
}
inline uint64_t implied_frame_len(uint32_t plen) {
  return shm::align_frame(uint64_t(shm::kFrameHeaderSize) + plen);
}
inline uint32_t batch_crc(const std::byte* p, uint32_t len) {
  uint32_t c = crc32c(0, p + 12, len - 12);
  c = crc32c(c, p, 4);
  return crc32c(c, p + 8, 4);
}
}  // namespace

uint32_t BatchWriter::first_size(const shm::FrameHeader& h) noexcept {
  uint32_t f = 0;
  if (shm::commit_length(h.commit) != implied_frame_len(h.payload_len)) f |= kMsgFrameLen;
  if (h.payload_len > kMaxShortPayload) f |= kMsgLongLen;
  return kBatchHeaderSize + kMsgHeaderSize + 8 * ext_words(f) + uint32_t(shm::align_frame(h.payload_len));
}

uint32_t BatchWriter::flags_for(uint64_t ring_pos, const shm::FrameHeader& h) const noexcept {
  uint32_t f = 0;
  if (h.sequence != seq_ + 1) f |= kMsgSeq;
  if (ring_pos != ring_end_) f |= kMsgRingPos;
  if (shm::commit_length(h.commit) != implied_frame_len(h.payload_len)) f |= kMsgFrameLen;
  if (h.producer_id != producer_) f |= kMsgProducer;
  if (h.message_id != message_id_) f |= kMsgMessageId;
  if (h.schema_id != schema_id_) f |= kMsgSchemaId;
  if (h.timestamp_ns < ts_ || h.timestamp_ns - ts_ > 0xffff'ffffull) f |= kMsgTs;
  if (h.payload_len > kMaxShortPayload) f |= kMsgLongLen;
  return f;
}

uint32_t BatchWriter::next_size(uint64_t ring_pos, const shm::FrameHeader& h) const noexcept {
  return kMsgHeaderSize + 8 * ext_words(flags_for(ring_pos, h)) + uint32_t(shm::align_frame(h.payload_len));
}

uint32_t BatchWriter::put(uint32_t flags, uint64_t ring_pos, const shm::FrameHeader& h,
                          const std::byte* payload, uint32_t plen) noexcept {
  std::byte* d = base_ + len_;
  const uint32_t w0 = ((flags & kMsgLongLen) ? 0u : plen) | (flags << 24);
  const uint32_t delta = (flags & kMsgTs) ? 0u : uint32_t(h.timestamp_ns - ts_);
  std::memcpy(d, &w0, 4);
  std::memcpy(d + 4, &delta, 4);
  uint32_t o = kMsgHeaderSize;
  auto ext = [&](uint64_t v) {
    std::memcpy(d + o, &v, 8);
    o += 8;
  };
  if (flags & kMsgSeq) ext(h.sequence);
  if (flags & kMsgRingPos) ext(ring_pos);
  if (flags & kMsgFrameLen) ext(shm::commit_length(h.commit));
  if (flags & kMsgProducer) ext(h.producer_id);
  if (flags & kMsgMessageId) ext(h.message_id);
  if (flags & kMsgSchemaId) ext(h.schema_id);
  if (flags & kMsgTs) ext(h.timestamp_ns);
  if (flags & kMsgLongLen) ext(plen);
  if (plen) std::memcpy(d + o, payload, plen);  // an empty payload may come without a buffer
  const uint32_t padded = uint32_t(shm::align_frame(plen));
  std::memset(d + o + plen, 0, padded - plen);
  o += padded;
  crc_ = crc32c(crc_, d, o);
  len_ += o;
  ++count_;
  seq_ = h.sequence;
  ring_end_ = ring_pos + shm::commit_length(h.commit);
  ts_ = h.timestamp_ns;
  producer_ = h.producer_id;
  message_id_ = h.message_id;
  schema_id_ = h.schema_id;
  return o;
}

uint32_t BatchWriter::begin(std::byte* dst, uint64_t ring_pos, const shm::FrameHeader& h,
                            const std::byte* payload, uint32_t plen) noexcept {
  BatchHeader bh{};
  bh.producer_id = h.producer_id;
  bh.first_seq = h.sequence;
  bh.first_ring_pos = ring_pos;
  bh.base_ts = h.timestamp_ns;
  bh.message_id = h.message_id;
  bh.schema_id = h.schema_id;
  std::memcpy(dst, &bh, sizeof bh);
  base_ = dst;
  len_ = kBatchHeaderSize;
  count_ = 0;
  finished_ = false;
  crc_ = crc32c(0, dst + 12, kBatchHeaderSize - 12);
  seq_ = h.sequence - 1;
  ring_end_ = ring_pos;
  ts_ = h.timestamp_ns;
  producer_ = h.producer_id;
  message_id_ = h.message_id;
  schema_id_ = h.schema_id;
  uint32_t f = 0;
  if (shm::commit_length(h.commit) != implied_frame_len(plen)) f |= kMsgFrameLen;
  if (plen > kMaxShortPayload) f |= kMsgLongLen;
  return kBatchHeaderSize + put(f, ring_pos, h, payload, plen);
}

uint32_t BatchWriter::append(uint64_t ring_pos, const shm::FrameHeader& h, const std::byte* payload,
                             uint32_t plen) noexcept {
  return put(flags_for(ring_pos, h), ring_pos, h, payload, plen);
}

void BatchWriter::finish() noexcept {
  std::memcpy(base_, &len_, 4);
  std::memcpy(base_ + 8, &count_, 4);
  uint32_t c = crc32c(crc_, base_, 4);
  c = crc32c(c, base_ + 8, 4);
  std::memcpy(base_ + 4, &c, 4);
  finished_ = true;
}

void BatchDecoder::start(const std::byte* batch, uint32_t len) noexcept {
  p_ = batch;
  len_ = len;
  bad_ = len < kBatchHeaderSize;
  off_ = bad_ ? len : kBatchHeaderSize;
  seen_ = 0;
  if (bad_) return;
  std::memcpy(&hdr_, batch, sizeof hdr_);
  seq_ = hdr_.first_seq - 1;
  ring_end_ = hdr_.first_ring_pos;
  ts_ = hdr_.base_ts;
  producer_ = hdr_.producer_id;
  message_id_ = hdr_.message_id;
  schema_id_ = hdr_.schema_id;
}

bool BatchDecoder::next(shm::FrameHeader& h, uint64_t& ring_pos, const std::byte*& payload) noexcept {
  if (bad_ || off_ >= len_) return false;
  auto fail = [&] {
    bad_ = true;
    return false;
  };
  const uint32_t room = len_ - off_;
  if (room < kMsgHeaderSize) return fail();
  const std::byte* d = p_ + off_;
  uint32_t w0, delta;
  std::memcpy(&w0, d, 4);
  std::memcpy(&delta, d + 4, 4);
  const uint32_t flags = w0 >> 24;
  const uint32_t nx = ext_words(flags);
  if (room - kMsgHeaderSize < 8 * nx) return fail();
  uint64_t ext[8];
  std::memcpy(ext, d + kMsgHeaderSize, 8 * nx);
  uint32_t k = 0;
  auto take = [&](uint32_t f, uint64_t dflt) { return (flags & f) ? ext[k++] : dflt; };
  const bool first = seen_ == 0;
  if (first && (flags & (kMsgSeq | kMsgRingPos))) return fail();  // the header holds them
  const uint64_t seq = take(kMsgSeq, seq_ + 1);
  if (!first && seq <= seq_) return fail();  // sequences only grow
  const uint64_t pos = take(kMsgRingPos, ring_end_);
  const bool has_len = flags & kMsgFrameLen;
  const uint64_t flen_x = take(kMsgFrameLen, 0);
  const uint64_t prod = take(kMsgProducer, producer_);
  if (prod > 0xffff'ffffull) return fail();
  const uint64_t mid = take(kMsgMessageId, message_id_);
  const uint64_t sid = take(kMsgSchemaId, schema_id_);
  if ((flags & kMsgTs) && delta != 0) return fail();
  const uint64_t ts = take(kMsgTs, ts_ + delta);
  uint64_t plen = w0 & kMaxShortPayload;
  if (flags & kMsgLongLen) {
    if (plen != 0) return fail();
    plen = ext[k++];
    if (plen > kMaxRecord) return fail();
  }
  const uint64_t flen = has_len ? flen_x : implied_frame_len(uint32_t(plen));
  if (flen > 0xffff'ffffull || (flen & 7) || flen < shm::kFrameHeaderSize + plen) return fail();
  if (pos + flen < pos) return fail();
  const uint64_t padded = shm::align_frame(plen);
  const uint32_t body = kMsgHeaderSize + 8 * nx;
  if (uint64_t(room) - body < padded) return fail();
  h.commit = shm::make_commit(uint32_t(flen), shm::kFrameData);
  h.payload_len = uint32_t(plen);
  h.producer_id = uint32_t(prod);
  h.sequence = seq;
  h.timestamp_ns = ts;
  h.message_id = mid;
  h.schema_id = sid;
  ring_pos = pos;
  payload = d + body;
  seq_ = seq;
  ring_end_ = pos + flen;
  ts_ = ts;
  producer_ = uint32_t(prod);
  message_id_ = mid;
  schema_id_ = sid;
  off_ += body + uint32_t(padded);
  ++seen_;
  if (seen_ > hdr_.count) return fail();
  return true;
}

Check check_batch(const std::byte* p, size_t avail, BatchInfo* out) noexcept {
  if (avail < 4) return Check::need_more;
  uint32_t len;
  std::memcpy(&len, p, 4);
  if (len == 0) return Check::end;
  if (len < kBatchHeaderSize + kMsgHeaderSize || (len & 7) || len > kMaxRecord) return Check::bad;
  if (avail < len) return Check::need_more;
  uint32_t c;
  std::memcpy(&c, p + 4, 4);
  if (c != batch_crc(p, len)) return Check::bad;
  BatchDecoder d;
  d.start(p, len);
  if (d.count() == 0) return Check::bad;
  shm::FrameHeader h;
  uint64_t pos = 0;
  const std::byte* pl = nullptr;
  BatchInfo bi;
  bi.len = len;
  bi.count = d.count();
  while (d.next(h, pos, pl)) {
    if (d.seen() == 1) {
      bi.first_seq = h.sequence;
      bi.first_ts = h.timestamp_ns;
    }
    bi.last_seq = h.sequence;
    bi.last_ts = h.timestamp_ns;
    bi.last_ring_end = pos + shm::commit_length(h.commit);
  }
  if (!d.done() || d.seen() != d.count()) return Check::bad;
  if (out) *out = bi;
  return Check::ok;
}

void fill_file_header(SegmentFileHeader& h, uint64_t first_seq, uint64_t epoch, uint32_t partition,
                      uint32_t version) {
  std::memset(&h, 0, sizeof h);
  h.magic = kLogMagic;
  h.version = version;
  h.header_size = kFileHeaderSize;
  h.first_seq = first_seq;
  h.ring_epoch = epoch;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  h.created_ns = uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
  h.partition = partition;
  h.crc = crc32c(0, &h, offsetof(SegmentFileHeader, crc));
}

bool file_header_ok(const SegmentFileHeader& h) noexcept {
  return h.magic == kLogMagic && (h.version == kLogVersion || h.version == kLogVersionV1) &&
         h.header_size == kFileHeaderSize && h.crc == crc32c(0, &h, offsetof(SegmentFileHeader, crc));
}

// --------------------------------------------------------------------------- files
std::string segment_file_name(uint64_t first_seq) {
  char b[32];
  std::snprintf(b, sizeof b, "%020llu.log", static_cast<unsigned long long>(first_seq));
  return b;
}
std::string index_file_name(uint64_t first_seq) {
  char b[32];
  std::snprintf(b, sizeof b, "%020llu.idx", static_cast<unsigned long long>(first_seq));
  return b;
}
std::string partition_dir(const std::string& state_dir, const std::string& topic, uint32_t p) {
  return state_dir + "/" + topic + "/" + std::to_string(p);
}

uint64_t archiver_position(const shm::RingRefs& r, bool* present) {
  using shm::aref;
  if (present) *present = true;
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    shm::CursorSlot& s = r.slots[i];
    if (aref(s.state).load(std::memory_order_seq_cst) != shm::kSlotActive) continue;
    if (aref(s.name_hash).load(std::memory_order_relaxed) != kArchiverNameHash) continue;
    if (!(aref(s.flags).load(std::memory_order_relaxed) & shm::kSlotEmbedded)) continue;
    // SYNC(cursor) acquire: pairs with the archiver's release of what it wrote.
    return aref(s.page.position).load(std::memory_order_acquire);
  }
  if (present) *present = false;
  return aref(r.data->tail_pos).load(std::memory_order_acquire);  // no archiver: live only
}

std::vector<SegmentInfo> list_segments(const std::string& dir) {
  std::vector<SegmentInfo> v;
  DIR* d = opendir(dir.c_str());
  if (!d) return v;
  while (dirent* e = readdir(d)) {
    const char* n = e->d_name;
    size_t l = std::strlen(n);
    if (l != 24 || std::strcmp(n + 20, ".log") != 0) continue;
    bool digits = true;
    for (int i = 0; i < 20; ++i) digits &= (n[i] >= '0' && n[i] <= '9');
    if (!digits) continue;
    SegmentInfo s;
    s.first_seq = std::strtoull(std::string(n, 20).c_str(), nullptr, 10);
    s.path = dir + "/" + n;
    struct stat st;
    if (stat(s.path.c_str(), &st) != 0) continue;  // removed meanwhile (retention)
    s.size = uint64_t(st.st_size);
    s.mtime_s = int64_t(st.st_mtime);
    v.push_back(std::move(s));
  }
  closedir(d);
  std::sort(v.begin(), v.end(),
            [](const SegmentInfo& a, const SegmentInfo& b) { return a.first_seq < b.first_seq; });
  return v;
}

namespace {
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

ssize_t pread_full(int fd, void* buf, size_t n, uint64_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, static_cast<char*>(buf) + got, n - got, off_t(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += size_t(r);
  }
  return ssize_t(got);
}

[[noreturn]] void sys_fail(const std::string& what, int err = errno) {
  throw Error(ErrorCode::system, what + ": " + std::strerror(err), err);
}
}  // namespace

ScanResult scan_segment(const std::string& path, uint64_t index_interval) {
  ScanResult r;
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) sys_fail("open " + path);
  struct stat st;
  if (fstat(f.fd, &st) != 0) sys_fail("stat " + path);
  const uint64_t size = uint64_t(st.st_size);
  SegmentFileHeader h;
  if (pread_full(f.fd, &h, sizeof h, 0) != ssize_t(sizeof h) || !file_header_ok(h)) {
    r.tail_invalid = size > 0;
    return r;
  }
  r.header_ok = true;
  r.version = h.version;
  r.epoch = h.ring_epoch;
  r.valid_bytes = kFileHeaderSize;
  const bool v2 = h.version == kLogVersion;
  const uint32_t min_unit = v2 ? kBatchHeaderSize + kMsgHeaderSize : kRecordOverhead;
  const size_t kBuf = 4 << 20;
  std::unique_ptr<std::byte[]> buf(new std::byte[kBuf + 8]);
  std::vector<std::byte> big;  // for records or batches larger than the buffer
  uint64_t off = kFileHeaderSize;
  uint64_t next_index = kFileHeaderSize;
  size_t have = 0;  // bytes in buf starting at file offset `base`
  uint64_t base = off;
  for (;;) {
    if (off >= size) break;
    size_t at = size_t(off - base);
    if (at + kRecordPrefix > have || at + 4 > have) {
      base = off;
      at = 0;
      ssize_t n = pread_full(f.fd, buf.get(), kBuf, base);
      if (n < 0) sys_fail("read " + path);
      have = size_t(n);
    }
    const std::byte* p = buf.get() + at;
    size_t avail = have - at;
    uint32_t len = 0;
    if (avail >= 4) std::memcpy(&len, p, 4);
    if (len > avail && len <= kMaxRecord && !(len & 7) && len >= min_unit && off + len <= size) {
      if (len <= kBuf) {
        base = off;
        at = 0;
        ssize_t n = pread_full(f.fd, buf.get(), kBuf, base);
        if (n < 0) sys_fail("read " + path);
        have = size_t(n);
        p = buf.get();
        avail = have;
      } else {
        big.resize(len);
        if (pread_full(f.fd, big.data(), len, off) != ssize_t(len)) sys_fail("read " + path);
        p = big.data();
        avail = len;
      }
    }
    BatchInfo bi;
    if (v2) {
      if (check_batch(p, avail, &bi) != Check::ok) {
        r.tail_invalid = true;  // end marker, torn or corrupt: everything from here goes
        break;
      }
    } else {
      RecordView rv;
      if (check_record(p, avail, &rv) != Check::ok) {
        r.tail_invalid = true;
        break;
      }
      bi.len = rv.rec_len;
      bi.count = 1;
      bi.first_seq = bi.last_seq = rv.seq();
      bi.first_ts = bi.last_ts = rv.ts();
      bi.last_ring_end = rv.ring_end();
    }
    if (r.records && bi.first_seq <= r.last_seq) {  // sequences only grow
      r.tail_invalid = true;
      break;
    }
    if (!r.records) r.first_seq = bi.first_seq;
    r.records += bi.count;
    r.last_seq = bi.last_seq;
    r.last_ts = bi.last_ts;
    r.last_ring_end = bi.last_ring_end;
    if (off >= next_index) {
      r.index.push_back({bi.first_seq, bi.first_ts, off});
      next_index = off + index_interval;
    }
    off += bi.len;
    r.valid_bytes = off;
  }
  return r;
}

RecoveryResult recover_partition_log(const std::string& dir, uint64_t index_interval) {
  RecoveryResult res;
  for (;;) {
    std::vector<SegmentInfo> segs = list_segments(dir);
    if (segs.empty()) return res;
    const SegmentInfo& last = segs.back();
    ScanResult s = scan_segment(last.path, index_interval);
    const std::string idx = dir + "/" + index_file_name(last.first_seq);
    if (!s.header_ok || s.records == 0) {
      // Created but never got a record (or its header is torn): remove, look at the previous.
      if (::unlink(last.path.c_str()) != 0 && errno != ENOENT) sys_fail("unlink " + last.path);
      ::unlink(idx.c_str());
      ++res.removed_files;
      res.truncated_bytes += last.size;
      continue;
    }
    if (s.valid_bytes < last.size) {
      Fd f(::open(last.path.c_str(), O_WRONLY | O_CLOEXEC));
      if (f.fd < 0) sys_fail("open " + last.path);
      if (::ftruncate(f.fd, off_t(s.valid_bytes)) != 0) sys_fail("truncate " + last.path);
      if (::fdatasync(f.fd) != 0) sys_fail("fdatasync " + last.path);
      res.truncated_bytes += last.size - s.valid_bytes;
    }
    // Rewrite the last segment's index from the scan (it may point past the truncation).
    {
      Fd f(::open(idx.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
      if (f.fd < 0) sys_fail("open " + idx);
      size_t n = s.index.size() * sizeof(IndexEntry);
      if (n && ::write(f.fd, s.index.data(), n) != ssize_t(n)) sys_fail("write " + idx);
    }
    res.empty = false;
    res.last_seq = s.last_seq;
    res.last_ts = s.last_ts;
    res.last_ring_end = s.last_ring_end;
    res.epoch = s.epoch;
    res.active_first_seq = last.first_seq;
    res.active_version = s.version;
    res.active_size = s.valid_bytes;
    res.active_index = std::move(s.index);
    res.total_bytes = 0;
    for (size_t i = 0; i + 1 < segs.size(); ++i) res.total_bytes += segs[i].size;
    res.total_bytes += s.valid_bytes;
    return res;
  }
}

// --------------------------------------------------------------------------- arena
ChunkArena::~ChunkArena() {
  std::free(cur_.data);
  for (auto& c : retained_) std::free(c.data);
  for (auto& c : free_) std::free(c.data);
}

ChunkArena::Chunk ChunkArena::take(size_t need) {
  for (size_t i = 0; i < free_.size(); ++i) {
    if (free_[i].cap >= need) {
      Chunk c = free_[i];
      free_.erase(free_.begin() + long(i));
      return c;
    }
  }
  Chunk c;
  c.cap = std::max(chunk_size_, (need + 4095) & ~size_t(4095));
  c.data = static_cast<std::byte*>(std::aligned_alloc(64, c.cap));
  if (!c.data) throw std::bad_alloc();
  return c;
}

ChunkArena::Chunk& ChunkArena::current() {
  if (!cur_.data) cur_ = take(chunk_size_);
  return cur_;
}

ChunkArena::Chunk& ChunkArena::fresh(size_t need, const std::byte* keep, size_t keep_len) {
  current();
  if (!busy(cur_) && cur_.cap >= need) {
    if (keep_len && keep != cur_.data) std::memmove(cur_.data, keep, keep_len);
    cur_.begin = 0;
    cur_.end = keep_len;
    cur_.max_tag = 0;
    return cur_;
  }
  Chunk n = take(std::max(need, keep_len));
  if (keep_len) std::memcpy(n.data, keep, keep_len);
  n.begin = 0;
  n.end = keep_len;
  n.max_tag = 0;
  if (busy(cur_))
    retained_.push_back(cur_);
  else
    free_.push_back(cur_);
  cur_ = n;
  return cur_;
}

ChunkArena& ChunkArena::side() {
  if (!side_) side_ = std::make_unique<ChunkArena>(64 << 10);
  return *side_;
}

void ChunkArena::release(uint64_t t) {
  if (side_) side_->release(t);
  if (t > released_) released_ = t;
  while (!retained_.empty() && retained_.front().max_tag <= released_) {
    free_.push_back(retained_.front());
    retained_.pop_front();
  }
  while (free_.size() > 4) {
    std::free(free_.back().data);
    free_.pop_back();
  }
}

// --------------------------------------------------------------------------- reader
LogReader::LogReader(std::string dir, ChunkArena& arena) : dir_(std::move(dir)), arena_(arena) {}
LogReader::~LogReader() { close_segment(); }

void LogReader::close_segment() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  have_file_ = false;
  in_batch_ = false;
}

bool LogReader::open_segment(const SegmentInfo& s, uint64_t offset) {
  close_segment();
  int fd = ::open(s.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  SegmentFileHeader h;
  if (pread_full(fd, &h, sizeof h, 0) != ssize_t(sizeof h) || !file_header_ok(h)) {
    ::close(fd);
    return false;
  }
  fd_ = fd;
  have_file_ = true;
  cur_first_ = s.first_seq;
  epoch_ = h.ring_epoch;
  version_ = h.version;
  pos_ = std::max<uint64_t>(offset, kFileHeaderSize);
  arena_.fresh(1 << 20, nullptr, 0);  // empty window at pos_ (views handed out stay valid)
  win_off_ = pos_;
  return true;
}

// Window: chunk bytes [begin, end) hold file bytes [win_off_, win_off_ + end - begin).
// Reads so that at least `need` bytes from pos_ are in the window, if the file has them.
bool LogReader::refill(size_t need) {
  auto* c = &arena_.current();
  size_t at = c->begin + size_t(pos_ - win_off_);
  size_t have = c->end > at ? c->end - at : 0;
  if (have >= need) return true;
  if (c->cap - at < std::max(need, size_t(64) << 10)) {
    c = &arena_.fresh(std::max(need, size_t(1) << 20), c->data + at, have);
    win_off_ = pos_;
    at = 0;
  }
  ssize_t n = pread_full(fd_, c->data + c->end, c->cap - c->end, win_off_ + (c->end - c->begin));
  if (n < 0) return false;
  c->end += size_t(n);
  return c->end - at >= need;
}

void LogReader::drop_window() {
  auto& c = arena_.current();
  size_t at = c.begin + size_t(pos_ - win_off_);
  if (c.end > at) c.end = at;
}

// The record (v1) or batch (v2) at pos_: rv (v1) or bi (v2) filled when ok.
Check LogReader::peek(RecordView& rv, BatchInfo& bi) {
  const bool v2 = version_ == kLogVersion;
  for (int round = 0;; ++round) {
    auto& c = arena_.current();
    size_t at = c.begin + size_t(pos_ - win_off_);
    size_t avail = c.end > at ? c.end - at : 0;
    Check k = v2 ? check_batch(c.data + at, avail, &bi) : check_record(c.data + at, avail, &rv);
    if (k != Check::need_more) return k;
    if (round > 0) return Check::end;  // the file ends inside this record (being written, or torn)
    size_t need = v2 ? kBatchHeaderSize : kRecordPrefix;
    if (avail >= 4) {
      uint32_t len;
      std::memcpy(&len, c.data + at, 4);
      need = std::max<size_t>(len, need);
    }
    refill(need);
  }
}

bool LogReader::later_segment_exists() {
  for (const auto& s : list_segments(dir_))
    if (s.first_seq > cur_first_) return true;
  return false;
}

bool LogReader::advance_file() {
  uint64_t from = cur_first_;
  close_segment();
  const std::vector<SegmentInfo> segs = list_segments(dir_);
  for (size_t k = 0; k < segs.size(); ++k) {
    const SegmentInfo& s = segs[k];
    if (s.first_seq <= from) continue;
    if (open_segment(s, kFileHeaderSize)) return true;
    // The archiver creates a segment, then writes its header: the newest one without
    // a valid header yet is tried again later (end for now). One with a later segment
    // after it is corrupt: skipped.
    if (k + 1 == segs.size()) break;
    ++corrupt_;
    from = s.first_seq;
  }
  cur_first_ = from;
  return false;
}

LogReader::Next LogReader::next(RecordView& out) {
  for (;;) {
    if (in_batch_) {
      // The batch passed check_batch: its bytes, in the current chunk, stay put until
      // every message is handed out (nothing refills meanwhile).
      shm::FrameHeader h;
      RecordView rv;
      if (!dec_.next(h, rv.ring_pos, rv.payload)) {
        in_batch_ = false;
        continue;
      }
      if (h.sequence < min_seq_) continue;
      if (ts_filter_) {
        if (h.timestamp_ns < min_ts_) continue;
        ts_filter_ = false;
      }
      ChunkArena& side = arena_.side();
      auto* sc = &side.current();
      if (sc->end + sizeof h > sc->cap) sc = &side.fresh(sizeof h, nullptr, 0);
      auto* hp = reinterpret_cast<shm::FrameHeader*>(sc->data + sc->end);
      std::memcpy(hp, &h, sizeof h);
      sc->end += sizeof h;
      side.mark(h.sequence);
      rv.hdr = hp;
      rv.payload_len = h.payload_len;
      last_seq_ = h.sequence;
      arena_.mark(h.sequence);
      out = rv;
      return Next::ok;
    }
    if (!have_file_ && !advance_file()) return Next::end;
    RecordView rv;
    BatchInfo bi;
    Check k = peek(rv, bi);
    if (k != Check::ok) {
      if (!later_segment_exists()) {
        drop_window();  // the active segment's tail: re-read next time
        return Next::end;
      }
      // Sealed (the archiver finished every write to it before creating the next):
      // read it again from the file, then decide between a clean end and corruption.
      drop_window();
      k = peek(rv, bi);
      if (k != Check::ok) {
        struct stat st;
        bool at_eof = fstat(fd_, &st) == 0 && uint64_t(st.st_size) <= pos_;
        if (!at_eof) ++corrupt_;
        if (!advance_file() && !at_eof) return Next::corrupt;
        if (!at_eof) return Next::corrupt;
        continue;
      }
    }
    if (version_ == kLogVersion) {
      auto& c = arena_.current();
      dec_.start(c.data + c.begin + size_t(pos_ - win_off_), bi.len);
      in_batch_ = true;
      pos_ += bi.len;
      continue;
    }
    pos_ += rv.rec_len;
    if (rv.seq() < min_seq_) continue;
    if (ts_filter_) {
      if (rv.ts() < min_ts_) continue;
      ts_filter_ = false;
    }
    last_seq_ = rv.seq();
    arena_.mark(rv.seq());
    out = rv;
    return Next::ok;
  }
}

bool LogReader::first_ts(const SegmentInfo& s, uint64_t& ts) {
  Fd f(::open(s.path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return false;
  SegmentFileHeader h;
  std::byte b[kRecordOverhead];
  if (pread_full(f.fd, &h, sizeof h, 0) != ssize_t(sizeof h) || !file_header_ok(h)) return false;
  if (pread_full(f.fd, b, sizeof b, kFileHeaderSize) != ssize_t(sizeof b)) return false;
  // A hint only: the scan after it validates every record.
  if (h.version == kLogVersion) {
    std::memcpy(&ts, b + offsetof(BatchHeader, base_ts), 8);
  } else {
    std::memcpy(&ts, b + kRecordPrefix + offsetof(shm::FrameHeader, timestamp_ns), 8);
  }
  return true;
}

uint64_t LogReader::index_offset(const SegmentInfo& s, bool by_time, uint64_t key) {
  std::string idx = dir_ + "/" + index_file_name(s.first_seq);
  Fd f(::open(idx.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return kFileHeaderSize;
  struct stat st;
  if (fstat(f.fd, &st) != 0) return kFileHeaderSize;
  size_t n = size_t(st.st_size) / sizeof(IndexEntry);
  std::vector<IndexEntry> e(n);
  ssize_t got = pread_full(f.fd, e.data(), n * sizeof(IndexEntry), 0);
  if (got < 0) return kFileHeaderSize;
  e.resize(size_t(got) / sizeof(IndexEntry));
  Fd lf(::open(s.path.c_str(), O_RDONLY | O_CLOEXEC));
  SegmentFileHeader fh;
  if (lf.fd < 0 || pread_full(lf.fd, &fh, sizeof fh, 0) != ssize_t(sizeof fh) || !file_header_ok(fh))
    return kFileHeaderSize;
  const bool v2 = fh.version == kLogVersion;
  // Last entry with key' < key (strictly: a timestamp may repeat), validated.
  size_t hi = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    uint64_t k = by_time ? e[i].ts : e[i].seq;
    if (k < key)
      hi = i + 1;
    else
      break;
  }
  while (hi > 0) {
    const IndexEntry& ie = e[hi - 1];
    std::byte b[kRecordOverhead];
    if (ie.offset >= kFileHeaderSize && pread_full(lf.fd, b, sizeof b, ie.offset) == ssize_t(sizeof b)) {
      uint32_t len;
      uint64_t seq;
      std::memcpy(&len, b, 4);
      if (v2) {
        std::memcpy(&seq, b + offsetof(BatchHeader, first_seq), 8);
        if (len >= kBatchHeaderSize + kMsgHeaderSize && len <= kMaxRecord && seq == ie.seq) return ie.offset;
      } else {
        std::memcpy(&seq, b + kRecordPrefix + offsetof(shm::FrameHeader, sequence), 8);
        if (len >= kRecordOverhead && len <= kMaxRecord && seq == ie.seq) return ie.offset;
      }
      // the full CRC check happens when it is read
    }
    --hi;
  }
  return kFileHeaderSize;
}
// The archiver creates a segment, then writes its header: when segs[i] is the newest
// segment and has no valid header yet, the reader stays before it and tries it again
// on its next read; an unreadable segment with a later one after it is corrupt:
// counted, and the reader goes on after it.
void LogReader::seek_open(const std::vector<SegmentInfo>& segs, size_t i, uint64_t off) {
  if (open_segment(segs[i], off)) return;
  if (i + 1 == segs.size()) {
    cur_first_ = i ? segs[i - 1].first_seq : 0;
    return;
  }
  ++corrupt_;
  cur_first_ = segs[i].first_seq;
}

void LogReader::seek_earliest() { seek_sequence(0); }

void LogReader::seek_sequence(uint64_t seq) {
  close_segment();
  min_seq_ = seq;
  ts_filter_ = false;
  std::vector<SegmentInfo> segs = list_segments(dir_);
  cur_first_ = 0;
  if (segs.empty()) return;
  size_t i = 0;
  for (size_t k = 0; k < segs.size(); ++k)
    if (segs[k].first_seq <= seq) i = k;
  if (segs[0].first_seq > seq && seq > 1) ++gaps_;
  uint64_t off = segs[i].first_seq < seq ? index_offset(segs[i], false, seq) : kFileHeaderSize;
  seek_open(segs, i, off);
}

void LogReader::seek_time(uint64_t ts) {
  close_segment();
  min_seq_ = 0;
  min_ts_ = ts;
  ts_filter_ = true;
  std::vector<SegmentInfo> segs = list_segments(dir_);
  cur_first_ = 0;
  if (segs.empty()) return;
  size_t i = 0;
  for (size_t k = 0; k < segs.size(); ++k) {
    uint64_t t0;
    if (first_ts(segs[k], t0) && t0 < ts)
      i = k;
    else if (k > 0)
      break;
  }
  uint64_t off = index_offset(segs[i], true, ts);
  seek_open(segs, i, off);
}

}  // namespace shmbus::spill
