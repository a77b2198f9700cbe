// The segment keeper: a process that holds the daemon's segment memfds while no daemon
// runs (see SegmentKeeper in core.hpp and docs/operations.md, "The segment keeper").
//
// Wire protocol on <state dir>/keeper.sock (SOCK_SEQPACKET, one message a packet, both
// ends of the same uid, checked with SO_PEERCRED):
//   daemon -> keeper   'P' name  + 1 fd   hold this fd under name (replaces)
//                      'D' name           let go of name
//                      'L'                list: the keeper answers 'F' name + fd for
//                                         each fd it holds, then 'E'
//                      'S'                sync: the keeper answers 'E' (everything sent
//                                         before is held)
//                      'X'                exit (the daemon holds no segment)
// The keeper is the daemon's own executable re-executed (/proc/self/exe; embedded
// daemons' executables too): a constructor in this file takes over before main().
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <unordered_map>
#include <vector>

#include "core.hpp"

namespace shmbus::daemon {

namespace {

constexpr const char* kSock = "keeper.sock";
constexpr const char* kPidFile = "keeper.pid";
constexpr size_t kMaxName = 1024;

// One packet, with at most one fd (extra fds are closed). Returns the byte count, 0 at
// EOF, -1 on error; *fd is -1 when none came.
ssize_t recv_one(int s, char* buf, size_t cap, int* fd) {
  *fd = -1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 4)];
  iovec iov{buf, cap};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof cbuf;
  ssize_t n;
  do n = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; ++i) {
      int f;
      std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (*fd < 0)
        *fd = f;
      else
        close(f);
    }
  }
  if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    if (*fd >= 0) close(*fd), *fd = -1;
    errno = EMSGSIZE;
    return -1;
  }
  return n;
}

int send_one(int s, char op, const std::string& name, int fd) {
  std::string b(1, op);
  b += name;
  iovec iov{b.data(), b.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    std::memset(cbuf, 0, sizeof cbuf);
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  ssize_t n;
  do n = sendmsg(s, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n == ssize_t(b.size()) ? 0 : -1;
}

bool peer_is_us(int s, pid_t* pid) {
  ucred c{};
  socklen_t l = sizeof c;
  if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &c, &l) < 0 || c.uid != geteuid()) return false;
  if (pid) *pid = c.pid;
  return true;
}

std::string in_dir(int dirfd, const char* name) {
  return "/proc/self/fd/" + std::to_string(dirfd) + "/" + name;
}

