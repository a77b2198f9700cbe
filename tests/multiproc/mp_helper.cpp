// mp_helper: the producer and subscriber processes of the multi-process tests.
//
//   mp_helper pub key=value...   publishes the BlobCodec stream of one producer
//   mp_helper sub key=value...   subscribes and checks every frame (StreamCheck)
//
// It reports on stdout, one "key value" line per fact, flushed at once: "ready 1"
// once joined, counters at the end, "ok 1" last; on any check failure
// "FAIL <reason>" and exit 1. A watchdog (alarm) ends a helper that hangs with
// "FAIL watchdog" and exit 3, so the test never waits forever.
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "blob_codec.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

std::map<std::string, std::string> g_args;

std::string arg(const std::string& k, const std::string& def) {
  auto it = g_args.find(k);
  return it == g_args.end() ? def : it->second;
}
uint64_t num(const std::string& k, uint64_t def) {
  auto it = g_args.find(k);
  return it == g_args.end() ? def : std::strtoull(it->second.c_str(), nullptr, 0);
}

void fact(const char* k, uint64_t v) {
  std::printf("%s %llu\n", k, (unsigned long long)v);
  std::fflush(stdout);
}

[[noreturn]] void fail(const std::string& why) {
  std::printf("FAIL %s\n", why.c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "mp_helper[%d] FAIL %s\n", int(getpid()), why.c_str());
  _exit(1);
}

void on_alarm(int) {
  static const char msg[] = "FAIL watchdog\n";
  ssize_t r = write(STDOUT_FILENO, msg, sizeof msg - 1);
  (void)r;
  _exit(3);
}

WaitStrategy strategy(const std::string& s) {
  if (s == "futex") return WaitStrategy::futex;
  if (s == "spin") return WaitStrategy::busy_spin;
  if (s == "yield") return WaitStrategy::spin_yield;
  return WaitStrategy::hybrid;
}

Kinds kinds(const std::string& s) {
  if (s == "capnp") return Kinds::capnp;
  if (s == "raw") return Kinds::raw;
  return Kinds::mixed;
}

void short_pause(uint64_t ns) {
  timespec ts{time_t(ns / 1'000'000'000), long(ns % 1'000'000'000)};
  nanosleep(&ts, nullptr);
}

