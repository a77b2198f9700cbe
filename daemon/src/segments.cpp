// Segment lifecycle: every segment of a daemon-mode partition is a sealed memfd (mode
// 0600, the daemon's uid, no name in /dev/shm, its size fixed for good); clients
// receive new open file descriptions of them over the control socket (SCM_RIGHTS).
// The data and control segments are held by the segment keeper (keeper.cpp) so that
// a restarted daemon re-attaches them; the wake segment and the cursor pages are taken
// back from the clients that hold them.
#include <atomic>
#include <cerrno>
#include <dirent.h>
#include <set>
#include <sys/syscall.h>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <tuple>
#include <utility>

#include "core.hpp"

namespace shmbus::daemon {

std::string shm_segment_name(const std::string& prefix, const std::string& topic, uint32_t p, bool data) {
  return prefix + "." + topic + "." + std::to_string(p) + (data ? ".data" : ".ctl");
}

Partition::~Partition() {
  if (data_map) munmap(data_map, data_size);
  if (ctl_map) munmap(ctl_map, ctl_size);
  if (wake_map) munmap(wake_map, shm::kWakeSegmentSize);
  for (auto& [id, pg] : pages) munmap(pg, shm::kCursorPageSize);
  for (auto& [id, f] : page_fds) close(f);
  for (int f : {data_fd, ctl_fd, wake_fd})
    if (f >= 0) close(f);
}

namespace {

void* map_fd(int fd, size_t n, const std::string& name) {
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    throw Error(ErrorCode::system, name + ": mmap: " + strerror(e), e);
  }
  return p;
}

// Re-attach check: the existing data segment must be ours, of this layout and of the
// registry's settings; otherwise the caller recreates them. Only the data segment's
// identity counts. The control segment's identity line is restored from the
// registry instead (clients map it read-only since the segments are memfds; before,
// any subscriber could write it, and a flipped magic made a restart recreate the
// topic empty); its size was checked against the registry by the caller.
bool matches(const Partition& p, const TopicSettings& t) {
  auto* d = static_cast<const shm::DataHeader*>(p.data_map);
  uint32_t v = std::atomic_ref<const uint32_t>(d->layout_version).load(std::memory_order_acquire);
  uint64_t maxp = t.max_payload ? t.max_payload : t.capacity / 4;
  if (!(d->magic == shm::kDataMagic && v == shm::kLayoutVersion && d->capacity == t.capacity &&
        d->max_payload == maxp && bool(d->flags & shm::kFlagMultiProducer) == t.multi_producer &&
        d->policy == t.policy))
    return false;
  shm::restore_control_identity(static_cast<shm::ControlHeader*>(p.ctl_map), t.capacity, t.slots);
  return true;
}

// Every segment reaches some client O_RDWR (the data segment: publishers; the wake
// segment and cursor pages: subscribers): a tmpfs file could then be ftruncate()d
// under the daemon's and the other clients' mappings (SIGBUS in all of them, the
// daemon included). They are sealed memfds instead: no name in /dev/shm, 0600 (so a
// read-only fd cannot be reopened writable through /proc by another uid), their size
// fixed for good (F_SEAL_SHRINK | F_SEAL_GROW, then F_SEAL_SEAL). Not F_SEAL_WRITE:
// publishers and subscribers write them.
constexpr int kSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

// Every page reserved now (posix_fallocate), so a shortage of shared memory is an
// error here and never a SIGBUS later, in the daemon or a client, when a page is first
// touched.
int make_sealed(const char* name, size_t size) {
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  int e = 0;
  if (fchmod(fd, 0600) < 0 || ftruncate(fd, off_t(size)) < 0)
    e = errno;
  else if ((e = posix_fallocate(fd, 0, off_t(size))) == 0 && fcntl(fd, F_ADD_SEALS, kSeals) < 0)
    e = errno;
  if (e) {
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// fd is one of our sealed memfds of `size` bytes (created by this uid: another
// user cannot make a file owned by us).
bool ours_sealed(int fd, size_t size, ino_t& ino) {
  struct stat st {};
  if (fstat(fd, &st) < 0 || st.st_uid != geteuid() || !S_ISREG(st.st_mode) || uint64_t(st.st_size) != size)
    return false;
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & kSeals) != kSeals) return false;
  ino = st.st_ino;
  return true;
}

// A new open file description of our fd (its own flags), O_RDONLY or O_RDWR.
int reopen_own(int fd, bool writable) {
  if (fd < 0) {
    errno = ESTALE;
    return -1;
  }
  return open(("/proc/self/fd/" + std::to_string(fd)).c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
}

void* map_page_fd(int fd, size_t size) {
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return m == MAP_FAILED ? nullptr : m;
}

// After a restart: the sealed memfds the previous daemon made (their inode numbers
// are in its control segments, which only it wrote) are taken back from a live
// client that holds them (pidfd_getfd; a client keeps its wake and page fds open).
//
// A restart walks each process's fd table once, for all the partitions (a grantee
// with ~19 000 fds and 256 grants stalled a restart for 52 s when each partition
// walked it again). The walk takes no descriptor: it notes, by inode, the fd number
// of each memfd of ours of a page's or the wake segment's size (stat through
// /proc/<pid>/fd), and only a memfd a partition waits for is taken (pidfd_getfd),
// checked (ours, sealed, that size, that inode) and kept. Before, every such memfd
// was taken and held until the take-back ended: a grantee keeping 12 000 pages of
// grants it had left ran a restarted daemon out of descriptors.
//
// The walk is bounded per uid (not root, not the daemon's uid): at most `budget` fd
// entries over all of the uid's processes. Beyond, its grants are not taken back
// (their subscribers are told: `lapped`, as without CAP_SYS_PTRACE); the counts are
// logged (memfds_taken_back, takeback_budget).
struct TakeBack {
  TakeBackStats stats;
  uint64_t budget = 0;                         // fd entries walked per uid; 0: unbounded
  std::map<pid_t, std::map<ino_t, int>> held;  // walked processes: inode -> its fd number there
  std::map<uid_t, uint64_t> walked;            // fd entries walked, by uid
  std::map<uid_t, uint64_t> over;              // processes not walked (or cut short), by uid
};
thread_local TakeBack* t_takeback = nullptr;  // between takeback_begin and takeback_end
std::atomic<uint64_t> g_uid_budget{0};        // for take-backs outside a restart's

// The real uid of `pid` (/proc/<pid>/status: /proc/<pid> itself is root's when the
// process made itself non-dumpable).
bool proc_uid(pid_t pid, uid_t& uid) {
  FILE* f = fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "re");
  if (!f) return false;
  char line[256];
  bool ok = false;
  while (fgets(line, sizeof line, f))
    if (std::strncmp(line, "Uid:", 4) == 0) {
      char* end = nullptr;
      const unsigned long v = strtoul(line + 4, &end, 10);
      ok = end != line + 4;
      uid = uid_t(v);
      break;
    }
  fclose(f);
  return ok;
}

void walk_memfds(pid_t pid, std::map<ino_t, int>& found, TakeBack& tb) {
  uid_t uid = 0;
  if (!proc_uid(pid, uid)) return;
  const bool bounded = tb.budget != 0 && uid != 0 && uid != geteuid();
  uint64_t& used = tb.walked[uid];
  if (bounded && used >= tb.budget) {
    ++tb.over[uid];
    return;
  }
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!d) return;
  ++tb.stats.walks;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    const long n = strtol(e->d_name, &end, 10);
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || *end) continue;
    if (bounded && ++used > tb.budget) {
      ++tb.over[uid];
      break;
    }
    ++tb.stats.fds;
    char link[64];
    const ssize_t l = readlinkat(dirfd(d), e->d_name, link, sizeof link - 1);
    if (l < 13 || std::memcmp(link, "/memfd:shmbus", 13) != 0) continue;
    // A partition's data or control segment (any size: the caller checks it against
    // the topic's), a cursor page or the wake segment.
    const bool segment = (l >= 19 && std::memcmp(link, "/memfd:shmbus-data:", 19) == 0) ||
                         (l >= 18 && std::memcmp(link, "/memfd:shmbus-ctl:", 18) == 0);
    struct stat st {};
    if (fstatat(dirfd(d), e->d_name, &st, 0) < 0 || st.st_uid != geteuid() || !S_ISREG(st.st_mode) ||
        (!segment && uint64_t(st.st_size) != shm::kCursorPageSize &&
         uint64_t(st.st_size) != shm::kWakeSegmentSize))
      continue;
    found.try_emplace(st.st_ino, int(n));
  }
  closedir(d);
}

