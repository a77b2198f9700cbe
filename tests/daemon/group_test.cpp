// Consumer groups (issue 11) through a real shmbusd and real member processes: the
// partitions split evenly over the members, a join or a death rebalances, each
// partition is read by one member at a time, and while members are SIGKILLed and
// restarted at random points no message is lost and the only duplicates are messages
// a killed member polled and had not released.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "daemon_util.hpp"
#include "second_user.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/group.hpp"
#include "shmbus/publisher.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

std::string group_helper() { return SHMBUS_TEST_GROUP_HELPER; }

std::set<uint32_t> as_set(const std::vector<uint32_t>& v) { return {v.begin(), v.end()}; }

// Syncs every member until each holds what it is assigned, all in one generation.
bool settle(const std::vector<GroupSubscriber*>& ms, int timeout_ms) {
  const uint64_t deadline = now_ns() + uint64_t(timeout_ms) * 1'000'000;
  while (now_ns() < deadline) {
    for (auto* m : ms) m->sync();
    bool ok = true;
    for (auto* m : ms) ok = ok && m->partitions() == m->assigned() && m->generation() == ms[0]->generation();
    if (ok) return true;
  }
  return false;
}

void publish(Publisher& p, uint64_t seq) { REQUIRE(p.offer(&seq, sizeof seq) == Status::ok); }

// The group's committed position (its durable name's) per partition, and the
// producers' positions.
void positions(DaemonClient& c, const std::string& topic, const std::string& group,
               std::map<uint32_t, uint64_t>& committed, std::map<uint32_t, uint64_t>& produced) {
  committed.clear();
  produced.clear();
  auto d = c.call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
  for (auto rec : d.get().getTopic().getDurable())
    if (rec.getName() == GroupSubscriber::durable_name(group))
      committed[rec.getPartition()] = rec.getPosition();
  auto s = c.call([&](proto::Request::Builder r) { r.setStat(topic); });
  for (auto ps : s.get().getStats()[0].getPartitions())
    produced[ps.getPartition()] = ps.getProducerPosition();
}

off_t file_size(const std::string& f) {
  struct stat st {};
  return ::stat(f.c_str(), &st) == 0 ? st.st_size : 0;
}

}  // namespace

TEST_CASE("group members split the partitions evenly; a join and a leave rebalance", "[daemon][group]") {
  DaemonProc d("grp-split");
  REQUIRE(d.start());
  Bus admin = Bus::connect(d.sock);
  admin.create_topic("grp.split", {.partitions = 4, .capacity = 1 << 16});
  Bus b1 = Bus::connect(d.sock), b2 = Bus::connect(d.sock), b3 = Bus::connect(d.sock);

  GroupSubscriber a = b1.group_subscriber("grp.split", "g", {});
  CHECK(a.partitions() == std::vector<uint32_t>{0, 1, 2, 3});  // alone: everything
  GroupSubscriber b = b2.group_subscriber("grp.split", "g", {});
  REQUIRE(settle({&a, &b}, 5000));
  CHECK(a.partitions().size() == 2);
  CHECK(b.partitions().size() == 2);
  std::set<uint32_t> all = as_set(a.partitions());
  for (uint32_t p : b.partitions()) CHECK(all.insert(p).second);  // disjoint
  CHECK(all.size() == 4);
  const auto a2 = as_set(a.partitions()), b2held = as_set(b.partitions());

  GroupSubscriber c = b3.group_subscriber("grp.split", "g", {});
  REQUIRE(settle({&a, &b, &c}, 5000));
  std::vector<size_t> sizes{a.partitions().size(), b.partitions().size(), c.partitions().size()};
  std::sort(sizes.begin(), sizes.end());
  CHECK(sizes == std::vector<size_t>{1, 1, 2});
  all.clear();
  for (auto* m : {&a, &b, &c})
    for (uint32_t p : m->partitions()) CHECK(all.insert(p).second);  // each held by exactly one member
  CHECK(all.size() == 4);
  // Sticky: the old members kept what they held (only the newcomer's share moved).
  for (uint32_t p : a.partitions()) CHECK(a2.count(p) == 1);
  for (uint32_t p : b.partitions()) CHECK(b2held.count(p) == 1);
  CHECK(a.stats().take_retries + b.stats().take_retries + c.stats().take_retries >=
        1);  // c waited for its holder

  // Messages go to the partition's holder only, and a leave hands its partitions on.
  std::vector<Publisher> pubs;
  for (uint32_t p = 0; p < 4; ++p) pubs.push_back(admin.publisher("grp.split", {.partition = p}));
  for (uint32_t p = 0; p < 4; ++p) publish(pubs[p], 100 + p);
  std::map<uint32_t, std::string> got;
  for (auto [m, name] : {std::pair{&a, "a"}, std::pair{&b, "b"}, std::pair{&c, "c"}}) {
    GroupView v;
    while (m->poll(v) == Status::ok) {
      uint64_t s;
      std::memcpy(&s, v.data(), sizeof s);
      CHECK(s == 100 + v.partition());
      CHECK(got.emplace(v.partition(), name).second);
      m->release(v);
    }
  }
  CHECK(got.size() == 4);
  c.close();
  REQUIRE(settle({&a, &b}, 5000));
  CHECK(a.partitions().size() + b.partitions().size() == 4);
  CHECK(a.partitions().size() == 2);
}

