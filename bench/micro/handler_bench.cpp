// The handler runtime's added cost per message over a bare subscriber (issue
// "messaging contract": goal < 100 ns at 64 B without retries). One thread: the ring
// is filled while the timer is paused, then drained either by poll+release or by
// HandlerRunner::step with a handler that reads the payload and acks (as the bare
// loop reads it), bare, with the default layers off, and with metrics + timeout.
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "bench_util.hpp"
#include "shmbus/handler.hpp"

using namespace shmbus;
using shmbus::bench::BenchTopic;

namespace {

// Fills the ring with as many `size`-byte messages as fit (the subscriber, tethered,
// holds the producer back: try_claim fails at a full ring).
int64_t refill(Publisher& pub, std::vector<std::byte>& buf, uint64_t& seq, int64_t want) {
  int64_t n = 0;
  for (; n < want; ++n) {
    ClaimView c;
    if (pub.try_claim(uint32_t(buf.size()), c) != Status::ok) break;  // full: never waits
    ++seq;
    std::memcpy(buf.data(), &seq, sizeof seq);
    std::memcpy(c.data, buf.data(), buf.size());
    pub.commit(uint32_t(buf.size()));
  }
  return n;
}

constexpr int64_t kFill = 4096;

void BM_BareSubscriber(benchmark::State& st) {
  const uint32_t size = uint32_t(st.range(0));
  BenchTopic t;
  Subscriber sub = t.bus.subscriber(t.topic);
  Publisher pub = t.bus.publisher(t.topic, {.stamp_frames = false});
  std::vector<std::byte> buf(size, std::byte{0x5a});
  uint64_t seq = 0, sum = 0;
  int64_t left = 0;
  for (auto _ : st) {
    if (left == 0) {
      st.PauseTiming();
      left = refill(pub, buf, seq, kFill);
      st.ResumeTiming();
    }
    View v;
    if (sub.poll(v) != Status::ok) st.SkipWithError("poll failed");
    uint64_t x;
    std::memcpy(&x, v.data(), sizeof x);
    sum += x;
    sub.release(v);
    --left;
  }
  benchmark::DoNotOptimize(sum);
  st.SetItemsProcessed(int64_t(st.iterations()));
}

void run_handler(benchmark::State& st, std::vector<Layer> layers) {
  const uint32_t size = uint32_t(st.range(0));
  BenchTopic t;
  uint64_t sum = 0;
  HandlerOptions o;
  o.layers = std::move(layers);
  HandlerRunner run(
      t.bus, t.topic,
      [&sum](const View& v) {
        uint64_t x;
        std::memcpy(&x, v.data(), sizeof x);
        sum += x;
        return Outcome::ack();
      },
      o);
  Publisher pub = t.bus.publisher(t.topic, {.stamp_frames = false});
  std::vector<std::byte> buf(size, std::byte{0x5a});
  uint64_t seq = 0;
  int64_t left = 0;
  for (auto _ : st) {
    if (left == 0) {
      st.PauseTiming();
      left = refill(pub, buf, seq, kFill);
      st.ResumeTiming();
    }
    if (!run.step(0)) st.SkipWithError("step found no message");
    --left;
  }
  benchmark::DoNotOptimize(sum);
  st.SetItemsProcessed(int64_t(st.iterations()));
}

void BM_HandlerRunner(benchmark::State& st) { run_handler(st, {}); }

HandlerMetrics g_metrics;
void BM_HandlerRunnerMetricsTimeout(benchmark::State& st) {
  run_handler(st, {layers::metrics(g_metrics), layers::timeout(1'000'000'000)});
}

}  // namespace

BENCHMARK(BM_BareSubscriber)->Arg(64)->Arg(1024);
BENCHMARK(BM_HandlerRunner)->Arg(64)->Arg(1024);
BENCHMARK(BM_HandlerRunnerMetricsTimeout)->Arg(64);
