// The operator tools of the `shmbus` command against a real shmbusd: pub (JSON encoded
// with the registered schema), record / play (docs/record-format.md), bench and group.
// Each runs as the real binary; its output is checked against what the bus holds.
#include <sys/stat.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cinttypes>
#include <fstream>
#include <sstream>

#include "daemon_util.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/group.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/spill_format.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

struct Run {
  int rc = -1;
  std::string out, err;
};

// The shmbus tool, to completion: exit code, stdout, stderr. The daemon is found
// through SHMBUS_SOCKET (every tool honours it), not --socket.
Run cli(const DaemonProc& d, std::vector<std::string> args) {
  static int n = 0;
  const std::string err_file = d.dir + "/cli" + std::to_string(n++) + ".err";
  args.insert(args.begin(), SHMBUS_TEST_CLI);
  Child c(args, err_file, {"SHMBUS_SOCKET=" + d.sock});
  Run r;
  r.out = c.read_all(30000);
  const int st = c.wait(30000);
  r.rc = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(err_file);
  std::stringstream ss;
  ss << f.rdbuf();
  r.err = ss.str();
  return r;
}

const char* kOrders =
    "@0xd1a5e0c0ffee0001;\n"
    "struct Order @0xc0ffee0000000001 {\n"
    "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Float64;\n  qty @3 :UInt16;\n"
    "  side @4 :Side;\n  lines @5 :List(Line);\n"
    "  enum Side { buy @0; sell @1; }\n"
    "  struct Line { sku @0 :Text; n @1 :UInt32; }\n"
    "}\n";

std::string write_orders(const DaemonProc& d) {
  std::ofstream(d.dir + "/orders.capnp") << kOrders;
  return d.dir + "/orders.capnp:Order";
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(l);
  return v;
}

// The value after "key": in a JSON line (up to , or }), "" when absent.
std::string jfield(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  const size_t at = line.find(k);
  if (at == std::string::npos) return "";
  size_t e = at + k.size();
  if (line[e] == '{' || line[e] == '[') {
    int depth = 0;
    size_t i = e;
    for (; i < line.size(); ++i) {
      if (line[i] == '{' || line[i] == '[') ++depth;
      if (line[i] == '}' || line[i] == ']') --depth;
      if (depth == 0) break;
    }
    return line.substr(e, i + 1 - e);
  }
  const size_t end = line.find_first_of(",}", e);
  return line.substr(e, end - e);
}

double jnum(const std::string& line, const std::string& key) {
  const std::string v = jfield(line, key);
  REQUIRE(!v.empty());
  return std::stod(v);
}

uint64_t next_seq(const DaemonProc& d, const std::string& topic) {
  auto c = DaemonClient::connect({d.sock, 5000, 0});
  auto st = c->call([&](proto::Request::Builder r) { r.setStat(topic); });
  for (auto ts : st.get().getStats())
    for (auto ps : ts.getPartitions())
      if (ps.getPartition() == 0) return ps.getNextSequence();
  return 0;
}

std::vector<uint8_t> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

}  // namespace

