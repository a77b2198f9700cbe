// shmbus-bench: the end-to-end harness. Producer and consumer are separate
// processes (fork) pinned to different cores; every shmbus figure is printed with
// its ratio to floors and baselines measured in the same run:
//   line  a raw shared-memory cache-line ping-pong / one-way hand-off (the floor
//         for latency),
//   spsc  a minimal hand-written SPSC byte ring (spsc_ring.hpp; the floor for
//         throughput),
//   uds   Unix domain sockets, SOCK_SEQPACKET and SOCK_STREAM (the baseline).
// Cases: throughput at full speed (tput.*), one-way latency at a paced rate
// (lat.*), round trip through two channels, busy-spin (rtt.*).
// Every path carries the same payload: word 0 = sequence (or send time for lat.*),
// last word = sequence ^ kCheck; the consumer reads and checks both.
// Clock: CLOCK_MONOTONIC in both processes (one host).
// --vs-daemon: the same shmbus cases direct (Bus::direct) and through a shmbusd
// process started here (Bus::connect in each process), interleaved, with the
// daemon/direct ratios (issue 3: within 5 %).
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "market.capnp.h"
#include "shmbus/shmbus.hpp"
#include "spsc_ring.hpp"

using namespace shmbus;
using shmbus::bench::SpscConsumer;
using shmbus::bench::SpscProducer;
using shmbus::bench::SpscShared;
using shm::cpu_relax;
using shm::monotonic_ns;

namespace {

constexpr uint64_t kCheck = 0xa5a5'5a5a'c3c3'3c3cULL;
constexpr uint64_t kWindow = 8192;  // throughput: messages per timing window

struct Config {
  std::vector<uint32_t> sizes{8, 64, 256, 1024, 4096};
  std::vector<int> cpus{0, 1};
  uint64_t capacity = 1u << 20;
  uint64_t tput_msgs = 4'000'000;
  uint64_t tput_bytes = 4ull << 30;  // caps tput_msgs for large payloads
  uint64_t uds_tput_msgs = 400'000;
  uint64_t lat_msgs = 50'000;
  uint64_t rate = 100'000;
  uint64_t rtt_msgs = 100'000;
  uint64_t uds_rtt_msgs = 20'000;
  int runs = 1;
  int timeout_s = 120;
  bool json = false;
  bool quick = false;
  std::vector<std::string> only;
  bool exact = false;      // --only names whole case names (bench/aeron/run.sh)
  bool vs_daemon = false;  // direct vs through shmbusd, interleaved (issue 3)
  std::string shmbusd;     // the daemon binary for --vs-daemon
};

Config g;

// ---------------------------------------------------------------------------
// Shared state between the two processes of a case.
struct Ctl {
  std::atomic<uint32_t> ready{0};
  uint64_t t_first = 0, t_last = 0, got = 0, errors = 0;
  uint64_t child_preempt = 0;  // involuntary context switches of the child
};
uint64_t last_preempt = 0;  // of both processes in the last run_pair()

uint64_t involuntary_switches() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return uint64_t(u.ru_nivcsw);
}
Ctl* ctl = nullptr;
uint64_t* samples = nullptr;  // shared: latency samples written by either side
uint64_t max_samples = 0;

void* shared_alloc(size_t n) {
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(2);
  }
  return p;
}

bool pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

std::string current_case;
pid_t daemon_pid = -1;  // the shmbusd child of --vs-daemon (killed on timeout)
pid_t main_pid = -1;
void on_alarm(int) {
  const char m[] = "shmbus-bench: case timed out (a peer died or hung)\n";
  ssize_t r = write(2, m, sizeof(m) - 1);
  (void)r;
  if (daemon_pid > 0 && getpid() == main_pid) kill(daemon_pid, SIGKILL);
  _exit(3);
}

// Runs child() in a forked process pinned to cpus[1] and parent() here (pinned to
// cpus[0]). Returns false if either side failed.
bool run_pair(const std::function<int()>& parent, const std::function<int()>& child) {
  new (ctl) Ctl{};
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    return false;
  }
  if (pid == 0) {
    pin(g.cpus[1]);
    alarm(unsigned(g.timeout_s));
    int rc = 1;
    const uint64_t cs0 = involuntary_switches();
    try {
      rc = child();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "consumer: %s\n", e.what());
    }
    ctl->child_preempt = involuntary_switches() - cs0;
    _exit(rc);
  }
  alarm(unsigned(g.timeout_s));
  const uint64_t cs0 = involuntary_switches();
  int rc = 1;
  try {
    rc = parent();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "producer: %s\n", e.what());
    kill(pid, SIGKILL);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  alarm(0);
  last_preempt = involuntary_switches() - cs0 + ctl->child_preempt;
  return rc == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

void wait_ready() {
  while (ctl->ready.load(std::memory_order_acquire) == 0) cpu_relax();
}
void set_ready() { ctl->ready.store(1, std::memory_order_release); }

// ---------------------------------------------------------------------------
// Payload: the same on every path.
struct Payload {
  std::vector<std::byte> tmpl;
  explicit Payload(uint32_t max) : tmpl(max) {
    for (size_t i = 0; i < tmpl.size(); ++i) tmpl[i] = std::byte(i * 131 + 7);
  }
  void fill(std::byte* dst, uint32_t size, uint64_t w0, uint64_t seq) const {
    std::memcpy(dst, tmpl.data(), size);
    std::memcpy(dst, &w0, 8);
    if (size >= 16) {
      uint64_t last = seq ^ kCheck;
      std::memcpy(dst + size - 8, &last, 8);
    }
  }
};
const Payload& payload() {
  static Payload p(65536);
  return p;
}
inline uint64_t load64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline bool last_ok(uint64_t last, uint32_t len, uint64_t seq) { return len < 16 || last == (seq ^ kCheck); }

// A message as the consumer sees it: word 0, last word, length.
struct Msg {
  uint64_t w0, last;
  uint32_t len;
};
inline Msg raw_msg(const std::byte* p, uint32_t len) {
  return {load64(p), len >= 16 ? load64(p + len - 8) : 0, len};
}

// ---------------------------------------------------------------------------
// Transports. Tx: send(size, w0, seq). Rx: drain(f) calls f(Msg) for 0..n
// messages and returns n, never blocks unless told to.
struct SpscChannel {
  SpscShared* s;
  std::byte* ring;
  uint64_t cap;
  static SpscChannel make(uint64_t cap) {
    auto* base = static_cast<std::byte*>(shared_alloc(sizeof(SpscShared) + cap));
    new (base) SpscShared{};
    std::memset(base + sizeof(SpscShared), 0, cap);  // fault the pages in, like shmbus's segment
    return {reinterpret_cast<SpscShared*>(base), base + sizeof(SpscShared), cap};
  }
  void destroy() { munmap(s, sizeof(SpscShared) + cap); }
};

struct SpscTx {
  SpscProducer p;
  explicit SpscTx(const SpscChannel& c) : p(c.s, c.ring, c.cap) {}
  void send(uint32_t size, uint64_t w0, uint64_t seq) {
    payload().fill(p.claim(size), size, w0, seq);
    p.commit();
  }
};
struct SpscRx {
  SpscConsumer c;
  explicit SpscRx(const SpscChannel& ch) : c(ch.s, ch.ring, ch.cap) {}
  template <class F>
  size_t drain(F&& f) {
    size_t n = 0;
    uint32_t len;
    while (n < 64) {
      const std::byte* p = c.poll(&len);
      if (!p) break;
      f(raw_msg(p, len));
      c.release();
      ++n;
    }
    return n;
  }
};

struct ShmbusTx {
  Publisher pub;
  ShmbusTx(Bus& bus, const std::string& topic, bool stamp = true)
      : pub(bus.publisher(topic, {.wait = WaitStrategy::busy_spin, .stamp_frames = stamp})) {}
  void send(uint32_t size, uint64_t w0, uint64_t seq) {
    ClaimView c;
    while (pub.claim(size, c) != Status::ok) {
    }
    payload().fill(c.data, size, w0, seq);
    pub.commit(size);
  }
};

