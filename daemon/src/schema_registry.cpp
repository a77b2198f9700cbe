// The schema registry: compatibility rules, durable version history, and the
// registerSchema / schemaHistory requests (see schema_registry.hpp and
// docs/messaging.md, "Schema registry"). Presented nodes are hostile bytes: they are
// read only through SchemaBundle::parse (limits, SchemaLoader validation).
#include "schema_registry.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <optional>

#include "core.hpp"

namespace shmbus::daemon {

namespace cs = capnp::schema;

const char* schema_mode_name(proto::SchemaMode m) {
  switch (m) {
    case proto::SchemaMode::BACKWARD: return "backward";
    case proto::SchemaMode::FORWARD: return "forward";
    case proto::SchemaMode::FULL: return "full";
    case proto::SchemaMode::NONE: return "none";
  }
  return "unknown";
}

namespace {

constexpr uint32_t kNoOrdinal = 0xFFFFFFFFu;

uint32_t ordinal(cs::Field::Reader f) {
  return f.isSlot() && f.getOrdinal().isExplicit() ? f.getOrdinal().getExplicit() : kNoOrdinal;
}

std::string at(uint32_t o) { return o == kNoOrdinal ? std::string("@?") : "@" + std::to_string(o); }

std::string hex_id(uint64_t id) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%016" PRIx64, id);
  return b;
}

std::string name_of(cs::Field::Reader f) {
  auto n = f.getName();
  return std::string(n.cStr(), std::min<size_t>(n.size(), 200));
}

bool same_type(cs::Type::Reader a, cs::Type::Reader b, int depth = 0) {
  if (a.which() != b.which()) return false;
  switch (a.which()) {
    case cs::Type::LIST:
      return depth < 64 && same_type(a.getList().getElementType(), b.getList().getElementType(), depth + 1);
    case cs::Type::STRUCT: return a.getStruct().getTypeId() == b.getStruct().getTypeId();
    case cs::Type::ENUM: return a.getEnum().getTypeId() == b.getEnum().getTypeId();
    case cs::Type::INTERFACE: return a.getInterface().getTypeId() == b.getInterface().getTypeId();
    default: return true;
  }
}

struct Checker {
  const SchemaBundle& old;
  const SchemaBundle& nu;

  std::string refuse(uint64_t type, const std::string& what) const {
    return "schema of " + nu.type_name(type) + " refused: " + what;
  }

  std::string union_change(cs::Field::Reader f, cs::Field::Reader g, const std::string& field) const {
    const auto none = cs::Field::NO_DISCRIMINANT;
    const uint16_t fd = f.getDiscriminantValue(), gd = g.getDiscriminantValue();
    if (fd == none && gd != none) return field + " moved into a union";
    if (fd != none && gd == none) return field + " moved out of a union";
    if (fd != gd)
      return field + " changed its union position " + std::to_string(fd) + " -> " + std::to_string(gd);
    return {};
  }

  // Old struct `oid` against new struct `nid` (the same type, or a group of it).
  std::string structs(uint64_t oid, uint64_t nid, int depth) const {
    cs::Node::Reader on, nn;
    if (depth > 16 || !old.find(oid, on) || !nu.find(nid, nn)) return {};
    if (!on.isStruct() || !nn.isStruct()) return {};
    auto ofs = on.getStruct().getFields();
    auto nfs = nn.getStruct().getFields();
    for (auto f : ofs) {
      const std::string name = name_of(f);
      bool has_g = false, has_named = false;
      cs::Field::Reader g, named;
      for (auto x : nfs) {
        if (!has_named && name_of(x) == name) named = x, has_named = true;
        if (f.isSlot() && !has_g && x.isSlot() && ordinal(x) == ordinal(f)) g = x, has_g = true;
      }
      if (f.isGroup()) {
        const std::string field = "group '" + name + "'";
        if (!has_named) return refuse(nid, field + " removed");
        if (!named.isGroup())
          return refuse(nid, field + " changed from a group to a field " + at(ordinal(named)));
        if (auto u = union_change(f, named, field); !u.empty()) return refuse(nid, u);
        if (auto r = structs(f.getGroup().getTypeId(), named.getGroup().getTypeId(), depth + 1); !r.empty())
          return r;
        continue;
      }
      const uint32_t o = ordinal(f);
      const std::string field = "field '" + name + "' " + at(o);
      if (!has_g) {
        if (has_named && named.isSlot())
          return refuse(nid, "field '" + name + "' renumbered " + at(o) + " -> " + at(ordinal(named)));
        if (has_named) return refuse(nid, field + " changed from a field to a group");
        return refuse(nid, field + " removed");
      }
      if (name_of(g) != name && has_named && named.isSlot() && ordinal(named) != o)
        return refuse(nid, "field '" + name + "' renumbered " + at(o) + " -> " + at(ordinal(named)));
      if (!same_type(f.getSlot().getType(), g.getSlot().getType()))
        return refuse(nid, field + " changed type " + old.type_text(f.getSlot().getType()) + " -> " +
                               nu.type_text(g.getSlot().getType()));
      // A primitive field is stored XORed with its default: a changed default makes
      // every old message read differently (and the new ones to old readers), in
      // either direction of compatibility.
      const std::string od = SchemaBundle::primitive_default(f.getSlot().getDefaultValue());
      const std::string nd = SchemaBundle::primitive_default(g.getSlot().getDefaultValue());
      if (od != nd) return refuse(nid, field + " changed its default value " + od + " -> " + nd);
      if (auto u = union_change(f, g, field); !u.empty()) return refuse(nid, u);
    }
    return {};
  }

