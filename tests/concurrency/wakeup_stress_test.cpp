// Wake-ups between threads: subscriber threads that sleep on the futex at once
// wake for every burst of a producer thread with random bursts and gaps. Runs
// under ThreadSanitizer (suite 'sanitize'); prints its seed.
#include <thread>

#include "../multiproc/mp_fixture.hpp"
#include "stress_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

void wakeups(uint64_t count, bool ack, const char* what) {
  const uint64_t seed = test_seed(what);
  BlobCodec codec(seed, 512);
  MpTopic t("wake-st", {.capacity = 1 << 16});
  Bus& bus = t.guard.bus;
  Publisher pub = bus.publisher(t.guard.topic);
  Subscriber lib = bus.subscriber(t.guard.topic, waiting(WaitStrategy::futex));
  Subscriber hybrid = bus.subscriber(t.guard.topic, waiting(WaitStrategy::hybrid));
  auto m = bus.provider().open(t.guard.topic, 0, Role::subscriber, 5000);
  shm::RingReader strict;
  REQUIRE(strict.join(m->refs(), uint32_t(getpid()), true));

  std::atomic<bool> abort{false};
  StressResult r_lib, r_hybrid, r_strict;
  std::string perr;
  const StreamCheck::Options so{.producers = 1};
  std::thread t_lib([&] { r_lib = consume(lib, codec, so, 4, abort); });
  std::thread t_hybrid([&] { r_hybrid = consume(hybrid, codec, so, 16, abort); });
  std::thread t_strict([&] { r_strict = consume_strict(strict, codec, so, abort); });
  std::thread t_pub([&] {
    perr = produce(pub, codec,
                   {.producer = 0, .count = count, .burst = ack ? 8u : 64u, .ack = ack, .seed = seed}, abort);
    if (!perr.empty()) abort.store(true);
  });
  t_pub.join();
  t_lib.join();
  t_hybrid.join();
  t_strict.join();
  strict.leave();
  CHECK(perr == "");
  for (StressResult* r : {&r_lib, &r_hybrid, &r_strict}) {
    CHECK(r->error == "");
    CHECK(r->received == count);
    CHECK(r->last_frame_seq == count + 1);
  }
  CHECK(r_lib.waits > 0);
  CHECK(r_strict.waits > 0);
}

}  // namespace

TEST_CASE("futex-sleeping subscriber threads wake for every acknowledged burst of a producer thread") {
  wakeups(100'000, true, "thread wake-ups, acknowledged bursts");
}

TEST_CASE(
    "futex-sleeping subscriber threads receive every message of a producer thread with random bursts and "
    "gaps") {
  wakeups(100'000, false, "thread wake-ups, free-running bursts");
}
