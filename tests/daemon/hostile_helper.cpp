// What a hostile second local user does (exec'd by hostile_user_test through
// setpriv as that user). Each mode prints one line "<what>:<result>" on stdout.
//   create SOCK TOPIC MODE         create TOPIC (mode bits as the ACL) -> create:<ok|denied|exists|refused|err>
//   read SOCK TOPIC                subscribe, read one message within 2 s -> read:<text|none|denied|err>
//   publish SOCK TOPIC TEXT        publish TEXT -> publish:<ok|denied|err>
//   delete SOCK TOPIC              delete TOPIC -> delete:<ok|denied|err>
//   save-cursor SOCK TOPIC NAME    saveCursor NAME at position 0 -> save:<ok|denied|err>
//   huge SOCK TOPIC PARTS CAP      create PARTS x CAP bytes -> huge:<ok|refused|err>
//   topics SOCK PREFIX N           create up to N topics -> topics:<how many were created>
//   conns SOCK N                   open up to N connections, print conns:<accepted>, hang
//   list SOCK                      list topics -> list:<names, comma separated>
//   health SOCK                    -> health:<ok|err>
//   durable SOCK TOPIC RETENTION   create a durable TOPIC with that retentionBytes -> durable:<ok|refused|...>
//   flood SOCK TOPIC               8 connections, each keeping 64 saveCursor requests in flight;
//                                  prints "flooding" once replies flow, runs until killed
//   direct PREFIX TOPIC MODE       direct mode: create TOPIC (mode octal), publish "bait" -> direct:<ok|...>
//   fuzz SOCK SEED N VPREFIX       N random requests of every kind (seeded), on names of its own, names
//                                  starting with VPREFIX (the victim's private topics) and odd ones, with
//                                  malformed packets on a side connection; prints
//                                  fuzz:sent=<n> ok=<n> refused=<n> drops=<n> breach=<none|what>
//   ctl SOCK TOPIC                 subscribe, then try to write the control segment (mmap PROT_WRITE of
//                                  its fd, mprotect of the mapping) and to open every cursor page
//                                  segment -> ctl:<ro|writable> pages:<denied|opened>
//   forge SOCK TOPIC TETHERED      take a cursor grant (TETHERED 1/0) and rewrite its own page
//                                  forever: 0, far beyond the tail, random, flipping; prints
//                                  "forging" once started, runs until killed
//   resume SOCK TOPIC NAME         subscribe under durable NAME -> resume:<ok|denied|...>
//   sub SOCK TOPIC                 a tethered subscriber that never reads: prints "joined", hangs
//   truncate SOCK TOPIC            take a tethered grant, ftruncate its cursor page and the wake segment
//                                  (to 1 MiB, then to 0) -> truncate:page=<sealed|truncated>
//                                  wake=<sealed|truncated>, then hangs holding the grant
//   truncate-data SOCK TOPIC       open TOPIC as a publisher and ftruncate the data segment's fd (to
//                                  1 MiB, then to 0), and reopen it and the control segment's fd
//                                  writable through /proc/self/fd -> truncate-data:data=<sealed|truncated>
//                                  reopen=<denied|opened>, then hangs holding the fds
//   leave SOCK TOPIC SLOT GEN      leave another's grant over our own connection -> leave:<ok|notfound>
//   leave-reuse SOCK TOPIC         (root) a connection whose recorded pid is then given to a victim
//                                  subscriber (clone3 set_tid) sends the victim's leave
//                                  -> leave:<ok|notfound> victim:<kept|lost>
//   grants SOCK TOPIC              untethered joins over one connection until refused
//                                  -> grants:<n> <code>:<partition-quota|uid-quota|other>, hangs
//   named SOCK TOPIC NAME          a durable subscriber NAME: prints "named:joined", hangs
//   park SOCK TOPIC                durable joins under new names, each parked at once (leave with park),
//                                  until refused, then resumes the first name
//                                  -> parked:<n> <code>:<partition-quota|other> resume:<ok|code>
//   save-many SOCK TOPIC N         saveCursor under new names until refused (at most N)
//                                  -> saves:<n> <code>:<durable-quota|other|none>
//   probe SOCK TOPIC               every request that names a topic, partition or grant, one line each:
//                                  "<request>:<error code number>:<error text>" (ok: "<request>:ok"),
//                                  with TOPIC written as <T> (to compare an existing and a missing topic)
//   lag SOCK TOPIC                 a tethered subscriber that reads nothing until its stdin closes
//                                  (prints "lag:joined"), then reads until it is not ok
//                                  -> lag:read=<n> status=<the first status not ok>
//   hoard SOCK PREFIX N FDS        a subscriber on topics PREFIX.0 .. PREFIX.N-1 holding FDS more fds
//                                  (dups of /dev/null): prints "hoard:ready", hangs
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/schema.capnp.h>
#include <capnp/serialize.h>

