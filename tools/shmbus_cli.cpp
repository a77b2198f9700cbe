// shmbus: the command-line tool for shmbusd.
//   shmbus topic create NAME [--partitions N] [--capacity B] [--policy block|fail]
//                            [--multi-producer] [--slots N] [--schema-id ID]
//                            [--publish-uid U]... [--subscribe-uid U]... [--publish-gid G]... [--subscribe-gid G]...
//   shmbus topic list | describe NAME | delete NAME
//   shmbus stat [TOPIC]
//   shmbus health
// Human-readable by default, --json for scripts. Exit 0 ok, 1 error, 2 not serving.
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "shmbus/daemon_client.hpp"

using namespace shmbus;

namespace {

std::string jstr(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += char(c);
    else if (c < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else o += char(c);
  }
  return o + "\"";
}

const char* policy_name(proto::Policy p) {
  switch (p) {
    case proto::Policy::BLOCK: return "block";
    case proto::Policy::FAIL: return "fail";
    case proto::Policy::SPILL: return "spill";
  }
  return "?";
}

std::string list_json(capnp::List<uint32_t>::Reader l) {
  std::string o = "[";
  for (uint32_t i = 0; i < l.size(); ++i) o += (i ? "," : "") + std::to_string(l[i]);
  return o + "]";
}

std::string topic_json(proto::TopicInfo::Reader t) {
  auto s = t.getSpec();
  auto a = s.getAccess();
  std::ostringstream o;
  o << "{\"name\":" << jstr(s.getName().cStr()) << ",\"partitions\":" << s.getPartitions()
    << ",\"capacity\":" << s.getCapacity() << ",\"max_payload\":" << s.getMaxPayload()
    << ",\"policy\":\"" << policy_name(s.getPolicy()) << "\",\"multi_producer\":"
    << (s.getMultiProducer() ? "true" : "false") << ",\"slots\":" << s.getSlots()
    << ",\"schema_id\":" << s.getSchemaId() << ",\"owner_uid\":" << t.getOwnerUid()
    << ",\"created_ns\":" << t.getCreatedNs() << ",\"access\":{\"publish_uids\":"
    << list_json(a.getPublishUids()) << ",\"publish_gids\":" << list_json(a.getPublishGids())
    << ",\"subscribe_uids\":" << list_json(a.getSubscribeUids())
    << ",\"subscribe_gids\":" << list_json(a.getSubscribeGids()) << "}}";
  return o.str();
}

void topic_human(proto::TopicInfo::Reader t) {
  auto s = t.getSpec();
  auto a = s.getAccess();
  std::printf("%s\n  partitions %u, capacity %" PRIu64 " B, max payload %" PRIu64
              " B, policy %s, %s, %u subscriber slots\n  schema id 0x%016" PRIx64
              ", owner uid %u\n  publish: uids %s gids %s; subscribe: uids %s gids %s\n",
              s.getName().cStr(), s.getPartitions(), s.getCapacity(), s.getMaxPayload(),
              policy_name(s.getPolicy()), s.getMultiProducer() ? "multi-producer" : "single-producer",
              s.getSlots(), s.getSchemaId(), t.getOwnerUid(), list_json(a.getPublishUids()).c_str(),
              list_json(a.getPublishGids()).c_str(), list_json(a.getSubscribeUids()).c_str(),
              list_json(a.getSubscribeGids()).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus: inspect and manage shmbusd topics"};
  std::string socket;
  bool json = false;
  app.add_option("--socket", socket, "control socket (default " + default_socket_path() + ")");
  app.add_flag("--json", json, "machine-readable output");
  app.require_subcommand(1);

  auto* topic = app.add_subcommand("topic", "create, list, describe, delete topics");
  topic->require_subcommand(1);
  std::string name;
  TopicConfig cfg;
  std::string policy = "block";
  AccessSpec acl;
  auto* create = topic->add_subcommand("create", "create a topic (idempotent for the same settings)");
  create->add_option("name", name, "topic name")->required();
  create->add_option("--partitions", cfg.partitions, "partitions");
  create->add_option("--capacity", cfg.capacity, "ring bytes per partition (power of two)");
  create->add_option("--max-payload", cfg.max_payload, "largest message (0: capacity/4)");
  create->add_option("--policy", policy, "block|fail")->check(CLI::IsMember({"block", "fail"}));
  create->add_flag("--multi-producer", cfg.multi_producer, "allow several producers per partition");
  create->add_option("--slots", cfg.slots, "subscriber slots per partition");
  create->add_option("--schema-id", cfg.schema_id, "Cap'n Proto root type id (0 = any)");
  create->add_option("--publish-uid", acl.publish_uids, "uid allowed to publish (4294967295 = anyone)");
  create->add_option("--publish-gid", acl.publish_gids, "gid allowed to publish");
  create->add_option("--subscribe-uid", acl.subscribe_uids, "uid allowed to subscribe");
  create->add_option("--subscribe-gid", acl.subscribe_gids, "gid allowed to subscribe");
  auto* list = topic->add_subcommand("list", "list topics");
  auto* describe = topic->add_subcommand("describe", "show a topic's settings");
  describe->add_option("name", name)->required();
  auto* del = topic->add_subcommand("delete", "delete a topic and its segments");
  del->add_option("name", name)->required();
  auto* stat = app.add_subcommand("stat", "positions, rates, lag, back-pressure, reclamation");
  stat->add_option("topic", name, "one topic (default: all)");
  auto* health = app.add_subcommand("health", "is the daemon serving?");
  CLI11_PARSE(app, argc, argv);

  DaemonClient::Options co;
  co.socket_path = socket;
  co.reconnect_ms = 0;
  std::shared_ptr<DaemonClient> c;
  try {
    c = DaemonClient::connect(co);
  } catch (const Error& e) {
    if (health->parsed()) {
      if (json) std::printf("{\"serving\":false,\"reason\":%s}\n", jstr(e.what()).c_str());
      else std::printf("not serving: %s\n", e.what());
      return 2;
    }
    std::fprintf(stderr, "shmbus: %s\n", e.what());
    return 1;
  }
  try {
    if (create->parsed()) {
      cfg.policy = policy == "fail" ? Policy::fail : Policy::block;
      bool any_acl = !acl.publish_uids.empty() || !acl.publish_gids.empty() ||
                     !acl.subscribe_uids.empty() || !acl.subscribe_gids.empty();
      if (!any_acl) cfg.mode = 0600;  // owner (and root) only unless an ACL is given
      auto rep = c->call([&](proto::Request::Builder r) {
        auto s = r.initCreateTopic();
        s.setName(name);
        s.setPartitions(cfg.partitions);
        s.setCapacity(cfg.capacity);
        s.setMaxPayload(cfg.max_payload);
        s.setPolicy(cfg.policy == Policy::fail ? proto::Policy::FAIL : proto::Policy::BLOCK);
        s.setMultiProducer(cfg.multi_producer);
        s.setSlots(cfg.slots);
        s.setSchemaId(cfg.schema_id);
        auto a = s.initAccess();
        auto put = [](auto l, const std::vector<uint32_t>& v) {
          for (size_t i = 0; i < v.size(); ++i) l.set(uint32_t(i), v[i]);
        };
        put(a.initPublishUids(uint32_t(acl.publish_uids.size())), acl.publish_uids);
        put(a.initPublishGids(uint32_t(acl.publish_gids.size())), acl.publish_gids);
        put(a.initSubscribeUids(uint32_t(acl.subscribe_uids.size())), acl.subscribe_uids);
        put(a.initSubscribeGids(uint32_t(acl.subscribe_gids.size())), acl.subscribe_gids);
      });
      if (json) std::printf("%s\n", topic_json(rep.get().getTopic()).c_str());
      else topic_human(rep.get().getTopic());
    } else if (list->parsed()) {
      auto rep = c->call([](proto::Request::Builder r) { r.setListTopics(); });
      auto l = rep.get().getTopics();
      if (json) {
        std::printf("[");
        for (uint32_t i = 0; i < l.size(); ++i) std::printf("%s%s", i ? "," : "", topic_json(l[i]).c_str());
        std::printf("]\n");
      } else {
        if (l.size() == 0) std::printf("no topics\n");
        for (auto t : l)
          std::printf("%-40s %3u partitions  %10" PRIu64 " B  %s\n", t.getSpec().getName().cStr(),
                      t.getSpec().getPartitions(), t.getSpec().getCapacity(),
                      policy_name(t.getSpec().getPolicy()));
      }
    } else if (describe->parsed()) {
      auto rep = c->call([&](proto::Request::Builder r) { r.setDescribeTopic(name); });
      if (json) std::printf("%s\n", topic_json(rep.get().getTopic()).c_str());
      else topic_human(rep.get().getTopic());
    } else if (del->parsed()) {
      c->delete_topic(name);
      if (json) std::printf("{\"deleted\":%s}\n", jstr(name).c_str());
      else std::printf("deleted %s\n", name.c_str());
    } else if (stat->parsed()) {
      auto rep = c->call([&](proto::Request::Builder r) { r.setStat(name); });
      auto ts = rep.get().getStats();
      std::ostringstream o;
      if (json) o << "[";
      for (uint32_t i = 0; i < ts.size(); ++i) {
        auto t = ts[i];
        if (json) o << (i ? "," : "") << "{\"topic\":" << jstr(t.getName().cStr()) << ",\"partitions\":[";
        else o << t.getName().cStr() << "\n";
        for (uint32_t j = 0; j < t.getPartitions().size(); ++j) {
          auto p = t.getPartitions()[j];
          if (json) {
            o << (j ? "," : "") << "{\"partition\":" << p.getPartition()
              << ",\"producer_position\":" << p.getProducerPosition()
              << ",\"next_sequence\":" << p.getNextSequence() << ",\"rate_per_sec\":" << p.getRatePerSec()
              << ",\"back_pressure_events\":" << p.getBackPressureEvents()
              << ",\"reclaimed_cursors\":" << p.getReclaimedCursors()
              << ",\"filled_claims\":" << p.getFilledClaims() << ",\"producer_pid\":" << p.getProducerPid()
              << ",\"live_producers\":" << p.getLiveProducers() << ",\"subscribers\":[";
            for (uint32_t k = 0; k < p.getSubscribers().size(); ++k) {
              auto s = p.getSubscribers()[k];
              o << (k ? "," : "") << "{\"slot\":" << s.getSlot() << ",\"pid\":" << s.getPid()
                << ",\"position\":" << s.getPosition() << ",\"lag\":" << s.getLag()
                << ",\"tethered\":" << (s.getTethered() ? "true" : "false") << "}";
            }
            o << "]}";
          } else {
            o << "  partition " << p.getPartition() << ": producer at " << p.getProducerPosition()
              << " (seq " << p.getNextSequence() << "), " << p.getRatePerSec() << " msg/s, "
              << p.getBackPressureEvents() << " back-pressure events, " << p.getReclaimedCursors()
              << " reclaimed cursors, " << p.getFilledClaims() << " padded claims\n";
            for (auto s : p.getSubscribers())
              o << "    subscriber slot " << s.getSlot() << " pid " << s.getPid() << ": at "
                << s.getPosition() << ", lag " << s.getLag() << " B"
                << (s.getTethered() ? "" : " (untethered)") << "\n";
          }
        }
        if (json) o << "]}";
      }
      if (json) o << "]\n";
      std::fputs(o.str().c_str(), stdout);
    } else if (health->parsed()) {
      auto rep = c->call([](proto::Request::Builder r) { r.setHealth(); });
      auto h = rep.get().getHealth();
      if (json)
        std::printf("{\"serving\":%s,\"pid\":%u,\"uptime_ns\":%" PRIu64 ",\"topics\":%u,\"clients\":%u,"
                    "\"open_fds\":%u,\"rss_bytes\":%" PRIu64 ",\"reclaimed_clients\":%" PRIu64
                    ",\"state_dir\":%s}\n",
                    h.getServing() ? "true" : "false", h.getDaemonPid(), h.getUptimeNs(), h.getTopics(),
                    h.getClients(), h.getOpenFds(), h.getRssBytes(), h.getReclaimedClients(),
                    jstr(h.getStateDir().cStr()).c_str());
      else
        std::printf("%s: pid %u, up %.1f s, %u topics, %u clients, %u fds, %.1f MiB RSS, %" PRIu64
                    " clients reclaimed\n",
                    h.getServing() ? "serving" : "NOT serving", h.getDaemonPid(), h.getUptimeNs() / 1e9,
                    h.getTopics(), h.getClients(), h.getOpenFds(), h.getRssBytes() / 1048576.0,
                    h.getReclaimedClients());
      return h.getServing() ? 0 : 2;
    }
  } catch (const Error& e) {
    if (json) std::printf("{\"error\":%s}\n", jstr(e.what()).c_str());
    std::fprintf(stderr, "shmbus: %s\n", e.what());
    return 1;
  }
  return 0;
}