// Cap'n Proto Quote built in place (64 B serialized): seq = w0, exchangeTsNs = last word.
void fill_quote(schema::Quote::Builder q, uint64_t w0, uint64_t seq) {
  q.setInstrumentId(uint32_t(seq % 500));
  q.setBidPx(int64_t(10'000'000'000 + (seq % 1000)));
  q.setAskPx(int64_t(10'000'100'000 + (seq % 1000)));
  q.setBidQty(100);
  q.setAskQty(200);
  q.setExchangeTsNs(seq ^ kCheck);
  q.setSeq(w0);
}
struct ShmbusCapnpTx {
  Publisher pub;
  ShmbusCapnpTx(Bus& bus, const std::string& topic)
      : pub(bus.publisher(topic, {.wait = WaitStrategy::busy_spin})) {}
  void send(uint32_t, uint64_t w0, uint64_t seq) {
    for (;;) {
      MessageClaim m(pub, 64);
      if (!m) continue;
      fill_quote(m.init_root<schema::Quote>(), w0, seq);
      if (m.commit_as<schema::Quote>() == Status::ok) return;
    }
  }
};

enum class Read { raw, capnp_checked, capnp_unchecked };

template <Read R>
inline Msg view_msg(const View& v) {
  if constexpr (R == Read::raw) {
    return raw_msg(v.data(), v.size());
  } else if constexpr (R == Read::capnp_checked) {
    MessageReader r(v);
    if (!r) return {0, 0, 0};
    auto q = r.root<schema::Quote>();
    uint64_t sum =
        q.getInstrumentId() + uint64_t(q.getBidPx()) + uint64_t(q.getAskPx()) + q.getBidQty() + q.getAskQty();
    asm volatile("" : : "r"(sum));
    return {q.getSeq(), q.getExchangeTsNs(), 64};
  } else {
    auto q = capnp::readMessageUnchecked<schema::Quote>(reinterpret_cast<const capnp::word*>(v.data() + 8));
    uint64_t sum =
        q.getInstrumentId() + uint64_t(q.getBidPx()) + uint64_t(q.getAskPx()) + q.getBidQty() + q.getAskQty();
    asm volatile("" : : "r"(sum));
    return {q.getSeq(), q.getExchangeTsNs(), 64};
  }
}

template <Read R, bool Batch>
struct ShmbusRx {
  Subscriber sub;
  ShmbusRx(Bus& bus, const std::string& topic)
      : sub(bus.subscriber(topic, {.wait = WaitStrategy::busy_spin})) {}
  template <class F>
  size_t drain(F&& f) {
    if constexpr (Batch) {
      return sub.poll_batch(64, [&](const View& v) { f(view_msg<R>(v)); });
    } else {
      View v;
      if (sub.poll(v) != Status::ok) return 0;
      f(view_msg<R>(v));
      sub.release(v);
      return 1;
    }
  }
};

struct UdsTx {
  int fd;
  std::vector<std::byte> buf;
  explicit UdsTx(int f) : fd(f), buf(65536) {}
  void send(uint32_t size, uint64_t w0, uint64_t seq) {
    payload().fill(buf.data(), size, w0, seq);
    size_t off = 0;
    while (off < size) {
      ssize_t n = ::send(fd, buf.data() + off, size - off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("send");
        _exit(4);
      }
      off += size_t(n);
    }
  }
};
struct UdsRx {
  int fd;
  uint32_t size;
  bool spin;  // true: MSG_DONTWAIT and spin (latency cases); false: blocking recv
  std::vector<std::byte> buf;
  uint32_t have = 0;
  UdsRx(int f, uint32_t s, bool spin_) : fd(f), size(s), spin(spin_), buf(65536) {}
  template <class F>
  size_t drain(F&& f) {
    ssize_t n = ::recv(fd, buf.data() + have, size - have, spin ? MSG_DONTWAIT : 0);
    if (n <= 0) {
      if (n == 0) _exit(5);  // peer closed
      if (errno == EAGAIN || errno == EINTR) return 0;
      std::perror("recv");
      _exit(4);
    }
    have += uint32_t(n);
    if (have < size) return 0;  // stream: a partial message
    have = 0;
    f(raw_msg(buf.data(), size));
    return 1;
  }
};

// ---------------------------------------------------------------------------
// Results.
struct Result {
  std::string name;  // e.g. "tput.shmbus"
  std::string kind;  // throughput | oneway | roundtrip
  uint32_t size = 0;
  double msgs_per_s = 0;
  bool has_lat = false;
  double p50 = 0, p99 = 0, p999 = 0, p9999 = 0, max = 0;
  uint64_t count = 0;
  uint64_t preempt = 0;           // involuntary context switches (both processes)
  double msgs_per_s_overall = 0;  // throughput: whole-run average (window median is msgs_per_s)
  std::map<std::string, double> ratios;
};

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  size_t n = x.size();
  return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

void percentiles(Result& r, uint64_t* v, uint64_t n) {
  std::sort(v, v + n);
  auto at = [&](double q) {
    uint64_t i = uint64_t(std::ceil(q * double(n)));
    if (i > 0) --i;
    return double(v[std::min(i, n - 1)]);
  };
  r.has_lat = true;
  r.p50 = at(0.50);
  r.p99 = at(0.99);
  r.p999 = at(0.999);
  r.p9999 = at(0.9999);
  r.max = double(v[n - 1]);
}

// ---------------------------------------------------------------------------
// Generic cases over a Tx made in the parent and an Rx made in the child.
template <class MakeTx, class MakeRx>
bool case_tput(Result& r, uint64_t n, MakeTx make_tx, MakeRx make_rx) {
  const uint32_t size = r.size;
  const uint64_t warm = n / 10;
  bool ok = run_pair(
      [&] {
        auto tx = make_tx();
        wait_ready();
        for (uint64_t s = 1; s <= n; ++s) tx.send(size, s, s);
        return 0;
      },
      [&] {
        auto rx = make_rx();
        set_ready();
        uint64_t expect = 1, errors = 0, t_first = 0, windows = 0;
        while (expect <= n) {
          size_t k = rx.drain([&](const Msg& m) {
            errors += (m.w0 != expect) | !last_ok(m.last, m.len, expect) | (m.len != size);
            if (expect >= warm && (expect - warm) % kWindow == 0 && windows < max_samples) {
              samples[windows++] = monotonic_ns();
              if (expect == warm) t_first = samples[0];
            }
            ++expect;
          });
          if (!k) cpu_relax();
        }
        ctl->t_last = monotonic_ns();
        ctl->t_first = t_first;
        ctl->got = windows;
        ctl->errors = errors;
        return 0;
      });
  r.kind = "throughput";
  r.count = n;
  r.msgs_per_s_overall = double(n - warm) * 1e9 / double(ctl->t_last - ctl->t_first);
  // The median over windows of kWindow messages: on a shared machine a preemption
  // spoils one window, not the figure. Both floors and shmbus are measured alike.
  std::vector<double> rates;
  for (uint64_t i = 0; i + 1 < ctl->got; ++i)
    rates.push_back(double(kWindow) * 1e9 / double(samples[i + 1] - samples[i]));
  r.msgs_per_s = rates.size() >= 3 ? median(rates) : r.msgs_per_s_overall;
  if (ctl->errors) std::fprintf(stderr, "%s/%u: %lu bad messages\n", r.name.c_str(), size, ctl->errors);
  return ok && ctl->errors == 0;
}

template <class MakeTx, class MakeRx>
bool case_oneway(Result& r, uint64_t n, MakeTx make_tx, MakeRx make_rx) {
  const uint32_t size = r.size;
  n = std::min(n, max_samples);
  bool ok = run_pair(
      [&] {
        auto tx = make_tx();
        wait_ready();
        const uint64_t gap = 1'000'000'000ull / g.rate;
        uint64_t next = monotonic_ns() + 1'000'000;
        uint64_t t0 = 0;
        for (uint64_t s = 1; s <= n; ++s) {
          while (monotonic_ns() < next) cpu_relax();
          next += gap;
          uint64_t now = monotonic_ns();
          if (s == 1) t0 = now;
          tx.send(size, now, s);  // word 0 = send time (strictly increasing)
        }
        ctl->t_first = t0;
        return 0;
      },
      [&] {
        auto rx = make_rx();
        set_ready();
        uint64_t got = 0, errors = 0, prev = 0;
        while (got < n) {
          size_t k = rx.drain([&](const Msg& m) {
            uint64_t now = monotonic_ns();
            ++got;
            errors += (m.w0 <= prev) | !last_ok(m.last, m.len, got) | (m.len != size);
            prev = m.w0;
            samples[got - 1] = now - m.w0;
          });
          if (!k) cpu_relax();
        }
        ctl->t_last = monotonic_ns();
        ctl->got = got;
        ctl->errors = errors;
        return 0;
      });
  r.kind = "oneway";
  r.count = n;
  r.msgs_per_s = double(n) * 1e9 / double(ctl->t_last - ctl->t_first);
  const uint64_t warm = std::min<uint64_t>(1000, n / 10);
  percentiles(r, samples + warm, n - warm);
  if (ctl->errors) std::fprintf(stderr, "%s/%u: %lu bad messages\n", r.name.c_str(), size, ctl->errors);
  return ok && ctl->errors == 0;
}

// Parent: ping (w0 = i), wait for the echo; child: echo every message back.
template <class MakeParent, class MakeChild>
bool case_rtt(Result& r, uint64_t n, MakeParent make_parent, MakeChild make_child) {
  const uint32_t size = r.size;
  n = std::min(n, max_samples);
  uint64_t errors = 0;
  uint64_t t_begin = 0, t_end = 0;
  bool ok = run_pair(
      [&] {
        auto [tx, rx] = make_parent();
        wait_ready();
        t_begin = monotonic_ns();
        for (uint64_t i = 1; i <= n; ++i) {
          uint64_t t0 = monotonic_ns();
          tx.send(size, i, i);
          bool back = false;
          while (!back) {
            if (!rx.drain([&](const Msg& m) {
                  errors += (m.w0 != i) | !last_ok(m.last, m.len, i) | (m.len != size);
                  back = true;
                }))
              cpu_relax();
          }
          samples[i - 1] = monotonic_ns() - t0;
        }
        t_end = monotonic_ns();
        return 0;
      },
      [&] {
        auto [tx, rx] = make_child();
        set_ready();
        uint64_t got = 0;
        while (got < n) {
          size_t k = rx.drain([&](const Msg& m) {
            ++got;
            tx.send(m.len, m.w0, m.w0);
          });
          if (!k) cpu_relax();
        }
        return 0;
      });
  r.kind = "roundtrip";
  r.count = n;
  r.msgs_per_s = double(n) * 1e9 / double(t_end - t_begin);
  const uint64_t warm = std::min<uint64_t>(1000, n / 10);
  percentiles(r, samples + warm, n - warm);
  if (errors) std::fprintf(stderr, "%s/%u: %lu bad echoes\n", r.name.c_str(), size, errors);
  return ok && errors == 0;
}

// ---------------------------------------------------------------------------
// The cache-line floor.
struct alignas(128) Line {
  std::atomic<uint64_t> seq{0};
  std::atomic<uint64_t> stamp{0};
  char pad[128 - 16];
};

bool case_line_rtt(Result& r, uint64_t n) {
  n = std::min(n, max_samples);
  auto* lines = static_cast<Line*>(shared_alloc(2 * sizeof(Line)));
  new (&lines[0]) Line{};
  new (&lines[1]) Line{};
  uint64_t t_begin = 0, t_end = 0;
  bool ok = run_pair(
      [&] {
        wait_ready();
        t_begin = monotonic_ns();
        for (uint64_t i = 1; i <= n; ++i) {
          uint64_t t0 = monotonic_ns();
          lines[0].seq.store(i, std::memory_order_release);
          while (lines[1].seq.load(std::memory_order_acquire) != i) cpu_relax();
          samples[i - 1] = monotonic_ns() - t0;
        }
        t_end = monotonic_ns();
        return 0;
      },
      [&] {
        set_ready();
        for (uint64_t i = 1; i <= n; ++i) {
          while (lines[0].seq.load(std::memory_order_acquire) != i) cpu_relax();
          lines[1].seq.store(i, std::memory_order_release);
        }
        return 0;
      });
  munmap(lines, 2 * sizeof(Line));
  r.kind = "roundtrip";
  r.count = n;
  r.msgs_per_s = double(n) * 1e9 / double(t_end - t_begin);
  const uint64_t warm = std::min<uint64_t>(1000, n / 10);
  percentiles(r, samples + warm, n - warm);
  return ok;
}

bool case_line_oneway(Result& r, uint64_t n) {
  n = std::min(n, max_samples);
  // line[0].stamp: the hand-off itself (the send time, strictly increasing: one
  // 8-byte store, one line transfer); line[1].seq: "done", on another line.
  auto* line = static_cast<Line*>(shared_alloc(2 * sizeof(Line)));
  new (&line[0]) Line{};
  new (&line[1]) Line{};
  bool ok = run_pair(
      [&] {
        wait_ready();
        const uint64_t gap = 1'000'000'000ull / g.rate;
        uint64_t next = monotonic_ns() + 1'000'000;
        ctl->t_first = next;
        for (uint64_t s = 1; s <= n; ++s) {
          while (monotonic_ns() < next) cpu_relax();
          next += gap;
          line[0].stamp.store(monotonic_ns(), std::memory_order_release);
        }
        line[1].seq.store(1, std::memory_order_release);
        return 0;
      },
      [&] {
        set_ready();
        // A consumer that was descheduled sees only the latest hand-off: it
        // samples what it sees.
        uint64_t seen = 0, got = 0;
        for (;;) {
          uint64_t v = line[0].stamp.load(std::memory_order_acquire);
          if (v != seen) {
            uint64_t now = monotonic_ns();
            if (got < n) samples[got++] = now - v;
            seen = v;
            continue;
          }
          if (line[1].seq.load(std::memory_order_acquire)) break;
          cpu_relax();
        }
        ctl->t_last = monotonic_ns();
        ctl->got = got;
        return 0;
      });
  munmap(line, 2 * sizeof(Line));
  r.kind = "oneway";
  r.count = ctl->got;
  r.msgs_per_s = double(ctl->got) * 1e9 / double(ctl->t_last - ctl->t_first);
  const uint64_t warm = std::min<uint64_t>(1000, ctl->got / 10);
  if (ctl->got == 0) return false;
  percentiles(r, samples + warm, ctl->got - warm);
  return ok;
}

// ---------------------------------------------------------------------------
// Per-path wiring.
struct ShmbusTopics {
  Bus bus;
  explicit ShmbusTopics(const std::string& prefix) : bus(Bus::direct({.shm_prefix = prefix})) {
    for (const char* t : {"bench.ping", "bench.pong"})
      bus.create_topic(t, {.capacity = g.capacity, .max_payload = 16384});
  }
  ~ShmbusTopics() {
    for (const char* t : {"bench.ping", "bench.pong"}) {
      try {
        bus.remove_topic(t);
      } catch (...) {
      }
    }
  }
};

std::string next_prefix() {
  static int n = 0;
  return "shmbus-bench-" + std::to_string(getpid()) + "-" + std::to_string(n++);
}

template <class Rx>
auto shmbus_rx_factory(ShmbusTopics& t, const char* topic) {
  return [&t, topic] { return Rx(t.bus, topic); };
}

uint64_t tput_count(uint32_t size, bool uds) {
  uint64_t n = uds ? g.uds_tput_msgs : g.tput_msgs;
  uint64_t cap = g.tput_bytes / size;
  return std::max<uint64_t>(std::min(n, cap), 1000);
}

bool selected(const std::string& name) {
  if (g.only.empty()) return true;
  for (const auto& o : g.only)
    if (g.exact ? name == o : name.find(o) != std::string::npos) return true;
  return false;
}

struct Runner {
  std::vector<Result> out;
  bool ok = true;
  template <class F>
  void run(const std::string& name, uint32_t size, F&& f) {
    if (!selected(name)) return;
    Result r;
    r.name = name;
    r.size = size;
    current_case = name;
    if (!g.json) {
      std::fprintf(stderr, "  %-28s %5u B ...\r", name.c_str(), size);
      std::fflush(stderr);
    }
    bool good = f(r);
    r.preempt = last_preempt;
    if (!good) {
      std::fprintf(stderr, "FAILED: %s/%u\n", name.c_str(), size);
      ok = false;
      return;
    }
    out.push_back(std::move(r));
  }
};

void uds_pair(int type, int fds[2]) {
  if (socketpair(AF_UNIX, type, 0, fds) != 0) {
    std::perror("socketpair");
    std::exit(2);
  }
}

void one_run(Runner& R) {
  const uint64_t cap = g.capacity;
  // Round trip (busy-spin on both sides).
  R.run("rtt.line", 8, [&](Result& r) { return case_line_rtt(r, g.rtt_msgs); });
  for (uint32_t size : g.sizes) {
    R.run("rtt.spsc", size, [&](Result& r) {
      auto a = SpscChannel::make(cap), b = SpscChannel::make(cap);
      bool ok = case_rtt(
          r, g.rtt_msgs,
          [&] {
            return std::pair{SpscTx(a), SpscRx(b)};
          },
          [&] {
            return std::pair{SpscTx(b), SpscRx(a)};
          });
      a.destroy();
      b.destroy();
      return ok;
    });
    R.run("rtt.shmbus", size, [&](Result& r) {
      ShmbusTopics t(next_prefix());
      using Rx = ShmbusRx<Read::raw, false>;
      return case_rtt(
          r, g.rtt_msgs,
          [&] {
            return std::pair{ShmbusTx(t.bus, "bench.ping"), Rx(t.bus, "bench.pong")};
          },
          [&] {
            return std::pair{ShmbusTx(t.bus, "bench.pong"), Rx(t.bus, "bench.ping")};
          });
    });
    R.run("rtt.shmbus_nostamp", size, [&](Result& r) {
      ShmbusTopics t(next_prefix());
      using Rx = ShmbusRx<Read::raw, false>;
      return case_rtt(
          r, g.rtt_msgs,
          [&] {
            return std::pair{ShmbusTx(t.bus, "bench.ping", false), Rx(t.bus, "bench.pong")};
          },
          [&] {
            return std::pair{ShmbusTx(t.bus, "bench.pong", false), Rx(t.bus, "bench.ping")};
          });
    });
    for (int type : {SOCK_SEQPACKET, SOCK_STREAM}) {
      std::string name = type == SOCK_STREAM ? "rtt.uds_stream" : "rtt.uds_seqpacket";
      R.run(name, size, [&](Result& r) {
        int fds[2];
        uds_pair(type, fds);
        bool ok = case_rtt(
            r, g.uds_rtt_msgs,
            [&] {
              return std::pair{UdsTx(fds[0]), UdsRx(fds[0], size, true)};
            },
            [&] {
              return std::pair{UdsTx(fds[1]), UdsRx(fds[1], size, true)};
            });
        close(fds[0]);
        close(fds[1]);
        return ok;
      });
    }
  }
  if (selected("rtt.shmbus_capnp")) {
    R.run("rtt.shmbus_capnp", 64, [&](Result& r) {
      ShmbusTopics t(next_prefix());
      using Rx = ShmbusRx<Read::capnp_checked, false>;
      return case_rtt(
          r, g.rtt_msgs,
          [&] {
            return std::pair{ShmbusCapnpTx(t.bus, "bench.ping"), Rx(t.bus, "bench.pong")};
          },
          [&] {
            return std::pair{ShmbusCapnpTx(t.bus, "bench.pong"), Rx(t.bus, "bench.ping")};
          });
    });
  }

  // One-way latency at a paced rate (busy-spin consumer).
  R.run("lat.line", 8, [&](Result& r) { return case_line_oneway(r, g.lat_msgs); });
  for (uint32_t size : g.sizes) {
    R.run("lat.spsc", size, [&](Result& r) {
      auto a = SpscChannel::make(cap);
      bool ok = case_oneway(
          r, g.lat_msgs, [&] { return SpscTx(a); }, [&] { return SpscRx(a); });
      a.destroy();
      return ok;
    });
    R.run("lat.shmbus", size, [&](Result& r) {
      ShmbusTopics t(next_prefix());
      return case_oneway(
          r, g.lat_msgs, [&] { return ShmbusTx(t.bus, "bench.ping"); },
          [&] { return ShmbusRx<Read::raw, false>(t.bus, "bench.ping"); });
    });
    for (int type : {SOCK_SEQPACKET, SOCK_STREAM}) {
      std::string name = type == SOCK_STREAM ? "lat.uds_stream" : "lat.uds_seqpacket";
      R.run(name, size, [&](Result& r) {
        int fds[2];
        uds_pair(type, fds);
        bool ok = case_oneway(
            r, g.lat_msgs, [&] { return UdsTx(fds[0]); }, [&] { return UdsRx(fds[1], size, true); });
        close(fds[0]);
        close(fds[1]);
        return ok;
      });
    }
  }

  // Throughput at full speed.
  for (uint32_t size : g.sizes) {
    R.run("tput.spsc", size, [&](Result& r) {
      auto a = SpscChannel::make(cap);
      bool ok = case_tput(
          r, tput_count(size, false), [&] { return SpscTx(a); }, [&] { return SpscRx(a); });
      a.destroy();
      return ok;
    });
    R.run("tput.shmbus", size, [&](Result& r) {
      ShmbusTopics t(next_prefix());
      return case_tput(
          r, tput_count(size, false), [&] { return ShmbusTx(t.bus, "bench.ping"); },
          [&] { return ShmbusRx<Read::raw, false>(t.bus, "bench.ping"); });
    });
    R.run("tput.shmbus_pollbatch", size, [&](Result& r) {
      ShmbusTopics t(next_prefix());
      return case_tput(
          r, tput_count(size, false), [&] { return ShmbusTx(t.bus, "bench.ping"); },
          [&] { return ShmbusRx<Read::raw, true>(t.bus, "bench.ping"); });
    });
    R.run("tput.shmbus_nostamp_pollbatch", size, [&](Result& r) {
      ShmbusTopics t(next_prefix());
      return case_tput(
          r, tput_count(size, false), [&] { return ShmbusTx(t.bus, "bench.ping", false); },
          [&] { return ShmbusRx<Read::raw, true>(t.bus, "bench.ping"); });
    });
    for (int type : {SOCK_SEQPACKET, SOCK_STREAM}) {
      std::string name = type == SOCK_STREAM ? "tput.uds_stream" : "tput.uds_seqpacket";
      R.run(name, size, [&](Result& r) {
        int fds[2];
        uds_pair(type, fds);
        bool ok = case_tput(
            r, tput_count(size, true), [&] { return UdsTx(fds[0]); },
            [&] { return UdsRx(fds[1], size, false); });
        close(fds[0]);
        close(fds[1]);
        return ok;
      });
    }
  }
  // Cap'n Proto Quote (64 B) built in place and read in place.
  R.run("tput.shmbus_capnp", 64, [&](Result& r) {
    ShmbusTopics t(next_prefix());
    return case_tput(
        r, tput_count(64, false), [&] { return ShmbusCapnpTx(t.bus, "bench.ping"); },
        [&] { return ShmbusRx<Read::capnp_checked, false>(t.bus, "bench.ping"); });
  });
  R.run("tput.shmbus_capnp_pollbatch", 64, [&](Result& r) {
    ShmbusTopics t(next_prefix());
    return case_tput(
        r, tput_count(64, false), [&] { return ShmbusCapnpTx(t.bus, "bench.ping"); },
        [&] { return ShmbusRx<Read::capnp_checked, true>(t.bus, "bench.ping"); });
  });
  R.run("tput.shmbus_capnp_unchecked", 64, [&](Result& r) {
    ShmbusTopics t(next_prefix());
    return case_tput(
        r, tput_count(64, false), [&] { return ShmbusCapnpTx(t.bus, "bench.ping"); },
        [&] { return ShmbusRx<Read::capnp_unchecked, true>(t.bus, "bench.ping"); });
  });
}

// ---------------------------------------------------------------------------
// Ratios against the floors and baselines of the same run.
const Result* find(const std::vector<Result>& v, const std::string& name, uint32_t size) {
  for (const auto& r : v)
    if (r.name == name && r.size == size) return &r;
  return nullptr;
}

void add_ratios(std::vector<Result>& v) {
  for (auto& r : v) {
    if (r.name.find("shmbus") == std::string::npos) continue;
    if (r.kind == "throughput") {
      if (auto* s = find(v, "tput.spsc", r.size)) r.ratios["vs_spsc"] = r.msgs_per_s / s->msgs_per_s;
      double uds = 0;
      for (const char* u : {"tput.uds_seqpacket", "tput.uds_stream"})
        if (auto* s = find(v, u, r.size)) uds = std::max(uds, s->msgs_per_s);
      if (uds > 0) r.ratios["vs_uds_best"] = r.msgs_per_s / uds;
      if (r.name != "tput.shmbus" && r.name.find("capnp") != std::string::npos) {
        if (auto* s = find(v, "tput.shmbus", r.size)) r.ratios["cost_vs_raw"] = s->msgs_per_s / r.msgs_per_s;
      }
    } else {
      const char* line = r.kind == "roundtrip" ? "rtt.line" : "lat.line";
      const char* spsc = r.kind == "roundtrip" ? "rtt.spsc" : "lat.spsc";
      if (auto* s = find(v, line, 8)) {
        r.ratios["p50_vs_line"] = r.p50 / s->p50;
        r.ratios["p99_vs_line"] = r.p99 / s->p99;
      }
      if (auto* s = find(v, spsc, r.size)) {
        r.ratios["p50_vs_spsc"] = r.p50 / s->p50;
        r.ratios["p99_vs_spsc"] = r.p99 / s->p99;
      }
      std::string uds_prefix = r.kind == "roundtrip" ? "rtt." : "lat.";
      double best = 0;
      for (const char* u : {"uds_seqpacket", "uds_stream"})
        if (auto* s = find(v, uds_prefix + u, r.size)) best = best == 0 ? s->p50 : std::min(best, s->p50);
      if (best > 0) r.ratios["p50_vs_uds_best"] = r.p50 / best;
      if (r.size == 4096) {
        if (auto* s = find(v, r.name, 8)) r.ratios["p50_vs_8B"] = r.p50 / s->p50;
      }
    }
  }
}

// Median of every figure and every ratio over the runs (ratios are taken per run
// first, against that run's floors, then their median).
std::vector<Result> medians(const std::vector<std::vector<Result>>& runs) {
  std::vector<Result> out;
  for (const auto& r0 : runs[0]) {
    std::vector<const Result*> rs;
    for (const auto& run : runs)
      if (auto* p = find(run, r0.name, r0.size)) rs.push_back(p);
    Result m = r0;
    auto med = [&](auto get) {
      std::vector<double> x;
      for (auto* p : rs) x.push_back(get(*p));
      return median(x);
    };
    m.msgs_per_s = med([](const Result& r) { return r.msgs_per_s; });
    m.p50 = med([](const Result& r) { return r.p50; });
    m.p99 = med([](const Result& r) { return r.p99; });
    m.p999 = med([](const Result& r) { return r.p999; });
    m.p9999 = med([](const Result& r) { return r.p9999; });
    m.max = med([](const Result& r) { return r.max; });
    m.msgs_per_s_overall = med([](const Result& r) { return r.msgs_per_s_overall; });
    m.preempt = uint64_t(med([](const Result& r) { return double(r.preempt); }));
    for (auto& [k, _] : m.ratios)
      m.ratios[k] = med([&](const Result& r) {
        auto it = r.ratios.find(k);
        return it == r.ratios.end() ? 0.0 : it->second;
      });
    out.push_back(std::move(m));
  }
  return out;
}

void print_json(const Result& r, int runs) {
  auto num = [&](double x) {
    char b[64];
    if (!r.has_lat) return std::string("null");
    std::snprintf(b, sizeof b, "%.0f", x);
    return std::string(b);
  };
  std::printf(
      "{\"name\":\"%s\",\"kind\":\"%s\",\"size\":%u,\"runs\":%d,\"count\":%lu,"
      "\"msgs_per_s\":%.0f,\"msgs_per_s_overall\":%.0f,\"mb_per_s\":%.1f,\"preempt\":%lu,\"p50_ns\":%s,\"p99_"
      "ns\":%s,\"p999_ns\":%s,"
      "\"p9999_ns\":%s,\"max_ns\":%s,\"ratios\":{",
      r.name.c_str(), r.kind.c_str(), r.size, runs, r.count, r.msgs_per_s, r.msgs_per_s_overall,
      r.msgs_per_s * r.size / 1e6, r.preempt, num(r.p50).c_str(), num(r.p99).c_str(), num(r.p999).c_str(),
      num(r.p9999).c_str(), num(r.max).c_str());
  bool first = true;
  for (const auto& [k, v] : r.ratios) {
    std::printf("%s\"%s\":%.3f", first ? "" : ",", k.c_str(), v);
    first = false;
  }
  std::printf("}}\n");
}

void print_table(const std::vector<Result>& v, int runs) {
  std::printf("shmbus-bench: cpus %d,%d  ring %lu B  rate %lu msg/s  %d run(s)%s\n", g.cpus[0], g.cpus[1],
              g.capacity, g.rate, runs, runs > 1 ? " (medians)" : "");
  std::string kind;
  for (const auto& r : v) {
    if (r.kind != kind) {
      kind = r.kind;
      if (kind == "throughput")
        std::printf("\n%-28s %6s %12s %10s %6s  %s\n", "throughput", "size", "msg/s", "MB/s", "csw",
                    "ratios");
      else
        std::printf("\n%-28s %6s %9s %9s %9s %9s %9s %6s  %s\n",
                    kind == "roundtrip" ? "round trip (ns)" : "one-way latency (ns)", "size", "p50", "p99",
                    "p99.9", "p99.99", "max", "csw", "ratios");
    }
    if (r.kind == "throughput")
      std::printf("%-28s %6u %12.0f %10.1f %6lu ", r.name.c_str(), r.size, r.msgs_per_s,
                  r.msgs_per_s * r.size / 1e6, r.preempt);
    else
      std::printf("%-28s %6u %9.0f %9.0f %9.0f %9.0f %9.0f %6lu ", r.name.c_str(), r.size, r.p50, r.p99,
                  r.p999, r.p9999, r.max, r.preempt);
    for (const auto& [k, x] : r.ratios) std::printf(" %s=%.2f", k.c_str(), x);
    std::printf("\n");
  }
}

// The targets, from the medians.
void print_targets(const std::vector<Result>& v) {
  struct T {
    const char* what;
    const char* name;
    uint32_t size;
    const char* ratio;
    double limit;
    bool at_least;
  };
  const T targets[] = {
      {"throughput 64 B, Cap'n Proto in place vs SPSC floor", "tput.shmbus_capnp", 64, "vs_spsc", 0.8, true},
      {"throughput 64 B, Cap'n Proto in place, poll_batch vs SPSC floor", "tput.shmbus_capnp_pollbatch", 64,
       "vs_spsc", 0.8, true},
      {"throughput 64 B, raw bytes vs SPSC floor", "tput.shmbus", 64, "vs_spsc", 0.8, true},
      {"throughput 64 B, raw bytes, poll_batch vs SPSC floor", "tput.shmbus_pollbatch", 64, "vs_spsc", 0.8,
       true},
      {"throughput 64 B, Cap'n Proto in place vs best UDS", "tput.shmbus_capnp", 64, "vs_uds_best", 20, true},
      {"throughput 64 B, raw bytes vs best UDS", "tput.shmbus", 64, "vs_uds_best", 20, true},
      {"throughput 64 B, raw bytes, poll_batch, unstamped vs SPSC floor", "tput.shmbus_nostamp_pollbatch", 64,
       "vs_spsc", 0.8, true},
      {"throughput 64 B, raw bytes, poll_batch, unstamped vs best UDS", "tput.shmbus_nostamp_pollbatch", 64,
       "vs_uds_best", 20, true},
      {"round trip p50 8 B vs cache-line ping-pong", "rtt.shmbus", 8, "p50_vs_line", 1.5, false},
      {"round trip p99 8 B vs cache-line ping-pong", "rtt.shmbus", 8, "p99_vs_line", 2.0, false},
      {"round trip p50 64 B vs cache-line ping-pong", "rtt.shmbus", 64, "p50_vs_line", 1.5, false},
      {"round trip p99 64 B vs cache-line ping-pong", "rtt.shmbus", 64, "p99_vs_line", 2.0, false},
      {"round trip p50 64 B, unstamped vs cache-line ping-pong", "rtt.shmbus_nostamp", 64, "p50_vs_line", 1.5,
       false},
      {"round trip p99 64 B, unstamped vs cache-line ping-pong", "rtt.shmbus_nostamp", 64, "p99_vs_line", 2.0,
       false},
      {"zero copy: round trip p50 4096 B vs 8 B", "rtt.shmbus", 4096, "p50_vs_8B", 1.5, false},
      {"Cap'n Proto in place vs raw bytes, 64 B (throughput cost)", "tput.shmbus_capnp", 64, "cost_vs_raw",
       1.5, false},
  };
  if (!g.json) std::printf("\ntargets (issue 2)\n");
  for (const T& t : targets) {
    const Result* r = find(v, t.name, t.size);
    if (!r || !r->ratios.count(t.ratio)) continue;
    double x = r->ratios.at(t.ratio);
    bool met = t.at_least ? x >= t.limit : x <= t.limit;
    if (g.json)
      std::printf(
          "{\"name\":\"target\",\"target\":\"%s\",\"case\":\"%s\",\"size\":%u,\"ratio\":\"%s\","
          "\"value\":%.3f,\"limit\":%.2f,\"met\":%s}\n",
          t.what, t.name, t.size, t.ratio, x, t.limit, met ? "true" : "false");
    else
      std::printf("  %-62s %7.2f  (%s %.2f)  %s\n", t.what, x, t.at_least ? ">=" : "<=", t.limit,
                  met ? "met" : "NOT MET");
  }
}

// ---------------------------------------------------------------------------
// --vs-daemon: the same producer/consumer cases direct and through shmbusd.
cpu_set_t all_cpus;  // the affinity we started with (the daemon gets it back)

// A shmbusd process with its own socket, state dir and shm prefix, unpinned.
struct DaemonProcess {
  std::string dir, sock, prefix, log;
  pid_t pid = -1;

  bool start() {
    char tpl[] = "/tmp/shmbus-bench-XXXXXX";
    if (!mkdtemp(tpl)) {
      std::perror("mkdtemp");
      return false;
    }
    dir = tpl;
    sock = dir + "/shmbusd.sock";
    log = dir + "/shmbusd.log";
    prefix = "shmbus-bench-d" + std::to_string(getpid());
    const std::string state = dir + "/state";
    std::vector<std::string> args{g.shmbusd, "--socket",    sock,   "--state-dir", state, "--shm-prefix",
                                  prefix,    "--log-level", "warn", "--log-file",  log};
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    pid = fork();
    if (pid < 0) {
      std::perror("fork");
      return false;
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      sched_setaffinity(0, sizeof(all_cpus), &all_cpus);  // not on the producer's core only
      execvp(av[0], av.data());
      std::fprintf(stderr, "shmbus-bench: cannot run %s: %s\n", av[0], std::strerror(errno));
      _exit(127);
    }
    daemon_pid = pid;
    // Ready when a Bus::connect succeeds (bounded: 10 s).
    const uint64_t deadline = monotonic_ns() + 10'000'000'000ull;
    while (monotonic_ns() < deadline) {
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        std::fprintf(stderr, "shmbus-bench: shmbusd exited at start (status %d)\n", st);
        pid = daemon_pid = -1;
        dump_log();
        return false;
      }
      try {
        Bus::connect(sock);
        return true;
      } catch (const std::exception&) {
      }
      usleep(5000);
    }
    std::fprintf(stderr, "shmbus-bench: shmbusd did not answer on %s within 10 s\n", sock.c_str());
    dump_log();
    return false;
  }
  void dump_log() const {
    if (FILE* f = std::fopen(log.c_str(), "r")) {
      char b[512];
      while (std::fgets(b, sizeof b, f)) std::fprintf(stderr, "shmbusd: %s", b);
      std::fclose(f);
    }
  }
  // SIGTERM, bounded wait, then SIGKILL; true if it exited 0.
  bool stop() {
    bool clean = true;
    if (pid > 0) {
      kill(pid, SIGTERM);
      int st = 0;
      const uint64_t deadline = monotonic_ns() + 10'000'000'000ull;
      pid_t w = 0;
      while ((w = waitpid(pid, &st, WNOHANG)) == 0 && monotonic_ns() < deadline) usleep(2000);
      if (w != pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        clean = false;
      } else {
        clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
      }
      if (!clean) dump_log();
      pid = daemon_pid = -1;
    }
    std::error_code ec;
    if (std::filesystem::exists("/dev/shm", ec))
      for (auto& e : std::filesystem::directory_iterator("/dev/shm", ec))
        if (e.path().filename().string().rfind(prefix + ".", 0) == 0) std::filesystem::remove(e.path(), ec);
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
    return clean;
  }
};

// Topics created through the daemon (from the orchestrating process's connection);
// each side of a case opens its own connection with Bus::connect.
struct DaemonTopics {
  Bus& admin;
  std::string ping, pong;
  DaemonTopics(Bus& a, int n) : admin(a) {
    ping = "bench." + std::to_string(n) + ".ping";
    pong = "bench." + std::to_string(n) + ".pong";
    for (const auto& t : {ping, pong}) admin.create_topic(t, {.capacity = g.capacity, .max_payload = 16384});
  }
  ~DaemonTopics() {
    for (const auto& t : {ping, pong}) {
      try {
        admin.remove_topic(t);
      } catch (...) {
      }
    }
  }
};
struct DaemonTx {
  Bus bus;
  ShmbusTx tx;
  DaemonTx(const std::string& sock, const std::string& topic) : bus(Bus::connect(sock)), tx(bus, topic) {}
  void send(uint32_t size, uint64_t w0, uint64_t seq) { tx.send(size, w0, seq); }
};
struct DaemonRx {
  Bus bus;
  ShmbusRx<Read::raw, false> rx;
  DaemonRx(const std::string& sock, const std::string& topic) : bus(Bus::connect(sock)), rx(bus, topic) {}
  template <class F>
  size_t drain(F&& f) {
    return rx.drain(std::forward<F>(f));
  }
};

int run_vs_daemon() {
  DaemonProcess d;
  if (!d.start()) {
    d.stop();
    return 1;
  }
  int rc = 0;
  try {
    Bus admin = Bus::connect(d.sock);
    int topic_n = 0;
    // results[i] = every repetition of case i (name, size), in order.
    std::vector<std::vector<Result>> reps;
    std::vector<std::string> keys;
    auto slot = [&](const Result& r) -> std::vector<Result>& {
      std::string k = r.name + "/" + std::to_string(r.size);
      for (size_t i = 0; i < keys.size(); ++i)
        if (keys[i] == k) return reps[i];
      keys.push_back(k);
      reps.emplace_back();
      return reps.back();
    };
    bool ok = true;
    const std::string& sock = d.sock;
    for (int rep = 0; rep < g.runs; ++rep) {
      if (!g.json) std::fprintf(stderr, "repetition %d/%d\n", rep + 1, g.runs);
      Runner R;
      // Order flips every repetition (direct first, then daemon first) so that a
      // drift in machine load does not favour one side.
      const bool daemon_first = rep % 2 == 1;
      for (uint32_t size : g.sizes) {
        for (int k = 0; k < 3; ++k) {
          const char* kind = k == 0 ? "tput" : k == 1 ? "lat" : "rtt";
          for (int j = 0; j < 2; ++j) {
            const bool via_daemon = (j == 0) == daemon_first;
            const std::string name = std::string(kind) + (via_daemon ? ".shmbus_daemon" : ".shmbus");
            R.run(name, size, [&](Result& r) {
              using Rx = ShmbusRx<Read::raw, false>;
              if (!via_daemon) {
                ShmbusTopics t(next_prefix());
                if (k == 0)
                  return case_tput(
                      r, tput_count(size, false), [&] { return ShmbusTx(t.bus, "bench.ping"); },
                      [&] { return Rx(t.bus, "bench.ping"); });
                if (k == 1)
                  return case_oneway(
                      r, g.lat_msgs, [&] { return ShmbusTx(t.bus, "bench.ping"); },
                      [&] { return Rx(t.bus, "bench.ping"); });
                return case_rtt(
                    r, g.rtt_msgs,
                    [&] {
                      return std::pair{ShmbusTx(t.bus, "bench.ping"), Rx(t.bus, "bench.pong")};
                    },
                    [&] {
                      return std::pair{ShmbusTx(t.bus, "bench.pong"), Rx(t.bus, "bench.ping")};
                    });
              }
              DaemonTopics t(admin, topic_n++);
              if (k == 0)
                return case_tput(
                    r, tput_count(size, false), [&] { return DaemonTx(sock, t.ping); },
                    [&] { return DaemonRx(sock, t.ping); });
              if (k == 1)
                return case_oneway(
                    r, g.lat_msgs, [&] { return DaemonTx(sock, t.ping); },
                    [&] { return DaemonRx(sock, t.ping); });
              return case_rtt(
                  r, g.rtt_msgs,
                  [&] {
                    return std::pair{DaemonTx(sock, t.ping), DaemonRx(sock, t.pong)};
                  },
                  [&] {
                    return std::pair{DaemonTx(sock, t.pong), DaemonRx(sock, t.ping)};
                  });
            });
          }
        }
      }
      ok &= R.ok;
      for (auto& r : R.out) slot(r).push_back(r);
    }
    if (!g.json) std::fprintf(stderr, "%60s\r", "");

    // Medians per case; on the daemon rows the daemon/direct ratio of the medians
    // ("daemon_vs_direct", the verdict) and the median of the per-repetition
    // ratios of adjacent runs ("paired").
    std::vector<Result> med;
    std::map<std::string, std::pair<double, double>> tput_range;  // min, max msg/s
    for (auto& v : reps) {
      std::vector<std::vector<Result>> one;
      for (auto& r : v) one.push_back({r});
      Result m = medians(one)[0];
      m.count = v[0].count;
      double lo = 1e300, hi = 0;
      for (auto& r : v) {
        double x = r.kind == "throughput" ? r.msgs_per_s : r.p99;
        lo = std::min(lo, x);
        hi = std::max(hi, x);
      }
      tput_range[m.name + "/" + std::to_string(m.size)] = {lo, hi};
      med.push_back(m);
    }
    auto series = [&](const std::string& name, uint32_t size) -> const std::vector<Result>* {
      for (size_t i = 0; i < keys.size(); ++i)
        if (keys[i] == name + "/" + std::to_string(size)) return &reps[i];
      return nullptr;
    };
    // A comparison is resolved when there are at least 3 repetitions and the direct
    // runs alone stayed within 1.5x of each other (max/min): beyond that (one-way p99 on a loaded
    // machine: a scheduler tick of backlog or not) a 5 % difference cannot be seen.
    constexpr double kResolvable = 1.5;
    struct Verdict {
      std::string what, name, ratio;
      uint32_t size;
      double value, paired, limit, spread;
      bool met, decides, resolved;
    };
    std::vector<Verdict> verdicts;
    for (auto& m : med) {
      const std::string suffix = ".shmbus_daemon";
      if (m.name.size() < suffix.size() ||
          m.name.compare(m.name.size() - suffix.size(), suffix.size(), suffix))
        continue;
      const std::string base = m.name.substr(0, m.name.size() - suffix.size()) + ".shmbus";
      const Result* dm = find(med, base, m.size);
      const auto* a = series(base, m.size);
      const auto* b = series(m.name, m.size);
      if (!dm || !a || !b) continue;
      auto paired = [&](auto get) {
        std::vector<double> x;
        for (size_t i = 0; i < std::min(a->size(), b->size()); ++i) x.push_back(get((*b)[i]) / get((*a)[i]));
        return median(x);
      };
      auto [lo, hi] = tput_range[base + "/" + std::to_string(m.size)];
      const double spread = lo > 0 ? hi / lo : 0;
      const bool resolved = g.runs >= 3 && spread <= kResolvable;
      const std::string sz = " " + std::to_string(m.size) + " B";
      if (m.kind == "throughput") {
        const double x = m.ratios["daemon_vs_direct"] = m.msgs_per_s / dm->msgs_per_s;
        m.ratios["paired"] = paired([](const Result& r) { return r.msgs_per_s; });
        verdicts.push_back({"through the daemon vs direct: throughput" + sz, m.name, "tput_daemon_vs_direct",
                            m.size, x, m.ratios["paired"], 0.95, spread, x >= 0.95, true, resolved});
      } else {
        m.ratios["p50_daemon_vs_direct"] = m.p50 / dm->p50;
        const double x = m.ratios["p99_daemon_vs_direct"] = m.p99 / dm->p99;
        m.ratios["p999_daemon_vs_direct"] = m.p999 / dm->p999;
        m.ratios["p99_paired"] = paired([](const Result& r) { return r.p99; });
        const bool oneway = m.kind == "oneway";
        verdicts.push_back({std::string("through the daemon vs direct: ") +
                                (oneway ? "one-way latency p99" + sz : "round trip p99" + sz + " (extra)"),
                            m.name, "p99_daemon_vs_direct", m.size, x, m.ratios["p99_paired"], 1.05, spread,
                            x <= 1.05, oneway, resolved});
      }
    }
    // Overall: not within if a resolved comparison fails; within if every deciding
    // comparison is resolved and met; otherwise unresolved.
    bool failed = false, all_resolved = true;
    for (auto& v : verdicts) {
      if (!v.decides) continue;
      if (v.resolved && !v.met) failed = true;
      if (!v.resolved) all_resolved = false;
    }
    const char* overall = failed ? "NOT WITHIN 5%" : all_resolved ? "WITHIN 5%" : "UNRESOLVED";
    if (g.json) {
      for (const auto& r : med) print_json(r, g.runs);
      for (auto& v : verdicts)
        std::printf(
            "{\"name\":\"target\",\"target\":\"%s\",\"case\":\"%s\",\"size\":%u,\"ratio\":\"%s\","
            "\"value\":%.3f,\"paired\":%.3f,\"limit\":%.2f,\"met\":%s,\"decides\":%s,"
            "\"direct_spread\":%.3f,\"resolved\":%s}\n",
            v.what.c_str(), v.name.c_str(), v.size, v.ratio.c_str(), v.value, v.paired, v.limit,
            v.met ? "true" : "false", v.decides ? "true" : "false", v.spread, v.resolved ? "true" : "false");
      std::printf("{\"name\":\"verdict\",\"within_5_percent\":%s}\n", failed         ? "false"
                                                                      : all_resolved ? "true"
                                                                                     : "null");
    } else {
      std::printf("shmbus-bench --vs-daemon: shmbusd pid %d (unpinned), socket %s\n", int(d.pid),
                  d.sock.c_str());
      print_table(med, g.runs);
      std::printf("\nrun-to-run range over %d repetitions (throughput msg/s, latency p99 ns)\n", g.runs);
      for (auto& m : med) {
        auto [lo, hi] = tput_range[m.name + "/" + std::to_string(m.size)];
        std::printf("  %-28s %6u  %12.0f .. %-12.0f (max/min %.2f)\n", m.name.c_str(), m.size, lo, hi,
                    lo > 0 ? hi / lo : 0.0);
      }
      std::printf(
          "\ndaemon / direct (ratio of the medians; paired = median of adjacent-run ratios;\n"
          "resolved = the direct runs alone within max/min %.1f)\n",
          kResolvable);
      for (auto& v : verdicts) {
        char note[96] = "";
        if (!v.resolved)
          std::snprintf(note, sizeof note,
                        g.runs < 3 ? " [unresolved: fewer than 3 repetitions]"
                                   : " [unresolved: direct alone varied %.2fx]",
                        v.spread);
        std::printf("  %-62s %6.3f  (paired %6.3f)  %s %.2f  %s%s%s\n", v.what.c_str(), v.value, v.paired,
                    v.ratio.rfind("tput", 0) == 0 ? ">=" : "<=", v.limit, v.met ? "within" : "NOT within",
                    note, v.decides ? "" : " (not in the verdict)");
      }
      std::printf(
          "\nverdict: %s (throughput and one-way p99 through shmbusd vs direct, %d interleaved "
          "repetitions)\n",
          overall, g.runs);
    }
    if (!ok) rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shmbus-bench --vs-daemon: %s\n", e.what());
    rc = 1;
  }
  if (!d.stop()) {
    std::fprintf(stderr, "shmbus-bench: shmbusd did not stop cleanly\n");
    rc = 1;
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "shmbus-bench: end-to-end throughput and latency of shmbus between two processes pinned to\n"
      "two cores, with the floors (cache-line ping-pong, hand-written SPSC ring) and the Unix\n"
      "socket baseline measured in the same run; prints every shmbus figure as a ratio to them."};
  app.add_option("--sizes", g.sizes, "payload sizes in bytes (>= 8, multiple of 8)")->delimiter(',');
  app.add_option("--cpus", g.cpus, "producer,consumer cores")->delimiter(',')->expected(2);
  app.add_option("--capacity", g.capacity, "ring bytes (shmbus and SPSC), power of two");
  app.add_option("--messages", g.tput_msgs, "throughput: messages per shared-memory case");
  app.add_option("--uds-messages", g.uds_tput_msgs, "throughput: messages per Unix-socket case");
  app.add_option("--latency-messages", g.lat_msgs, "one-way latency: messages per case");
  app.add_option("--rate", g.rate, "one-way latency: paced rate, msg/s")->check(CLI::Range(1, 10'000'000));
  app.add_option("--rtt-messages", g.rtt_msgs, "round trip: iterations per shared-memory case");
  app.add_option("--uds-rtt-messages", g.uds_rtt_msgs, "round trip: iterations per Unix-socket case");
  app.add_option("--runs", g.runs, "repeat the whole set; report medians (figures and ratios)")
      ->check(CLI::Range(1, 99));
  app.add_option("--only", g.only, "run cases whose name contains one of these (e.g. tput.,rtt.line)")
      ->delimiter(',');
  app.add_flag("--exact", g.exact,
               "--only names whole case names (tput.shmbus is not tput.shmbus_pollbatch)");
  app.add_option("--timeout", g.timeout_s, "seconds before a case is declared hung");
  app.add_flag("--json", g.json, "one JSON object per case (and per target) on stdout");
  app.add_flag("--quick", g.quick, "tiny counts, sizes 8 and 64: a smoke test (seconds)");
  app.add_flag("--vs-daemon", g.vs_daemon,
               "only shmbus cases (tput, lat, rtt), direct and through a shmbusd process started here,\n"
               "interleaved per repetition (--runs); daemon/direct ratios and a 5 % verdict (issue 3);\n"
               "default sizes 64,1024");
  // Default daemon: the build tree's (<build>/daemon/shmbusd), else next to this
  // binary (installed), else shmbusd on PATH.
  g.shmbusd = "shmbusd";
  {
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
    for (auto c : {self / ".." / "daemon" / "shmbusd", self / "shmbusd"})
      if (!ec && access(c.c_str(), X_OK) == 0) {
        g.shmbusd = c.lexically_normal().string();
        break;
      }
  }
  app.add_option("--shmbusd", g.shmbusd, "--vs-daemon: the shmbusd binary (default: the build tree's)");
  CLI11_PARSE(app, argc, argv);
  if (g.vs_daemon && app.count("--sizes") == 0) g.sizes = {64, 1024};
  if (g.quick) {
    if (!g.vs_daemon) g.sizes = {8, 64};
    g.tput_msgs = 200'000;
    g.uds_tput_msgs = 20'000;
    g.lat_msgs = 5'000;
    g.rtt_msgs = 5'000;
    g.uds_rtt_msgs = 2'000;
    g.timeout_s = 30;
  }
  for (uint32_t s : g.sizes)
    if (s < 8 || s % 8 || s > 16384) {
      std::fprintf(stderr, "--sizes: %u is not a multiple of 8 in [8, 16384]\n", s);
      return 2;
    }
  if (g.capacity < 65536 || (g.capacity & (g.capacity - 1))) {
    std::fprintf(stderr, "--capacity must be a power of two >= 65536\n");
    return 2;
  }
  main_pid = getpid();
  sched_getaffinity(0, sizeof(all_cpus), &all_cpus);
  if (!pin(g.cpus[0])) std::fprintf(stderr, "warning: cannot pin to cpu %d\n", g.cpus[0]);
  signal(SIGALRM, on_alarm);
  ctl = static_cast<Ctl*>(shared_alloc(sizeof(Ctl)));
  max_samples = std::max({g.lat_msgs, g.rtt_msgs, g.uds_rtt_msgs, uint64_t(1000)});
  samples = static_cast<uint64_t*>(shared_alloc(max_samples * sizeof(uint64_t)));
  payload();
  if (g.vs_daemon) return run_vs_daemon();

  std::vector<std::vector<Result>> runs;
  bool ok = true;
  for (int i = 0; i < g.runs; ++i) {
    if (!g.json) std::fprintf(stderr, "run %d/%d\n", i + 1, g.runs);
    Runner R;
    one_run(R);
    ok &= R.ok;
    add_ratios(R.out);
    runs.push_back(std::move(R.out));
  }
  if (!g.json) std::fprintf(stderr, "%60s\r", "");
  std::vector<Result> res = g.runs > 1 ? medians(runs) : runs[0];
  if (g.json)
    for (const auto& r : res) print_json(r, g.runs);
  else
    print_table(res, g.runs);
  print_targets(res);
  return ok ? 0 : 1;
}
