// The schema registry (issue 11, docs/messaging.md "Schema registry"): a real shmbusd,
// the real `shmbus` tool, real .capnp files. Evolution accepted and refused with the
// exact reason; history kept across a daemon restart; hostile schema bytes refused
// without hurting the daemon; publish access needed to register; the C++ client's
// with_schema<T>() at open; tail/replay decode a type not compiled into the tool.
#include <capnp/dynamic.h>
#include <capnp/schema-parser.h>
#include <capnp/serialize.h>
#include <kj/filesystem.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cinttypes>
#include <fstream>
#include <sstream>

#include "daemon_util.hpp"
#include "market.capnp.h"
#include "second_user.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/schema_nodes.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

struct Run {
  int rc = -1;
  std::string out, err;
};

// The shmbus tool, to completion: exit code, stdout, stderr.
Run cli(const DaemonProc& d, std::vector<std::string> args, const SecondUser* as = nullptr) {
  static int n = 0;
  const std::string err_file = d.dir + "/cli" + std::to_string(n++) + ".err";
  args.insert(args.begin(), {SHMBUS_TEST_CLI, "--socket", d.sock});
  Child c(as ? as->as(args) : args, err_file);
  Run r;
  r.out = c.read_all(20000);
  const int st = c.wait(20000);
  r.rc = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(err_file);
  std::stringstream ss;
  ss << f.rdbuf();
  r.err = ss.str();
  return r;
}

// <dir>/<variant>/orders.capnp: one version of orders.Order (the type's name comes
// from the file's, so every variant is called orders.capnp).
std::string write_schema(const DaemonProc& d, const std::string& variant, const std::string& body,
                         uint64_t struct_id = 0xc0ffee0000000001ull, const std::string& name = "Order") {
  const std::string dir = d.dir + "/" + variant;
  mkdir(dir.c_str(), 0755);
  char id[32];
  std::snprintf(id, sizeof id, "0x%016" PRIx64, struct_id);
  std::ofstream(dir + "/orders.capnp") << "@0xd1a5e0c0ffee0001;\nstruct " << name << " @" << id << " {\n"
                                       << body << "}\n";
  return dir + "/orders.capnp:" + name;
}

const char* kV1 = "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Float64;\n";
const char* kV2 = "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Float64;\n  qty @3 :UInt32;\n";

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

bool serving(const DaemonProc& d) {
  try {
    auto c = DaemonClient::connect({d.sock, 5000, 0});
    return c->call([](proto::Request::Builder r) { r.setHealth(); }).get().getHealth().getServing();
  } catch (...) {
    return false;
  }
}

}  // namespace