TEST_CASE("a member gives up a partition only once it released what it polled there", "[daemon][group]") {
  DaemonProc d("grp-hold");
  REQUIRE(d.start());
  Bus admin = Bus::connect(d.sock);
  admin.create_topic("grp.hold", {.partitions = 2, .capacity = 1 << 16});
  Bus b1 = Bus::connect(d.sock), b2 = Bus::connect(d.sock);
  GroupSubscriber a = b1.group_subscriber("grp.hold", "g", {});
  REQUIRE(a.partitions() == std::vector<uint32_t>{0, 1});
  Publisher p0 = admin.publisher("grp.hold", {.partition = 0});
  Publisher p1 = admin.publisher("grp.hold", {.partition = 1});
  publish(p0, 1);
  publish(p1, 1);
  GroupView v, v1;
  while (!v1) {
    REQUIRE(a.poll(v) == Status::ok);
    if (v.partition() == 1) v1 = v;  // the one a keeps unreleased
  }
  // b joins: a keeps partition 0 (sticky, the lower of its own), partition 1 moves to b.
  GroupSubscriber b = b2.group_subscriber("grp.hold", "g", {});
  REQUIRE(b.assigned() == std::vector<uint32_t>{1});
  const uint64_t deadline = now_ns() + 5'000'000'000ull;
  while (b.stats().take_retries < 5) {
    a.sync();
    b.sync();
    REQUIRE(now_ns() < deadline);
  }
  CHECK(a.partitions() == std::vector<uint32_t>{0});  // no longer polled
  CHECK(b.partitions().empty());                      // still a's: its view is unreleased
  GroupView w;
  while (a.poll(w) == Status::ok) CHECK(w.partition() == 0);  // partition 1 is not polled any more
  a.release(v1);                                              // now a parks it (committed up to v1)
  while (b.partitions().empty()) {
    b.sync();
    REQUIRE(now_ns() < deadline);
  }
  CHECK(b.poll(w) == Status::empty);  // v1 was committed: not delivered again
  publish(p1, 2);
  REQUIRE(b.poll(w) == Status::ok);
  uint64_t s;
  std::memcpy(&s, w.data(), sizeof s);
  CHECK(s == 2);
}

