// Back-pressure between processes: a deliberately slow subscriber holds views
// until it has seen the producer at the limit, again and again. Under `block`
// the producer waits and nothing is overwritten; under `fail` the producer is
// refused (and skips those messages) and everything delivered is intact.
#include "mp_fixture.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

constexpr uint32_t kMaxBody = 1024;
constexpr uint64_t kCapacity = 64 << 10;
// A 64 KiB ring holds fewer than 800 frames (the smallest is 88 bytes): holding
// stops 2000 messages before the end, so the producer always has enough left to
// fill the ring while a view is held.
constexpr uint64_t kMargin = 2000;

struct Run {
  Child fast, slow, pub;
};

void run(Run& r, Policy policy, uint64_t count, const char* what) {
  const uint64_t seed = test_seed(what);
  MpTopic t("bp", {.capacity = kCapacity, .policy = policy});
  const bool fail = policy == Policy::fail;
  const std::string dense = fail ? "dense=0" : "dense=1";
  start_ready(r.fast, t.args("sub", seed, kMaxBody, {"producers=1", "batch=8", dense, "watchdog_s=300"}));
  start_ready(r.slow,
              t.args("sub", seed, kMaxBody,
                     {"producers=1", "batch=64", dense, "hold_every=500",
                      "hold_last=" + std::to_string(count - kMargin), "slow_spin=3000", "watchdog_s=300"}));
  r.pub.start(t.args("pub", seed, kMaxBody,
                     {"count=" + std::to_string(count), fail ? "on_full=drop" : "on_full=retry",
                      "block_timeout_ms=20000", "watchdog_s=300"}));
  require_ok(r.pub, 300'000);
  require_ok(r.slow, 60'000);
  require_ok(r.fast, 60'000);
  CHECK(r.pub.num("published") == count);
  // The slow subscriber held views until the producer was at the limit, each time.
  CHECK(r.slow.num("holds") == (count - kMargin - 1) / 500 + 1);
  for (Child* s : {&r.fast, &r.slow}) {
    CHECK(s->num("received") == count);
    CHECK(s->num("p0.count") == count);
  }
}

}  // namespace

TEST_CASE(
    "policy block holds the producer behind a slow subscriber process and never overwrites a held view") {
  Run r;
  run(r, Policy::block, 30'000, "back-pressure block");
  CHECK(r.pub.num("blocked_waits") > 0);
  CHECK(r.pub.num("back_pressured") == 0);  // every wait ended with space, none timed out
  CHECK(r.pub.num("dropped") == 0);
  CHECK(r.pub.num("retries") == 0);
  // Nothing skipped: the partition sequence is dense (end marker included).
  CHECK(r.slow.num("frame_seq_last") == 30'001);
  CHECK(r.fast.num("frame_seq_last") == 30'001);
}

TEST_CASE("policy fail reports back-pressure to the producer process and what was delivered is intact") {
  Run r;
  run(r, Policy::fail, 30'000, "back-pressure fail");
  CHECK(r.pub.num("dropped") > 0);
  CHECK(r.pub.num("back_pressured") >= r.pub.num("dropped"));
  CHECK(r.pub.num("blocked_waits") == 0);         // fail never waits
  CHECK(r.slow.num("frame_seq_last") == 30'001);  // refused claims take no sequence
}
