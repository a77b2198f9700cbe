// Prints C++'s RetryPolicy::backoff_ns (libshmbus) over a grid of policies, attempts and
// random words, and the first words of C++'s jitter generator from seed 42, as the Go
// table in handler_test.go (TestBackoffIsTheCxxFormula). Regenerate after a change
// of the C++ formula:
//   g++ -std=c++20 -O2 -I../../../lib/include -I../../../shm/include -I$BUILD/lib/schema \
//     gen_backoff_table.cpp -L$BUILD/lib -lshmbus -Wl,-rpath,$BUILD/lib -lcapnp -lkj && ./a.out
#include <cstdio>
#include <cinttypes>
#include "shmbus/handler.hpp"
int main() {
  struct P { shmbus::RetryPolicy p; const char* name; };
  P ps[] = {
    {{}, "def"},
    {{.max_attempts = 9, .initial_backoff_ns = 1'500'000, .max_backoff_ns = 250'000'000, .multiplier = 1.7, .jitter = 0.35}, "odd"},
    {{.max_attempts = 9, .initial_backoff_ns = 3, .max_backoff_ns = 1'000'000'000'000, .multiplier = 3.3, .jitter = 1.5}, "wide"},
    {{.max_attempts = 9, .initial_backoff_ns = 1000, .max_backoff_ns = 5000, .multiplier = 0.5, .jitter = -1}, "sub1"},
  };
  uint64_t rnds[] = {0, ~0ull, 1ull << 63, 0x9e3779b97f4a7c15ull, 0x0123456789abcdefull, 0xfedcba9876543210ull};
  uint32_t atts[] = {1, 2, 3, 7, 12, 40, 70};
  for (auto& p : ps)
    for (auto a : atts)
      for (auto r : rnds)
        std::printf("{%s, %u, 0x%016" PRIx64 ", %" PRId64 "},\n", p.name, a, r, p.p.backoff_ns(a, r));
  // C++'s generator (xorshift64*, HandlerRunner::next_rand) from seed 42, first 10.
  uint64_t x = 42;
  for (int i = 0; i < 10; ++i) { x ^= x >> 12; x ^= x << 25; x ^= x >> 27; std::printf("0x%016" PRIx64 ",\n", x * 0x2545F4914F6CDD1DULL); }
}
