// The daemon client: request/response over the control socket, transparent
// reconnection, and the SegmentProvider that maps the fds shmbusd passes.
#include <cerrno>
#include <chrono>
#include <map>
#include <mutex>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

#include "shmbus/daemon_client.hpp"

namespace shmbus {

std::string default_socket_path() {
  if (const char* e = getenv("SHMBUS_SOCKET"); e && *e) return e;
  const char* x = getenv("XDG_RUNTIME_DIR");
  if (x && *x && access(x, W_OK | X_OK) == 0) return std::string(x) + "/shmbus/shmbusd.sock";
  if (geteuid() == 0) return kSystemSocketPath;
  return "/tmp/shmbus-" + std::to_string(getuid()) + "/shmbusd.sock";
}

DaemonClient::Reply::~Reply() {
  for (int f : fds)
    if (f >= 0) close(f);
}

DaemonClient::DaemonClient(const Options& opts) : opts_(opts) {
  if (opts_.socket_path.empty()) opts_.socket_path = default_socket_path();
}

DaemonClient::~DaemonClient() {
  std::lock_guard<std::mutex> g(mu_);
  close_locked();
}

std::shared_ptr<DaemonClient> DaemonClient::connect(const Options& opts) {
  auto c = std::make_shared<DaemonClient>(opts);
  std::string err;
  {
    std::lock_guard<std::mutex> g(c->mu_);
    if (!c->try_connect_locked(err)) {
      const int e = errno;  // try_connect_locked leaves the cause in errno
      throw Error(ErrorCode::not_connected, "shmbusd at " + c->opts_.socket_path + ": " + err, e);
    }
  }
  c->call([](proto::Request::Builder r) { r.setHello(); });
  return c;
}

void DaemonClient::close_locked() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

bool DaemonClient::try_connect_locked(std::string& err) {
  close_locked();
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (opts_.socket_path.size() >= sizeof(a.sun_path)) {
    err = "socket path too long (" + std::to_string(opts_.socket_path.size()) + " bytes; at most " +
          std::to_string(sizeof(a.sun_path) - 1) + ")";
    errno = ENAMETOOLONG;
    return false;
  }
  std::memcpy(a.sun_path, opts_.socket_path.c_str(), opts_.socket_path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int e = errno;
    err = std::string("socket: ") + strerror(e);
    errno = e;
    return false;
  }
  int r;
  do r = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    const int e = errno;
    err = std::string("connect: ") + strerror(e);
    close(fd);
    errno = e;
    return false;
  }
  // Who serves this socket? Only root (a system daemon) or ourselves: anyone else
  // could have squatted the path (e.g. /tmp/shmbus-$UID) to read what we send.
  ucred cr{};
  socklen_t len = sizeof cr;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
    int e = errno;
    close(fd);
    throw Error(ErrorCode::permission_denied,
                "shmbusd at " + opts_.socket_path + ": cannot read the server's credentials: " + strerror(e),
                e);
  }
  if (cr.uid != 0 && cr.uid != geteuid() && cr.uid != opts_.trusted_uid) {
    close(fd);
    throw Error(ErrorCode::permission_denied,
                "shmbusd at " + opts_.socket_path + " runs as uid " + std::to_string(cr.uid) +
                    ", neither root nor this process's uid " + std::to_string(geteuid()) +
                    ": refusing to use it (another user's daemon on this path? remove it, or set "
                    "SHMBUS_SOCKET to your daemon's socket)");
  }
  fd_ = fd;
  return true;
}

