// Many messages between real processes over real /dev/shm segments: every
// subscriber process gets every message exactly once, in order, uncorrupted.
#include "mp_fixture.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

// 1 producer -> 3 subscriber processes. The subscribers use the hybrid wait (four
// processes share two cores) and release in different batch sizes, so the
// producer is held back by each of them in turn.
void one_to_three(uint64_t count, uint64_t capacity, int timeout_s) {
  const uint64_t seed = test_seed("one producer to three subscribers");
  const uint32_t max_body = 4096;
  MpTopic t("fanout", {.capacity = capacity});
  const std::string timeout = "watchdog_s=" + std::to_string(timeout_s);
  Child subs[3];
  const char* batches[3] = {"batch=1", "batch=32", "batch=512"};
  for (int i = 0; i < 3; ++i)
    start_ready(subs[i], t.args("sub", seed, max_body, {"producers=1", "wait=hybrid", batches[i], timeout}));
  Child pub(t.args("pub", seed, max_body, {"count=" + std::to_string(count), "producer=0", timeout}));
  require_ok(pub, timeout_s * 1000);
  CHECK(pub.num("published") == count);
  CHECK(pub.num("fallbacks") == 0);
  CHECK(pub.num("back_pressured") == 0);
  for (auto& s : subs) {
    require_ok(s, 60'000);
    CHECK(s.num("received") == count);
    CHECK(s.num("p0.count") == count);
    CHECK(s.num("frame_seq_last") == count + 1);  // the end marker is the last frame
  }
}

// 2 producer processes -> 2 subscriber processes on a multi-producer partition.
void two_to_two(uint64_t each, int timeout_s) {
  const uint64_t seed = test_seed("two producers to two subscribers");
  const uint32_t max_body = 2048;
  MpTopic t("mpmc", {.capacity = 1 << 20, .multi_producer = true});
  const std::string timeout = "watchdog_s=" + std::to_string(timeout_s);
  Child subs[2];
  for (auto& s : subs)
    start_ready(s, t.args("sub", seed, max_body, {"producers=2", "wait=hybrid", "batch=16", timeout}));
  Child pubs[2];
  for (int p = 0; p < 2; ++p)
    pubs[p].start(t.args("pub", seed, max_body,
                         {"count=" + std::to_string(each), "producer=" + std::to_string(p), timeout}));
  for (auto& p : pubs) {
    require_ok(p, timeout_s * 1000);
    CHECK(p.num("published") == each);
    CHECK(p.num("fallbacks") == 0);
  }
  for (auto& s : subs) {
    require_ok(s, 60'000);
    CHECK(s.num("received") == 2 * each);
    CHECK(s.num("p0.count") == each);
    CHECK(s.num("p1.count") == each);
    // Dense partition sequence: 2*each messages and 2 end markers, no gap.
    CHECK(s.num("frame_seq_last") == 2 * each + 2);
  }
}

}  // namespace

TEST_CASE("one producer process reaches three subscriber processes with every message intact and in order") {
  one_to_three(200'000, 1 << 20, 240);
}

TEST_CASE("five million random-size messages reach three subscriber processes exactly once and in order",
          "[.long]") {
  one_to_three(5'000'000, 4 << 20, 900);
}

TEST_CASE(
    "two producer processes on a multi-producer partition reach two subscriber processes with exact counts "
    "and per-producer order") {
  two_to_two(100'000, 240);
}

TEST_CASE("two producer processes interleave a million messages without loss or reordering", "[.long]") {
  two_to_two(1'000'000, 900);
}
