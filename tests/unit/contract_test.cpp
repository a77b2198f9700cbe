// The messaging contract (docs/messaging.md), next parts: the envelope (header
// extension), request/response and dedup. In process where the point is the
// format or the validation, through a real shmbusd and real processes (responders,
// requesters, producers and consumers SIGKILLed) where it is delivery.
#include <sys/stat.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "../daemon/daemon_util.hpp"
#include "../daemon/second_user.hpp"
#include "../spill/spill_util.hpp"
#include "envelope.capnp.h"
#include "market.capnp.h"
#include "shmbus/dedup.hpp"
#include "shmbus/envelope.hpp"
#include "shmbus/handler.hpp"
#include "shmbus/request.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

const char* kCli = SHMBUS_TEST_CLI;

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

std::vector<std::string> helper(const std::vector<std::string>& args) {
  std::vector<std::string> v{SHMBUS_TEST_HELPER};
  v.insert(v.end(), args.begin(), args.end());
  return v;
}

PublisherOptions patient() {
  PublisherOptions po;
  po.block_timeout_ns = 10'000'000'000;
  return po;
}

int64_t mono() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// ------------------------------------------------------------------ envelope

TEST_CASE("traceparent: W3C version 00 parsed and printed; malformed ones refused", "[contract][envelope]") {
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  auto t = TraceContext::parse(tp);
  REQUIRE(t);
  CHECK(t->trace_hi == 0x4bf92f3577b34da6ull);
  CHECK(t->trace_lo == 0xa3ce929d0e0e4736ull);
  CHECK(t->parent_id == 0x00f067aa0ba902b7ull);
  CHECK(t->flags == 1);
  CHECK(t->traceparent() == tp);
  for (const char* bad : {"", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                          "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                          "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
                          "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero span id
                          "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01"})
    CHECK_FALSE(TraceContext::parse(bad));
  const TraceContext c = t->child();
  CHECK(c.trace_hi == t->trace_hi);
  CHECK(c.trace_lo == t->trace_lo);
  CHECK(c.parent_id != t->parent_id);
  CHECK(TraceContext::fresh().valid());
}