  std::string enums(uint64_t id) const {
    cs::Node::Reader on, nn;
    old.find(id, on);
    nu.find(id, nn);
    auto oe = on.getEnum().getEnumerants();
    auto ne = nn.getEnum().getEnumerants();
    if (ne.size() < oe.size()) {
      auto n = oe[ne.size()].getName();
      return refuse(id, "enumerant '" + std::string(n.cStr(), std::min<size_t>(n.size(), 200)) + "' @" +
                            std::to_string(ne.size()) + " removed");
    }
    return {};
  }
};

}  // namespace

std::string schema_incompatibility(const SchemaBundle& old, const SchemaBundle& nu) {
  Checker c{old, nu};
  for (uint64_t id : nu.reachable()) {
    cs::Node::Reader on, nn;
    if (!old.find(id, on)) continue;  // a type new to this version
    nu.find(id, nn);
    if (on.which() != nn.which()) return c.refuse(id, "the type " + hex_id(id) + " changed its kind");
    if (nn.isStruct()) {
      if (nn.getStruct().getIsGroup()) continue;  // checked with its parent
      if (auto r = c.structs(id, id, 0); !r.empty()) return r;
    } else if (nn.isEnum()) {
      if (auto r = c.enums(id); !r.empty()) return r;
    }
  }
  // Cap'n Proto's own check where it applies: loading two versions of a node into
  // one SchemaLoader throws when they are incompatible.
  try {
    capnp::SchemaLoader l;
    for (uint64_t id : old.reachable()) {
      cs::Node::Reader n;
      old.find(id, n);
      l.load(n);
    }
    for (uint64_t id : nu.reachable()) {
      cs::Node::Reader n;
      nu.find(id, n);
      l.load(n);
    }
  } catch (const kj::Exception& e) {
    auto d = e.getDescription();
    return "schema of " + nu.type_name(nu.root_id()) + " refused: Cap'n Proto's compatibility check: " +
           std::string(d.cStr(), std::min<size_t>(d.size(), 300));
  }
  return {};
}

// ---- storage: <state-dir>/schemas/<topic>.bin (a SchemaHistory), written atomically.

int SchemaRegistry::dir_fd(std::string& err) {
  try {
    return open_private_dir_at(core_.state_fd, "schemas", core_.opts.state_dir + "/schemas", "schema dir");
  } catch (const std::exception& e) {
    err = e.what();
    return -1;
  }
}

