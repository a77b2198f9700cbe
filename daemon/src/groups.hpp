// Consumer groups (docs/messaging.md, "Consumer groups"): membership and partition
// assignment, owned by the registry thread (no locking).
//
// A member is the connection that joined. Every change of membership (join, leave,
// the member's connection ending) is a new generation with a new assignment. The
// assignment is deterministic and sticky: each member gets floor(P/n) or ceil(P/n)
// partitions (the first P mod n members in id order one more), keeps those it held
// up to that share, and the partitions left over go round robin (ascending) to the
// members below their share, in id order. Who reads a partition is decided by the
// durable subscriber name "group:<group>" (one holder at a time); the assignment
// only says who should.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace shmbus::daemon {

class Groups {
 public:
  struct Member {
    uint64_t id = 0;
    uint64_t conn = 0;
    uint32_t uid = 0;
    pid_t pid = 0;
    std::vector<uint32_t> parts;  // ascending
  };
  struct Group {
    uint32_t generation = 0;
    uint32_t partitions = 0;      // the topic's partition count at the last rebalance
    uint64_t topic_created = 0;   // the topic's creation time (a re-created topic is another)
    uint32_t owner_uid = 0;       // the first member's uid: only it (or root) joins
    std::vector<Member> members;  // by id, ascending
  };
  using Key = std::pair<std::string, std::string>;  // topic, group

  // Bounds: members of one group (everyone), members of one uid in one group and
  // groups of one topic with a member of one uid (not root, not the daemon's uid).
  static constexpr size_t kMaxMembers = 1024;
  static constexpr size_t kUidMaxMembers = 64;
  static constexpr size_t kUidMaxGroupsPerTopic = 64;
  static constexpr size_t kMaxGroupsPerTopic = 4096;
  static constexpr size_t kMaxGroupName = 200;

  // A group name: 1-200 bytes of printable ASCII (0x21-0x7e). False with why.
  static bool valid_name(const std::string& g, std::string& why);
  // Reassigns `g`'s partitions over its members (sticky, see above); generation + 1.
  static void rebalance(Group& g, uint32_t partitions);

  Group* find(const Key& k) {
    auto it = groups_.find(k);
    return it == groups_.end() ? nullptr : &it->second;
  }
  Member* member(Group& g, uint64_t id);
  // Adds a member (random id) and rebalances. Refuses (nullptr, why) beyond a bound.
  Member* join(const Key& k, uint64_t conn, uint32_t uid, pid_t pid, bool exempt, uint32_t partitions,
               uint64_t topic_created, std::string& why);
  // Removes member `id` (rebalances; an empty group goes). False when there is none.
  bool leave(const Key& k, uint64_t id);
  // The connection ended: its members go. Returns the groups that rebalanced.
  std::vector<Key> connection_closed(uint64_t conn);
  // The topic went (deleted, re-created): its groups go.
  void topic_gone(const std::string& topic);
  size_t size() const { return groups_.size(); }

 private:
  std::map<Key, Group> groups_;
};

}  // namespace shmbus::daemon