TEST_CASE(
    "shmbus pub: JSON encoded with the registered schema reaches replay; a bad field is named, nothing sent",
    "[cli]") {
  DaemonProc d("clipub");
  REQUIRE(d.start());
  const std::string schema = write_orders(d);
  REQUIRE(cli(d, {"topic", "create", "orders", "--capacity", "65536", "--durable"}).rc == 0);

  // No schema registered, none given: refused, saying how to give one.
  Run r = cli(d, {"pub", "orders", "--json", "{\"id\":1}"});
  CHECK(r.rc == 1);
  CHECK(r.err.find("shmbus: topic 'orders' has no registered schema") == 0);

  REQUIRE(cli(d, {"schema", "register", "orders", schema}).rc == 0);
  r = cli(d, {"pub", "orders", "--json",
              "{\"id\":\"7\",\"symbol\":\"XYZ\",\"price\":1.5,\"side\":\"sell\",\"lines\":[{\"sku\":\"a\","
              "\"n\":3}]}",
              "--count", "2"});
  REQUIRE(r.rc == 0);
  CHECK(r.out == "published 2 messages to orders[0] (seq 1-2, orders.Order 0xc0ffee0000000001)\n");
  r = cli(d, {"--json", "pub", "orders", "--json", "{\"id\":8,\"qty\":65535}", "--message-id", "42"});
  REQUIRE(r.rc == 0);
  CHECK(r.out ==
        "{\"topic\":\"orders\",\"partition\":0,\"published\":1,\"first_seq\":3,\"last_seq\":3,"
        "\"schema_id\":\"0xc0ffee0000000001\",\"type\":\"orders.Order\",\"enveloped\":false}\n");

  // Each mistake names the field and what was wrong; nothing is published.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{\"id\":1,\"symbl\":\"X\"}",
       "unknown field 'symbl': Order has id, symbol, price, qty, side, lines (schema orders.Order)"},
      {"{\"qty\":65536}", "field 'qty' (UInt16): 65536 is out of range (schema orders.Order)"},
      {"{\"lines\":[{\"sku\":\"a\"},{\"n\":-1}]}",
       "field 'lines[1].n' (UInt32): -1 is out of range (schema orders.Order)"},
      {"{\"lines\":[{\"skew\":\"a\"}]}",
       "unknown field 'lines[0].skew': Line has sku, n (schema orders.Order)"},
      {"{\"side\":\"hold\"}",
       "field 'side' (Side): no enumerant 'hold' (it has buy, sell) (schema orders.Order)"},
      {"{\"price\":\"cheap\"}",
       "field 'price' (Float64): expected a number (or \"NaN\", \"Infinity\"), got a string (schema "
       "orders.Order)"},
      {"{\"symbol\":5}", "field 'symbol' (Text): expected a string, got a number (schema orders.Order)"},
      {"{\"id\":1.5}", "field 'id' (UInt64): 1.500000 is not an integer (schema orders.Order)"},
      {"[1,2]", "expected a JSON object for orders.Order, got an array"},
  };
  for (auto& [json, why] : bad) {
    INFO(json);
    r = cli(d, {"pub", "orders", "--json", json});
    CHECK(r.rc == 1);
    CHECK(r.err == "shmbus: " + why + "\n");
  }
  r = cli(d, {"pub", "orders", "--json", "{\"id\":1,"});
  CHECK(r.rc == 1);
  CHECK(r.err.find("shmbus: not JSON: ") == 0);
  CHECK(next_seq(d, "orders") == 4);

  // A file of messages, one per line: the second one is bad, so none is sent.
  std::ofstream(d.dir + "/in.jsonl") << "{\"id\":10}\n\n{\"id\":11,\"nope\":1}\n";
  r = cli(d, {"pub", "orders", "--json-file", d.dir + "/in.jsonl"});
  CHECK(r.rc == 1);
  CHECK(r.err.find("shmbus: message 2: unknown field 'nope'") == 0);
  CHECK(next_seq(d, "orders") == 4);
  std::ofstream(d.dir + "/in.jsonl") << "{\"id\":10}\n\n{\"id\":11,\"symbol\":\"B\"}\n";
  r = cli(d, {"pub", "orders", "--json-file", d.dir + "/in.jsonl"});
  CHECK(r.rc == 0);
  CHECK(r.out.find("published 2 messages to orders[0] (seq 4-5,") == 0);

  // What replay decodes is what was written.
  r = cli(d, {"replay", "orders", "--count", "5"});
  REQUIRE(r.rc == 0);
  auto ls = lines_of(r.out);
  REQUIRE(ls.size() == 5);
  const std::string first =
      "{\"id\":\"7\",\"symbol\":\"XYZ\",\"price\":1.5,\"qty\":0,\"side\":\"sell\",\"lines\":[{\"sku\":\"a\","
      "\"n\":3}]}";
  CHECK(jfield(ls[0], "message") == first);
  CHECK(jfield(ls[1], "message") == first);
  CHECK(jfield(ls[2], "message") == "{\"id\":\"8\",\"price\":0,\"qty\":65535,\"side\":\"buy\"}");
  CHECK(jfield(ls[2], "message_id") == "\"0x000000000000002a\"");
  CHECK(jfield(ls[4], "message") ==
        "{\"id\":\"11\",\"symbol\":\"B\",\"price\":0,\"qty\":0,\"side\":\"buy\"}");
  for (auto& l : ls) CHECK(jfield(l, "schema_id") == "\"0xc0ffee0000000001\"");

  // Inside an envelope: the envelope's fields and the payload decoded by its own id.
  r = cli(d, {"pub", "orders", "--json", "{\"id\":12}", "--correlation-id", "17", "--reply-to", "reply.x",
              "--traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"});
  REQUIRE(r.rc == 0);
  CHECK(r.out == "published 1 enveloped message to orders[0] (orders.Order 0xc0ffee0000000001)\n");
  r = cli(d, {"pub", "orders", "--json", "{\"id\":12}", "--traceparent", "00-00-00-01"});
  CHECK(r.rc == 1);
  CHECK(r.err.find("shmbus: --traceparent: expected 00-<32 hex>-<16 hex>-<2 hex>") == 0);
  r = cli(d, {"replay", "orders", "--from", "seq:6", "--count", "1"});
  REQUIRE(r.rc == 0);
  CHECK(jfield(r.out, "envelope")
            .find("{\"correlationId\":\"0x0000000000000011\",\"causationId\":\"0x0000000000000000\","
                  "\"replyTo\":\"reply.x\","
                  "\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"") == 0);
  CHECK(jfield(r.out, "message") == "{\"id\":\"12\",\"price\":0,\"qty\":0,\"side\":\"buy\"}");
  CHECK(next_seq(d, "orders") == 7);

  // --schema on a topic with none registered: encoded with the file and registered
  // at open; --key picks a partition, the same one each time.
  REQUIRE(cli(d, {"topic", "create", "fresh", "--capacity", "65536", "--partitions", "4"}).rc == 0);
  r = cli(d, {"--json", "pub", "fresh", "--schema", schema, "--json", "{\"id\":1}", "--key", "acct-17"});
  REQUIRE(r.rc == 0);
  const std::string part = jfield(r.out, "partition");
  r = cli(d, {"--json", "pub", "fresh", "--json", "{\"id\":2}", "--key", "acct-17"});
  REQUIRE(r.rc == 0);
  CHECK(jfield(r.out, "partition") == part);
  CHECK(jfield(r.out, "first_seq") == "2");
  CHECK(cli(d, {"schema", "history", "fresh"}).out.find("orders.Order 0xc0ffee0000000001") !=
        std::string::npos);
  r = cli(d, {"pub", "fresh", "--json", "{}", "--partition", "4"});
  CHECK(r.rc == 1);
  CHECK(r.err == "shmbus: topic 'fresh' has no partition 4 (it has 4)\n");
}

TEST_CASE("shmbus record and play: the same payloads in order on another topic, paced; bad files refused",
          "[cli]") {
  DaemonProc d("clirec");
  REQUIRE(d.start());
  const std::string schema = write_orders(d);
  REQUIRE(
      cli(d, {"topic", "create", "orders", "--capacity", "262144", "--partitions", "2", "--durable"}).rc ==
      0);
  REQUIRE(cli(d, {"topic", "create", "quotes", "--capacity", "262144", "--durable"}).rc == 0);
  REQUIRE(cli(d, {"topic", "create", "copy", "--capacity", "262144", "--partitions", "2", "--durable"}).rc ==
          0);
  REQUIRE(cli(d, {"topic", "create", "copy2", "--capacity", "262144", "--durable"}).rc == 0);
  REQUIRE(cli(d, {"schema", "register", "orders", schema}).rc == 0);
  const std::string file = d.dir + "/orders.rec";

  Child rec({SHMBUS_TEST_CLI, "record", "orders", "quotes", "-o", file, "--count", "14"}, d.dir + "/rec.err",
            {"SHMBUS_SOCKET=" + d.sock});
  REQUIRE(rec.await("recording", 20000) == "2 topics, 3 partitions to " + file);
  // 10 orders paced at 20 Hz (inter-arrival 50 ms), on both partitions, and 4 raw quotes.
  REQUIRE(
      cli(d, {"pub", "orders", "--json", "{\"id\":1,\"symbol\":\"A\"}", "--count", "5", "--rate", "20"}).rc ==
      0);
  REQUIRE(cli(d, {"pub", "orders", "--json", "{\"id\":2,\"symbol\":\"B\"}", "--count", "5", "--rate", "20",
                  "--partition", "1"})
              .rc == 0);
  {
    Bus bus = Bus::connect(d.sock);
    Publisher p = bus.publisher("quotes");
    for (uint64_t i = 0; i < 4; ++i) {
      const std::string s = "quote-" + std::to_string(i);
      REQUIRE(p.offer(s.data(), s.size(), 100 + i, 0) == Status::ok);
    }
  }
  REQUIRE(rec.finish(30000) >= 0);
  REQUIRE(rec.ok());
  CHECK(rec.fact("recorded").find("14 messages (2 topics, 3 partitions) to " + file + " in ") == 0);

  Run r = cli(d, {"--json", "play", file, "--check"});
  REQUIRE(r.rc == 0);
  CHECK(jfield(r.out, "records") == "14");
  CHECK(jfield(r.out, "complete") == "true");
  CHECK(
      r.out.find("{\"topic\":\"orders\",\"partitions\":2,\"records\":10,\"schema_id\":\"0xc0ffee0000000001\","
                 "\"type\":\"orders.Order\"}") != std::string::npos);
  CHECK(
      r.out.find("{\"topic\":\"quotes\",\"partitions\":1,\"records\":4,\"schema_id\":\"0x0000000000000000\","
                 "\"type\":\"\"}") != std::string::npos);
  const double recorded_s = jnum(r.out, "duration_ns") / 1e9;
  CHECK(recorded_s >= 0.2);  // 5 messages 50 ms apart, at least

  // Played at the recorded pace onto other topics: the schema comes along (registered
  // on the target), the payloads, ids and order are the recorded ones.
  r = cli(d, {"--json", "play", file, "--topic-map", "orders=copy", "--topic-map", "quotes=copy2"});
  REQUIRE(r.rc == 0);
  CHECK(jfield(r.out, "played") == "14");
  CHECK(jnum(r.out, "seconds") >= recorded_s * 0.9);
  CHECK(cli(d, {"schema", "history", "copy"}).out.find("orders.Order 0xc0ffee0000000001") !=
        std::string::npos);
  for (const char* p : {"0", "1"}) {
    Run a = cli(d, {"replay", "orders", "--partition", p, "--count", "5"});
    Run b = cli(d, {"replay", "copy", "--partition", p, "--count", "5"});
    auto la = lines_of(a.out), lb = lines_of(b.out);
    REQUIRE(la.size() == 5);
    REQUIRE(lb.size() == 5);
    for (size_t i = 0; i < 5; ++i) {
      CHECK(jfield(lb[i], "message") == jfield(la[i], "message"));
      CHECK(jfield(lb[i], "schema_id") == "\"0xc0ffee0000000001\"");
    }
    CHECK(jfield(lb[0], "message").find(std::string("\"id\":\"") + (p[0] == '0' ? "1" : "2")) !=
          std::string::npos);
  }
  auto lq = lines_of(cli(d, {"replay", "copy2", "--count", "4"}).out);
  auto lo = lines_of(cli(d, {"replay", "quotes", "--count", "4"}).out);
  REQUIRE(lq.size() == 4);
  REQUIRE(lo.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    char mid[32];
    std::snprintf(mid, sizeof mid, "\"0x%016" PRIx64 "\"", uint64_t(100 + i));
    CHECK(jfield(lq[i], "message_id") == mid);
    CHECK(jfield(lq[i], "payload_base64") == jfield(lo[i], "payload_base64"));
    CHECK(jfield(lq[i], "payload_base64").size() > 2);
  }
  // Twice as fast takes about half as long; --speed 0 does not wait.
  r = cli(d, {"--json", "play", file, "--topic-map", "orders=copy", "--topic-map", "quotes=copy2", "--speed",
              "2"});
  REQUIRE(r.rc == 0);
  CHECK(jnum(r.out, "seconds") >= recorded_s / 2 * 0.9);
  const uint64_t before = next_seq(d, "copy2");
  REQUIRE(before == 9);

  // Hostile files: refused with the reason, before anything is published.
  const std::vector<uint8_t> good = slurp(file);
  REQUIRE(good.size() > 200);
  const uint32_t name_len = good[36] | good[37] << 8;
  uint32_t schema_len;
  std::memcpy(&schema_len, &good[44], 4);
  const size_t topic2 = 64 + name_len + schema_len + (8 - (name_len + schema_len) % 8) % 8;
  const size_t first_rec = topic2 + 32 + 6 + 2;  // "quotes": no schema, 6 + 2 padding
  std::vector<std::pair<std::string, std::vector<uint8_t>>> bad;
  {
    auto b = good;
    b.resize(b.size() - 60);  // inside the last record
    bad.emplace_back("truncated: ", b);
  }
  {
    auto b = good;
    b[b.size() - 48 - 3] ^= 0x40;  // the last payload
    bad.emplace_back("CRC mismatch", b);
  }
  {
    auto b = good;
    const uint32_t huge = 0x7fffffff;
    std::memcpy(&b[first_rec + 4], &huge, 4);
    bad.emplace_back("record length 2147483647 out of range", b);
  }
  {
    auto b = good;
    const uint32_t big = 1u << 20;
    std::memcpy(&b[first_rec + 4], &big, 4);
    bad.emplace_back("truncated: the record says 1048576 payload bytes", b);
  }
  {
    auto b = good;
    b[40] ^= 1;  // the first topic's partition count (its CRC)
    bad.emplace_back("topic 0: CRC mismatch", b);
  }
  {
    auto b = good;
    b.resize(20);
    bad.emplace_back("truncated: file header", b);
  }
  {
    std::vector<uint8_t> b(4096);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (auto& v : b) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      v = uint8_t(x);
    }
    bad.emplace_back("not a shmbus recording (bad magic)", b);
  }
  {
    auto b = good;
    b.push_back(0);  // after the end marker
    bad.emplace_back("1 bytes after the end marker", b);
  }
  // Well-formed CRCs over wrong contents: the checks behind the CRC.
  auto record_crc = [](std::vector<uint8_t>& b, size_t off) {
    uint32_t len;
    std::memcpy(&len, &b[off + 4], 4);
    const uint32_t c = spill::crc32c(spill::crc32c(0, &b[off + 4], 44), &b[off + 48], len);
    std::memcpy(&b[off], &c, 4);
  };
  uint32_t first_len;
  std::memcpy(&first_len, &good[first_rec + 4], 4);
  const size_t second_rec = first_rec + 48 + first_len;
  {
    auto b = good;
    const uint16_t topic = 7;
    std::memcpy(&b[first_rec + 8], &topic, 2);
    record_crc(b, first_rec);
    bad.emplace_back("record 0: topic index 7 out of range", b);
  }
  {
    auto b = good;
    const uint32_t part = 2;  // quotes has 1 partition, orders 2
    std::memcpy(&b[first_rec + 12], &part, 4);
    record_crc(b, first_rec);
    bad.emplace_back("record 0: partition 2 out of range", b);
  }
  {
    auto b = good;
    uint64_t t;
    std::memcpy(&t, &b[first_rec + 16], 8);
    t += 1'000'000'000'000ull;  // later than the second record
    std::memcpy(&b[first_rec + 16], &t, 8);
    record_crc(b, first_rec);
    bad.emplace_back("record 1: receive time goes back", b);
    REQUIRE(second_rec < b.size());
  }
  {
    auto b = good;  // orders' schema bytes garbled, its CRC made right
    for (size_t i = 64 + name_len + 16; i < 64 + name_len + 48; ++i) b[i] ^= 0x5a;
    const uint32_t c = spill::crc32c(spill::crc32c(0, &b[36], 28), &b[64], name_len + schema_len);
    std::memcpy(&b[32], &c, 4);
    bad.emplace_back("topic 'orders': bad schema: ", b);
  }
  for (auto& [why, bytes] : bad) {
    INFO(why);
    spit(d.dir + "/bad.rec", bytes);
    r = cli(d, {"play", d.dir + "/bad.rec", "--topic-map", "orders=copy", "--topic-map", "quotes=copy2",
                "--speed", "0"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("shmbus: " + d.dir + "/bad.rec: offset ") == 0);
    CHECK(r.err.find(why) != std::string::npos);
    CHECK(r.out.empty());
  }
  CHECK(next_seq(d, "copy2") == before);
  // Cut exactly before the end marker (a recorder killed between two records): the
  // records are whole, so they are used, with a warning.
  {
    auto b = good;
    b.resize(b.size() - 48);
    spit(d.dir + "/cut.rec", b);
    r = cli(d, {"--json", "play", d.dir + "/cut.rec", "--check"});
    CHECK(r.rc == 0);
    CHECK(jfield(r.out, "complete") == "false");
    CHECK(jfield(r.out, "records") == "14");
    CHECK(r.err.find("has no end marker") != std::string::npos);
  }
}

TEST_CASE(
    "shmbus record SIGKILLed while messages flow: the file ends between records and play uses all of it",
    "[cli][crash]") {
  DaemonProc d("clikill");
  REQUIRE(d.start());
  REQUIRE(cli(d, {"topic", "create", "ticks", "--capacity", "1048576", "--durable"}).rc == 0);
  REQUIRE(cli(d, {"topic", "create", "again", "--capacity", "1048576", "--durable"}).rc == 0);
  REQUIRE(cli(d, {"schema", "register", "ticks", write_orders(d)}).rc == 0);
  const std::string file = d.dir + "/ticks.rec";
  Child rec({SHMBUS_TEST_CLI, "record", "ticks", "-o", file}, d.dir + "/rec.err",
            {"SHMBUS_SOCKET=" + d.sock});
  REQUIRE(rec.await("recording", 20000) == "1 topic, 1 partition to " + file);
  // A publisher that keeps going (2000 messages a second) until the test kills it.
  Bus bus = Bus::connect(d.sock);
  Child pub({SHMBUS_TEST_CLI, "pub", "ticks", "--json", "{\"id\":1,\"symbol\":\"T\"}", "--count", "1000000",
             "--rate", "2000"},
            d.dir + "/pub.err", {"SHMBUS_SOCKET=" + d.sock});
  // Killed once the recording holds a good number of records (its size, watched with a
  // 20 s watchdog), at whatever point it has reached.
  struct stat st {};
  const uint64_t deadline = now_ns() + 20'000'000'000ull;
  while ((stat(file.c_str(), &st) != 0 || st.st_size < 20000) && now_ns() < deadline) {
    pollfd none{};
    poll(&none, 0, 5);
  }
  REQUIRE(st.st_size >= 20000);
  rec.kill_now();
  pub.kill_now();
  Run r = cli(d, {"--json", "play", file, "--check"});
  REQUIRE(r.rc == 0);
  INFO(r.err);
  CHECK(jfield(r.out, "complete") == "false");
  CHECK(r.err.find("has no end marker (the recorder was stopped hard)") != std::string::npos);
  const uint64_t records = uint64_t(jnum(r.out, "records"));
  CHECK(records >= 100);
  // Everything recorded is played, in order: the same messages as the source's first.
  r = cli(d, {"--json", "play", file, "--topic-map", "ticks=again", "--speed", "0"});
  REQUIRE(r.rc == 0);
  CHECK(jfield(r.out, "played") == std::to_string(records));
  CHECK(next_seq(d, "again") == records + 1);
  auto a = lines_of(cli(d, {"replay", "again", "--count", "3"}).out);
  REQUIRE(a.size() == 3);
  CHECK(jfield(a[2], "message") == "{\"id\":\"1\",\"symbol\":\"T\",\"price\":0,\"qty\":0,\"side\":\"buy\"}");
  CHECK(jfield(a[2], "seq") == "3");
}

TEST_CASE(
    "shmbus play --check: 200 mutated recordings (bits flipped, cut) are refused or read, never a crash",
    "[cli][fuzz]") {
  DaemonProc d("climut");
  REQUIRE(d.start());
  REQUIRE(cli(d, {"topic", "create", "orders", "--capacity", "65536", "--partitions", "2"}).rc == 0);
  REQUIRE(cli(d, {"schema", "register", "orders", write_orders(d)}).rc == 0);
  const std::string file = d.dir + "/m.rec";
  Child rec({SHMBUS_TEST_CLI, "record", "orders", "-o", file, "--count", "6"}, d.dir + "/rec.err",
            {"SHMBUS_SOCKET=" + d.sock});
  REQUIRE(rec.await("recording", 20000) == "1 topic, 2 partitions to " + file);
  REQUIRE(cli(d, {"pub", "orders", "--json",
                  "{\"id\":1,\"symbol\":\"M\",\"lines\":[{\"sku\":\"x\",\"n\":1}]}", "--count", "3"})
              .rc == 0);
  REQUIRE(cli(d, {"pub", "orders", "--json", "{\"id\":2}", "--count", "3", "--partition", "1"}).rc == 0);
  REQUIRE(rec.finish(30000) >= 0);
  REQUIRE(rec.ok());
  const std::vector<uint8_t> good = slurp(file);
  uint64_t x = 0x2545f4914f6cdd1dull;
  auto rnd = [&] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return x;
  };
  int refused = 0, read = 0;
  for (int i = 0; i < 200; ++i) {
    std::vector<uint8_t> b = good;
    const int flips = 1 + int(rnd() % 3);
    for (int k = 0; k < flips; ++k) b[rnd() % b.size()] ^= uint8_t(1u << (rnd() % 8));
    if (rnd() % 4 == 0) b.resize(rnd() % b.size());
    spit(d.dir + "/mut.rec", b);
    Run r = cli(d, {"play", d.dir + "/mut.rec", "--check"});
    INFO("mutant " << i << ": rc " << r.rc << ", " << r.err);
    REQUIRE((r.rc == 0 || r.rc == 1));  // -1: killed by a signal (or hung)
    if (r.rc == 1) {
      CHECK(r.err.find("shmbus: " + d.dir + "/mut.rec: offset ") == 0);
      ++refused;
    } else {
      ++read;
    }
  }
  INFO(refused << " refused, " << read << " read");
  CHECK(refused >= 190);
}

