// Daemon helpers for the daemon tests (processes: ../child_process.hpp): every wait has
// a watchdog.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "../child_process.hpp"
#include "../test_util.hpp"

namespace shmbus::test {

inline uint64_t now_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

inline std::vector<std::string> shm_files(const std::string& prefix) {
  std::vector<std::string> v;
  for (auto& e : std::filesystem::directory_iterator("/dev/shm"))
    if (e.path().filename().string().rfind(prefix + ".", 0) == 0) v.push_back(e.path().filename());
  return v;
}

inline std::string daemon_path() { return SHMBUS_TEST_SHMBUSD; }

// The segment keeper of a state dir (its pid file, checked to name a live
// "shmbus-keeper"), or 0.
inline pid_t keeper_pid(const std::string& state_dir) {
  FILE* f = fopen((state_dir + "/keeper.pid").c_str(), "r");
  if (!f) return 0;
  long pid = 0;
  if (fscanf(f, "%ld", &pid) != 1) pid = 0;
  fclose(f);
  if (pid <= 0) return 0;
  char comm[64] = {};
  FILE* c = fopen(("/proc/" + std::to_string(pid) + "/comm").c_str(), "r");
  if (!c) return 0;
  const bool ok = fgets(comm, sizeof comm, c) && std::string(comm) == "shmbus-keeper\n";
  fclose(c);
  return ok ? pid_t(pid) : 0;
}

// SIGKILLs the keeper of a state dir and waits until it is gone (a test's daemons
// leave no process behind).
inline void kill_keeper(const std::string& state_dir) {
  const pid_t pid = keeper_pid(state_dir);
  if (!pid) return;
  const int pfd = int(syscall(SYS_pidfd_open, pid, 0));
  if (pfd < 0) return;
  syscall(SYS_pidfd_send_signal, pfd, SIGKILL, nullptr, 0);
  pollfd p{pfd, POLLIN, 0};
  poll(&p, 1, 10000);
  close(pfd);
}

// The inode of a segment as process `pid` (a daemon, a keeper) holds it: its memfd is
// named "shmbus-data:<topic>.<p>" (or shmbus-ctl:); 0 when it holds none.
inline ino_t segment_inode(pid_t pid, const std::string& topic, uint32_t p, bool data) {
  const std::string want = std::string("/memfd:shmbus-") + (data ? "data:" : "ctl:") + topic + "." +
                           std::to_string(p) + " (deleted)";
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    char link[512];
    const ssize_t n = readlink(e.path().c_str(), link, sizeof link - 1);
    struct stat st {};
    if (n > 0 && std::string(link, size_t(n)) == want && stat(e.path().c_str(), &st) == 0) return st.st_ino;
  }
  return 0;
}

// Every keeper under dir (state dirs up to two levels down).
inline void kill_keepers_under(const std::string& dir) {
  std::error_code ec;
  kill_keeper(dir);
  for (auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (!e.is_directory(ec)) continue;
    kill_keeper(e.path());
    for (auto& f : std::filesystem::directory_iterator(e.path(), ec))
      if (f.is_directory(ec)) kill_keeper(f.path());
  }
}

// Runs argv to completion and returns its stdout (watchdog: 20 s without output, then
// 20 s for the exit).
inline std::string run_capture(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                               const std::string& err_file = {}) {
  Child c(args, err_file, env);
  std::string out = c.read_all(20000);
  c.wait(20000);
  return out;
}