std::vector<SchemaRegistry::Version>& SchemaRegistry::versions(const std::string& topic) {
  auto it = cache_.find(topic);
  if (it != cache_.end()) return it->second;
  auto& v = cache_[topic];
  struct stat st {};
  if (fstatat(core_.state_fd, "schemas", &st, AT_SYMLINK_NOFOLLOW) != 0) return v;  // nothing stored yet
  std::string err;
  const int dfd = dir_fd(err);
  if (dfd < 0) {
    log_event(core_.instance, LOG_ERROR, "schema_load_failed", topic, 0, err);
    return v;
  }
  const std::string file = topic + ".bin";
  const std::string shown = core_.opts.state_dir + "/schemas/" + file;
  const int fd = open_state_file(dfd, file.c_str(), O_RDONLY, shown);
  if (fd < 0) {
    if (errno != ENOENT)
      log_event(core_.instance, LOG_ERROR, "schema_load_failed", topic, 0, shown + ": " + strerror(errno));
    close(dfd);
    return v;
  }
  try {
    capnp::ReaderOptions ro;
    ro.traversalLimitInWords = 8ull << 20;
    capnp::StreamFdMessageReader rd(fd, ro);
    auto h = rd.getRoot<proto::SchemaHistory>();
    for (auto sv : h.getVersions()) {
      Version x;
      x.version = sv.getVersion();
      x.registered_ns = sv.getRegisteredNs();
      x.uid = sv.getUid();
      x.root_id = sv.getRootId();
      auto d = sv.getNodes();
      x.bytes.assign(d.begin(), d.end());
      x.type_name = sv.getTypeName();
      x.text = SchemaBundle::parse(x.bytes, x.root_id).identity();  // our own file: still checked
      v.push_back(std::move(x));
    }
  } catch (const std::exception& e) {
    v.clear();
    log_event(core_.instance, LOG_ERROR, "schema_load_failed", topic, 0,
              shown + ": " + e.what() + "; moved aside");
    renameat(dfd, file.c_str(), dfd, (file + ".corrupt").c_str());
  } catch (const kj::Exception& e) {
    v.clear();
    log_event(core_.instance, LOG_ERROR, "schema_load_failed", topic, 0,
              shown + ": " + e.getDescription().cStr() + "; moved aside");
    renameat(dfd, file.c_str(), dfd, (file + ".corrupt").c_str());
  }
  close(fd);
  close(dfd);
  return v;
}

bool SchemaRegistry::save(const std::string& topic, const std::vector<Version>& vs, std::string& err) {
  capnp::MallocMessageBuilder mb;
  auto h = mb.initRoot<proto::SchemaHistory>();
  h.setTopic(topic);
  auto l = h.initVersions(uint32_t(vs.size()));
  for (size_t i = 0; i < vs.size(); ++i) {
    auto b = l[uint32_t(i)];
    b.setVersion(vs[i].version);
    b.setRegisteredNs(vs[i].registered_ns);
    b.setUid(vs[i].uid);
    b.setRootId(vs[i].root_id);
    b.setNodes(kj::arrayPtr(vs[i].bytes.data(), vs[i].bytes.size()));
    b.setTypeName(vs[i].type_name);
  }
  const int dfd = dir_fd(err);
  if (dfd < 0) return false;
  const std::string file = topic + ".bin", tmp = file + ".tmp";
  unlinkat(dfd, tmp.c_str(), 0);
  const int fd = openat(dfd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    err = core_.opts.state_dir + "/schemas/" + tmp + ": " + strerror(errno);
    close(dfd);
    return false;
  }
  bool ok = true;
  try {
    capnp::writeMessageToFd(fd, mb);
  } catch (const kj::Exception& e) {
    err = e.getDescription().cStr();
    ok = false;
  }
  if (ok && fsync(fd) != 0) err = std::string("fsync: ") + strerror(errno), ok = false;
  close(fd);
  if (ok && renameat(dfd, tmp.c_str(), dfd, file.c_str()) != 0)
    err = std::string("rename: ") + strerror(errno), ok = false;
  if (!ok) unlinkat(dfd, tmp.c_str(), 0);
  if (ok) fsync(dfd);
  close(dfd);
  return ok;
}

void SchemaRegistry::load_all(const std::vector<std::string>& topics) {
  if (all_loaded_) return;
  for (auto& t : topics) versions(t);
  all_loaded_ = true;  // a topic made later has no stored versions until they are added here
}

void SchemaRegistry::topic_deleted(const std::string& topic) {
  cache_.erase(topic);
  struct stat st {};
  if (fstatat(core_.state_fd, "schemas", &st, AT_SYMLINK_NOFOLLOW) != 0) return;
  std::string err;
  const int dfd = dir_fd(err);
  if (dfd < 0) return;
  unlinkat(dfd, (topic + ".bin").c_str(), 0);
  close(dfd);
}

