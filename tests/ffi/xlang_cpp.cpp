// xlang-cpp: the C++ side of the cross-language scenario (docs/xlang-scenario.md),
// on the C++ API (lib/) directly.
//
//   xlang-cpp consume --prefix P --topic T --count N --schema quote|order
//             [--schema-version 1|2] [--timeout-ms 10000] [--start SEQ] [--allow-truncated]
//   xlang-cpp produce --prefix P --topic T --count N --schema quote|order
//             [--schema-version 1|2] [--create] [--capacity BYTES] [--start SEQ]
//             [--kill-self-after K]
//
//   xlang-cpp respond --socket S --topic T --count N [--kill-self-before-reply K]
//   xlang-cpp request --socket S --topic T --count N [--from F] [--timeout-ms MS]
//             [--expect-timeout-at K]
// (request/response through shmbusd; the exchange is specified in
// docs/xlang-scenario.md, "Request/response", and is the same in every language)
//
//   xlang-cpp schema-open --socket S --topic T
//   Durable topics: consume --earliest --log-dir <state-dir>/log replays from the
//   oldest message the log retains; produce --wait-durable waits until the last
//   message is durable.
// opens a publisher and a subscriber presenting the compiled Quote (the schema
// registry) and prints "PUBLISHER ok|refused: <error>" and "SUBSCRIBER ok|refused: <error>".
// produce/consume take --socket S (through shmbusd instead of --prefix) and
// --present-schema (present the compiled Quote/Order at open).
//
// Producers build every message in place (MessageClaim: the builder's first segment
// is ring memory); consumers read in place (MessageReader) and check every field.
#include <capnp/message.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "market.capnp.h"
#include "market_v2.capnp.h"
#include "shmbus/message.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/request.hpp"
#include "shmbus/schema_nodes.hpp"
#include "shmbus/shmbus.hpp"

namespace {

namespace v1 = shmbus::schema;
namespace v2 = shmbus::schema::v2;

constexpr int64_t kPx0 = 10000000000LL;

struct Args {
  std::string cmd, prefix, topic;
  uint64_t count = 0;
  bool quote = true;
  int version = 1;
  uint64_t timeout_ms = 10000;
  bool create = false;
  uint64_t capacity = 4u << 20;
  uint64_t start = 1;
  uint64_t kill_self_after = 0;  // 0: never
  bool allow_truncated = false;
  std::string socket;                       // respond/request: shmbusd's socket
  uint64_t from = 0;                        // request: first request index
  uint64_t kill_self_before_reply = 0;      // respond: SIGKILL on taking request K (1-based)
  uint64_t expect_timeout_at = UINT64_MAX;  // request: index whose responder dies
  bool present_schema = false;              // present the compiled schema at open
  bool earliest = false;                    // consume: replay a durable topic from its oldest message
  std::string log_dir;                      // consume --earliest: the daemon's log dir (<state-dir>/log)
  bool wait_durable = false;                // produce: wait until the last message is durable
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "%s\nusage: xlang-cpp consume|produce --prefix P --topic T --count N "
               "--schema quote|order [--schema-version 1|2] [--timeout-ms MS] [--create] "
               "[--capacity BYTES] [--start SEQ] [--kill-self-after K] [--allow-truncated] "
               "[--socket S] [--present-schema] [--earliest --log-dir DIR] [--wait-durable]\n",
               why);
  std::exit(64);
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) usage("missing command");
  a.cmd = argv[1];
  if (a.cmd != "consume" && a.cmd != "produce" && a.cmd != "respond" && a.cmd != "request" &&
      a.cmd != "schema-open")
    usage("unknown command");
  auto need = [&](int& i) -> const char* {
    if (i + 1 >= argc) usage("flag needs a value");
    return argv[++i];
  };
  auto num = [&](int& i) -> uint64_t { return std::strtoull(need(i), nullptr, 10); };
  for (int i = 2; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "--prefix")
      a.prefix = need(i);
    else if (f == "--topic")
      a.topic = need(i);
    else if (f == "--socket")
      a.socket = need(i);
    else if (f == "--from")
      a.from = num(i);
    else if (f == "--kill-self-before-reply")
      a.kill_self_before_reply = num(i);
    else if (f == "--expect-timeout-at")
      a.expect_timeout_at = num(i);
    else if (f == "--count")
      a.count = num(i);
    else if (f == "--schema") {
      std::string s = need(i);
      if (s == "quote")
        a.quote = true;
      else if (s == "order")
        a.quote = false;
      else
        usage("--schema quote|order");
    } else if (f == "--schema-version") {
      a.version = int(num(i));
      if (a.version != 1 && a.version != 2) usage("--schema-version 1|2");
    } else if (f == "--timeout-ms")
      a.timeout_ms = num(i);
    else if (f == "--create")
      a.create = true;
    else if (f == "--capacity")
      a.capacity = num(i);
    else if (f == "--start")
      a.start = num(i);
    else if (f == "--kill-self-after")
      a.kill_self_after = num(i);
    else if (f == "--allow-truncated")
      a.allow_truncated = true;
    else if (f == "--present-schema")
      a.present_schema = true;
    else if (f == "--earliest")
      a.earliest = true;
    else if (f == "--log-dir")
      a.log_dir = need(i);
    else if (f == "--wait-durable")
      a.wait_durable = true;
    else
      usage(("unknown flag " + f).c_str());
  }
  if (a.cmd == "schema-open") a.present_schema = true;
  if (a.cmd == "respond" || a.cmd == "request" || a.cmd == "schema-open") {
    if (a.socket.empty() || a.topic.empty()) usage("--socket and --topic are required");
  } else if ((a.prefix.empty() && a.socket.empty()) || a.topic.empty()) {
    usage("--prefix and --topic are required");
  }
  return a;
}