DaemonClient::Reply DaemonClient::call(const std::function<void(proto::Request::Builder)>& fill,
                                       bool wait_for_daemon) {
  capnp::MallocMessageBuilder mb(512);
  auto req = mb.initRoot<proto::Request>();
  fill(req);
  req.setVersion(proto::PROTOCOL_VERSION);
  std::lock_guard<std::mutex> g(mu_);
  const uint64_t id = next_id_++;
  req.setId(id);
  std::vector<uint8_t> frame = control::encode_frame(mb);
  if (frame.size() > control::kMaxFrame)
    throw Error(ErrorCode::invalid_argument, "request larger than the protocol allows");
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts_.reconnect_ms);
  std::string last_err;
  int last_errno = 0;  // of the OS call behind last_err
  for (int attempt = 0;; ++attempt) {
    if (fd_ < 0) {
      if (!try_connect_locked(last_err)) {
        last_errno = errno;  // try_connect_locked leaves the cause in errno
        if (!wait_for_daemon || std::chrono::steady_clock::now() > give_up)
          throw Error(ErrorCode::not_connected, "shmbusd at " + opts_.socket_path + ": " + last_err,
                      last_errno);
        // The daemon is restarting: poll for its socket (bounded by reconnect_ms).
        std::this_thread::sleep_for(std::chrono::milliseconds(attempt < 20 ? 5 : 50));
        continue;
      }
      ++reconnects_;
      flush_deferred_locked();
      if (fd_ < 0) continue;  // lost again while flushing
    }
    int s = control::send_packet(fd_, frame);
    if (s < 0) {
      last_err = std::string("send: ") + strerror(-s);
      last_errno = -s;
      close_locked();
      continue;  // daemon went away between calls: reconnect and resend
    }
    std::vector<uint8_t> buf;
    Reply rep;
    long n = control::recv_packet(fd_, buf, &rep.fds, opts_.timeout_ms);
    if (n == -ETIMEDOUT) {
      close_locked();
      throw Error(ErrorCode::timed_out,
                  "shmbusd did not answer within " + std::to_string(opts_.timeout_ms) + " ms");
    }
    if (n <= 0) {
      // Closed under us (daemon restart). The request may or may not have been
      // applied; every request is idempotent (create with the same settings,
      // delete of a missing topic reports not_found), so resend once reconnected.
      last_err = n == 0 ? "connection closed" : std::string("recv: ") + strerror(int(-n));
      last_errno = n == 0 ? 0 : int(-n);
      close_locked();
      if (!wait_for_daemon || std::chrono::steady_clock::now() > give_up)
        throw Error(ErrorCode::not_connected, "shmbusd at " + opts_.socket_path + ": " + last_err,
                    last_errno);
      continue;
    }
    std::string err;
    if (!control::decode_frame(buf, rep.msg, err)) {
      close_locked();
      throw Error(ErrorCode::protocol, "bad response from shmbusd: " + err);
    }
    try {
      auto r = rep.get();
      if (r.getId() != id) {
        close_locked();
        throw Error(ErrorCode::protocol, "response id mismatch");
      }
      if (r.isError()) {
        auto e = r.getError();
        throw Error(control::to_error_code(e.getCode()), e.getMessage().cStr());
      }
    } catch (const kj::Exception& e) {
      close_locked();
      throw Error(ErrorCode::protocol, std::string("bad response: ") + e.getDescription().cStr());
    }
    return rep;
  }
}

void DaemonClient::call_or_defer(std::function<void(proto::Request::Builder)> fill) noexcept {
  try {
    call(fill, false);
    return;
  } catch (const Error& e) {
    if (e.code() != ErrorCode::not_connected) return;  // the daemon answered (an error): done
  } catch (...) {
    return;
  }
  try {
    std::lock_guard<std::mutex> g(mu_);
    if (deferred_.size() < kMaxDeferred) deferred_.push_back(std::move(fill));
  } catch (...) {
  }
}

// After a (re)connection, before the caller's request: the deferred courtesy calls,
// answers ignored. A send or receive that fails closes the connection and keeps the
// rest for the next one.
void DaemonClient::flush_deferred_locked() {
  while (!deferred_.empty() && fd_ >= 0) {
    capnp::MallocMessageBuilder mb(512);
    auto req = mb.initRoot<proto::Request>();
    deferred_.front()(req);
    req.setVersion(proto::PROTOCOL_VERSION);
    req.setId(next_id_++);
    const std::vector<uint8_t> frame = control::encode_frame(mb);
    if (control::send_packet(fd_, frame) < 0) return close_locked();
    std::vector<uint8_t> buf;
    std::vector<int> fds;
    const long n = control::recv_packet(fd_, buf, &fds, opts_.timeout_ms);
    for (int fd : fds) ::close(fd);
    if (n <= 0) return close_locked();
    deferred_.erase(deferred_.begin());
  }
}