SchemaRegistry::Outcome SchemaRegistry::present(const std::string& topic, proto::SchemaMode mode,
                                                uint64_t declared_root, uint32_t uid,
                                                std::span<const uint8_t> bytes, uint64_t root_id, bool store,
                                                Limits lim) {
  Outcome o;
  auto fail = [&](proto::ErrorCode c, std::string why) {
    o.code = c;
    o.error = std::move(why);
    return o;
  };
  std::optional<SchemaBundle> nb;
  try {
    nb.emplace(SchemaBundle::parse(bytes, root_id));
  } catch (const Error& e) {
    return fail(proto::ErrorCode::INVALID_ARGUMENT, "schema for '" + topic + "' refused: " + e.what());
  }
  const SchemaBundle& b = *nb;
  const std::string tname = b.type_name(root_id);
  if (declared_root != 0 && root_id != declared_root)
    return fail(proto::ErrorCode::INCOMPATIBLE, "schema of " + tname + " refused: topic '" + topic +
                                                    "' declares the root type " + hex_id(declared_root) +
                                                    ", this schema's root is " + hex_id(root_id));
  auto& vs = versions(topic);
  const std::string text = b.identity();
  // A version already stored is that version (an old producer reopening).
  for (auto& v : vs)
    if (v.root_id == root_id && v.text == text) {
      o.version = v.version;
      return o;
    }
  if (!vs.empty() && vs.back().root_id != root_id)
    return fail(proto::ErrorCode::INCOMPATIBLE,
                "schema of " + tname + " refused: the root type of '" + topic + "' is " +
                    vs.back().type_name + " (" + hex_id(vs.back().root_id) + "), this is " + hex_id(root_id));
  if (mode != proto::SchemaMode::NONE && !vs.empty()) {
    // backward / forward: against the latest version; full: against every one.
    const size_t from = mode == proto::SchemaMode::FULL ? 0 : vs.size() - 1;
    for (size_t i = from; i < vs.size(); ++i) {
      std::string why;
      try {
        why = schema_incompatibility(SchemaBundle::parse(vs[i].bytes, vs[i].root_id), b);
      } catch (const Error& e) {
        return fail(proto::ErrorCode::SYSTEM, "stored schema version " + std::to_string(vs[i].version) +
                                                  " of '" + topic + "' is unreadable: " + e.what());
      }
      if (!why.empty())
        return fail(
            proto::ErrorCode::INCOMPATIBLE,
            why + " (" + schema_mode_name(mode) +
                (mode == proto::SchemaMode::FULL ? ", against version " + std::to_string(vs[i].version)
                                                 : "") +
                ")");
    }
  }
  o.version = uint32_t(vs.size() + 1);
  if (!store) return o;
  if (vs.size() >= kMaxVersions)
    return fail(proto::ErrorCode::NO_SLOT, "topic '" + topic + "' has " + std::to_string(vs.size()) +
                                               " schema versions, the most the daemon keeps per topic");
  // Per-uid bounds (a new version only: one already stored above costs nothing).
  if (lim.max_versions) {
    uint32_t mine = 0;
    for (auto& x : vs) mine += x.uid == uid;
    if (mine >= lim.max_versions)
      return fail(proto::ErrorCode::NO_SLOT,
                  "uid " + std::to_string(uid) + " added " + std::to_string(mine) + " schema versions to '" +
                      topic + "', the most one uid may to a topic it does not own (uid_max_schema_versions " +
                      std::to_string(lim.max_versions) + ")");
  }
  if (lim.max_bytes) {
    uint64_t held = 0;
    for (auto& [n, xs] : cache_)
      for (auto& x : xs)
        if (x.uid == uid) held += x.bytes.size();
    if (held + bytes.size() > lim.max_bytes)
      return fail(proto::ErrorCode::NO_SLOT,
                  "uid " + std::to_string(uid) + " has " + std::to_string(held) +
                      " bytes of stored schema versions; " + std::to_string(bytes.size()) +
                      " more is beyond the most one uid may store (uid_max_schema_bytes " +
                      std::to_string(lim.max_bytes) + ")");
  }
  Version v;
  v.version = o.version;
  v.registered_ns = realtime_ns();
  v.uid = uid;
  v.root_id = root_id;
  v.bytes.assign(bytes.begin(), bytes.end());
  v.type_name = tname;
  v.text = text;
  vs.push_back(std::move(v));
  std::string err;
  if (!save(topic, vs, err)) {
    vs.pop_back();
    return fail(proto::ErrorCode::SYSTEM,
                "schema of " + tname + " for '" + topic + "' could not be stored: " + err);
  }
  o.stored = true;
  return o;
}