// The keeper's body (after exec: fd 3 its bound socket, fd 4 the state dir, fd 5 the
// pipe it closes once it listens). It listens itself: a connecting daemon's SO_PEERCRED
// then names the keeper (the credentials of whoever called listen()). Never returns.
[[noreturn]] void keeper_main() {
  const int lfd = 3, dfd = 4;
  if (listen(lfd, 8) < 0) _exit(1);
  close(5);
  struct stat mine {};
  fstatat(dfd, kSock, &mine, AT_SYMLINK_NOFOLLOW);
  std::unordered_map<std::string, int> held;
  std::vector<pollfd> fds{{lfd, POLLIN, 0}};
  auto quit = [&](int code) {
    // Our files, when they are still ours (a later keeper may have replaced them).
    struct stat now {};
    if (fstatat(dfd, kSock, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_ino == mine.st_ino &&
        now.st_dev == mine.st_dev) {
      unlinkat(dfd, kSock, 0);
      char b[32] = {};
      const int pf = openat(dfd, kPidFile, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
      if (pf >= 0) {
        const ssize_t n = read(pf, b, sizeof b - 1);
        close(pf);
        if (n > 0 && atol(b) == long(getpid())) unlinkat(dfd, kPidFile, 0);
      }
    }
    _exit(code);
  };
  std::vector<char> buf(kMaxName + 2);
  for (;;) {
    const int r = poll(fds.data(), fds.size(), 2000);
    if (r < 0 && errno != EINTR) quit(1);
    if (r == 0) {
      // Our socket gone from the state dir (removed, or replaced by a later keeper):
      // nobody can reach us any more.
      struct stat now {};
      if (fstatat(dfd, kSock, &now, AT_SYMLINK_NOFOLLOW) != 0 || now.st_ino != mine.st_ino ||
          now.st_dev != mine.st_dev)
        quit(0);
      continue;
    }
    if (fds[0].revents & POLLIN) {
      const int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        if (peer_is_us(c, nullptr))
          fds.push_back({c, POLLIN, 0});
        else
          close(c);
      }
    }
    for (size_t i = 1; i < fds.size();) {
      if (!fds[i].revents) {
        ++i;
        continue;
      }
      int fd = -1;
      const ssize_t n = recv_one(fds[i].fd, buf.data(), buf.size(), &fd);
      if (n <= 0) {
        close(fds[i].fd);
        fds.erase(fds.begin() + long(i));
        if (held.empty() && fds.size() == 1) quit(0);  // nothing to keep, nobody connected
        continue;
      }
      const std::string name(buf.data() + 1, size_t(n - 1));
      switch (buf[0]) {
        case 'P':
          if (fd >= 0 && !name.empty()) {
            auto [it, fresh] = held.try_emplace(name, fd);
            if (!fresh) close(it->second), it->second = fd;
            fd = -1;
          }
          break;
        case 'D':
          if (auto it = held.find(name); it != held.end()) close(it->second), held.erase(it);
          break;
        case 'L': {
          bool ok = true;
          for (auto& [k, v] : held)
            if (send_one(fds[i].fd, 'F', k, v) < 0) {
              ok = false;
              break;
            }
          if (ok) send_one(fds[i].fd, 'E', "", -1);
          break;
        }
        case 'S': send_one(fds[i].fd, 'E', "", -1); break;
        case 'X': quit(0);
        default: break;
      }
      if (fd >= 0) close(fd);
      fds[i].revents = 0;
      ++i;
    }
  }
}

// The keeper's entry: an executable that links the daemon, re-executed by
// spawn_locked with this variable, is the keeper and never reaches its main().
__attribute__((constructor)) void keeper_entry() {
  const char* v = getenv("SHMBUS_SEGMENT_KEEPER");
  if (!v || std::strcmp(v, "1") != 0) return;
  prctl(PR_SET_NAME, "shmbus-keeper");
  struct stat st {};
  int type = 0;
  socklen_t tl = sizeof type;
  // Not started by a daemon (no socket at 3, no directory at 4, no pipe at 5): refuse.
  if (fstat(4, &st) < 0 || !S_ISDIR(st.st_mode) || getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
      type != SOCK_SEQPACKET || fstat(5, &st) < 0 || !S_ISFIFO(st.st_mode))
    _exit(2);
  keeper_main();
}

}  // namespace

std::string keeper_name(const std::string& topic, uint32_t p, bool data) {
  return topic + "/" + std::to_string(p) + (data ? "/data" : "/ctl");
}

SegmentKeeper::~SegmentKeeper() {
  if (watcher_.joinable()) {
    uint64_t one = 1;
    ssize_t w = write(stop_efd_, &one, 8);
    (void)w;
    watcher_.join();
  }
  if (stop_efd_ >= 0) close(stop_efd_);
  for (auto& [n, fd] : inventory_) close(fd);
  if (conn_ >= 0) close(conn_);
  if (our_child_ && pid_ > 0) waitpid(pid_, nullptr, WNOHANG);
  if (state_fd_ >= 0) close(state_fd_);
}

bool SegmentKeeper::connect_locked() {
  const int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const std::string path = in_dir(state_fd_, kSock);
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  pid_t pid = 0;
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || !peer_is_us(s, &pid)) {
    close(s);
    return false;
  }
  // A keeper that stops reading never blocks the daemon for long: the send fails,
  // the keeper is replaced.
  timeval tv{2, 0};
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  conn_ = s;
  pid_ = pid;
  return true;
}

