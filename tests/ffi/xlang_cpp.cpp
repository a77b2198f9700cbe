// xlang-cpp: the C++ side of the cross-language scenario (docs/xlang-scenario.md),
// on the C++ API (lib/) directly.
//
//   xlang-cpp consume --prefix P --topic T --count N --schema quote|order
//             [--schema-version 1|2] [--timeout-ms 10000] [--start SEQ] [--allow-truncated]
//   xlang-cpp produce --prefix P --topic T --count N --schema quote|order
//             [--schema-version 1|2] [--create] [--capacity BYTES] [--start SEQ]
//             [--kill-self-after K]
//
// Producers build every message in place (MessageClaim: the builder's first segment
// is ring memory); consumers read in place (MessageReader) and check every field.
#include <capnp/message.h>
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "market.capnp.h"
#include "market_v2.capnp.h"
#include "shmbus/message.hpp"
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
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "%s\nusage: xlang-cpp consume|produce --prefix P --topic T --count N "
               "--schema quote|order [--schema-version 1|2] [--timeout-ms MS] [--create] "
               "[--capacity BYTES] [--start SEQ] [--kill-self-after K] [--allow-truncated]\n",
               why);
  std::exit(64);
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) usage("missing command");
  a.cmd = argv[1];
  if (a.cmd != "consume" && a.cmd != "produce") usage("unknown command");
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
    else
      usage(("unknown flag " + f).c_str());
  }
  if (a.prefix.empty() || a.topic.empty()) usage("--prefix and --topic are required");
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
  shmbus::Bus bus = shmbus::Bus::direct({.shm_prefix = a.prefix});
  if (a.create) create_topic(bus, a);
  shmbus::Publisher pub = bus.publisher(a.topic);
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

int consume(const Args& a) {
  shmbus::Bus bus = shmbus::Bus::direct({.shm_prefix = a.prefix});
  create_topic(bus, a);
  shmbus::Subscriber sub = bus.subscriber(a.topic);
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

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  try {
    return a.cmd == "consume" ? consume(a) : produce(a);
  } catch (const std::exception& e) {
    std::printf("FAIL %s\n", e.what());
    return 1;
  } catch (const kj::Exception& e) {
    std::printf("FAIL %s\n", e.getDescription().cStr());
    return 1;
  }
}
