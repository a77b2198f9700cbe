// shmbus-demo: a market-data pipeline on one host.
// One producer process publishes Cap'n Proto Quote messages built in place in the
// ring; two subscriber processes read them in place and measure one-way latency
// (publish timestamp -> read). Phase 1 is paced (latency), phase 2 full speed
// (throughput). Prints one table per subscriber.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "market.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;

namespace {

struct Args {
  uint64_t paced = 200'000;      // messages in the paced phase
  uint64_t rate = 100'000;       // paced rate, msg/s
  uint64_t burst = 2'000'000;    // messages in the full-speed phase
  int subscribers = 2;
  std::string prefix;
};

constexpr const char* kTopic = "md.quotes";

uint64_t pct(std::vector<uint64_t>& v, double p) {
  if (v.empty()) return 0;
  size_t i = size_t(p / 100.0 * double(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + i, v.end());
  return v[i];
}

int run_subscriber(const Args& a, int index, int ready_fd) {
  Bus bus = Bus::direct({.shm_prefix = a.prefix});
  Subscriber sub = bus.subscriber(kTopic, {.wait = WaitStrategy::hybrid, .spin_ns = 50'000});
  char ok = 1;
  if (write(ready_fd, &ok, 1) != 1) return 2;
  close(ready_fd);
  const uint64_t total = a.paced + a.burst;
  std::vector<uint64_t> lat;
  lat.reserve(a.paced);
  uint64_t got = 0, expect_seq = 1, errors = 0, burst_start = 0, burst_end = 0;
  while (got < total) {
    View v;
    Status s = sub.poll_wait(v, 5'000'000'000);
    if (s != Status::ok) {
      std::fprintf(stderr, "subscriber %d: %s after %lu messages\n", index, to_string(s), got);
      return 1;
    }
    uint64_t now = shm::monotonic_ns();
    MessageReader r(v);
    if (!r) {
      ++errors;
    } else {
      auto q = r.root<schema::Quote>();
      if (q.getSeq() != expect_seq) ++errors;
      expect_seq = q.getSeq() + 1;
      if (got < a.paced) lat.push_back(now - q.getExchangeTsNs());
    }
    sub.release(v);
    ++got;
    if (got == a.paced + 1) burst_start = now;
    if (got == total) burst_end = now;
  }
  double secs = double(burst_end - burst_start) / 1e9;
  double rate = secs > 0 ? double(a.burst - 1) / secs : 0;
  std::printf(
      "subscriber %d: %lu messages, %lu errors | paced %lu msg/s latency ns p50 %lu p99 %lu "
      "p99.9 %lu max %lu | full speed %.2f M msg/s\n",
      index, got, errors, a.rate, pct(lat, 50), pct(lat, 99), pct(lat, 99.9), pct(lat, 100),
      rate / 1e6);
  return errors ? 1 : 0;
}

int run_producer(const Args& a) {
  Bus bus = Bus::direct({.shm_prefix = a.prefix});
  Publisher pub = bus.publisher(kTopic);
  auto publish = [&](uint64_t seq) {
    for (;;) {
      MessageClaim m(pub, 96);
      if (!m) continue;  // back-pressured (block policy timed out): retry
      auto q = m.init_root<schema::Quote>();
      q.setInstrumentId(uint32_t(seq % 500));
      q.setBidPx(int64_t(10'000'000'000 + (seq % 1000)));
      q.setAskPx(int64_t(10'000'100'000 + (seq % 1000)));
      q.setBidQty(100);
      q.setAskQty(200);
      q.setSeq(seq);
      q.setExchangeTsNs(shm::monotonic_ns());
      if (m.commit_as<schema::Quote>(seq) == Status::ok) return;
    }
  };
  const uint64_t gap = 1'000'000'000ull / a.rate;
  uint64_t next = shm::monotonic_ns();
  uint64_t seq = 1;
  for (; seq <= a.paced; ++seq) {
    while (shm::monotonic_ns() < next) shm::cpu_relax();
    next += gap;
    publish(seq);
  }
  for (; seq <= a.paced + a.burst; ++seq) publish(seq);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"shmbus demo: a producer and subscriber processes exchanging Cap'n Proto quotes"};
  app.add_option("--paced", a.paced, "messages in the paced (latency) phase");
  app.add_option("--rate", a.rate, "paced rate in msg/s")->check(CLI::Range(1, 10'000'000));
  app.add_option("--burst", a.burst, "messages in the full-speed phase");
  app.add_option("--subscribers", a.subscribers, "subscriber processes")->check(CLI::Range(1, 16));
  CLI11_PARSE(app, argc, argv);
  a.prefix = "shmbus-demo-" + std::to_string(getpid());

  Bus bus = Bus::direct({.shm_prefix = a.prefix});
  bus.create_topic(kTopic, {.capacity = 1 << 22});
  std::printf("shmbus demo: 1 producer -> %d subscribers, %lu paced at %lu msg/s + %lu full speed\n",
              a.subscribers, a.paced, a.rate, a.burst);
  std::fflush(stdout);
  int pipefd[2];
  if (pipe(pipefd) != 0) return 2;
  std::vector<pid_t> kids;
  for (int i = 0; i < a.subscribers; ++i) {
    pid_t p = fork();
    if (p == 0) {
      close(pipefd[0]);
      int rc = run_subscriber(a, i, pipefd[1]);
      std::fflush(stdout);
      _exit(rc);
    }
    kids.push_back(p);
  }
  close(pipefd[1]);
  // Wait until every subscriber has joined, so none misses the first message.
  for (int i = 0; i < a.subscribers; ++i) {
    char c;
    if (read(pipefd[0], &c, 1) != 1) {
      std::fprintf(stderr, "a subscriber failed to start\n");
      bus.remove_topic(kTopic);
      return 1;
    }
  }
  pid_t prod = fork();
  if (prod == 0) _exit(run_producer(a));
  kids.push_back(prod);
  int failed = 0;
  for (pid_t k : kids) {
    int st = 0;
    waitpid(k, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
  }
  bus.remove_topic(kTopic);
  std::printf("demo %s\n", failed ? "FAILED" : "ok: every subscriber received every message in order");
  return failed ? 1 : 0;
}
