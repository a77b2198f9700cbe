// The spill archiver: ring -> registered buffers -> io_uring writes (+ fdatasync).
// Design: docs/spill-log.md. Ordering: P9 (lap detection) and P10 (durable ack) in
// docs/memory-ordering.md.
#include "shmbus/spill/archiver.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>

#include "shmbus/error.hpp"
#include "shmbus/shm/ring.hpp"

namespace shmbus::spill {

using shm::aref;

const char* to_string(FlushPolicy p) noexcept {
  switch (p) {
    case FlushPolicy::none: return "none";
    case FlushPolicy::interval: return "interval";
    case FlushPolicy::batch: return "batch";
  }
  return "?";
}

namespace {

[[noreturn]] void sys_fail(const std::string& what, int err = errno) {
  throw Error(ErrorCode::system, what + ": " + std::strerror(err), err);
}

void mkdirs(const std::string& path) {
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) sys_fail("mkdir " + cur);
    i = j + 1;
  }
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

int64_t realtime_s() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec;
}

bool pid_alive(uint32_t pid) { return shm::process_alive(pid); }

enum : uint64_t { kOpWrite = 1, kOpFsync = 2, kOpIntervalSync = 3, kOpKick = 4 };
uint64_t tag(uint64_t id, uint64_t op) { return (id << 8) | op; }

// Direct I/O unit: O_DIRECT offsets, lengths and buffer addresses are multiples of it
// (the logical block size of every disk we expect; 512-byte disks accept it too).
constexpr uint32_t kBlk = 4096;

// A SIGKILLed archiver's O_DIRECT writes are not tied to a thread of its process:
// the process can be reaped while they are still on their way to the disk. Were
// one to land after this archiver scanned the last segment and wrote its own
// batches there, it would overwrite them. fallocate waits for the direct I/O in
// flight on the inode (ext4, xfs: inode_dio_wait; KEEP_SIZE, one block past the
// end: nothing visible changes), so the scan that follows sees the file settled.
// Best effort: a file system without fallocate has no such wait to offer.
void wait_direct_writes(const std::string& dir) {
  const std::vector<SegmentInfo> segs = list_segments(dir);
  if (segs.empty()) return;
  const int fd = ::open(segs.back().path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st;
  if (::fstat(fd, &st) == 0) (void)::fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, 1);
  ::close(fd);
}

}  // namespace

struct Archiver::Impl {
  struct Part;

  struct Buf {
    uint32_t id = 0;
    std::byte* data = nullptr;
    uint32_t cap = 0;
    bool fixed = false;  // a registered buffer (else a heap buffer for one big record)
    bool big = false;    // from the batch-flush pool
    enum State : uint8_t { idle, filling, writing, failed, done } st = idle;
    Part* part = nullptr;
    uint32_t fill = 0, written = 0;
    // Direct I/O (docs/spill-log.md, "Direct I/O"): the buffer starts with `pre` bytes
    // of the partial block the log ended in (already written; rewritten unchanged)
    // and file_off is that block's start. `wlen` bytes are written: `fill` rounded up
    // with zeros (padded), or down when the partial last block is `carry`ied into the
    // next buffer, which writes it (this buffer is acknowledged with that one). A
    // buffer `after_padded` rewrites its predecessor's padded last block: it is
    // submitted only once that write completed (writes in flight never overlap).
    uint32_t pre = 0, wlen = 0;
    bool carry = false, after_padded = false;
    uint64_t file_off = 0;
    uint64_t first_seq = 0, last_seq = 0, last_ts = 0, ring_end = 0, records = 0;
    bool want_sync = false, synced = false;
    int ops = 0;  // operations in flight
    int err = 0;
    std::vector<IndexEntry> idx;
    BatchWriter batch;  // the one batch (format v2) this buffer holds
  };

  struct Sealed {
    uint64_t first_seq;
    uint64_t size;
    int64_t mtime_s;
  };

  struct Part {
    std::shared_ptr<PartitionMapping> m;
    shm::RingRefs r;
    LogConfig cfg;
    std::string dir;
    uint32_t slot_index = 0;  // fixed-file slot
    shm::CursorSlot* slot = nullptr;
    // The slot's generation when this archiver took it (attach): another archiver in
    // this process (same pid) may adopt the slot while this one is stopped, bumping it.
    uint32_t slot_gen = 0;
    uint64_t read_pos = 0, released = 0;
    uint64_t epoch = 0;
    uint64_t log_last_seq = 0;  // highest sequence in the log (recovered or placed)
    int fd = -1, idx_fd = -1;
    uint64_t seg_first = 0, file_off = 0, next_index = 0;  // file_off: the log's logical end
    // Direct I/O: fd is O_DIRECT; `tail` holds the log's bytes from the start of the
    // block file_off is in up to file_off (the next buffer's prefix); pad_pending:
    // the last submitted buffer was padded there (its successor waits for it).
    bool direct = false, pad_pending = false;
    uint32_t tail_len = 0;
    std::byte tail[kBlk];
    bool roll_pending = false;
    uint64_t roll_seq = 0;
    std::deque<Sealed> sealed;
    uint64_t total_bytes = 0;
    std::deque<Buf*> bufs;  // FIFO: in flight or failed, then (last) the filling one
    uint64_t written_seq = 0, durable_seq = 0;
    bool sync_inflight = false;
    uint64_t sync_target = 0;
    uint64_t next_sync_ns = 0;
    int err = 0;
    uint64_t retry_at = 0;
    int64_t backoff = 0;
    uint64_t next_retention_ns = 0;
    uint64_t kick_from = 0;  // start of the written range not yet handed to writeback
    PartitionStats st;
    std::atomic<bool> detached{false};
    // remove_partition(): `removing` stops reading the ring; once nothing is in
    // flight the part is finalized (`removed`: files closed, cursor freed, mapping
    // dropped) and its index/fixed-file slot may be reused by a new partition.
    bool removing = false, removed = false;
    std::vector<std::shared_ptr<std::promise<void>>> removal_waiters;
    // Had records to stage but found no free staging buffer while holding none: the
    // other partitions leave one free for it (reserved_for_others).
    bool starved = false;
  };

  struct Removal {
    std::string topic;
    uint32_t partition;
    std::shared_ptr<std::promise<void>> done;
  };

  ArchiverConfig cfg;
  io_uring ring{};
  bool ring_ok = false;
  bool fixed_files = false, fixed_bufs = false;
  std::byte* pool = nullptr;
  std::byte* pool_big = nullptr;  // batch flush: bigger batches per fdatasync
  std::vector<Buf*> free_big;
  std::vector<Buf*> bufs;  // all, by id
  std::vector<Buf*> free_fixed;
  std::vector<std::unique_ptr<Part>> parts;
  uint32_t inflight = 0;
  uint64_t op_count[2] = {0, 0};

  std::mutex cmd_mu;  // guards `pending` and the stats snapshot; never on the ring path
  std::vector<std::unique_ptr<Part>> pending;
  std::vector<Removal> removals;
  std::atomic<bool> has_pending{false};
  // The ring the archiver thread sleeps on (idle_wait), for wake_idle; guarded by cmd_mu.
  std::shared_ptr<PartitionMapping> sleep_m;
  shm::RingRefs sleep_r{};
  std::vector<PartitionStats> snapshot;
  std::atomic<bool> stop_req{false};