bool SegmentKeeper::spawn_locked() {
  unlinkat(state_fd_, kSock, 0);  // a dead keeper's (nobody answered on it)
  const int l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (l < 0) return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const std::string path = in_dir(state_fd_, kSock);
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  const mode_t old = umask(077);
  const int b = bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a);
  umask(old);
  int ready[2] = {-1, -1};
  if (b < 0 || pipe2(ready, O_CLOEXEC) < 0) {
    close(l);
    return false;
  }
  // Everything the child needs is made before fork (between fork and exec only
  // async-signal-safe calls): the keeper's fds at 3 and 4 come from copies >= 10.
  const int hl = fcntl(l, F_DUPFD_CLOEXEC, 10), hd = fcntl(state_fd_, F_DUPFD_CLOEXEC, 10),
            hr = fcntl(ready[1], F_DUPFD_CLOEXEC, 10);
  const int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  char exe[] = "/proc/self/exe";
  char arg0[] = "shmbus-keeper";
  char env0[] = "SHMBUS_SEGMENT_KEEPER=1";
  char* argv[] = {arg0, nullptr};
  char* envp[] = {env0, nullptr};
  sigset_t none;
  sigemptyset(&none);
  const pid_t pid = (hl < 0 || hd < 0 || hr < 0 || null < 0) ? -1 : fork();
  if (pid == 0) {
    // The keeper: its own session (a signal to the daemon's process group does not
    // reach it), nothing inherited but its socket and the state dir, a fresh image
    // (the daemon's mappings and threads are not its business), entered through the
    // constructor below.
    setsid();
    signal(SIGPIPE, SIG_IGN);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (dup2(hl, 3) < 0 || dup2(hd, 4) < 0 || dup2(hr, 5) < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 ||
        dup2(null, 2) < 0)
      _exit(127);
    syscall(SYS_close_range, 6u, ~0u, 0u);
    execve(exe, argv, envp);
    _exit(127);
  }
  const int e = errno;
  for (int f : {hl, hd, hr, null, ready[1], l})
    if (f >= 0) close(f);
  if (pid < 0) {
    close(ready[0]);
    unlinkat(state_fd_, kSock, 0);
    errno = e;
    return false;
  }
  // Listening once the pipe reads EOF (the keeper closed its end; or it died).
  pollfd p{ready[0], POLLIN, 0};
  char c;
  const bool up = poll(&p, 1, 10000) == 1 && read(ready[0], &c, 1) == 0;
  close(ready[0]);
  pid_ = pid;
  our_child_ = true;
  if (!up || !connect_locked()) {
    const int e2 = errno;
    retire_locked();
    errno = e2 ? e2 : ECHILD;
    return false;
  }
  return true;
}