[[noreturn]] void out_of_fds(pid_t pid, int e) {
  throw Error(ErrorCode::system,
              "cannot take back a memfd from pid " + std::to_string(pid) + ": " + strerror(e) +
                  " (the topic is kept and restored later)",
              e);
}

// The wanted memfds `pid` holds, into `got` (inode -> fd, ours now). Throws Error
// when the daemon is out of descriptors (the topic's restore fails and is retried:
// never a grant freed for want of an fd of ours).
void take_memfds(pid_t pid, const std::map<ino_t, size_t>& want, std::map<ino_t, int>& got, TakeBack& tb) {
  auto [h, fresh] = tb.held.try_emplace(pid);
  if (fresh) walk_memfds(pid, h->second, tb);
  int pfd = -1;
  for (auto& [ino, size] : want) {
    auto it = h->second.find(ino);
    if (it == h->second.end() || got.count(ino)) continue;
    const int n = it->second;
    h->second.erase(it);
    if (pfd < 0 && (pfd = int(syscall(SYS_pidfd_open, pid, 0))) < 0) {
      if (errno == EMFILE || errno == ENFILE) out_of_fds(pid, errno);
      return;
    }
    const int fd = int(syscall(SYS_pidfd_getfd, pfd, n, 0));
    ++tb.stats.getfd;
    if (fd < 0) {
      const int e = errno;
      if (e == EMFILE || e == ENFILE) close(pfd), out_of_fds(pid, e);
      continue;
    }
    ino_t ino2 = 0;
    if (!ours_sealed(fd, size, ino2) || ino2 != ino) {  // the fd number holds another file now
      close(fd);
      continue;
    }
    // Our own open file description, read-write (the client's may be read-only: a
    // producer's fd of a page or of the wake segment).
    const int own = reopen_own(fd, true);
    const int e = errno;
    close(fd);
    if (own < 0) close(pfd), out_of_fds(pid, e);
    got[ino] = own;
  }
  if (pfd >= 0) close(pfd);
}