  explicit Impl(ArchiverConfig c) : cfg(std::move(c)) {
    if (cfg.queue_depth < 4) cfg.queue_depth = 4;
    if (cfg.buffer_count < 2) cfg.buffer_count = 2;
    if (cfg.buffer_bytes < 4096) cfg.buffer_bytes = 4096;
    if (cfg.max_inflight_writes < 1) cfg.max_inflight_writes = 1;
    cfg.buffer_bytes = (cfg.buffer_bytes + 4095) & ~4095u;
    int rc = io_uring_queue_init(cfg.queue_depth, &ring, 0);
    if (rc < 0) sys_fail("io_uring_queue_init", -rc);
    ring_ok = true;
    pool = static_cast<std::byte*>(std::aligned_alloc(4096, size_t(cfg.buffer_count) * cfg.buffer_bytes));
    if (!pool) throw std::bad_alloc();
    cfg.batch_buffer_bytes = (cfg.batch_buffer_bytes + 4095) & ~4095u;
    const uint32_t nbig = cfg.batch_buffer_bytes > cfg.buffer_bytes ? cfg.batch_buffer_count : 0;
    std::vector<iovec> iov(cfg.buffer_count + nbig);
    if (nbig) {
      pool_big = static_cast<std::byte*>(std::aligned_alloc(4096, size_t(nbig) * cfg.batch_buffer_bytes));
      if (!pool_big) throw std::bad_alloc();
    }
    for (uint32_t i = 0; i < cfg.buffer_count; ++i) {
      Buf* b = new Buf;
      b->id = i;
      b->data = pool + size_t(i) * cfg.buffer_bytes;
      b->cap = cfg.buffer_bytes;
      b->fixed = true;
      bufs.push_back(b);
      free_fixed.push_back(b);
      iov[i] = {b->data, cfg.buffer_bytes};
    }
    std::reverse(free_fixed.begin(), free_fixed.end());
    for (uint32_t i = 0; i < nbig; ++i) {
      Buf* b = new Buf;
      b->id = cfg.buffer_count + i;  // == its registration index
      b->data = pool_big + size_t(i) * cfg.batch_buffer_bytes;
      b->cap = cfg.batch_buffer_bytes;
      b->fixed = b->big = true;
      bufs.push_back(b);
      free_big.push_back(b);
      iov[b->id] = {b->data, cfg.batch_buffer_bytes};
    }
    // Registered buffers and files save the kernel a page walk and an fd lookup
    // per write; if the kernel refuses (memlock, old kernel) plain ops work too.
    fixed_bufs = io_uring_register_buffers(&ring, iov.data(), unsigned(iov.size())) == 0;
    fixed_files = io_uring_register_files_sparse(&ring, 1024) == 0;
  }

  ~Impl() {
    for (auto& p : parts) close_files(*p);
    if (ring_ok) io_uring_queue_exit(&ring);
    for (Buf* b : bufs) {
      if (!b->fixed) std::free(b->data);
      delete b;
    }
    std::free(pool);
    std::free(pool_big);
  }

  // ------------------------------------------------------------------ attach
  std::unique_ptr<Part> attach(std::shared_ptr<PartitionMapping> m, const LogConfig& lc) {
    auto p = std::make_unique<Part>();
    p->m = std::move(m);
    p->r = p->m->refs();
    p->cfg = lc;
    if (p->cfg.segment_bytes < 4096) p->cfg.segment_bytes = 4096;
    if (p->cfg.index_interval < 512) p->cfg.index_interval = 512;
    p->dir = partition_dir(lc.state_dir, p->m->topic(), p->m->partition());
    p->st.topic = p->m->topic();
    p->st.partition = p->m->partition();
    mkdirs(p->dir);
    p->epoch = p->r.data->created_ns;
    wait_direct_writes(p->dir);
    RecoveryResult rec = recover_partition_log(p->dir, p->cfg.index_interval);

    const uint32_t me = uint32_t(getpid());
    // Adopt the slot of a previous archiver of this partition (it still holds the
    // ring at the last position it released), or join a fresh one at the tail.
    shm::CursorSlot* slot = nullptr;
    for (uint32_t i = 0; i < p->r.slot_count; ++i) {
      shm::CursorSlot& s = p->r.slots[i];
      if (aref(s.state).load(std::memory_order_seq_cst) != shm::kSlotActive) continue;
      if (aref(s.name_hash).load(std::memory_order_relaxed) != kArchiverNameHash) continue;
      if (!(aref(s.flags).load(std::memory_order_relaxed) & shm::kSlotEmbedded)) continue;
      uint32_t pid = aref(s.pid).load(std::memory_order_relaxed);
      if (pid != me && pid_alive(pid))
        throw Error(ErrorCode::already_exists, "topic '" + p->m->topic() + "' partition " +
                                                   std::to_string(p->m->partition()) +
                                                   " is archived by live pid " + std::to_string(pid));
      // Taken over in place: the slot stays ACTIVE and tethered throughout, so the
      // producer never sees the ring unprotected.
      aref(s.pid).store(me, std::memory_order_relaxed);
      aref(s.generation).fetch_add(1, std::memory_order_relaxed);
      aref(s.page.heartbeat_ns).store(shm::monotonic_ns(), std::memory_order_relaxed);
      slot = &s;
      break;
    }
    if (!slot) {
      shm::RingReader rr;
      if (!rr.join(p->r, me, true, kArchiverNameHash))
        throw Error(ErrorCode::no_slot, "topic '" + p->m->topic() + "': no cursor slot for the archiver");
      slot = rr.slot();
    }
    p->slot = slot;
    p->slot_gen = aref(slot->generation).load(std::memory_order_relaxed);
    const uint64_t held = aref(slot->page.position).load(std::memory_order_acquire);
    uint64_t resume = held;
    if (!rec.empty && rec.epoch == p->epoch) {
      if (rec.last_ring_end >= held) {
        resume = rec.last_ring_end;  // frames in [held, end) reached the log before the crash
      } else {
        ++p->st.gaps;  // the log lost frames the ring no longer holds (not expected)
      }
    }
    if (!rec.empty && rec.epoch == p->epoch && rec.active_version != kLogVersion) {
      // The last segment is in an older format: it stays as it is (sealed, readable)
      // and the next record starts a new segment in this format.
      std::string path = p->dir + "/" + segment_file_name(rec.active_first_seq);
      if (p->cfg.flush != FlushPolicy::none) {
        int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0) sys_fail("open " + path);
        const int rc = ::fdatasync(fd);
        const int e = errno;
        ::close(fd);
        if (rc != 0) sys_fail("fdatasync " + path, e);
      }
    } else if (!rec.empty && rec.epoch == p->epoch) {
      p->seg_first = rec.active_first_seq;
      p->file_off = rec.active_size;
      p->kick_from = rec.active_size;
      std::string path = p->dir + "/" + segment_file_name(p->seg_first);
      p->fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
      if (p->fd < 0) sys_fail("open " + path);
      // The partial block the log ends in: the next buffer's prefix (direct I/O).
      p->tail_len = uint32_t(p->file_off % kBlk);
      if (::pread(p->fd, p->tail, p->tail_len, off_t(p->file_off - p->tail_len)) != ssize_t(p->tail_len))
        sys_fail("read " + path);
      p->fd = use_direct(*p, path, p->fd);
      std::string ipath = p->dir + "/" + index_file_name(p->seg_first);
      p->idx_fd = ::open(ipath.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
      if (p->idx_fd < 0) sys_fail("open " + ipath);
      p->next_index =
          rec.active_index.empty() ? kFileHeaderSize : rec.active_index.back().offset + p->cfg.index_interval;
      if (p->cfg.flush != FlushPolicy::none && ::fdatasync(p->fd) != 0) sys_fail("fdatasync " + path);
    } else if (!rec.empty) {
      // A new ring (another epoch): its sequences must continue the log's.
      uint64_t next_seq = shm::tail_seq_of(aref(p->r.data->tail_seq).load(std::memory_order_acquire));
      if (resume == aref(p->r.data->tail_pos).load(std::memory_order_acquire) && next_seq <= rec.last_seq)
        throw Error(ErrorCode::incompatible,
                    "topic '" + p->m->topic() + "' partition " + std::to_string(p->m->partition()) +
                        ": the ring's sequences restart at " + std::to_string(next_seq) +
                        " but the log already holds up to " + std::to_string(rec.last_seq) +
                        "; create the ring starting at next_sequence_after_log()");
    }
    p->log_last_seq = rec.last_seq;
    p->written_seq = p->durable_seq = rec.last_seq;
    for (const SegmentInfo& s : list_segments(p->dir)) {
      if (p->fd >= 0 && s.first_seq == p->seg_first) continue;
      p->sealed.push_back({s.first_seq, s.size, s.mtime_s});
      p->total_bytes += s.size;
    }
    p->total_bytes += p->file_off;
    p->read_pos = p->released = resume;
    // SYNC(cursor) release: moving forward only frees ring bytes.
    aref(slot->page.position).exchange(resume, std::memory_order_seq_cst);
    wake_space(*p);
    auto* d = p->r.data;
    if (aref(d->durable_seq).load(std::memory_order_relaxed) < rec.last_seq)
      publish_durable(*p, rec.last_seq);
    aref(d->archived_seq)
        .store(std::max(aref(d->archived_seq).load(std::memory_order_relaxed), rec.last_seq),
               std::memory_order_relaxed);
    aref(d->archived_pos).store(resume, std::memory_order_relaxed);
    aref(d->archiver_pid).store(me, std::memory_order_relaxed);
    aref(d->archiver_error).store(0, std::memory_order_relaxed);
    p->st.archived_seq = p->st.durable_seq = rec.last_seq;
    return p;
  }