namespace {

void fill_spec(proto::TopicSpec::Builder s, const std::string& topic, const TopicConfig& cfg,
               const AccessSpec* access) {
  s.setName(topic);
  s.setPartitions(cfg.partitions);
  s.setCapacity(cfg.capacity);
  s.setMaxPayload(cfg.max_payload);
  s.setPolicy(proto::Policy(uint16_t(cfg.policy)));
  s.setMultiProducer(cfg.multi_producer);
  s.setSlots(cfg.slots);
  s.setSchemaId(cfg.schema_id);
  s.setDurable(cfg.durable || cfg.policy == Policy::spill);
  s.setFlush(cfg.flush == TopicConfig::Flush::none    ? proto::FlushPolicy::NONE
             : cfg.flush == TopicConfig::Flush::batch ? proto::FlushPolicy::BATCH
                                                      : proto::FlushPolicy::INTERVAL);
  s.setFlushIntervalMs(cfg.flush_interval_ms);
  s.setRetentionBytes(cfg.retention_bytes);
  s.setRetentionAgeS(cfg.retention_age_s);
  s.setSegmentBytes(cfg.segment_bytes);
  s.setEphemeral(cfg.ephemeral);
  s.setSchemaMode(proto::SchemaMode(uint16_t(cfg.schema_mode)));
  auto a = s.initAccess();
  AccessSpec derived;
  if (!access) {
    // No explicit list: the permission bits say it (group/other read = subscribe,
    // write = publish), as for the direct provider's segment mode.
    gid_t g = getgid();
    if (cfg.mode & 040) derived.subscribe_gids.push_back(g);
    if (cfg.mode & 020) derived.publish_gids.push_back(g);
    if (cfg.mode & 004) derived.subscribe_uids.push_back(kAnyone);
    if (cfg.mode & 002) derived.publish_uids.push_back(kAnyone);
    access = &derived;
  }
  auto put = [](auto list, const std::vector<uint32_t>& v) {
    for (size_t i = 0; i < v.size(); ++i) list.set(uint32_t(i), v[i]);
  };
  put(a.initPublishUids(uint32_t(access->publish_uids.size())), access->publish_uids);
  put(a.initPublishGids(uint32_t(access->publish_gids.size())), access->publish_gids);
  put(a.initSubscribeUids(uint32_t(access->subscribe_uids.size())), access->subscribe_uids);
  put(a.initSubscribeGids(uint32_t(access->subscribe_gids.size())), access->subscribe_gids);
}

class DaemonMapping final : public PartitionMapping {
 public:
  DaemonMapping(std::shared_ptr<DaemonClient> client, const std::string& topic, uint32_t p, void* data,
                size_t dsize, void* ctl, size_t csize, void* wake, int wake_fd, int data_fd, int ctl_fd)
      : client_(std::move(client)), data_(data), dsize_(dsize), ctl_(ctl), csize_(csize), wake_(wake),
        wake_fd_(wake_fd), data_fd_(data_fd), ctl_fd_(ctl_fd) {
    topic_ = topic;
    partition_ = p;
  }
  void bind(const shm::RingRefs& r) {
    refs_ = r;
    refs_.wake = static_cast<shm::WakeBlock*>(wake_);
    refs_.shared_wake = true;
  }
  ~DaemonMapping() override {
    munmap(data_, dsize_);
    munmap(ctl_, csize_);
    munmap(wake_, shm::kWakeSegmentSize);
    for (int f : {wake_fd_, data_fd_, ctl_fd_})
      if (f >= 0) close(f);
    for (auto& [pg, fd] : page_fds_) close(fd);
  }
  bool granted() const override { return true; }