TEST_CASE("envelope: every field round-trips; the payload is read in place; plain frames open as themselves",
          "[contract][envelope]") {
  TopicGuard g{Bus::direct({.shm_prefix = unique_prefix("env")}), "env.rt"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  Subscriber s = g.bus.subscriber(g.topic);
  Publisher p = g.bus.publisher(g.topic);

  capnp::MallocMessageBuilder q;
  auto quote = q.initRoot<schema::Quote>();
  quote.setInstrumentId(7);
  quote.setBidPx(-12345);
  Envelope e;
  e.correlation_id = 0xfeedfacecafebeefull;
  e.causation_id = 99;
  e.reply_to = "svc.reply.1";
  e.trace = *TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  e.trace.state = "vendor=abc";
  e.content_version = 3;
  e.status = 404;
  REQUIRE(publish_enveloped(p, e, q, 555, capnp::typeId<schema::Quote>()) == Status::ok);
  REQUIRE(p.offer("plain", 5, 556) == Status::ok);

  View v;
  REQUIRE(s.poll(v) == Status::ok);
  CHECK(v.schema_id() == envelope_schema_id());
  CHECK(v.message_id() == 555);
  EnvelopedView ev;
  REQUIRE(ev.open(v) == Status::ok);
  REQUIRE(ev.enveloped());
  const Envelope& r = ev.envelope();
  CHECK(r.correlation_id == e.correlation_id);
  CHECK(r.causation_id == 99);
  CHECK(r.reply_to == "svc.reply.1");
  CHECK(r.trace.traceparent() == e.trace.traceparent());
  CHECK(r.trace.state == "vendor=abc");
  CHECK(r.content_version == 3);
  CHECK(r.status == 404);
  const View& pl = ev.payload();
  CHECK(pl.schema_id() == capnp::typeId<schema::Quote>());
  CHECK(pl.message_id() == 555);
  CHECK(pl.sequence() == v.sequence());
  CHECK(pl.data() >= v.data());  // in place, inside the frame
  CHECK(pl.data() + pl.size() <= v.data() + v.size());
  kj::ArrayPtr<const capnp::word> w(reinterpret_cast<const capnp::word*>(pl.data()), pl.size() / 8);
  capnp::FlatArrayMessageReader rd(w);
  CHECK(rd.getRoot<schema::Quote>().getInstrumentId() == 7);
  CHECK(rd.getRoot<schema::Quote>().getBidPx() == -12345);
  s.release(v);

  REQUIRE(s.poll(v) == Status::ok);
  EnvelopedView plain;
  REQUIRE(plain.open(v) == Status::ok);
  CHECK_FALSE(plain.enveloped());
  CHECK(str(plain.payload().bytes()) == "plain");
  CHECK(plain.envelope().correlation_id == 0);
  s.release(v);
}

TEST_CASE("envelope: hostile frames flagged as envelopes are refused as malformed, never trusted",
          "[contract][envelope]") {
  TopicGuard g{Bus::direct({.shm_prefix = unique_prefix("envbad")}), "env.bad"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  Subscriber s = g.bus.subscriber(g.topic);
  Publisher p = g.bus.publisher(g.topic);
  const uint64_t eid = envelope_schema_id();
  // Garbage, a segment table pointing far outside, an empty payload.
  std::vector<std::string> bad;
  bad.push_back(std::string(64, '\xff'));
  {
    std::string t(16, '\0');
    const uint32_t tbl[2] = {0, 0x7fffffff};
    std::memcpy(t.data(), tbl, 8);
    bad.push_back(t);
  }
  bad.push_back(std::string(3, 'x'));
  // A well-formed Envelope whose reply-to is longer than any topic name.
  {
    capnp::MallocMessageBuilder mb;
    auto en = mb.initRoot<schema::Envelope>();
    en.setReplyTo(std::string(kMaxReplyTo + 1, 'r'));
    auto f = capnp::messageToFlatArray(mb);
    bad.push_back(std::string(reinterpret_cast<const char*>(f.asBytes().begin()), f.asBytes().size()));
  }
  for (auto& b : bad) REQUIRE(p.offer(b.data(), b.size(), 1, eid) == Status::ok);
  int malformed = 0;
  View v;
  while (s.poll(v) == Status::ok) {
    EnvelopedView ev;
    if (ev.open(v) == Status::malformed) ++malformed;
    CHECK(ev.envelope().reply_to.size() <= kMaxReplyTo);
    s.release(v);
  }
  CHECK(malformed == int(bad.size()));
  // Over-long fields are refused on the way out too.
  Envelope e;
  e.reply_to = std::string(kMaxReplyTo + 1, 'r');
  CHECK(publish_enveloped(p, e, as_bytes("x")) == Status::too_large);
}

TEST_CASE("envelope: a dead-lettered enveloped message keeps its envelope in the dead letter's payload",
          "[contract][envelope]") {
  TopicGuard g{Bus::direct({.shm_prefix = unique_prefix("envdlq")}), "env.dlq"};
  TopicGuard gd{g.bus, "env.dlq.dlq"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16});
  g.bus.create_topic(gd.topic, {.capacity = 1 << 16, .multi_producer = true});
  Subscriber dl = g.bus.subscriber(gd.topic);
  HandlerOptions o;
  o.retry.max_attempts = 1;
  HandlerRunner run(
      g.bus, g.topic,
      [](const View& v) {
        EnvelopedView ev;
        if (ev.open(v) != Status::ok || !ev.enveloped()) return Outcome::reject("not an envelope");
        return ev.envelope().correlation_id == 13 ? Outcome::reject("unlucky", 13) : Outcome::ack();
      },
      o);
  Publisher p = g.bus.publisher(g.topic);
  for (uint64_t c : {12, 13, 14}) {
    Envelope e;
    e.correlation_id = c;
    e.reply_to = "r";
    REQUIRE(publish_enveloped(p, e, as_bytes("body" + std::to_string(c)), c, 77) == Status::ok);
  }
  while (run.step(0)) {
  }
  CHECK(run.stats().acked == 2);
  REQUIRE(run.stats().dead_lettered == 1);
  View v;
  REQUIRE(dl.poll(v) == Status::ok);
  kj::ArrayPtr<const capnp::word> w(reinterpret_cast<const capnp::word*>(v.data()), v.size() / 8);
  capnp::FlatArrayMessageReader r(w);
  auto d = r.getRoot<schema::DeadLetter>();
  CHECK(d.getSchemaId() == envelope_schema_id());
  CHECK(d.getMessageId() == 13);
  // The payload is the envelope, byte for byte: re-driven, it is an envelope again.
  auto pl = d.getPayload();
  std::vector<capnp::word> copy((pl.size() + 7) / 8);
  std::memcpy(copy.data(), pl.begin(), pl.size());
  capnp::FlatArrayMessageReader r2(kj::arrayPtr(copy.data(), copy.size()));
  auto en = r2.getRoot<schema::Envelope>();
  CHECK(en.getCorrelationId() == 13);
  CHECK(std::string(en.getReplyTo().cStr()) == "r");
  CHECK(en.getPayloadSchemaId() == 77);
  CHECK(std::string(reinterpret_cast<const char*>(en.getPayload().begin()), en.getPayload().size()) ==
        "body13");
  dl.release(v);
}

TEST_CASE("shmbus replay prints an enveloped message's envelope and its decoded payload as JSON",
          "[contract][envelope][cli][daemon]") {
  DaemonProc d("envcli");
  REQUIRE(d.start());
  const std::string err = d.dir + "/cli.err";
  REQUIRE(run_capture({kCli, "--socket", d.sock, "topic", "create", "md.env", "--durable", "--flush", "none"},
                      {}, err)
              .find("md.env") != std::string::npos);
  {
    Bus bus = Bus::connect(d.sock);
    Publisher p = bus.publisher("md.env", patient());
    capnp::MallocMessageBuilder q;
    q.initRoot<schema::Quote>().setInstrumentId(4242);
    Envelope e;
    e.correlation_id = 17;
    e.causation_id = 16;
    e.reply_to = "reply.x";
    e.trace = *TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    e.content_version = 2;
    REQUIRE(publish_enveloped(p, e, q, 900, capnp::typeId<schema::Quote>()) == Status::ok);
  }
  const std::string out =
      run_capture({kCli, "--socket", d.sock, "replay", "md.env", "--count", "1"}, {}, err);
  INFO(out);
  CHECK(out.find("\"message_id\":\"0x0000000000000384\"") != std::string::npos);  // 900, in hex as every id
  CHECK(out.find(
            "\"envelope\":{\"correlationId\":\"0x0000000000000011\",\"causationId\":\"0x0000000000000010\","
            "\"replyTo\":\"reply.x\","
            "\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\","
            "\"contentVersion\":2,\"status\":0,") != std::string::npos);
  CHECK(out.find("\"type\":\"Quote\"") != std::string::npos);
  CHECK(out.find("\"instrumentId\":4242") != std::string::npos);
  REQUIRE(d.stop());
}

// ------------------------------------------------------------------ request/response

namespace {
struct Rig {
  DaemonProc d;
  Bus bus;
  explicit Rig(const char* what) : d(what), bus(start(d)) {}
  static Bus start(DaemonProc& d) {
    if (!d.start()) throw std::runtime_error("shmbusd did not start");
    return Bus::connect(d.sock);
  }
};
}  // namespace

TEST_CASE("request/response: replies correlated with several requests in flight from three processes",
          "[contract][request][daemon]") {
  Rig r("reqconc");
  r.bus.create_topic("svc.echo", {.capacity = 1 << 20, .multi_producer = true});
  Child resp(helper({"responder", r.d.sock, "svc.echo", "echo"}));
  REQUIRE(resp.await("ready", 10000) == "1");
  std::vector<Child> reqs;
  for (int i = 0; i < 3; ++i) reqs.emplace_back(helper({"requester", r.d.sock, "svc.echo", "30", "8"}));
  // And this process too, awaiting in sending order while the others await in reverse.
  Requester rq(r.bus);
  for (int i = 0; i < 40; ++i) {
    const std::string m = "self-" + std::to_string(i);
    Reply rep;
    REQUIRE(rq.request("svc.echo", as_bytes(m), 5'000'000'000, rep) == Status::ok);
    CHECK(str(rep.payload) == "re:" + m);
  }
  for (auto& c : reqs) {
    c.finish(60000);
    INFO(c.describe());
    CHECK(c.ok());
    CHECK(c.num("ok") == 240);
    CHECK(c.num("stale") == 0);
  }
  CHECK(rq.stats().stale == 0);
  CHECK(rq.stats().replies == 40);
}

TEST_CASE("request/response: a responder SIGKILLed mid-request is a timeout, not a hang",
          "[contract][request][daemon]") {
  Rig r("reqkill");
  r.bus.create_topic("svc.hang", {.capacity = 1 << 20, .multi_producer = true});
  Child resp(helper({"responder", r.d.sock, "svc.hang", "hang"}), {}, {}, true);
  REQUIRE(resp.await("ready", 10000) == "1");
  Requester rq(r.bus);
  uint64_t corr = 0;
  REQUIRE(rq.send("svc.hang", as_bytes("q1"), corr) == Status::ok);
  // The responder has the request in hand when it dies.
  REQUIRE(resp.await("got1", 10000) == "q1 " + std::to_string(corr));
  resp.kill_now();
  const int64_t t0 = mono();
  Reply rep;
  CHECK(rq.await(corr, 300'000'000, rep) == Status::timed_out);
  const int64_t took = mono() - t0;
  CHECK(took >= 300'000'000);
  CHECK(took < 3'000'000'000);
  CHECK(rq.stats().timeouts == 1);
  CHECK(rq.in_flight() == 0);
}

TEST_CASE("request/response: a late reply to a timed-out request is never taken for a later request's",
          "[contract][request][daemon]") {
  Rig r("reqstale");
  r.bus.create_topic("svc.slow", {.capacity = 1 << 20, .multi_producer = true});
  Child resp(helper({"responder", r.d.sock, "svc.slow", "hold-first"}), {}, {}, true);
  REQUIRE(resp.await("ready", 10000) == "1");
  Requester rq(r.bus);
  uint64_t a = 0;
  REQUIRE(rq.send("svc.slow", as_bytes("A"), a) == Status::ok);
  REQUIRE(resp.await("got1", 10000) == "A " + std::to_string(a));
  Reply rep;
  REQUIRE(rq.await(a, 100'000'000, rep) == Status::timed_out);
  resp.close_stdin();  // now it answers A (late), then B
  uint64_t b = 0;
  REQUIRE(rq.send("svc.slow", as_bytes("B"), b) == Status::ok);
  REQUIRE(rq.await(b, 5'000'000'000, rep) == Status::ok);
  CHECK(str(rep.payload) == "re:B");
  CHECK(rep.envelope.correlation_id == b);
  CHECK(rq.stats().stale == 1);  // A's reply, dropped
  CHECK(resp.await("got2", 10000) == "B " + std::to_string(b));
}

// ------------------------------------------------------------------ ephemeral reply topics

namespace {
// Does the daemon (through the API and the CLI) still know `topic`, and does it still
// hold its segments (memfds: in its fd table, not in /dev/shm)?
bool topic_listed(const DaemonProc& d, const std::string& topic) {
  const std::string out = run_capture({kCli, "--socket", d.sock, "topic", "list"});
  return out.find(topic) != std::string::npos;
}
bool segments_present(const DaemonProc& d, const std::string& topic) {
  return segment_inode(d.proc.pid(), topic, 0, true) != 0 ||
         segment_inode(d.proc.pid(), topic, 0, false) != 0;
}
// The topic is gone within `ms` (the daemon notices a closed connection on its own,
// asynchronously to this one); how long it took in ms, or -1.
int64_t gone_within(Bus& bus, const std::string& topic, int ms) {
  const int64_t t0 = mono();
  while (mono() - t0 < int64_t(ms) * 1'000'000) {
    if (bus.partitions(topic) == 0) return (mono() - t0) / 1'000'000;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // polling a condition, bounded
  }
  return -1;
}
}  // namespace

TEST_CASE(
    "ephemeral reply topic: a requester SIGKILLed mid-request, or exiting without its destructor, leaves "
    "no topic and no segment behind",
    "[contract][request][ephemeral][daemon]") {
  const std::string how = GENERATE(as<std::string>{}, "await", "exit");  // await: SIGKILLed while waiting
  INFO(how);
  Rig r("reqeph");
  r.bus.create_topic("svc.hold", {.capacity = 1 << 20, .multi_producer = true});
  Child resp(helper({"responder", r.d.sock, "svc.hold", "hang"}), {}, {}, true);
  REQUIRE(resp.await("ready", 10000) == "1");
  Child req(helper({"requester-hold", r.d.sock, "svc.hold", how}), {}, {}, true);
  const std::string name = req.await("reply", 10000);
  REQUIRE(!name.empty());
  CHECK(req.await("ephemeral", 10000) == "1");
  const std::string corr = req.await("sent", 10000);
  REQUIRE(resp.await("got1", 10000) == "hold " + corr);  // the request is in the responder's hands
  REQUIRE(r.bus.partitions(name) == 1);
  CHECK(topic_listed(r.d, name));
  CHECK(segments_present(r.d, name));
  if (how == "await") {
    req.kill_now();
  } else {
    req.close_stdin();
    req.finish(10000);
    INFO(req.describe());
    REQUIRE(req.ok());
  }
  const int64_t took = gone_within(r.bus, name, 5000);
  INFO("gone after " << took << " ms");
  CHECK(took >= 0);
  CHECK(took < 1000);  // the daemon's disconnect handling, not a timeout
  CHECK_FALSE(topic_listed(r.d, name));
  CHECK_FALSE(segments_present(r.d, name));
  CHECK(topic_listed(r.d, "svc.hold"));  // only the ephemeral one went
  resp.kill_now();
}

TEST_CASE(
    "ephemeral topics: the destructor removes the reply topic; another connection cannot take or delete it; "
    "never durable; a daemon restart or crash leaves none behind",
    "[contract][request][ephemeral][daemon]") {
  Rig r("ephrules");
  std::string first;
  {
    Requester rq(r.bus);
    first = rq.reply_topic();
    CHECK(rq.reply_topic_ephemeral());
    REQUIRE(r.bus.partitions(first) == 1);
    // Another connection of the same uid (root here, which may do anything else).
    Bus other = Bus::connect(r.d.sock);
    try {
      other.remove_topic(first);
      FAIL("another connection deleted an ephemeral topic");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::permission_denied);
      CHECK(std::string(e.what()).find("ephemeral") != std::string::npos);
      CHECK(std::string(e.what()).find("pid " + std::to_string(getpid())) != std::string::npos);
    }
    TopicConfig same = RequesterOptions{}.reply_config;
    same.ephemeral = true;
    CHECK_THROWS_MATCHES(other.create_topic(first, same), Error, Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::already_exists;
                         }));
    same.ephemeral = false;  // nor as a normal topic
    CHECK_THROWS_MATCHES(other.create_topic(first, same), Error, Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::already_exists;
                         }));
    CHECK(r.bus.partitions(first) == 1);
  }
  CHECK(r.bus.partitions(first) == 0);  // the destructor's delete (its own connection) is synchronous
  CHECK_THROWS_MATCHES(
      r.bus.create_topic(
          "eph.durable",
          {.capacity = 1 << 16, .durable = true, .retention_bytes = 1 << 20, .ephemeral = true}),
      Error, Catch::Predicate<Error>([](const Error& e) {
        return e.code() == ErrorCode::invalid_argument &&
               std::string(e.what()).find("ephemeral") != std::string::npos;
      }));

  const std::string how = GENERATE(as<std::string>{}, "stop", "crash");
  INFO(how);
  r.bus.create_topic("svc.keep", {.capacity = 1 << 16});
  std::string name;
  {
    auto rq = std::make_unique<Requester>(r.bus);
    name = rq->reply_topic();
    REQUIRE(segments_present(r.d, name));
    if (how == "stop")
      REQUIRE(r.d.stop());
    else
      r.d.crash();
    REQUIRE(r.d.start());
    Bus fresh = Bus::connect(r.d.sock);
    CHECK(fresh.partitions(name) == 0);
    CHECK(fresh.partitions("svc.keep") == 1);
    CHECK_FALSE(topic_listed(r.d, name));
    CHECK_FALSE(segments_present(r.d, name));
    rq.reset();  // its delete reaches the new daemon: not found, ignored
  }
  r.bus.remove_topic("svc.keep");
}

TEST_CASE(
    "ephemeral reply topic: another uid cannot subscribe to it nor delete it; it may publish, and a reply "
    "that knows the correlation id only is dropped and counted",
    "[contract][request][ephemeral][daemon]") {
  const SecondUser u = second_user();
  if (!u.skip.empty()) {
    WARN("skipped: " << u.skip);
    return;
  }
  Rig r("ephuid");
  r.bus.create_topic("svc.none", {.capacity = 1 << 16, .multi_producer = true});  // nobody answers
  Requester rq(r.bus);
  uint64_t corr = 0;
  REQUIRE(rq.send("svc.none", as_bytes("q"), corr) == Status::ok);
  Child in(u.as(helper({"reply-intruder", r.d.sock, rq.reply_topic(), std::to_string(corr)})));
  in.finish(20000);
  INFO(in.describe());
  REQUIRE(in.ok());
  CHECK(in.fact("subscribe").rfind(std::to_string(int(ErrorCode::permission_denied)) + " ", 0) == 0);
  CHECK(in.fact("remove").rfind(std::to_string(int(ErrorCode::permission_denied)) + " ", 0) == 0);
  CHECK(in.fact("publish") == "ok");
  Reply rep;
  CHECK(rq.await(corr, 200'000'000, rep) == Status::timed_out);
  CHECK(rq.stats().forged == 1);
  CHECK(rq.stats().replies == 0);
}

TEST_CASE(
    "responder through shmbusd: replies only on ephemeral topics (no confused deputy); a missing reply "
    "topic is given up at once",
    "[contract][request][ephemeral][daemon]") {
  Rig r("ephdeputy");
  r.bus.create_topic("svc.dep", {.capacity = 1 << 16, .multi_producer = true});
  r.bus.create_topic("victim.topic", {.capacity = 1 << 16, .multi_producer = true});
  Subscriber victim = r.bus.subscriber("victim.topic");
  Responder resp(r.bus, "svc.dep", [](const View& q, const Envelope&) {
    Response a;
    a.payload.assign(q.bytes().begin(), q.bytes().end());
    return a;
  });
  Publisher raw = r.bus.publisher("svc.dep");
  Envelope e;
  e.correlation_id = 5;
  e.reply_to = "victim.topic";  // an ordinary topic the responder may publish to
  REQUIRE(publish_enveloped(raw, e, as_bytes("x"), 9) == Status::ok);
  REQUIRE(resp.step(5'000'000'000));
  CHECK(resp.stats().refused == 1);
  CHECK(resp.stats().replied == 0);
  View v;
  CHECK(victim.poll(v) == Status::empty);
  e.reply_to = "reply.gone.0123456789abcdef";  // a requester that is gone
  REQUIRE(publish_enveloped(raw, e, as_bytes("y"), 10) == Status::ok);
  const int64_t t0 = mono();
  REQUIRE(resp.step(5'000'000'000));
  CHECK(mono() - t0 < 1'000'000'000);  // not the 5 s open timeout
  CHECK(resp.stats().undeliverable == 1);
  Requester rq(r.bus);  // a real reply topic is answered
  uint64_t corr = 0;
  REQUIRE(rq.send("svc.dep", as_bytes("z"), corr) == Status::ok);
  REQUIRE(resp.step(5'000'000'000));
  Reply rep;
  REQUIRE(rq.await(corr, 5'000'000'000, rep) == Status::ok);
  CHECK(str(rep.payload) == "z");
  CHECK(resp.stats().replied == 1);
}

TEST_CASE(
    "request/response in one process: a throwing responder answers 500; a request without reply-to "
    "is handled, not answered",
    "[contract][request]") {
  TopicGuard g{Bus::direct({.shm_prefix = unique_prefix("reqlocal")}), "svc.local"};
  g.bus.create_topic(g.topic, {.capacity = 1 << 16, .multi_producer = true});
  std::atomic<bool> stop{false};
  Responder resp(g.bus, g.topic, [](const View& q, const Envelope&) {
    const std::string m = str(q.bytes());
    if (m == "boom") throw std::runtime_error("boom");
    Response r;
    r.payload.assign(q.bytes().begin(), q.bytes().end());
    r.status = 7;
    return r;
  });
  std::thread t([&] { resp.run([&] { return stop.load(); }); });
  Requester rq(g.bus);
  Reply rep;
  REQUIRE(rq.request(g.topic, as_bytes("boom"), 5'000'000'000, rep) == Status::ok);
  CHECK(rep.envelope.status == 500);
  CHECK(str(rep.payload) == "exception: boom");
  {
    Publisher plain = g.bus.publisher(g.topic);
    REQUIRE(plain.offer("plain", 5) == Status::ok);  // no envelope, no reply-to
  }
  REQUIRE(rq.request(g.topic, as_bytes("x"), 5'000'000'000, rep) == Status::ok);
  CHECK(rep.envelope.status == 7);
  CHECK(str(rep.payload) == "x");
  Reply none;
  CHECK(rq.await(12345, 1'000'000, none) == Status::closed);  // never sent
  stop = true;
  t.join();
  CHECK(resp.stats().requests == 3);
  CHECK(resp.stats().failed == 1);
  CHECK(resp.stats().no_reply_to == 1);
  CHECK(resp.stats().replied == 2);
}

// ------------------------------------------------------------------ dedup

TEST_CASE(
    "dedup window: position and (producer, message id), bounded, persisted atomically, bad files refused",
    "[contract][dedup]") {
  TempDir tmp;
  const std::string path = tmp.path + "/w.dedup";
  {
    DedupWindow w({.capacity = 3, .path = path});
    CHECK(w.position() == 0);
    CHECK_FALSE(w.seen(1, 100, 1));
    w.record(1, 100, 1);
    w.record(1, 101, 2);
    w.record(2, 100, 3);
    CHECK(w.seen(1, 100, 1));         // by position
    CHECK(w.seen(1, 100, 50));        // a retry: new sequence, same ids
    CHECK_FALSE(w.seen(3, 100, 51));  // another producer's 100
    w.record(1, 102, 4);              // evicts (1,100)
    CHECK_FALSE(w.seen(1, 100, 60));
    CHECK(w.seen(1, 102, 61));
    CHECK(w.stats().by_position == 1);
    CHECK(w.stats().by_id == 2);
    w.commit("app-state");
  }
  {
    DedupWindow w({.capacity = 3, .path = path});
    CHECK(w.position() == 4);
    CHECK(w.app_state() == "app-state");
    CHECK(w.size() == 3);
    CHECK(w.seen(2, 100, 70));
    CHECK(w.seen(1, 4, 4));
  }
  // A flipped byte anywhere is refused, not half-used.
  std::string bytes;
  {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    bytes = ss.str();
  }
  for (size_t at : {size_t(0), size_t(9), size_t(17), size_t(30), bytes.size() - 3}) {
    std::string b = bytes;
    b[at] = char(b[at] ^ 0x40);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << b;
    CHECK_THROWS_AS(DedupWindow({.capacity = 3, .path = path}), Error);
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 1);
  CHECK_THROWS_AS(DedupWindow({.capacity = 3, .path = path}), Error);
  // Planted files (a shared directory): a FIFO at the state path is refused at once
  // (an open without O_NONBLOCK waited for a writer forever); a FIFO at the temporary
  // name does not block a commit (it is replaced, never opened); a valid state file
  // owned by another uid is refused.
  const std::string fifo = tmp.path + "/fifo.dedup";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  CHECK_THROWS_AS(DedupWindow({.capacity = 3, .path = fifo}), Error);
  const std::string fresh = tmp.path + "/fresh.dedup";
  REQUIRE(mkfifo((fresh + ".tmp").c_str(), 0600) == 0);
  {
    DedupWindow w({.capacity = 3, .path = fresh});
    w.record(1, 7, 1);
    w.commit("x");
  }
  CHECK(DedupWindow({.capacity = 3, .path = fresh}).position() == 1);
  if (geteuid() == 0) {  // CI runs as root: the file is given to another uid
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    CHECK(DedupWindow({.capacity = 3, .path = path}).position() == 4);  // ours: accepted
    REQUIRE(chown(path.c_str(), 65534, 65534) == 0);
    CHECK_THROWS_AS(DedupWindow({.capacity = 3, .path = path}), Error);
  }
}

TEST_CASE(
    "dedup: duplicates from a producer restart and a consumer restart (both SIGKILLed) are handled once",
    "[contract][dedup][daemon]") {
  // By hand (DedupWindow around a Subscriber) and as the HandlerRunner's dedup layer.
  const std::string mode = GENERATE(as<std::string>{}, "dedup-consumer", "dedup-runner");
  INFO(mode);
  Rig r("dedup");
  r.bus.create_topic("orders.dd", {.capacity = 1 << 20, .multi_producer = true});
  const std::string state = r.d.dir + "/consumer.dedup";
  const std::string n = "400";
  Child c1(helper({mode, r.d.sock, "orders.dd", "dd", state, n}));
  REQUIRE(c1.await("ready", 10000) == "0");
  Child p1(helper({"dedup-producer", r.d.sock, "orders.dd", "1", n, "77"}));
  REQUIRE(p1.await("sent200", 10000) == "1");
  p1.kill_now();  // the producer dies not knowing what went out: it will send everything again
  REQUIRE(c1.await("handled100", 20000) == "1");
  c1.kill_now();  // mid-stream, possibly between its commit and its release
  Child c2(helper({mode, r.d.sock, "orders.dd", "dd", state, n}));
  const std::string had = c2.await("ready", 10000);
  REQUIRE(!had.empty());
  CHECK(std::stoul(had) >=
        99);  // resumed with its committed state (the runner says "handled100" before its commit)
  Child p2(helper({"dedup-producer", r.d.sock, "orders.dd", "1", n, "77"}));
  p2.finish(20000);
  INFO(p2.describe());
  REQUIRE(p2.ok());
  {
    Publisher end = r.bus.publisher("orders.dd", patient());
    REQUIRE(end.offer("end", 3, 0) == Status::ok);
  }
  c2.finish(30000);
  INFO(c2.describe());
  REQUIRE(c2.ok());
  CHECK(c2.num("total") == 400);
  CHECK(c2.num("dups") >= 200);  // at least everything the first producer sent came twice
  // The persisted application state lists every id exactly once.
  DedupWindow w({.capacity = 4096, .path = state});
  std::set<std::string> ids;
  size_t count = 0;
  std::stringstream ss(w.app_state());
  for (std::string id; std::getline(ss, id, ',');) {
    ids.insert(id);
    ++count;
  }
  CHECK(count == 400);
  CHECK(ids.size() == 400);
}
