// Consumer groups: membership, assignment, and the registry's groupJoin / groupSync /
// groupLeave requests (docs/control-protocol.md).
#include "groups.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>

#include <optional>
#include <string_view>

#include "core.hpp"

namespace shmbus::daemon {

bool Groups::valid_name(const std::string& g, std::string& why) {
  if (g.empty() || g.size() > kMaxGroupName) {
    why = "a group name is 1-" + std::to_string(kMaxGroupName) + " bytes (got " + std::to_string(g.size()) +
          ")";
    return false;
  }
  for (unsigned char c : g)
    if (c < 0x21 || c > 0x7e) {
      why = "a group name is printable ASCII without spaces (byte " + std::to_string(unsigned(c)) + ")";
      return false;
    }
  return true;
}

void Groups::rebalance(Group& g, uint32_t partitions) {
  ++g.generation;
  g.partitions = partitions;
  const size_t n = g.members.size();
  if (n == 0) return;
  std::vector<uint32_t> share(n, partitions / uint32_t(n));
  for (size_t i = 0; i < partitions % n; ++i) ++share[i];
  std::vector<int64_t> owner(partitions, -1);
  std::vector<std::vector<uint32_t>> next(n);
  // Keep what each member held, up to its share.
  for (size_t i = 0; i < n; ++i)
    for (uint32_t p : g.members[i].parts)
      if (p < partitions && owner[p] < 0 && next[i].size() < share[i]) {
        owner[p] = int64_t(i);
        next[i].push_back(p);
      }
  // The rest round robin, ascending, to the members below their share.
  size_t m = 0;
  for (uint32_t p = 0; p < partitions; ++p) {
    if (owner[p] >= 0) continue;
    while (next[m % n].size() >= share[m % n]) ++m;
    owner[p] = int64_t(m % n);
    next[m % n].push_back(p);
    ++m;
  }
  for (size_t i = 0; i < n; ++i) {
    std::sort(next[i].begin(), next[i].end());
    g.members[i].parts = std::move(next[i]);
  }
}

Groups::Member* Groups::member(Group& g, uint64_t id) {
  for (auto& m : g.members)
    if (m.id == id) return &m;
  return nullptr;
}

Groups::Member* Groups::join(const Key& k, uint64_t conn, uint32_t uid, pid_t pid, bool exempt,
                             uint32_t partitions, uint64_t topic_created, std::string& why) {
  auto it = groups_.find(k);
  if (it != groups_.end() && it->second.topic_created != topic_created) {
    topic_gone(k.first);
    it = groups_.end();
  }
  if (it == groups_.end()) {
    size_t in_topic = 0, mine = 0;
    for (auto& [key, g] : groups_) {
      if (key.first != k.first) continue;
      ++in_topic;
      for (auto& m : g.members)
        if (m.uid == uid) {
          ++mine;
          break;
        }
    }
    if (in_topic >= kMaxGroupsPerTopic) {
      why = "topic '" + k.first + "' has " + std::to_string(in_topic) +
            " consumer groups, the most a topic holds";
      return nullptr;
    }
    if (!exempt && mine >= kUidMaxGroupsPerTopic) {
      why = "uid " + std::to_string(uid) + " is a member of " + std::to_string(mine) +
            " consumer groups of '" + k.first + "', the most one uid may (" +
            std::to_string(kUidMaxGroupsPerTopic) + " groups per topic)";
      return nullptr;
    }
  } else {
    const Group& g = it->second;
    if (g.members.size() >= kMaxMembers) {
      why = "consumer group '" + k.second + "' of '" + k.first + "' has " + std::to_string(g.members.size()) +
            " members, the most a group holds (" + std::to_string(kMaxMembers) + ")";
      return nullptr;
    }
    size_t mine = 0;
    for (auto& m : g.members) mine += m.uid == uid;
    if (!exempt && mine >= kUidMaxMembers) {
      why = "uid " + std::to_string(uid) + " has " + std::to_string(mine) + " members in consumer group '" +
            k.second + "' of '" + k.first + "', the most one uid may (" + std::to_string(kUidMaxMembers) +
            " members per group)";
      return nullptr;
    }
  }
  const bool fresh = it == groups_.end();
  Group& g = groups_[k];
  g.topic_created = topic_created;
  if (fresh) g.owner_uid = uid;
  uint64_t id = 0;
  while (id == 0 || member(g, id))
    if (getrandom(&id, sizeof id, 0) != ssize_t(sizeof id)) id = 0;
  Member m;
  m.id = id;
  m.conn = conn;
  m.uid = uid;
  m.pid = pid;
  auto at = std::lower_bound(g.members.begin(), g.members.end(), id,
                             [](const Member& a, uint64_t b) { return a.id < b; });
  g.members.insert(at, std::move(m));
  rebalance(g, partitions);
  return member(g, id);
}

bool Groups::leave(const Key& k, uint64_t id) {
  auto it = groups_.find(k);
  if (it == groups_.end()) return false;
  auto& ms = it->second.members;
  auto m = std::find_if(ms.begin(), ms.end(), [&](const Member& x) { return x.id == id; });
  if (m == ms.end()) return false;
  ms.erase(m);
  if (ms.empty())
    groups_.erase(it);
  else
    rebalance(it->second, it->second.partitions);
  return true;
}

std::vector<Groups::Key> Groups::connection_closed(uint64_t conn) {
  std::vector<Key> changed;
  for (auto it = groups_.begin(); it != groups_.end();) {
    auto& ms = it->second.members;
    const size_t before = ms.size();
    ms.erase(std::remove_if(ms.begin(), ms.end(), [&](const Member& m) { return m.conn == conn; }), ms.end());
    if (ms.size() == before) {
      ++it;
      continue;
    }
    changed.push_back(it->first);
    if (ms.empty()) {
      it = groups_.erase(it);
      continue;
    }
    rebalance(it->second, it->second.partitions);
    ++it;
  }
  return changed;
}

void Groups::topic_gone(const std::string& topic) {
  for (auto it = groups_.lower_bound({topic, std::string()});
       it != groups_.end() && it->first.first == topic;)
    it = groups_.erase(it);
}

namespace {

std::string partition_list(const std::vector<uint32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

// groupJoin / groupSync / groupLeave. Access: the rights to subscribe to the topic
// (no rights at all: the answer of a topic that does not exist).
void Registry::handle_group(const Peer& peer, uint64_t id, proto::Request::Reader req,
                            capnp::MessageBuilder& mb, proto::Response::Builder resp) {
  const auto which = req.which();
  const proto::GroupRequest::Reader q = which == proto::Request::GROUP_JOIN   ? req.getGroupJoin()
                                        : which == proto::Request::GROUP_SYNC ? req.getGroupSync()
                                                                              : req.getGroupLeave();
  const std::string name = q.getTopic();
  const std::string group = q.getGroup();
  if (std::string why; !Groups::valid_name(group, why))
    return reply_error(peer, id, proto::ErrorCode::INVALID_ARGUMENT, why);
  const Groups::Key key{name, group};
  auto it = topics_.find(name);
  if (it == topics_.end() || !visible(it->second, peer)) {
    if (it == topics_.end()) groups_.topic_gone(name);
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND, "no topic '" + name + "'");
  }
  const Topic& t = it->second;
  if (!may(t, peer, Role::subscriber)) {
    log_limited(core_.instance, LOG_WARN, "access_denied", name, peer.pid,
                "uid " + std::to_string(peer.uid) + " may not subscribe (consumer group '" + group + "')");
    return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                       "uid " + std::to_string(peer.uid) + " may not subscribe to '" + name + "'");
  }
  const uint32_t parts = uint32_t(t.parts.size());
  const auto answer = [&](Groups::Group& g, const Groups::Member& m) {
    auto r = resp.initGroup();
    r.setMemberId(m.id);
    r.setGeneration(g.generation);
    r.setMembers(uint32_t(g.members.size()));
    r.setTopicPartitions(g.partitions);
    auto l = r.initPartitions(uint32_t(m.parts.size()));
    for (size_t i = 0; i < m.parts.size(); ++i) l.set(uint32_t(i), m.parts[i]);
    return reply(peer, mb);
  };
  if (which == proto::Request::GROUP_JOIN) {
    std::string why;
    const bool exempt = peer.uid == 0 || peer.uid == geteuid();
    // A group belongs to one uid: its live members' (the first one's), else its
    // durable names' (the committed positions). Another uid joining would be assigned
    // partitions it cannot take, and stall the group's readers.
    if (!exempt) {
      uint32_t owner = peer.uid;
      if (Groups::Group* g = groups_.find(key); g && g->topic_created == t.created_ns)
        owner = g->owner_uid;
      else
        for (auto& [dk, rec] : t.durable)
          if (rec.name == "group:" + group) {
            owner = rec.owner_uid;
            break;
          }
      if (owner != peer.uid) {
        log_limited(core_.instance, LOG_WARN, "access_denied", name, peer.pid,
                    "uid " + std::to_string(peer.uid) + " may not join consumer group '" + group + "'");
        return reply_error(
            peer, id, proto::ErrorCode::PERMISSION_DENIED,
            "consumer group '" + group + "' of '" + name + "' belongs to uid " + std::to_string(owner));
      }
    }
    Groups::Member* m = groups_.join(key, peer.conn, peer.uid, peer.pid, exempt, parts, t.created_ns, why);
    if (!m) {
      log_limited(core_.instance, LOG_WARN, "group_refused", name, peer.pid, why);
      return reply_error(peer, id, proto::ErrorCode::NO_SLOT, why);
    }
    Groups::Group& g = *groups_.find(key);
    log_limited(core_.instance, LOG_INFO, "group_joined", name, peer.pid,
                "group '" + group + "' generation " + std::to_string(g.generation) + ", " +
                    std::to_string(g.members.size()) + " members, this one " + partition_list(m->parts));
    return answer(g, *m);
  }
  // Sync and leave name a member of this connection; anything else is "no member"
  // (a connection that ended took its members: the client joins again).
  Groups::Group* g = groups_.find(key);
  if (g && g->topic_created != t.created_ns) {
    groups_.topic_gone(name);
    g = nullptr;
  }
  Groups::Member* m = g ? groups_.member(*g, q.getMemberId()) : nullptr;
  if (!m || m->conn != peer.conn)
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND,
                       "no member " + std::to_string(q.getMemberId()) + " of consumer group '" + group +
                           "' of '" + name + "' on this connection (join again)");
  if (which == proto::Request::GROUP_LEAVE) {
    groups_.leave(key, m->id);
    log_limited(core_.instance, LOG_INFO, "group_left", name, peer.pid, "group '" + group + "'");
    resp.setDone();
    return reply(peer, mb);
  }
  return answer(*g, *m);
}

