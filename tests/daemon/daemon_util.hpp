// Process and daemon helpers for the daemon tests: every wait has a watchdog.
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
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace shmbus::test {

inline uint64_t now_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

struct Child {
  pid_t pid = -1;
  int out = -1;  // its stdout (progress characters)
  int pidfd = -1;
};

// fork + exec with stdout to a pipe; stderr inherited (or to `err_file`).
inline Child spawn(const std::vector<std::string>& args, const std::string& err_file = {},
                   const std::vector<std::string>& env = {}) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) throw std::runtime_error("pipe");
  std::vector<char*> av;
  for (auto& a : args) av.push_back(const_cast<char*>(a.c_str()));
  av.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    if (!err_file.empty()) {
      int e = open(err_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (e >= 0) dup2(e, 2);
    }
    for (auto& kv : env) putenv(const_cast<char*>(kv.c_str()));
    execv(av[0], av.data());
    _exit(127);
  }
  close(p[1]);
  Child c;
  c.pid = pid;
  c.out = p[0];
  c.pidfd = int(syscall(SYS_pidfd_open, pid, 0));
  return c;
}

// Next progress character, or 0 on EOF / timeout (the watchdog).
inline char read_char(const Child& c, int timeout_ms) {
  pollfd p{c.out, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return 0;
  char ch = 0;
  return read(c.out, &ch, 1) == 1 ? ch : 0;
}

// Waits (bounded) for the child to exit; returns the raw wait status, or -1 on timeout.
inline int wait_exit(Child& c, int timeout_ms) {
  if (c.pid <= 0) return -1;
  pollfd p{c.pidfd, POLLIN, 0};
  if (c.pidfd >= 0 && poll(&p, 1, timeout_ms) <= 0) return -1;
  int st = 0;
  waitpid(c.pid, &st, 0);
  if (c.out >= 0) close(c.out);
  if (c.pidfd >= 0) close(c.pidfd);
  c = Child{};
  return st;
}

inline void kill9(Child& c) {
  if (c.pid <= 0) return;
  kill(c.pid, SIGKILL);
  wait_exit(c, 10000);
}

inline std::vector<std::string> shm_files(const std::string& prefix) {
  std::vector<std::string> v;
  for (auto& e : std::filesystem::directory_iterator("/dev/shm"))
    if (e.path().filename().string().rfind(prefix + ".", 0) == 0) v.push_back(e.path().filename());
  return v;
}

inline std::string daemon_path() { return SHMBUS_TEST_SHMBUSD; }
inline std::string helper_path() { return SHMBUS_TEST_HELPER; }

// A shmbusd child with its own socket, state dir and shm prefix. start() waits for
// sd_notify(READY=1) on a private NOTIFY_SOCKET (no polling, no sleeps).
struct DaemonProc {
  std::string dir, sock, state, prefix, log;
  Child proc;
  int notify_fd = -1;
  int64_t reclaim_ms = 20;

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
    if (proc.pid > 0) kill9(proc);
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
    proc = spawn({daemon_path(), "--socket", sock, "--state-dir", state, "--shm-prefix", prefix,
                  "--reclaim-interval-ms", std::to_string(reclaim_ms), "--log-level", "info"},
                 log, {"NOTIFY_SOCKET=" + dir + "/notify"});
    const uint64_t deadline = now_ns() + uint64_t(timeout_ms) * 1'000'000;
    for (;;) {
      uint64_t t = now_ns();
      if (t >= deadline) return false;
      pollfd p[2] = {{notify_fd, POLLIN, 0}, {proc.pidfd, POLLIN, 0}};
      if (poll(p, 2, int((deadline - t) / 1'000'000) + 1) <= 0) return false;
      if (p[1].revents) return false;  // exited
      char buf[256];
      ssize_t n = recv(notify_fd, buf, sizeof buf - 1, 0);
      if (n > 0 && std::string(buf, size_t(n)).find("READY=1") != std::string::npos) return true;
    }
  }
  // SIGTERM; true if it exited 0 within the watchdog.
  bool stop() {
    if (proc.pid <= 0) return true;
    kill(proc.pid, SIGTERM);
    int st = wait_exit(proc, 10000);
    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  void crash() { kill9(proc); }
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
