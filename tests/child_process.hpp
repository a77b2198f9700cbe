// The one child process of the test suites: fork + exec of a real program whose stdout
// is a pipe to the test.
//
// The multi-process helper (mp_helper) prints one "key value" line per fact ("ready 1",
// "received 5000000", "FAIL <reason>"): await()/finish() collect them. The daemon
// helper prints progress characters: read_char(). A command's whole output:
// read_all(). Every read and every wait for exit has a deadline (poll on the pipe,
// poll on a pidfd), so a hung child fails the test instead of hanging it; a Child that
// is still running when it goes out of scope is killed and reaped.
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

// This suite's helper program, named by its meson.build (-DSHMBUS_TEST_HELPER=...):
// mp_helper for tests/multiproc, daemon_helper for tests/daemon.
#ifdef SHMBUS_TEST_HELPER
inline std::string helper_path() { return SHMBUS_TEST_HELPER; }
#endif

class Child {
 public:
  Child() = default;
  // argv[0] is the program; its stderr goes to err_file (appended) when one is given,
  // else to the test's; env entries ("K=V") are added to the child's environment. With
  // stdin_pipe its stdin is a pipe from the test (close_stdin() closes it), else the
  // test's stdin.
  explicit Child(const std::vector<std::string>& argv, const std::string& err_file = {},
                 const std::vector<std::string>& env = {}, bool stdin_pipe = false) {
    start(argv, err_file, env, stdin_pipe);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  Child(Child&& o) noexcept { *this = std::move(o); }
  Child& operator=(Child&& o) noexcept {
    std::swap(pid_, o.pid_);
    std::swap(out_, o.out_);
    std::swap(pidfd_, o.pidfd_);
    std::swap(in_, o.in_);
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
    if (in_ >= 0) close(in_);
  }

  void start(const std::vector<std::string>& args, const std::string& err_file = {},
             const std::vector<std::string>& env = {}, bool stdin_pipe = false) {
    if (args.empty()) throw std::runtime_error("Child: no program given");
    if (pid_ > 0 || out_ >= 0) throw std::runtime_error("Child: already started");
    int p[2], in[2] = {-1, -1};
    if (pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    if (stdin_pipe && pipe2(in, O_CLOEXEC) != 0) {
      close(p[0]);
      close(p[1]);
      throw std::runtime_error("pipe2 failed");
    }
    const std::string& path = args[0];
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    name_ = path.substr(path.rfind('/') + 1) + (args.size() > 1 ? " " + args[1] : "");
    std::vector<std::string> env_copy = env;  // putenv keeps the pointer
    fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      dup2(p[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
      if (stdin_pipe) dup2(in[0], STDIN_FILENO);
      if (!err_file.empty()) {
        int e = open(err_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (e >= 0) dup2(e, STDERR_FILENO);
      }
      for (auto& kv : env_copy) putenv(const_cast<char*>(kv.c_str()));
      execv(path.c_str(), argv.data());
      dprintf(STDERR_FILENO, "exec %s: %s\n", path.c_str(), strerror(errno));
      _exit(127);
    }
    close(p[1]);
    if (stdin_pipe) {
      close(in[0]);
      in_ = in[1];
    }
    pid_ = pid;
    out_ = p[0];
    pidfd_ = int(syscall(SYS_pidfd_open, pid, 0));
  }

  pid_t pid() const { return pid_; }
  // Closes its stdin pipe (end of input: a clean stop for a child that reads to EOF).
  void close_stdin() {
    if (in_ >= 0) close(in_);
    in_ = -1;
  }
  int pidfd() const { return pidfd_; }
  const std::string& name() const { return name_; }

  // The next raw byte of its stdout (a progress character), or 0 on end of output or
  // when timeout_ms passes first.
  char read_char(int timeout_ms) {
    if (out_ < 0) return 0;
    pollfd pf{out_, POLLIN, 0};
    int r;
    while ((r = poll(&pf, 1, timeout_ms)) < 0 && errno == EINTR) {
    }
    if (r <= 0) return 0;
    char ch = 0;
    ssize_t n;
    while ((n = read(out_, &ch, 1)) < 0 && errno == EINTR) {
    }
    return n == 1 ? ch : 0;
  }

  // Its raw stdout to the end. Stops early (watchdog) when timeout_ms passes with no
  // output: then timed_out is set if given.
  std::string read_all(int timeout_ms, bool* timed_out = nullptr) {
    std::string out;
    char tmp[4096];
    if (timed_out) *timed_out = false;
    while (out_ >= 0) {
      pollfd pf{out_, POLLIN, 0};
      int r = poll(&pf, 1, timeout_ms);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        if (timed_out) *timed_out = true;
        break;
      }
      ssize_t n = read(out_, tmp, sizeof tmp);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      out.append(tmp, size_t(n));
    }
    return out;
  }

  // Waits up to timeout_ms for it to exit without reading its output; returns the raw
  // wait status, or -1 on timeout (it is left running; the destructor kills it).
  int wait(int timeout_ms) {
    if (pid_ <= 0) return status_;
    if (pidfd_ >= 0) {
      pollfd pf{pidfd_, POLLIN, 0};
      int r;
      while ((r = poll(&pf, 1, timeout_ms)) < 0 && errno == EINTR) {
      }
      if (r <= 0) return -1;
    }
    int st = 0;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    status_ = st;
    return st;
  }

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
    if (status_ < 0)
      s += "did not finish before its deadline";
    else if (WIFEXITED(status_))
      s += "exit " + std::to_string(WEXITSTATUS(status_));
    else if (WIFSIGNALED(status_))
      s += "killed by signal " + std::to_string(WTERMSIG(status_));
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
  int in_ = -1;  // its stdin (with stdin_pipe)
  std::string buf_;
  std::map<std::string, std::string> facts_;
  int status_ = -1;
  std::string name_;
};

}  // namespace shmbus::test