  CursorGrant join_cursor(bool tethered, const std::string& name, uint64_t start) override {
    // One token per join: the request call() resends after a reconnect carries it,
    // and the daemon answers it with the grant the first send made.
    uint64_t token = 0;
    while (token == 0)
      if (getrandom(&token, sizeof token, 0) != ssize_t(sizeof token)) token = 0;
    DaemonClient::Reply rep = client_->call([&](proto::Request::Builder r) {
      auto j = r.initJoin();
      j.setToken(token);
      j.setTopic(topic_);
      j.setPartition(partition_);
      j.setTethered(tethered);
      j.setDurableName(name);
      if (start != shm::RingReader::kAtTail) {
        j.setStart(start);
        j.setHasStart(true);
      }
    });
    auto jr = rep.get();
    if (!jr.isJoin() || rep.fds.size() != 1)
      throw Error(ErrorCode::protocol, "join: expected one cursor page fd");
    auto j = jr.getJoin();
    CursorGrant g;
    g.slot = j.getSlot();
    g.generation = j.getGeneration();
    g.position = j.getPosition();
    g.check_below = j.getCheckBelow();
    g.resumed = j.getResumed();
    if (g.slot >= refs_.slot_count) throw Error(ErrorCode::protocol, "join: slot out of range");
    g.page = map(rep.fds[0], true);
    if (!g.page) throw Error(ErrorCode::system, std::string("mmap cursor page: ") + strerror(errno));
    // Kept open while the grant lasts: a restarted shmbusd takes the page back from
    // us (pidfd_getfd) instead of losing the cursor.
    page_fds_[g.page] = rep.fds[0];
    rep.fds[0] = -1;
    return g;
  }

  void leave_cursor(CursorGrant& g, bool park) noexcept override {
    if (!g.page) return;
    // Sent now, or at this client's next connection (the daemon also frees, or
    // parks, the slot when this process exits).
    client_->call_or_defer([topic = topic_, partition = partition_, slot = g.slot, gen = g.generation,
                            park](proto::Request::Builder r) {
      auto l = r.initLeave();
      l.setTopic(topic);
      l.setPartition(partition);
      l.setSlot(slot);
      l.setGeneration(gen);
      l.setPark(park);
    });
    munmap(g.page, shm::kCursorPageSize);
    if (auto it = page_fds_.find(g.page); it != page_fds_.end()) close(it->second), page_fds_.erase(it);
    g.page = nullptr;
  }

  shm::CursorPage* map_page(uint32_t slot, uint32_t gen) noexcept override {
    try {
      DaemonClient::Reply rep = client_->call([&](proto::Request::Builder r) {
        auto f = r.initCursorPage();
        f.setTopic(topic_);
        f.setPartition(partition_);
        f.setSlot(slot);
        f.setGeneration(gen);
      });
      if (rep.fds.size() != 1) return nullptr;
      return map(rep.fds[0], false);
    } catch (...) {
      return nullptr;
    }
  }
  ProducerGrantInfo grant_producer() override {
    // One token per grant, as for joins: the request call() resends after a
    // reconnect (or to a restarted daemon) carries it, and the daemon answers it with
    // the grant the first send made; the release names the grant by it too.
    uint64_t request = 0;
    while (request == 0)
      if (getrandom(&request, sizeof request, 0) != ssize_t(sizeof request)) request = 0;
    DaemonClient::Reply rep = client_->call([&](proto::Request::Builder r) {
      auto q = r.initProducer();
      q.setTopic(topic_);
      q.setPartition(partition_);
      q.setToken(request);
    });
    auto pr = rep.get();
    if (!pr.isProducer()) throw Error(ErrorCode::protocol, "producer: unexpected reply");
    auto g = pr.getProducer();
    ProducerGrantInfo out;
    out.slot = g.getSlot();
    out.token = g.getToken();
    if ((out.token & shm::kTokenBit) == 0 || g.getMulti() != refs_.multi() ||
        (g.getMulti() && out.slot >= refs_.producer_count))
      throw Error(ErrorCode::protocol, "producer: the daemon's grant does not fit this partition");
    std::lock_guard<std::mutex> lk(grants_mu_);
    producer_requests_[out.token] = request;
    return out;
  }
  void release_producer(uint32_t token) noexcept override {
    uint64_t request = 0;
    {
      std::lock_guard<std::mutex> g(grants_mu_);
      auto it = producer_requests_.find(token);
      if (it == producer_requests_.end()) return;
      request = it->second;
      producer_requests_.erase(it);
    }
    // Sent now, or at this client's next connection (the daemon also frees the entry
    // when this process exits).
    client_->call_or_defer([topic = topic_, partition = partition_, request](proto::Request::Builder r) {
      auto q = r.initProducer();
      q.setTopic(topic);
      q.setPartition(partition);
      q.setToken(request);
      q.setRelease(true);
    });
  }
  void unmap_page(shm::CursorPage* p) noexcept override {
    if (p) munmap(p, shm::kCursorPageSize);
  }

