// shmbus pub: publishes messages written as JSON, encoded with the topic's Cap'n Proto
// schema (the registered one, or --schema FILE.capnp:Type, or one compiled into the
// tool), through capnp::JsonCodec. The JSON is checked against the schema first, so
// that an error names the field (lines[2].qty) and what was expected.
#include <time.h>

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>

#include <capnp/compat/json.h>
#include <capnp/dynamic.h>
#include <capnp/serialize.h>

#include "cli/common.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/envelope.hpp"
#include "shmbus/publisher.hpp"

namespace shmbus::cli {
namespace {

using capnp::JsonValue;

const char* json_kind(JsonValue::Reader v) {
  switch (v.which()) {
    case JsonValue::NULL_: return "null";
    case JsonValue::BOOLEAN: return "a boolean";
    case JsonValue::NUMBER: return "a number";
    case JsonValue::STRING: return "a string";
    case JsonValue::ARRAY: return "an array";
    case JsonValue::OBJECT: return "an object";
    case JsonValue::CALL: return "a call";
  }
  return "?";
}

std::string type_name(capnp::Type t) {
  using W = capnp::schema::Type;
  switch (t.which()) {
    case W::VOID: return "Void";
    case W::BOOL: return "Bool";
    case W::INT8: return "Int8";
    case W::INT16: return "Int16";
    case W::INT32: return "Int32";
    case W::INT64: return "Int64";
    case W::UINT8: return "UInt8";
    case W::UINT16: return "UInt16";
    case W::UINT32: return "UInt32";
    case W::UINT64: return "UInt64";
    case W::FLOAT32: return "Float32";
    case W::FLOAT64: return "Float64";
    case W::TEXT: return "Text";
    case W::DATA: return "Data";
    case W::LIST: return "List(" + type_name(t.asList().getElementType()) + ")";
    case W::ENUM: return t.asEnum().getShortDisplayName().cStr();
    case W::STRUCT: return t.asStruct().getShortDisplayName().cStr();
    case W::INTERFACE: return "an interface";
    case W::ANY_POINTER: return "AnyPointer";
  }
  return "?";
}

// Checks `v` against `t`; throws std::runtime_error naming `path`.
class JsonChecker {
 public:
  void check(const std::string& path, capnp::Type t, JsonValue::Reader v) {
    using W = capnp::schema::Type;
    auto bad = [&](const std::string& why) {
      throw std::runtime_error("field '" + path + "' (" + type_name(t) + "): " + why);
    };
    auto expected = [&](const char* what) { bad(std::string("expected ") + what + ", got " + json_kind(v)); };
    if (v.isNull()) {
      switch (t.which()) {
        case W::TEXT:
        case W::DATA:
        case W::LIST:
        case W::STRUCT:
        case W::VOID: return;  // a null pointer (or Void)
        default: expected("a value");
      }
    }
    switch (t.which()) {
      case W::VOID: expected("null"); break;
      case W::BOOL:
        if (!v.isBoolean()) expected("true or false");
        break;
      case W::INT8: integer(v, -128, 127, bad, expected); break;
      case W::INT16: integer(v, -32768, 32767, bad, expected); break;
      case W::INT32: integer(v, INT32_MIN, INT32_MAX, bad, expected); break;
      case W::INT64: integer(v, double(INT64_MIN), double(INT64_MAX), bad, expected); break;
      case W::UINT8: integer(v, 0, 255, bad, expected); break;
      case W::UINT16: integer(v, 0, 65535, bad, expected); break;
      case W::UINT32: integer(v, 0, UINT32_MAX, bad, expected); break;
      case W::UINT64: integer(v, 0, double(UINT64_MAX), bad, expected); break;
      case W::FLOAT32:
      case W::FLOAT64:
        if (v.isString()) {
          const std::string s = v.getString().cStr();
          if (s != "NaN" && s != "Infinity" && s != "-Infinity")
            expected("a number (or \"NaN\", \"Infinity\")");
        } else if (!v.isNumber()) {
          expected("a number");
        }
        break;
      case W::TEXT:
        if (!v.isString()) expected("a string");
        break;
      case W::DATA: {
        if (!v.isArray()) expected("an array of byte values 0-255");
        uint32_t i = 0;
        for (auto e : v.getArray()) {
          if (!e.isNumber() || e.getNumber() < 0 || e.getNumber() > 255 ||
              e.getNumber() != std::floor(e.getNumber()))
            bad("element " + std::to_string(i) + " is not a byte value 0-255");
          ++i;
        }
        break;
      }
      case W::LIST: {
        if (!v.isArray()) expected("an array");
        uint32_t i = 0;
        const capnp::Type et = t.asList().getElementType();
        for (auto e : v.getArray()) check(path + "[" + std::to_string(i++) + "]", et, e);
        break;
      }
      case W::ENUM: {
        auto es = t.asEnum();
        if (v.isString()) {
          KJ_IF_MAYBE (e, es.findEnumerantByName(v.getString())) {
            (void)e;
          } else {
            std::string names;
            for (auto e : es.getEnumerants())
              names += (names.empty() ? "" : ", ") + std::string(e.getProto().getName().cStr());
            bad("no enumerant '" + std::string(v.getString().cStr()) + "' (it has " + names + ")");
          }
        } else if (v.isNumber()) {
          const double n = v.getNumber();
          if (n < 0 || n >= es.getEnumerants().size() || n != std::floor(n))
            bad("enumerant number " + std::to_string(n) + " out of range");
        } else {
          expected("an enumerant name");
        }
        break;
      }
      case W::STRUCT:
        if (!v.isObject()) expected("an object");
        object(path, t.asStruct(), v);
        break;
      case W::INTERFACE:
      case W::ANY_POINTER: bad("cannot be given as JSON");
    }
  }

