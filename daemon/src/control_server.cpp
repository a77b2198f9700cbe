// The control server thread: the listening socket (SOCK_SEQPACKET: the kernel
// keeps packet boundaries, so there are no partial frames to time out), the
// connections, request decoding, and sending the registry's replies.
//
// Defences: every socket is non-blocking; a packet larger than the frame limit is
// truncated by the kernel and answered with an error; a frame that does not
// decode gets an error reply; a client that sent 64 bad frames, or does not read
// its replies (send would block), is disconnected. Fds a client sends are closed.
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/un.h>

#include "core.hpp"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace shmbus::daemon {

uint64_t pidfd_identity(int pidfd) {
  // pidfs (Linux 6.9+) gives every process its own inode; before it every pidfd
  // shares one anonymous inode, which identifies nothing.
  static const uint64_t shared = [] {
    struct stat a {
    }, b{};
    int x = int(syscall(SYS_pidfd_open, getpid(), 0)), y = int(syscall(SYS_pidfd_open, 1, 0));
    uint64_t r = 0;
    if (x >= 0 && y >= 0 && fstat(x, &a) == 0 && fstat(y, &b) == 0 && a.st_ino == b.st_ino) r = a.st_ino;
    if (x >= 0) close(x);
    if (y >= 0) close(y);
    return r;
  }();
  struct stat st {};
  if (pidfd < 0 || fstat(pidfd, &st) < 0 || uint64_t(st.st_ino) == shared) return 0;
  return uint64_t(st.st_ino);
}

namespace {
constexpr uint64_t kListenTag = 1;
constexpr uint64_t kQueueTag = 2;
constexpr uint64_t kStopTag = 3;
constexpr uint64_t kConnBase = 16;
constexpr uint32_t kMaxBadFrames = 64;
}  // namespace

// The socket is bound inside its directory through the directory's fd
// (/proc/self/fd/N/name), so the checked directory is the one bound in, whatever
// happens to the path's parents meanwhile.
void ControlServer::bind(int dir_fd) {
  const std::string& path = core_.opts.socket_path;
  auto slash = path.rfind('/');
  sock_name_ = slash == std::string::npos ? path : path.substr(slash + 1);
  if (sock_name_.empty() || sock_name_ == "." || sock_name_ == "..")
    throw Error(ErrorCode::invalid_argument, "bad socket path: " + path);
  dir_fd_ = dir_fd;
  const std::string via = "/proc/self/fd/" + std::to_string(dir_fd) + "/" + sock_name_;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path) || via.size() >= sizeof(a.sun_path))
    throw Error(ErrorCode::invalid_argument, "socket path too long: " + path);
  std::memcpy(a.sun_path, via.c_str(), via.size() + 1);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, std::string("socket: ") + strerror(e), e);
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) {
    if (errno != EADDRINUSE) {
      int e = errno;
      close(fd);
      throw Error(ErrorCode::system, path + ": bind: " + strerror(e), e);
    }
    // Stale socket from a crashed daemon, or a live daemon?
    int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    close(probe);
    if (live) {
      close(fd);
      throw Error(ErrorCode::already_exists, path + ": another shmbusd is serving this socket");
    }
    // Only a socket is removed (never a file someone planted under the name).
    struct stat st {};
    if (fstatat(dir_fd, sock_name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISSOCK(st.st_mode)) {
      close(fd);
      throw Error(ErrorCode::already_exists, path + ": exists and is not a socket: refusing to replace it");
    }
    unlinkat(dir_fd, sock_name_.c_str(), 0);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) {
      int e = errno;
      close(fd);
      throw Error(ErrorCode::system, path + ": bind: " + strerror(e), e);
    }
  }
  fchmodat(dir_fd, sock_name_.c_str(), core_.opts.socket_mode & 0777, 0);
  if (listen(fd, 128) < 0) {
    int e = errno;
    close(fd);
    throw Error(ErrorCode::system, std::string("listen: ") + strerror(e), e);
  }
  listen_fd_ = fd;
}

void ControlServer::close_listener() {
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
    if (dir_fd_ >= 0) unlinkat(dir_fd_, sock_name_.c_str(), 0);
  }
}

void ControlServer::drop(uint64_t id, const char* reason) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  epoll_ctl(ep_, EPOLL_CTL_DEL, it->second.fd, nullptr);
  close(it->second.fd);
  log_limited(core_.instance, LOG_DEBUG, "client_disconnected", "", it->second.peer.pid, reason);
  core_.reaper_q.push(ReaperCmd{ReaperCmd::client_gone, nullptr, it->second.peer.pid});
  // After every request this connection sent (same queue, in order): its ephemeral
  // topics go.
  core_.registry_q.push(RegistryCmd{RegistryCmd::conn_closed, it->second.peer, nullptr});
  auto u = uid_conns_.find(it->second.peer.uid);
  if (u != uid_conns_.end() && --u->second == 0) uid_conns_.erase(u);
  conns_.erase(it);
  core_.counters.clients = uint32_t(conns_.size());
}