// A partition's data and control memfds, of the inodes the registry recorded, taken
// back from any live process that holds them (a client keeps both open while it maps
// the partition): the keeper died with the previous daemon. Every process's fd table
// is walked once per take-back (bounded per uid, as for the pages). d and c are -1
// when no process holds them (then no live client maps the old partition).
void take_back_segments(const KnownSegments& known, size_t dsize, size_t csize, int& d, int& c) {
  std::map<ino_t, size_t> want{{ino_t(known.data_ino), dsize}, {ino_t(known.ctl_ino), csize}};
  std::map<ino_t, int> got;
  TakeBack local;
  local.budget = g_uid_budget.load(std::memory_order_relaxed);
  TakeBack& tb = t_takeback ? *t_takeback : local;
  if (DIR* procs = opendir("/proc")) {
    const pid_t self = getpid();
    try {
      while (dirent* e = readdir(procs)) {
        char* end = nullptr;
        const long pid = strtol(e->d_name, &end, 10);
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || *end || pid_t(pid) == self) continue;
        take_memfds(pid_t(pid), want, got, tb);
        if (got.size() == want.size()) break;
      }
    } catch (...) {
      closedir(procs);
      for (auto& [ino, fd] : got) close(fd);
      throw;
    }
    closedir(procs);
  }
  auto fd_of = [&](uint64_t ino) {
    auto it = got.find(ino_t(ino));
    if (it == got.end()) return -1;
    const int fd = it->second;
    got.erase(it);
    return fd;
  };
  d = fd_of(known.data_ino);
  c = fd_of(known.ctl_ino);
  for (auto& [ino, fd] : got) close(fd);
}

