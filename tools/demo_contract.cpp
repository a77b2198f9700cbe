// tools/demo --scenario contract: the messaging contract's user story in one run,
// through a shmbusd embedded in this process (docs/messaging.md).
//
//  * orders.fulfillment.completed: a producer publishes N orders; a HandlerRunner
//    handles them with retries (exponential backoff, jitter) and dead letters. One
//    order is poison (rejected: it goes to orders.fulfillment.completed.dlq with its
//    error envelope while the rest flows); some fail once (a transient error, retried
//    and then acked).
//  * pricing.quote: a Responder answers requests; a Requester sends several, then one
//    to a topic nobody answers (a timeout, not a hang).
// Exits 0 only if every figure is what the story promises.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <capnp/serialize.h>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "envelope.capnp.h"
#include "shmbus/daemon.hpp"
#include "shmbus/envelope.hpp"
#include "shmbus/handler.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/request.hpp"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
namespace fs = std::filesystem;

namespace {

const char* kOrders = "orders.fulfillment.completed";
const char* kPricing = "pricing.quote";

double secs(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus demo, scenario contract: retries, dead letters, request/response through shmbusd"};
  uint64_t n = 200'000;
  uint64_t flaky_every = 20'000;
  app.add_option("--orders", n, "orders to publish");
  app.add_option("--flaky-every", flaky_every, "every Nth order fails once (transient)");
  std::string scenario;
  app.add_option("--scenario", scenario, "(contract)");
  CLI11_PARSE(app, argc, argv);
  if (n < 10) n = 10;
  if (flaky_every == 0) flaky_every = n + 1;

  char tpl[] = "/tmp/shmbus-demo-contract-XXXXXX";
  if (!mkdtemp(tpl)) {
    std::perror("mkdtemp");
    return 2;
  }
  const fs::path dir = tpl;
  const std::string prefix = "shmbus-democ-" + std::to_string(getpid());
  int rc = 0;
  {
    DaemonOptions o;
    o.socket_path = (dir / "shmbusd.sock").string();
    o.state_dir = (dir / "state").string();
    o.shm_prefix = prefix;
    o.log_level = "warn";
    Bus bus = open_embedded(o);
    std::printf("demo contract: shmbusd embedded (socket %s)\n", o.socket_path.c_str());
    bus.create_topic(kOrders, {.capacity = 4u << 20});
    TopicConfig dlq{.capacity = 1u << 20, .multi_producer = true};
    dlq.durable = true;
    dlq.flush = TopicConfig::Flush::none;
    bus.create_topic(std::string(kOrders) + ".dlq", dlq);
    bus.create_topic(kPricing, {.capacity = 1u << 20, .multi_producer = true});

    // ---- handler with retries and dead letters
    const uint64_t poison = n / 2 + 1;
    std::atomic<uint64_t> transient_failures{0};
    std::atomic<bool> stop{false};
    HandlerOptions ho;
    ho.name = "fulfilment";
    ho.retry = {.max_attempts = 5,
                .initial_backoff_ns = 1'000'000,
                .max_backoff_ns = 50'000'000,
                .multiplier = 2.0,
                .jitter = 0.2};
    HandlerRunner runner(
        bus, kOrders,
        [&](const View& v) {
          const uint64_t id = v.message_id();
          if (id == poison) return Outcome::reject("customer 4711 does not exist", 404);
          static thread_local uint64_t last_failed = 0;
          if (id % flaky_every == 0 && last_failed != id) {
            last_failed = id;
            transient_failures.fetch_add(1);
            return Outcome::retry("warehouse service busy", 503);
          }
          return Outcome::ack();
        },
        ho);
    std::thread handler([&] {
      while (runner.stats().handled < n && !stop.load())
        runner.step(100'000'000, [&] { return stop.load(); });
    });

    // ---- request/response
    Responder responder(bus, kPricing, [](const View& q, const Envelope&) {
      Response r;
      const std::string a =
          "price(" + std::string(reinterpret_cast<const char*>(q.data()), q.size()) + ") = 42.17";
      r.payload.assign(reinterpret_cast<const std::byte*>(a.data()),
                       reinterpret_cast<const std::byte*>(a.data()) + a.size());
      return r;
    });
    std::thread resp_thread([&] { responder.run([&] { return stop.load(); }); });

    const auto t0 = std::chrono::steady_clock::now();
    {
      Publisher pub = bus.publisher(kOrders);
      char buf[64];
      for (uint64_t i = 1; i <= n; ++i) {
        const int len = std::snprintf(buf, sizeof buf, "{\"order\":%" PRIu64 ",\"status\":\"completed\"}", i);
        if (pub.offer(buf, size_t(len), i) != Status::ok) {
          std::fprintf(stderr, "demo contract: publish %" PRIu64 " failed\n", i);
          rc = 1;
          break;
        }
      }
    }
    handler.join();
    const auto t1 = std::chrono::steady_clock::now();
    const HandlerStats& hs = runner.stats();
    std::printf("orders: %" PRIu64 " published, %" PRIu64 " acked, %" PRIu64 " retries (%" PRIu64
                " transient failures), %" PRIu64 " dead-lettered, in %.2f s (%.0f orders/s)\n",
                n, hs.acked, hs.retries, transient_failures.load(), hs.dead_lettered, secs(t1 - t0),
                double(n) / secs(t1 - t0));
    if (hs.acked != n - 1 || hs.dead_lettered != 1 || hs.retries != transient_failures.load()) rc = 1;

    // The dead letter, read back with its envelope.
    {
      ReplayOptions ro;
      ro.start = StartAt::earliest();
      ro.state_dir = (dir / "state" / "log").string();
      ReplaySubscriber dl = replay_subscriber(bus, std::string(kOrders) + ".dlq", ro);
      View v;
      if (dl.poll_wait(v, 2'000'000'000) == Status::ok) {
        kj::ArrayPtr<const capnp::word> w(reinterpret_cast<const capnp::word*>(v.data()), v.size() / 8);
        capnp::FlatArrayMessageReader r(w);
        auto d = r.getRoot<schema::DeadLetter>();
        auto p = d.getPayload();
        std::printf("dead letter in %s.dlq: code %u \"%s\", %u attempt(s), handler %s, original seq %" PRIu64
                    ", message id %" PRIu64 ", payload %.*s\n",
                    kOrders, d.getCode(), d.getMessage().cStr(), d.getAttempts(), d.getHandler().cStr(),
                    d.getSequence(), d.getMessageId(), int(p.size()),
                    reinterpret_cast<const char*>(p.begin()));
        if (d.getMessageId() != poison || d.getCode() != 404) rc = 1;
        dl.release(v);
      } else {
        std::printf("dead letter: NOT found in the log\n");
        rc = 1;
      }
    }
    // Re-drive it with the shmbus tool (beside this program), once the cause is fixed:
    // it comes back to the topic with its payload, message id and schema id.
    {
      Subscriber back = bus.subscriber(kOrders);
      const std::string self = fs::canonical("/proc/self/exe").parent_path().string();
      const std::string cmd =
          "'" + self + "/shmbus' --socket '" + o.socket_path + "' dlq replay " + kOrders + ".dlq";
      std::printf("$ shmbus dlq replay %s.dlq\n", kOrders);
      std::fflush(stdout);
      const int st = std::system(cmd.c_str());
      View v;
      if (st == 0 && back.poll_wait(v, 2'000'000'000) == Status::ok) {
        std::printf("back on %s: message id %" PRIu64 ", %.*s\n", kOrders, v.message_id(), int(v.size()),
                    reinterpret_cast<const char*>(v.data()));
        if (v.message_id() != poison) rc = 1;
        back.release(v);
      } else {
        std::printf("re-drive: FAILED (status %d)\n", st);
        rc = 1;
      }
    }

    {
      Requester rq(bus);
      const TraceContext trace = TraceContext::fresh();
      for (const char* sku : {"SKU-1", "SKU-2", "SKU-3"}) {
        Reply rep;
        const auto a = std::chrono::steady_clock::now();
        uint64_t corr = 0;
        Status s =
            rq.send(kPricing, {reinterpret_cast<const std::byte*>(sku), std::strlen(sku)}, corr, 0, &trace);
        if (s == Status::ok) s = rq.await(corr, 1'000'000'000, rep);
        const auto b = std::chrono::steady_clock::now();
        if (s != Status::ok) {
          std::printf("request %s: %s\n", sku, to_string(s));
          rc = 1;
          continue;
        }
        std::printf("request %s -> \"%.*s\" (correlation %" PRIu64 ", trace %s, %.0f us)\n", sku,
                    int(rep.payload.size()), reinterpret_cast<const char*>(rep.payload.data()),
                    rep.envelope.correlation_id, rep.envelope.trace.traceparent().c_str(), secs(b - a) * 1e6);
        if (rep.envelope.correlation_id != corr) rc = 1;
      }
      bus.create_topic("pricing.nobody", {.capacity = 1u << 16, .multi_producer = true});
      Reply rep;
      const auto a = std::chrono::steady_clock::now();
      const Status s =
          rq.request("pricing.nobody", {reinterpret_cast<const std::byte*>("SKU-9"), 5}, 200'000'000, rep);
      const auto b = std::chrono::steady_clock::now();
      std::printf("request to a topic nobody answers: %s after %.0f ms\n", to_string(s), secs(b - a) * 1e3);
      if (s != Status::timed_out) rc = 1;
      bus.remove_topic("pricing.nobody");
    }
    stop.store(true);
    resp_thread.join();
    for (const std::string& t :
         {std::string(kOrders), std::string(kOrders) + ".dlq", std::string(kPricing)}) {
      try {
        bus.remove_topic(t);
      } catch (...) {
      }
    }
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  std::printf("demo contract: %s\n", rc == 0 ? "OK" : "FAILED");
  return rc;
}
