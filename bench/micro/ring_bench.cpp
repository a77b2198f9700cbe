// Micro-benchmarks of the raw ring data path, one thread, no Cap'n Proto:
// claim+commit (zero copy), offer (copy), offer_batch, poll+release, poll_batch.
// Each figure is per message; items/s and bytes/s (payload bytes) are reported.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "bench_util.hpp"

using namespace shmbus;
using shmbus::bench::BenchTopic;

namespace {

void set_counters(benchmark::State& st, int64_t messages, int64_t size) {
  st.SetItemsProcessed(messages);
  st.SetBytesProcessed(messages * size);
}

// Producer alone (no subscriber: nothing holds it back). The payload's first 8
// bytes carry the sequence, as on every path of the e2e harness.
void BM_ClaimCommit(benchmark::State& st) {
  const uint32_t size = uint32_t(st.range(0));
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  uint64_t seq = 0;
  for (auto _ : st) {
    ClaimView c;
    if (pub.claim(size, c) != Status::ok) st.SkipWithError("claim failed");
    std::memcpy(c.data, &++seq, sizeof(seq));
    pub.commit(size);
  }
  set_counters(st, int64_t(st.iterations()), size);
}
BENCHMARK(BM_ClaimCommit) SHMBUS_BENCH_SIZES;

// Same without the per-frame CLOCK_MONOTONIC read (PublisherOptions::stamp_frames).
void BM_ClaimCommitNoStamp(benchmark::State& st) {
  const uint32_t size = uint32_t(st.range(0));
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic, {.stamp_frames = false});
  uint64_t seq = 0;
  for (auto _ : st) {
    ClaimView c;
    if (pub.claim(size, c) != Status::ok) st.SkipWithError("claim failed");
    std::memcpy(c.data, &++seq, sizeof(seq));
    pub.commit(size);
  }
  set_counters(st, int64_t(st.iterations()), size);
}
BENCHMARK(BM_ClaimCommitNoStamp) SHMBUS_BENCH_SIZES;

// Copy path: claim + memcpy of the whole payload + commit.
void BM_Offer(benchmark::State& st) {
  const uint32_t size = uint32_t(st.range(0));
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  std::vector<std::byte> buf(size, std::byte{0x5a});
  uint64_t seq = 0;
  for (auto _ : st) {
    ++seq;
    std::memcpy(buf.data(), &seq, sizeof(seq));
    pub.offer(buf.data(), size);
  }
  set_counters(st, int64_t(st.iterations()), size);
}
BENCHMARK(BM_Offer) SHMBUS_BENCH_SIZES;

// Copy path, 32 messages per call: one wake-up check per batch.
void BM_OfferBatch32(benchmark::State& st) {
  const uint32_t size = uint32_t(st.range(0));
  constexpr size_t kBatch = 32;
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  std::vector<std::vector<std::byte>> bufs(kBatch, std::vector<std::byte>(size, std::byte{0x5a}));
  std::vector<std::span<const std::byte>> spans;
  for (auto& b : bufs) spans.emplace_back(b.data(), b.size());
  uint64_t seq = 0;
  for (auto _ : st) {
    for (auto& b : bufs) {
      ++seq;
      std::memcpy(b.data(), &seq, sizeof(seq));
    }
    if (pub.offer_batch(spans) != kBatch) st.SkipWithError("offer_batch failed");
  }
  set_counters(st, int64_t(st.iterations() * kBatch), size);
}
BENCHMARK(BM_OfferBatch32) SHMBUS_BENCH_SIZES;

// Subscriber side. Each iteration fills the ring with a batch (timer paused),
// then reads the batch: poll, read the sequence in the payload, release.
size_t batch_for(uint32_t size) {
  size_t frame = shm::align_frame(shm::kFrameHeaderSize + size);
  return std::min<size_t>(512, bench::kRingBytes / 2 / frame);
}

void fill(Publisher& pub, uint32_t size, size_t n, uint64_t& seq) {
  for (size_t i = 0; i < n; ++i) {
    ClaimView c;
    pub.claim(size, c);
    ++seq;
    std::memcpy(c.data, &seq, sizeof(seq));
    pub.commit(size);
  }
}

void BM_PollRelease(benchmark::State& st) {
  const uint32_t size = uint32_t(st.range(0));
  const size_t batch = batch_for(size);
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  Subscriber sub = t.bus.subscriber(t.topic);
  uint64_t wseq = 0, rseq = 0;
  for (auto _ : st) {
    st.PauseTiming();
    fill(pub, size, batch, wseq);
    st.ResumeTiming();
    for (size_t i = 0; i < batch; ++i) {
      View v;
      if (sub.poll(v) != Status::ok) st.SkipWithError("poll failed");
      uint64_t s;
      std::memcpy(&s, v.data(), sizeof(s));
      if (s != ++rseq) st.SkipWithError("sequence gap");
      sub.release(v);
    }
  }
  set_counters(st, int64_t(st.iterations() * batch), size);
}
BENCHMARK(BM_PollRelease) SHMBUS_BENCH_SIZES;

// Same, but poll_batch: one cursor store per batch instead of one per message.
void BM_PollBatch(benchmark::State& st) {
  const uint32_t size = uint32_t(st.range(0));
  const size_t batch = batch_for(size);
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  Subscriber sub = t.bus.subscriber(t.topic);
  uint64_t wseq = 0, rseq = 0;
  for (auto _ : st) {
    st.PauseTiming();
    fill(pub, size, batch, wseq);
    st.ResumeTiming();
    bool ok = true;
    size_t n = sub.poll_batch(batch, [&](const View& v) {
      uint64_t s;
      std::memcpy(&s, v.data(), sizeof(s));
      ok &= (s == ++rseq);
    });
    if (n != batch || !ok) st.SkipWithError("poll_batch short or out of order");
  }
  set_counters(st, int64_t(st.iterations() * batch), size);
}
BENCHMARK(BM_PollBatch) SHMBUS_BENCH_SIZES;

}  // namespace