  void install(std::unique_ptr<Part> p) {
    // Reuse the index (and fixed-file slot) of a removed partition: nothing of it
    // is in flight any more.
    for (size_t i = 0; i < parts.size(); ++i)
      if (parts[i]->removed) {
        p->slot_index = uint32_t(i);
        if (p->fd >= 0) register_fd(*p);
        parts[i] = std::move(p);
        return;
      }
    p->slot_index = uint32_t(parts.size());
    if (p->fd >= 0) register_fd(*p);
    parts.push_back(std::move(p));
  }

  size_t active_parts() const {
    size_t n = 0;
    for (auto& p : parts) n += !p->removed;
    return n;
  }

  void mark_removal(const Removal& r) {
    for (auto& p : parts)
      if (!p->removed && p->st.topic == r.topic && p->st.partition == r.partition) {
        p->removing = true;
        p->removal_waiters.push_back(r.done);
        return;
      }
    r.done->set_value();  // not archived here: nothing to do
  }

  // A removing partition with nothing in flight: drop what is staged (it was never
  // released, and the topic goes away), close its files, free its cursor slot.
  bool try_finalize(Part& p) {
    if (!p.removing || p.removed) return false;
    if (p.sync_inflight) return false;
    for (Buf* b : p.bufs)
      if (b->ops) return false;
    while (!p.bufs.empty()) {
      Buf* b = p.bufs.front();
      p.bufs.pop_front();
      put_buf(b);
    }
    if (fixed_files && p.fd >= 0) {
      int none = -1;
      io_uring_register_files_update(&ring, p.slot_index, &none, 1);
    }
    close_files(p);
    if (p.slot) {
      aref(p.r.data->archiver_pid).store(0, std::memory_order_relaxed);
      // Free the tethered cursor; producers waiting on it are woken (P7).
      aref(p.slot->state).store(shm::kSlotFree, std::memory_order_seq_cst);
      shm::wake_space_page(&p.slot->page);
      p.slot = nullptr;
    }
    p.removed = true;
    p.m.reset();
    for (auto& w : p.removal_waiters) w->set_value();
    p.removal_waiters.clear();
    return true;
  }

  void register_fd(Part& p) {
    if (!fixed_files) return;
    int fd = p.fd;
    if (io_uring_register_files_update(&ring, p.slot_index, &fd, 1) != 1) fixed_files = false;
  }

  void close_files(Part& p) {
    if (p.fd >= 0) ::close(p.fd);
    if (p.idx_fd >= 0) ::close(p.idx_fd);
    p.fd = p.idx_fd = -1;
  }

  // ------------------------------------------------------------------ shared-memory signals
  static void wake_space(Part& p) { shm::notify_space_waiters(p.r, &p.slot->page); }

  void release_ring(Part& p, uint64_t pos) {
    if (pos <= p.released) return;
    p.released = pos;
    // SYNC(cursor) release: we are done reading the frames below pos (P4); seq_cst
    // so the space-waiter check cannot move above it (P7).
    aref(p.slot->page.position).exchange(pos, std::memory_order_seq_cst);
    aref(p.r.data->archived_pos).store(pos, std::memory_order_relaxed);
    wake_space(p);
  }

  static void publish_durable(Part& p, uint64_t seq) {
    auto* d = p.r.data;
    if (aref(d->durable_seq).load(std::memory_order_relaxed) >= seq) return;
    // SYNC(durable) P10: seq_cst store then seq_cst waiter check (Dekker with wait_durable).
    aref(d->durable_seq).store(seq, std::memory_order_seq_cst);
    if (aref(d->durable_waiters).load(std::memory_order_seq_cst) != 0) {
      aref(d->durable_futex).fetch_add(1, std::memory_order_seq_cst);
      shm::futex_wake_all(&d->durable_futex);
    }
  }

  void set_error(Part& p, int err) {
    p.err = err;
    p.st.last_error = err;
    aref(p.r.data->archiver_error).store(uint32_t(err), std::memory_order_relaxed);
  }

  // Whether p's cursor slot is still this archiver's: not freed (stop(true)) and not
  // adopted since attach by another archiver (of this process: same pid, generation
  // bumped). Only read while the archiver thread is not running.
  static bool owns_slot(const Part& p) {
    return p.slot && aref(p.slot->pid).load(std::memory_order_relaxed) == uint32_t(getpid()) &&
           aref(p.slot->generation).load(std::memory_order_relaxed) == p.slot_gen &&
           aref(p.slot->state).load(std::memory_order_seq_cst) == shm::kSlotActive;
  }