void create_topic(shmbus::Bus& bus, const Args& a) {
  shmbus::TopicConfig cfg;
  cfg.capacity = a.capacity;
  cfg.policy = shmbus::Policy::block;
  cfg.multi_producer = false;
  try {
    bus.create_topic(a.topic, cfg);
  } catch (const shmbus::Error& e) {
    // Created by the other side with other settings: use it as it is.
    if (e.code() != shmbus::ErrorCode::already_exists && e.code() != shmbus::ErrorCode::incompatible) throw;
  }
}

// The bus: through shmbusd with --socket, else direct on --prefix.
shmbus::Bus open_bus(const Args& a) {
  return a.socket.empty() ? shmbus::Bus::direct({.shm_prefix = a.prefix}) : shmbus::Bus::connect(a.socket);
}

// The compiled schema of what this run sends or reads (--present-schema).
shmbus::SchemaNodes own_schema(const Args& a) {
  if (!a.present_schema) return {};
  if (a.quote) return a.version == 1 ? shmbus::with_schema<v1::Quote>() : shmbus::with_schema<v2::Quote>();
  return a.version == 1 ? shmbus::with_schema<v1::Order>() : shmbus::with_schema<v2::Order>();
}

// Opens a publisher and a subscriber presenting the compiled schema; prints what each did.
int schema_open(const Args& a) {
  shmbus::Bus bus = open_bus(a);
  try {
    shmbus::PublisherOptions po;
    po.schema = own_schema(a);
    shmbus::Publisher pub = bus.publisher(a.topic, po);
    std::printf("PUBLISHER ok\n");
  } catch (const shmbus::Error& e) {
    std::printf("PUBLISHER refused: %s\n", e.what());
  }
  try {
    shmbus::SubscriberOptions so;
    so.schema = own_schema(a);
    shmbus::Subscriber sub = bus.subscriber(a.topic, so);
    std::printf("SUBSCRIBER ok\n");
  } catch (const shmbus::Error& e) {
    std::printf("SUBSCRIBER refused: %s\n", e.what());
  }
  return 0;
}

std::string account(uint64_t i) { return "acct-" + std::to_string(i % 10); }