TEST_CASE(
    "schema registry: evolution accepted, refusals name type, field and rule, history survives a restart",
    "[schema]") {
  DaemonProc d("schema");
  REQUIRE(d.start());
  REQUIRE(cli(d, {"topic", "create", "orders", "--capacity", "65536"}).rc == 0);
  const std::string v1 = write_schema(d, "v1", kV1), v2 = write_schema(d, "v2", kV2);
  const std::string changed = write_schema(
      d, "changed", "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Text;\n  qty @3 :UInt32;\n");
  // v2 without qty (and symbol renamed: a rename alone is allowed; v1 itself is a
  // stored version, accepted as such).
  const std::string removed =
      write_schema(d, "removed", "  id @0 :UInt64;\n  ticker @1 :Text;\n  price @2 :Float64;\n");
  const std::string renumbered = write_schema(
      d, "renumbered", "  id @0 :UInt64;\n  price @1 :Float64;\n  symbol @2 :Text;\n  qty @3 :UInt32;\n");
  // Defaults: a primitive field's is part of its encoding (refused), a pointer
  // field's only says what a null reads as (accepted).
  const std::string qty_default = write_schema(
      d, "qtydefault", "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Float64;\n  qty @3 :UInt32 = 5;\n");
  const std::string price_default =
      write_schema(d, "pricedefault",
                   "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Float64 = -0.0;\n  qty @3 :UInt32;\n");
  const std::string symbol_default =
      write_schema(d, "symboldefault",
                   "  id @0 :UInt64;\n  symbol @1 :Text = \"?\";\n  price @2 :Float64;\n  qty @3 :UInt32;\n");

  Run r = cli(d, {"schema", "check", "orders", v1});
  CHECK(r.rc == 0);
  CHECK(r.out == "compatible: " + v1 + " would be version 1 of 'orders'\n");
  REQUIRE(cli(d, {"schema", "register", "orders", v1}).out == "registered version 1 of 'orders'\n");
  r = cli(d, {"schema", "register", "orders", v2});  // a field added
  REQUIRE(r.rc == 0);
  CHECK(r.out == "registered version 2 of 'orders'\n");

  auto refused = [&](const std::string& type, const std::string& reason) {
    for (const char* what : {"check", "register"}) {
      Run x = cli(d, {"schema", what, "orders", type});
      CHECK(x.rc == 1);
      CHECK(x.err == "shmbus: " + reason + "\n");
    }
  };
  refused(changed,
          "schema of orders.Order refused: field 'price' @2 changed type Float64 -> Text (backward)");
  refused(removed, "schema of orders.Order refused: field 'qty' @3 removed (backward)");
  refused(renumbered, "schema of orders.Order refused: field 'symbol' renumbered @1 -> @2 (backward)");
  refused(qty_default,
          "schema of orders.Order refused: field 'qty' @3 changed its default value 0 -> 5 (backward)");
  refused(
      price_default,
      "schema of orders.Order refused: field 'price' @2 changed its default value 0 (0x0000000000000000) -> "
      "-0 (0x8000000000000000) (backward)");
  CHECK(cli(d, {"schema", "check", "orders", symbol_default}).rc == 0);

  r = cli(d, {"schema", "history", "orders"});
  CHECK(r.rc == 0);
  CHECK(r.out.rfind("orders (mode backward)\n", 0) == 0);
  CHECK(count(r.out, "  version ") == 2);
  CHECK(count(r.out, "uid 0  orders.Order 0xc0ffee0000000001") == 2);
  r = cli(d, {"schema", "show", "orders"});
  CHECK(r.rc == 0);
  CHECK(r.out.find("# 'orders' schema version 2 (mode backward)") == 0);
  CHECK(r.out.find("struct orders.Order 0xc0ffee0000000001 {\n  id @0 :UInt64;\n  symbol @1 :Text;\n"
                   "  price @2 :Float64;\n  qty @3 :UInt32;\n}\n") != std::string::npos);
  CHECK(cli(d, {"schema", "show", "orders", "--version", "1"}).out.find("qty") == std::string::npos);

  // Stored durably, owner-only.
  struct stat st {};
  REQUIRE(lstat((d.state + "/schemas/orders.bin").c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK((st.st_mode & 0777) == 0600);

  // A restart keeps every version and keeps refusing.
  REQUIRE(d.stop());
  REQUIRE(d.start());
  r = cli(d, {"--json", "schema", "history", "orders"});
  CHECK(count(r.out, "\"version\":") == 2);
  refused(changed,
          "schema of orders.Order refused: field 'price' @2 changed type Float64 -> Text (backward)");
  // An old producer reopening with a version already stored is that version.
  CHECK(cli(d, {"schema", "register", "orders", v1}).out == "already registered as version 1 of 'orders'\n");

  // Mode none stores what it is given; deleting the topic deletes its history.
  REQUIRE(cli(d, {"topic", "create", "loose", "--capacity", "65536", "--schema-mode", "none"}).rc == 0);
  CHECK(cli(d, {"schema", "register", "loose", v2}).out == "registered version 1 of 'loose'\n");
  CHECK(cli(d, {"schema", "register", "loose", renumbered}).out == "registered version 2 of 'loose'\n");
  REQUIRE(cli(d, {"topic", "delete", "loose"}).rc == 0);
  CHECK(access((d.state + "/schemas/loose.bin").c_str(), F_OK) != 0);
  r = cli(d, {"topic", "create", "loose", "--capacity", "65536"});
  REQUIRE(r.rc == 0);
  r = cli(d, {"schema", "history", "loose"});
  CHECK(r.rc == 1);
  CHECK(r.err == "shmbus: topic 'loose' has no registered schema\n");
}

namespace {

// One registerSchema with hand-made bytes; the error the daemon answers (or "").
std::string present(DaemonClient& c, const std::string& topic, uint64_t root,
                    kj::ArrayPtr<const kj::byte> bytes) {
  try {
    c.call([&](proto::Request::Builder r) {
      auto s = r.initRegisterSchema();
      s.setTopic(topic);
      s.setRootId(root);
      s.setNodes(bytes);
      s.setRole(proto::Role::PUBLISHER);
    });
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<uint8_t> flat(capnp::MessageBuilder& mb) {
  auto w = capnp::messageToFlatArray(mb);
  return {w.asBytes().begin(), w.asBytes().end()};
}

}  // namespace

TEST_CASE("schema registry: malformed schema bytes are refused and the daemon keeps serving", "[schema]") {
  DaemonProc d("schemabad");
  REQUIRE(d.start());
  auto c = DaemonClient::connect({d.sock, 5000, 0});
  c->create_topic("q", TopicConfig{.capacity = 65536});
  const SchemaNodes good = with_schema<shmbus::schema::Quote>();
  const uint64_t root = good.root_id;
  auto arr = [](const std::vector<uint8_t>& v) { return kj::arrayPtr(v.data(), v.size()); };
  std::vector<std::pair<std::string, std::vector<uint8_t>>> bad;
  bad.reserve(16);  // (g++ 12 warns -Warray-bounds falsely on the first emplace_back otherwise)

  // Truncated (half of a good message, and an odd size).
  bad.emplace_back("truncated",
                   std::vector<uint8_t>(good.bytes.begin(), good.bytes.begin() + good.bytes.size() / 16 * 8));
  bad.emplace_back("odd size", std::vector<uint8_t>(good.bytes.begin(), good.bytes.begin() + 13));
  // A list pointer claiming 2^29 - 1 words of nodes in a 5-word message.
  {
    std::vector<uint64_t> w = {
        0x0000000400000000ull,  // segment table: 1 segment, 4 words
        0x0004000000000000ull,  // root: struct at +0, 0 data words, 4 pointers
        (uint64_t(0x1FFFFFFFu) << 35) | (7ull << 32) | (2u << 2) | 1,  // nodes: composite list, huge
        0, 0};
    std::vector<uint8_t> b(w.size() * 8);
    std::memcpy(b.data(), w.data(), b.size());
    bad.emplace_back("huge list count", b);
  }
  // A type nested 200 lists deep (the nesting limit is 64).
  {
    capnp::MallocMessageBuilder mb;
    auto n = mb.initRoot<capnp::schema::CodeGeneratorRequest>().initNodes(1)[0];
    n.setId(root);
    n.setDisplayName("deep.capnp:Deep");
    auto s = n.initStruct();
    s.setDataWordCount(0);
    s.setPointerCount(1);
    auto f = s.initFields(1)[0];
    f.setName("x");
    f.initOrdinal().setExplicit(0);
    auto t = f.initSlot().initType();
    for (int i = 0; i < 200; ++i) t = t.initList().initElementType();
    t.setText();
    bad.emplace_back("deep nesting", flat(mb));
  }
  // Well-formed Cap'n Proto, invalid schema: a field outside the struct's data section.
  {
    capnp::MallocMessageBuilder mb;
    auto n = mb.initRoot<capnp::schema::CodeGeneratorRequest>().initNodes(1)[0];
    n.setId(root);
    n.setDisplayName("bad.capnp:Bad");
    auto s = n.initStruct();
    s.setDataWordCount(1);
    auto f = s.initFields(1)[0];
    f.setName("x");
    f.initOrdinal().setExplicit(0);
    auto sl = f.initSlot();
    sl.setOffset(1000);
    sl.initType().setUint64();
    sl.initDefaultValue().setUint64(0);
    bad.emplace_back("field outside its struct", flat(mb));
  }
  // Two nodes with one id; a root that is not among the nodes.
  {
    capnp::MallocMessageBuilder mb;
    auto l = mb.initRoot<capnp::schema::CodeGeneratorRequest>().initNodes(2);
    for (uint32_t i = 0; i < 2; ++i) {
      l[i].setId(root);
      l[i].initStruct();
    }
    bad.emplace_back("duplicate ids", flat(mb));
  }
  {
    capnp::MallocMessageBuilder mb;
    mb.initRoot<capnp::schema::CodeGeneratorRequest>().initNodes(1)[0].setId(12345);
    bad.emplace_back("root missing", flat(mb));
  }
  // Groups that describe an infinite or exponential struct: the root has 3 group
  // fields to G and G 3 group fields to itself (expanding it took the daemon to 1.5 GB
  // with 664 bytes), and two groups inside each other (a JSON encoder recursed
  // forever on it). A compiled schema never reuses a group node.
  for (const bool cycle : {false, true}) {
    capnp::MallocMessageBuilder mb;
    auto l = mb.initRoot<capnp::schema::CodeGeneratorRequest>().initNodes(cycle ? 3 : 2);
    const uint64_t g1 = 0xc0ffee0000000001ull, g2 = 0xc0ffee0000000002ull;
    auto node = [&](uint32_t i, uint64_t id, uint64_t scope, bool group, std::vector<uint64_t> to) {
      l[i].setId(id);
      l[i].setScopeId(scope);
      l[i].setDisplayName(group ? "bomb.capnp:Root.g" : "bomb.capnp:Root");
      auto st = l[i].initStruct();
      st.setIsGroup(group);
      auto fs = st.initFields(uint32_t(to.size()));
      for (uint32_t k = 0; k < to.size(); ++k) {
        fs[k].setName(std::string(1, char('a' + k)));
        fs[k].setCodeOrder(uint16_t(k));
        fs[k].initGroup().setTypeId(to[k]);
      }
    };
    if (!cycle) {
      node(0, root, 0, false, {g1, g1, g1});
      node(1, g1, root, true, {g1, g1, g1});
    } else {
      node(0, root, 0, false, {g1});
      node(1, g1, root, true, {g2});
      node(2, g2, g1, true, {g1});
    }
    bad.emplace_back(cycle ? "group cycle" : "group reused (expansion bomb)", flat(mb));
  }
  // Noise.
  {
    std::vector<uint8_t> b(4096);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (auto& v : b) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      v = uint8_t(x);
    }
    bad.emplace_back("random bytes", b);
  }
  for (auto& [what, bytes] : bad) {
    INFO(what);
    const std::string e = present(*c, "q", root, arr(bytes));
    CHECK(e.find("schema for 'q' refused: malformed schema nodes: ") == 0);
    CHECK(serving(d));
  }
  // More than the daemon takes (the frame itself is fine).
  const std::vector<uint8_t> big(200 * 1024, 0);
  CHECK(present(*c, "q", root, arr(big)) == "schema nodes larger than 131072 bytes");
  // Nothing was stored, and a good schema still registers.
  CHECK(present(*c, "q", root, arr(good.bytes)).empty());
  auto h = c->call([](proto::Request::Builder r) { r.initSchemaHistory().setTopic("q"); });
  CHECK(h.get().getSchemaHistory().getVersions().size() == 1);
  CHECK(serving(d));
}

TEST_CASE(
    "schema registry: C++ publisher/subscriber present with_schema<T>() at open; incompatible is an Error",
    "[schema]") {
  DaemonProc d("schemacxx");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  bus.create_topic("quotes", TopicConfig{.capacity = 65536});
  PublisherOptions po;
  po.schema = with_schema<shmbus::schema::Quote>();
  { Publisher p = bus.publisher("quotes", po); }
  Run r = cli(d, {"schema", "history", "quotes"});
  CHECK(count(r.out, "  version 1  ") == 1);
  CHECK(r.out.find("market.Quote") != std::string::npos);
  CHECK(bus.register_schema("quotes", po.schema, true) == 1);  // the same version again

  // Another program registered a Quote whose instrumentId is a UInt64.
  bus.create_topic("quotes2", TopicConfig{.capacity = 65536});
  const std::string other = write_schema(d, "quote64", "  instrumentId @0 :UInt64;\n",
                                         capnp::typeId<shmbus::schema::Quote>(), "Quote");
  REQUIRE(cli(d, {"schema", "register", "quotes2", other}).rc == 0);
  const std::string why =
      "schema of market.Quote refused: field 'instrumentId' @0 changed type UInt64 -> UInt32 (backward)";
  try {
    Publisher p = bus.publisher("quotes2", po);
    FAIL("an incompatible publisher was opened");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::incompatible);
    CHECK(std::string(e.what()) == why);
  }
  SubscriberOptions so;
  so.schema = po.schema;
  try {
    Subscriber s = bus.subscriber("quotes2", so);
    FAIL("an incompatible subscriber was opened");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::incompatible);
    CHECK(std::string(e.what()) == why);
  }
  // Its root type is not the topic's declared one.
  bus.create_topic("orders",
                   TopicConfig{.capacity = 65536, .schema_id = capnp::typeId<shmbus::schema::Order>()});
  try {
    Publisher p = bus.publisher("orders", po);
    FAIL("a publisher of another root type was opened");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::incompatible);
    CHECK(std::string(e.what()).find(
              "schema of market.Quote refused: topic 'orders' declares the root type ") == 0);
  }
}