TEST_CASE("shmbus bench: sane JSON figures, ordered percentiles, the temporary topic deleted", "[cli]") {
  DaemonProc d("clibench");
  REQUIRE(d.start());
  Run r = cli(d, {"--json", "bench", "--count", "5000", "--pubs", "2", "--subs", "2", "--size", "64"});
  REQUIRE(r.rc == 0);
  INFO(r.out);
  CHECK(jfield(r.out, "complete") == "true");
  CHECK(jfield(r.out, "published") == "10000");
  CHECK(jfield(r.out, "received") == "20000");
  const std::string pub = jfield(r.out, "publish"), sub = jfield(r.out, "subscribe"),
                    lat = jfield(r.out, "latency_ns");
  CHECK(jnum(pub, "msgs_per_sec") > 0);
  CHECK(jnum(pub, "mb_per_sec") > 0);
  CHECK(jnum(sub, "msgs_per_sec") > 0);
  CHECK(jnum(pub, "mb_per_sec") == Approx(jnum(pub, "msgs_per_sec") * 64 / 1e6).epsilon(0.01));
  const double p50 = jnum(lat, "p50"), p99 = jnum(lat, "p99"), p999 = jnum(lat, "p99_9"),
               mx = jnum(lat, "max");
  CHECK(p50 > 0);
  CHECK(p50 <= p99);
  CHECK(p99 <= p999);
  CHECK(p999 <= mx);
  const std::string topic = jfield(r.out, "topic");
  CHECK(topic.find("shmbus-bench.") == 1);
  CHECK(cli(d, {"topic", "list"}).out == "no topics\n");
  // Text: the same figures' names.
  r = cli(d, {"bench", "--count", "1000"});
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("  publish   1000 msgs in ") != std::string::npos);
  CHECK(r.out.find("  latency (commit to receive) p50 ") != std::string::npos);
  // Paced: 400 messages at 4000 a second take 0.1 s at least.
  r = cli(d, {"--json", "bench", "--count", "400", "--rate", "4000"});
  REQUIRE(r.rc == 0);
  CHECK(jfield(r.out, "rate") == "4000");
  CHECK(jnum(jfield(r.out, "publish"), "seconds") >= 399.0 / 4000 * 0.95);
  CHECK(jfield(r.out, "received") == "400");
  // A payload larger than the ring allows: refused, and the topic is still deleted.
  r = cli(d, {"bench", "--count", "10", "--size", "100000", "--capacity", "65536"});
  CHECK(r.rc == 1);
  CHECK(r.err.find("--size 100000 exceeds the max payload") != std::string::npos);
  CHECK(cli(d, {"topic", "list"}).out == "no topics\n");
}