void SegmentKeeper::write_pid_locked() {
  // For operators and tests: who the keeper is. Written once it holds what it was fed
  // (a sync round trip: it answers after handling everything sent before).
  if (conn_ < 0 || send_one(conn_, 'S', "", -1) < 0) return;
  char b[8];
  int fd = -1;
  if (recv_one(conn_, b, sizeof b, &fd) != 1 || b[0] != 'E') {
    if (fd >= 0) close(fd);
    return;
  }
  const int f =
      openat(state_fd_, "keeper.pid.new", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (f < 0) return;
  const std::string s = std::to_string(pid_) + "\n";
  const bool ok = write(f, s.data(), s.size()) == ssize_t(s.size());
  close(f);
  if (ok) renameat(state_fd_, "keeper.pid.new", state_fd_, kPidFile);
}

void SegmentKeeper::start(int state_fd, const std::string& state_dir, const std::string& instance,
                          bool enabled) {
  std::lock_guard<std::mutex> g(mu_);
  enabled_ = enabled;
  instance_ = instance;
  state_dir_ = state_dir;
  if (!enabled) return;
  state_fd_ = fcntl(state_fd, F_DUPFD_CLOEXEC, 0);
  if (state_fd_ < 0) {
    enabled_ = false;
    return;
  }
  if (connect_locked()) {
    // A previous daemon's keeper: its inventory is what that daemon had.
    bool ok = send_one(conn_, 'L', "", -1) == 0;
    std::vector<char> buf(kMaxName + 2);
    while (ok) {
      int fd = -1;
      const ssize_t n = recv_one(conn_, buf.data(), buf.size(), &fd);
      if (n <= 0) {
        ok = false;
        break;
      }
      if (buf[0] == 'E') break;
      if (buf[0] == 'F' && fd >= 0) {
        auto [it, fresh] = inventory_.try_emplace(std::string(buf.data() + 1, size_t(n - 1)), fd);
        if (fresh) fd = -1;
      }
      if (fd >= 0) close(fd);
    }
    if (ok) {
      log_event(instance_, LOG_INFO, "keeper_found", "", pid_,
                std::to_string(inventory_.size()) + " segments kept for this daemon");
      write_pid_locked();
      return;
    }
    log_event(instance_, LOG_WARN, "keeper_unusable", "", pid_,
              "the keeper did not hand its segments back: starting a new one");
    retire_locked();
    for (auto& [n, fd] : inventory_) close(fd);
    inventory_.clear();
  }
  if (!spawn_locked()) {
    log_event(instance_, LOG_ERROR, "keeper_failed", "", 0,
              std::string("cannot start the segment keeper (") + strerror(errno) +
                  "): topic contents will not survive this daemon");
    return;
  }
  log_event(instance_, LOG_INFO, "keeper_started", "", pid_, state_dir_ + "/" + kSock);
  write_pid_locked();
}

int SegmentKeeper::take(const std::string& name) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = inventory_.find(name);
  if (it == inventory_.end()) return -1;
  const int fd = it->second;
  inventory_.erase(it);
  return fd;
}

void SegmentKeeper::give_back(const std::string& name, int fd) {
  if (fd < 0) return;
  std::lock_guard<std::mutex> g(mu_);
  auto [it, fresh] = inventory_.try_emplace(name, fd);
  if (!fresh) close(fd);
}

void SegmentKeeper::finish_start(const std::set<std::string>& keep_topics) {
  std::lock_guard<std::mutex> g(mu_);
  size_t dropped = 0;
  for (auto it = inventory_.begin(); it != inventory_.end();) {
    if (keep_topics.count(it->first.substr(0, it->first.find('/')))) {
      ++it;  // a topic the registry keeps without having restored it yet
      continue;
    }
    if (conn_ >= 0) send_one(conn_, 'D', it->first, -1);
    close(it->second);
    it = inventory_.erase(it);
    ++dropped;
  }
  if (dropped)
    log_event(instance_, LOG_INFO, "keeper_dropped", "", pid_,
              std::to_string(dropped) + " kept segments no topic claimed");
  if (!enabled_) return;
  stop_efd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_efd_ >= 0) watcher_ = std::thread([this] { watch(); });
}

bool SegmentKeeper::send_locked(char op, const std::string& name, int fd) {
  if (conn_ < 0) return false;
  if (send_one(conn_, op, name, fd) == 0) return true;
  // The keeper is gone or stuck: the watch thread replaces it.
  shutdown(conn_, SHUT_RDWR);
  return false;
}

void SegmentKeeper::put(const std::string& name, const std::shared_ptr<Partition>& p, int fd) {
  std::lock_guard<std::mutex> g(mu_);
  if (!enabled_) return;
  held_[name] = p;
  if (fd >= 0) send_locked('P', name, fd);
}

void SegmentKeeper::drop(const std::string& name) {
  std::lock_guard<std::mutex> g(mu_);
  if (!enabled_) return;
  held_.erase(name);
  if (auto it = inventory_.find(name); it != inventory_.end()) close(it->second), inventory_.erase(it);
  send_locked('D', name, -1);
}