  // ------------------------------------------------------------------ segments
  bool open_segment(Part& p, uint64_t first_seq) {
    std::string path = p.dir + "/" + segment_file_name(first_seq);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      ++p.st.io_errors;
      set_error(p, errno);
      return false;
    }
    SegmentFileHeader h;
    fill_file_header(h, first_seq, p.epoch, p.m->partition());
    ssize_t n = ::pwrite(fd, &h, sizeof h, 0);
    if (n != ssize_t(sizeof h) || (p.cfg.flush != FlushPolicy::none && ::fdatasync(fd) != 0)) {
      int e = n < 0 ? errno : (n != ssize_t(sizeof h) ? ENOSPC : errno);
      ::close(fd);
      ::unlink(path.c_str());
      ++p.st.io_errors;
      set_error(p, e);
      return false;
    }
    std::string ipath = p.dir + "/" + index_file_name(first_seq);
    int ifd = ::open(ipath.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (p.cfg.flush != FlushPolicy::none) fsync_dir(p.dir);
    fd = use_direct(p, path, fd);
    std::memcpy(p.tail, &h, sizeof h);  // the first buffer rewrites the header's block unchanged
    p.tail_len = sizeof h;
    p.pad_pending = false;
    p.fd = fd;
    p.idx_fd = ifd;
    p.seg_first = first_seq;
    p.file_off = kFileHeaderSize;
    p.next_index = kFileHeaderSize;
    p.kick_from = kFileHeaderSize;
    p.total_bytes += kFileHeaderSize;
    register_fd(p);
    return true;
  }

  // The segment's descriptor for p's writes: an O_DIRECT one when configured, the
  // policy syncs (interval, batch) and the file system takes it (else `fd` as is).
  int use_direct(Part& p, const std::string& path, int fd) {
    p.direct = p.st.direct_io = false;
    if (!cfg.direct_io || p.cfg.flush == FlushPolicy::none) return fd;
    const int dfd = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (dfd < 0) return fd;  // EINVAL: no O_DIRECT here (the page cache it is)
    ::close(fd);
    p.direct = p.st.direct_io = true;
    return dfd;
  }

  // Called with nothing in flight for p.
  bool roll(Part& p) {
    if (p.fd >= 0) {
      // Direct I/O padded the last block: the sealed file ends at its last batch.
      if (p.direct && ::ftruncate(p.fd, off_t(p.file_off)) != 0) {
        ++p.st.io_errors;
        set_error(p, errno);
        return false;
      }
      if (p.cfg.flush != FlushPolicy::none) {
        if (::fdatasync(p.fd) != 0) {
          ++p.st.io_errors;
          set_error(p, errno);
          return false;
        }
        p.durable_seq = p.written_seq;
        publish_durable(p, p.durable_seq);
      }
      p.sealed.push_back({p.seg_first, p.file_off, realtime_s()});
      close_files(p);
      ++p.st.segments_rolled;
    }
    if (!open_segment(p, p.roll_seq)) return false;
    p.roll_pending = false;
    retention(p);
    return true;
  }

  void retention(Part& p) {
    const int64_t now_s = realtime_s();
    while (!p.sealed.empty()) {
      const Sealed& s = p.sealed.front();
      bool by_size = p.cfg.retention_bytes && p.total_bytes > p.cfg.retention_bytes;
      bool by_age = p.cfg.retention_age_s && now_s - s.mtime_s > p.cfg.retention_age_s;
      if (!by_size && !by_age) break;
      ::unlink((p.dir + "/" + segment_file_name(s.first_seq)).c_str());
      ::unlink((p.dir + "/" + index_file_name(s.first_seq)).c_str());
      p.total_bytes -= std::min(p.total_bytes, s.size);
      ++p.st.segments_deleted;
      p.sealed.pop_front();
    }
  }

  // ------------------------------------------------------------------ buffers
  // Whether get_buf(p, need) would find a buffer (a heap one is always tried) once the
  // log's partial last block holds `pre` bytes (the prefix get_buf copies then).
  bool can_get_buf(const Part& p, uint32_t need, uint32_t pre) const {
    need += p.direct ? pre : 0;
    if (p.cfg.flush == FlushPolicy::batch && need <= cfg.batch_buffer_bytes && !free_big.empty()) return true;
    return need > cfg.buffer_bytes || free_fixed.size() > reserved_for_others(p);
  }

  // Fairness of the shared pool: the partitions are pumped in order, and a busy one
  // takes every buffer it can (a carried chain holds them until its last one is
  // written), so with several saturating partitions the ones pumped last could find
  // the pool empty at every turn, for as long as the others stay busy. A starved
  // partition may take any free buffer (it gets one at its first pump after one is
  // freed); every other one leaves one free for each starved partition (and, finding
  // none, is starved itself: with more hungry partitions than buffers they take turns).
  size_t reserved_for_others(const Part& p) const {
    if (p.starved) return 0;
    size_t n = 0;
    for (auto& q : parts) n += q.get() != &p && q->starved && !q->removed && !q->removing;
    return n;
  }

  Buf* get_buf(Part& p, uint32_t need) {
    Buf* b = nullptr;
    const uint32_t pre = p.direct ? p.tail_len : 0;
    need += pre;
    if (p.cfg.flush == FlushPolicy::batch && need <= cfg.batch_buffer_bytes && !free_big.empty()) {
      b = free_big.back();
      free_big.pop_back();
    } else if (need <= cfg.buffer_bytes) {
      if (free_fixed.size() <= reserved_for_others(p)) return nullptr;
      b = free_fixed.back();
      free_fixed.pop_back();
    } else {
      b = new Buf;
      b->id = uint32_t(bufs.size());
      b->cap = (need + 4095) & ~4095u;
      b->data = static_cast<std::byte*>(std::aligned_alloc(4096, b->cap));
      if (!b->data) {
        delete b;
        return nullptr;
      }
      b->fixed = false;
      bufs.push_back(b);
    }
    b->st = Buf::filling;
    b->part = &p;
    b->fill = b->written = 0;
    b->file_off = p.file_off;
    b->pre = b->wlen = 0;
    b->carry = b->after_padded = false;
    if (pre) {
      std::memcpy(b->data, p.tail, pre);
      b->fill = b->pre = pre;
      b->file_off = p.file_off - pre;
      b->after_padded = p.pad_pending;
    }
    b->first_seq = b->last_seq = b->last_ts = b->records = 0;
    b->ring_end = p.read_pos;
    b->want_sync = p.cfg.flush == FlushPolicy::batch;
    b->synced = false;
    b->ops = 0;
    b->err = 0;
    b->idx.clear();
    b->batch = BatchWriter{};
    p.bufs.push_back(b);
    return b;
  }

  void put_buf(Buf* b) {
    b->st = Buf::idle;
    b->part = nullptr;
    if (b->fixed) {
      (b->big ? free_big : free_fixed).push_back(b);
    } else {
      bufs[b->id] = nullptr;
      std::free(b->data);
      delete b;
      while (!bufs.empty() && !bufs.back()) bufs.pop_back();
    }
  }