// A raw SOCK_SEQPACKET connection to a daemon's control socket (for hand-made frames),
// or -1.
inline int raw_connect(const std::string& path) {
  sockaddr_un a{};
  if (path.size() >= sizeof a.sun_path) return -1;
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A shmbusd child with its own socket, state dir and shm prefix. start() waits for
// sd_notify(READY=1) on a private NOTIFY_SOCKET (no polling, no sleeps).
struct DaemonProc {
  std::string dir, sock, state, prefix, log;
  Child proc;
  int notify_fd = -1;
  int64_t reclaim_ms = 20;
  std::vector<std::string> extra;  // more shmbusd options

  explicit DaemonProc(const char* what) {
    char tpl[] = "/tmp/shmbus-dt-XXXXXX";
    dir = mkdtemp(tpl);
    chmod(dir.c_str(), 0755);
    sock = dir + "/shmbusd.sock";
    state = dir + "/state";
    log = dir + "/shmbusd.log";
    static int n = 0;
    prefix = std::string("sdt-") + what + "-" + std::to_string(getpid()) + "-" + std::to_string(n++);
  }
  ~DaemonProc() {
    proc.kill_now();
    kill_keeper(state);
    report_sanitizer();
    if (notify_fd >= 0) close(notify_fd);
    for (auto& f : shm_files(prefix)) unlink(("/dev/shm/" + f).c_str());
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  bool start(int timeout_ms = 10000) {
    if (notify_fd < 0) {
      notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::string np = dir + "/notify";
      std::memcpy(a.sun_path, np.c_str(), np.size() + 1);
      bind(notify_fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    }
    std::vector<std::string> args = {daemon_path(),
                                     "--socket",
                                     sock,
                                     "--state-dir",
                                     state,
                                     "--shm-prefix",
                                     prefix,
                                     "--reclaim-interval-ms",
                                     std::to_string(reclaim_ms),
                                     "--log-level",
                                     "info"};
    args.insert(args.end(), extra.begin(), extra.end());
    proc = Child(args, log, {"NOTIFY_SOCKET=" + dir + "/notify"});
    const uint64_t deadline = now_ns() + uint64_t(timeout_ms) * 1'000'000;
    for (;;) {
      uint64_t t = now_ns();
      if (t >= deadline) return false;
      pollfd p[2] = {{notify_fd, POLLIN, 0}, {proc.pidfd(), POLLIN, 0}};
      if (poll(p, 2, int((deadline - t) / 1'000'000) + 1) <= 0) return false;
      if (p[1].revents) return false;  // exited
      char buf[256];
      ssize_t n = recv(notify_fd, buf, sizeof buf - 1, 0);
      if (n > 0 && std::string(buf, size_t(n)).find("READY=1") != std::string::npos) return true;
    }
  }
  // SIGTERM; true if it exited 0 within the watchdog.
  bool stop() {
    if (proc.pid() <= 0) return true;
    kill(proc.pid(), SIGTERM);
    int st = proc.wait(10000);
    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  void crash() { proc.kill_now(); }
  // A sanitizer report in the daemon's log (its stderr) is copied to the test's stderr
  // before the log is removed: the daemon halted on it (halt_on_error), and the test
  // that drove it failed with no other trace of why.
  void report_sanitizer() const {
    FILE* f = fopen(log.c_str(), "r");
    if (!f) return;
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0 && text.size() < (4u << 20)) text.append(buf, n);
    fclose(f);
    for (const char* mark : {"Sanitizer", "runtime error:"}) {
      size_t at = text.find(mark);
      if (at == std::string::npos) continue;
      size_t from = text.rfind("\n==", at);
      from = from == std::string::npos ? 0 : from + 1;
      std::fprintf(stderr, "---- shmbusd (%s) sanitizer report ----\n%s\n----\n", prefix.c_str(),
                   text.substr(from, 64 << 10).c_str());
      return;
    }
  }
  // Leak check after every topic is deleted and the daemon stopped.
  std::vector<std::string> leaks() const {
    std::vector<std::string> v = shm_files(prefix);
    if (access(sock.c_str(), F_OK) == 0) v.push_back(sock);
    for (auto& e : std::filesystem::directory_iterator(state)) {
      auto n = e.path().filename().string();
      if (n != "registry.bin" && n != "shmbusd.lock") v.push_back(e.path());
    }
    return v;
  }
};

}  // namespace shmbus::test
