// The messaging contract's test processes (tests/unit/contract_test.cpp): responders,
// requesters, a deduplicating consumer and a retrying producer, each a real process
// on a real shmbusd. Facts on stdout, one "key value" line each (child_process.hpp).
//
//   contract_helper responder <sock> <topic> echo|hold-first|hang
//     echo:       replies "re:" + request
//     hold-first: the first request is answered only after stdin closes; then echo
//     hang:       never answers (blocks on stdin), for SIGKILL mid-request
//   contract_helper requester <sock> <topic> <rounds> <in-flight>
//     rounds x in-flight requests, awaited in reverse order; checks every reply
//   contract_helper requester-hold <sock> <topic> exit|await
//     a Requester with one request in flight; says "reply <topic>"; then _exit(0) at
//     stdin EOF (no destructor), or awaits the reply (to be SIGKILLed)
//   contract_helper reply-intruder <sock> <reply-topic> <corr>
//     (as another uid) tries to subscribe, delete, and publish a forged reply
//   contract_helper dedup-producer <sock> <topic> <from> <to> <producer-id>
//     publishes message ids from..to (payload "m<id>"), progress "sent <id>" every 50
//   contract_helper dedup-consumer <sock> <topic> <name> <state-file> <expect>
//     durable consumer with a persisted DedupWindow; the handled ids are its app state;
//     stops at the end marker (message id 0, payload "end")
//   contract_helper dedup-runner ...  (same arguments): the same through a HandlerRunner
//     with HandlerOptions::dedup
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "shmbus/dedup.hpp"
#include "shmbus/handler.hpp"
#include "shmbus/request.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;