// "group:<g>" names the committed positions of consumer group <g>: only the group's
// own uid makes or moves them. That is the live group's uid (its first member's,
// which joined through groupJoin before taking partitions) or, with no live group
// (a daemon restart, every member gone), the uid of an existing record of the name.
// A name nobody holds yet, under a group with no members, is nobody's to take: a
// plain named join by another uid would otherwise squat the group (its owner's
// GroupSubscriber then refused as "belongs to uid ...").
bool Registry::group_name_allowed(const Peer& peer, const Topic& t, const std::string& dn, std::string& why) {
  static constexpr std::string_view kPrefix = "group:";
  if (dn.compare(0, kPrefix.size(), kPrefix) != 0 || peer.uid == 0 || peer.uid == geteuid()) return true;
  const std::string group = dn.substr(kPrefix.size());
  std::optional<uint32_t> owner;
  if (Groups::Group* g = groups_.find({t.s.name, group}); g && g->topic_created == t.created_ns)
    owner = g->owner_uid;
  else
    for (auto& [key, rec] : t.durable)
      if (rec.name == dn) {
        owner = rec.owner_uid;
        break;
      }
  if (owner && *owner == peer.uid) return true;
  why = "durable subscriber names starting 'group:' are consumer groups': '" + dn + "' of '" + t.s.name +
        "' " +
        (owner ? "belongs to uid " + std::to_string(*owner)
               : std::string("is used by a consumer group only (join it with groupJoin first)"));
  return false;
}

void Registry::groups_connection_closed(uint64_t conn) {
  for (auto& k : groups_.connection_closed(conn)) {
    Groups::Group* g = groups_.find(k);
    log_limited(
        core_.instance, LOG_INFO, "group_member_gone", k.first, 0,
        "group '" + k.second + "': a member's connection ended; " +
            (g ? std::to_string(g->members.size()) + " members, generation " + std::to_string(g->generation)
               : std::string("no members left")));
  }
}

}  // namespace shmbus::daemon