TEST_CASE("schema registry: only a user with publish access registers", "[schema][security]") {
  SecondUser u = second_user();
  if (!u.skip.empty()) {
    WARN("skipped: " << u.skip);
    return;
  }
  DaemonProc d("schemauid");
  REQUIRE(d.start());
  const std::string v1 = write_schema(d, "v1", kV1);
  REQUIRE(
      cli(d, {"topic", "create", "readonly", "--capacity", "65536", "--subscribe-uid", std::to_string(u.uid)})
          .rc == 0);
  REQUIRE(cli(d, {"topic", "create", "hidden", "--capacity", "65536"}).rc == 0);
  Run r = cli(d, {"schema", "register", "readonly", v1}, &u);
  CHECK(r.rc == 1);
  CHECK(r.err == "shmbus: uid " + std::to_string(u.uid) +
                     " may not register a schema for 'readonly' (it needs publish access)\n");
  r = cli(d, {"schema", "register", "hidden", v1}, &u);
  CHECK(r.rc == 1);
  CHECK(r.err == "shmbus: no topic 'hidden'\n");
  CHECK(access((d.state + "/schemas").c_str(), F_OK) != 0);  // nothing was stored
  // A reader may check, and read what the owner registered.
  CHECK(cli(d, {"schema", "check", "readonly", v1}, &u).rc == 0);
  REQUIRE(cli(d, {"schema", "register", "readonly", v1}).rc == 0);
  r = cli(d, {"schema", "history", "readonly"}, &u);
  CHECK(r.rc == 0);
  CHECK(count(r.out, "  version ") == 1);
}