TEST_CASE("group requests are checked: names, membership per connection, access", "[daemon][group]") {
  DaemonProc d("grp-check");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  bus.create_topic("grp.check", {.partitions = 2, .capacity = 1 << 16});
  auto c1 = DaemonClient::connect({.socket_path = d.sock});
  auto c2 = DaemonClient::connect({.socket_path = d.sock});
  auto call = [](DaemonClient& c, int op, const std::string& topic, const std::string& group,
                 uint64_t member) {
    return c.call([&](proto::Request::Builder r) {
      auto q = op == 0 ? r.initGroupJoin() : op == 1 ? r.initGroupSync() : r.initGroupLeave();
      q.setTopic(topic);
      q.setGroup(group);
      q.setMemberId(member);
    });
  };
  auto code = [&](DaemonClient& c, int op, const std::string& topic, const std::string& group,
                  uint64_t member) {
    try {
      call(c, op, topic, group, member);
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode(0);
  };
  CHECK(code(*c1, 0, "grp.check", "", 0) == ErrorCode::invalid_argument);
  CHECK(code(*c1, 0, "grp.check", "a b", 0) == ErrorCode::invalid_argument);
  CHECK(code(*c1, 0, "grp.check", std::string(201, 'x'), 0) == ErrorCode::invalid_argument);
  CHECK(code(*c1, 0, "grp.none", "g", 0) == ErrorCode::not_found);
  auto r = call(*c1, 0, "grp.check", "g", 0);
  auto g = r.get().getGroup();
  const uint64_t id = g.getMemberId();
  CHECK(id != 0);
  CHECK(g.getPartitions().size() == 2);
  CHECK(g.getTopicPartitions() == 2);
  // Another connection cannot sync or leave this member (a member is its connection).
  CHECK(code(*c2, 1, "grp.check", "g", id) == ErrorCode::not_found);
  CHECK(code(*c2, 2, "grp.check", "g", id) == ErrorCode::not_found);
  auto r2 = call(*c2, 0, "grp.check", "g", 0);
  const uint64_t id2 = r2.get().getGroup().getMemberId();
  CHECK(r2.get().getGroup().getPartitions().size() == 1);
  auto s = call(*c1, 1, "grp.check", "g", id);
  CHECK(s.get().getGroup().getPartitions().size() == 1);
  CHECK(s.get().getGroup().getMembers() == 2);
  const uint32_t gen = s.get().getGroup().getGeneration();
  // c2's connection ends: its member goes at once and the group rebalances.
  c2.reset();
  const uint64_t deadline = now_ns() + 5'000'000'000ull;
  for (;;) {
    auto s2 = call(*c1, 1, "grp.check", "g", id);
    if (s2.get().getGroup().getMembers() == 1) {
      CHECK(s2.get().getGroup().getGeneration() > gen);
      CHECK(s2.get().getGroup().getPartitions().size() == 2);
      break;
    }
    REQUIRE(now_ns() < deadline);
  }
  (void)id2;
  call(*c1, 2, "grp.check", "g", id);
  CHECK(code(*c1, 1, "grp.check", "g", id) == ErrorCode::not_found);
  // A deleted topic takes its groups with it.
  call(*c1, 0, "grp.check", "g", 0);
  bus.remove_topic("grp.check");
  CHECK(code(*c1, 1, "grp.check", "g", id) == ErrorCode::not_found);
}

TEST_CASE("a group is no way around a topic's access list, nor into another uid's group",
          "[daemon][group][security]") {
  const SecondUser u = second_user();
  if (!u.skip.empty()) {
    WARN("skipped: " << u.skip);
    return;
  }
  DaemonProc d("grp-uid");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  bus.create_topic("grp.secret", {.partitions = 2, .capacity = 1 << 16, .mode = 0600});
  bus.create_topic("grp.shared", {.partitions = 2, .capacity = 1 << 16, .mode = 0644});  // others may read
  GroupSubscriber ours = bus.group_subscriber("grp.shared", "g", {});
  REQUIRE(ours.partitions() == std::vector<uint32_t>{0, 1});
  auto fails = [&](const std::string& topic, const std::string& group) {
    Child c(u.as({group_helper(), d.sock, topic, group, "/dev/null"}), d.log);
    c.finish(10000);
    return c.facts().count("FAIL") ? c.facts().at("FAIL") : std::string("(no failure)");
  };
  // No read access: the topic does not exist for it.
  CHECK_THAT(fails("grp.secret", "g"), Catch::Contains("no topic 'grp.secret'"));
  // Read access, but root's group: refused (it would be assigned partitions it cannot take).
  CHECK_THAT(fails("grp.shared", "g"), Catch::Contains("belongs to uid 0"));
  ours.sync();
  CHECK(ours.partitions() == std::vector<uint32_t>{0, 1});
  CHECK(ours.assigned() == std::vector<uint32_t>{0, 1});
  // Bounded per uid: groups of one topic, members of one group (one connection).
  Child q(u.as({group_helper(), "--quota", d.sock, "grp.shared"}), d.log);
  const std::string members = q.await("members", 20000), groups = q.await("groups", 20000);
  CHECK_THAT(members, Catch::StartsWith("64 ") && Catch::Contains("64 members per group"));
  CHECK_THAT(groups, Catch::StartsWith("63 ") && Catch::Contains("64 groups per topic"));  // m is one of them
  // Its own group of the topic it may read works.
  Child own(u.as({group_helper(), d.sock, "grp.shared", "theirs", "/dev/null"}), d.log);
  CHECK(own.await("held", 10000) == "0,1");
  own.kill_now();
  // Our group's names stay ours: even with no live member the group is root's.
  ours.close();
  CHECK_THAT(fails("grp.shared", "g"), Catch::Contains("belongs to uid 0"));
}

TEST_CASE("a SIGKILLed member's partitions move to the others at once", "[daemon][group]") {
  DaemonProc d("grp-kill");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  bus.create_topic("grp.kill", {.partitions = 4, .capacity = 1 << 16});
  Child victim({group_helper(), d.sock, "grp.kill", "g", d.dir + "/victim.log"}, d.log);
  REQUIRE(victim.await("held", 10000) == "0,1,2,3");
  Bus b1 = Bus::connect(d.sock), b2 = Bus::connect(d.sock);
  GroupSubscriber a = b1.group_subscriber("grp.kill", "g", {});
  GroupSubscriber b = b2.group_subscriber("grp.kill", "g", {});
  REQUIRE(settle({&a, &b}, 5000));  // the victim let go of their shares
  const size_t ours = a.partitions().size() + b.partitions().size();
  REQUIRE(ours >= 2);
  REQUIRE(ours <= 3);  // the victim holds the rest
  const uint64_t t0 = now_ns();
  victim.kill_now();
  const uint64_t deadline = t0 + 5'000'000'000ull;
  while (a.partitions().size() + b.partitions().size() < 4) {
    a.sync();
    b.sync();
    REQUIRE(now_ns() < deadline);
  }
  const double ms = double(now_ns() - t0) / 1e6;
  WARN("partitions of a SIGKILLed member taken over in " << ms << " ms");
  CHECK(ms < 1000.0);  // the reclaim bound: connection end and pidfd, no timeout involved
  std::set<uint32_t> all = as_set(a.partitions());
  for (uint32_t p : b.partitions()) CHECK(all.insert(p).second);
  CHECK(all.size() == 4);
}

TEST_CASE("a group's committed positions survive its members and a daemon restart", "[daemon][group]") {
  DaemonProc d("grp-restart");
  REQUIRE(d.start());
  {
    Bus bus = Bus::connect(d.sock);
    bus.create_topic("grp.rs", {.partitions = 1, .capacity = 1 << 16});
    Publisher pub = bus.publisher("grp.rs", {});
    GroupSubscriber m = bus.group_subscriber("grp.rs", "g", {});  // a new group starts at the tail
    publish(pub, 0);
    GroupView v;
    REQUIRE(m.poll(v) == Status::ok);
    m.release(v);
    for (uint64_t s = 1; s <= 20; ++s) publish(pub, s);
    for (uint64_t s = 1; s <= 5; ++s) {
      REQUIRE(m.poll(v) == Status::ok);
      m.release(v);
    }
    REQUIRE(m.poll(v) == Status::ok);  // polled, not released: read again by the next holder
    m.close();
    GroupSubscriber m2 = bus.group_subscriber("grp.rs", "g", {});
    REQUIRE(m2.poll(v) == Status::ok);
    uint64_t s;
    std::memcpy(&s, v.data(), sizeof s);
    CHECK(s == 6);
    for (int i = 0; i < 4; ++i) {
      m2.release(v);
      REQUIRE(m2.poll(v) == Status::ok);
    }
    m2.release(v);  // 10 committed
    // The daemon restarts under a live member: it joins again and reads on, no gap.
    d.crash();
    REQUIRE(d.start());
    uint64_t want = 11;
    const uint64_t deadline = now_ns() + 10'000'000'000ull;
    while (want <= 15) {
      REQUIRE(now_ns() < deadline);
      if (m2.poll(v) != Status::ok) continue;
      std::memcpy(&s, v.data(), sizeof s);
      CHECK(s == want++);
      m2.release(v);
    }
    m2.sync();  // the daemon has no such member since its restart: it joins again
    CHECK(m2.stats().rejoins >= 1);
    CHECK(m2.partitions() == std::vector<uint32_t>{0});
    m2.close();
  }
  d.crash();
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  GroupSubscriber m3 = bus.group_subscriber("grp.rs", "g", {});
  GroupView v;
  REQUIRE(m3.poll_wait(v, 5'000'000'000) == Status::ok);
  uint64_t s;
  std::memcpy(&s, v.data(), sizeof s);
  CHECK(s == 16);
}

// The torture: 3 member processes read a producer's messages on 4 partitions while
// the test SIGKILLs one at a random point of its work and starts a new one, again and
// again (every kill is one trial). Each member logs "P p seq" before releasing a
// message and "C p seq" after: a message may be processed twice only when a killed
// member logged P and not C (polled, not released).
TEST_CASE("a group of 3 loses nothing while members are SIGKILLed and restarted", "[daemon][group]") {
  const int batches = trials(5, 2);
  const int kills = 25;
  const uint64_t per_kill = 40;  // messages per partition published before each kill
  DaemonProc d("grp-torture");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  auto ctl = DaemonClient::connect({.socket_path = d.sock});
  std::mt19937_64 rng(Catch::rngSeed() ^ uint64_t(getpid()));
  uint64_t total_dups = 0, total_trials = 0, unreleased_killed = 0;
  for (int batch = 0; batch < batches; ++batch) {
    const std::string topic = "grp.t" + std::to_string(batch);
    bus.create_topic(topic, {.partitions = 4, .capacity = 1 << 20});
    std::vector<Publisher> pubs;
    for (uint32_t p = 0; p < 4; ++p) pubs.push_back(bus.publisher(topic, {.partition = p}));
    struct Inst {
      std::string log;
      bool killed = false;
    };
    std::vector<Inst> insts;
    std::vector<std::unique_ptr<Child>> live(3);
    std::vector<size_t> live_inst(3);
    auto spawn = [&](size_t k) {
      insts.push_back({d.dir + "/" + topic + ".m" + std::to_string(insts.size()) + ".log"});
      live_inst[k] = insts.size() - 1;
      live[k] = std::make_unique<Child>(
          std::vector<std::string>{group_helper(), d.sock, topic, "workers", insts.back().log}, d.log);
    };
    for (size_t k = 0; k < 3; ++k) spawn(k);
    // A new group starts at the tail of each partition (when its name first takes
    // it): publish once every partition has a committed position.
    const uint64_t joined_by = now_ns() + 10'000'000'000ull;
    for (;;) {
      std::map<uint32_t, uint64_t> committed, produced;
      positions(*ctl, topic, "workers", committed, produced);
      if (committed.size() == 4) break;
      REQUIRE(now_ns() < joined_by);
      sched_yield();
    }
    uint64_t next = 1;
    for (int t = 0; t < kills; ++t, ++total_trials) {
      for (uint64_t i = 0; i < per_kill; ++i, ++next)
        for (auto& p : pubs) publish(p, next);
      // A random point of the victim's work: after it logged a random number of bytes
      // more (or 30 ms, when it holds nothing to read yet: mid join or rebalance).
      const size_t k = size_t(rng() % 3);
      const std::string& f = insts[live_inst[k]].log;
      const off_t target = file_size(f) + off_t(rng() % 800);
      const uint64_t until = now_ns() + 30'000'000;
      while (file_size(f) < target && now_ns() < until) sched_yield();
      live[k]->kill_now();
      insts[live_inst[k]].killed = true;
      spawn(k);
    }
    const uint64_t last = next - 1;
    // Drain: the survivors commit everything (the group's positions reach the producers').
    const uint64_t deadline = now_ns() + 30'000'000'000ull;
    for (;;) {
      std::map<uint32_t, uint64_t> committed, produced;
      positions(*ctl, topic, "workers", committed, produced);
      bool done = produced.size() == 4;
      for (auto& [p, pos] : produced) done = done && committed.count(p) && committed[p] == pos;
      if (done) break;
      REQUIRE(now_ns() < deadline);
      sched_yield();
    }
    for (auto& c : live) {
      REQUIRE(c->await("held", 10000) != "");  // running (its SIGTERM handler set), not mid-exec
      REQUIRE(c->pid() > 0);
      kill(c->pid(), SIGTERM);
    }
    for (auto& c : live) {
      CHECK(c->finish(10000) == 0);  // a clean stop: closed (parked) and exited 0
      for (auto& [key, val] : c->facts()) CHECK(key != "FAIL");
    }
    // Verify the logs.
    std::map<std::pair<uint32_t, uint64_t>, int> polled, committed;
    for (auto& in : insts) {
      std::ifstream is(in.log);
      std::string line;
      std::map<uint32_t, uint64_t> last_seq;
      std::string open;  // the P line not yet followed by its C
      while (std::getline(is, line)) {
        char kind;
        uint32_t p;
        uint64_t s;
        std::istringstream ls(line);
        REQUIRE(ls >> kind >> p >> s);
        REQUIRE(p < 4);
        if (kind == 'P') {
          REQUIRE(open.empty());   // one message at a time: P, release, C
          CHECK(s > last_seq[p]);  // in order per partition
          last_seq[p] = s;
          ++polled[{p, s}];
          open = line.substr(2);
        } else {
          REQUIRE(kind == 'C');
          REQUIRE(open == line.substr(2));
          ++committed[{p, s}];
          open.clear();
        }
      }
      if (!open.empty()) {
        CHECK(in.killed);  // only a killed member leaves a message unreleased
        ++unreleased_killed;
      }
    }
    for (uint32_t p = 0; p < 4; ++p)
      for (uint64_t s = 1; s <= last; ++s) {
        const int np = polled[{p, s}], nc = committed[{p, s}];
        INFO("partition " << p << " sequence " << s);
        CHECK(np >= 1);  // nothing lost
        CHECK(nc <= 1);  // released (committed) once, never delivered again
        if (np > 1) total_dups += uint64_t(np - 1);
      }
    CHECK(polled.size() == 4 * last);
    CHECK(insts.size() == size_t(3 + kills));
    bus.remove_topic(topic);
  }
  // Every duplicate is a message a killed member polled and did not release: each
  // killed member leaves at most one such message (its last P).
  CHECK(total_dups <= unreleased_killed);
  WARN(total_trials << " kills in " << batches << " batches: " << total_dups << " duplicates, "
                    << unreleased_killed << " messages polled and not released by a killed member");
}
