// Spawning the multi-process test helper (mp_helper) and talking to it.
//
// A child's stdout is a pipe to the test: the helper prints one "key value" line
// per fact ("ready 1", "received 5000000", "FAIL <reason>"). Every read and every
// wait for exit has a deadline (poll on the pipe, poll on a pidfd), so a hung
// helper fails the test instead of hanging it; a Child that is still running when
// it goes out of scope is killed and reaped.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "shmbus/shm/futex.hpp"

namespace shmbus::test {

// The helper binary: $SHMBUS_MP_HELPER (set by meson), else next to this test.
inline std::string helper_path() {
  if (const char* e = std::getenv("SHMBUS_MP_HELPER")) return e;
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("cannot find the test binary's directory");
  std::string self(buf, size_t(n));
  return self.substr(0, self.rfind('/') + 1) + "mp_helper";
}

class Child {
 public:
  Child() = default;
  explicit Child(const std::vector<std::string>& args) { start(args); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  Child(Child&& o) noexcept { *this = std::move(o); }
  Child& operator=(Child&& o) noexcept {
    std::swap(pid_, o.pid_);
    std::swap(out_, o.out_);
    std::swap(pidfd_, o.pidfd_);
    std::swap(buf_, o.buf_);
    std::swap(facts_, o.facts_);
    std::swap(status_, o.status_);
    std::swap(name_, o.name_);
    return *this;
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st;
      while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
      }
    }
    if (out_ >= 0) close(out_);
    if (pidfd_ >= 0) close(pidfd_);
  }

  // args[0] is the role; the helper path is prepended.
  void start(const std::vector<std::string>& args) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    std::string path = helper_path();
    std::vector<std::string> all{path};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    name_ = args.empty() ? "helper" : args[0];
    fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      dup2(p[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
      execv(path.c_str(), argv.data());
      dprintf(STDERR_FILENO, "exec %s: %s\n", path.c_str(), strerror(errno));
      _exit(127);
    }
    close(p[1]);
    pid_ = pid;
    out_ = p[0];
    pidfd_ = int(syscall(SYS_pidfd_open, pid, 0));
  }

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }

  // Waits up to timeout_ms for a line starting with `key` and returns its value;
  // "" on timeout or end of output. Facts seen on the way are kept.
  std::string await(const std::string& key, int timeout_ms) {
    const uint64_t deadline = shm::monotonic_ns() + uint64_t(timeout_ms) * 1'000'000;
    for (;;) {
      auto it = facts_.find(key);
      if (it != facts_.end()) return it->second;
      if (out_ < 0) return "";
      uint64_t now = shm::monotonic_ns();
      if (now >= deadline) return "";
      if (!read_some(int((deadline - now) / 1'000'000) + 1)) return "";
    }
  }

  // Reads the rest of the output and waits for exit, at most timeout_ms in all.
  // Returns the wait status, or -1 if the child did not finish in time (then it is
  // killed).
  int finish(int timeout_ms) {
    const uint64_t deadline = shm::monotonic_ns() + uint64_t(timeout_ms) * 1'000'000;
    while (out_ >= 0) {
      uint64_t now = shm::monotonic_ns();
      if (now >= deadline) break;
      read_some(int((deadline - now) / 1'000'000) + 1);
    }
    if (pid_ > 0 && pidfd_ >= 0) {
      uint64_t now = shm::monotonic_ns();
      int left = now >= deadline ? 0 : int((deadline - now) / 1'000'000) + 1;
      pollfd pf{pidfd_, POLLIN, 0};
      while (poll(&pf, 1, left) < 0 && errno == EINTR) {
      }
    }
    if (pid_ > 0) {
      int st = 0;
      pid_t r;
      while ((r = waitpid(pid_, &st, WNOHANG)) < 0 && errno == EINTR) {
      }
      if (r == 0) {
        ::kill(pid_, SIGKILL);
        while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
        status_ = -1;
        return -1;
      }
      pid_ = -1;
      status_ = st;
    }
    return status_;
  }

  // SIGKILL and reap at once (so that kill(pid, 0) reports it gone).
  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    status_ = st;
    pid_ = -1;
  }

  // True if finish() saw a clean exit(0).
  bool ok() const { return status_ >= 0 && WIFEXITED(status_) && WEXITSTATUS(status_) == 0; }
  std::string describe() const {
    std::string s = name_ + ": ";
    if (status_ < 0) s += "did not finish before its deadline";
    else if (WIFEXITED(status_)) s += "exit " + std::to_string(WEXITSTATUS(status_));
    else if (WIFSIGNALED(status_)) s += "killed by signal " + std::to_string(WTERMSIG(status_));
    auto f = facts_.find("FAIL");
    if (f != facts_.end()) s += "; FAIL " + f->second;
    return s;
  }
  const std::map<std::string, std::string>& facts() const { return facts_; }
  std::string fact(const std::string& k) const {
    auto it = facts_.find(k);
    return it == facts_.end() ? "" : it->second;
  }
  uint64_t num(const std::string& k) const {
    std::string v = fact(k);
    return v.empty() ? UINT64_MAX : std::strtoull(v.c_str(), nullptr, 10);
  }

 private:
  // One poll + read; false on timeout or EOF.
  bool read_some(int timeout_ms) {
    pollfd pf{out_, POLLIN, 0};
    int r = poll(&pf, 1, timeout_ms);
    if (r < 0 && errno == EINTR) return true;
    if (r <= 0) return false;
    char tmp[4096];
    ssize_t n = read(out_, tmp, sizeof tmp);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) {
      close(out_);
      out_ = -1;
      return false;
    }
    buf_.append(tmp, size_t(n));
    size_t nl;
    while ((nl = buf_.find('\n')) != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      size_t sp = line.find(' ');
      std::string k = line.substr(0, sp);
      std::string v = sp == std::string::npos ? "" : line.substr(sp + 1);
      if (!facts_.count(k)) facts_[k] = v;  // the first FAIL is the cause
    }
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1;
  int pidfd_ = -1;
  std::string buf_;
  std::map<std::string, std::string> facts_;
  int status_ = -1;
  std::string name_;
};

}  // namespace shmbus::test