// The wake segment (layout 3), and the pages of the grants recorded in the control
// segment (a restarted daemon takes them back from their grantees; a live grant
// whose page is gone is freed; a parked one keeps its position in join_position).
void attach_wake_and_pages(Partition& p, bool reattach) {
  auto* ctl = static_cast<shm::ControlHeader*>(p.ctl_map);
  const shm::RingRefs& r = p.refs;
  std::map<ino_t, int> got;
  struct CloseRest {  // what no slot took, also when this throws
    std::map<ino_t, int>& m;
    ~CloseRest() {
      for (auto& [ino, fd] : m) close(fd);
    }
  } close_rest{got};
  const uint64_t old_wake = reattach ? shm::aref(ctl->wake_id).load(std::memory_order_relaxed) : 0;
  if (reattach) {
    std::map<ino_t, size_t> want;
    std::set<pid_t> pids;
    if (old_wake) want[ino_t(old_wake)] = shm::kWakeSegmentSize;
    for (uint32_t i = 0; i < r.slot_count; ++i) {
      shm::CursorSlot& s = r.slots[i];
      if (shm::aref(s.state).load(std::memory_order_acquire) != shm::kSlotActive ||
          (shm::aref(s.flags).load(std::memory_order_relaxed) & shm::kSlotEmbedded))
        continue;
      const uint32_t owner = shm::owner_pid(shm::aref(s.pid).load(std::memory_order_acquire));
      const uint64_t id = shm::aref(s.page_id).load(std::memory_order_relaxed);
      if (owner && id) want[ino_t(id)] = shm::kCursorPageSize, pids.insert(pid_t(owner));
    }
    // Outside a restart's take-back (a create that found a previous daemon's
    // segments), a take-back of its own.
    TakeBack local;
    local.budget = g_uid_budget.load(std::memory_order_relaxed);
    for (pid_t pid : pids) take_memfds(pid, want, got, t_takeback ? *t_takeback : local);
  }
  if (auto w = got.find(ino_t(old_wake)); old_wake && w != got.end()) {
    if (t_takeback) ++t_takeback->stats.taken;
    p.wake_fd = w->second;
    got.erase(w);
  } else {
    p.wake_fd = make_sealed("shmbus-wake", shm::kWakeSegmentSize);
    if (p.wake_fd < 0)
      throw Error(ErrorCode::system, p.ctl_name + ": cannot create the wake segment: " + strerror(errno));
  }
  ino_t wino = 0;
  if (!ours_sealed(p.wake_fd, shm::kWakeSegmentSize, wino) ||
      !(p.wake_map = map_page_fd(p.wake_fd, shm::kWakeSegmentSize)))
    throw Error(ErrorCode::system, p.ctl_name + ": cannot map the wake segment: " + strerror(errno));
  shm::aref(ctl->wake_id).store(uint64_t(wino), std::memory_order_relaxed);
  p.refs.wake = static_cast<shm::WakeBlock*>(p.wake_map);
  p.refs.shared_wake = true;
  if (reattach) {
    for (uint32_t i = 0; i < r.slot_count; ++i) {
      shm::CursorSlot& s = r.slots[i];
      const uint32_t st = shm::aref(s.state).load(std::memory_order_acquire);
      if (st == shm::kSlotFree || (shm::aref(s.flags).load(std::memory_order_relaxed) & shm::kSlotEmbedded))
        continue;
      const uint64_t id = shm::aref(s.page_id).load(std::memory_order_relaxed);
      auto g = got.find(ino_t(id));
      void* m = (st == shm::kSlotActive && id && g != got.end())
                    ? map_page_fd(g->second, shm::kCursorPageSize)
                    : nullptr;
      if (m) {
        if (t_takeback) ++t_takeback->stats.taken;
        p.pages[id] = static_cast<shm::CursorPage*>(m);
        p.page_fds[id] = g->second;
        got.erase(g);
      } else if (const uint32_t owner = shm::owner_pid(shm::aref(s.pid).load(std::memory_order_acquire));
                 st == shm::kSlotActive && shm::aref(s.name_hash).load(std::memory_order_relaxed) != 0 &&
                 (owner == 0 || !shm::process_alive(owner))) {
        // Parked (its position was saved in join_position when it was parked), or
        // its owner died while no daemon ran: parked at the position it last had.
        shm::aref(s.page_id).store(0, std::memory_order_relaxed);
        if (owner) {
          shm::aref(r.wake->data_waiter_bits[i / 64])
              .fetch_and(~(uint64_t(1) << (i % 64)), std::memory_order_seq_cst);
          shm::aref(s.parked_ns).store(shm::monotonic_ns(), std::memory_order_relaxed);
          shm::aref(s.pid).store(0, std::memory_order_release);
        }
      } else {
        shm::aref(s.state).store(shm::kSlotFree, std::memory_order_seq_cst);  // a grant we cannot serve
        shm::wake_all_space(r);
      }
    }
  }
}