void ControlServer::pause_accept() {
  accept_paused_until_ = shm::monotonic_ns() + 100'000'000ull;
  epoll_ctl(ep_, EPOLL_CTL_DEL, listen_fd_, nullptr);
}

void ControlServer::accept_all() {
  // A reserve lost before (no fd was free to reopen it) is taken back first.
  if (reserve_fd_ < 0) reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EMFILE || errno == ENFILE) {
        // Out of fds: the pending connection would make the listener readable
        // forever (a spin). Give up the reserve fd, accept it and close it at once
        // (the client sees a closed connection); without a reserve, stop accepting
        // for a moment instead. The lock keeps the reaper's pidfd_open (which our
        // accepts trigger) from taking the freed slot: the reserve would be lost,
        // and with it every queued client's answer until some client leaves.
        log_limited(core_.instance, LOG_WARN, "accept_failed", "", 0,
                    std::string(strerror(errno)) + ": a connection was refused");
        if (reserve_fd_ >= 0) {
          std::lock_guard<std::mutex> g(core_.fd_reserve_mu);
          close(reserve_fd_);
          reserve_fd_ = -1;
          int f = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
          if (f >= 0) close(f);
          reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
          if (f >= 0) continue;
        }
        pause_accept();
        return;
      }
      log_limited(core_.instance, LOG_WARN, "accept_failed", "", 0, strerror(errno));
      return;
    }
    ucred cr{};
    socklen_t len = sizeof(cr);
    const char* refuse = nullptr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
      refuse = "no peer credentials";
    } else {
      const bool privileged = cr.uid == 0 || cr.uid == geteuid();
      // Root and the daemon's uid keep a few connections beyond the limit (to stop,
      // inspect and repair a daemon others saturate).
      if (conns_.size() >= core_.opts.max_clients + (privileged ? 16u : 0u))
        refuse = "too many clients";
      else if (!privileged && uid_conns_.count(cr.uid) &&
               uid_conns_[cr.uid] >= core_.opts.uid_max_connections)
        refuse = "too many connections from this uid (uid_max_connections)";
    }
    if (refuse) {
      log_limited(core_.instance, LOG_WARN, "client_refused", "", cr.pid,
                  std::string(refuse) + " (uid " + std::to_string(cr.uid) + ")");
      close(fd);
      continue;
    }
    Conn c;
    c.fd = fd;
    c.peer.conn = next_conn_++;
    c.peer.pid = cr.pid;
    c.peer.uid = cr.uid;
    c.peer.gid = cr.gid;
    // Supplementary groups as the kernel had them at connect (not /proc/<pid>, which a
    // reused pid could answer for).
    {
      std::vector<gid_t> g(64);
      socklen_t gl = socklen_t(g.size() * sizeof(gid_t));
      if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g.data(), &gl) < 0 && errno == ERANGE) {
        g.resize(gl / sizeof(gid_t) + 1);
        gl = socklen_t(g.size() * sizeof(gid_t));
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g.data(), &gl) < 0) gl = 0;
      }
      g.resize(gl / sizeof(gid_t));
      c.peer.groups = std::make_shared<const std::vector<gid_t>>(std::move(g));
    }
    // The process that connected, as the kernel knew it at connect (not a pid
    // number another process may get later).
    {
      int pfd = -1;
      socklen_t pl = sizeof pfd;
      if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pfd, &pl) == 0 && pfd >= 0) {
        c.peer.proc = pidfd_identity(pfd);
        close(pfd);
      }
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = kConnBase + c.peer.conn;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    core_.reaper_q.push(ReaperCmd{ReaperCmd::client_pid, nullptr, cr.pid});
    ++uid_conns_[cr.uid];
    conns_.emplace(c.peer.conn, c);
    core_.counters.clients = uint32_t(conns_.size());
  }
}

void ControlServer::set_reading(Conn& c, bool on) {
  epoll_event ev{};
  ev.events = (on ? EPOLLIN : 0u) | EPOLLRDHUP;
  ev.data.u64 = kConnBase + c.peer.conn;
  epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  c.paused = !on;
}

void ControlServer::answered(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  if (c.inflight) --c.inflight;
  if (c.paused && c.inflight <= core_.opts.max_inflight_per_client / 2) set_reading(c, true);
}

void ControlServer::send_to(uint64_t id, const std::vector<uint8_t>& frame, const std::vector<int>& fds) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;  // the client left before its answer
  int r = control::send_packet(it->second.fd, frame, fds);
  if (r < 0) drop(id, r == -EAGAIN ? "does not read its replies" : "send failed");
}

