// Segment lifecycle: create with Boost.Interprocess (mode 0600, the daemon's uid),
// re-attach after a daemon restart, remove on topic deletion. Clients never open
// these names: they receive fds over the control socket (SCM_RIGHTS).
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
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
  for (int f : {data_rw, data_ro, ctl_fd})
    if (f >= 0) close(f);
}

namespace {

int shm_fd(const std::string& name, int flags) {
  int fd = shm_open(("/" + name).c_str(), flags | O_CLOEXEC, 0600);
  if (fd < 0) throw Error(ErrorCode::system, name + ": shm_open: " + strerror(errno));
  return fd;
}

void* map_fd(int fd, size_t n, const std::string& name) {
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw Error(ErrorCode::system, name + ": mmap: " + strerror(errno));
  return p;
}

// Re-attach check: the existing segments must be ours, of this layout major and of
// the registry's settings; otherwise the caller recreates them.
bool matches(const Partition& p, const TopicSettings& t) {
  auto* d = static_cast<const shm::DataHeader*>(p.data_map);
  auto* c = static_cast<const shm::ControlHeader*>(p.ctl_map);
  uint32_t v = std::atomic_ref<const uint32_t>(d->layout_version).load(std::memory_order_acquire);
  uint64_t maxp = t.max_payload ? t.max_payload : t.capacity / 4;
  return d->magic == shm::kDataMagic && c->magic == shm::kCtlMagic && (v >> 16) == shm::kLayoutMajor &&
         v == shm::kLayoutVersion && d->capacity == t.capacity && c->capacity == t.capacity &&
         c->slot_count == t.slots && d->max_payload == maxp &&
         bool(d->flags & shm::kFlagMultiProducer) == t.multi_producer && d->policy == t.policy;
}

void bind_refs(Partition& p) {
  auto* d = static_cast<shm::DataHeader*>(p.data_map);
  auto* c = static_cast<shm::ControlHeader*>(p.ctl_map);
  p.refs.data = d;
  p.refs.ring = static_cast<std::byte*>(p.data_map) + sizeof(shm::DataHeader);
  p.refs.ctl = c;
  p.refs.slots = reinterpret_cast<shm::CursorSlot*>(static_cast<std::byte*>(p.ctl_map) +
                                                    sizeof(shm::ControlHeader));
  p.refs.capacity = d->capacity;
  p.refs.slot_count = c->slot_count;
  shm::bind_producer_table(p.refs, p.ctl_size);
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
        p->data_ro = shm_fd(p->data_name, O_RDONLY);
        bind_refs(*p);
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
    throw Error(ErrorCode::system, p->data_name + ": " + e.what());
  }
  // Whatever the umask did: owner-only. Access goes through the daemon's fds.
  fchmod(p->ctl_fd, 0600);
  fchmod(p->data_rw, 0600);
  p->data_ro = shm_fd(p->data_name, O_RDONLY);
  p->data_map = map_fd(p->data_rw, p->data_size, p->data_name);
  p->ctl_map = map_fd(p->ctl_fd, p->ctl_size, p->ctl_name);
  uint64_t maxp = t.max_payload ? t.max_payload : t.capacity / 4;
  shm::init_segments(static_cast<shm::DataHeader*>(p->data_map),
                     static_cast<shm::ControlHeader*>(p->ctl_map), t.capacity, t.slots,
                     t.multi_producer ? shm::kFlagMultiProducer : 0u, t.policy, idx, t.schema_id,
                     maxp, realtime_ns());
  bind_refs(*p);
  return p;
}

void remove_partition_segments(const std::string& prefix, const std::string& topic, uint32_t p) {
  bip::shared_memory_object::remove(shm_segment_name(prefix, topic, p, true).c_str());
  bip::shared_memory_object::remove(shm_segment_name(prefix, topic, p, false).c_str());
}

}  // namespace shmbus::daemon