  uint32_t submitted(const Part& p) const {
    uint32_t n = 0;
    for (Buf* b : p.bufs) n += b->st == Buf::writing || b->st == Buf::failed;
    return n;
  }

  // Submits b's write (and, batch flush, its linked fdatasync). carry (direct I/O,
  // `interval`, a full buffer whose successor is about to be taken): the partial
  // last block goes to the next buffer instead of being padded.
  bool submit_buf(Buf* b, bool carry = false) {
    Part& p = *b->part;
    const uint32_t nops = b->want_sync ? 2 : 1;
    if (inflight + nops > cfg.queue_depth) return false;
    if (b->after_padded) {
      // Its first block is the predecessor's padded last block: never two writes in
      // flight to one block (their order on the disk would be undefined).
      for (size_t i = 1; i < p.bufs.size(); ++i)
        if (p.bufs[i] == b && (p.bufs[i - 1]->st != Buf::done || p.bufs[i - 1]->ops)) return false;
    }
    if (io_uring_sq_space_left(&ring) < nops) io_uring_submit(&ring);
    if (io_uring_sq_space_left(&ring) < nops) return false;
    if (b->st == Buf::filling) {
      // The buffer becomes final: the batch's length, count and CRC, then what is written.
      if (b->batch.open()) b->batch.finish();
      b->wlen = b->fill;
      if (p.direct) {
        const uint32_t cut = b->fill & ~(kBlk - 1);
        if (carry && cut >= kBlk && p.cfg.flush == FlushPolicy::interval) {
          b->wlen = cut;
          b->carry = true;
          p.pad_pending = false;
        } else {
          b->wlen = (b->fill + kBlk - 1) & ~(kBlk - 1);
          std::memset(b->data + b->fill, 0, b->wlen - b->fill);  // never stale bytes past the end
          p.pad_pending = b->wlen != b->fill;
        }
        p.tail_len = b->fill - cut;
        std::memcpy(p.tail, b->data + cut, p.tail_len);
      }
    }
    if (p.direct) b->written &= ~(kBlk - 1);  // a short write is redone from a block boundary
    io_uring_sqe* w = io_uring_get_sqe(&ring);
    const bool ff = fixed_files;
    const int fd = ff ? int(p.slot_index) : p.fd;
    const uint32_t len = b->wlen - b->written;
    if (cfg.on_write)
      cfg.on_write(p.dir, p.seg_first, b->file_off + b->written, b->data + b->written, len,
                   b->file_off + b->fill);
    if (b->fixed && fixed_bufs)
      io_uring_prep_write_fixed(w, fd, b->data + b->written, len, b->file_off + b->written, int(b->id));
    else
      io_uring_prep_write(w, fd, b->data + b->written, len, b->file_off + b->written);
    if (ff) w->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(w, tag(b->id, kOpWrite));
    if (b->want_sync) {
      w->flags |= IOSQE_IO_LINK;  // the fdatasync runs only after the write succeeded
      io_uring_sqe* s = io_uring_get_sqe(&ring);
      io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
      if (ff) s->flags |= IOSQE_FIXED_FILE;
      io_uring_sqe_set_data64(s, tag(b->id, kOpFsync));
    }
    b->st = Buf::writing;
    b->ops = int(nops);
    b->synced = false;
    b->err = 0;
    inflight += nops;
    return true;
  }

  // Pulls committed frames from p's ring into staging buffers; submits full ones.
  bool pump(Part& p, uint64_t now) {
    bool asked = false;
    const bool progress = pump_part(p, now, asked);
    // `starved` is cleared by a successful get_buf; a pump that ends before asking for
    // a buffer (nothing to read, a corrupt frame, a back-off, a roll waiting) does not
    // need one now: the others stop leaving one free for it. Its next pump that finds
    // none marks it again.
    if (!asked) p.starved = false;
    return progress;
  }

  bool pump_part(Part& p, uint64_t now, bool& asked) {
    bool progress = false;
    // Failed or short writes go again (after the back-off).
    for (Buf* b : p.bufs) {
      if (b->st == Buf::failed && b->ops == 0 && now >= p.retry_at) {
        if (!submit_buf(b)) break;
        ++p.st.retries;
        progress = true;
      }
    }
    // Batch flush: one batch (write + linked fdatasync) in flight; the next fills
    // meanwhile (group commit). Otherwise up to max_inflight_writes writes.
    const uint32_t max_sub = p.cfg.flush == FlushPolicy::batch ? 1 : cfg.max_inflight_writes;
    if (p.roll_pending) {
      // The staged batch of the old segment goes first.
      Buf* last = p.bufs.empty() ? nullptr : p.bufs.back();
      if (last && last->st == Buf::filling && last->fill > last->pre && submitted(p) < max_sub &&
          submit_buf(last))
        progress = true;
      if (!p.bufs.empty() || p.sync_inflight) return progress;
      if (now < p.retry_at) return progress;
      if (!roll(p)) {
        schedule_retry(p, now);
        return progress;
      }
      progress = true;
    }
    if (p.err && now < p.retry_at) return progress;
    Buf* cur = (!p.bufs.empty() && p.bufs.back()->st == Buf::filling) ? p.bufs.back() : nullptr;
    const shm::RingRefs& r = p.r;
    bool drained = false;
    for (uint32_t n = 0; n < cfg.max_batch_records; ++n) {
      const uint64_t off = p.read_pos & r.mask();
      shm::FrameHeader* h = r.frame_at(p.read_pos);
      // SYNC(frame.commit) acquire: pairs with publish_commit(). The archiver is
      // tethered, so the frame cannot be overwritten before we release it.
      const uint64_t w = aref(h->commit).load(std::memory_order_acquire);
      if (w == 0) {
        drained = true;
        break;
      }
      const uint32_t len = shm::commit_length(w);
      const uint16_t type = shm::commit_type(w);
      if (len < 8 || (len & 7) || off + len > r.capacity ||
          (type == shm::kFrameData &&
           (len < shm::kFrameHeaderSize || h->payload_len > len - shm::kFrameHeaderSize)) ||
          (type != shm::kFrameData && type != shm::kFramePad)) {
        set_error(p, EBADMSG);  // a corrupt ring: stall (the daemon's reaper repairs or reports)
        drained = true;
        break;
      }
      if (type == shm::kFramePad) {
        p.read_pos += len;
        if (cur) cur->ring_end = p.read_pos;
        progress = true;
        continue;
      }
      // Copy the header once (the ring is written by publishers), check the copy.
      shm::FrameHeader hc = *h;
      hc.commit = w;
      if (hc.payload_len > len - shm::kFrameHeaderSize) {
        set_error(p, EBADMSG);
        drained = true;
        break;
      }
      const uint64_t seq = hc.sequence;
      if (seq <= p.log_last_seq) {
        set_error(p, EILSEQ);  // sequences must grow in the log; see next_sequence_after_log
        drained = true;
        break;
      }
      const uint32_t plen = hc.payload_len;
      // Appended to the batch being filled, or the first of a new batch (one per buffer).
      const bool can_append = cur && cur->batch.open();
      const uint32_t app = can_append ? cur->batch.next_size(p.read_pos, hc) : 0;
      const bool append = can_append && cur->fill + app <= cur->cap;
      const uint32_t rec = append ? app : BatchWriter::first_size(hc);
      if (p.fd < 0 || p.file_off + rec > p.cfg.segment_bytes) {
        if (p.fd < 0 || p.file_off > kFileHeaderSize) {
          p.roll_pending = true;
          p.roll_seq = seq;
          break;
        }
      }
      const std::byte* payload = reinterpret_cast<const std::byte*>(h) + shm::kFrameHeaderSize;
      if (append) {
        cur->batch.append(p.read_pos, hc, payload, plen);
      } else {
        if (cur) {
          // Direct I/O carries cur's partial last block into the next buffer, so that
          // one must be there. Without a free buffer cur is padded instead: a carried
          // buffer is acknowledged only with its successor, and a successor waiting
          // for a buffer that only its own completion frees would wait forever.
          if (submitted(p) >= max_sub) break;
          const bool next = can_get_buf(p, rec, cur->fill % kBlk);
          if (!submit_buf(cur, next)) break;
          progress = true;
          if (!next) break;
        }
        asked = true;
        cur = get_buf(p, rec);
        if (!cur) {
          p.starved = p.bufs.empty();
          break;
        }
        p.starved = false;
        const uint64_t foff = p.file_off;  // the batch starts here: index entries point at batches
        if (foff >= p.next_index) {
          cur->idx.push_back({seq, hc.timestamp_ns, foff});
          p.next_index = foff + p.cfg.index_interval;
        }
        cur->batch.begin(cur->data + cur->fill, p.read_pos, hc, payload, plen);
      }
      cur->fill += rec;
      if (!cur->first_seq) cur->first_seq = seq;
      cur->last_seq = seq;
      cur->last_ts = hc.timestamp_ns;
      ++cur->records;
      p.file_off += rec;
      p.total_bytes += rec;
      p.log_last_seq = seq;
      p.read_pos += len;
      cur->ring_end = p.read_pos;
      progress = true;
    }
    if (cur && cur->fill == cur->pre && cur->st == Buf::filling) {
      p.bufs.pop_back();  // only padding was read into it
      put_buf(cur);
      cur = nullptr;
    }
    // Submit a partial batch once the ring is drained (or a roll waits for it).
    if (cur && cur->fill > cur->pre && (drained || p.roll_pending) && submitted(p) < max_sub) {
      if (submit_buf(cur)) progress = true;
    }
    // Nothing staged or in flight: padding read so far can be released at once.
    if (p.bufs.empty() && p.read_pos > p.released) release_ring(p, p.read_pos);
    return progress;
  }

