// Schema nodes: collecting a compiled schema's nodes, and reading presented ones
// (hostile bytes) into a validated bundle. See shmbus/schema_nodes.hpp.
#include "shmbus/schema_nodes.hpp"

#include <kj/exception.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <set>

#include "shmbus/error.hpp"

namespace shmbus {

namespace cs = capnp::schema;

namespace {

void collect(capnp::Schema s, std::map<uint64_t, capnp::Schema>& out);

void collect_type(capnp::Type t, std::map<uint64_t, capnp::Schema>& out) {
  for (int i = 0; t.isList() && i < 64; ++i) t = t.asList().getElementType();
  if (t.isStruct())
    collect(t.asStruct(), out);
  else if (t.isEnum())
    collect(t.asEnum(), out);
}

void collect(capnp::Schema s, std::map<uint64_t, capnp::Schema>& out) {
  const uint64_t id = s.getProto().getId();
  if (out.count(id)) return;
  out.emplace(id, s);
  if (s.getProto().isStruct())
    for (auto f : s.asStruct().getFields()) collect_type(f.getType(), out);
}

std::string hex_id(uint64_t id) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%016" PRIx64, id);
  return b;
}

std::string clip(kj::StringPtr s) {
  std::string r(s.cStr(), std::min<size_t>(s.size(), 200));
  for (char& c : r)
    if (c < 0x20 || c == 0x7f) c = '?';
  return r;
}

// Reads every name SchemaLoader's validator puts in its error context (KJ_CONTEXT):
// in capnp 0.9 a malformed one (a pointer of the wrong kind, text without its NUL)
// throws again while the context is evaluated for the first error, which recurses
// until the stack overflows. Reading them here first turns that into an ordinary
// error.
void names_readable(cs::Node::Reader n) {
  (void)n.getDisplayName();
  for (auto x : n.getNestedNodes()) (void)x.getName();
  switch (n.which()) {
    case cs::Node::STRUCT:
      for (auto f : n.getStruct().getFields()) (void)f.getName();
      break;
    case cs::Node::ENUM:
      for (auto e : n.getEnum().getEnumerants()) (void)e.getName();
      break;
    case cs::Node::INTERFACE:
      for (auto m : n.getInterface().getMethods()) (void)m.getName();
      break;
    default: break;
  }
}

}  // namespace

SchemaNodes schema_nodes(capnp::StructSchema root) {
  std::map<uint64_t, capnp::Schema> all;
  collect(root, all);
  capnp::MallocMessageBuilder mb;
  auto req = mb.initRoot<cs::CodeGeneratorRequest>();
  auto l = req.initNodes(uint32_t(all.size()));
  uint32_t i = 0;
  for (auto& [id, s] : all) l.setWithCaveats(i++, s.getProto());
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  SchemaNodes n;
  n.root_id = root.getProto().getId();
  n.bytes.assign(bytes.begin(), bytes.end());
  return n;
}