 private:
  static shm::CursorPage* map(int fd, bool writable) {
    struct stat st {};
    if (fstat(fd, &st) < 0 || uint64_t(st.st_size) < shm::kCursorPageSize) return nullptr;
    void* m =
        mmap(nullptr, shm::kCursorPageSize, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    return m == MAP_FAILED ? nullptr : static_cast<shm::CursorPage*>(m);
  }
  std::shared_ptr<DaemonClient> client_;  // keeps the connection (our liveness signal) open
  void* data_;
  size_t dsize_;
  void* ctl_;
  size_t csize_;
  void* wake_;
  int wake_fd_;           // kept open (see join_cursor)
  int data_fd_, ctl_fd_;  // kept open: a restarted shmbusd whose keeper died takes them back
  std::mutex grants_mu_;
  std::map<uint32_t, uint64_t> producer_requests_;  // owner token -> the request token of its grant
  std::map<shm::CursorPage*, int> page_fds_;        // the grants' page fds, kept open
};

}  // namespace

void DaemonClient::create_topic(const std::string& topic, const TopicConfig& cfg, const AccessSpec* access) {
  call([&](proto::Request::Builder r) { fill_spec(r.initCreateTopic(), topic, cfg, access); });
}

void DaemonClient::delete_topic(const std::string& topic) {
  call([&](proto::Request::Builder r) { r.setDeleteTopic(topic); });
}

uint32_t DaemonClient::partitions(const std::string& topic) {
  try {
    Reply rep = call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
    return rep.get().getTopic().getSpec().getPartitions();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::not_found) return 0;
    throw;
  }
}