  void schedule_retry(Part& p, uint64_t now) {
    p.backoff = p.backoff ? std::min(p.backoff * 2, cfg.retry_max_ns) : cfg.retry_min_ns;
    p.retry_at = now + uint64_t(p.backoff);
  }

  // Acknowledges the completed prefix of p's buffers, in order.
  void complete(Part& p) {
    bool any = false;
    while (!p.bufs.empty()) {
      Buf* b = p.bufs.front();
      if (b->st != Buf::done || b->ops) break;
      if (b->carry && (p.bufs.size() < 2 || p.bufs[1]->st != Buf::done || p.bufs[1]->ops))
        break;  // its last block is written by the next buffer
      if (p.idx_fd >= 0 && !b->idx.empty()) {
        ssize_t n = ::write(p.idx_fd, b->idx.data(), b->idx.size() * sizeof(IndexEntry));
        (void)n;  // the index is a hint, rebuilt by recovery
      }
      p.written_seq = b->last_seq;
      if (p.cfg.flush != FlushPolicy::interval) p.durable_seq = b->last_seq;
      kick_writeback(p, b->file_off + b->fill);
      p.st.records += b->records;
      p.st.bytes += b->fill - b->pre;
      release_ring(p, b->ring_end);
      p.bufs.pop_front();
      put_buf(b);
      any = true;
    }
    if (any) {
      aref(p.r.data->archived_seq).store(p.written_seq, std::memory_order_relaxed);
      publish_durable(p, p.durable_seq);
      p.st.archived_seq = p.written_seq;
      p.st.durable_seq = p.durable_seq;
      if (p.err) set_error(p, 0);
      p.backoff = 0;
    }
  }

  int inject(IoOp op, int res) {
    uint64_t n = op_count[int(op)]++;
    if (res >= 0 && cfg.fault) {
      int e = cfg.fault(op, n);
      if (e) return -e;
    }
    return res;
  }

  Part* part_of(uint64_t id) { return id < parts.size() ? parts[id].get() : nullptr; }

