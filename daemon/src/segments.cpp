// Segment lifecycle: create with Boost.Interprocess (mode 0600, the daemon's uid),
// re-attach after a daemon restart, remove on topic deletion. Clients never open
// these names: they receive fds over the control socket (SCM_RIGHTS).
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <boost/interprocess/shared_memory_object.hpp>

#include "core.hpp"

namespace bip = boost::interprocess;

namespace shmbus::daemon {

std::string shm_segment_name(const std::string& prefix, const std::string& topic, uint32_t p,
                             bool data) {
  return prefix + "." + topic + "." + std::to_string(p) + (data ? ".data" : ".ctl");
}

Partition::~Partition() {
  if (data_map) munmap(data_map, data_size);
  if (ctl_map) munmap(ctl_map, ctl_size);
  if (wake_map) munmap(wake_map, shm::kWakeSegmentSize);
  for (auto& [id, pg] : pages) munmap(pg, shm::kCursorPageSize);
  for (int f : {data_rw, data_ro, ctl_fd})
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
// identity counts: subscribers cannot write it. The control segment's identity line
// (any subscriber can write it) is restored from the registry instead, so a
// subscriber that flipped its magic cannot make a restarted daemon recreate the
// topic empty; its size was checked against the registry by the caller.
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

// The segments stay mapped; their fds are closed (a daemon with 10 000 topics would
// otherwise hold 30 000 fds). OPEN reopens them by name and checks the inode.
void release_fds(Partition& p) {
  struct stat st{};
  if (fstat(p.data_rw, &st) == 0) p.dev = st.st_dev, p.data_ino = st.st_ino;
  if (fstat(p.ctl_fd, &st) == 0) p.ctl_ino = st.st_ino;
  for (int* f : {&p.data_rw, &p.data_ro, &p.ctl_fd})
    if (*f >= 0) close(*f), *f = -1;
}

std::string page_name(const Partition& p, uint64_t id) {
  char b[24];
  snprintf(b, sizeof b, ".%016llx", static_cast<unsigned long long>(id));
  return p.ctl_name + b;
}

// Opens (or, `create`, makes) a daemon-owned segment of `size` bytes, mapped read-write.
void* open_own_segment(const std::string& name, size_t size, bool create, ino_t& ino) {
  int fd = shm_open(("/" + name).c_str(), (create ? O_CREAT | O_EXCL : 0) | O_RDWR | O_NOFOLLOW | O_CLOEXEC,
                    0600);
  if (fd < 0) return nullptr;
  struct stat st{};
  if (fstat(fd, &st) < 0 || st.st_uid != geteuid() || (!create && uint64_t(st.st_size) != size)) {
    close(fd);
    return nullptr;
  }
  if (create) {
    fchmod(fd, 0600);
    if (posix_fallocate(fd, 0, off_t(size)) != 0) {
      close(fd);
      shm_unlink(("/" + name).c_str());
      return nullptr;
    }
  }
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return nullptr;
  ino = st.st_ino;
  if (create) {
    struct stat s2{};
    int f2 = shm_open(("/" + name).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0);
    if (f2 >= 0 && fstat(f2, &s2) == 0) ino = s2.st_ino;
    if (f2 >= 0) close(f2);
  }
  return m;
}

// The wake segment (layout 3), and the pages of the grants recorded in the control
// segment (a restarted daemon re-maps them; a grant whose page is gone is freed).
void attach_wake_and_pages(Partition& p, bool reattach) {
  p.wake_name = p.data_name.substr(0, p.data_name.size() - 5) + ".wake";
  if (reattach) p.wake_map = open_own_segment(p.wake_name, shm::kWakeSegmentSize, false, p.wake_ino);
  if (!p.wake_map) {
    shm_unlink(("/" + p.wake_name).c_str());
    p.wake_map = open_own_segment(p.wake_name, shm::kWakeSegmentSize, true, p.wake_ino);
  }
  if (!p.wake_map) throw Error(ErrorCode::system, p.wake_name + ": cannot create the wake segment: " + strerror(errno));
  p.refs.wake = static_cast<shm::WakeBlock*>(p.wake_map);
  p.refs.shared_wake = true;
  if (!reattach) return;
  const shm::RingRefs& r = p.refs;
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    shm::CursorSlot& s = r.slots[i];
    const uint32_t st = shm::aref(s.state).load(std::memory_order_acquire);
    if (st == shm::kSlotFree || (shm::aref(s.flags).load(std::memory_order_relaxed) & shm::kSlotEmbedded))
      continue;
    const uint64_t id = shm::aref(s.page_id).load(std::memory_order_relaxed);
    ino_t ino;
    void* m = (st == shm::kSlotActive && id) ? open_own_segment(page_name(p, id), shm::kCursorPageSize, false, ino)
                                             : nullptr;
    if (m) {
      p.pages[id] = static_cast<shm::CursorPage*>(m);
    } else {
      shm::aref(s.state).store(shm::kSlotFree, std::memory_order_seq_cst);  // a grant we cannot serve
      shm::wake_all_space(r);
    }
  }
}

void bind_refs(Partition& p) {
  if (const char* why = shm::bind_ring(p.data_map, p.data_size, p.ctl_map, p.ctl_size, p.refs))
    throw Error(ErrorCode::incompatible, "segment of partition " + std::to_string(p.index) + ": " + why);
}

}  // namespace