#include "shmbus/daemon_client.hpp"
#include "shmbus/group.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;

namespace {
const char* code(const Error& e) {
  switch (e.code()) {
    case ErrorCode::permission_denied: return "denied";
    case ErrorCode::already_exists: return "exists";
    case ErrorCode::not_found: return "notfound";
    case ErrorCode::invalid_argument:
    case ErrorCode::no_slot: return "refused";
    default: return "err";
  }
}
// Schema version i (0, 1, ...) of one root struct: i + 1 UInt64 fields (each one a
// backward-compatible addition to the one before), its display name padded with
// `pad` bytes so that a version costs the daemon about that much to keep.
std::vector<uint8_t> schema_version(uint32_t i, size_t pad) {
  capnp::MallocMessageBuilder mb;
  auto n = mb.initRoot<capnp::schema::CodeGeneratorRequest>().initNodes(1)[0];
  n.setId(0xb0c5c4e3a0000001ull);
  n.setDisplayName("hostile.capnp:S" + std::string(pad, 'x'));
  auto st = n.initStruct();
  st.setDataWordCount(uint16_t(i + 1));
  auto fl = st.initFields(i + 1);
  for (uint32_t k = 0; k <= i; ++k) {
    fl[k].setName("f" + std::to_string(k));
    fl[k].setCodeOrder(uint16_t(k));
    fl[k].initOrdinal().setExplicit(uint16_t(k));
    auto sl = fl[k].initSlot();
    sl.setOffset(k);
    sl.initType().setUint64();
    sl.initDefaultValue().setUint64(0);
  }
  auto w = capnp::messageToFlatArray(mb);
  return {w.asBytes().begin(), w.asBytes().end()};
}

void out(const std::string& what, const std::string& r) {
  std::printf("%s:%s\n", what.c_str(), r.c_str());
  std::fflush(stdout);
}

// Sequences of requests from a second uid (issue 9: "the control-protocol fuzzer
// extended to sequences of requests from two uids"). Every request is well formed
// (the decoder fuzzer covers bytes); what varies is the order, the names and the
// fields. A breach is any success on the victim's private topics (VPREFIX*), which
// this uid has no rights on, or any reply that shows one of them.
uint64_t g_rng;
uint64_t rnd() {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}

void fuzz(DaemonClient::Options o, uint64_t seed, int n, const std::string& vp) {
  g_rng = seed * 0x9E3779B97F4A7C15ULL | 1;
  std::vector<std::string> names;
  for (int k = 0; k < 4; ++k) names.push_back("fz" + std::to_string(seed) + "." + std::to_string(k));
  for (int k = 0; k < 4; ++k) names.push_back(vp + std::to_string(k));
  names.insert(names.end(), {"", ".", "..", "a/b", "../../etc/passwd", std::string(300, 'x'),
                             std::string("nul\0in", 6), "\xff\xfe", vp});
  auto victim = [&](const std::string& t) {
    return t.size() > vp.size() && t.compare(0, vp.size(), vp) == 0;
  };
  std::shared_ptr<DaemonClient> c = DaemonClient::connect(o);
  int sent = 0, ok = 0, refused = 0, drops = 0;
  std::string breach = "none";
  auto flag = [&](const std::string& what) {
    if (breach == "none") breach = what;
  };
  for (int i = 0; i < n; ++i) {
    const std::string t = names[rnd() % names.size()];
    const int kind = int(rnd() % 12);
    if (kind == 11) {
      // Malformed packets on a side connection: random bytes, a truncated header, a
      // frame that claims more than it has. The daemon drops that connection only.
      int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::memcpy(a.sun_path, o.socket_path.c_str(),
                  std::min(o.socket_path.size() + 1, sizeof a.sun_path - 1));
      if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        std::vector<uint8_t> junk(1 + rnd() % 200);
        for (auto& b : junk) b = uint8_t(rnd());
        if (rnd() % 2) {  // a valid magic, a lying length
          const uint32_t magic = 0x31434253, len = uint32_t(rnd());
          if (junk.size() < 8) junk.resize(8);
          std::memcpy(junk.data(), &magic, 4);
          std::memcpy(junk.data() + 4, &len, 4);
        }
        control::send_packet(fd, junk);
        std::vector<uint8_t> buf;
        control::recv_packet(fd, buf, nullptr, 2000);
      }
      if (fd >= 0) close(fd);
      ++sent;
      continue;
    }
    ++sent;
    try {
      auto rep = c->call([&](proto::Request::Builder r) {
        switch (kind) {
          case 0: {
            auto s = r.initCreateTopic();
            s.setName(t);
            s.setPartitions(uint32_t(1 + rnd() % 3));
            s.setCapacity(uint64_t(4096) << (rnd() % 5));
            s.setSlots(uint32_t(1 + rnd() % 16));
            s.setMultiProducer(rnd() % 2);
            if (rnd() % 4 == 0) {
              auto acl = s.initAccess();
              auto su = acl.initSubscribeUids(1);
              su.set(0, rnd() % 2 ? 0xFFFFFFFFu : uint32_t(rnd() % 2000));
            }
            break;
          }
          case 1: r.setDescribeTopic(t); break;
          case 2: r.setListTopics(); break;
          case 3: r.setDeleteTopic(t); break;
          case 4: {
            auto op = r.initOpen();
            op.setTopic(t);
            op.setPartition(uint32_t(rnd() % 4));
            op.setRole(rnd() % 3 == 0 ? proto::Role::PUBLISHER
                       : rnd() % 2    ? proto::Role::SUBSCRIBER
                                      : proto::Role::ADMIN);
            if (rnd() % 3 == 0) op.setDurableName("dn" + std::to_string(rnd() % 3));
            break;
          }
          case 5: r.setStat(rnd() % 2 ? t : ""); break;
          case 6: r.setHealth(); break;
          case 7: {
            auto d = r.initSaveCursor();
            d.setTopic(t);
            d.setName(rnd() % 2 ? "victim-name" : "dn" + std::to_string(rnd() % 3));
            d.setPartition(uint32_t(rnd() % 3));
            d.setPosition(rnd());
            break;
          }
          case 8: {
            auto pg = r.initListPage();
            pg.setAfter(rnd() % 2 ? "" : t);
            pg.setLimit(uint32_t(rnd() % 5));
            break;
          }
          case 9: {
            auto pg = r.initStatPage();
            pg.setAfter(rnd() % 2 ? "" : t);
            pg.setLimit(uint32_t(rnd() % 5));
            break;
          }
          default: r.setHello(); break;
        }
      });
      ++ok;
      auto resp = rep.get();
      // Nothing of the victim's may come back, whatever was asked.
      auto shows = [&](const std::string& name) { return victim(name); };
      if (resp.isTopic() && shows(resp.getTopic().getSpec().getName())) flag("describe/create " + t);
      if (resp.isTopics())
        for (auto ti : resp.getTopics())
          if (shows(ti.getSpec().getName())) flag("list shows " + std::string(ti.getSpec().getName().cStr()));
      if (resp.isStats())
        for (auto st : resp.getStats())
          if (shows(st.getName())) flag("stat shows " + std::string(st.getName().cStr()));
      if (resp.isPage()) {
        for (auto ti : resp.getPage().getTopics())
          if (shows(ti.getSpec().getName())) flag("listPage shows a victim topic");
        for (auto st : resp.getPage().getStats())
          if (shows(st.getName())) flag("statPage shows a victim topic");
      }
      if (victim(t) && (kind == 3 || kind == 4 || kind == 7))
        flag("request " + std::to_string(kind) + " on " + t);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::not_connected || e.code() == ErrorCode::timed_out) {
        ++drops;  // must not happen to well-formed requests: counted, checked by the test
        try {
          c = DaemonClient::connect(o);
        } catch (const Error&) {
          flag("daemon gone after request " + std::to_string(kind));
          break;
        }
      } else {
        ++refused;
      }
    }
  }
  std::printf("fuzz:sent=%d ok=%d refused=%d drops=%d breach=%s\n", sent, ok, refused, drops, breach.c_str());
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string mode = argv[1], sock = argv[2];
  const std::string topic = argc > 3 ? argv[3] : "";
  std::string what = mode == "save-cursor" ? "save" : mode;
  try {
    DaemonClient::Options o;
    o.socket_path = sock;
    o.reconnect_ms = 0;
    if (mode == "create") {
      TopicConfig cfg;
      cfg.capacity = 8192;
      cfg.mode = uint32_t(strtoul(argv[4], nullptr, 8));
      cfg.multi_producer = argc > 5 && std::string(argv[5]) == "multi";
      DaemonClient::connect(o)->create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "read") {
      Bus bus = Bus::connect(sock);
      // Not a topic being created meanwhile: no need to wait the default 5 s for it.
      Subscriber sub = bus.subscriber(topic, {.open_timeout_ms = 200});
      View v;
      if (sub.poll_wait(v, 2'000'000'000) == Status::ok) {
        out(what, std::string(reinterpret_cast<const char*>(v.data()), v.size()));
        sub.release(v);
      } else {
        out(what, "none");
      }
    } else if (mode == "publish") {
      Bus bus = Bus::connect(sock);
      Publisher pub = bus.publisher(topic, {.open_timeout_ms = 200});
      std::string text = argv[4];
      out(what, pub.offer(text.data(), text.size()) == Status::ok ? "ok" : "err");
    } else if (mode == "delete") {
      DaemonClient::connect(o)->delete_topic(topic);
      out(what, "ok");
    } else if (mode == "save-cursor") {
      DaemonClient::connect(o)->call([&](proto::Request::Builder r) {
        auto d = r.initSaveCursor();
        d.setTopic(topic);
        d.setName(argv[4]);
        d.setPartition(0);
        d.setPosition(0);
      });
      out(what, "ok");
    } else if (mode == "ctl") {
      auto c = DaemonClient::connect(o);
      auto rep = c->call([&](proto::Request::Builder r) {
        auto op = r.initOpen();
        op.setTopic(topic);
        op.setPartition(0);
        op.setRole(proto::Role::SUBSCRIBER);
      });
      const size_t csize = rep.get().getOpen().getCtlSize();
      bool writable = false;
      void* w = mmap(nullptr, csize, PROT_READ | PROT_WRITE, MAP_SHARED, rep.fds.at(1), 0);
      if (w != MAP_FAILED) writable = true;
      void* m = mmap(nullptr, csize, PROT_READ, MAP_SHARED, rep.fds.at(1), 0);
      if (m == MAP_FAILED || mprotect(m, csize, PROT_READ | PROT_WRITE) == 0) writable = true;
      // Through the library's own mapping as well.
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      if (mprotect(sub.refs().ctl, 4096, PROT_READ | PROT_WRITE) == 0) writable = true;
      out("ctl", writable ? "writable" : "ro");
      // Every cursor page of this topic (others' grants and our own): none opens by name.
      bool opened = false;
      int seen = 0;
      if (DIR* d = opendir("/dev/shm")) {
        while (dirent* e = readdir(d)) {
          std::string n = e->d_name;
          if (n.find("." + topic + ".0.ctl.") == std::string::npos) continue;
          ++seen;
          int fd = open(("/dev/shm/" + n).c_str(), O_RDONLY | O_CLOEXEC);
          if (fd >= 0) opened = true, close(fd);
        }
        closedir(d);
      }
      out("pages", opened ? "opened" : seen ? "denied" : "none");
    } else if (mode == "forge") {
      auto prov = make_daemon_provider(DaemonClient::connect(o));
      auto m = prov->open(topic, 0, Role::subscriber, 2000);
      CursorGrant g = m->join_cursor(std::string(argv[4]) == "1", "", shm::RingReader::kAtTail);
      out("forge", "forging");
      uint64_t x = 0x9e3779b97f4a7c15ull;
      for (uint64_t i = 0;; ++i) {
        const uint64_t tail = shm::aref(m->refs().data->tail_pos).load();
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t v;
        switch (i % 5) {
          case 0: v = 0; break;
          case 1: v = tail + (uint64_t(1) << 40); break;
          case 2: v = x; break;
          case 3: v = (i & 8) ? ~uint64_t(0) : 0; break;  // flipping
          default: v = tail + m->refs().capacity; break;
        }
        shm::aref(g.page->position).store(v, std::memory_order_release);
        shm::aref(g.page->space_wake).fetch_add(1);
        if (i % 64 == 0) usleep(100);
      }
    } else if (mode == "truncate") {
      // The fds a subscriber holds: the wake segment (O_RDWR) and its cursor page.
      auto c = DaemonClient::connect(o);
      auto op = c->call([&](proto::Request::Builder r) {
        auto x = r.initOpen();
        x.setTopic(topic);
        x.setPartition(0);
        x.setRole(proto::Role::SUBSCRIBER);
      });
      auto jn = c->call([&](proto::Request::Builder r) {
        auto j = r.initJoin();
        j.setTopic(topic);
        j.setPartition(0);
        j.setTethered(true);
      });
      // Grown, then shrunk to nothing: a mapping of a shrunk file faults (SIGBUS).
      auto cut = [](int fd) {
        bool any = ftruncate(fd, off_t(1) << 20) == 0;
        any = (ftruncate(fd, 0) == 0) || any;
        return any ? "truncated" : "sealed";
      };
      std::printf("truncate:page=%s wake=%s\n", cut(jn.fds.at(0)), cut(op.fds.at(2)));
      std::fflush(stdout);
      for (;;) pause();
    } else if (mode == "truncate-data") {
      // A publisher's data fd is O_RDWR: a regular tmpfs file would shrink under every
      // mapping (the daemon's, the subscribers') and SIGBUS them all.
      auto c = DaemonClient::connect(o);
      auto op = c->call([&](proto::Request::Builder r) {
        auto x = r.initOpen();
        x.setTopic(topic);
        x.setPartition(0);
        x.setRole(proto::Role::PUBLISHER);
      });
      bool any = ftruncate(op.fds.at(0), off_t(1) << 20) == 0;
      any = (ftruncate(op.fds.at(0), 0) == 0) || any;
      bool opened = false;
      for (int i : {0, 1}) {
        const int f =
            open(("/proc/self/fd/" + std::to_string(op.fds.at(size_t(i)))).c_str(), O_RDWR | O_CLOEXEC);
        if (f >= 0 && i == 1) opened = true;  // the data fd is O_RDWR already
        if (f >= 0) close(f);
      }
      std::printf("truncate-data:data=%s reopen=%s\n", any ? "truncated" : "sealed",
                  opened ? "opened" : "denied");
      std::fflush(stdout);
      for (;;) pause();
    } else if (mode == "leave") {
      DaemonClient::connect(o)->call([&](proto::Request::Builder q) {
        auto l = q.initLeave();
        l.setTopic(topic);
        l.setPartition(0);
        l.setSlot(uint32_t(atoi(argv[4])));
        l.setGeneration(uint32_t(atoi(argv[5])));
      });
      out(what, "ok");
    } else if (mode == "leave-reuse") {
      // Pid reuse, made exact: process A connects (the daemon records A's pid), hands
      // the connection to its child K and exits; the victim V is then created with
      // A's pid (clone3 set_tid, root) and subscribes. K sends V's leave over A's
      // connection. -> leave:<ok|notfound|...> victim:<kept|lost>, or leave:noreuse
      int v2k[2], k2v[2];
      if (pipe(v2k) < 0 || pipe(k2v) < 0) return 3;
      const pid_t a = fork();
      if (a == 0) {
        auto x = DaemonClient::connect(o);
        if (fork() == 0) {
          uint32_t sg[2];
          if (read(v2k[0], sg, sizeof sg) != ssize_t(sizeof sg)) _exit(1);
          std::string r = "ok";
          try {
            x->call([&](proto::Request::Builder q) {
              auto l = q.initLeave();
              l.setTopic(topic);
              l.setPartition(0);
              l.setSlot(sg[0]);
              l.setGeneration(sg[1]);
            });
          } catch (const Error& e) {
            r = code(e);
          }
          char b[16] = {};
          std::snprintf(b, sizeof b, "%s", r.c_str());
          if (write(k2v[1], b, sizeof b) != ssize_t(sizeof b)) _exit(1);
          _exit(0);
        }
        _exit(0);
      }
      int st = 0;
      waitpid(a, &st, 0);
      struct clone_args ca {};
      pid_t want = a;
      ca.exit_signal = SIGCHLD;
      ca.set_tid = uint64_t(uintptr_t(&want));
      ca.set_tid_size = 1;
      const long v = syscall(SYS_clone3, &ca, sizeof ca);
      if (v < 0) {
        out(what, "noreuse");
        return 0;
      }
      if (v == 0) {
        Bus bus = Bus::connect(sock);
        Subscriber sub = bus.subscriber(topic);
        auto rep = DaemonClient::connect(o)->call([&](proto::Request::Builder r) { r.setStat(topic); });
        uint32_t sg[2] = {~0u, 0};
        for (auto ss : rep.get().getStats()[0].getPartitions()[0].getSubscribers())
          if (ss.getPid() == uint32_t(getpid())) sg[0] = ss.getSlot();
        if (sg[0] == ~0u) _exit(1);
        const shm::CursorSlot& slot = sub.refs().slots[sg[0]];
        sg[1] = shm::aref(const_cast<uint32_t&>(slot.generation)).load();
        if (write(v2k[1], sg, sizeof sg) != ssize_t(sizeof sg)) _exit(1);
        char b[16] = {};
        if (read(k2v[0], b, sizeof b) != ssize_t(sizeof b)) _exit(1);
        const bool kept = shm::aref(const_cast<uint32_t&>(slot.state)).load() == shm::kSlotActive &&
                          shm::aref(const_cast<uint32_t&>(slot.pid)).load() == uint32_t(getpid()) &&
                          shm::aref(const_cast<uint32_t&>(slot.generation)).load() == sg[1];
        std::printf("leave:%s victim:%s\n", b, kept ? "kept" : "lost");
        std::fflush(stdout);
        _exit(0);
      }
      waitpid(pid_t(v), &st, 0);
    } else if (mode == "grants") {
      // Joins over one connection until refused; prints grants:<n> <why>, then hangs.
      auto c = DaemonClient::connect(o);
      c->call([&](proto::Request::Builder r) {
        auto x = r.initOpen();
        x.setTopic(topic);
        x.setPartition(0);
        x.setRole(proto::Role::SUBSCRIBER);
      });
      int n = 0;
      std::string why = "none";
      std::vector<DaemonClient::Reply> held;
      for (; n < 4096; ++n) {
        try {
          held.push_back(c->call([&](proto::Request::Builder r) {
            auto j = r.initJoin();
            j.setTopic(topic);
            j.setPartition(0);
            j.setTethered(false);
          }));
        } catch (const Error& e) {
          why = std::string(code(e)) +
                (std::string(e.what()).find("uid_max_partition_grants") != std::string::npos
                     ? ":partition-quota"
                 : std::string(e.what()).find("uid_max_grants") != std::string::npos ? ":uid-quota"
                                                                                     : ":other");
          break;
        }
      }
      std::printf("grants:%d %s\n", n, why.c_str());
      std::fflush(stdout);
      for (;;) pause();
    } else if (mode == "publishers") {
      // Opens publishers (one process, several topics) until refused; prints
      // pubs:<n> <why>, then hangs holding them.
      Bus bus = Bus::connect(sock);
      std::vector<Publisher> held;
      std::string why = "none";
      for (int i = 0; i < 64; ++i) {
        try {
          held.push_back(bus.publisher(topic, {.open_timeout_ms = 200}));
        } catch (const Error& e) {
          const std::string m = e.what();
          why = std::string(code(e)) +
                (m.find("uid_max_partition_producer_grants") != std::string::npos ? ":partition-quota"
                 : m.find("uid_max_producer_grants") != std::string::npos         ? ":uid-quota"
                                                                                  : ":other");
          break;
        }
      }
      std::printf("pubs:%zu %s\n", held.size(), why.c_str());
      std::fflush(stdout);
      for (;;) pause();
    } else if (mode == "schemas") {
      // Registers schema versions 0 .. argv[4]-1 of the topic (each padded with argv[5]
      // bytes) until refused; prints schemas:<versions stored> <why>. argv[6] "own":
      // the topic is made first, by this uid.
      auto c = DaemonClient::connect(o);
      if (argc > 6 && std::string(argv[6]) == "own") c->create_topic(topic, {.capacity = 4096, .mode = 0600});
      int n = 0;  // versions this run stored (ones already stored are skipped)
      std::string why = "none";
      for (int i = 0; i < atoi(argv[4]); ++i) {
        const std::vector<uint8_t> b = schema_version(uint32_t(i), size_t(atoi(argv[5])));
        try {
          auto rep = c->call([&](proto::Request::Builder r) {
            auto x = r.initRegisterSchema();
            x.setTopic(topic);
            x.setRootId(0xb0c5c4e3a0000001ull);
            x.setNodes(kj::arrayPtr(b.data(), b.size()));
            x.setRole(proto::Role::PUBLISHER);
          });
          n += rep.get().getSchema().getStored();
        } catch (const Error& e) {
          const std::string m = e.what();
          why = std::string(code(e)) +
                (m.find("uid_max_schema_versions") != std::string::npos ? ":version-quota"
                 : m.find("uid_max_schema_bytes") != std::string::npos  ? ":bytes-quota"
                                                                        : ":other(" + m + ")");
          break;
        }
      }
      std::printf("schemas:%d %s\n", n, why.c_str());
      std::fflush(stdout);
    } else if (mode == "named") {
      Bus bus = Bus::connect(sock);
      SubscriberOptions so;
      so.name = argv[4];
      Subscriber sub = bus.subscriber(topic, so);
      out("named", "joined");
      for (;;) pause();
    } else if (mode == "park") {
      auto c = DaemonClient::connect(o);
      int n = 0;
      std::string why = "none";
      auto join = [&](const std::string& name) {
        return c->call([&](proto::Request::Builder r) {
          auto j = r.initJoin();
          j.setTopic(topic);
          j.setPartition(0);
          j.setTethered(false);
          j.setDurableName(name);
        });
      };
      for (; n < 4096; ++n) {
        try {
          auto rep = join("park-" + std::to_string(n));
          const uint32_t slot = rep.get().getJoin().getSlot(), gen = rep.get().getJoin().getGeneration();
          c->call([&](proto::Request::Builder r) {
            auto l = r.initLeave();
            l.setTopic(topic);
            l.setPartition(0);
            l.setSlot(slot);
            l.setGeneration(gen);
            l.setPark(true);
          });
        } catch (const Error& e) {
          why = std::string(code(e)) +
                (std::string(e.what()).find("uid_max_partition_grants") != std::string::npos
                     ? ":partition-quota"
                     : ":other");
          break;
        }
      }
      std::string resumed = "ok";
      try {
        join("park-0");
      } catch (const Error& e) {
        resumed = code(e);
      }
      std::printf("parked:%d %s resume:%s\n", n, why.c_str(), resumed.c_str());
      std::fflush(stdout);
    } else if (mode == "save-many") {
      auto c = DaemonClient::connect(o);
      const int most = atoi(argv[4]);
      int n = 0;
      std::string why = "none";
      for (; n < most; ++n) {
        try {
          c->call([&](proto::Request::Builder r) {
            auto d = r.initSaveCursor();
            d.setTopic(topic);
            d.setName("sv-" + std::to_string(n));
            d.setPartition(0);
            d.setPosition(0);
          });
        } catch (const Error& e) {
          why = std::string(code(e)) +
                (std::string(e.what()).find("uid_max_durable_names") != std::string::npos ? ":durable-quota"
                                                                                          : ":other");
          break;
        }
      }
      std::printf("saves:%d %s\n", n, why.c_str());
      std::fflush(stdout);
    } else if (mode == "probe") {
      auto c = DaemonClient::connect(o);
      auto hide = [&](std::string t) {
        for (size_t p; !topic.empty() && (p = t.find(topic)) != std::string::npos;)
          t.replace(p, topic.size(), "<T>");
        return t;
      };
      auto probe = [&](const char* what, auto&& fill) {
        std::string r = "ok";
        try {
          c->call(fill);
        } catch (const Error& e) {
          r = std::to_string(int(e.code())) + ":" + e.what();
        }
        std::printf("%s:%s\n", what, hide(r).c_str());
      };
      for (auto role : {proto::Role::SUBSCRIBER, proto::Role::PUBLISHER, proto::Role::ADMIN})
        for (uint32_t part : {0u, 7u})
          probe(role == proto::Role::SUBSCRIBER  ? "open-sub"
                : role == proto::Role::PUBLISHER ? "open-pub"
                                                 : "open-admin",
                [&](proto::Request::Builder r) {
                  auto x = r.initOpen();
                  x.setTopic(topic);
                  x.setPartition(part);
                  x.setRole(role);
                });
      for (uint32_t part : {0u, 7u}) {
        probe("save", [&](proto::Request::Builder r) {
          auto d = r.initSaveCursor();
          d.setTopic(topic);
          d.setName("probe");
          d.setPartition(part);
          d.setPosition(0);
        });
        for (uint32_t slot : {0u, 1u, 600u})
          probe("leave", [&](proto::Request::Builder r) {
            auto l = r.initLeave();
            l.setTopic(topic);
            l.setPartition(part);
            l.setSlot(slot);
            l.setGeneration(1);
          });
        probe("join", [&](proto::Request::Builder r) {
          auto j = r.initJoin();
          j.setTopic(topic);
          j.setPartition(part);
        });
        probe("page", [&](proto::Request::Builder r) {
          auto f = r.initCursorPage();
          f.setTopic(topic);
          f.setPartition(part);
          f.setSlot(0);
          f.setGeneration(1);
        });
      }
      probe("describe", [&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
      probe("stat", [&](proto::Request::Builder r) { r.setStat(topic); });
      probe("delete", [&](proto::Request::Builder r) { r.setDeleteTopic(topic); });
      std::fflush(stdout);
    } else if (mode == "hoard") {
      Bus bus = Bus::connect(sock);
      std::vector<Subscriber> subs;
      for (int i = 0; i < atoi(argv[4]); ++i) subs.push_back(bus.subscriber(topic + "." + std::to_string(i)));
      rlimit rl{};
      getrlimit(RLIMIT_NOFILE, &rl);
      rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, rlim_t(atoi(argv[5]) + 8 * atoi(argv[4]) + 256));
      setrlimit(RLIMIT_NOFILE, &rl);
      for (int i = 0; i < atoi(argv[5]); ++i)
        if (open("/dev/null", O_RDONLY) < 0) return 3;
      out("hoard", "ready");
      for (;;) pause();
    } else if (mode == "hoard-pages") {
      // Keeps the cursor pages of argv[4] grants it joined and left (quotas count live
      // grants only), then holds one live grant so a restarted daemon walks its fds.
      const int n = atoi(argv[4]);
      rlimit rl{};
      getrlimit(RLIMIT_NOFILE, &rl);
      rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, rlim_t(n + 256));
      setrlimit(RLIMIT_NOFILE, &rl);
      auto c = DaemonClient::connect(o);
      std::vector<int> pages;
      for (int i = 0; i < n; ++i) {
        auto rep = c->call([&](proto::Request::Builder r) {
          auto j = r.initJoin();
          j.setTopic(topic);
          j.setPartition(0);
          j.setTethered(false);
        });
        pages.insert(pages.end(), rep.fds.begin(), rep.fds.end());
        rep.fds.clear();  // kept: not closed with the reply
        const uint32_t slot = rep.get().getJoin().getSlot(), gen = rep.get().getJoin().getGeneration();
        c->call([&](proto::Request::Builder r) {
          auto l = r.initLeave();
          l.setTopic(topic);
          l.setPartition(0);
          l.setSlot(slot);
          l.setGeneration(gen);
        });
      }
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      out("hoard", "pages=" + std::to_string(pages.size()));
      for (;;) pause();
    } else if (mode == "lag") {
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      out("lag", "joined");
      char ch;
      while (read(0, &ch, 1) > 0) {
      }
      int n = 0;
      Status st;
      View v;
      while ((st = sub.poll_wait(v, 300'000'000)) == Status::ok) {
        ++n;
        sub.release(v);
      }
      std::printf("lag:read=%d status=%s\n", n, to_string(st));
      std::fflush(stdout);
    } else if (mode == "group") {
      // A GroupSubscriber of group argv[4]: group:held=<partitions it holds> once it
      // holds its assignment (or the error's code).
      Bus bus = Bus::connect(sock);
      GroupSubscriber gs = bus.group_subscriber(topic, argv[4]);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while ((gs.partitions() != gs.assigned() || gs.assigned().empty()) &&
             std::chrono::steady_clock::now() < deadline)
        gs.sync();
      out("group", "held=" + std::to_string(gs.partitions().size()));
    } else if (mode == "resume") {
      Bus bus = Bus::connect(sock);
      SubscriberOptions so;
      so.name = argv[4];
      Subscriber sub = bus.subscriber(topic, so);
      out(what, "ok");
    } else if (mode == "sub") {
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      out("sub", "joined");
      for (;;) pause();
    } else if (mode == "huge") {
      TopicConfig cfg;
      cfg.partitions = uint32_t(atoi(argv[4]));
      cfg.capacity = strtoull(argv[5], nullptr, 0);
      cfg.mode = 0600;
      DaemonClient::connect(o)->create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "topics") {
      auto c = DaemonClient::connect(o);
      int n = atoi(argv[4]), made = 0;
      for (int i = 0; i < n; ++i) {
        try {
          c->create_topic(topic + "." + std::to_string(i), {.capacity = 4096, .mode = 0600});
          ++made;
        } catch (const Error&) {
          break;
        }
      }
      out(what, std::to_string(made));
    } else if (mode == "conns") {
      int n = atoi(argv[3]), ok = 0;
      std::vector<std::shared_ptr<DaemonClient>> v;
      for (int i = 0; i < n; ++i) {
        try {
          v.push_back(DaemonClient::connect(o));
          ++ok;
        } catch (const Error&) {
          break;
        }
      }
      out(what, std::to_string(ok));
      for (;;) pause();
    } else if (mode == "list") {
      auto rep = DaemonClient::connect(o)->call([](proto::Request::Builder r) { r.setListTopics(); });
      std::string names;
      for (auto t : rep.get().getTopics()) names += std::string(t.getSpec().getName().cStr()) + ",";
      out(what, names);
    } else if (mode == "durable") {
      TopicConfig cfg;
      cfg.capacity = 8192;
      cfg.mode = 0600;
      cfg.durable = true;
      cfg.retention_bytes = strtoull(argv[4], nullptr, 0);
      DaemonClient::connect(o)->create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "flood") {
      std::vector<int> fds;
      for (int i = 0; i < 8; ++i) {
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
        if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0)
          fds.push_back(fd);
        else
          close(fd);
      }
      uint64_t id = 0;
      auto request = [&](int fd) {
        capnp::MallocMessageBuilder mb;
        auto r = mb.initRoot<proto::Request>();
        r.setVersion(proto::PROTOCOL_VERSION);
        r.setId(++id);
        auto d = r.initSaveCursor();
        d.setTopic(topic);
        d.setName("flood-" + std::to_string(id % 1000));
        d.setPartition(0);
        d.setPosition(id);
        return control::send_packet(fd, control::encode_frame(mb)) == 0;
      };
      for (int fd : fds)
        for (int k = 0; k < 64; ++k) request(fd);
      std::vector<pollfd> pf;
      for (int fd : fds) pf.push_back({fd, POLLIN, 0});
      uint64_t replies = 0;
      for (;;) {
        if (poll(pf.data(), pf.size(), 5000) <= 0) break;
        for (auto& p : pf) {
          if (!(p.revents & POLLIN)) continue;
          std::vector<uint8_t> buf;
          if (control::recv_packet(p.fd, buf, nullptr, 0) <= 0) continue;
          if (++replies == 1000) out(what, "flooding");
          request(p.fd);
        }
      }
      out(what, "stopped");
    } else if (mode == "direct") {
      Bus::Options bo;
      bo.shm_prefix = sock;
      Bus bus = Bus::direct(bo);
      TopicConfig cfg;
      cfg.capacity = 8192;
      cfg.mode = uint32_t(strtoul(argv[4], nullptr, 8));
      bus.create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "health") {
      DaemonClient::connect(o)->call([](proto::Request::Builder r) { r.setHealth(); });
      out(what, "ok");
    } else if (mode == "fuzz") {
      if (argc < 6) return 2;
      fuzz(o, std::strtoull(argv[3], nullptr, 10), std::atoi(argv[4]), argv[5]);
    } else {
      return 2;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "hostile_helper %s: %s\n", mode.c_str(), e.what());
    out(what, code(e));
  }
  return 0;
}