  // none/interval: start writeback of every writeback_kick_bytes written
  // (SYNC_FILE_RANGE_WRITE, asynchronous, nothing waits for it), so dirty pages do
  // not pile up until the kernel throttles the writer, and the periodic fdatasync
  // finds little left to do. A hint: its result is ignored.
  void kick_writeback(Part& p, uint64_t end) {
    if (!cfg.writeback_kick_bytes || p.cfg.flush == FlushPolicy::batch || p.fd < 0 || p.direct) return;
    if (end < p.kick_from) p.kick_from = kFileHeaderSize;  // a new segment
    if (end - p.kick_from < cfg.writeback_kick_bytes || inflight + 1 > cfg.queue_depth) return;
    io_uring_sqe* s = io_uring_get_sqe(&ring);
    if (!s) return;
    const bool ff = fixed_files;
    io_uring_prep_sync_file_range(s, ff ? int(p.slot_index) : p.fd, unsigned(end - p.kick_from), p.kick_from,
                                  SYNC_FILE_RANGE_WRITE);
    if (ff) s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, tag(p.slot_index, kOpKick));
    ++inflight;
    p.kick_from = end;
  }

  void on_cqe(uint64_t data, int res, uint64_t now) {
    const uint64_t id = data >> 8, op = data & 0xff;
    --inflight;
    if (op == kOpKick) return;
    if (op == kOpIntervalSync) {
      Part* p = part_of(id);
      if (!p) return;
      p->sync_inflight = false;
      ++p->st.fsyncs;
      res = inject(IoOp::fsync, res);
      if (res < 0) {
        // Linux may have dropped the dirty pages: the bytes stay in the log file but
        // are not acknowledged; the next sync retries (docs/spill-log.md, "fsync errors").
        ++p->st.io_errors;
        set_error(*p, -res);
        schedule_retry(*p, now);
        return;
      }
      p->durable_seq = std::max(p->durable_seq, p->sync_target);
      p->st.durable_seq = p->durable_seq;
      publish_durable(*p, p->durable_seq);
      if (p->err && p->bufs.empty()) set_error(*p, 0);
      return;
    }
    Buf* b = id < bufs.size() ? bufs[id] : nullptr;
    if (!b || !b->part) return;
    Part& p = *b->part;
    --b->ops;
    if (op == kOpWrite) {
      ++p.st.writes;
      res = inject(IoOp::write, res);
      if (res < 0) {
        b->err = -res;
        b->st = Buf::failed;
        ++p.st.io_errors;
        set_error(p, -res);
        schedule_retry(p, now);
      } else {
        b->written += uint32_t(res);
        if (b->written < b->wlen) {
          b->st = Buf::failed;  // short write (e.g. the disk just filled): write the rest
          if (res == 0) {
            ++p.st.io_errors;  // nothing written: the disk is full
            set_error(p, ENOSPC);
            schedule_retry(p, now);
          }
        } else if (!b->want_sync) {
          b->st = Buf::done;
        }
      }
    } else if (op == kOpFsync) {
      ++p.st.fsyncs;
      if (res == -ECANCELED) {
        // The linked write failed or was short: the buffer is already marked failed.
        if (b->st == Buf::writing) b->st = Buf::failed;
      } else {
        res = inject(IoOp::fsync, res);
        if (res < 0) {
          // Write everything again, then sync again: the page cache may have lost it.
          b->written = 0;
          b->st = Buf::failed;
          ++p.st.io_errors;
          set_error(p, -res);
          schedule_retry(p, now);
        } else if (b->st == Buf::writing && b->written == b->wlen) {
          b->st = Buf::done;
        } else if (b->st == Buf::writing) {
          b->st = Buf::failed;
        }
      }
    }
    if (b->st == Buf::failed && b->ops == 0 && b->err == 0 && !p.err) p.retry_at = now;
    complete(p);
  }

  void reap(uint64_t now) {
    io_uring_cqe* cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      on_cqe(io_uring_cqe_get_data64(cqe), cqe->res, now);
      ++n;
    }
    if (n) io_uring_cq_advance(&ring, n);
  }

  void interval_sync(Part& p, uint64_t now) {
    if (p.cfg.flush != FlushPolicy::interval || p.sync_inflight || p.fd < 0) return;
    if (p.written_seq <= p.durable_seq || now < p.next_sync_ns) return;
    if (p.err && now < p.retry_at) return;
    if (inflight + 1 > cfg.queue_depth) return;
    io_uring_sqe* s = io_uring_get_sqe(&ring);
    if (!s) return;
    const bool ff = fixed_files;
    io_uring_prep_fsync(s, ff ? int(p.slot_index) : p.fd, IORING_FSYNC_DATASYNC);
    if (ff) s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, tag(p.slot_index, kOpIntervalSync));
    ++inflight;
    p.sync_inflight = true;
    p.sync_target = p.written_seq;  // covers the writes completed so far
    p.next_sync_ns = now + uint64_t(p.cfg.flush_interval_ms) * 1'000'000ull;
  }

  void take_pending() {
    std::vector<std::unique_ptr<Part>> v;
    std::vector<Removal> rm;
    {
      std::lock_guard<std::mutex> g(cmd_mu);
      v.swap(pending);
      rm.swap(removals);
      has_pending.store(false, std::memory_order_relaxed);
    }
    for (auto& p : v) install(std::move(p));
    for (auto& r : rm) mark_removal(r);
  }

  void publish_stats() {
    std::vector<PartitionStats> s;
    s.reserve(parts.size());
    for (auto& p : parts)
      if (!p->removed) s.push_back(p->st);
    std::lock_guard<std::mutex> g(cmd_mu);
    snapshot.swap(s);
  }

  // Waits for ring data (one partition: its futex) or a completion, bounded.
  void idle_wait() {
    if (inflight > 0) {
      io_uring_cqe* cqe;
      __kernel_timespec ts{0, 200'000};
      io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
      return;
    }
    int64_t t = cfg.idle_wait_ns;
    for (auto& p : parts) {
      if (p->removed) continue;
      if (p->removing) t = std::min<int64_t>(t, 1'000'000);
      if (p->err || p->roll_pending) t = std::min<int64_t>(t, 1'000'000);
      if (p->cfg.flush == FlushPolicy::interval && p->written_seq > p->durable_seq)
        t = std::min<int64_t>(t, int64_t(p->cfg.flush_interval_ms) * 1'000'000);
    }
    Part* first = nullptr;
    for (auto& pp : parts)
      if (!pp->removed) {
        first = pp.get();
        break;
      }
    if (!first) {
      timespec ts{0, long(std::min<int64_t>(t, 1'000'000))};
      nanosleep(&ts, nullptr);
      return;
    }
    if (active_parts() > 1) t = std::min<int64_t>(t, 1'000'000);
    Part& p = *first;
    // P6 from the reader side, through the one implementation (waiter bit,
    // membarrier, re-check, sleep).
    const uint32_t slot_index = uint32_t(p.slot - p.r.slots);
    {
      std::lock_guard<std::mutex> g(cmd_mu);  // published for wake_idle
      sleep_m = p.m;
      sleep_r = p.r;
    }
    shm::sleep_for_data(p.r, slot_index, t, [&] {
      return aref(p.r.frame_at(p.read_pos)->commit).load(std::memory_order_seq_cst) != 0 ||
             has_pending.load(std::memory_order_seq_cst) || stop_req.load(std::memory_order_seq_cst);
    });
    std::lock_guard<std::mutex> g(cmd_mu);
    sleep_m.reset();
  }

  // Wakes the archiver thread if it sleeps on a ring's data futex. Called from other
  // threads (the registry's): it must not look at `parts`, which only the archiver
  // thread reads and changes (a push_back reallocates it, a finalized partition unmaps
  // its ring). It wakes the ring the archiver published, under cmd_mu, before sleeping;
  // the mapping's shared_ptr keeps that ring mapped until the archiver takes it back.
  // No lost wake-up: the caller stored has_pending (or stop_req) first; if it finds
  // nothing published, the archiver publishes later and then checks the flags in
  // sleep_for_data's predicate (after cmd_mu, so it sees them).
  void wake_idle() {
    std::shared_ptr<PartitionMapping> m;
    shm::RingRefs r{};
    {
      std::lock_guard<std::mutex> g(cmd_mu);
      m = sleep_m;
      r = sleep_r;
    }
    if (m) shm::wake_all_data(r);
  }

  void debug_dump() {
    for (auto& p : parts) {
      fprintf(
          stderr,
          "part err=%d roll=%d rp=%lu rel=%lu bufs=%zu inflight=%u written=%lu durable=%lu retry_in=%ld\n",
          p->err, p->roll_pending, (unsigned long)p->read_pos, (unsigned long)p->released, p->bufs.size(),
          inflight, (unsigned long)p->written_seq, (unsigned long)p->durable_seq,
          (long)(int64_t(p->retry_at) - int64_t(shm::monotonic_ns())));
      for (Buf* b : p->bufs)
        fprintf(stderr, "  buf %u st=%d ops=%d fill=%u written=%u err=%d seq=%lu..%lu\n", b->id, b->st,
                b->ops, b->fill, b->written, b->err, (unsigned long)b->first_seq, (unsigned long)b->last_seq);
    }
  }

  void run(std::atomic<bool>& running) {
    uint64_t last_stats = 0;
    while (!stop_req.load(std::memory_order_acquire)) {
      if (has_pending.load(std::memory_order_acquire)) take_pending();
      uint64_t now = shm::monotonic_ns();
      reap(now);
      bool progress = false;
      for (auto& pp : parts) {
        Part& p = *pp;
        if (p.removed) continue;
        if (p.removing) {
          progress |= try_finalize(p);
          continue;
        }
        progress |= pump(p, now);
        interval_sync(p, now);
        if (now >= p.next_retention_ns) {
          retention(p);
          p.next_retention_ns = now + 1'000'000'000ull;
        }
        aref(p.r.data->archiver_heartbeat_ns).store(now, std::memory_order_relaxed);
        aref(p.slot->page.heartbeat_ns).store(now, std::memory_order_relaxed);
      }
      if (io_uring_sq_ready(&ring)) io_uring_submit(&ring);
      if (now - last_stats > 10'000'000) {
        publish_stats();
        last_stats = now;
        if (getenv("SHMBUS_SPILL_DEBUG")) debug_dump();
      }
      if (!progress) idle_wait();
    }
    drain();
    publish_stats();
    running.store(false, std::memory_order_release);
  }

  // Completes the I/O in flight (buffers must outlive the kernel's use of them).
  void drain() {
    for (int round = 0; round < 1000; ++round) {
      if (io_uring_sq_ready(&ring)) io_uring_submit(&ring);
      uint64_t now = shm::monotonic_ns();
      reap(now);
      bool work = inflight > 0;
      for (auto& p : parts) {
        if (p->removed || p->removing) continue;
        // Submit what is staged; failed writes get a few more tries.
        for (Buf* b : p->bufs)
          if ((b->st == Buf::filling && b->fill > b->pre) || (b->st == Buf::failed && b->ops == 0)) {
            if (round < 100 && submit_buf(b)) work = true;
          }
      }
      if (io_uring_sq_ready(&ring)) io_uring_submit(&ring);
      if (!work) break;
      io_uring_cqe* cqe;
      __kernel_timespec ts{0, 10'000'000};
      io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
    }
    for (auto& p : parts) {
      if (p->removing) try_finalize(*p);
      if (p->removed) continue;
      // Direct I/O pads the last block: a clean stop leaves the file at its logical end.
      if (p->direct && p->fd >= 0 && p->bufs.empty()) (void)::ftruncate(p->fd, off_t(p->file_off));
      if (p->cfg.flush == FlushPolicy::interval && p->fd >= 0 && p->written_seq > p->durable_seq &&
          ::fdatasync(p->fd) == 0) {
        p->durable_seq = p->written_seq;
        publish_durable(*p, p->durable_seq);
      }
      p->st.durable_seq = p->durable_seq;
      // What is staged but not written (a write that kept failing, a buffer behind it)
      // stays in p->bufs as it is: its frames were never released, so a new archiver
      // re-reads them from the ring, and a start() of this one retries and fills them
      // where they are (read_pos and file_off are past them: dropping them would stall
      // the acknowledgements behind them for good).
    }
  }
};

