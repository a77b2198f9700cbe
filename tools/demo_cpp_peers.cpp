// shmbus-demo-cpp: C++ stand-ins for the Go feed and the Rust strategy of the demo
// pipeline, for `tools/demo --cpp-only` (no Go or Rust toolchain needed). Same
// flags, same messages and same rules as ffi/go/cmd/mdfeed and ffi/rust/shmbus-demo:
//
//   shmbus-demo-cpp feed (--socket PATH | --prefix P) --paced N --rate R --burst M
//                        --signal-every S [--topic md.quotes]
//   shmbus-demo-cpp strategy (--socket PATH | --prefix P) --quotes N
//                        [--in md.quotes] [--out orders.new]
//
// Quote i (seq from 1) has an imbalanced book (bidQty >= 4 x askQty) exactly when
// i % S == 0; the strategy buys at the ask on those, carrying the quote's publish
// time (its frame's commit timestamp) in Order.quoteTsNs.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>

#include "market.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;

namespace {

constexpr int64_t kPx0 = 10'000'000'000;

Bus open_bus(const std::string& socket, const std::string& prefix) {
  return socket.empty() ? Bus::direct({.shm_prefix = prefix}) : Bus::connect(socket);
}

int feed(const std::string& socket, const std::string& prefix, const std::string& topic, uint64_t paced,
         uint64_t rate, uint64_t burst, uint64_t every) {
  Bus bus = open_bus(socket, prefix);
  Publisher pub = bus.publisher(topic, {.block_timeout_ns = 10'000'000'000});
  auto publish = [&](uint64_t i) {
    for (;;) {
      MessageClaim m(pub, 96);
      if (!m) {
        if (m.status() == Status::back_pressured) continue;
        return false;
      }
      auto q = m.init_root<schema::Quote>();
      const bool signal = i % every == 0;
      q.setInstrumentId(uint32_t(i % 64));
      q.setBidPx(kPx0 + int64_t(i % 1000) * 100);
      q.setAskPx(kPx0 + int64_t(i % 1000) * 100 + 500);
      q.setBidQty(signal ? 900 : uint32_t(100 + (i % 5) * 10));
      q.setAskQty(signal ? 100 : uint32_t(100 + (i % 7) * 10));
      q.setExchangeTsNs(uint64_t(std::chrono::system_clock::now().time_since_epoch().count()));
      q.setSeq(i);
      return m.commit_as<schema::Quote>(i) == Status::ok;
    }
  };
  const uint64_t t0 = shm::monotonic_ns();
  const uint64_t gap = 1'000'000'000ull / rate;
  uint64_t next = t0, i = 1;
  for (; i <= paced; ++i) {
    while (shm::monotonic_ns() < next) shm::cpu_relax();
    next += gap;
    if (!publish(i)) return 1;
  }
  const uint64_t t1 = shm::monotonic_ns();
  for (; i <= paced + burst; ++i)
    if (!publish(i)) return 1;
  const uint64_t t2 = shm::monotonic_ns();
  std::printf("published %lu quotes: %lu paced at %lu/s, %lu at full speed (%.2f M/s)\n", paced + burst,
              paced, rate, burst, t2 > t1 ? double(burst) * 1e3 / double(t2 - t1) : 0.0);
  (void)t0;
  return 0;
}

int strategy(const std::string& socket, const std::string& prefix, const std::string& in,
             const std::string& out, uint64_t quotes) {
  Bus bus = open_bus(socket, prefix);
  SubscriberOptions so;
  so.spin_ns = 50'000;  // hybrid: spin 50 us before sleeping on the futex
  Subscriber sub = bus.subscriber(in, so);
  Publisher pub = bus.publisher(out, {.block_timeout_ns = 10'000'000'000});
  std::printf("READY\n");
  std::fflush(stdout);
  uint64_t seen = 0, orders = 0, errors = 0;
  while (seen < quotes) {
    if (!sub.wait(20'000'000'000)) {
      std::fprintf(stderr, "strategy: no quote for 20 s after %lu\n", seen);
      return 2;
    }
    sub.poll_batch(256, [&](const View& v) {
      ++seen;
      Status s = read_message<schema::Quote>(v, [&](schema::Quote::Reader q) {
        if (q.getSeq() != seen) ++errors;
        if (q.getBidQty() < 4 * q.getAskQty()) return;
        MessageClaim m(pub, 128);
        if (!m) {
          ++errors;
          return;
        }
        auto o = m.init_root<schema::Order>();
        o.setOrderId(++orders);
        o.setInstrumentId(q.getInstrumentId());
        o.setSide(schema::Side::BUY);
        o.setPx(q.getAskPx());
        o.setQty(q.getAskQty());
        o.setQuoteSeq(q.getSeq());
        o.setQuoteTsNs(v.timestamp_ns());
        o.setAccount("demo-strategy");
        if (m.commit_as<schema::Order>(orders) != Status::ok) ++errors;
      });
      if (s != Status::ok) ++errors;
    });
  }
  std::printf("read %lu quotes in place, sent %lu orders, %lu errors\n", seen, orders, errors);
  return errors ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket, prefix, topic = "md.quotes", in = "md.quotes", out = "orders.new";
  uint64_t paced = 0, rate = 100'000, burst = 0, every = 10, quotes = 0;
  CLI::App app{"shmbus demo: C++ feed and strategy (the --cpp-only pipeline)"};
  app.require_subcommand(1);
  auto* f = app.add_subcommand("feed", "publish Quote messages on md.quotes");
  auto* s = app.add_subcommand("strategy", "read quotes, publish orders");
  for (auto* c : {f, s}) {
    c->add_option("--socket", socket, "shmbusd control socket");
    c->add_option("--prefix", prefix, "direct bus with this shm prefix");
  }
  f->add_option("--topic", topic);
  f->add_option("--paced", paced, "quotes in the paced phase");
  f->add_option("--rate", rate, "paced rate, quotes/s")->check(CLI::Range(1, 100'000'000));
  f->add_option("--burst", burst, "quotes at full speed");
  f->add_option("--signal-every", every)->check(CLI::PositiveNumber);
  s->add_option("--quotes", quotes, "quotes to read")->required();
  s->add_option("--in", in);
  s->add_option("--out", out);
  CLI11_PARSE(app, argc, argv);
  if (socket.empty() == prefix.empty()) {
    std::fprintf(stderr, "give exactly one of --socket and --prefix\n");
    return 64;
  }
  try {
    int rc = f->parsed() ? feed(socket, prefix, topic, paced, rate, burst, every)
                         : strategy(socket, prefix, in, out, quotes);
    std::fflush(stdout);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", f->parsed() ? "feed" : "strategy", e.what());
    return 1;
  }
}