SchemaBundle SchemaBundle::parse(std::span<const uint8_t> bytes, uint64_t root_id) {
  auto bad = [](const std::string& why) {
    return Error(ErrorCode::invalid_argument, "malformed schema nodes: " + why);
  };
  if (bytes.size() < 8 || bytes.size() > kMaxSchemaBytes || bytes.size() % 8 != 0)
    throw bad(std::to_string(bytes.size()) + " bytes (must be 8.." + std::to_string(kMaxSchemaBytes) +
              ", a multiple of 8)");
  if (root_id == 0) throw bad("no root type id");
  SchemaBundle b;
  b.root_ = root_id;
  b.words_ = kj::heapArray<capnp::word>(bytes.size() / 8);
  std::memcpy(b.words_.begin(), bytes.data(), bytes.size());
  try {
    // One full walk under a traversal limit of the buffer's own size (no
    // amplification: no object is counted twice) and a nesting limit.
    capnp::ReaderOptions ro;
    ro.traversalLimitInWords = b.words_.size() + 8;
    ro.nestingLimit = 64;
    {
      capnp::FlatArrayMessageReader check(b.words_.asPtr(), ro);
      if (check.getEnd() != b.words_.end()) throw bad("trailing bytes after the message");
      check.getRoot<capnp::AnyPointer>().targetSize();
    }
    // Each node is read a few times below (ids, the loader's copy).
    ro.traversalLimitInWords = b.words_.size() * 8 + 64;
    b.reader_ = std::make_unique<capnp::FlatArrayMessageReader>(b.words_.asPtr(), ro);
    auto nodes = b.reader_->getRoot<cs::CodeGeneratorRequest>().getNodes();
    if (nodes.size() == 0 || nodes.size() > kMaxSchemaNodes)
      throw bad(std::to_string(nodes.size()) + " nodes (must be 1.." + std::to_string(kMaxSchemaNodes) + ")");
    b.loader_ = std::make_unique<capnp::SchemaLoader>();
    std::set<uint64_t> seen;
    for (auto n : nodes) {
      names_readable(n);
      const uint64_t id = n.getId();
      if (id == 0) throw bad("a node with id 0");
      if (!seen.insert(id).second) throw bad("node " + hex_id(id) + " appears twice");
    }
    for (auto n : nodes) {
      try {
        // The loader validates the node and keeps its own copy: everything below
        // reads the copy.
        b.nodes_[n.getId()] = b.loader_->load(n).getProto();
      } catch (const kj::Exception& e) {
        throw bad("node " + hex_id(n.getId()) + " (" + clip(n.getDisplayName()) +
                  ") is invalid: " + clip(e.getDescription()));
      }
    }
  } catch (const kj::Exception& e) {
    throw bad(clip(e.getDescription()));
  }
  // Groups are inline parts of one struct: in a compiled schema each group node is
  // the target of exactly one group field, and following a group's parents ends at an
  // ordinary struct. A presented schema that reuses a group (G with N group fields to
  // G) or makes groups a cycle describes an infinite (or exponentially large) struct:
  // expanding it ran shmbusd out of memory and made a JSON encoder recurse forever.
  {
    std::map<uint64_t, uint64_t> parent;  // group id -> the struct whose field holds it
    for (auto& [id, n] : b.nodes_) {
      if (!n.isStruct()) continue;
      for (auto f : n.getStruct().getFields()) {
        if (!f.isGroup()) continue;
        const uint64_t g = f.getGroup().getTypeId();
        auto gn = b.nodes_.find(g);
        if (gn == b.nodes_.end() || !gn->second.isStruct() || !gn->second.getStruct().getIsGroup())
          throw bad("field '" + clip(f.getName()) + "' of " + hex_id(id) + " names " + hex_id(g) +
                    ", which is not a group among the nodes");
        if (!parent.emplace(g, id).second)
          throw bad("group " + hex_id(g) + " is the target of more than one field");
      }
    }
    for (auto& [g, p] : parent) {
      uint64_t at = p;
      for (size_t steps = 0;; ++steps) {
        auto up = parent.find(at);
        if (up == parent.end()) break;  // `at` is not a group: an ordinary struct
        if (steps > 64) throw bad("group " + hex_id(g) + " is nested in a cycle (or deeper than 64)");
        at = up->second;
      }
    }
  }
  auto it = b.nodes_.find(root_id);
  if (it == b.nodes_.end()) throw bad("the root type " + hex_id(root_id) + " is not among the nodes");
  if (!it->second.isStruct()) throw bad("the root type " + hex_id(root_id) + " is not a struct");
  return b;
}

bool SchemaBundle::find(uint64_t id, cs::Node::Reader& out) const {
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return false;
  out = it->second;
  return true;
}

std::string SchemaBundle::type_name(uint64_t id) const {
  cs::Node::Reader n;
  if (by_id_ || !find(id, n)) return hex_id(id);
  std::string s = clip(n.getDisplayName());
  auto slash = s.rfind('/');
  if (slash != std::string::npos) s = s.substr(slash + 1);
  auto c = s.find(".capnp:");
  if (c != std::string::npos) s = s.substr(0, c) + "." + s.substr(c + 7);
  return s.empty() ? hex_id(id) : s;
}

std::string SchemaBundle::type_text(cs::Type::Reader t, int depth) const {
  switch (t.which()) {
    case cs::Type::VOID: return "Void";
    case cs::Type::BOOL: return "Bool";
    case cs::Type::INT8: return "Int8";
    case cs::Type::INT16: return "Int16";
    case cs::Type::INT32: return "Int32";
    case cs::Type::INT64: return "Int64";
    case cs::Type::UINT8: return "UInt8";
    case cs::Type::UINT16: return "UInt16";
    case cs::Type::UINT32: return "UInt32";
    case cs::Type::UINT64: return "UInt64";
    case cs::Type::FLOAT32: return "Float32";
    case cs::Type::FLOAT64: return "Float64";
    case cs::Type::TEXT: return "Text";
    case cs::Type::DATA: return "Data";
    case cs::Type::LIST:
      if (depth > 32) return "List(...)";
      return "List(" + type_text(t.getList().getElementType(), depth + 1) + ")";
    case cs::Type::ENUM: return type_name(t.getEnum().getTypeId());
    case cs::Type::STRUCT: return type_name(t.getStruct().getTypeId());
    case cs::Type::INTERFACE: return type_name(t.getInterface().getTypeId());
    case cs::Type::ANY_POINTER: return "AnyPointer";
  }
  return "unknown type " + std::to_string(unsigned(t.which()));
}

