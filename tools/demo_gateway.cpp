// shmbus-demo-gateway: the C++ order gateway of the demo pipeline (tools/demo).
//
//   shmbus-demo-gateway (--socket PATH | --prefix P) --orders N --paced-orders K
//                       --signal-every S [--topic orders.new] [--timeout-ms 20000] [--json]
//
// Subscribes to the orders topic, prints READY, then reads N Order messages in place
// (zero copy) and checks them: orderId dense from 1, quoteSeq a multiple of S and
// increasing. For each order, end-to-end latency = CLOCK_MONOTONIC now - the quote's
// publish time (Order.quoteTsNs, the quote frame's commit timestamp carried by the
// strategy). The first K orders come from the feed's paced phase (the latency
// figure); the rest from its full-speed phase (throughput: quotes/s through the
// whole pipeline, from the quote sequence numbers the orders carry).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "market.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;

namespace {

struct Pct {
  uint64_t p50 = 0, p99 = 0, p999 = 0, max = 0;
};

Pct percentiles(std::vector<uint64_t>& v) {
  Pct p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[size_t(q * double(v.size() - 1))]; };
  p.p50 = at(0.50);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.max = v.back();
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket, prefix, topic = "orders.new";
  uint64_t orders = 0, paced_orders = 0, every = 1;
  int64_t timeout_ms = 20000;
  bool json = false;
  CLI::App app{"shmbus demo: the C++ order gateway (end-to-end latency and throughput)"};
  app.add_option("--socket", socket, "shmbusd control socket (through the daemon)");
  app.add_option("--prefix", prefix, "direct bus with this shm prefix (no daemon)");
  app.add_option("--topic", topic, "orders topic");
  app.add_option("--orders", orders, "orders to receive")->required();
  app.add_option("--paced-orders", paced_orders, "how many of them come from the paced phase");
  app.add_option("--signal-every", every, "the strategy orders on quotes whose seq is a multiple of this")
      ->check(CLI::PositiveNumber);
  app.add_option("--timeout-ms", timeout_ms, "longest gap in the order stream");
  app.add_flag("--json", json, "print the result as one JSON line");
  CLI11_PARSE(app, argc, argv);
  if (socket.empty() == prefix.empty()) {
    std::fprintf(stderr, "gateway: give exactly one of --socket and --prefix\n");
    return 64;
  }

  try {
    Bus bus = socket.empty() ? Bus::direct({.shm_prefix = prefix}) : Bus::connect(socket);
    SubscriberOptions so;
    so.spin_ns = 50'000;  // hybrid: spin 50 us before sleeping on the futex
    Subscriber sub = bus.subscriber(topic, so);
    std::printf("READY\n");
    std::fflush(stdout);

    std::vector<uint64_t> paced, burst;
    paced.reserve(paced_orders);
    burst.reserve(orders - std::min(orders, paced_orders));
    uint64_t got = 0, errors = 0, last_quote = 0;
    uint64_t t_burst0 = 0, q_burst0 = 0, t_end = 0, q_end = 0;
    while (got < orders) {
      View v;
      Status s = sub.poll_wait(v, timeout_ms * 1'000'000);
      if (s != Status::ok) {
        std::fprintf(stderr, "gateway: %s after %lu of %lu orders\n", to_string(s), got, orders);
        return 2;
      }
      const uint64_t now = shm::monotonic_ns();
      ++got;
      Status rs = read_message<schema::Order>(v, [&](schema::Order::Reader o) {
        const uint64_t qseq = o.getQuoteSeq();
        if (o.getOrderId() != got || qseq % every != 0 || qseq <= last_quote) ++errors;
        last_quote = qseq;
        const uint64_t lat = now - o.getQuoteTsNs();
        if (got <= paced_orders) {
          paced.push_back(lat);
        } else {
          burst.push_back(lat);
          if (t_burst0 == 0) t_burst0 = now, q_burst0 = qseq;
          t_end = now, q_end = qseq;
        }
      });
      if (rs != Status::ok) ++errors;
      sub.release(v);
    }
    const Pct lp = percentiles(paced), lb = percentiles(burst);
    const double secs = double(t_end - t_burst0) / 1e9;
    const double quotes_s = secs > 0 ? double(q_end - q_burst0) / secs : 0;
    const double orders_s = secs > 0 && burst.size() > 1 ? double(burst.size() - 1) / secs : 0;
    if (json) {
      std::printf(
          "{\"orders\":%lu,\"errors\":%lu,\"paced\":{\"n\":%zu,\"p50_ns\":%lu,\"p99_ns\":%lu,"
          "\"p999_ns\":%lu,\"max_ns\":%lu},\"burst\":{\"n\":%zu,\"p50_ns\":%lu,\"p99_ns\":%lu,"
          "\"p999_ns\":%lu,\"max_ns\":%lu,\"quotes_per_s\":%.0f,\"orders_per_s\":%.0f}}\n",
          got, errors, paced.size(), lp.p50, lp.p99, lp.p999, lp.max, burst.size(), lb.p50, lb.p99, lb.p999,
          lb.max, quotes_s, orders_s);
    } else {
      std::printf("orders received %lu, errors %lu\n", got, errors);
      std::printf("end-to-end latency, quote published -> order at the gateway (us):\n");
      std::printf("  %-22s %8s %8s %8s %8s %8s\n", "phase", "orders", "p50", "p99", "p99.9", "max");
      auto row = [](const char* name, size_t n, const Pct& p) {
        std::printf("  %-22s %8zu %8.1f %8.1f %8.1f %8.1f\n", name, n, double(p.p50) / 1e3,
                    double(p.p99) / 1e3, double(p.p999) / 1e3, double(p.max) / 1e3);
      };
      row("paced", paced.size(), lp);
      row("full speed (queueing)", burst.size(), lb);
      std::printf("throughput at full speed: %.2f M quotes/s through the pipeline, %.0f k orders/s\n",
                  quotes_s / 1e6, orders_s / 1e3);
    }
    std::fflush(stdout);
    return errors ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gateway: %s\n", e.what());
    return 1;
  }
}