void SegmentKeeper::refeed_locked() {
  size_t n = 0;
  for (auto it = held_.begin(); it != held_.end();) {
    auto p = it->second.lock();
    if (!p) {
      it = held_.erase(it);
      continue;
    }
    const bool data = it->first.size() >= 5 && it->first.compare(it->first.size() - 5, 5, "/data") == 0;
    if (!send_locked('P', it->first, data ? p->data_fd : p->ctl_fd)) return;
    ++n, ++it;
  }
  for (auto& [name, fd] : inventory_)  // kept for topics not restored yet
    if (send_locked('P', name, fd)) ++n;
  log_event(instance_, LOG_WARN, "keeper_respawned", "", pid_,
            "the segment keeper had died; a new one holds the " + std::to_string(n) + " segments");
}

// The current keeper is done with (closed, or stuck): it exits (SIGKILL after a
// second) and, when it is our child, is reaped.
void SegmentKeeper::retire_locked() {
  if (conn_ >= 0) close(conn_), conn_ = -1;
  if (pid_ <= 0) return;
  const int pfd = int(syscall(SYS_pidfd_open, pid_, 0));
  if (pfd >= 0) {
    pollfd p{pfd, POLLIN, 0};
    if (poll(&p, 1, 1000) == 0) {
      syscall(SYS_pidfd_send_signal, pfd, SIGKILL, nullptr, 0);
      poll(&p, 1, 5000);
    }
    close(pfd);
  }
  if (our_child_) waitpid(pid_, nullptr, WNOHANG);
  pid_ = 0;
  our_child_ = false;
}

void SegmentKeeper::watch() {
  for (;;) {
    int conn;
    {
      std::lock_guard<std::mutex> g(mu_);
      conn = conn_;
    }
    pollfd p[2] = {{stop_efd_, POLLIN, 0}, {conn, POLLIN, 0}};
    // Without a keeper: try again in a second.
    const int r = poll(p, conn >= 0 ? 2 : 1, conn >= 0 ? -1 : 1000);
    if (r < 0 && errno != EINTR) return;
    if (p[0].revents) return;
    if (conn >= 0 && !p[1].revents) continue;
    std::lock_guard<std::mutex> g(mu_);
    if (conn_ >= 0 && conn_ == conn) {
      // Readable: the keeper closed (died), or an answer to a sync that its caller
      // took meanwhile (nothing to read now), or a stray packet (dropped).
      char b[8];
      const ssize_t n = recv(conn_, b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) {
        int fd = -1;
        recv_one(conn_, b, sizeof b, &fd);
        if (fd >= 0) close(fd);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    } else if (conn_ >= 0) {
      continue;  // replaced meanwhile
    }
    if (conn_ >= 0) {
      log_event(instance_, LOG_WARN, "keeper_lost", "", pid_,
                "the segment keeper is gone: starting a new one");
      retire_locked();
    }
    if (!spawn_locked()) {
      log_event(instance_, LOG_ERROR, "keeper_failed", "", 0,
                std::string("cannot start the segment keeper (") + strerror(errno) + "): retrying");
      continue;
    }
    refeed_locked();
    if (conn_ >= 0) write_pid_locked();
  }
}

void SegmentKeeper::stop() {
  if (watcher_.joinable()) {
    uint64_t one = 1;
    ssize_t w = write(stop_efd_, &one, 8);
    (void)w;
    watcher_.join();
  }
  std::lock_guard<std::mutex> g(mu_);
  if (conn_ < 0) return;
  for (auto it = held_.begin(); it != held_.end();)
    it = it->second.expired() ? held_.erase(it) : std::next(it);
  if (!held_.empty()) return;  // it keeps the topics' contents for the next daemon
  // Nothing to keep: the keeper goes, with its socket and pid file (waited for, so
  // the state dir is clean when the daemon has stopped).
  send_one(conn_, 'X', "", -1);
  retire_locked();
}

}  // namespace shmbus::daemon