std::shared_ptr<Partition> open_partition(const std::string& prefix, const TopicSettings& t,
                                          uint32_t idx, bool& reattached) {
  auto p = std::make_shared<Partition>();
  p->topic = t.name;
  p->index = idx;
  p->data_name = shm_segment_name(prefix, t.name, idx, true);
  p->ctl_name = shm_segment_name(prefix, t.name, idx, false);
  p->data_size = shm::data_segment_size(t.capacity);
  p->ctl_size = shm::control_segment_size(t.slots);
  reattached = false;
  // 1. Re-attach live segments left by a previous daemon (clients may map them).
  {
    int d = shm_open(("/" + p->data_name).c_str(), O_RDWR | O_CLOEXEC, 0);
    int c = shm_open(("/" + p->ctl_name).c_str(), O_RDWR | O_CLOEXEC, 0);
    struct stat ds{}, cs{};
    if (d >= 0 && c >= 0 && fstat(d, &ds) == 0 && fstat(c, &cs) == 0 &&
        uint64_t(ds.st_size) == p->data_size && uint64_t(cs.st_size) == p->ctl_size &&
        ds.st_uid == geteuid() && cs.st_uid == geteuid()) {
      p->data_rw = d;
      p->ctl_fd = c;
      p->data_map = map_fd(d, p->data_size, p->data_name);
      p->ctl_map = map_fd(c, p->ctl_size, p->ctl_name);
      if (matches(*p, t)) {
        bind_refs(*p);
        release_fds(*p);
        attach_wake_and_pages(*p, true);
        reattached = true;
        return p;
      }
      munmap(p->data_map, p->data_size);
      munmap(p->ctl_map, p->ctl_size);
      p->data_map = p->ctl_map = nullptr;
      p->data_rw = p->ctl_fd = -1;
    }
    if (d >= 0) close(d);
    if (c >= 0) close(c);
  }
  // 2. Create fresh (replacing anything stale under these names).
  bip::shared_memory_object::remove(p->data_name.c_str());
  bip::shared_memory_object::remove(p->ctl_name.c_str());
  try {
    bip::permissions perm(0600);
    bip::shared_memory_object cobj(bip::create_only, p->ctl_name.c_str(), bip::read_write, perm);
    cobj.truncate(bip::offset_t(p->ctl_size));
    bip::shared_memory_object dobj(bip::create_only, p->data_name.c_str(), bip::read_write, perm);
    dobj.truncate(bip::offset_t(p->data_size));
    p->ctl_fd = fcntl(cobj.get_mapping_handle().handle, F_DUPFD_CLOEXEC, 0);
    p->data_rw = fcntl(dobj.get_mapping_handle().handle, F_DUPFD_CLOEXEC, 0);
  } catch (const bip::interprocess_exception& e) {
    remove_partition_segments(prefix, t.name, idx);
    throw Error(ErrorCode::system, p->data_name + ": " + e.what(), e.get_native_error());
  }
  // Whatever the umask did: owner-only. Access goes through the daemon's fds.
  fchmod(p->ctl_fd, 0600);
  fchmod(p->data_rw, 0600);
  // Every page now, so a full /dev/shm is this error and never a SIGBUS later (in
  // the daemon or a client) when a page is first touched.
  for (auto [fd, size] : {std::pair{p->ctl_fd, p->ctl_size}, std::pair{p->data_rw, p->data_size}}) {
    int e = posix_fallocate(fd, 0, off_t(size));
    if (e != 0) {
      remove_partition_segments(prefix, t.name, idx);
      throw Error(ErrorCode::system, p->data_name + ": cannot reserve " + std::to_string(size) +
                                         " bytes in /dev/shm: " + strerror(e), e);
    }
  }
  p->data_map = map_fd(p->data_rw, p->data_size, p->data_name);
  p->ctl_map = map_fd(p->ctl_fd, p->ctl_size, p->ctl_name);
  uint64_t maxp = t.max_payload ? t.max_payload : t.capacity / 4;
  shm::init_segments(static_cast<shm::DataHeader*>(p->data_map),
                     static_cast<shm::ControlHeader*>(p->ctl_map), t.capacity, t.slots,
                     t.multi_producer ? shm::kFlagMultiProducer : 0u, t.policy, idx, t.schema_id,
                     maxp, realtime_ns());
  bind_refs(*p);
  release_fds(*p);
  attach_wake_and_pages(*p, false);
  return p;
}

