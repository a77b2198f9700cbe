// Micro-benchmarks of Cap'n Proto over the ring, one thread:
//  * build in place (MessageClaim: the builder's first segment is ring memory)
//    vs build then copy (MallocMessageBuilder + publish_copy);
//  * checked read (shmbus::MessageReader = FlatArrayMessageReader with limits)
//    vs unchecked read (capnp::readMessageUnchecked: no bounds checks, only for
//    bytes you trust);
//  * a whole publish+read cycle at 64 B, Cap'n Proto Quote vs a raw 64 B struct
//    (the "<= 1.5x the raw-bytes path" target, CPU cost only).
// Quote is exactly 64 B serialized (8 B table + 8 B root pointer + 48 B data).
// Blob(size) carries a Data body of `size` bytes; bytes/s counts the body.
#include <benchmark/benchmark.h>

#include <capnp/message.h>

#include <cstring>
#include <vector>

#include "bench_util.hpp"
#include "market.capnp.h"
#include "testmsg.capnp.h"

using namespace shmbus;
using shmbus::bench::BenchTopic;
using schema::Blob;
using schema::Quote;

namespace {

void fill_quote(Quote::Builder q, uint64_t seq) {
  q.setInstrumentId(uint32_t(seq % 500));
  q.setBidPx(int64_t(10'000'000'000 + (seq % 1000)));
  q.setAskPx(int64_t(10'000'100'000 + (seq % 1000)));
  q.setBidQty(100);
  q.setAskQty(200);
  q.setExchangeTsNs(seq * 3);
  q.setSeq(seq);
}

uint64_t read_quote(Quote::Reader q) {
  return q.getSeq() + q.getInstrumentId() + uint64_t(q.getBidPx()) + uint64_t(q.getAskPx()) + q.getBidQty() +
         q.getAskQty() + q.getExchangeTsNs();
}

// The same seven fields as a plain struct: the raw-bytes path.
struct RawQuote {
  uint64_t seq;
  uint32_t instrument_id;
  uint32_t bid_qty;
  int64_t bid_px;
  int64_t ask_px;
  uint32_t ask_qty;
  uint32_t pad;
  uint64_t exchange_ts_ns;
  uint64_t pad2[2];
};
static_assert(sizeof(RawQuote) == 64);

// Serialized size of a Blob with an n-byte body (table + root ptr + 4 data words + 1 ptr + body).
constexpr uint32_t blob_bytes(uint32_t n) { return 8 + 8 + 32 + 8 + ((n + 7) & ~7u); }

void BM_BuildInPlace_Quote(benchmark::State& st) {
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  uint64_t seq = 0;
  for (auto _ : st) {
    MessageClaim m(pub, 64);
    fill_quote(m.init_root<Quote>(), ++seq);
    if (m.commit_as<Quote>(seq) != Status::ok || m.fell_back()) st.SkipWithError("commit");
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * 64);
}
BENCHMARK(BM_BuildInPlace_Quote);

void BM_BuildThenCopy_Quote(benchmark::State& st) {
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  uint64_t seq = 0;
  for (auto _ : st) {
    capnp::MallocMessageBuilder b;
    fill_quote(b.initRoot<Quote>(), ++seq);
    if (publish_copy(pub, b, seq, capnp::typeId<Quote>()) != Status::ok) st.SkipWithError("copy");
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * 64);
}
BENCHMARK(BM_BuildThenCopy_Quote);

void BM_BuildInPlace_Blob(benchmark::State& st) {
  const uint32_t n = uint32_t(st.range(0));
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  std::vector<capnp::byte> body(n, 0x5a);
  uint64_t seq = 0;
  for (auto _ : st) {
    MessageClaim m(pub, blob_bytes(n));
    auto b = m.init_root<Blob>();
    b.setSeq(++seq);
    std::memcpy(b.initBody(n).begin(), body.data(), n);
    if (m.commit_as<Blob>(seq) != Status::ok || m.fell_back()) st.SkipWithError("commit");
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * n);
}
BENCHMARK(BM_BuildInPlace_Blob) SHMBUS_BENCH_SIZES;

void BM_BuildThenCopy_Blob(benchmark::State& st) {
  const uint32_t n = uint32_t(st.range(0));
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  std::vector<capnp::byte> body(n, 0x5a);
  uint64_t seq = 0;
  for (auto _ : st) {
    capnp::MallocMessageBuilder mb;
    auto b = mb.initRoot<Blob>();
    b.setSeq(++seq);
    std::memcpy(b.initBody(n).begin(), body.data(), n);
    if (publish_copy(pub, mb, seq, capnp::typeId<Blob>()) != Status::ok) st.SkipWithError("copy");
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * n);
}
BENCHMARK(BM_BuildThenCopy_Blob) SHMBUS_BENCH_SIZES;

// Readers: one message published and polled once; the view is read repeatedly
// (hot cache: this is the reader's CPU cost, not the cache-line transfer).
template <bool Checked>
void BM_Read_Quote(benchmark::State& st) {
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  Subscriber sub = t.bus.subscriber(t.topic);
  {
    MessageClaim m(pub, 64);
    fill_quote(m.init_root<Quote>(), 1);
    m.commit_as<Quote>(1);
  }
  View v;
  if (sub.poll(v) != Status::ok) st.SkipWithError("poll");
  for (auto _ : st) {
    if constexpr (Checked) {
      MessageReader r(v);
      benchmark::DoNotOptimize(read_quote(r.root<Quote>()));
    } else {
      auto q = capnp::readMessageUnchecked<Quote>(reinterpret_cast<const capnp::word*>(v.data() + 8));
      benchmark::DoNotOptimize(read_quote(q));
    }
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * v.size());
}
BENCHMARK(BM_Read_Quote<true>)->Name("BM_ReadChecked_Quote");
BENCHMARK(BM_Read_Quote<false>)->Name("BM_ReadUnchecked_Quote");

template <bool Checked>
void BM_Read_Blob(benchmark::State& st) {
  const uint32_t n = uint32_t(st.range(0));
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  Subscriber sub = t.bus.subscriber(t.topic);
  {
    MessageClaim m(pub, blob_bytes(n));
    auto b = m.init_root<Blob>();
    b.setSeq(1);
    std::memset(b.initBody(n).begin(), 0x5a, n);
    m.commit_as<Blob>(1);
  }
  View v;
  if (sub.poll(v) != Status::ok) st.SkipWithError("poll");
  for (auto _ : st) {
    // Touch: the sequence, the body's size and its first and last bytes.
    if constexpr (Checked) {
      MessageReader r(v);
      auto b = r.root<Blob>();
      auto body = b.getBody();
      benchmark::DoNotOptimize(b.getSeq() + body.size() + body[0] + body[body.size() - 1]);
    } else {
      auto b = capnp::readMessageUnchecked<Blob>(reinterpret_cast<const capnp::word*>(v.data() + 8));
      auto body = b.getBody();
      benchmark::DoNotOptimize(b.getSeq() + body.size() + body[0] + body[body.size() - 1]);
    }
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * n);
}
BENCHMARK(BM_Read_Blob<true>)->Name("BM_ReadChecked_Blob") SHMBUS_BENCH_SIZES;
BENCHMARK(BM_Read_Blob<false>)->Name("BM_ReadUnchecked_Blob") SHMBUS_BENCH_SIZES;

// Whole cycle in one thread at 64 B: publish one message, poll it, read all seven
// fields, release. Raw struct vs Cap'n Proto (checked and unchecked reader).
void BM_Cycle_Raw64(benchmark::State& st) {
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  Subscriber sub = t.bus.subscriber(t.topic);
  uint64_t seq = 0;
  for (auto _ : st) {
    ClaimView c;
    pub.claim(sizeof(RawQuote), c);
    auto* q = reinterpret_cast<RawQuote*>(c.data);
    ++seq;
    q->seq = seq;
    q->instrument_id = uint32_t(seq % 500);
    q->bid_px = int64_t(10'000'000'000 + (seq % 1000));
    q->ask_px = int64_t(10'000'100'000 + (seq % 1000));
    q->bid_qty = 100;
    q->ask_qty = 200;
    q->exchange_ts_ns = seq * 3;
    pub.commit(sizeof(RawQuote), seq);
    View v;
    sub.poll(v);
    const auto* r = reinterpret_cast<const RawQuote*>(v.data());
    benchmark::DoNotOptimize(r->seq + r->instrument_id + uint64_t(r->bid_px) + uint64_t(r->ask_px) +
                             r->bid_qty + r->ask_qty + r->exchange_ts_ns);
    sub.release(v);
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * 64);
}
BENCHMARK(BM_Cycle_Raw64);

template <bool Checked>
void BM_Cycle_Quote(benchmark::State& st) {
  BenchTopic t;
  Publisher pub = t.bus.publisher(t.topic);
  Subscriber sub = t.bus.subscriber(t.topic);
  uint64_t seq = 0;
  for (auto _ : st) {
    {
      MessageClaim m(pub, 64);
      fill_quote(m.init_root<Quote>(), ++seq);
      m.commit_as<Quote>(seq);
    }
    View v;
    sub.poll(v);
    if constexpr (Checked) {
      MessageReader r(v);
      benchmark::DoNotOptimize(read_quote(r.root<Quote>()));
    } else {
      auto q = capnp::readMessageUnchecked<Quote>(reinterpret_cast<const capnp::word*>(v.data() + 8));
      benchmark::DoNotOptimize(read_quote(q));
    }
    sub.release(v);
  }
  st.SetItemsProcessed(int64_t(st.iterations()));
  st.SetBytesProcessed(int64_t(st.iterations()) * 64);
}
BENCHMARK(BM_Cycle_Quote<true>)->Name("BM_Cycle_QuoteChecked");
BENCHMARK(BM_Cycle_Quote<false>)->Name("BM_Cycle_QuoteUnchecked");

}  // namespace