void bind_refs(Partition& p) {
  if (const char* why = shm::bind_ring(p.data_map, p.data_size, p.ctl_map, p.ctl_size, p.refs))
    throw Error(ErrorCode::incompatible, "segment of partition " + std::to_string(p.index) + ": " + why);
}

}  // namespace

void takeback_begin(uint64_t uid_budget) {
  delete t_takeback;
  t_takeback = new TakeBack;
  t_takeback->budget = uid_budget;
  g_uid_budget.store(uid_budget, std::memory_order_relaxed);
}

TakeBackStats takeback_end() {
  TakeBackStats st;
  if (t_takeback) {
    st = t_takeback->stats;
    for (auto& [uid, n] : t_takeback->over) st.over[uid] = {n, t_takeback->walked[uid]};
  }
  delete t_takeback;  // holds no descriptor: nothing to close
  t_takeback = nullptr;
  return st;
}

std::shared_ptr<Partition> open_partition(SegmentKeeper& keeper, const TopicSettings& t, uint32_t idx,
                                          bool& reattached, KnownSegments known) {
  auto p = std::make_shared<Partition>();
  p->topic = t.name;
  p->index = idx;
  p->data_name = keeper_name(t.name, idx, true);
  p->ctl_name = keeper_name(t.name, idx, false);
  p->data_size = shm::data_segment_size(t.capacity);
  p->ctl_size = shm::control_segment_size(t.slots);
  reattached = false;
  // 1. Re-attach the segments the keeper kept for a previous daemon (clients may map
  //    them): ours, sealed, of this topic's sizes, and either the inodes the registry
  //    recorded (their identity lines are then restored) or the data header matching.
  //    When the keeper lost them (it died too), a live client that maps the partition
  //    holds them: taken back from it, so that the topic is not re-created empty under
  //    its live clients (they would go on in a ring nobody new reads).
  {
    int d = keeper.take(p->data_name), c = keeper.take(p->ctl_name);
    bool from_keeper = true;
    if ((d < 0 || c < 0) && known.data_ino && known.ctl_ino) {
      if (d >= 0) close(d);
      if (c >= 0) close(c);
      take_back_segments(known, p->data_size, p->ctl_size, d, c);
      from_keeper = false;
    }
    ino_t dino = 0, cino = 0;
    if (d >= 0 && c >= 0 && ours_sealed(d, p->data_size, dino) && ours_sealed(c, p->ctl_size, cino)) {
      p->data_fd = d;
      p->ctl_fd = c;
      try {
        p->data_map = map_fd(d, p->data_size, p->data_name);
        p->ctl_map = map_fd(c, p->ctl_size, p->ctl_name);
        const bool recorded =
            known.data_ino && uint64_t(dino) == known.data_ino && uint64_t(cino) == known.ctl_ino;
        if (recorded) {
          const uint64_t maxp = t.max_payload ? t.max_payload : t.capacity / 4;
          shm::restore_data_identity(static_cast<shm::DataHeader*>(p->data_map), t.capacity,
                                     t.multi_producer ? shm::kFlagMultiProducer : 0u, t.policy, idx,
                                     t.schema_id, maxp);
          shm::restore_control_identity(static_cast<shm::ControlHeader*>(p->ctl_map), t.capacity, t.slots);
        }
        if (recorded || matches(*p, t)) {
          bind_refs(*p);
          attach_wake_and_pages(*p, true);
          p->data_ino = uint64_t(dino);
          p->ctl_ino = uint64_t(cino);
          // The keeper holds them already, or (taken back from a client) is fed now.
          keeper.put(p->data_name, p, from_keeper ? -1 : p->data_fd);
          keeper.put(p->ctl_name, p, from_keeper ? -1 : p->ctl_fd);
          reattached = true;
          return p;
        }
      } catch (...) {
        // The topic is not restored now (out of fds, ...): its contents are kept for
        // a later try (see Registry::restore_topic).
        keeper.give_back(p->data_name, std::exchange(p->data_fd, -1));
        keeper.give_back(p->ctl_name, std::exchange(p->ctl_fd, -1));
        throw;
      }
      munmap(p->data_map, p->data_size);
      munmap(p->ctl_map, p->ctl_size);
      p->data_map = p->ctl_map = nullptr;
      p->data_fd = p->ctl_fd = -1;
    }
    if (d >= 0) close(d);
    if (c >= 0) close(c);
  }
  // 2. Create fresh (the keeper replaces what it held under these names).
  const std::string tag = (t.name + "." + std::to_string(idx)).substr(0, 200);
  for (auto [fd, size, kind] : {std::tuple{&p->ctl_fd, p->ctl_size, "shmbus-ctl:"},
                                std::tuple{&p->data_fd, p->data_size, "shmbus-data:"}}) {
    if ((*fd = make_sealed((kind + tag).c_str(), size)) < 0) {
      const int e = errno;
      throw Error(ErrorCode::system,
                  "partition " + std::to_string(idx) + " of '" + t.name + "': cannot make a " +
                      std::to_string(size) + "-byte shared memory segment: " + strerror(e),
                  e);
    }
  }
  p->data_map = map_fd(p->data_fd, p->data_size, p->data_name);
  p->ctl_map = map_fd(p->ctl_fd, p->ctl_size, p->ctl_name);
  {
    ino_t ino = 0;
    if (ours_sealed(p->data_fd, p->data_size, ino)) p->data_ino = uint64_t(ino);
    if (ours_sealed(p->ctl_fd, p->ctl_size, ino)) p->ctl_ino = uint64_t(ino);
  }
  uint64_t maxp = t.max_payload ? t.max_payload : t.capacity / 4;
  shm::init_segments(static_cast<shm::DataHeader*>(p->data_map), static_cast<shm::ControlHeader*>(p->ctl_map),
                     t.capacity, t.slots, t.multi_producer ? shm::kFlagMultiProducer : 0u, t.policy, idx,
                     t.schema_id, maxp, realtime_ns());
  bind_refs(*p);
  attach_wake_and_pages(*p, false);
  keeper.put(p->data_name, p, p->data_fd);
  keeper.put(p->ctl_name, p, p->ctl_fd);
  return p;
}

