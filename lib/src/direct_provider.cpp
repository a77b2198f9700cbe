// Direct segment provider: Boost.Interprocess shared memory under /dev/shm.
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "shmbus/error.hpp"
#include "shmbus/segment.hpp"

namespace bip = boost::interprocess;

namespace shmbus {

bool valid_topic_name(const std::string& n) {
  if (n.empty() || n.size() > 200 || n[0] == '.') return false;
  for (char ch : n) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

// Direct-mode names carry the creating uid: one user's topics never collide with
// another's (names in /dev/shm are global), and a squat under them is refused by the
// owner check (check_segment below).
std::string segment_name(const std::string& prefix, const std::string& topic, uint32_t p, bool data) {
  return prefix + ".u" + std::to_string(geteuid()) + "." + topic + "." + std::to_string(p) +
         (data ? ".data" : ".ctl");
}

namespace {

uint64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

class DirectMapping final : public PartitionMapping {
 public:
  DirectMapping(std::string topic, uint32_t p, bip::mapped_region data, bip::mapped_region ctl)
      : data_(std::move(data)), ctl_(std::move(ctl)) {
    topic_ = std::move(topic);
    partition_ = p;
    // Copy once, validate the copy, use only the copy (shm::bind_ring).
    if (const char* why =
            shm::bind_ring(data_.get_address(), data_.get_size(), ctl_.get_address(), ctl_.get_size(), refs_))
      throw Error(ErrorCode::incompatible, "segments of '" + topic_ + "' refused: " + why);
  }

 private:
  bip::mapped_region data_;
  bip::mapped_region ctl_;
};

bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

std::string octal(uint32_t m) {
  char b[16];
  snprintf(b, sizeof b, "0%03o", m & 07777);
  return b;
}

// Modes: the data segment as asked (write bits = who may publish); the control
// segment also writable by whoever may read (subscribers write their cursor there),
// so a subscriber never gets write access to the data ring.
uint32_t data_mode(const TopicConfig& cfg) { return (cfg.mode & 0777) | 0600; }
uint32_t ctl_mode(const TopicConfig& cfg) {
  const uint32_t d = data_mode(cfg);
  return d | ((d & 044) >> 1);
}

// A segment found under our name is used only when it is a regular file owned by
// this uid (or root) and, when adopted by create_topic, no more open than asked:
// anyone can create any name in /dev/shm.
void check_segment(int fd, const std::string& name, int max_mode) {
  struct stat st {};
  if (fstat(fd, &st) < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, name + ": fstat: " + strerror(e), e);
  }
  if (!S_ISREG(st.st_mode)) throw Error(ErrorCode::permission_denied, name + ": not a regular file");
  if (st.st_uid != geteuid() && st.st_uid != 0)
    throw Error(ErrorCode::permission_denied,
                name + " is owned by uid " + std::to_string(st.st_uid) + ", not by this process's uid " +
                    std::to_string(geteuid()) +
                    ": not using it (direct mode uses only its own uid's segments; share between users "
                    "through shmbusd)");
  if (max_mode >= 0 && (st.st_mode & 0777 & ~uint32_t(max_mode)))
    throw Error(ErrorCode::permission_denied, name + " exists with mode " + octal(st.st_mode) +
                                                  ", more open than the requested " +
                                                  octal(uint32_t(max_mode)) + ": not adopting it");
}

void check_config(const TopicConfig& cfg) {
  if (cfg.partitions == 0 || cfg.partitions > 1024)
    throw Error(ErrorCode::invalid_argument, "partitions must be 1..1024");
  if (!is_pow2(cfg.capacity) || cfg.capacity < 4096 || cfg.capacity > (1ull << 40))
    throw Error(ErrorCode::invalid_argument, "capacity must be a power of two between 4 KiB and 1 TiB, got " +
                                                 std::to_string(cfg.capacity));
  if (cfg.max_payload > cfg.capacity / 4)
    throw Error(ErrorCode::invalid_argument, "max_payload must be at most capacity/4");
  if (cfg.slots == 0 || cfg.slots > shm::kMaxSlots)
    throw Error(ErrorCode::invalid_argument, "slots must be 1..512");
}

// Waits (bounded) until a segment opened by name has its header sized and its
// layout version written (the creator writes it last).
template <class Header>
const Header* wait_ready(bip::shared_memory_object& obj, bip::mapped_region& hdr_region, bip::mode_t mode,
                         const std::string& name, std::chrono::steady_clock::time_point deadline) {
  for (int spin = 0;; ++spin) {
    bip::offset_t sz = 0;
    obj.get_size(sz);
    if (sz >= bip::offset_t(sizeof(Header))) {
      hdr_region = bip::mapped_region(obj, mode, 0, sizeof(Header));
      auto* h = static_cast<const Header*>(hdr_region.get_address());
      // SYNC(data.ready)/SYNC(ctl.ready) acquire: the header fields are complete.
      uint32_t v = std::atomic_ref<const uint32_t>(h->layout_version).load(std::memory_order_acquire);
      if (v != 0) {
        if ((v >> 16) != shm::kLayoutMajor)
          throw Error(ErrorCode::incompatible, name + ": layout version " + std::to_string(v >> 16) + "." +
                                                   std::to_string(v & 0xffff) + ", this library speaks " +
                                                   std::to_string(shm::kLayoutMajor) + ".x");
        return h;
      }
    }
    if (std::chrono::steady_clock::now() > deadline)
      throw Error(ErrorCode::timed_out, name + ": segment exists but never became ready");
    // Back off while a creator finishes initialising (state: "being created").
    std::this_thread::sleep_for(std::chrono::microseconds(spin < 10 ? 50 : 1000));
  }
}

class DirectProvider final : public SegmentProvider {
 public:
  explicit DirectProvider(std::string prefix) : prefix_(std::move(prefix)) {}

  void create_topic(const std::string& topic, const TopicConfig& cfg) override {
    if (!valid_topic_name(topic))
      throw Error(ErrorCode::invalid_argument, "invalid topic name '" + topic + "'");
    check_config(cfg);
    for (uint32_t p = 0; p < cfg.partitions; ++p) create_partition(topic, p, cfg);
  }

  std::shared_ptr<PartitionMapping> open(const std::string& topic, uint32_t p, Role role,
                                         int timeout_ms) override {
    if (!valid_topic_name(topic))
      throw Error(ErrorCode::invalid_argument, "invalid topic name '" + topic + "'");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    const std::string dname = segment_name(prefix_, topic, p, true);
    const std::string cname = segment_name(prefix_, topic, p, false);
    bip::mode_t dmode = role == Role::subscriber ? bip::read_only : bip::read_write;
    bip::shared_memory_object dobj = open_obj(dname, dmode, deadline);
    bip::shared_memory_object cobj = open_obj(cname, bip::read_write, deadline);
    bip::mapped_region dh, ch;
    wait_ready<shm::DataHeader>(dobj, dh, dmode, dname, deadline);
    wait_ready<shm::ControlHeader>(cobj, ch, bip::read_write, cname, deadline);
    // Map each file whole, at the size it has now; bind_ring checks every header
    // field against that size from one copy (never a second read of the header).
    bip::offset_t dsz = 0, csz = 0;
    dobj.get_size(dsz);
    cobj.get_size(csz);
    if (uint64_t(dsz) < shm::kRingOffset || uint64_t(csz) < sizeof(shm::ControlHeader))
      throw Error(ErrorCode::incompatible, dname + ": segment is truncated");
    bip::mapped_region dreg(dobj, dmode, 0, size_t(dsz));
    bip::mapped_region creg(cobj, bip::read_write, 0, size_t(csz));
    return std::make_shared<DirectMapping>(topic, p, std::move(dreg), std::move(creg));
  }

  void remove_topic(const std::string& topic) override {
    if (!valid_topic_name(topic))
      throw Error(ErrorCode::invalid_argument, "invalid topic name '" + topic + "'");
    for (uint32_t p = 0;; ++p) {
      bool a = bip::shared_memory_object::remove(segment_name(prefix_, topic, p, true).c_str());
      bool b = bip::shared_memory_object::remove(segment_name(prefix_, topic, p, false).c_str());
      if (!a && !b) break;
    }
  }

  uint32_t partitions(const std::string& topic) override {
    uint32_t n = 0;
    while (access(("/dev/shm/" + segment_name(prefix_, topic, n, true)).c_str(), F_OK) == 0) ++n;
    return n;
  }

 private:
  bip::shared_memory_object open_obj(const std::string& name, bip::mode_t mode,
                                     std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      try {
        bip::shared_memory_object o(bip::open_only, name.c_str(), mode);
        check_segment(o.get_mapping_handle().handle, name, -1);
        return o;
      } catch (const bip::interprocess_exception& e) {
        if (e.get_error_code() == bip::security_error)
          throw Error(ErrorCode::permission_denied, name + ": " + e.what(), e.get_native_error());
        if (e.get_error_code() != bip::not_found_error)
          throw Error(ErrorCode::system, name + ": " + e.what(), e.get_native_error());
        if (std::chrono::steady_clock::now() > deadline)
          throw Error(ErrorCode::not_found, "topic segment " + name + " does not exist");
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }

  void create_partition(const std::string& topic, uint32_t p, const TopicConfig& cfg) {
    const std::string dname = segment_name(prefix_, topic, p, true);
    const std::string cname = segment_name(prefix_, topic, p, false);
    bip::permissions cperm(ctl_mode(cfg)), dperm(data_mode(cfg));
    // The control segment first: an opener that sees the data segment ready also
    // finds the control segment (it waits for both anyway).
    bool created_c = false, created_d = false;
    try {
      // create_only is O_CREAT|O_EXCL: never an existing file (or a planted symlink).
      bip::shared_memory_object cobj(bip::create_only, cname.c_str(), bip::read_write, cperm);
      created_c = true;
      fchmod(cobj.get_mapping_handle().handle, ctl_mode(cfg));  // whatever the umask did
      cobj.truncate(bip::offset_t(shm::control_segment_size(cfg.slots)));
      bip::shared_memory_object dobj(bip::create_only, dname.c_str(), bip::read_write, dperm);
      created_d = true;
      fchmod(dobj.get_mapping_handle().handle, data_mode(cfg));
      dobj.truncate(bip::offset_t(shm::data_segment_size(cfg.capacity)));
      // Every page now: a full /dev/shm is this error, never a SIGBUS on first touch.
      for (auto [h, size] :
           {std::pair{cobj.get_mapping_handle().handle, shm::control_segment_size(cfg.slots)},
            std::pair{dobj.get_mapping_handle().handle, shm::data_segment_size(cfg.capacity)}})
        if (int e = posix_fallocate(h, 0, off_t(size)); e != 0)
          throw bip::interprocess_exception(
              bip::error_info(e),  // keeps the errno (ENOSPC ...)
              ("cannot reserve " + std::to_string(size) + " bytes in /dev/shm: " + strerror(e)).c_str());
      bip::mapped_region creg(cobj, bip::read_write);
      bip::mapped_region dreg(dobj, bip::read_write);
      uint64_t maxp = cfg.max_payload ? cfg.max_payload : cfg.capacity / 4;
      shm::init_segments(static_cast<shm::DataHeader*>(dreg.get_address()),
                         static_cast<shm::ControlHeader*>(creg.get_address()), cfg.capacity, cfg.slots,
                         cfg.multi_producer ? shm::kFlagMultiProducer : 0u, uint32_t(cfg.policy), p,
                         cfg.schema_id, maxp, realtime_ns());
      return;
    } catch (const bip::interprocess_exception& e) {
      if (e.get_error_code() != bip::already_exists_error) {
        if (created_c) bip::shared_memory_object::remove(cname.c_str());
        if (created_d) bip::shared_memory_object::remove(dname.c_str());
        if (e.get_error_code() == bip::security_error)
          throw Error(ErrorCode::permission_denied, dname + ": " + e.what(), e.get_native_error());
        throw Error(ErrorCode::system, dname + ": " + e.what(), e.get_native_error());
      }
      if (created_c && !created_d) {
        // Someone else created the data segment between our two creates: not ours.
        bip::shared_memory_object::remove(cname.c_str());
      }
    }
    // Exists: adopt it only if it is ours and no more open than asked, then verify
    // it matches.
    for (auto [name, mode] : {std::pair{cname, ctl_mode(cfg)}, std::pair{dname, data_mode(cfg)}}) {
      int fd = ::open(("/dev/shm/" + name).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) {
        const int e = errno;
        if (e == ENOENT) continue;  // being created or removed: open() below waits or fails
        throw Error(e == ELOOP ? ErrorCode::permission_denied : ErrorCode::system,
                    name + ": " + (e == ELOOP ? std::string("a symlink: not adopting it") : strerror(e)), e);
      }
      try {
        check_segment(fd, name, int(mode));
      } catch (...) {
        close(fd);
        throw;
      }
      close(fd);
    }
    auto m = open(topic, p, Role::admin, 5000);
    const auto& r = m->refs();
    uint64_t maxp = cfg.max_payload ? cfg.max_payload : cfg.capacity / 4;
    bool mp = r.data->flags & shm::kFlagMultiProducer;
    if (r.capacity != cfg.capacity || mp != cfg.multi_producer || r.data->policy != uint32_t(cfg.policy) ||
        r.data->max_payload != maxp)
      throw Error(ErrorCode::incompatible, "topic '" + topic + "' partition " + std::to_string(p) +
                                               " exists with other settings (capacity " +
                                               std::to_string(r.capacity) + ")");
  }

  std::string prefix_;
};

}  // namespace

std::shared_ptr<SegmentProvider> make_direct_provider(const std::string& prefix) {
  return std::make_shared<DirectProvider>(prefix);
}

}  // namespace shmbus