bool SchemaRegistry::history(const std::string& topic, proto::SchemaMode mode, uint32_t version,
                             proto::SchemaHistory::Builder b, std::string& err) {
  auto& vs = versions(topic);
  if (vs.empty()) {
    err = "topic '" + topic + "' has no registered schema";
    return false;
  }
  if (version > vs.size()) {
    err = "topic '" + topic + "' has no schema version " + std::to_string(version) + " (it has " +
          std::to_string(vs.size()) + ")";
    return false;
  }
  const uint32_t pick = version ? version : uint32_t(vs.size());
  b.setTopic(topic);
  b.setMode(mode);
  auto l = b.initVersions(uint32_t(vs.size()));
  for (size_t i = 0; i < vs.size(); ++i) {
    auto x = l[uint32_t(i)];
    x.setVersion(vs[i].version);
    x.setRegisteredNs(vs[i].registered_ns);
    x.setUid(vs[i].uid);
    x.setRootId(vs[i].root_id);
    x.setTypeName(vs[i].type_name);
    if (vs[i].version == pick) x.setNodes(kj::arrayPtr(vs[i].bytes.data(), vs[i].bytes.size()));
  }
  return true;
}

// ---- the requests (the registry thread)

void Registry::handle_schema(const Peer& peer, uint64_t id, proto::Request::Reader req,
                             capnp::MessageBuilder& mb, proto::Response::Builder resp) {
  if (req.isRegisterSchema()) {
    auto r = req.getRegisterSchema();
    const std::string name = r.getTopic();
    const Topic* tp = seen(peer, id, name);
    if (!tp) return;
    const Topic& t = *tp;
    const bool publisher = r.getRole() == proto::Role::PUBLISHER;
    const bool store = publisher && !r.getCheckOnly();
    if (store && !may(t, peer, Role::publisher))
      return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                         "uid " + std::to_string(peer.uid) + " may not register a schema for '" + name +
                             "' (it needs publish access)");
    if (!publisher && !r.getCheckOnly() && !allowed(peer, id, t, name, Role::subscriber)) return;
    auto d = r.getNodes();
    // Per-uid bounds on what it makes the daemon keep (memory and disk): root and the
    // daemon's uid are exempt; a topic's owner from the per-topic count only.
    SchemaRegistry::Limits lim;
    if (store && peer.uid != 0 && peer.uid != geteuid()) {
      if (peer.uid != t.owner_uid) lim.max_versions = core_.opts.uid_max_schema_versions;
      lim.max_bytes = core_.opts.uid_max_schema_bytes;
      if (lim.max_bytes) {
        std::vector<std::string> names;
        names.reserve(topics_.size());
        for (auto& [n, x] : topics_) names.push_back(n);
        schemas_.load_all(names);
      }
    }
    auto o = schemas_.present(name, proto::SchemaMode(uint16_t(t.s.schema_mode)), t.s.schema_id, peer.uid,
                              std::span<const uint8_t>(d.begin(), d.size()), r.getRootId(), store, lim);
    if (o.code != proto::ErrorCode::OK) {
      log_limited(core_.instance, LOG_WARN, "schema_refused", name, peer.pid, o.error);
      return reply_error(peer, id, o.code, o.error);
    }
    if (o.stored)
      log_event(core_.instance, LOG_INFO, "schema_registered", name, peer.pid,
                "version " + std::to_string(o.version) + " by uid " + std::to_string(peer.uid));
    auto s = resp.initSchema();
    s.setVersion(o.version);
    s.setStored(o.stored);
    return reply(peer, mb);
  }
  auto q = req.getSchemaHistory();
  const std::string name = q.getTopic();
  const Topic* t = seen(peer, id, name);
  if (!t) return;
  std::string err;
  if (!schemas_.history(name, proto::SchemaMode(uint16_t(t->s.schema_mode)), q.getVersion(),
                        resp.initSchemaHistory(), err))
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND, err);
  return reply(peer, mb);
}

}  // namespace shmbus::daemon