int reopen_segment(const Partition& p, bool data, bool writable) {
  return reopen_own(data ? p.data_fd : p.ctl_fd, writable);
}

int reopen_wake(const Partition& p, bool writable) { return reopen_own(p.wake_fd, writable); }

shm::CursorPage* Partition::page_of(uint32_t i) {
  if (i >= refs.slot_count) return nullptr;
  const uint64_t id = shm::aref(refs.slots[i].page_id).load(std::memory_order_relaxed);
  auto it = pages.find(id);
  return it == pages.end() ? nullptr : it->second;
}

// A page's id is its memfd's inode number (unique among live files; a restarted
// daemon finds the page by it).
uint64_t create_page(Partition& p, int& fd) {
  const int own = make_sealed("shmbus-page", shm::kCursorPageSize);
  ino_t ino = 0;
  void* m = nullptr;
  if (own < 0 || !ours_sealed(own, shm::kCursorPageSize, ino) ||
      !(m = map_page_fd(own, shm::kCursorPageSize)) || (fd = reopen_own(own, true)) < 0) {
    const int e = errno;
    if (m) munmap(m, shm::kCursorPageSize);
    if (own >= 0) close(own);
    fd = -1;
    throw Error(ErrorCode::system, p.ctl_name + ": cannot make a cursor page: " + strerror(e), e);
  }
  p.pages[uint64_t(ino)] = static_cast<shm::CursorPage*>(m);
  p.page_fds[uint64_t(ino)] = own;
  return uint64_t(ino);
}

