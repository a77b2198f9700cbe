// Schema nodes for the schema registry (docs/messaging.md, "Schema registry").
//
// A publisher or subscriber may present its compiled Cap'n Proto schema when it opens
// a topic through shmbusd:
//
//   shmbus::PublisherOptions po;
//   po.schema = shmbus::with_schema<orders::Order>();
//   auto pub = bus.publisher("orders", po);   // Error(incompatible) names field and rule
//
// The bytes are one serialized Cap'n Proto message whose root is a schema.capnp
// CodeGeneratorRequest holding the nodes of the root struct and of every struct and
// enum its fields use (what `capnp compile -o-` writes is accepted too).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <capnp/schema-loader.h>
#include <capnp/schema.capnp.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

namespace shmbus {

struct SchemaNodes {
  uint64_t root_id = 0;        // the root struct's type id; 0: no schema presented
  std::vector<uint8_t> bytes;  // serialized CodeGeneratorRequest (see above)
  explicit operator bool() const { return root_id != 0; }
};

// The nodes of `root` and of the structs and enums it uses (transitively).
SchemaNodes schema_nodes(capnp::StructSchema root);
template <class T>
SchemaNodes with_schema() {
  return schema_nodes(capnp::Schema::from<T>());
}

// Limits on presented schemas (the daemon refuses more).
inline constexpr size_t kMaxSchemaBytes = 128 * 1024;
inline constexpr uint32_t kMaxSchemaNodes = 2048;

// A validated set of schema nodes. parse() takes hostile bytes: it copies them into
// aligned memory it owns, reads them with traversal and nesting limits, checks node
// ids (non-zero, unique), that the root is a struct among them, and loads every node
// into a capnp::SchemaLoader (which validates each node). Throws shmbus::Error
// (invalid_argument) saying what is wrong.
class SchemaBundle {
 public:
  static SchemaBundle parse(std::span<const uint8_t> bytes, uint64_t root_id);
  SchemaBundle(SchemaBundle&&) = default;
  SchemaBundle& operator=(SchemaBundle&&) = default;

  uint64_t root_id() const { return root_; }
  bool find(uint64_t id, capnp::schema::Node::Reader& out) const;
  // "orders.Order" for a node "dir/orders.capnp:Order"; "0x..." when not present.
  std::string type_name(uint64_t id) const;
  // A type as Cap'n Proto writes it: Float64, Text, List(Int32), orders.Line, ...
  std::string type_text(capnp::schema::Type::Reader t, int depth = 0) const;
  // A primitive field's default as text (floats with their bits: -0.0 and NaNs
  // differ), or empty for a pointer type's (text, data, list, struct, any pointer)
  // and void's. Part of a field's encoding (stored XORed with it).
  static std::string primitive_default(capnp::schema::Value::Reader v);
  // The ids of the root and of the structs and enums reachable from it, root first.
  std::vector<uint64_t> reachable() const;
  // The root and its dependencies as capnp schema text (ids, ordinals, unions and
  // groups).
  std::string text() const;
  // text() with every type named by its id: two bundles with equal identities are
  // the same version (whatever the file they were compiled from is called).
  std::string identity() const;
  // The root as a schema for dynamic reading (capnp::DynamicStruct).
  capnp::StructSchema root_schema() const;

 private:
  SchemaBundle() = default;
  void struct_text(std::string& o, uint64_t id, int indent, int depth) const;
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
  std::map<uint64_t, capnp::schema::Node::Reader> nodes_;
  std::unique_ptr<capnp::SchemaLoader> loader_;
  uint64_t root_ = 0;
  mutable bool by_id_ = false;  // identity(): type names are ids
};

}  // namespace shmbus