std::vector<uint64_t> SchemaBundle::reachable() const {
  std::vector<uint64_t> out;
  std::set<uint64_t> seen{root_};
  std::deque<uint64_t> q{root_};
  while (!q.empty() && out.size() < kMaxSchemaNodes) {
    const uint64_t id = q.front();
    q.pop_front();
    cs::Node::Reader n;
    if (!find(id, n)) continue;
    out.push_back(id);
    if (!n.isStruct()) continue;
    auto push = [&](uint64_t d) {
      if (nodes_.count(d) && seen.insert(d).second) q.push_back(d);
    };
    for (auto f : n.getStruct().getFields()) {
      if (f.isGroup()) {
        push(f.getGroup().getTypeId());
        continue;
      }
      auto t = f.getSlot().getType();
      for (int i = 0; t.isList() && i < 64; ++i) t = t.getList().getElementType();
      if (t.isStruct())
        push(t.getStruct().getTypeId());
      else if (t.isEnum())
        push(t.getEnum().getTypeId());
    }
  }
  return out;
}

std::string SchemaBundle::primitive_default(cs::Value::Reader v) {
  char b[48];
  switch (v.which()) {
    case cs::Value::BOOL: return v.getBool() ? "true" : "false";
    case cs::Value::INT8: return std::to_string(v.getInt8());
    case cs::Value::INT16: return std::to_string(v.getInt16());
    case cs::Value::INT32: return std::to_string(v.getInt32());
    case cs::Value::INT64: return std::to_string(v.getInt64());
    case cs::Value::UINT8: return std::to_string(v.getUint8());
    case cs::Value::UINT16: return std::to_string(v.getUint16());
    case cs::Value::UINT32: return std::to_string(v.getUint32());
    case cs::Value::UINT64: return std::to_string(v.getUint64());
    case cs::Value::FLOAT32: {
      const float f = v.getFloat32();
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      std::snprintf(b, sizeof b, "%.9g (0x%08" PRIx32 ")", double(f), bits);
      return b;
    }
    case cs::Value::FLOAT64: {
      const double f = v.getFloat64();
      uint64_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      std::snprintf(b, sizeof b, "%.17g (0x%016" PRIx64 ")", f, bits);
      return b;
    }
    case cs::Value::ENUM: return "enumerant " + std::to_string(v.getEnum());
    default: return {};
  }
}

void SchemaBundle::struct_text(std::string& o, uint64_t id, int indent, int depth) const {
  cs::Node::Reader n;
  const std::string pad(size_t(indent) * 2, ' ');
  if (depth > 16 || !find(id, n) || !n.isStruct()) {
    o += pad + "# " + hex_id(id) + " not shown\n";
    return;
  }
  auto fields = n.getStruct().getFields();
  auto one = [&](cs::Field::Reader f, int ind) {
    const std::string p(size_t(ind) * 2, ' ');
    if (f.isGroup()) {
      o += p + clip(f.getName()) + " :group {\n";
      struct_text(o, f.getGroup().getTypeId(), ind + 1, depth + 1);
      o += p + "}\n";
    } else {
      o += p + clip(f.getName()) + " @" +
           std::to_string(f.getOrdinal().isExplicit() ? f.getOrdinal().getExplicit() : 0) + " :" +
           type_text(f.getSlot().getType());
      // A primitive default other than zero is shown (and so part of the identity).
      if (std::string d = primitive_default(f.getSlot().getDefaultValue());
          !d.empty() && d != "0" && d != "false" && d.rfind("0 (0x0", 0) != 0 && d != "enumerant 0")
        o += " = " + d;
      o += ";\n";
    }
  };
  for (auto f : fields)
    if (f.getDiscriminantValue() == cs::Field::NO_DISCRIMINANT) one(f, indent);
  if (n.getStruct().getDiscriminantCount() > 0) {
    o += pad + "union {\n";
    for (auto f : fields)
      if (f.getDiscriminantValue() != cs::Field::NO_DISCRIMINANT) one(f, indent + 1);
    o += pad + "}\n";
  }
}

std::string SchemaBundle::text() const {
  std::string o;
  for (uint64_t id : reachable()) {
    cs::Node::Reader n;
    find(id, n);
    if (n.isStruct()) {
      if (n.getStruct().getIsGroup()) continue;
      o += "struct " + type_name(id) + " " + hex_id(id) + " {\n";
      struct_text(o, id, 1, 0);
      o += "}\n";
    } else if (n.isEnum()) {
      o += "enum " + type_name(id) + " " + hex_id(id) + " {\n";
      uint32_t i = 0;
      for (auto e : n.getEnum().getEnumerants())
        o += "  " + clip(e.getName()) + " @" + std::to_string(i++) + ";\n";
      o += "}\n";
    }
  }
  return o;
}

std::string SchemaBundle::identity() const {
  by_id_ = true;
  std::string s;
  try {
    s = text();
  } catch (...) {
    by_id_ = false;
    throw;
  }
  by_id_ = false;
  return s;
}

capnp::StructSchema SchemaBundle::root_schema() const { return loader_->get(root_).asStruct(); }

}  // namespace shmbus