TEST_CASE("schema registry: replay decodes a type not compiled into the tool from the registered schema",
          "[schema]") {
  DaemonProc d("schematail");
  REQUIRE(d.start());
  const std::string v1 = write_schema(d, "v1", kV1);
  REQUIRE(cli(d, {"topic", "create", "ev", "--capacity", "65536", "--durable"}).rc == 0);
  // The test builds the message from the .capnp file at run time, as the tool reads it.
  if (char cwd[4096]; getcwd(cwd, sizeof cwd)) setenv("PWD", cwd, 1);  // else kj warns (meson's cwd)
  auto fs = kj::newDiskFilesystem();
  capnp::SchemaParser parser;
  auto file = parser.parseFromDirectory(fs->getRoot(), fs->getCurrentPath().eval(d.dir + "/v1/orders.capnp"),
                                        nullptr);
  auto type = file.getNested("Order").asStruct();
  capnp::MallocMessageBuilder mb;
  auto o = mb.initRoot<capnp::DynamicStruct>(type);
  o.set("id", 7);
  o.set("symbol", "XYZ");
  o.set("price", 1.5);
  auto words = capnp::messageToFlatArray(mb);
  Bus bus = Bus::connect(d.sock);
  {
    Publisher p = bus.publisher("ev");
    for (int i = 0; i < 2; ++i)
      REQUIRE(p.offer(words.begin(), words.size() * 8, 0, type.getProto().getId()) == Status::ok);
  }
  // Not registered: printed as base64.
  Run r = cli(d, {"replay", "ev", "--count", "1", "--follow"});
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("\"payload_base64\"") != std::string::npos);
  CHECK(r.out.find("\"symbol\"") == std::string::npos);
  // Registered: decoded.
  REQUIRE(cli(d, {"schema", "register", "ev", v1}).rc == 0);
  r = cli(d, {"replay", "ev", "--count", "2", "--follow"});
  REQUIRE(r.rc == 0);
  CHECK(count(r.out, "\"message\":{\"id\":\"7\",\"symbol\":\"XYZ\",\"price\":1.5}") == 2);
  CHECK(r.out.find("\"payload_base64\"") == std::string::npos);
}