// ---- producer -------------------------------------------------------------------

template <class Q>
void fill_quote(typename Q::Builder q, uint64_t i) {
  q.setInstrumentId(uint32_t(i % 1000));
  q.setBidPx(kPx0 + int64_t(i));
  q.setAskPx(kPx0 + int64_t(i) + 100);
  q.setBidQty(uint32_t(i % 500 + 1));
  q.setAskQty(uint32_t(i % 700 + 1));
  q.setExchangeTsNs(i * 1000);
  q.setSeq(i);
}

template <class O, class Side>
void fill_order(typename O::Builder o, uint64_t i) {
  o.setOrderId(i);
  o.setInstrumentId(uint32_t(i % 1000));
  o.setSide(i % 2 == 0 ? Side::BUY : Side::SELL);
  o.setPx(kPx0 + int64_t(i));
  o.setQty(uint32_t(i % 100 + 1));
  o.setQuoteSeq(i);
  o.setQuoteTsNs(i * 7);
  o.setAccount(account(i));
}

int produce(const Args& a) {
  shmbus::Bus bus = open_bus(a);
  if (a.create) create_topic(bus, a);
  shmbus::PublisherOptions po;
  po.schema = own_schema(a);
  shmbus::Publisher pub = bus.publisher(a.topic, po);
  uint64_t fallbacks = 0;
  for (uint64_t k = 0; k < a.count; ++k) {
    uint64_t i = a.start + k;
    for (int tries = 0;; ++tries) {
      shmbus::MessageClaim m(pub, 256);
      if (!m) {
        if (m.status() == shmbus::Status::back_pressured && tries < 30) continue;
        std::printf("FAIL claim seq %llu: %s\n", (unsigned long long)i, shmbus::to_string(m.status()));
        return 1;
      }
      shmbus::Status s;
      if (a.quote && a.version == 1) {
        fill_quote<v1::Quote>(m.init_root<v1::Quote>(), i);
        s = m.commit_as<v1::Quote>(i);
      } else if (a.quote) {
        auto q = m.init_root<v2::Quote>();
        fill_quote<v2::Quote>(q, i);
        q.setVenue(i % 2 == 0 ? "XNAS" : "XNYS");
        q.setMidPx(kPx0 + int64_t(i) + 50);
        s = m.commit_as<v2::Quote>(i);
      } else if (a.version == 1) {
        fill_order<v1::Order, v1::Side>(m.init_root<v1::Order>(), i);
        s = m.commit_as<v1::Order>(i);
      } else {
        auto o = m.init_root<v2::Order>();
        fill_order<v2::Order, v2::Side>(o, i);
        o.setClientTag(uint32_t(i % 65536));
        s = m.commit_as<v2::Order>(i);
      }
      if (s != shmbus::Status::ok) {
        std::printf("FAIL commit seq %llu: %s\n", (unsigned long long)i, shmbus::to_string(s));
        return 1;
      }
      fallbacks += m.fell_back();
      break;
    }
    if (a.kill_self_after != 0 && k + 1 == a.kill_self_after) {
      std::fflush(stdout);
      raise(SIGKILL);
    }
  }
  if (a.wait_durable) {
    // One producer on a fresh topic: the partition's sequence is the message number.
    uint64_t last = a.start + a.count - 1;
    if (shmbus::Status s = pub.wait_durable(last, 60'000'000'000); s != shmbus::Status::ok) {
      std::printf("FAIL wait durable %llu: %s\n", (unsigned long long)last, shmbus::to_string(s));
      return 1;
    }
  }
  std::printf("OK produced=%llu fallbacks=%llu\n", (unsigned long long)a.count,
              (unsigned long long)fallbacks);
  return 0;
}

// ---- consumer ---------------------------------------------------------------------

struct Mismatch {
  std::string what;
};

template <class T>
void eq(const char* field, T got, T want) {
  if (!(got == want))
    throw Mismatch{std::string(field) + " = " + std::to_string(got) + ", want " + std::to_string(want)};
}
void eq_text(const char* field, capnp::Text::Reader got, const std::string& want) {
  if (std::string(got.cStr(), got.size()) != want)
    throw Mismatch{std::string(field) + " = \"" + got.cStr() + "\", want \"" + want + "\""};
}

template <class Q>
void check_quote(typename Q::Reader q, uint64_t i) {
  eq("seq", q.getSeq(), i);
  eq("instrumentId", q.getInstrumentId(), uint32_t(i % 1000));
  eq("bidPx", q.getBidPx(), kPx0 + int64_t(i));
  eq("askPx", q.getAskPx(), kPx0 + int64_t(i) + 100);
  eq("bidQty", q.getBidQty(), uint32_t(i % 500 + 1));
  eq("askQty", q.getAskQty(), uint32_t(i % 700 + 1));
  eq("exchangeTsNs", q.getExchangeTsNs(), i * 1000);
}

template <class O, class Side>
void check_order(typename O::Reader o, uint64_t i) {
  eq("orderId", o.getOrderId(), i);
  eq("instrumentId", o.getInstrumentId(), uint32_t(i % 1000));
  eq("side", int(o.getSide()), int(i % 2 == 0 ? Side::BUY : Side::SELL));
  eq("px", o.getPx(), kPx0 + int64_t(i));
  eq("qty", o.getQty(), uint32_t(i % 100 + 1));
  eq("quoteSeq", o.getQuoteSeq(), i);
  eq("quoteTsNs", o.getQuoteTsNs(), i * 7);
  eq_text("account", o.getAccount(), account(i));
}

void check(const Args& a, const shmbus::View& v, uint64_t i) {
  eq("message_id", v.message_id(), i);
  shmbus::MessageReader r(v);
  if (!r) throw Mismatch{"malformed segment table"};
  uint64_t sid = v.schema_id();
  if (a.quote) {
    bool from_v2 = sid == capnp::typeId<v2::Quote>();
    if (!from_v2 && sid != capnp::typeId<v1::Quote>()) throw Mismatch{"schema_id is not a Quote"};
    if (a.version == 1) {
      check_quote<v1::Quote>(r.root<v1::Quote>(), i);
    } else {
      auto q = r.root<v2::Quote>();
      check_quote<v2::Quote>(q, i);
      eq_text("venue", q.getVenue(), from_v2 ? (i % 2 == 0 ? "XNAS" : "XNYS") : "");
      eq("midPx", q.getMidPx(), from_v2 ? kPx0 + int64_t(i) + 50 : int64_t(0));
    }
  } else {
    bool from_v2 = sid == capnp::typeId<v2::Order>();
    if (!from_v2 && sid != capnp::typeId<v1::Order>()) throw Mismatch{"schema_id is not an Order"};
    if (a.version == 1) {
      check_order<v1::Order, v1::Side>(r.root<v1::Order>(), i);
    } else {
      auto o = r.root<v2::Order>();
      check_order<v2::Order, v2::Side>(o, i);
      eq("clientTag", o.getClientTag(), from_v2 ? uint32_t(i % 65536) : uint32_t(0));
    }
  }
}

template <class Sub>
int consume_from(const Args& a, Sub& sub);

int consume(const Args& a) {
  shmbus::Bus bus = open_bus(a);
  create_topic(bus, a);
  if (a.earliest) {  // a durable topic, from the oldest message its log retains
    if (a.log_dir.empty()) usage("--earliest needs --log-dir");
    shmbus::ReplayOptions ro;
    ro.start = shmbus::StartAt::earliest();
    ro.state_dir = a.log_dir;
    shmbus::ReplaySubscriber sub = shmbus::replay_subscriber(bus, a.topic, ro);
    int rc = consume_from(a, sub);
    const shmbus::ReplayStats& st = sub.stats();
    std::printf("REPLAY from_log=%llu from_ring=%llu handovers=%llu gaps=%llu\n",
                (unsigned long long)st.from_log, (unsigned long long)st.from_ring,
                (unsigned long long)st.handovers, (unsigned long long)st.gaps);
    return rc;
  }
  shmbus::SubscriberOptions so;
  so.schema = own_schema(a);
  shmbus::Subscriber sub = bus.subscriber(a.topic, so);
  return consume_from(a, sub);
}

template <class Sub>
int consume_from(const Args& a, Sub& sub) {
  std::printf("READY\n");
  std::fflush(stdout);

  const int64_t timeout_ns = int64_t(a.timeout_ms) * 1000000;
  uint64_t received = 0;
  while (received < a.count) {
    shmbus::View v;
    shmbus::Status s = sub.poll_wait(v, timeout_ns);
    if (s == shmbus::Status::timed_out) {
      if (a.allow_truncated) {
        std::printf("OK received=%llu\n", (unsigned long long)received);
        return 0;
      }
      std::printf("FAIL timeout received=%llu\n", (unsigned long long)received);
      return 2;
    }
    if (s != shmbus::Status::ok) {
      std::printf("FAIL poll: %s\n", shmbus::to_string(s));
      return 1;
    }
    // Take what else is there (up to a batch), then release them together.
    for (int n = 0;; ++n) {
      uint64_t i = a.start + received;
      try {
        check(a, v, i);
      } catch (const Mismatch& m) {
        std::printf("FAIL seq %llu: %s\n", (unsigned long long)i, m.what.c_str());
        return 1;
      } catch (const kj::Exception& e) {
        std::printf("FAIL seq %llu: %s\n", (unsigned long long)i, e.getDescription().cStr());
        return 1;
      }
      ++received;
      if (n == 1023 || received == a.count || sub.poll(v) != shmbus::Status::ok) break;
    }
    sub.release_all();
  }
  // Exactly N: anything further that is already there is a duplicate or extra.
  shmbus::View extra;
  if (sub.poll(extra) == shmbus::Status::ok) {
    std::printf("FAIL more than %llu messages (message_id %llu)\n", (unsigned long long)a.count,
                (unsigned long long)extra.message_id());
    return 1;
  }
  std::printf("OK received=%llu\n", (unsigned long long)received);
  return 0;
}

// ---- request/response (docs/xlang-scenario.md, "Request/response") ------------------
constexpr uint64_t kReqSchema0 = 0x1000, kReplySchemaDelta = 0x10000;

std::vector<std::byte> request_payload(uint64_t i) {
  std::vector<std::byte> p((i * 37) % 1500);
  for (size_t j = 0; j < p.size(); ++j) p[j] = std::byte((i * 131 + j * 7 + 3) & 0xff);
  return p;
}

std::vector<std::byte> reply_payload(std::span<const std::byte> req, uint64_t corr) {
  std::vector<std::byte> p(req.size() + 8);
  for (size_t j = 0; j < req.size(); ++j) p[j] = req[j] ^ std::byte{0xa5};
  for (int k = 0; k < 8; ++k) p[req.size() + size_t(k)] = std::byte((corr >> (8 * k)) & 0xff);
  return p;
}

uint32_t reply_status(uint64_t i) { return 200 + uint32_t(i % 100); }

int64_t mono_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int respond(const Args& a) {
  shmbus::Bus bus = shmbus::Bus::connect(a.socket);
  bus.create_topic(a.topic, {.capacity = 1u << 20, .multi_producer = true});
  std::string fail;
  uint64_t taken = 0, answered = 0;
  shmbus::Responder resp(bus, a.topic, [&](const shmbus::View& q, const shmbus::Envelope& e) {
    ++taken;
    if (taken == a.kill_self_before_reply) {
      std::fflush(stdout);
      kill(getpid(), SIGKILL);  // holding the request, before any reply
    }
    const uint64_t s = q.schema_id();
    const uint64_t i = s - kReqSchema0;
    const auto want = request_payload(i);
    if (fail.empty() && (e.correlation_id == 0 || e.reply_to.rfind("reply.", 0) != 0 || s < kReqSchema0 ||
                         q.size() != want.size() || std::memcmp(q.data(), want.data(), want.size()) != 0))
      fail = "request " + std::to_string(i) + " is not what was specified";
    ++answered;
    return shmbus::Response{.payload = reply_payload({q.data(), q.size()}, e.correlation_id),
                            .schema_id = s + kReplySchemaDelta,
                            .status = reply_status(i)};
  });
  std::printf("READY\n");
  std::fflush(stdout);
  const int64_t t0 = mono_ms();
  while (answered < a.count && fail.empty() && mono_ms() - t0 < int64_t(a.timeout_ms) * 10)
    resp.step(100'000'000);
  if (!fail.empty()) {
    std::printf("FAIL %s\n", fail.c_str());
    return 1;
  }
  std::printf("%s answered=%llu replied=%llu\n", answered == a.count ? "OK" : "FAIL",
              (unsigned long long)answered, (unsigned long long)resp.stats().replied);
  return answered == a.count ? 0 : 1;
}

int request(const Args& a) {
  shmbus::Bus bus = shmbus::Bus::connect(a.socket);
  shmbus::Requester req(bus);
  uint64_t replies = 0, timeouts = 0;
  for (uint64_t i = a.from; i < a.from + a.count; ++i) {
    const auto p = request_payload(i);
    uint64_t corr = 0;
    const shmbus::Status st = req.send(a.topic, p, corr, kReqSchema0 + i);
    if (st != shmbus::Status::ok) {
      std::printf("FAIL send %llu: %s\n", (unsigned long long)i, shmbus::to_string(st));
      return 1;
    }
    shmbus::Reply r;
    const int64_t t0 = mono_ms();
    const shmbus::Status s = req.await(corr, int64_t(a.timeout_ms) * 1'000'000, r);
    const int64_t took = mono_ms() - t0;
    if (i == a.expect_timeout_at) {
      if (s != shmbus::Status::timed_out || took < int64_t(a.timeout_ms) ||
          took > int64_t(a.timeout_ms) + 300) {
        std::printf("FAIL request %llu: %s after %lld ms, want a timeout after %llu ms (+300)\n",
                    (unsigned long long)i, shmbus::to_string(s), (long long)took,
                    (unsigned long long)a.timeout_ms);
        return 1;
      }
      ++timeouts;
      std::printf("TIMED_OUT ms=%lld\n", (long long)took);
      std::fflush(stdout);
      char line[64];
      if (!std::fgets(line, sizeof line, stdin)) {
        std::printf("FAIL no go-ahead after the timeout\n");
        return 1;
      }
      continue;
    }
    if (s != shmbus::Status::ok) {
      std::printf("FAIL request %llu: %s after %lld ms\n", (unsigned long long)i, shmbus::to_string(s),
                  (long long)took);
      return 1;
    }
    const auto want = reply_payload(p, corr);
    if (r.envelope.correlation_id != corr || r.envelope.causation_id == 0 ||
        r.envelope.status != reply_status(i) || r.payload_schema_id != kReqSchema0 + i + kReplySchemaDelta ||
        r.payload != want) {
      std::printf("FAIL reply %llu differs (status %u, schema %llx, %zu bytes)\n", (unsigned long long)i,
                  r.envelope.status, (unsigned long long)r.payload_schema_id, r.payload.size());
      return 1;
    }
    ++replies;
  }
  std::printf("OK replies=%llu timeouts=%llu\n", (unsigned long long)replies, (unsigned long long)timeouts);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  try {
    if (a.cmd == "respond") return respond(a);
    if (a.cmd == "request") return request(a);
    if (a.cmd == "schema-open") return schema_open(a);
    return a.cmd == "consume" ? consume(a) : produce(a);
  } catch (const std::exception& e) {
    std::printf("FAIL %s\n", e.what());
    return 1;
  } catch (const kj::Exception& e) {
    std::printf("FAIL %s\n", e.getDescription().cStr());
    return 1;
  }
}
