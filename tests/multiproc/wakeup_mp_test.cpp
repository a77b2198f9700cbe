// Wake-ups between processes: subscribers that sleep on the futex at once
// (WaitStrategy::futex, and the bare ring reader) wake for every burst of a
// producer that publishes in random bursts with random gaps.
//
// In the strict run the producer waits, after each burst, until every cursor has
// consumed it: the next burst then meets subscribers asleep or on their way to
// sleep, and a lost wake-up cannot be rescued by later traffic (bursts are short,
// 1-8 messages, so that the lost one is often the last of its burst). A subscriber
// whose wait runs out (10 s) while data is there fails the test.
#include "mp_fixture.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

void bursty(uint64_t count, bool ack, const char* what) {
  const uint64_t seed = test_seed(what);
  const uint32_t max_body = 256;
  MpTopic t("wake", {.capacity = 1 << 18});
  Child lib, strict;
  start_ready(lib, t.args("sub", seed, max_body,
                          {"producers=1", "wait=futex", "batch=4", "timeout_ms=10000", "watchdog_s=500"}));
  start_ready(strict, t.args("sub", seed, max_body,
                             {"producers=1", "strict=1", "batch=1", "timeout_ms=10000", "watchdog_s=500"}));
  Child pub(t.args("pub", seed, max_body,
                   {"count=" + std::to_string(count), ack ? "burst=8" : "burst=64", ack ? "ack=1" : "ack=0",
                    "watchdog_s=500"}));
  require_ok(pub, 500'000);
  CHECK(pub.num("published") == count);
  for (Child* s : {&lib, &strict}) {
    require_ok(*s, 30'000);
    CHECK(s->num("received") == count);
    CHECK(s->num("frame_seq_last") == count + 1);
    CHECK(s->num("waits") > 0);  // it did go to sleep
  }
}

}  // namespace

TEST_CASE(
    "futex-sleeping subscriber processes wake for every burst when the producer waits for them between "
    "bursts") {
  bursty(200'000, true, "wake-ups, acknowledged bursts");
}

TEST_CASE(
    "futex-sleeping subscriber processes receive every message of a producer with random bursts and gaps") {
  bursty(200'000, false, "wake-ups, free-running bursts");
}

TEST_CASE("futex wake-ups hold over a million messages in random acknowledged bursts", "[.long]") {
  bursty(1'000'000, true, "wake-ups, long");
}