TEST_CASE("schema registry: mutated schemas (bytes flipped, truncated) are answered, never crash the daemon",
          "[schema]") {
  DaemonProc d("schemamut");
  REQUIRE(d.start());
  auto c = DaemonClient::connect({d.sock, 5000, 0});
  c->create_topic("q", TopicConfig{.capacity = 65536});
  const SchemaNodes good = with_schema<shmbus::schema::Order>();
  REQUIRE(present(*c, "q", good.root_id, kj::arrayPtr(good.bytes.data(), good.bytes.size())).empty());
  // Check-only (nothing stored): each mutant goes through parsing, validation and the
  // compatibility check against the stored version.
  uint64_t x = 0x2545f4914f6cdd1dull;
  auto rnd = [&] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return x;
  };
  uint32_t refused = 0, accepted = 0;
  for (int i = 0; i < 3000; ++i) {
    std::vector<uint8_t> b = good.bytes;
    const int flips = 1 + int(rnd() % 4);
    for (int k = 0; k < flips; ++k) b[8 + rnd() % (b.size() - 8)] ^= uint8_t(1u << (rnd() % 8));
    if (rnd() % 8 == 0) b.resize(std::max<size_t>(8, (b.size() - 8 * (1 + rnd() % 8)) / 8 * 8));
    std::string e;
    try {
      c->call([&](proto::Request::Builder r) {
        auto s = r.initRegisterSchema();
        s.setTopic("q");
        s.setRootId(good.root_id);
        s.setNodes(kj::arrayPtr(b.data(), b.size()));
        s.setRole(proto::Role::PUBLISHER);
        s.setCheckOnly(true);
      });
      ++accepted;
    } catch (const Error& err) {
      INFO(err.what());
      CHECK((err.code() == ErrorCode::invalid_argument || err.code() == ErrorCode::incompatible));
      ++refused;
    }
  }
  INFO(refused << " refused, " << accepted << " accepted");
  CHECK(refused > 1000);
  CHECK(serving(d));
  auto h = c->call([](proto::Request::Builder r) { r.initSchemaHistory().setTopic("q"); });
  CHECK(h.get().getSchemaHistory().getVersions().size() == 1);
}

