// The daemon core: wires the three threads (server, registry, reaper) and their
// queues; the embedded entry point.
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "core.hpp"
#include "shmbus/spill/archiver.hpp"

namespace shmbus::daemon {

uint64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

uint64_t count_open_fds() {
  uint64_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d)) ++n;
    closedir(d);
  }
  return n > 3 ? n - 3 : 0;  // ".", ".." and the DIR's own fd
}

uint64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, rss = 0;
  f >> size >> rss;
  return rss * uint64_t(sysconf(_SC_PAGESIZE));
}

namespace {
std::atomic<int> g_instances{0};
}

Core::Core(DaemonOptions o) : opts(std::move(o)) {
  if (opts.socket_path.empty()) opts.socket_path = default_socket_path();
  if (opts.state_dir.empty()) {
    auto slash = opts.socket_path.rfind('/');
    opts.state_dir =
        (slash == std::string::npos ? std::string(".") : opts.socket_path.substr(0, slash)) + "/state";
  }
  if (opts.shm_prefix.empty()) opts.shm_prefix = "shmbusd-" + std::to_string(geteuid());
  instance = "shmbusd";
  int n = g_instances.fetch_add(1);
  if (n)
    instance.append("-").append(std::to_string(n));  // (not += "-" + ...: a g++ 12 -Wrestrict false positive)
  stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

Core::~Core() {
  request_stop();
  wait();
  if (stop_efd >= 0) close(stop_efd);
  if (lock_fd >= 0) close(lock_fd);
  if (state_fd >= 0) close(state_fd);
  if (sock_dir_fd >= 0) close(sock_dir_fd);
}

void Core::start() {
  log_init(opts, instance);
  // The socket's directory first (the default state dir lives in it): ours, not
  // writable by others; created 0700 (0755 for root: a system daemon serves every
  // local user, who must reach the socket).
  {
    auto slash = opts.socket_path.rfind('/');
    const std::string sdir = slash == std::string::npos ? std::string(".")
                             : slash == 0               ? std::string("/")
                                                        : opts.socket_path.substr(0, slash);
    sock_dir_fd = open_trusted_dir(sdir, geteuid() == 0 ? 0755 : 0700, "socket directory");
  }
  state_fd = open_trusted_dir(opts.state_dir, 0700, "state dir");
  fchmod(state_fd, 0700);  // ours (checked): owner-only whatever it was
  lock_fd = open_state_file(state_fd, "shmbusd.lock", O_RDWR | O_CREAT, opts.state_dir);
  if (lock_fd < 0) {
    const int e = errno;
    throw Error(ErrorCode::system,
                opts.state_dir + "/shmbusd.lock: " +
                    (e == ELOOP || e == EPERM ? std::string("a symlink or not our file: refusing it")
                                              : std::string(strerror(e))),
                e);
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0)
    throw Error(ErrorCode::already_exists, opts.state_dir + " is in use by another shmbusd");
  // An existing spill-log root must be a private directory (created with the first
  // durable topic, see Registry::log_root()).
  if (faccessat(state_fd, "log", F_OK, AT_SYMLINK_NOFOLLOW) == 0)
    close(open_private_dir_at(state_fd, "log", opts.state_dir + "/log", "log dir"));
  server.bind(sock_dir_fd);
  // The segments a previous daemon left are in its keeper (one is started if none runs).
  keeper.start(state_fd, opts.state_dir, instance, opts.segment_keeper);
  try {
    registry.load();
  } catch (...) {
    server.close_listener();
    throw;
  }
  keeper.finish_start(registry.unrestored_names());
  // Every thread's own fds before any client is accepted: once clients exhaust the
  // fds, a thread still starting up would fail to get them or take the slot the
  // server frees to refuse a connection.
  try {
    reaper.init();
    server.init();
  } catch (...) {
    server.close_listener();
    throw;
  }
  // The metrics endpoint's socket before any thread: a bad address or a port in use
  // fails the start.
  if (!opts.metrics_listen.empty()) {
    metrics = std::make_unique<MetricsServer>(*this);
    try {
      metrics->bind();
    } catch (...) {
      metrics.reset();
      server.close_listener();
      throw;
    }
  }
  counters.start_ns = realtime_ns();
  t_reaper_ = std::thread([this] { reaper.run(); });
  t_registry_ = std::thread([this] { registry.run(); });
  t_server_ = std::thread([this] { server.run(); });
  started_ = true;
  if (metrics) metrics->start();
  log_event(instance, LOG_INFO, "started", "", getpid(),
            "socket " + opts.socket_path + ", state " + opts.state_dir + ", shm prefix " + opts.shm_prefix);
}

spill::Archiver& Core::archiver() {
  if (!archiver_) {
    archiver_ = std::make_unique<spill::Archiver>();
    archiver_->start();
  }
  return *archiver_;
}

void Core::request_stop() {
  stopping.store(true);
  uint64_t one = 1;
  if (stop_efd >= 0) {
    ssize_t r = write(stop_efd, &one, 8);
    (void)r;
  }
}

void Core::wait() {
  if (!started_ || joined_) return;
  t_server_.join();  // returns after the registry persisted (its last message)
  t_registry_.join();
  if (metrics) metrics->stop();  // a scrape in flight gets 503 (the registry is gone)
  // After the registry: nobody adds partitions any more. The archiver's cursors stay
  // taken, so a restarted daemon adopts them and no frame escapes the log.
  if (archiver_) archiver_->stop();
  reaper_q.push(ReaperCmd{ReaperCmd::stop, nullptr, 0});
  t_reaper_.join();
  keeper.stop();  // it keeps the topics' segments for the next daemon (exits when there are none)
  joined_ = true;
  log_event(instance, LOG_INFO, "stopped", "", getpid(), "");
}

}  // namespace shmbus::daemon

