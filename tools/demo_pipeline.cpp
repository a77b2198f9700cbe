// shmbus-demo: the cross-language pipeline on one host, through the daemon.
//
//   Go feed (mdfeed) --md.quotes--> Rust strategy (shmbus-demo-strategy)
//        --orders.new--> C++ order gateway (shmbus-demo-gateway)
//
// This orchestrator starts a daemon embedded in itself (its socket, state and
// segment names private to this run), creates both topics through it, then starts
// the gateway, the strategy and the feed as separate processes, each only after
// the consumer it feeds printed READY (no sleeps). Each process connects to the
// daemon's socket. The feed publishes a paced phase (latency) then a full-speed
// phase (throughput); the gateway prints end-to-end latency percentiles (quote
// published -> order received) and throughput. At the end the topics are deleted,
// the daemon stopped, and /dev/shm is checked for anything left behind.
//
// --cpp-only runs C++ stand-ins for the feed and the strategy (shmbus-demo-cpp);
// --direct runs without a daemon (each process maps the segments itself).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "shmbus/daemon.hpp"
#include "shmbus/shmbus.hpp"

namespace fs = std::filesystem;
using namespace shmbus;

namespace {

constexpr const char* kQuotes = "md.quotes";
constexpr const char* kOrders = "orders.new";

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Child {
  std::string name;
  pid_t pid = -1;
  int out = -1;     // read end of its stdout
  std::string buf;  // partial line
  bool ready = false;
  int status = -1;  // wait status once reaped
};

fs::path self_dir() {
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : p.parent_path();
}

// Starts argv with stdout on a pipe (stderr inherited).
bool spawn(Child& c, const std::vector<std::string>& argv) {
  int fd[2];
  if (pipe2(fd, O_CLOEXEC) != 0) return false;
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    dup2(fd[1], STDOUT_FILENO);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execv(a[0], a.data());
    std::fprintf(stderr, "demo: cannot run %s: %s\n", a[0], std::strerror(errno));
    _exit(127);
  }
  close(fd[1]);
  c.pid = pid;
  c.out = fd[0];
  return true;
}

