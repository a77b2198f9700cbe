// Producer and subscriber threads hammering small rings (many laps, constant
// back-pressure, wrap padding): single producer to three subscribers, and two
// producers to two subscribers on a multi-producer partition. Every frame is
// checked (body, checksum, per-producer order, dense partition sequence). Runs
// under ThreadSanitizer (suite 'sanitize'); prints its seed.
#include <thread>

#include "../multiproc/mp_fixture.hpp"
#include "stress_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

TEST_CASE("one producer thread and three subscriber threads agree on every message of a small ring") {
  const uint64_t seed = test_seed("thread fan-out");
  const uint64_t count = 60'000;
  BlobCodec codec(seed, 2048);
  MpTopic t("fan-st", {.capacity = 1 << 14});
  Bus& bus = t.guard.bus;
  Publisher pub = bus.publisher(t.guard.topic);
  WaitStrategy ws[3] = {WaitStrategy::hybrid, WaitStrategy::futex, WaitStrategy::spin_yield};
  uint64_t batches[3] = {1, 7, 64};
  std::vector<Subscriber> subs;
  for (auto w : ws) subs.push_back(bus.subscriber(t.guard.topic, waiting(w)));
  std::atomic<bool> abort{false};
  StressResult res[3];
  std::string perr;
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i)
    ts.emplace_back([&, i] { res[i] = consume(subs[i], codec, {.producers = 1}, batches[i], abort); });
  ts.emplace_back([&] {
    perr = produce(pub, codec, {.producer = 0, .count = count, .seed = seed}, abort);
    if (!perr.empty()) abort.store(true);
  });
  for (auto& th : ts) th.join();
  CHECK(perr == "");
  for (auto& r : res) {
    CHECK(r.error == "");
    CHECK(r.received == count);
    CHECK(r.last_frame_seq == count + 1);
  }
  CHECK(pub.stats().blocked_waits > 0);  // a 16 KiB ring: the producer waited for the readers
}

TEST_CASE(
    "two producer threads and two subscriber threads share a multi-producer ring without loss or "
    "reordering") {
  const uint64_t seed = test_seed("thread multi-producer");
  const uint64_t each = 40'000;
  BlobCodec codec(seed, 1024);
  MpTopic t("mp-st", {.capacity = 1 << 14, .multi_producer = true});
  Bus& bus = t.guard.bus;
  std::vector<Subscriber> subs;
  for (int i = 0; i < 2; ++i) subs.push_back(bus.subscriber(t.guard.topic));
  std::vector<Publisher> pubs;
  for (uint32_t p = 0; p < 2; ++p) pubs.push_back(bus.publisher(t.guard.topic, {.producer_id = p + 1}));
  std::atomic<bool> abort{false};
  StressResult res[2];
  std::string perr[2];
  std::vector<std::thread> ts;
  for (int i = 0; i < 2; ++i)
    ts.emplace_back([&, i] { res[i] = consume(subs[i], codec, {.producers = 2}, i ? 32 : 1, abort); });
  for (uint32_t p = 0; p < 2; ++p)
    ts.emplace_back([&, p] {
      perr[p] = produce(pubs[p], codec, {.producer = p, .count = each, .seed = seed}, abort);
      if (!perr[p].empty()) abort.store(true);
    });
  for (auto& th : ts) th.join();
  CHECK(perr[0] == "");
  CHECK(perr[1] == "");
  for (auto& r : res) {
    CHECK(r.error == "");
    CHECK(r.received == 2 * each);
    REQUIRE(r.per_producer.size() == 2);
    CHECK(r.per_producer[0] == each);
    CHECK(r.per_producer[1] == each);
    CHECK(r.last_frame_seq == 2 * each + 2);
  }
}