std::shared_ptr<PartitionMapping> DaemonClient::open(const std::string& topic, uint32_t p, Role role) {
  Reply rep = call([&](proto::Request::Builder r) {
    auto o = r.initOpen();
    o.setTopic(topic);
    o.setPartition(p);
    o.setRole(role == Role::publisher    ? proto::Role::PUBLISHER
              : role == Role::subscriber ? proto::Role::SUBSCRIBER
                                         : proto::Role::ADMIN);
  });
  if (rep.fds.size() != 3)
    throw Error(ErrorCode::protocol, "open: expected 3 segment fds, got " + std::to_string(rep.fds.size()));
  auto o = rep.get().getOpen();
  const int dfd = rep.fds[0], cfd = rep.fds[1], wfd = rep.fds[2];
  struct stat ds {
  }, cs{}, ws{};
  if (fstat(dfd, &ds) < 0 || fstat(cfd, &cs) < 0 || fstat(wfd, &ws) < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, std::string("fstat: ") + strerror(e), e);
  }
  if (uint64_t(ws.st_size) < shm::kWakeSegmentSize)
    throw Error(ErrorCode::incompatible, "open: the wake segment is shorter than a page");
  const size_t dsize = o.getDataSize(), csize = o.getCtlSize();
  if (dsize < sizeof(shm::DataHeader) || csize < sizeof(shm::ControlHeader) || uint64_t(ds.st_size) < dsize ||
      uint64_t(cs.st_size) < csize)
    throw Error(ErrorCode::incompatible, "open: segment sizes do not match the daemon's reply");
  const int dprot = role == Role::subscriber ? PROT_READ : PROT_READ | PROT_WRITE;
  void* d = mmap(nullptr, dsize, dprot, MAP_SHARED, dfd, 0);
  if (d == MAP_FAILED) {
    const int e = errno;
    throw Error(ErrorCode::system, std::string("mmap data: ") + strerror(e), e);
  }
  // Layout 3: the control segment is the daemon's alone.
  void* c = mmap(nullptr, csize, PROT_READ, MAP_SHARED, cfd, 0);
  if (c == MAP_FAILED) {
    const int e = errno;
    munmap(d, dsize);
    throw Error(ErrorCode::system, std::string("mmap control: ") + strerror(e), e);
  }
  void* w = mmap(nullptr, shm::kWakeSegmentSize,
                 role == Role::subscriber ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, wfd, 0);
  if (w == MAP_FAILED) {
    const int e = errno;
    munmap(d, dsize);
    munmap(c, csize);
    throw Error(ErrorCode::system, std::string("mmap wake: ") + strerror(e), e);
  }
  // Copy once, validate the copy, use only the copy (shm::bind_ring).
  shm::RingRefs refs;
  if (const char* why = shm::bind_ring(d, dsize, c, csize, refs, /*granted=*/true)) {
    munmap(d, dsize);
    munmap(c, csize);
    munmap(w, shm::kWakeSegmentSize);
    throw Error(ErrorCode::incompatible,
                std::string("open: the daemon handed out an invalid segment: ") + why);
  }
  // The fds stay open while mapped: a restarted shmbusd takes them back (the wake
  // segment always; the data and control segments when its keeper died with it, so
  // that the topic is restored under its live clients instead of re-created empty).
  auto m =
      std::make_shared<DaemonMapping>(shared_from_this(), topic, p, d, dsize, c, csize, w, wfd, dfd, cfd);
  rep.fds[0] = rep.fds[1] = rep.fds[2] = -1;
  m->bind(refs);
  return m;
}