void drop_page(Partition& p, uint64_t id) {
  auto it = p.pages.find(id);
  if (it == p.pages.end()) return;
  munmap(it->second, shm::kCursorPageSize);
  p.pages.erase(it);
  auto f = p.page_fds.find(id);
  if (f != p.page_fds.end()) close(f->second), p.page_fds.erase(f);
}

void release_deleted(Partition& p) {
  // FALLOC_FL_PUNCH_HOLE frees the pages without changing the size (the seals forbid
  // that): a client still mapping the segment reads zeros there ("nothing
  // committed") and no SIGBUS; a page it writes again is allocated for it, charged
  // to its own memory cgroup, not the daemon's. The data header and producer table
  // (kRingOffset) stay: producers sleeping on a durable acknowledgement keep their
  // futex word.
  constexpr int kPunch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  if (p.data_fd >= 0 && p.data_size > shm::kRingOffset &&
      fallocate(p.data_fd, kPunch, off_t(shm::kRingOffset), off_t(p.data_size - shm::kRingOffset)) < 0)
    log_event("", LOG_WARN, "release_failed", p.topic, 0, std::string("punch: ") + strerror(errno));
  std::lock_guard<std::mutex> g(p.pages_mu);
  for (auto& [id, fd] : p.page_fds) fallocate(fd, kPunch, 0, off_t(shm::kCursorPageSize));
}

int reopen_page(const Partition& p, uint64_t id, bool writable) {
  auto f = p.page_fds.find(id);
  return reopen_own(f == p.page_fds.end() ? -1 : f->second, writable);
}

void remove_partition_segments(SegmentKeeper& keeper, const std::string& prefix, const std::string& topic,
                               uint32_t p) {
  keeper.drop(keeper_name(topic, p, true));
  keeper.drop(keeper_name(topic, p, false));
  // Named segments of versions before the memfds (and of 3.0 stage 1's wake).
  shm_unlink(("/" + prefix + "." + topic + "." + std::to_string(p) + ".wake").c_str());
  shm_unlink(("/" + shm_segment_name(prefix, topic, p, true)).c_str());
  shm_unlink(("/" + shm_segment_name(prefix, topic, p, false)).c_str());
}

}  // namespace shmbus::daemon