TEST_CASE("schema registry: the owner changes a topic's mode in place; others may not; a restart keeps it",
          "[schema][security]") {
  DaemonProc d("schemamode");
  REQUIRE(d.start());
  REQUIRE(cli(d, {"topic", "create", "orders", "--capacity", "65536"}).rc == 0);
  const std::string v1 = write_schema(d, "v1", kV1);
  const std::string changed =
      write_schema(d, "changed", "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Text;\n");
  REQUIRE(cli(d, {"schema", "register", "orders", v1}).rc == 0);
  CHECK(cli(d, {"schema", "register", "orders", changed}).rc == 1);  // backward refuses the type change
  Run r = cli(d, {"schema", "mode", "orders", "none"});
  REQUIRE(r.rc == 0);
  CHECK(r.out == "schema mode of 'orders' is none\n");
  CHECK(cli(d, {"schema", "history", "orders"}).out.rfind("orders (mode none)\n", 0) == 0);
  r = cli(d, {"schema", "register", "orders", changed});  // none stores any well-formed schema
  CHECK(r.rc == 0);
  CHECK(r.out == "registered version 2 of 'orders'\n");
  // Back to full: checked against every version from now on (v1 and v2 conflict, so
  // a new one cannot satisfy both); the stored versions stay.
  REQUIRE(cli(d, {"schema", "mode", "orders", "full"}).rc == 0);
  const std::string v3 =
      write_schema(d, "v3", "  id @0 :UInt64;\n  symbol @1 :Text;\n  price @2 :Text;\n  qty @3 :UInt32;\n");
  r = cli(d, {"schema", "check", "orders", v3});
  CHECK(r.rc == 1);
  CHECK(r.err.find("(full, against version 1)") != std::string::npos);
  CHECK(cli(d, {"schema", "mode", "orders", "sideways"}).rc != 0);
  CHECK(cli(d, {"schema", "mode", "nosuch", "none"}).err == "shmbus: no topic 'nosuch'\n");
  // A restart keeps the mode (it is one of the topic's settings).
  REQUIRE(d.stop());
  REQUIRE(d.start());
  CHECK(cli(d, {"schema", "history", "orders"}).out.rfind("orders (mode full)\n", 0) == 0);
  CHECK(cli(d, {"topic", "create", "orders", "--capacity", "65536", "--schema-mode", "full"}).rc ==
        0);  // same settings

  SecondUser u = second_user();
  if (!u.skip.empty()) {
    WARN("second uid part skipped: " << u.skip);
    return;
  }
  REQUIRE(cli(d, {"topic", "create", "shared", "--capacity", "65536", "--publish-uid", std::to_string(u.uid)})
              .rc == 0);
  r = cli(d, {"schema", "mode", "shared", "none"}, &u);  // may publish, does not own it
  CHECK(r.rc == 1);
  CHECK(r.err == "shmbus: only the topic's owner or root may change the schema mode of 'shared'\n");
  r = cli(d, {"schema", "mode", "orders", "none"}, &u);  // no access at all: no such topic
  CHECK(r.err == "shmbus: no topic 'orders'\n");
  // Unchanged: backward still refuses a type change after v1.
  REQUIRE(cli(d, {"schema", "register", "shared", v1}).rc == 0);
  CHECK(cli(d, {"schema", "register", "shared", changed}).rc == 1);
}