int run_pub() {
  Bus bus = Bus::direct({.shm_prefix = arg("prefix", "")});
  const std::string topic = arg("topic", "t");
  const uint32_t producer = uint32_t(num("producer", 0));
  const uint64_t count = num("count", 1000);
  const bool drop = arg("on_full", "retry") == "drop";
  const bool forever = num("forever", 0) != 0;
  const uint64_t progress_at = num("progress_at", 0);
  const uint64_t burst = num("burst", 0);
  const bool ack = num("ack", 0) != 0;
  BlobCodec codec(num("seed", 1), uint32_t(num("max_body", 4096)), kinds(arg("kinds", "mixed")));
  PublisherOptions po;
  po.producer_id = producer + 1;
  po.block_timeout_ns = int64_t(num("block_timeout_ms", 10'000)) * 1'000'000;
  po.wait = strategy(arg("wait", "hybrid"));
  Publisher pub = bus.publisher(topic, po);
  fact("ready", 1);

  Rng rng(num("seed", 1) * 31 + producer);
  uint64_t published = 0, dropped = 0, retries = 0, in_burst = 0;
  uint64_t burst_len = burst ? 1 + rng.next() % burst : 0;
  // `count` messages are published; with on_full=drop the refused ones are
  // skipped (their seq is never seen), so seq may run past count.
  for (uint64_t seq = 1; forever || published < count; ++seq) {
    for (;;) {
      Status s = codec.publish(pub, producer, seq);
      if (s == Status::ok) {
        ++published;
        break;
      }
      if (s != Status::back_pressured) fail(std::string("publish: ") + to_string(s));
      if (drop) {
        ++dropped;
        sched_yield();  // let the slow subscriber run
        break;
      }
      ++retries;  // policy block timed out: try again (counted)
    }
    if (progress_at && published == progress_at) fact("progress", published);
    if (burst && ++in_burst == burst_len) {
      in_burst = 0;
      burst_len = 1 + rng.next() % burst;
      if (ack) {
        // Wait until every subscriber has consumed the burst, so the next burst
        // finds them asleep (or on their way to sleep): a lost wake-up then
        // cannot be rescued by later traffic.
        const shm::RingRefs& r = pub.refs();
        const uint64_t tail = shm::aref(r.data->tail_pos).load(std::memory_order_acquire);
        const uint64_t deadline = shm::monotonic_ns() + 30'000'000'000ull;
        while (shm::min_live_cursor(r, tail) < tail) {
          if (shm::monotonic_ns() > deadline) fail("subscribers did not consume a burst in 30 s");
          sched_yield();
        }
      }
      random_gap(rng, 200'000);
    }
  }
  if (num("end", 1)) {
    Status s;
    while ((s = codec.publish_end(pub, producer, published)) != Status::ok) {
      if (s != Status::back_pressured) fail(std::string("end marker: ") + to_string(s));
      sched_yield();
    }
  }
  const PublishStats& st = pub.stats();
  fact("published", published);
  fact("dropped", dropped);
  fact("retries", retries);
  fact("back_pressured", st.back_pressured);
  fact("blocked_waits", st.blocked_waits);
  fact("fallbacks", st.builder_fallbacks);
  fact("reclaimed", st.reclaimed_cursors);
  fact("ok", 1);
  return 0;
}

// Holds views until the producer is seen at the back-pressure limit: a refused
// claim after we started holding (backpressure_events grows), or a producer
// asleep on the space futex (policy block).
void hold_until_pressure(const shm::RingRefs& r) {
  uint64_t& ev = const_cast<uint64_t&>(r.data->backpressure_events);
  const uint64_t before = shm::aref(ev).load(std::memory_order_acquire);
  const uint64_t deadline = shm::monotonic_ns() + 30'000'000'000ull;
  while (shm::aref(ev).load(std::memory_order_acquire) == before &&
         shm::aref(const_cast<uint64_t&>(r.data->space_waiter_bits)).load(std::memory_order_acquire) == 0) {
    if (shm::monotonic_ns() > deadline) fail("the producer never reached the back-pressure limit");
    short_pause(50'000);
  }
}

struct SubConfig {
  StreamCheck::Options so;
  uint32_t ends = 1;
  uint64_t batch = 64;
  uint64_t hold_every = 0, hold_last = 0;
  uint64_t die_holding = 0;
  uint64_t slow_spin = 0;
  int64_t timeout_ns = 10'000'000'000;
};

void report(const StreamCheck& chk, uint32_t producers) {
  fact("received", chk.total());
  fact("frame_seq_last", chk.last_frame_seq());
  for (uint32_t p = 0; p < producers; ++p) {
    std::string k = "p";  // (not "p" + std::to_string(p): a g++ 12 -Wrestrict false positive)
    k.append(std::to_string(p)).append(".count");
    fact(k.c_str(), chk.count(p));
  }
}

void on_frame(StreamCheck& chk, const View& v, const SubConfig& c) {
  std::string err = chk.on_frame(v);
  if (!err.empty()) fail(err);
  for (uint64_t i = c.slow_spin; i > 0; --i) shm::cpu_relax();
}

// The library Subscriber with the chosen wait strategy.
int run_sub_lib(Bus& bus, const std::string& topic, const BlobCodec& codec, const SubConfig& c) {
  SubscriberOptions o;
  o.wait = strategy(arg("wait", "hybrid"));
  Subscriber sub = bus.subscriber(topic, o);
  StreamCheck chk(codec, c.so);
  fact("ready", 1);
  uint64_t held = 0, n = 0, holds = 0;
  View v;
  while (chk.ends() < c.ends) {
    Status s = sub.poll(v);
    if (s == Status::empty) {
      if (held && !c.die_holding) {  // a subscriber about to die keeps its views
        sub.release_all();
        held = 0;
      }
      s = sub.poll_wait(v, c.timeout_ns);
      if (s == Status::timed_out) {
        const shm::RingRefs& r = sub.refs();
        fail("poll_wait timed out after " + std::to_string(c.timeout_ns / 1'000'000) + " ms with " +
             std::to_string(chk.total()) + " messages received (lost wake-up?); " + "read position " +
             std::to_string(sub.position()) + ", tail " +
             std::to_string(shm::aref(r.data->tail_pos).load(std::memory_order_acquire)) +
             ", commit word there " +
             std::to_string(shm::aref(r.frame_at(sub.position())->commit).load(std::memory_order_acquire)));
      }
    }
    if (s != Status::ok) fail(std::string("poll: ") + to_string(s));
    on_frame(chk, v, c);
    ++held;
    ++n;
    if (c.die_holding && n == c.die_holding) {
      fact("holding", n);
      for (;;) pause();  // killed here by the test, views unreleased
    }
    if (c.hold_every && n % c.hold_every == 1 && n < c.hold_last) {
      hold_until_pressure(sub.refs());
      ++holds;
    }
    if (held >= c.batch && !c.die_holding) {
      sub.release_all();
      held = 0;
    }
  }
  sub.release_all();
  report(chk, c.so.producers);
  fact("holds", holds);
  fact("waits", sub.stats().waits);
  fact("ok", 1);
  return 0;
}

// The ring reader itself, sleeping on the futex with no intermediate wake-ups:
// a lost wake-up is a timeout here, not a 100 ms hiccup.
int run_sub_strict(Bus& bus, const std::string& topic, const BlobCodec& codec, const SubConfig& c) {
  auto m = bus.provider().open(topic, 0, Role::subscriber, 5000);
  shm::RingReader r;
  if (!r.join(m->refs(), uint32_t(getpid()), true)) fail("no free cursor slot");
  StreamCheck chk(codec, c.so);
  fact("ready", 1);
  uint64_t held = 0, sleeps = 0;
  while (chk.ends() < c.ends) {
    shm::FrameView f;
    shm::RingStatus s = r.poll(f);
    if (s == shm::RingStatus::empty) {
      if (held) r.release_all();
      held = 0;
      ++sleeps;
      const uint64_t deadline = shm::monotonic_ns() + uint64_t(c.timeout_ns);
      for (;;) {
        uint64_t now = shm::monotonic_ns();
        if (now >= deadline)
          fail("futex wait timed out with " + std::to_string(chk.total()) +
               " messages received; data present now: " + std::to_string(int(r.has_data())) +
               ", read position " + std::to_string(r.position()) + ", tail " +
               std::to_string(shm::aref(r.refs().data->tail_pos).load(std::memory_order_acquire)) +
               " (lost wake-up)");
        if (r.wait(int64_t(deadline - now))) {
          // Data found only once the wait ran out: the wake-up for it was lost.
          if (shm::monotonic_ns() >= deadline)
            fail("data present only when the futex wait timed out, with " + std::to_string(chk.total()) +
                 " messages received (lost wake-up)");
          break;
        }
      }
      continue;
    }
    if (s != shm::RingStatus::ok) fail("ring poll: corrupt frame");
    on_frame(chk, View(f), c);
    if (++held >= c.batch) {
      r.release_all();
      held = 0;
    }
  }
  r.release_all();
  r.leave();
  report(chk, c.so.producers);
  fact("waits", sleeps);
  fact("ok", 1);
  return 0;
}

int run_sub() {
  Bus bus = Bus::direct({.shm_prefix = arg("prefix", "")});
  const std::string topic = arg("topic", "t");
  BlobCodec codec(num("seed", 1), uint32_t(num("max_body", 4096)), kinds(arg("kinds", "mixed")));
  SubConfig c;
  c.so.producers = uint32_t(num("producers", 1));
  c.so.dense_producer_seq = num("dense", 1) != 0;
  c.so.ordered_producers = num("ordered", 0) != 0;
  c.ends = uint32_t(num("ends", c.so.producers));
  c.batch = num("batch", 64);
  if (c.batch == 0) c.batch = 1;
  c.hold_every = num("hold_every", 0);
  c.hold_last = num("hold_last", 0);
  c.die_holding = num("die_holding", 0);
  c.slow_spin = num("slow_spin", 0);
  c.timeout_ns = int64_t(num("timeout_ms", 10'000)) * 1'000'000;
  if (num("strict", 0)) return run_sub_strict(bus, topic, codec, c);
  return run_sub_lib(bus, topic, codec, c);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: mp_helper pub|sub key=value...\n");
    return 2;
  }
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    size_t eq = a.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "mp_helper: argument '%s' is not key=value\n", argv[i]);
      return 2;
    }
    g_args[a.substr(0, eq)] = a.substr(eq + 1);
  }
  signal(SIGALRM, on_alarm);
  alarm(unsigned(num("watchdog_s", 300)));
  const std::string role = argv[1];
  try {
    if (role == "pub") return run_pub();
    if (role == "sub") return run_sub();
  } catch (const std::exception& e) {
    fail(std::string("exception: ") + e.what());
  }
  std::fprintf(stderr, "mp_helper: unknown role '%s'\n", role.c_str());
  return 2;
}
