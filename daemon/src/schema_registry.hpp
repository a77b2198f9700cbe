// The schema registry (docs/messaging.md, "Schema registry"): every distinct schema
// version presented for a topic, stored durably under <state-dir>/schemas/, and the
// compatibility check of a new version against the stored ones by the topic's mode.
// Owned by the registry thread (no locking).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "control.capnp.h"
#include "shmbus/schema_nodes.hpp"

namespace shmbus::daemon {

class Core;

// Why `nu` may not replace `old` (empty: it may): "schema of orders.Order refused:
// field 'price' @2 changed type Float64 -> Text". Fields are matched by ordinal
// (groups by name): a kept field keeps its ordinal, name-to-ordinal binding, type,
// union membership and group shape; no field is removed; enumerants are only added.
std::string schema_incompatibility(const SchemaBundle& old, const SchemaBundle& nu);

const char* schema_mode_name(proto::SchemaMode m);

class SchemaRegistry {
 public:
  explicit SchemaRegistry(Core& core) : core_(core) {}

  struct Outcome {
    proto::ErrorCode code = proto::ErrorCode::OK;
    std::string error;
    uint32_t version = 0;  // the version it is / would be; 0: none
    bool stored = false;
  };
  // Validates `bytes` (hostile), checks them against the topic's versions by `mode`
  // and, when `store`, keeps a new version (written to disk before this returns).
  // `declared_root`: the topic's schemaId (0: any; else the root must be it).
  // Per-uid bounds on a new version (0: unbounded): versions `uid` added to this
  // topic (uid_max_schema_versions, a topic it does not own), and the schema bytes
  // it has stored in all topics (uid_max_schema_bytes; see load_all).
  struct Limits {
    uint32_t max_versions = 0;
    uint64_t max_bytes = 0;
  };
  Outcome present(const std::string& topic, proto::SchemaMode mode, uint64_t declared_root, uint32_t uid,
                  std::span<const uint8_t> bytes, uint64_t root_id, bool store, Limits lim);
  // Loads every topic's stored versions (once), so that a uid's stored bytes are
  // counted over all of them, not only the topics used since the start.
  void load_all(const std::vector<std::string>& topics);
  // The topic's versions (the nodes of `version` only, 0: the latest). False with
  // `err` when the topic has none or not that one.
  bool history(const std::string& topic, proto::SchemaMode mode, uint32_t version,
               proto::SchemaHistory::Builder b, std::string& err);
  // The topic was deleted: its history goes (memory and file).
  void topic_deleted(const std::string& topic);

  static constexpr uint32_t kMaxVersions = 64;

 private:
  struct Version {
    uint32_t version = 0;
    uint64_t registered_ns = 0;
    uint32_t uid = 0;
    uint64_t root_id = 0;
    std::vector<uint8_t> bytes;
    std::string type_name;
    std::string text;  // SchemaBundle::identity(): what makes two versions the same
  };
  std::vector<Version>& versions(const std::string& topic);  // loaded from disk on first use
  bool save(const std::string& topic, const std::vector<Version>& v, std::string& err);
  int dir_fd(std::string& err);  // <state-dir>/schemas, created 0700 and checked

  Core& core_;
  std::map<std::string, std::vector<Version>> cache_;
  bool all_loaded_ = false;
};

}  // namespace shmbus::daemon