namespace shmbus {

Daemon::Daemon(DaemonOptions opts) : core_(std::make_unique<daemon::Core>(std::move(opts))) {}
Daemon::~Daemon() = default;
void Daemon::start() { core_->start(); }
void Daemon::request_stop() { core_->request_stop(); }
void Daemon::wait() { core_->wait(); }
const DaemonOptions& Daemon::options() const { return core_->opts; }

namespace {
// Keeps the embedded daemon alive as long as the bus's provider.
class EmbeddedProvider final : public SegmentProvider {
 public:
  EmbeddedProvider(std::shared_ptr<Daemon> d, std::shared_ptr<SegmentProvider> inner, std::string tmp)
      : d_(std::move(d)), inner_(std::move(inner)), tmp_(std::move(tmp)) {}
  ~EmbeddedProvider() override {
    inner_.reset();
    d_->stop();
    d_.reset();
    if (!tmp_.empty()) {
      // A private daemon: its topics die with it (its segments are memfds).
      std::error_code ec;
      std::filesystem::remove_all(tmp_, ec);
    }
  }
  void create_topic(const std::string& t, const TopicConfig& c) override { inner_->create_topic(t, c); }
  std::shared_ptr<PartitionMapping> open(const std::string& t, uint32_t p, Role r, int ms) override {
    return inner_->open(t, p, r, ms);
  }
  void remove_topic(const std::string& t) override { inner_->remove_topic(t); }
  uint32_t partitions(const std::string& t) override { return inner_->partitions(t); }
  bool ephemeral_topics() const override { return inner_->ephemeral_topics(); }
  bool is_ephemeral(const std::string& t) override { return inner_->is_ephemeral(t); }
  std::string spill_log_dir(const std::string& t) override { return inner_->spill_log_dir(t); }
  uint32_t register_schema(const std::string& t, const SchemaNodes& nodes, Role role,
                           bool check_only) override {
    return inner_->register_schema(t, nodes, role, check_only);
  }
  void set_schema_mode(const std::string& t, TopicConfig::SchemaMode mode) override {
    inner_->set_schema_mode(t, mode);
  }
  bool durable_position(const std::string& t, uint32_t p, const std::string& n, uint64_t& pos) override {
    return inner_->durable_position(t, p, n, pos);
  }
  void durable_joined(const std::string& t, uint32_t p, const std::string& n, uint64_t pos) override {
    inner_->durable_joined(t, p, n, pos);
  }
  GroupState group_call(GroupOp op, const std::string& t, const std::string& g, uint64_t member,
                        uint32_t known_generation) override {
    return inner_->group_call(op, t, g, member, known_generation);
  }

 private:
  std::shared_ptr<Daemon> d_;
  std::shared_ptr<SegmentProvider> inner_;
  std::string tmp_;
};
}  // namespace

Bus open_embedded(DaemonOptions opts) {
  std::string tmp;
  if (opts.state_dir.empty()) {
    char tpl[] = "/tmp/shmbus-embedded-XXXXXX";
    if (!mkdtemp(tpl)) {
      const int e = errno;
      throw Error(ErrorCode::system, std::string("mkdtemp: ") + strerror(e), e);
    }
    tmp = tpl;
    opts.state_dir = tmp + "/state";
    opts.segment_keeper = false;  // a private daemon: its topics die with it
  }
  if (opts.socket_path.empty()) opts.socket_path = opts.state_dir + "/shmbusd.sock";
  if (opts.shm_prefix.empty()) opts.shm_prefix = "shmbus-emb-" + std::to_string(getpid());
  auto d = std::make_shared<Daemon>(opts);
  d->start();
  DaemonClient::Options co;
  co.socket_path = d->options().socket_path;
  auto inner = make_daemon_provider(DaemonClient::connect(co));
  return Bus(std::make_shared<EmbeddedProvider>(d, inner, tmp));
}

}  // namespace shmbus
