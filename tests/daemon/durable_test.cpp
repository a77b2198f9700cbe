// Durable subscribers (P11 in docs/memory-ordering.md) through a daemon: a named
// subscriber that closes, or is killed, resumes right after the last message it
// released; its parked slot holds a tethered ring until durable_hold_ms, then the
// daemon keeps its position as a record, resumed with a lap check (P9).
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <thread>

#include "daemon_util.hpp"
#include "shmbus/daemon.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

struct Embedded {
  DaemonOptions o;
  std::string dir;
  std::unique_ptr<Daemon> d;
  explicit Embedded(int64_t hold_ms) {
    char tpl[] = "/tmp/shmbus-dur-XXXXXX";
    dir = mkdtemp(tpl);
    chmod(dir.c_str(), 0755);
    static int n = 0;
    o.socket_path = dir + "/shmbusd.sock";
    o.state_dir = dir + "/state";
    o.shm_prefix = "sdt-dur-" + std::to_string(getpid()) + "-" + std::to_string(n++);
    o.log_level = "warn";
    o.durable_hold_ms = hold_ms;
    start();
  }
  void start() {
    d = std::make_unique<Daemon>(o);
    d->start();
  }
  void restart() {
    d->stop();
    d.reset();
    start();
  }
  Bus bus() { return Bus::connect(o.socket_path); }
  ~Embedded() {
    if (d) d->stop();
    d.reset();
    kill_keeper(o.state_dir);  // it keeps the topics' segments after a stop
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

uint64_t counter_of(const View& v) {
  uint64_t c = 0;
  REQUIRE(v.size() >= sizeof c);
  std::memcpy(&c, v.data(), sizeof c);
  return c;
}

void publish(Publisher& pub, uint64_t from, uint64_t to, size_t len = 64) {
  char buf[4096] = {};
  for (uint64_t i = from; i <= to; ++i) {
    std::memcpy(buf, &i, sizeof i);
    REQUIRE(pub.offer(buf, len, i) == Status::ok);
  }
}

// Reads messages until `last`, requiring them to be exactly first..last in order.
void expect_range(Subscriber& sub, uint64_t first, uint64_t last, bool then_empty = true) {
  View v;
  for (uint64_t i = first; i <= last; ++i) {
    REQUIRE(sub.poll_wait(v, 5'000'000'000) == Status::ok);
    REQUIRE(counter_of(v) == i);
    sub.release(v);
  }
  if (then_empty) CHECK(sub.poll(v) == Status::empty);
}

// The durable record of `name` as the daemon describes it.
bool record(Embedded& e, const std::string& topic, const std::string& name, uint64_t& pos, bool& parked) {
  DaemonClient::Options co;
  co.socket_path = e.o.socket_path;
  auto c = DaemonClient::connect(co);
  auto rep = c->call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
  for (auto d : rep.get().getTopic().getDurable())
    if (d.getName() == name) {
      pos = d.getPosition();
      parked = d.getParked();
      return true;
    }
  return false;
}

}  // namespace

TEST_CASE(
    "a durable subscriber that closes resumes after the last message it released, across a daemon restart",
    "[daemon][durable]") {
  Embedded e(60'000);
  {
    Bus bus = e.bus();
    bus.create_topic("dur.a", {.capacity = 65536, .policy = Policy::fail});
    Publisher pub = bus.publisher("dur.a");
    SubscriberOptions so;
    so.name = "audit";
    {
      Subscriber sub = bus.subscriber("dur.a", so);
      CHECK_FALSE(sub.resumed());
      publish(pub, 1, 100);
      View v, at30;
      for (uint64_t i = 1; i <= 40; ++i) {
        REQUIRE(sub.poll(v) == Status::ok);
        REQUIRE(counter_of(v) == i);
        if (i == 30) at30 = v;
      }
      sub.release(at30);  // 31..40 were polled but not released: they come again
    }
    uint64_t pos = 0;
    bool parked = false;
    REQUIRE(record(e, "dur.a", "audit", pos, parked));
    CHECK(parked);
    publish(pub, 101, 200);
    // The parked slot is tethered: the producer cannot run past it.
    char buf[1024] = {};
    Status s = Status::ok;
    for (int i = 0; i < 200 && s == Status::ok; ++i) s = pub.offer(buf, sizeof buf);
    CHECK(s == Status::back_pressured);
  }
  e.restart();  // the parked slot lives in the segment; the record in the state dir
  Bus bus = e.bus();
  SubscriberOptions so;
  so.name = "audit";
  Subscriber sub = bus.subscriber("dur.a", so);
  CHECK(sub.resumed());
  expect_range(sub, 31, 200, false);
  View v;
  // Then the 1 KiB messages that filled the ring (their counter bytes are zero).
  size_t big = 0;
  while (sub.poll(v) == Status::ok) {
    CHECK(v.size() == 1024);
    ++big;
  }
  CHECK(big > 0);
}

TEST_CASE("a durable subscriber killed with SIGKILL resumes where it released; a live name is refused",
          "[daemon][durable]") {
  Embedded e(60'000);
  Bus bus = e.bus();
  bus.create_topic("dur.k", {.capacity = 65536, .policy = Policy::fail});
  Publisher pub = bus.publisher("dur.k");
  Child c({helper_path(), "sub-durable", e.o.socket_path, "dur.k", "ledger", "25"});
  // The helper joins at the tail: publish only once it is there (its record says so).
  uint64_t pos = 0;
  bool parked = false;
  const uint64_t deadline = now_ns() + 10'000'000'000ull;
  while (!record(e, "dur.k", "ledger", pos, parked)) {
    REQUIRE(now_ns() < deadline);  // watchdog
    std::this_thread::yield();
  }
  SubscriberOptions so;
  so.name = "ledger";
  REQUIRE_THROWS_AS(bus.subscriber("dur.k", so), Error);  // in use by the helper
  publish(pub, 1, 60);
  REQUIRE(c.read_char(10000) == 'K');
  c.kill_now();
  Subscriber sub = bus.subscriber("dur.k", so);
  CHECK(sub.resumed());
  expect_range(sub, 26, 60);
}

TEST_CASE(
    "a parked slot holds the producer until durable_hold_ms, then its record resumes exactly or reports the "
    "lap",
    "[daemon][durable]") {
  Embedded e(200);
  Bus bus = e.bus();
  bus.create_topic("dur.x", {.capacity = 16384, .policy = Policy::fail});
  Publisher pub = bus.publisher("dur.x");
  SubscriberOptions so;
  so.name = "slow";
  uint64_t pos = 0;
  bool parked = true;
  auto wait_expired = [&] {
    const uint64_t deadline = now_ns() + 10'000'000'000ull;  // watchdog
    for (;;) {
      REQUIRE(record(e, "dur.x", "slow", pos, parked));
      if (!parked) return;
      REQUIRE(now_ns() < deadline);
      std::this_thread::yield();
    }
  };
  {
    Subscriber a = bus.subscriber("dur.x", so);
    SubscriberOptions so2;
    so2.name = "gone";
    Subscriber b = bus.subscriber("dur.x", so2);
    publish(pub, 1, 10);
    View v;
    for (int i = 0; i < 10; ++i) {
      REQUIRE(a.poll(v) == Status::ok);
      a.release(v);
    }
    b.forget();  // an explicit goodbye: "gone" is not parked, holds nothing
  }
  publish(pub, 11, 20);
  wait_expired();
  // Nothing overwritten: the record resumes exactly after message 10.
  {
    Subscriber a = bus.subscriber("dur.x", so);
    CHECK_FALSE(a.resumed());
    expect_range(a, 11, 20);
  }  // parked again after 20
  // Held: the ring fills up to the parked slot.
  char buf[512] = {};
  Status s = Status::ok;
  uint64_t n = 20;
  while (s == Status::ok) {
    ++n;
    std::memcpy(buf, &n, sizeof n);
    s = pub.offer(buf, sizeof buf, n);
  }
  REQUIRE(s == Status::back_pressured);
  --n;
  // Expired after ~200 ms: the producer proceeds and overwrites message 21.
  const uint64_t deadline = now_ns() + 10'000'000'000ull;
  const uint64_t held_from = now_ns();
  for (;;) {
    std::memcpy(buf, &(++n), sizeof n);
    if (pub.offer(buf, sizeof buf, n) == Status::ok) break;
    --n;
    REQUIRE(now_ns() < deadline);  // watchdog
    std::this_thread::yield();
  }
  CHECK(now_ns() - held_from >= 100'000'000ull);
  wait_expired();
  Subscriber a = bus.subscriber("dur.x", so);
  CHECK_FALSE(a.resumed());
  View v;
  REQUIRE(a.poll(v) == Status::lapped);  // told, never handed overwritten bytes
  CHECK(a.stats().lapped == 1);
  ++n;
  std::memcpy(buf, &n, sizeof n);
  REQUIRE(pub.offer(buf, sizeof buf, n) == Status::ok);
  REQUIRE(a.poll_wait(v, 5'000'000'000) == Status::ok);
  CHECK(counter_of(v) == n);
}

TEST_CASE("a publisher whose root type differs from the topic's schema is refused with a clear error",
          "[daemon][schema]") {
  Embedded e(1000);
  Bus bus = e.bus();
  bus.create_topic("sch.t", {.capacity = 8192, .schema_id = 0xabcdef0123456789ull});
  PublisherOptions po;
  po.schema_id = 0x1111;
  try {
    Publisher p = bus.publisher("sch.t", po);
    FAIL("an incompatible publisher was accepted");
  } catch (const Error& err) {
    CHECK(err.code() == ErrorCode::incompatible);
    CHECK(std::string(err.what()).find("abcdef0123456789") != std::string::npos);
  }
  po.schema_id = 0xabcdef0123456789ull;
  Publisher ok = bus.publisher("sch.t", po);  // the same type, and 0 (unsaid), are fine
  CHECK(ok.offer("x", 1) == Status::ok);
}

// Closing while shmbusd is down: the close's courtesy calls (producer release, cursor
// leave) try the socket once and give up, instead of retrying for the reconnect
// window (10 s per publisher or subscriber before). A daemon that comes back finds
// the connection gone and frees them itself.
TEST_CASE("a publisher and a subscriber closed while shmbusd is down return at once", "[daemon][durable]") {
  Embedded e(10'000);
  Bus b = e.bus();
  b.create_topic("dur.down", {.capacity = 1 << 16});
  auto pub = std::make_unique<Publisher>(b.publisher("dur.down"));
  auto sub = std::make_unique<Subscriber>(b.subscriber("dur.down", {.name = "down"}));
  const uint64_t x = 7;
  REQUIRE(pub->offer(&x, sizeof x) == Status::ok);
  e.d->stop();
  const auto t0 = std::chrono::steady_clock::now();
  pub.reset();
  sub.reset();
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  INFO("closing took " << ms << " ms");
  CHECK(ms < 2000);  // the reconnect window is 10 000 ms: a close that waited it fails here
  e.start();
  // The same bus reconnects and first tells the new daemon what was closed meanwhile:
  // the partition's producer entry is free (without it: "already has a publisher in
  // this process", as long as this process lives) and the durable name is parked.
  Publisher again = b.publisher("dur.down");
  CHECK(again.offer(&x, sizeof x) == Status::ok);
  Subscriber back = b.subscriber("dur.down", {.name = "down"});
}
