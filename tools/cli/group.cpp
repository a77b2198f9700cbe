// shmbus group TOPIC: the consumer groups of a topic and their committed positions.
//
// What shmbusd exposes today: a group's committed position on a partition is the
// durable subscriber name "group:<group>" (docs/messaging.md, "Consumer groups"),
// listed with describeTopic; whether a live member holds it, or it is parked. The
// members, their ids, the generation and the assignment live only in the daemon's
// group table, which no request reads (groupSync answers a member about itself):
// showing them needs a new control request.
#include <cinttypes>
#include <cstdio>
#include <algorithm>
#include <map>

#include "cli/common.hpp"

namespace shmbus::cli {

int run_group(DaemonClient& c, const std::string& topic, bool json) {
  auto rep = c.call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
  auto info = rep.get().getTopic();
  struct Pos {
    uint32_t partition;
    uint64_t position;
    bool live, parked;
    uint32_t owner_uid;
  };
  std::map<std::string, std::vector<Pos>> groups;
  const std::string prefix = "group:";
  for (auto d : info.getDurable()) {
    const std::string n = d.getName().cStr();
    if (n.rfind(prefix, 0) != 0) continue;
    groups[n.substr(prefix.size())].push_back(
        {d.getPartition(), d.getPosition(), d.getLive(), d.getParked(), d.getOwnerUid()});
  }
  for (auto& [g, v] : groups)
    std::sort(v.begin(), v.end(), [](const Pos& a, const Pos& b) { return a.partition < b.partition; });
  if (json) {
    std::printf("{\"topic\":%s,\"partitions\":%u,\"groups\":[", jstr(topic).c_str(),
                info.getSpec().getPartitions());
    size_t i = 0;
    for (auto& [g, v] : groups) {
      std::printf("%s{\"group\":%s,\"positions\":[", i++ ? "," : "", jstr(g).c_str());
      for (size_t k = 0; k < v.size(); ++k)
        std::printf("%s{\"partition\":%u,\"committed_position\":%" PRIu64
                    ",\"live\":%s,\"parked\":%s,\"owner_uid\":%u}",
                    k ? "," : "", v[k].partition, v[k].position, v[k].live ? "true" : "false",
                    v[k].parked ? "true" : "false", v[k].owner_uid);
      std::printf("]}");
    }
    std::printf("]}\n");
    return 0;
  }
  if (groups.empty()) {
    std::printf("%s: no consumer group has committed a position\n", topic.c_str());
    return 0;
  }
  for (auto& [g, v] : groups) {
    std::printf("%s group %s\n", topic.c_str(), g.c_str());
    for (auto& p : v)
      std::printf("  partition %u: committed position %" PRIu64 ", %s, owner uid %u\n", p.partition,
                  p.position,
                  p.live     ? "read by a live member"
                  : p.parked ? "parked (no live member)"
                             : "not held",
                  p.owner_uid);
  }
  return 0;
}

}  // namespace shmbus::cli