void ControlServer::on_readable(uint64_t id) {
  for (int budget = 0; budget < 32; ++budget) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = it->second;
    std::vector<uint8_t> buf;
    long n = control::recv_packet(c.fd, buf, nullptr, 0);
    if (n == -ETIMEDOUT || n == -EAGAIN) return;
    if (n == 0) return drop(id, "closed");
    if (n == -EMSGSIZE) {
      send_to(id,
              error_frame(0, proto::ErrorCode::TOO_LARGE,
                          "frame larger than " + std::to_string(control::kMaxFrame) + " bytes"),
              {});
      if (conns_.count(id) && ++conns_[id].errors > kMaxBadFrames) drop(id, "too many bad frames");
      continue;
    }
    if (n < 0) return drop(id, "recv failed");
    auto req = std::make_shared<DecodedRequest>();
    proto::ErrorCode code;
    std::string err;
    uint64_t rid = 0;
    if (!decode_request(buf, *req, code, err, rid)) {
      log_limited(core_.instance, LOG_DEBUG, "bad_request", "", c.peer.pid, err);
      Peer peer = c.peer;
      bool too_many = ++c.errors > kMaxBadFrames;
      send_to(id, error_frame(rid, code, err), {});
      if (too_many) drop(peer.conn, "too many bad frames");
      continue;
    }
    if (core_.stopping.load()) {
      send_to(id, error_frame(rid, proto::ErrorCode::SHUTTING_DOWN, "shmbusd is shutting down"), {});
      continue;
    }
    RegistryCmd rc;
    rc.peer = c.peer;
    rc.req = std::move(req);
    rc.recv_ns = shm::monotonic_ns();
    core_.registry_q.push(std::move(rc));
    // Back-pressure: a client with this many unanswered requests is not read until
    // the registry caught up (its requests wait in its socket, not in our memory).
    if (++c.inflight >= std::max<uint32_t>(1, core_.opts.max_inflight_per_client)) {
      set_reading(c, false);
      return;
    }
  }
}

ControlServer::~ControlServer() {
  if (ep_ >= 0) close(ep_);
  if (reserve_fd_ >= 0) close(reserve_fd_);
}

void ControlServer::init() {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  if (ep_ < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, std::string("epoll_create1: ") + strerror(e), e);
  }
  reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (reserve_fd_ < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, std::string("/dev/null: ") + strerror(e), e);
  }
}

void ControlServer::run() {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenTag;
  epoll_ctl(ep_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.u64 = kQueueTag;
  epoll_ctl(ep_, EPOLL_CTL_ADD, core_.server_q.fd(), &ev);
  ev.data.u64 = kStopTag;
  epoll_ctl(ep_, EPOLL_CTL_ADD, core_.stop_efd, &ev);
  core_.counters.serving = true;
  epoll_event evs[64];
  bool draining = false;
  for (;;) {
    ServerCmd sc;
    bool stop_now = false;
    while (core_.server_q.try_pop(sc)) {
      if (sc.conn == 0 && sc.frame.empty()) {
        stop_now = true;  // the registry has finished: last message
        continue;
      }
      send_to(sc.conn, sc.frame, sc.fds);
      for (int f : sc.fds) close(f);
      answered(sc.conn);
    }
    if (stop_now) break;
    if (core_.stopping.load() && !draining) {
      // Stop accepting; let the registry finish what is queued, then it tells us.
      draining = true;
      epoll_ctl(ep_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      epoll_ctl(ep_, EPOLL_CTL_DEL, core_.stop_efd, nullptr);
      close_listener();
      core_.counters.serving = false;
      core_.registry_q.push(RegistryCmd{RegistryCmd::stop, {}, nullptr});
    }
    if (accept_paused_until_ && !draining && shm::monotonic_ns() >= accept_paused_until_) {
      accept_paused_until_ = 0;
      epoll_event lev{};
      lev.events = EPOLLIN;
      lev.data.u64 = kListenTag;
      epoll_ctl(ep_, EPOLL_CTL_ADD, listen_fd_, &lev);
    }
    int n = epoll_wait(ep_, evs, 64, accept_paused_until_ ? 100 : 1000);
    for (int i = 0; i < n; ++i) {
      uint64_t tag = evs[i].data.u64;
      // Any failure here (an allocation, a bug) costs at most the connection it
      // happened on; the server keeps serving everyone else.
      try {
        if (tag == kListenTag) {
          accept_all();
        } else if (tag == kQueueTag) {
          core_.server_q.clear_signal();
        } else if (tag == kStopTag) {
          // request_stop() already set `stopping`; the loop head drains.
        } else {
          uint64_t id = tag - kConnBase;
          if (evs[i].events & EPOLLIN) on_readable(id);
          if (evs[i].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
            // Read what is left, then drop.
            if (conns_.count(id)) on_readable(id);
            drop(id, "hung up");
          }
        }
      } catch (const std::exception& e) {
        log_limited(core_.instance, LOG_ERROR, "server_error", "", 0, e.what());
        if (tag >= kConnBase) drop(tag - kConnBase, "internal error");
      }
    }
  }
  for (auto& [id, c] : conns_) close(c.fd);
  conns_.clear();
  uid_conns_.clear();
  close(ep_);
  ep_ = -1;
  if (reserve_fd_ >= 0) close(reserve_fd_);
  reserve_fd_ = -1;
}

}  // namespace shmbus::daemon