int reopen_segment(const Partition& p, bool data, bool writable) {
  const std::string& n = data ? p.data_name : p.ctl_name;
  int fd = shm_open(("/" + n).c_str(), (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct stat st{};
  if (fstat(fd, &st) < 0 || st.st_dev != p.dev || st.st_ino != (data ? p.data_ino : p.ctl_ino) ||
      st.st_uid != geteuid()) {
    close(fd);
    errno = ESTALE;
    return -1;
  }
  return fd;
}

int reopen_wake(const Partition& p, bool writable) {
  int fd = shm_open(("/" + p.wake_name).c_str(), (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct stat st{};
  if (fstat(fd, &st) < 0 || st.st_ino != p.wake_ino || st.st_uid != geteuid()) {
    close(fd);
    errno = ESTALE;
    return -1;
  }
  return fd;
}

shm::CursorPage* Partition::page_of(uint32_t i) {
  if (i >= refs.slot_count) return nullptr;
  const uint64_t id = shm::aref(refs.slots[i].page_id).load(std::memory_order_relaxed);
  auto it = pages.find(id);
  return it == pages.end() ? nullptr : it->second;
}

uint64_t create_page(Partition& p, int& fd) {
  // Random ids: the names live in a directory every user can write, so a predictable
  // next name could be created first by anyone (squatting every future join).
  for (int tries = 0; tries < 16; ++tries) {
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, 0) != ssize_t(sizeof id))
      throw Error(ErrorCode::system, std::string("getrandom: ") + strerror(errno), errno);
    if (id == 0 || p.pages.count(id)) continue;
    const std::string n = "/" + page_name(p, id);
    fd = shm_open(n.c_str(), O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      throw Error(ErrorCode::system, n + ": shm_open: " + strerror(errno));
    }
    fchmod(fd, 0600);
    int e = posix_fallocate(fd, 0, off_t(shm::kCursorPageSize));
    void* m = e == 0 ? mmap(nullptr, shm::kCursorPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (m == MAP_FAILED) {
      const int err = e ? e : errno;
      close(fd);
      fd = -1;
      shm_unlink(n.c_str());
      throw Error(ErrorCode::system, n + ": cannot make a cursor page: " + strerror(err));
    }
    p.pages[id] = static_cast<shm::CursorPage*>(m);
    return id;
  }
  throw Error(ErrorCode::system, "cannot name a fresh cursor page");
}

void drop_page(Partition& p, uint64_t id) {
  auto it = p.pages.find(id);
  if (it == p.pages.end()) return;
  munmap(it->second, shm::kCursorPageSize);
  p.pages.erase(it);
  shm_unlink(("/" + page_name(p, id)).c_str());
}

int reopen_page(const Partition& p, uint64_t id) {
  int fd = shm_open(("/" + page_name(p, id)).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct stat st{};
  if (fstat(fd, &st) < 0 || st.st_uid != geteuid() || uint64_t(st.st_size) != shm::kCursorPageSize) {
    close(fd);
    errno = ESTALE;
    return -1;
  }
  return fd;
}

void remove_partition_segments(const std::string& prefix, const std::string& topic, uint32_t p) {
  shm_unlink(("/" + prefix + "." + topic + "." + std::to_string(p) + ".wake").c_str());
  bip::shared_memory_object::remove(shm_segment_name(prefix, topic, p, true).c_str());
  bip::shared_memory_object::remove(shm_segment_name(prefix, topic, p, false).c_str());
}

}  // namespace shmbus::daemon