namespace {
class DaemonProvider final : public SegmentProvider {
 public:
  explicit DaemonProvider(std::shared_ptr<DaemonClient> c) : c_(std::move(c)) {}
  void create_topic(const std::string& topic, const TopicConfig& cfg) override {
    c_->create_topic(topic, cfg);
  }
  std::shared_ptr<PartitionMapping> open(const std::string& topic, uint32_t p, Role role,
                                         int timeout_ms) override {
    // A topic being created by someone else: retry not_found until the deadline.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (int i = 0;; ++i) {
      try {
        return c_->open(topic, p, role);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::not_found || std::chrono::steady_clock::now() > deadline) throw;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(i < 10 ? 1 : 10));
    }
  }
  void remove_topic(const std::string& topic) override { c_->delete_topic(topic); }
  bool ephemeral_topics() const override { return true; }
  bool is_ephemeral(const std::string& topic) override {
    DaemonClient::Reply rep = c_->call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
    return rep.get().getTopic().getSpec().getEphemeral();
  }
  uint32_t partitions(const std::string& topic) override { return c_->partitions(topic); }
  std::string spill_log_dir(const std::string& topic) override {
    std::string dir;
    try {
      DaemonClient::Reply rep = c_->call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
      auto info = rep.get().getTopic();
      if (info.getSpec().getPolicy() != proto::Policy::SPILL) return {};
      dir = info.getLogDir().cStr();
    } catch (const Error& e) {
      if (e.code() == ErrorCode::not_found) return {};  // not created yet: open() waits for it
      throw;
    }
    if (dir.empty()) {  // older daemons: the log is <state-dir>/log
      DaemonClient::Reply h = c_->call([](proto::Request::Builder r) { r.setHealth(); });
      dir = std::string(h.get().getHealth().getStateDir().cStr()) + "/log";
    }
    return dir;
  }
  bool durable_position(const std::string& topic, uint32_t p, const std::string& name,
                        uint64_t& pos) override {
    DaemonClient::Reply rep = c_->call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
    for (auto d : rep.get().getTopic().getDurable())
      if (d.getPartition() == p && d.getName() == name && !d.getParked() && !d.getLive()) {
        pos = d.getPosition();
        return true;
      }
    return false;
  }
  uint32_t register_schema(const std::string& topic, const SchemaNodes& nodes, Role role,
                           bool check_only) override {
    if (nodes.bytes.size() > kMaxSchemaBytes)
      throw Error(ErrorCode::invalid_argument, "schema of '" + topic +
                                                   "': " + std::to_string(nodes.bytes.size()) +
                                                   " bytes of nodes, more than the daemon takes (" +
                                                   std::to_string(kMaxSchemaBytes) + ")");
    DaemonClient::Reply rep = c_->call([&](proto::Request::Builder r) {
      auto s = r.initRegisterSchema();
      s.setTopic(topic);
      s.setRootId(nodes.root_id);
      s.setNodes(kj::arrayPtr(nodes.bytes.data(), nodes.bytes.size()));
      s.setRole(role == Role::subscriber ? proto::Role::SUBSCRIBER : proto::Role::PUBLISHER);
      s.setCheckOnly(check_only);
    });
    return rep.get().getSchema().getVersion();
  }
  void set_schema_mode(const std::string& topic, TopicConfig::SchemaMode mode) override {
    const auto m = uint16_t(mode);
    if (m > uint16_t(proto::SchemaMode::NONE))
      throw Error(ErrorCode::invalid_argument, "schema mode " + std::to_string(m) + " of '" + topic +
                                                   "': backward (0), forward (1), full (2) or none (3)");
    c_->call([&](proto::Request::Builder r) {
      auto q = r.initSetSchemaMode();
      q.setTopic(topic);
      q.setMode(proto::SchemaMode(m));
    });
  }
  GroupState group_call(GroupOp op, const std::string& topic, const std::string& group, uint64_t member,
                        uint32_t known_generation) override {
    DaemonClient::Reply rep = c_->call([&](proto::Request::Builder r) {
      auto q = op == GroupOp::join   ? r.initGroupJoin()
               : op == GroupOp::sync ? r.initGroupSync()
                                     : r.initGroupLeave();
      q.setTopic(topic);
      q.setGroup(group);
      q.setMemberId(member);
      q.setKnownGeneration(known_generation);
    });
    GroupState st;
    auto resp = rep.get();
    if (op == GroupOp::leave) return st;
    if (!resp.isGroup())
      throw Error(ErrorCode::protocol, "shmbusd answered a group request with something else");
    auto g = resp.getGroup();
    st.member_id = g.getMemberId();
    st.generation = g.getGeneration();
    st.members = g.getMembers();
    st.topic_partitions = g.getTopicPartitions();
    // The daemon's answer is checked, not trusted: ascending partitions of the topic.
    auto l = g.getPartitions();
    if (l.size() > st.topic_partitions)
      throw Error(ErrorCode::protocol, "shmbusd assigned more partitions than the topic has");
    for (uint32_t p : l) {
      if (p >= st.topic_partitions || (!st.partitions.empty() && p <= st.partitions.back()))
        throw Error(ErrorCode::protocol,
                    "shmbusd assigned partition " + std::to_string(p) + " out of order or range");
      st.partitions.push_back(p);
    }
    return st;
  }
  void durable_joined(const std::string& topic, uint32_t p, const std::string& name, uint64_t pos) override {
    c_->call([&](proto::Request::Builder r) {
      auto d = r.initSaveCursor();
      d.setTopic(topic);
      d.setName(name);
      d.setPartition(p);
      d.setPosition(pos);
    });
  }

 private:
  std::shared_ptr<DaemonClient> c_;
};
}  // namespace

std::shared_ptr<SegmentProvider> make_daemon_provider(std::shared_ptr<DaemonClient> client) {
  return std::make_shared<DaemonProvider>(std::move(client));
}

Bus Bus::connect(const std::string& socket_path) {
  DaemonClient::Options o;
  o.socket_path = socket_path;
  return Bus(make_daemon_provider(DaemonClient::connect(o)));
}

}  // namespace shmbus