// Prints complete lines of c's output (prefixed by its name); notes READY.
void pump(Child& c, bool prefix) {
  char tmp[4096];
  ssize_t n = read(c.out, tmp, sizeof tmp);
  if (n <= 0) {
    if (n < 0 && errno == EINTR) return;
    if (!c.buf.empty()) std::printf("%s%s\n", prefix ? ("  " + c.name + " | ").c_str() : "", c.buf.c_str());
    close(c.out);
    c.out = -1;
    return;
  }
  c.buf.append(tmp, size_t(n));
  size_t nl;
  while ((nl = c.buf.find('\n')) != std::string::npos) {
    std::string line = c.buf.substr(0, nl);
    c.buf.erase(0, nl + 1);
    if (!c.ready && line == "READY") {
      c.ready = true;
      continue;
    }
    if (prefix)
      std::printf("  %-16s | %s\n", c.name.c_str(), line.c_str());
    else
      std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

void reap(Child& c, bool block) {
  if (c.pid <= 0 || c.status != -1) return;
  int st = 0;
  pid_t r;
  do r = waitpid(c.pid, &st, block ? 0 : WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == c.pid) c.status = st;
}

bool failed(const Child& c) { return c.status != -1 && !(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0); }

std::string describe(const Child& c) {
  if (WIFEXITED(c.status)) return "exit " + std::to_string(WEXITSTATUS(c.status));
  if (WIFSIGNALED(c.status)) return std::string("killed by ") + strsignal(WTERMSIG(c.status));
  return "?";
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t paced = 100'000, rate = 100'000, burst = 2'000'000, every = 10;
  bool cpp_only = false, direct = false;
  int watchdog_s = 60;
  std::string bin_dir;
  CLI::App app{"shmbus demo: Go feed -> Rust strategy -> C++ order gateway, through an embedded shmbusd"};
  app.add_option("--paced", paced, "quotes in the paced (latency) phase");
  app.add_option("--rate", rate, "paced rate, quotes/s")->check(CLI::Range(1, 10'000'000));
  app.add_option("--burst", burst, "quotes in the full-speed (throughput) phase");
  app.add_option("--signal-every", every, "one quote in this many triggers an order")
      ->check(CLI::Range(1, 1'000'000));
  app.add_flag("--cpp-only", cpp_only, "C++ feed and strategy (no Go or Rust needed)");
  app.add_flag("--direct", direct, "no daemon: each process maps the segments itself");
  app.add_option("--bin-dir", bin_dir,
                 "where mdfeed and shmbus-demo-strategy are (default <build>/demo-bin)");
  app.add_option("--watchdog-s", watchdog_s, "give up when no process printed anything for this long");
  CLI11_PARSE(app, argc, argv);
  if (paced + burst < every) {
    std::fprintf(stderr, "demo: fewer quotes than --signal-every: no order would be sent\n");
    return 64;
  }

  const fs::path here = self_dir();
  if (bin_dir.empty()) bin_dir = (here.parent_path() / "demo-bin").string();
  const std::string gateway_bin = (here / "shmbus-demo-gateway").string();
  const std::string cpp_bin = (here / "shmbus-demo-cpp").string();
  const std::string feed_bin = cpp_only ? cpp_bin : (fs::path(bin_dir) / "mdfeed").string();
  const std::string strat_bin = cpp_only ? cpp_bin : (fs::path(bin_dir) / "shmbus-demo-strategy").string();
  for (const auto& b : {gateway_bin, feed_bin, strat_bin}) {
    if (access(b.c_str(), X_OK) != 0) {
      std::fprintf(stderr, "demo: %s is missing (tools/demo builds it)\n", b.c_str());
      return 2;
    }
  }

  // Everything this run creates is private to it: socket and state in a fresh
  // directory, segment names under a prefix with our pid.
  char tpl[] = "/tmp/shmbus-demo-XXXXXX";
  if (!mkdtemp(tpl)) {
    std::perror("demo: mkdtemp");
    return 2;
  }
  const fs::path run_dir = tpl;
  const std::string socket = (run_dir / "shmbusd.sock").string();
  const std::string prefix = "shmbus-demo-" + std::to_string(getpid());

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGPIPE, SIG_IGN);

  const uint64_t total = paced + burst;
  const uint64_t orders = total / every, paced_orders = paced / every;
  std::printf("shmbus demo: %s feed -> %s strategy -> C++ gateway, %s\n", cpp_only ? "C++" : "Go",
              cpp_only ? "C++" : "Rust",
              direct ? "direct (no daemon)" : ("through shmbusd (embedded, socket " + socket + ")").c_str());
  std::printf("  %lu quotes paced at %lu/s, then %lu at full speed; an order on 1 quote in %lu\n", paced,
              rate, burst, every);
  // Latency depends on what else runs: say so next to the figures.
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) == 3)
    std::printf("  load average %.2f %.2f %.2f on %ld CPUs (other work shares the cores)\n", load[0], load[1],
                load[2], sysconf(_SC_NPROCESSORS_ONLN));
  std::fflush(stdout);

  int rc = 0;
  std::vector<Child> kids;
  {
    std::optional<Bus> bus;
    try {
      if (direct) {
        bus.emplace(Bus::direct({.shm_prefix = prefix}));
      } else {
        DaemonOptions o;
        o.socket_path = socket;
        o.state_dir = (run_dir / "state").string();
        o.shm_prefix = prefix;
        o.log_level = "warn";
        bus.emplace(open_embedded(o));
      }
      bus->create_topic(kQuotes, {.capacity = 4u << 20});
      bus->create_topic(kOrders, {.capacity = 1u << 20});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "demo: setting up the bus: %s\n", e.what());
      fs::remove_all(run_dir);
      return 2;
    }
    std::vector<std::string> where =
        direct ? std::vector<std::string>{"--prefix", prefix} : std::vector<std::string>{"--socket", socket};
    auto with = [&](std::vector<std::string> v) {
      v.insert(v.end(), where.begin(), where.end());
      return v;
    };
    // Downstream first: each stage starts once the stage after it is READY.
    std::vector<std::pair<std::string, std::vector<std::string>>> plan = {
        {"gateway (C++)", with({gateway_bin, "--orders", std::to_string(orders), "--paced-orders",
                                std::to_string(paced_orders), "--signal-every", std::to_string(every)})},
        {cpp_only ? "strategy (C++)" : "strategy (Rust)",
         cpp_only ? with({strat_bin, "strategy", "--quotes", std::to_string(total)})
                  : with({strat_bin, "--quotes", std::to_string(total)})},
        {cpp_only ? "feed (C++)" : "feed (Go)",
         with(cpp_only ? std::vector<std::string>{feed_bin, "feed"} : std::vector<std::string>{feed_bin})},
    };
    for (const char* f : {"--paced", "--rate", "--burst", "--signal-every"}) {
      uint64_t v = f[2] == 'p' ? paced : f[2] == 'r' ? rate : f[2] == 'b' ? burst : every;
      plan[2].second.push_back(f);
      plan[2].second.push_back(std::to_string(v));
    }
    kids.resize(plan.size());
    for (size_t i = 0; i < plan.size(); ++i) kids[i].name = plan[i].first;

    const uint64_t t0 = shm::monotonic_ns();
    bool ok = true;
    for (size_t i = 0; i < plan.size() && ok; ++i) {
      Child& c = kids[i];
      if (!spawn(c, plan[i].second)) {
        std::fprintf(stderr, "demo: cannot start %s\n", c.name.c_str());
        ok = false;
        break;
      }
      if (i + 1 == plan.size()) break;  // the feed: nobody waits for it
      // Wait for READY (the 30 s is a watchdog for a broken setup, not a delay).
      while (!c.ready && c.out >= 0 && !g_stop) {
        pollfd p{c.out, POLLIN, 0};
        int n = poll(&p, 1, 30'000);
        if (n == 0) break;
        if (n > 0) pump(c, true);
      }
      if (!c.ready) {
        std::fprintf(stderr, "demo: %s did not get ready\n", c.name.c_str());
        ok = false;
      }
    }

    // Run: forward output until every process has closed its stdout; when one
    // fails, stop the others.
    bool killed = false;
    uint64_t quiet_since = shm::monotonic_ns();
    for (;;) {
      std::vector<pollfd> fds;
      std::vector<Child*> who;
      for (auto& c : kids)
        if (c.out >= 0) fds.push_back({c.out, POLLIN, 0}), who.push_back(&c);
      if (fds.empty()) break;
      int n = poll(fds.data(), fds.size(), 1000);
      if (n > 0) {
        quiet_since = shm::monotonic_ns();
        for (size_t i = 0; i < fds.size(); ++i)
          if (fds[i].revents) pump(*who[i], who[i] != &kids[0]);
      }
      for (auto& c : kids) {
        if (c.out < 0)
          reap(c, true);
        else
          reap(c, false);
        if (failed(c)) ok = false;
      }
      const bool stalled = shm::monotonic_ns() - quiet_since > uint64_t(watchdog_s) * 1'000'000'000;
      if ((!ok || g_stop || stalled) && !killed) {
        if (stalled) std::fprintf(stderr, "demo: nothing happened for %d s, stopping\n", watchdog_s);
        for (auto& c : kids)
          if (c.pid > 0 && c.status == -1) kill(c.pid, SIGTERM);
        killed = true;
        ok = false;
      }
    }
    for (auto& c : kids) {
      reap(c, true);
      if (c.pid > 0 && failed(c))
        std::fprintf(stderr, "demo: %s failed (%s)\n", c.name.c_str(), describe(c).c_str());
    }
    const double secs = double(shm::monotonic_ns() - t0) / 1e9;
    if (g_stop) ok = false;
    rc = ok ? 0 : 1;

    try {
      bus->remove_topic(kOrders);
      bus->remove_topic(kQuotes);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "demo: removing the topics: %s\n", e.what());
      rc = 1;
    }
    bus.reset();  // stops the embedded daemon
    std::printf("pipeline %s in %.1f s\n", ok ? "done" : "FAILED", secs);
  }

  // Leave nothing behind.
  std::error_code ec;
  fs::remove_all(run_dir, ec);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator("/dev/shm", ec))
    if (e.path().filename().string().rfind(prefix, 0) == 0) left.push_back(e.path().string());
  if (left.empty()) {
    std::printf("cleaned up: %stopics deleted, nothing left in /dev/shm\n", direct ? "" : "daemon stopped, ");
  } else {
    for (const auto& f : left) {
      std::fprintf(stderr, "demo: left behind: %s (removed now)\n", f.c_str());
      fs::remove(f, ec);
    }
    rc = 1;
  }
  return rc;
}