namespace {

void fact(const char* k, const std::string& v) {
  std::printf("%s %s\n", k, v.c_str());
  std::fflush(stdout);
}

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

void wait_stdin_eof() {
  char c;
  while (read(0, &c, 1) > 0) {
  }
}

int responder(Bus& bus, const std::string& topic, const std::string& mode) {
  int n = 0;
  Responder r(bus, topic, [&](const View& q, const Envelope& e) {
    ++n;
    std::string got = "got";
    got += std::to_string(n);
    fact(got.c_str(), str(q.bytes()) + " " + std::to_string(e.correlation_id));
    if (mode == "hang" || (mode == "hold-first" && n == 1)) wait_stdin_eof();
    if (mode == "hang")
      for (;;) pause();
    Response resp;
    const std::string a = "re:" + str(q.bytes());
    resp.payload.assign(bytes(a).begin(), bytes(a).end());
    return resp;
  });
  fact("ready", "1");
  r.run([] { return false; });
  return 0;
}

int requester(Bus& bus, const std::string& topic, int rounds, int inflight) {
  Requester rq(bus);
  uint64_t ok = 0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::pair<uint64_t, std::string>> sent;
    for (int i = 0; i < inflight; ++i) {
      std::string m = std::to_string(getpid());
      m += '-';
      m += std::to_string(round);
      m += '-';
      m += std::to_string(i);
      uint64_t corr = 0;
      const Status s = rq.send(topic, bytes(m), corr);
      if (s != Status::ok) return fact("FAIL", std::string("send: ") + to_string(s)), 1;
      sent.emplace_back(corr, m);
    }
    for (int i = inflight - 1; i >= 0; --i) {  // reverse: replies for the others are kept meanwhile
      Reply r;
      const Status s = rq.await(sent[size_t(i)].first, 5'000'000'000, r);
      if (s != Status::ok) return fact("FAIL", "await " + sent[size_t(i)].second + ": " + to_string(s)), 1;
      const std::string got = str(r.payload);
      if (got != "re:" + sent[size_t(i)].second || r.envelope.correlation_id != sent[size_t(i)].first ||
          r.envelope.causation_id == 0)  // the request frame's random message id
        return fact("FAIL", "request " + sent[size_t(i)].second + " got " + got), 1;
      ++ok;
    }
  }
  fact("stale", std::to_string(rq.stats().stale));
  fact("ok", std::to_string(ok));
  return 0;
}

int dedup_producer(Bus& bus, const std::string& topic, uint64_t from, uint64_t to, uint32_t producer_id) {
  PublisherOptions po;
  po.producer_id = producer_id;
  Publisher p = bus.publisher(topic, po);
  for (uint64_t id = from; id <= to; ++id) {
    std::string m = "m";
    m += std::to_string(id);
    const Status s = p.offer(m.data(), m.size(), id);
    if (s != Status::ok) return fact("FAIL", std::string("offer: ") + to_string(s)), 1;
    if (id % 50 == 0) fact(("sent" + std::to_string(id)).c_str(), "1");
  }
  fact("done", std::to_string(to));
  return 0;
}

// Handles each message once: its id is appended to the application state, which is
// committed with the window and the position (effectively once).
int dedup_consumer(Bus& bus, const std::string& topic, const std::string& name, const std::string& file,
                   uint64_t expect) {
  DedupWindow w({.capacity = 4096, .path = file});
  std::string state = w.app_state();  // "id,id,...,"
  std::set<uint64_t> have;
  for (size_t at = 0; at < state.size();) {
    const size_t c = state.find(',', at);
    if (c == std::string::npos) break;
    have.insert(std::strtoull(state.c_str() + at, nullptr, 10));
    at = c + 1;
  }
  SubscriberOptions so;
  so.name = name;
  Subscriber sub = bus.subscriber(topic, so);
  fact("ready", std::to_string(have.size()));
  uint64_t handled = 0, dups = 0;
  // Until the end marker (message id 0, "end"): everything the producers sent, the
  // duplicates at the end included, goes through the window.
  for (;;) {
    View v;
    if (sub.poll_wait(v, 10'000'000'000) != Status::ok) return fact("FAIL", "no message for 10 s"), 1;
    if (v.message_id() == 0 && str(v.bytes()) == "end") {
      sub.release(v);
      break;
    }
    if (w.seen(v)) {
      ++dups;
      sub.release(v);
      continue;
    }
    if (have.count(v.message_id()))
      return fact("FAIL", "handled twice: " + std::to_string(v.message_id())), 1;
    have.insert(v.message_id());
    state += std::to_string(v.message_id());
    state += ',';
    w.record(v);
    w.commit(state);  // the side effect and the window, in one atomic write
    sub.release(v);
    ++handled;
    if (handled % 25 == 0) fact(("handled" + std::to_string(have.size())).c_str(), "1");
  }
  if (have.size() != expect)
    return fact("FAIL", "handled " + std::to_string(have.size()) + " of " + std::to_string(expect)), 1;
  fact("dups", std::to_string(dups));
  fact("total", std::to_string(have.size()));
  return 0;
}

// The same through a HandlerRunner with HandlerOptions::dedup: the handler keeps the
// handled ids in the window's application state, which the runner commits.
int dedup_runner(Bus& bus, const std::string& topic, const std::string& name, const std::string& file,
                 uint64_t expect) {
  DedupWindow w({.capacity = 4096, .path = file});
  std::set<uint64_t> have;
  const std::string& st0 = w.app_state();
  for (size_t at = 0; at < st0.size();) {
    const size_t c = st0.find(',', at);
    if (c == std::string::npos) break;
    have.insert(std::strtoull(st0.c_str() + at, nullptr, 10));
    at = c + 1;
  }
  HandlerOptions o;
  o.subscriber.name = name;
  o.dedup = &w;
  bool end = false, twice = false;
  uint64_t twice_id = 0;
  HandlerRunner run(
      bus, topic,
      [&](const View& v) {
        if (v.message_id() == 0 && str(v.bytes()) == "end") {
          end = true;
          return Outcome::ack();
        }
        if (!have.insert(v.message_id()).second) {
          twice = true;
          twice_id = v.message_id();
        }
        std::string s = w.app_state();
        s += std::to_string(v.message_id());
        s += ',';
        w.set_app_state(std::move(s));
        if (have.size() % 25 == 0) fact(("handled" + std::to_string(have.size())).c_str(), "1");
        return Outcome::ack();
      },
      o);
  fact("ready", std::to_string(have.size()));
  while (!end && !twice) run.step(100'000'000);
  if (twice) return fact("FAIL", "handled twice: " + std::to_string(twice_id)), 1;
  if (have.size() != expect)
    return fact("FAIL", "handled " + std::to_string(have.size()) + " of " + std::to_string(expect)), 1;
  fact("dups", std::to_string(run.stats().duplicates));
  fact("total", std::to_string(have.size()));
  return 0;
}

// Holds a Requester with one request in flight on `topic`, says its reply topic,
// then: "exit" waits for stdin to close and _exit(0)s (no destructor runs: the
// daemon connection closes with the process), "await" waits for the reply (for
// SIGKILL mid-request).
int requester_hold(Bus& bus, const std::string& topic, const std::string& how) {
  Requester rq(bus);
  fact("reply", rq.reply_topic());
  fact("ephemeral", rq.reply_topic_ephemeral() ? "1" : "0");
  uint64_t corr = 0;
  const Status s = rq.send(topic, bytes("hold"), corr);
  if (s != Status::ok) return fact("FAIL", std::string("send: ") + to_string(s)), 1;
  fact("sent", std::to_string(corr));
  if (how == "exit") {
    wait_stdin_eof();
    _exit(0);
  }
  Reply r;
  fact("await", to_string(rq.await(corr, 60'000'000'000, r)));
  return 0;
}

// What another user can do to someone's reply topic: subscribe (refused), delete
// (refused), publish a reply that knows the correlation id but not the request's
// message id (accepted by the daemon; the requester must drop it).
int reply_intruder(Bus& bus, const std::string& topic, uint64_t corr) {
  auto code = [](const Error& e) { return std::to_string(int(e.code())) + " " + e.what(); };
  try {
    Subscriber sub = bus.subscriber(topic);
    fact("subscribe", "ok");
  } catch (const Error& e) {
    fact("subscribe", code(e));
  }
  try {
    bus.remove_topic(topic);
    fact("remove", "ok");
  } catch (const Error& e) {
    fact("remove", code(e));
  }
  try {
    Publisher p = bus.publisher(topic);
    Envelope e;
    e.correlation_id = corr;
    e.causation_id = corr;  // a guess: the request frame's message id is random
    fact("publish", to_string(publish_enveloped(p, e, bytes("forged"))));
  } catch (const Error& e) {
    fact("publish", code(e));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: contract_helper <mode> <socket> <topic> ...\n");
    return 2;
  }
  const std::string mode = argv[1];
  try {
    Bus bus = Bus::connect(argv[2]);
    const std::string topic = argv[3];
    if (mode == "responder" && argc == 5) return responder(bus, topic, argv[4]);
    if (mode == "requester" && argc == 6)
      return requester(bus, topic, std::atoi(argv[4]), std::atoi(argv[5]));
    if (mode == "requester-hold" && argc == 5) return requester_hold(bus, topic, argv[4]);
    if (mode == "reply-intruder" && argc == 5)
      return reply_intruder(bus, topic, std::strtoull(argv[4], nullptr, 10));
    if (mode == "dedup-producer" && argc == 7)
      return dedup_producer(bus, topic, std::strtoull(argv[4], nullptr, 10),
                            std::strtoull(argv[5], nullptr, 10),
                            uint32_t(std::strtoul(argv[6], nullptr, 10)));
    if (mode == "dedup-consumer" && argc == 7)
      return dedup_consumer(bus, topic, argv[4], argv[5], std::strtoull(argv[6], nullptr, 10));
    if (mode == "dedup-runner" && argc == 7)
      return dedup_runner(bus, topic, argv[4], argv[5], std::strtoull(argv[6], nullptr, 10));
  } catch (const std::exception& e) {
    fact("FAIL", e.what());
    return 1;
  }
  std::fprintf(stderr, "contract_helper: bad arguments\n");
  return 2;
}