TEST_CASE("shmbus group: a group's committed positions, live and parked, as text and JSON", "[cli]") {
  DaemonProc d("cligroup");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  bus.create_topic("work", TopicConfig{.partitions = 2, .capacity = 65536});
  Run r = cli(d, {"group", "work"});
  CHECK(r.out == "work: no consumer group has committed a position\n");
  uint64_t pos = 0;
  {
    GroupSubscriber m = bus.group_subscriber("work", "billing");
    GroupView v;
    // A new group reads from the tail: it holds both partitions before the messages.
    for (int i = 0; i < 1000 && m.partitions().size() < 2; ++i)
      REQUIRE(m.poll_wait(v, 10'000'000) != Status::ok);
    REQUIRE(m.partitions().size() == 2);
    {
      Publisher p = bus.publisher("work");
      for (int i = 0; i < 3; ++i) REQUIRE(p.offer("abcdefgh", 8) == Status::ok);
    }
    int got = 0;
    for (int i = 0; i < 1000 && got < 3; ++i)
      if (m.poll_wait(v, 10'000'000) == Status::ok) {
        ++got;
        pos = v.next_position();
        m.release(v);
      }
    REQUIRE(got == 3);
    r = cli(d, {"--json", "group", "work"});
    REQUIRE(r.rc == 0);
    CHECK(r.out.find(
              "{\"topic\":\"work\",\"partitions\":2,\"groups\":[{\"group\":\"billing\",\"positions\":[") ==
          0);
    CHECK(r.out.find("{\"partition\":0,\"committed_position\":" + std::to_string(pos) + ",\"live\":true,") !=
          std::string::npos);
  }
  r = cli(d, {"group", "work"});
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("work group billing\n") == 0);
  CHECK(r.out.find("  partition 0: committed position " + std::to_string(pos) + ", ") != std::string::npos);
  CHECK(r.out.find("read by a live member") == std::string::npos);
}