  // The message itself (path "" names fields without a prefix).
  void object(const std::string& path, capnp::StructSchema s, JsonValue::Reader v) {
    std::string union_member;
    for (auto f : v.getObject()) {
      const std::string name = f.getName().cStr();
      const std::string fpath = path.empty() ? name : path + "." + name;
      KJ_IF_MAYBE (field, s.findFieldByName(f.getName())) {
        if (field->getProto().getDiscriminantValue() != capnp::schema::Field::NO_DISCRIMINANT) {
          if (!union_member.empty())
            throw std::runtime_error("fields '" + union_member + "' and '" + fpath +
                                     "' are members of one union of " +
                                     std::string(s.getShortDisplayName().cStr()) + ": give one");
          union_member = fpath;
        }
        check(fpath, field->getType(), f.getValue());
      } else {
        std::string names;
        for (auto g : s.getFields())
          names += (names.empty() ? "" : ", ") + std::string(g.getProto().getName().cStr());
        throw std::runtime_error("unknown field '" + fpath +
                                 "': " + std::string(s.getShortDisplayName().cStr()) + " has " +
                                 (names.empty() ? std::string("no fields") : names));
      }
    }
  }

 private:
  template <class Bad, class Expected>
  static void integer(JsonValue::Reader v, double lo, double hi, Bad& bad, Expected& expected) {
    double n = 0;
    if (v.isNumber()) {
      n = v.getNumber();
    } else if (v.isString()) {  // 64-bit integers are strings in capnp's JSON (as tail prints them)
      const std::string s = v.getString().cStr();
      char* end = nullptr;
      errno = 0;
      if (s.empty()) expected("an integer");
      if (s[0] == '-') {
        const long long x = std::strtoll(s.c_str(), &end, 10);
        n = double(x);
      } else {
        const unsigned long long x = std::strtoull(s.c_str(), &end, 10);
        n = double(x);
      }
      if (errno || !end || *end) bad("'" + s + "' is not an integer");
    } else {
      expected("an integer");
    }
    if (n != std::floor(n)) bad(std::to_string(n) + " is not an integer");
    if (n < lo || n > hi) {
      char b[64];
      std::snprintf(b, sizeof b, "%.17g is out of range", n);
      bad(b);
    }
  }
};

// The JSON inputs: one message per line of a file or stdin (blank lines skipped), or
// the --json text.
std::vector<std::string> read_inputs(const PubArgs& a) {
  std::vector<std::string> in;
  if (!a.json_text.empty()) {
    in.push_back(a.json_text);
    return in;
  }
  std::ifstream f;
  std::istream* s = &std::cin;
  if (a.json_file != "-") {
    f.open(a.json_file);
    if (!f) throw Error(ErrorCode::not_found, a.json_file + ": " + strerror(errno));
    s = &f;
  }
  std::string line;
  while (std::getline(*s, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    in.push_back(line);
  }
  return in;
}

// FNV-1a: --key K picks partition fnv1a(K) % partitions (stable across runs and tools).
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

void sleep_until(uint64_t t_ns) {
  timespec ts{time_t(t_ns / 1'000'000'000ull), long(t_ns % 1'000'000'000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR && !g_stop) {
  }
}

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

}  // namespace

int run_pub(DaemonClient& c, const std::string& socket, const PubArgs& a, bool json) {
  auto fail = [&](const std::string& why) {
    if (json) std::printf("{\"error\":%s}\n", jstr(why).c_str());
    std::fprintf(stderr, "shmbus: %s\n", why.c_str());
    return 1;
  };
  if (a.json_text.empty() == a.json_file.empty())
    return fail("give the message as one of --json TEXT or --json-file FILE (- : stdin)");
  if (a.partition >= 0 && !a.key.empty()) return fail("--partition and --key exclude each other");
  if (a.rate < 0) return fail("--rate must be >= 0");

  auto rep = c.call([&](proto::Request::Builder r) { r.setDescribeTopic(a.topic); });
  auto spec = rep.get().getTopic().getSpec();
  const uint32_t partitions = spec.getPartitions();
  const uint64_t topic_schema = spec.getSchemaId();

  // The schema: --schema, else the registered one, else one compiled into the tool.
  SchemaNodes presented, nodes;
  std::string source;
  if (!a.schema.empty()) {
    presented = parse_schema_file(a.schema, a.import_path);
    nodes = presented;
    source = a.schema;
  } else {
    nodes = registered_schema(c, a.topic);
    source = "the schema registered for '" + a.topic + "'";
    capnp::StructSchema compiled;
    if (!nodes && topic_schema && find_schema(topic_schema, compiled)) {
      nodes = schema_nodes(compiled);
      source = "the schema compiled into shmbus";
    }
  }
  if (!nodes)
    return fail("topic '" + a.topic +
                "' has no registered schema (and none compiled into shmbus for its schema id " +
                hex64(topic_schema) + "): register one with `shmbus schema register " + a.topic +
                " FILE.capnp:Type`, or give --schema FILE.capnp:Type");
  std::optional<SchemaBundle> bundle;
  bundle.emplace(SchemaBundle::parse({nodes.bytes.data(), nodes.bytes.size()}, nodes.root_id));
  const capnp::StructSchema root = bundle->root_schema();
  const std::string tname = bundle->type_name(nodes.root_id);
  if (topic_schema && topic_schema != nodes.root_id)
    return fail("topic '" + a.topic + "' declares root type " + hex64(topic_schema) + "; " + source + " is " +
                tname + " " + hex64(nodes.root_id));

  uint32_t partition = 0;
  if (a.partition >= 0) {
    if (uint64_t(a.partition) >= partitions)
      return fail("topic '" + a.topic + "' has no partition " + std::to_string(a.partition) + " (it has " +
                  std::to_string(partitions) + ")");
    partition = uint32_t(a.partition);
  } else if (!a.key.empty()) {
    partition = uint32_t(fnv1a(a.key) % partitions);
  }

  // Every input encoded before anything is published: a bad one publishes nothing.
  std::vector<std::string> inputs;
  try {
    inputs = read_inputs(a);
  } catch (const Error& e) {
    return fail(e.what());
  }
  if (inputs.empty()) return fail("no JSON message in the input");
  capnp::JsonCodec codec;
  std::vector<kj::Array<capnp::word>> msgs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string where = inputs.size() > 1 ? "message " + std::to_string(i + 1) + ": " : "";
    capnp::MallocMessageBuilder raw;
    auto jv = raw.initRoot<JsonValue>();
    try {
      codec.decodeRaw(kj::StringPtr(inputs[i].c_str()), jv);
    } catch (const kj::Exception& e) {
      return fail(where + "not JSON: " + e.getDescription().cStr());
    }
    if (!jv.asReader().isObject())
      return fail(where + "expected a JSON object for " + tname + ", got " + json_kind(jv.asReader()));
    try {
      JsonChecker().object("", root, jv.asReader());
    } catch (const std::runtime_error& e) {
      return fail(where + e.what() + " (schema " + tname + ")");
    }
    try {
      capnp::MallocMessageBuilder mb;
      codec.decode(jv.asReader(), mb.initRoot<capnp::DynamicStruct>(root));
      msgs.push_back(capnp::messageToFlatArray(mb));
    } catch (const kj::Exception& e) {
      return fail(where + "cannot encode as " + tname + ": " + e.getDescription().cStr());
    }
  }

  const bool enveloped = a.envelope || a.correlation_id || a.causation_id || !a.reply_to.empty() ||
                         !a.traceparent.empty() || a.content_version;
  Envelope env;
  env.correlation_id = a.correlation_id;
  env.causation_id = a.causation_id;
  env.reply_to = a.reply_to;
  env.content_version = a.content_version;
  if (a.reply_to.size() > kMaxReplyTo) return fail("--reply-to is longer than 255 bytes");
  if (!a.traceparent.empty()) {
    auto tc = TraceContext::parse(a.traceparent);
    if (!tc)
      return fail("--traceparent: expected 00-<32 hex>-<16 hex>-<2 hex> with non-zero ids, got '" +
                  a.traceparent + "'");
    env.trace = *tc;
  }

  stop_on_signals();
  Bus bus = Bus::connect(socket);
  PublisherOptions po;
  po.partition = partition;
  po.schema_id = nodes.root_id;
  po.schema = presented;  // --schema: registered (or refused, naming the field) at open
  po.block_timeout_ns = 10'000'000'000;
  Publisher pub = bus.publisher(a.topic, po);
  const uint64_t total = a.count ? a.count : msgs.size();
  uint64_t published = 0, first_seq = 0, last_seq = 0;
  const uint64_t t0 = now_ns();
  const double period_ns = a.rate > 0 ? 1e9 / a.rate : 0;
  for (uint64_t i = 0; i < total && !g_stop; ++i) {
    if (period_ns > 0) sleep_until(t0 + uint64_t(double(i) * period_ns));
    if (g_stop) break;
    const auto bytes = msgs[i % msgs.size()].asBytes();
    if (bytes.size() > pub.max_payload())
      return fail("a message of " + std::to_string(bytes.size()) +
                  " bytes is larger than the topic's max payload (" + std::to_string(pub.max_payload()) +
                  ")");
    ClaimView cv;
    Status st;
    if (enveloped) {
      // The frame's schema id is the Envelope's; the payload's is the root's.
      // (publish_enveloped does not say the sequence: first_seq/last_seq stay 0.)
      st = publish_enveloped(
          pub, env,
          std::span<const std::byte>(reinterpret_cast<const std::byte*>(bytes.begin()), bytes.size()),
          a.message_id, nodes.root_id);
    } else {
      st = pub.claim(uint32_t(bytes.size()), cv);
      if (st == Status::ok) {
        std::memcpy(cv.data, bytes.begin(), bytes.size());
        st = pub.commit(uint32_t(bytes.size()), a.message_id, nodes.root_id);
      }
    }
    if (st != Status::ok)
      return fail("publish to '" + a.topic + "' [" + std::to_string(partition) + "] failed after " +
                  std::to_string(published) + " messages: " + to_string(st));
    if (!published) first_seq = cv.sequence;
    last_seq = cv.sequence;
    ++published;
  }
  if (json)
    std::printf("{\"topic\":%s,\"partition\":%u,\"published\":%" PRIu64 ",\"first_seq\":%" PRIu64
                ",\"last_seq\":%" PRIu64 ",\"schema_id\":\"%s\",\"type\":%s,\"enveloped\":%s}\n",
                jstr(a.topic).c_str(), partition, published, first_seq, last_seq,
                hex64(nodes.root_id).c_str(), jstr(tname).c_str(), enveloped ? "true" : "false");
  else if (enveloped)
    std::printf("published %" PRIu64 " enveloped %s to %s[%u] (%s %s)\n", published,
                published == 1 ? "message" : "messages", a.topic.c_str(), partition, tname.c_str(),
                hex64(nodes.root_id).c_str());
  else
    std::printf("published %" PRIu64 " %s to %s[%u] (seq %" PRIu64 "-%" PRIu64 ", %s %s)\n", published,
                published == 1 ? "message" : "messages", a.topic.c_str(), partition, first_seq, last_seq,
                tname.c_str(), hex64(nodes.root_id).c_str());
  return published == total ? 0 : 1;
}

}  // namespace shmbus::cli