Archiver::Archiver(ArchiverConfig cfg) : impl_(std::make_unique<Impl>(std::move(cfg))) {}

Archiver::~Archiver() { stop(); }

void Archiver::add_partition(std::shared_ptr<PartitionMapping> m, const LogConfig& cfg) {
  if (!m) throw Error(ErrorCode::invalid_argument, "add_partition: no mapping");
  if (cfg.state_dir.empty()) throw Error(ErrorCode::invalid_argument, "add_partition: empty state_dir");
  auto p = impl_->attach(std::move(m), cfg);
  if (running()) {
    {
      std::lock_guard<std::mutex> g(impl_->cmd_mu);
      impl_->pending.push_back(std::move(p));
      impl_->has_pending.store(true, std::memory_order_release);
    }
    impl_->wake_idle();  // takes cmd_mu itself
  } else {
    impl_->install(std::move(p));
  }
}

void Archiver::remove_partition(const std::string& topic, uint32_t partition) {
  auto done = std::make_shared<std::promise<void>>();
  auto f = done->get_future();
  if (!running()) {
    impl_->mark_removal({topic, partition, done});
    for (auto& p : impl_->parts) impl_->try_finalize(*p);  // nothing is in flight when stopped
    return;
  }
  {
    std::lock_guard<std::mutex> g(impl_->cmd_mu);
    impl_->removals.push_back({topic, partition, done});
    impl_->has_pending.store(true, std::memory_order_release);
  }
  impl_->wake_idle();
  if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready)
    throw Error(ErrorCode::timed_out, "topic '" + topic + "' partition " + std::to_string(partition) +
                                          ": the archiver did not finish its I/O within 30 s");
}

void Archiver::start() {
  if (running()) return;
  const uint32_t me = uint32_t(getpid());
  for (auto& p : impl_->parts) {
    if (p->removed) continue;
    const std::string what = "topic '" + p->st.topic + "' partition " + std::to_string(p->st.partition);
    if (!p->slot)
      throw Error(ErrorCode::invalid_argument, "Archiver::start: stopped with leave_cursors, " + what +
                                                   " has no cursor any more; archive it with a new Archiver");
    // Another archiver adopted the cursor while this one was stopped (it recovered the
    // log and may have written over what this one still has staged): resuming would
    // rewrite its acknowledged records and archive one cursor twice.
    if (!Impl::owns_slot(*p))
      throw Error(ErrorCode::invalid_argument, "Archiver::start: the cursor of " + what +
                                                   " was taken over by another archiver; archive it with a "
                                                   "new Archiver");
  }
  for (auto& p : impl_->parts)
    if (!p->removed) aref(p->r.data->archiver_pid).store(me, std::memory_order_relaxed);  // stop() cleared it
  impl_->stop_req.store(false, std::memory_order_release);
  running_.store(true, std::memory_order_release);
  thread_ = std::thread([this] { impl_->run(running_); });
}

void Archiver::stop(bool leave_cursors) {
  if (thread_.joinable()) {
    impl_->stop_req.store(true, std::memory_order_release);
    impl_->wake_idle();
    thread_.join();
  }
  running_.store(false, std::memory_order_release);
  for (auto& p : impl_->parts) {
    // A cursor another archiver adopted is that one's: its pid and slot stay as they are.
    if (p->removed || !Impl::owns_slot(*p)) continue;
    aref(p->r.data->archiver_pid).store(0, std::memory_order_relaxed);
    if (leave_cursors) {
      aref(p->slot->state).store(shm::kSlotFree, std::memory_order_seq_cst);
      shm::wake_space_page(&p->slot->page);
      p->slot = nullptr;
    }
  }
}

std::vector<PartitionStats> Archiver::stats() const {
  if (!running()) {
    std::vector<PartitionStats> s;
    for (auto& p : impl_->parts)
      if (!p->removed) s.push_back(p->st);
    return s;
  }
  std::lock_guard<std::mutex> g(impl_->cmd_mu);
  return impl_->snapshot;
}

uint64_t next_sequence_after_log(const std::string& state_dir, const std::string& topic, uint32_t partition) {
  wait_direct_writes(partition_dir(state_dir, topic, partition));  // see there
  std::string dir = partition_dir(state_dir, topic, partition);
  std::vector<SegmentInfo> segs = list_segments(dir);
  for (size_t i = segs.size(); i-- > 0;) {
    ScanResult s = scan_segment(segs[i].path, 1ull << 40);
    if (s.records) return s.last_seq + 1;
  }
  return 0;
}

}  // namespace shmbus::spill
