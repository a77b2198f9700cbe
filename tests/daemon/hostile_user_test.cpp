// Trust boundaries (issue 9): every attack a second, unprivileged local user tried
// against shmbusd, replayed as that user (useradd + setpriv) against a root daemon.
// Each case checks the documented refusal, that the victim's files and messages stay
// intact and private, and that the daemon keeps serving. See docs/operations.md,
// "Security model".
#include <catch2/catch.hpp>

#include <sys/resource.h>
#include <sys/stat.h>

#include <capnp/serialize.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "core.hpp"
#include "daemon_util.hpp"
#include "second_user.hpp"
#include "shmbus/daemon.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void spit(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// A scratch directory (root-owned, 0755) removed at the end.
struct Scratch {
  std::string dir;
  Scratch() {
    char tpl[] = "/tmp/shmbus-ht-XXXXXX";
    dir = mkdtemp(tpl);
    chmod(dir.c_str(), 0755);
  }
  ~Scratch() {
    kill_keepers_under(dir);  // after the daemons (Shmbusd members die first)
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::string operator/(const std::string& n) const { return dir + "/" + n; }
};

// A shmbusd with any arguments, optionally as another user; start() waits for
// READY=1 on a private notify socket, or for the process to exit (refusal).
struct Shmbusd {
  std::string notify, err, prefix;
  Child proc;
  int nfd = -1;
  explicit Shmbusd(const Scratch& s, const std::string& tag) {
    static int n = 0;
    notify = s / ("notify-" + tag);
    err = s / ("err-" + tag);
    prefix = "sht-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(n++);
    nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, notify.c_str(), notify.size() + 1);
    bind(nfd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    chmod(notify.c_str(), 0777);  // a daemon run as the second user reports too
  }
  ~Shmbusd() {
    proc.kill_now();
    if (nfd >= 0) close(nfd);
    for (auto& f : shm_files(prefix)) unlink(("/dev/shm/" + f).c_str());
  }
  // true: READY; false: exited (see stderr()) or watchdog.
  std::vector<std::string> wrapper;  // e.g. prlimit ... --
  bool start(std::vector<std::string> args, const SecondUser* as = nullptr,
             std::vector<std::string> env = {}) {
    // SHMBUS_HOSTILE_DAEMON: run these attacks against another shmbusd binary (an
    // older build shows which of them it fails).
    const char* other = getenv("SHMBUS_HOSTILE_DAEMON");
    args.insert(args.begin(), other && *other ? std::string(other) : daemon_path());
    args.insert(args.begin(), wrapper.begin(), wrapper.end());
    args.insert(args.end(), {"--shm-prefix", prefix, "--log-level", "info"});
    env.push_back("NOTIFY_SOCKET=" + notify);
    proc = Child(as ? as->as(args) : args, err, env);
    const uint64_t deadline = now_ns() + 10'000'000'000ull;
    for (;;) {
      uint64_t t = now_ns();
      if (t >= deadline) return false;
      pollfd p[2] = {{nfd, POLLIN, 0}, {proc.pidfd(), POLLIN, 0}};
      if (poll(p, 2, int((deadline - t) / 1'000'000) + 1) <= 0) return false;
      if (p[0].revents) {
        char buf[256];
        ssize_t n = recv(nfd, buf, sizeof buf - 1, 0);
        if (n > 0 && std::string(buf, size_t(n)).find("READY=1") != std::string::npos) return true;
        continue;
      }
      if (p[1].revents) {
        exit_status = proc.wait(10000);
        return false;
      }
    }
  }
  std::string stderr_text() const { return slurp(err); }
  bool stop() {
    if (proc.pid() <= 0) return true;
    kill(proc.pid(), SIGTERM);
    int st = proc.wait(10000);
    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  int exit_status = -1;
};

bool serving(const std::string& sock) {
  try {
    auto c = DaemonClient::connect({sock, 5000, 0});
    return c->call([](proto::Request::Builder r) { r.setHealth(); }).get().getHealth().getServing();
  } catch (...) {
    return false;
  }
}

#define NEED_SECOND_USER(u)      \
  SecondUser u = second_user();  \
  if (!u.skip.empty()) {         \
    WARN("skipped: " << u.skip); \
    return;                      \
  }

std::string hostile() { return SHMBUS_TEST_HOSTILE; }

}  // namespace

TEST_CASE(
    "paths: a socket or state directory that is another user's, a symlink or writable by others is refused",
    "[security][paths]") {
  NEED_SECOND_USER(att);
  Scratch s;
  const std::string who = "owned by uid " + std::to_string(att.uid);
  // 1. The attacker made the socket's directory (the /tmp/shmbus-$UID squat).
  mkdir((s / "att").c_str(), 0777);
  chown((s / "att").c_str(), att.uid, att.gid);
  chmod((s / "att").c_str(), 0777);
  {
    Shmbusd d(s, "sockdir");
    REQUIRE_FALSE(d.start({"--socket", s / "att/shmbusd.sock", "--state-dir", s / "st1"}));
    CHECK(WIFEXITED(d.exit_status));
    CHECK(WEXITSTATUS(d.exit_status) == 1);
    INFO(d.stderr_text());
    CHECK(d.stderr_text().find("socket directory " + s / "att" + " is " + who) != std::string::npos);
  }
  // 2. A symlink in place of the socket's directory.
  mkdir((s / "real").c_str(), 0700);
  REQUIRE(symlink((s / "real").c_str(), (s / "link").c_str()) == 0);
  {
    Shmbusd d(s, "symlink");
    REQUIRE_FALSE(d.start({"--socket", s / "link/shmbusd.sock", "--state-dir", s / "st1"}));
    INFO(d.stderr_text());
    CHECK(d.stderr_text().find("is a symlink or not a directory") != std::string::npos);
    CHECK(access((s / "real/shmbusd.sock").c_str(), F_OK) != 0);
  }
  // 3. Ours but world-writable: anyone could swap the socket.
  mkdir((s / "ww").c_str(), 0777);
  chmod((s / "ww").c_str(), 0777);
  {
    Shmbusd d(s, "writable");
    REQUIRE_FALSE(d.start({"--socket", s / "ww/shmbusd.sock", "--state-dir", s / "st1"}));
    INFO(d.stderr_text());
    CHECK(d.stderr_text().find("writable by group or others") != std::string::npos);
  }
  // 4. The attacker pre-created the state dir with symlinks to root's files.
  spit(s / "victim", "precious");
  mkdir((s / "att/state").c_str(), 0777);
  REQUIRE(symlink((s / "victim").c_str(), (s / "att/state/registry.bin.tmp").c_str()) == 0);
  REQUIRE(symlink((s / "victim").c_str(), (s / "att/state/shmbusd.lock").c_str()) == 0);
  lchown((s / "att/state").c_str(), att.uid, att.gid);
  {
    Shmbusd d(s, "statedir");
    REQUIRE_FALSE(d.start({"--socket", s / "ok/shmbusd.sock", "--state-dir", s / "att/state"}));
    INFO(d.stderr_text());
    CHECK(d.stderr_text().find("state dir " + s / "att/state" + " is " + who) != std::string::npos);
  }
  CHECK(slurp(s / "victim") == "precious");
  struct stat st {};
  REQUIRE(stat((s / "victim").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0644);  // not chmod'ed either
  // 5. Symlinks planted inside our own state dir are never followed: the lock is
  //    refused, the registry's temporary file is replaced, not written through.
  mkdir((s / "st2").c_str(), 0700);
  REQUIRE(symlink((s / "victim").c_str(), (s / "st2/shmbusd.lock").c_str()) == 0);
  {
    Shmbusd d(s, "lock");
    REQUIRE_FALSE(d.start({"--socket", s / "ok/shmbusd.sock", "--state-dir", s / "st2"}));
    INFO(d.stderr_text());
    CHECK(d.stderr_text().find("shmbusd.lock: a symlink or not our file") != std::string::npos);
  }
  unlink((s / "st2/shmbusd.lock").c_str());
  REQUIRE(symlink((s / "victim").c_str(), (s / "st2/registry.bin.tmp").c_str()) == 0);
  {
    Shmbusd d(s, "tmp");
    REQUIRE(d.start({"--socket", s / "ok/shmbusd.sock", "--state-dir", s / "st2"}));
    Bus bus = Bus::connect(s / "ok/shmbusd.sock");
    bus.create_topic("paths.t", {.capacity = 4096});  // persists the registry
    bus.remove_topic("paths.t");
    CHECK(d.stop());
  }
  CHECK(slurp(s / "victim") == "precious");
  REQUIRE(lstat((s / "st2/registry.bin").c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  // The socket directory the daemon creates is 0755 for root (others connect), the
  // state dir 0700.
  REQUIRE(stat((s / "ok").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0755);
  REQUIRE(stat((s / "st2").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
}

TEST_CASE("paths: a client refuses a daemon run by another non-root user; SHMBUS_SOCKET is honoured",
          "[security][paths]") {
  NEED_SECOND_USER(att);
  Scratch s;
  mkdir((s / "att").c_str(), 0700);
  chown((s / "att").c_str(), att.uid, att.gid);
  const std::string evil = s / "att/shmbusd.sock";
  Shmbusd rogue(s, "rogue");
  REQUIRE(rogue.start({"--socket", evil, "--state-dir", s / "att/state"}, &att));
  chmod((s / "att").c_str(), 0755);  // the squat: the victim can reach the socket
  // The library: a clear refusal, nothing sent.
  try {
    Bus bus = Bus::connect(evil);
    FAIL("connected to another user's daemon");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::permission_denied);
    CHECK(std::string(e.what()).find("runs as uid " + std::to_string(att.uid)) != std::string::npos);
  }
  // The CLI, pointed there by SHMBUS_SOCKET.
  std::string out = run_capture({SHMBUS_TEST_CLI, "health"}, {"SHMBUS_SOCKET=" + evil});
  INFO(out);
  CHECK(out.find("runs as uid " + std::to_string(att.uid)) != std::string::npos);
  CHECK(rogue.stop());
  // A root daemon found through SHMBUS_SOCKET alone (no --socket), by the CLI and by
  // the second user (a system daemon serves everyone).
  const std::string sys = s / "sys/shmbusd.sock";
  Shmbusd d(s, "env");
  REQUIRE(d.start({"--state-dir", s / "sys-state"}, nullptr, {"SHMBUS_SOCKET=" + sys}));
  REQUIRE(access(sys.c_str(), F_OK) == 0);
  out = run_capture({SHMBUS_TEST_CLI, "--json", "health"}, {"SHMBUS_SOCKET=" + sys});
  INFO(out);
  CHECK(out.find("\"serving\":true") != std::string::npos);
  CHECK(run_capture(att.as({hostile(), "health", sys})) == "health:ok\n");
  CHECK(d.stop());
}

namespace {
// A root daemon in a scratch dir, as a system daemon would run.
struct RootDaemon {
  Scratch s;
  Shmbusd d{s, "root"};
  std::string sock = s / "run/shmbusd.sock";
  std::vector<std::string> extra, env;
  bool start() {
    std::vector<std::string> a = {"--socket", sock, "--state-dir", s / "state"};
    a.insert(a.end(), extra.begin(), extra.end());
    return d.start(a, nullptr, env);
  }
};

std::string as_att(const SecondUser& u, std::vector<std::string> args) {
  args.insert(args.begin(), hostile());
  return run_capture(u.as(args));
}

void save_cursor(const std::string& sock, const std::string& topic, const std::string& name) {
  DaemonClient::connect({sock})->call([&](proto::Request::Builder r) {
    auto d = r.initSaveCursor();
    d.setTopic(topic);
    d.setName(name);
    d.setPartition(0);
    d.setPosition(0);
  });
}
}  // namespace

TEST_CASE(
    "ownership: another user can neither take a topic's name, delete it, see it, nor resume a durable name",
    "[security][ownership]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  // Topic squatting: the attacker makes an open topic under the victim's name first.
  REQUIRE(as_att(att, {"create", rd.sock, "sq.orders", "666"}) == "create:ok\n");
  try {
    bus.create_topic("sq.orders", {.capacity = 8192, .mode = 0600});
    FAIL("the victim's private create succeeded on the attacker's open topic");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::already_exists);
    CHECK(std::string(e.what()).find("another access list") != std::string::npos);
  }
  // The victim's private topic: the attacker cannot adopt it (even asking for the
  // same settings), delete it, read it or learn it exists.
  bus.create_topic("v.private", {.capacity = 8192, .mode = 0600});
  std::optional<Subscriber> sub(bus.subscriber("v.private"));
  std::optional<Publisher> pub(bus.publisher("v.private"));
  REQUIRE(pub->offer("secret", 6) == Status::ok);
  CHECK(as_att(att, {"create", rd.sock, "v.private", "600"}) == "create:denied\n");
  CHECK(as_att(att, {"delete", rd.sock, "v.private"}) == "delete:notfound\n");
  // Without rights the topic is not there for it (the answer of a missing topic).
  CHECK(as_att(att, {"read", rd.sock, "v.private"}) == "read:notfound\n");
  CHECK(as_att(att, {"publish", rd.sock, "v.private", "forged"}) == "publish:notfound\n");
  std::string listed = as_att(att, {"list", rd.sock});
  CHECK(listed.find("sq.orders") != std::string::npos);
  CHECK(listed.find("v.private") == std::string::npos);
  View v;
  REQUIRE(sub->poll_wait(v, 1'000'000'000) == Status::ok);
  CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "secret");
  sub->release(v);
  CHECK(sub->poll(v) != Status::ok);  // nothing forged got in
  // A readable topic: the attacker may subscribe, but a durable name the victim made
  // stays the victim's (its saved position cannot be moved or resumed by another uid).
  bus.create_topic("dur.shared", {.capacity = 8192, .mode = 0644});
  save_cursor(rd.sock, "dur.shared", "victim-name");
  CHECK(as_att(att, {"save-cursor", rd.sock, "dur.shared", "victim-name"}) == "save:denied\n");
  CHECK(as_att(att, {"save-cursor", rd.sock, "dur.shared", "att-name"}) == "save:ok\n");
  // Deleting the attacker's topic is still the attacker's (or root's) business.
  CHECK(as_att(att, {"delete", rd.sock, "dur.shared"}) == "delete:denied\n");
  // Owners survive a restart.
  sub.reset();
  pub.reset();
  REQUIRE(rd.d.stop());
  REQUIRE(rd.start());
  CHECK(as_att(att, {"save-cursor", rd.sock, "dur.shared", "victim-name"}) == "save:denied\n");
  CHECK(as_att(att, {"create", rd.sock, "v.private", "600"}) == "create:denied\n");
  auto info = DaemonClient::connect({rd.sock})->call(
      [](proto::Request::Builder r) { r.setDescribeTopic("dur.shared"); });
  for (auto dc : info.get().getTopic().getDurable())
    CHECK(dc.getOwnerUid() == (std::string(dc.getName().cStr()) == "att-name" ? att.uid : 0u));
  CHECK(as_att(att, {"delete", rd.sock, "sq.orders"}) == "delete:ok\n");
  CHECK(serving(rd.sock));
  bus.remove_topic("v.private");
  bus.remove_topic("dur.shared");
  CHECK(rd.d.stop());
}

namespace {
// One line from a child's stdout (without the newline), "" at EOF or after the watchdog.
std::string read_line(Child& c, int timeout_ms) {
  std::string l;
  for (;;) {
    char ch = c.read_char(timeout_ms);
    if (ch == 0 || ch == '\n') return l;
    l += ch;
  }
}

std::vector<uint8_t> create_frame(uint64_t id, const std::string& name) {
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<proto::Request>();
  r.setVersion(proto::PROTOCOL_VERSION);
  r.setId(id);
  auto s = r.initCreateTopic();
  s.setName(name);
  s.setCapacity(4096);
  s.setSlots(4);
  return control::encode_frame(mb);
}

// Error code of one reply (0: not an error), -1 when none came.
int reply_code(int fd, uint64_t* id = nullptr) {
  std::vector<uint8_t> buf;
  if (control::recv_packet(fd, buf, nullptr, 10000) <= 0) return -1;
  control::Decoded d;
  std::string err;
  if (!control::decode_frame(buf, d, err)) return -1;
  auto r = d.reader->getRoot<proto::Response>();
  if (id) *id = r.getId();
  return r.isError() ? int(r.getError().getCode()) : 0;
}
}  // namespace

TEST_CASE("bounds: a huge topic is refused, and per-uid quotas hold topics, bytes and connections",
          "[security][bounds]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  // The quotas from the TOML config (a flag wins over the file: uid_max_topics).
  spit(rd.s / "shmbusd.toml",
       "uid_max_topics = 50\nuid_max_connections = 8\nuid_max_segment_bytes = " + std::to_string(4u << 20) +
           "\nuid_max_log_bytes = " + std::to_string(200u << 20) + "\n");
  rd.extra = {"--config", rd.s / "shmbusd.toml", "--uid-max-topics", "5", "--uid-max-partitions", "6"};
  if (!rd.start()) {
    INFO(rd.d.stderr_text());
    REQUIRE(rd.d.stderr_text().find("built without toml++") != std::string::npos);
    rd.extra = {"--uid-max-topics",        "5",
                "--uid-max-partitions",    "6",
                "--uid-max-segment-bytes", std::to_string(4u << 20),
                "--uid-max-connections",   "8",
                "--uid-max-log-bytes",     std::to_string(200u << 20)};
    REQUIRE(rd.start());
  }
  // The crash: 1024 partitions x 64 GiB (the daemon mapped them and died of bad_alloc).
  CHECK(as_att(att, {"huge", rd.sock, "huge.t", "1024", std::to_string(1ull << 36)}) == "huge:refused\n");
  CHECK(serving(rd.sock));
  // Partitions (each an open file in the daemon: one uid exhausted its fds with many
  // small many-partition topics): 7 tiny partitions are refused, 6 admitted, and
  // then not one more.
  CHECK(as_att(att, {"huge", rd.sock, "parts.t", "7", "4096"}) == "huge:refused\n");
  CHECK(as_att(att, {"huge", rd.sock, "parts.ok", "6", "4096"}) == "huge:ok\n");
  CHECK(as_att(att, {"huge", rd.sock, "parts.more", "1", "4096"}) == "huge:refused\n");
  CHECK(as_att(att, {"delete", rd.sock, "parts.ok"}) == "delete:ok\n");
  // Segment bytes: 2 x 4 MiB is more than the uid's 4 MiB.
  CHECK(as_att(att, {"huge", rd.sock, "big.t", "2", std::to_string(4u << 20)}) == "huge:refused\n");
  // Spill-log disk: a durable topic needs a retention, and the uid's logs are bounded
  // (partitions x (retention + one 64 MiB segment) against 200 MiB).
  CHECK(as_att(att, {"durable", rd.sock, "dur.unbounded", "0"}) == "durable:refused\n");
  CHECK(as_att(att, {"durable", rd.sock, "dur.huge", std::to_string(1ull << 40)}) == "durable:refused\n");
  CHECK(as_att(att, {"durable", rd.sock, "dur.ok", std::to_string(64u << 20)}) == "durable:ok\n");
  CHECK(as_att(att, {"durable", rd.sock, "dur.second", std::to_string(64u << 20)}) == "durable:refused\n");
  CHECK(as_att(att, {"delete", rd.sock, "dur.ok"}) == "delete:ok\n");
  // Topics: 5, then refused; root is not counted against the attacker's quota.
  CHECK(as_att(att, {"topics", rd.sock, "q", "10"}) == "topics:5\n");
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("root.t", {.capacity = 4096});
  // Connections: 8 held, the 9th refused, and the victim is still served.
  Child hold(att.as({hostile(), "conns", rd.sock, "50"}));
  CHECK(read_line(hold, 20000) == "conns:8");
  CHECK(serving(rd.sock));
  CHECK(bus.partitions("root.t") == 1);
  hold.kill_now();
  for (int i = 0; i < 5; ++i) bus.remove_topic("q." + std::to_string(i));
  bus.remove_topic("root.t");
  std::string log = rd.d.stderr_text();
  CHECK(log.find("max_topic_bytes") == std::string::npos);  // refusals are replies, the log stays quiet
  CHECK(rd.d.stop());
}

TEST_CASE("robustness: a registry entry that cannot be restored is skipped and reported; the rest is served",
          "[security][robustness]") {
  RootDaemon rd;
  REQUIRE(rd.start());
  {
    Bus bus = Bus::connect(rd.sock);
    bus.create_topic("keep.t", {.partitions = 2, .capacity = 8192});
  }
  REQUIRE(rd.d.stop());
  // Add two entries a hostile or older daemon could have left: invalid settings, and
  // 1024 partitions x 64 GiB (its restart used to fail on mmap until someone edited
  // the file).
  const std::string reg = rd.s / "state/registry.bin";
  {
    int fd = open(reg.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    capnp::StreamFdMessageReader rd0(fd);
    auto old = rd0.getRoot<proto::State>().getTopics();
    capnp::MallocMessageBuilder mb;
    auto l = mb.initRoot<proto::State>().initTopics(old.size() + 2);
    for (uint32_t i = 0; i < old.size(); ++i) l.setWithCaveats(i, old[i]);
    auto bad = l[old.size()].initSpec();
    bad.setName("bad.capacity");
    bad.setCapacity(5000);
    auto huge = l[old.size() + 1].initSpec();
    huge.setName("huge.entry");
    huge.setPartitions(1024);
    huge.setCapacity(1ull << 36);
    close(fd);
    fd = open(reg.c_str(), O_WRONLY | O_TRUNC);
    capnp::writeMessageToFd(fd, mb);
    close(fd);
  }
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  CHECK(bus.partitions("keep.t") == 2);
  CHECK(bus.partitions("bad.capacity") == 0);
  CHECK(bus.partitions("huge.entry") == 0);
  std::string log = rd.d.stderr_text();
  INFO(log);
  CHECK(log.find("\"event\":\"topic_restore_failed\",\"topic\":\"bad.capacity\"") != std::string::npos);
  CHECK(log.find("\"event\":\"topic_restore_failed\",\"topic\":\"huge.entry\"") != std::string::npos);
  bus.remove_topic("keep.t");
  CHECK(rd.d.stop());
}

TEST_CASE("scale: list and stat page through 10 000 topics; a flood of requests is back-pressured",
          "[security][scale]") {
  // The daemon holds 3 fds a partition (its data, control and wake memfds) and raises
  // its soft fd limit to the hard one (which it inherits from us): as many topics as
  // fit, up to 10 000 (3000 when not root).
  rlimit rl{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  const int fit = rl.rlim_max == RLIM_INFINITY ? 10000 : int((rl.rlim_max - 1000) / 3);
  const int N = std::min(geteuid() == 0 ? 10000 : 3000, fit);
  INFO(N << " topics (hard fd limit " << rl.rlim_max << ")");
  REQUIRE(N >= 3000);
  RootDaemon rd;
  rd.extra = {"--max-topics", std::to_string(N + 10)};
  REQUIRE(rd.start());
  // Pipelined creates: a window of 64 requests in flight on one connection (more than
  // the daemon reads ahead: it stops reading the socket, nothing is lost).
  int fd = raw_connect(rd.sock);
  REQUIRE(fd >= 0);
  int sent = 0, answered = 0, errors = 0;
  while (answered < N) {
    while (sent < N && sent - answered < 64) {
      char name[32];
      snprintf(name, sizeof name, "scale.%05d", sent);
      REQUIRE(control::send_packet(fd, create_frame(uint64_t(sent) + 1, name)) == 0);
      ++sent;
    }
    uint64_t id = 0;
    int c = reply_code(fd, &id);
    REQUIRE(c != -1);
    CHECK(id == uint64_t(answered) + 1);  // in order, ids kept
    errors += c != 0;
    ++answered;
  }
  CHECK(errors == 0);
  // The old one-shot list is too large now: an error carrying the request's id.
  {
    capnp::MallocMessageBuilder mb;
    auto r = mb.initRoot<proto::Request>();
    r.setVersion(proto::PROTOCOL_VERSION);
    r.setId(4242);
    r.setListTopics();
    REQUIRE(control::send_packet(fd, control::encode_frame(mb)) == 0);
    uint64_t id = 0;
    CHECK(reply_code(fd, &id) == int(proto::ErrorCode::TOO_LARGE));
    CHECK(id == 4242);
  }
  close(fd);
  std::string list = run_capture({SHMBUS_TEST_CLI, "--socket", rd.sock, "--json", "topic", "list"});
  size_t count = 0;
  for (size_t p = list.find("\"name\":\"scale."); p != std::string::npos;
       p = list.find("\"name\":\"scale.", p + 1))
    ++count;
  CHECK(count == size_t(N));
  CHECK(list.find("\"name\":\"scale.00000\"") != std::string::npos);
  char last[32];
  snprintf(last, sizeof last, "scale.%05d", N - 1);
  CHECK(list.find(std::string("\"name\":\"") + last + "\"") != std::string::npos);
  std::string stat = run_capture({SHMBUS_TEST_CLI, "--socket", rd.sock, "stat"});
  count = 0;
  for (size_t p = stat.find("scale."); p != std::string::npos; p = stat.find("scale.", p + 1)) ++count;
  CHECK(count == size_t(N));
  CHECK(serving(rd.sock));
  CHECK(rd.d.stop());
}

TEST_CASE(
    "direct mode: a segment another user planted under our name is never adopted or opened; data and "
    "control have their own modes",
    "[security][direct]") {
  NEED_SECOND_USER(att);
  const std::string prefix = "sht-direct-" + std::to_string(getpid());
  struct Cleanup {
    std::string prefix;
    ~Cleanup() {
      for (auto& f : shm_files(prefix)) unlink(("/dev/shm/" + f).c_str());
    }
  } cleanup{prefix};
  Bus::Options bo;
  bo.shm_prefix = prefix;
  Bus bus = Bus::direct(bo);
  // Names carry the creating uid.
  bus.create_topic("d.modes", {.capacity = 8192, .mode = 0640});
  const std::string me = prefix + ".u" + std::to_string(geteuid());
  struct stat st {};
  REQUIRE(stat(("/dev/shm/" + me + ".d.modes.0.data").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0640);  // the group subscribes: it may not write the ring
  REQUIRE(stat(("/dev/shm/" + me + ".d.modes.0.ctl").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);  // ... but writes its cursor
  // An existing segment of ours that is more open than asked is not adopted.
  bus.create_topic("d.open", {.capacity = 8192, .mode = 0666});
  try {
    bus.create_topic("d.open", {.capacity = 8192, .mode = 0600});
    FAIL("adopted a world-writable segment for a private topic");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::permission_denied);
    CHECK(std::string(e.what()).find("more open than the requested 0600") != std::string::npos);
  }
  // The squat: the attacker creates a valid, world-open topic and moves it under the
  // victim's names (anyone may name anything in /dev/shm).
  REQUIRE(as_att(att, {"direct", prefix, "d.squat", "666"}) == "direct:ok\n");
  const std::string theirs = prefix + ".u" + std::to_string(att.uid);
  for (const char* ext : {".0.data", ".0.ctl"})
    REQUIRE(rename(("/dev/shm/" + theirs + ".d.squat" + ext).c_str(),
                   ("/dev/shm/" + me + ".d.squat" + ext).c_str()) == 0);
  for (auto* op : {"create", "publish", "subscribe"}) {
    INFO(op);
    try {
      if (std::string(op) == "create")
        bus.create_topic("d.squat", {.capacity = 8192, .mode = 0600});
      else if (std::string(op) == "publish")
        (void)bus.publisher("d.squat");
      else
        (void)bus.subscriber("d.squat");
      FAIL("used the attacker's segment");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::permission_denied);
      CHECK(std::string(e.what()).find("is owned by uid " + std::to_string(att.uid)) != std::string::npos);
    }
  }
  bus.remove_topic("d.modes");
  bus.remove_topic("d.open");
}

TEST_CASE("robustness: out of fds at accept, connections are refused without a busy loop or a log flood",
          "[security][robustness]") {
  if (access("/usr/bin/prlimit", X_OK) != 0) {
    WARN("skipped: no prlimit");
    return;
  }
  RootDaemon rd;
  rd.d.wrapper = {"/usr/bin/prlimit", "--nofile=40:40", "--"};
  REQUIRE(rd.start());
  // Far more connections than the daemon has fds; each says hello.
  std::vector<int> fds;
  for (int i = 0; i < 120; ++i) {
    int fd = raw_connect(rd.sock);
    if (fd >= 0) fds.push_back(fd);
  }
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<proto::Request>();
  r.setVersion(proto::PROTOCOL_VERSION);
  r.setId(1);
  r.setHello();
  const auto hello = control::encode_frame(mb);
  int served = 0, refused = 0;
  for (int fd : fds) {
    if (control::send_packet(fd, hello) == 0 && reply_code(fd) == 0)
      ++served;
    else
      ++refused;
  }
  INFO("served " << served << ", refused " << refused);
  CHECK(served > 0);
  CHECK(refused > 0);
  for (int fd : fds) close(fd);
  // Fds came back: the daemon serves again, once it has seen the hang-ups (a connect
  // that it handles before them is still refused; seen under load on 2 cores).
  const uint64_t until = now_ns() + 5'000'000'000ull;
  bool back = serving(rd.sock);
  while (!back && now_ns() < until) {
    poll(nullptr, 0, 50);
    back = serving(rd.sock);
  }
  CHECK(back);
  CHECK(rd.d.stop());
  std::string log = rd.d.stderr_text();
  size_t lines = 0;
  for (size_t p = log.find("\"accept_failed\""); p != std::string::npos;
       p = log.find("\"accept_failed\"", p + 1))
    ++lines;
  INFO(log.substr(0, 2000));
  CHECK(lines >= 1);
  CHECK(lines <= 40);  // at most 10 a second (plus the suppressed counts)
}

TEST_CASE("soak: a flood of requests from another user leaves an honest client's control calls fast",
          "[security][soak]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("soak.t", {.capacity = 8192, .mode = 0644});
  auto c = DaemonClient::connect({rd.sock});
  auto p99 = [&] {
    std::vector<uint64_t> ns;
    for (int i = 0; i < 400; ++i) {
      uint64_t t0 = now_ns();
      c->call([](proto::Request::Builder r) { r.setDescribeTopic("soak.t"); });
      ns.push_back(now_ns() - t0);
    }
    std::sort(ns.begin(), ns.end());
    return ns[ns.size() * 99 / 100];
  };
  auto rss = [&] {
    return c->call([](proto::Request::Builder r) { r.setHealth(); }).get().getHealth().getRssBytes();
  };
  const uint64_t idle = p99(), rss0 = rss();
  Child flood(att.as({hostile(), "flood", rd.sock, "soak.t"}));  // killed when it goes out of scope
  REQUIRE(read_line(flood, 20000) == "flood:flooding");
  const uint64_t busy = p99(), rss1 = rss();
  flood.kill_now();
  std::printf(
      "control-call p99: idle %.3f ms, under a flood of saveCursor from 8 connections %.3f ms; RSS %.1f -> "
      "%.1f MiB\n",
      idle / 1e6, busy / 1e6, rss0 / 1048576.0, rss1 / 1048576.0);
  // 2x the idle p99, plus 100 ms for a loaded two-core machine shared with the
  // flooder (CPU, not queueing: the daemon reads at most max_inflight_per_client
  // requests of each connection ahead, and cursor saves never fsync one by one; an
  // older daemon let honest calls time out after 5 s here).
  CHECK(busy <= 2 * idle + 100'000'000);
  CHECK(rss1 <= rss0 + (64u << 20));
  CHECK(serving(rd.sock));
  bus.remove_topic("soak.t");
  CHECK(rd.d.stop());
}

// Issue 9: the control-protocol fuzzer extended to sequences of requests from two
// uids. Two fuzzers run as the second user at once (seeded; every request kind, on
// names of their own, on the victim's private topics and on odd names, with malformed
// packets on side connections) while root works its private topics. Nothing of the
// victim's may be touched or shown, no well-formed request may cost a connection, the
// daemon keeps serving, and it restarts with the victim's topics as they were.
TEST_CASE("fuzz: request sequences from two uids at once leave the victim's topics private and intact",
          "[security][fuzz]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  for (int k = 0; k < 4; ++k)
    bus.create_topic("vfz." + std::to_string(k), {.partitions = 2, .capacity = 8192, .mode = 0600});
  std::optional<Subscriber> sub(bus.subscriber("vfz.0"));
  std::optional<Publisher> pub(bus.publisher("vfz.0"));
  const char* seeds_env = getenv("SHMBUS_FUZZ_SEED");
  const uint64_t seed =
      seeds_env && *seeds_env ? strtoull(seeds_env, nullptr, 10) : uint64_t(now_ns() % 100000);
  INFO("seeds " << seed << " and " << seed + 1 << " (SHMBUS_FUZZ_SEED replays them)");
  const std::string n = "400";
  Child a(att.as({hostile(), "fuzz", rd.sock, std::to_string(seed), n, "vfz."}));
  Child b(att.as({hostile(), "fuzz", rd.sock, std::to_string(seed + 1), n, "vfz."}));
  // Meanwhile the victim keeps using its topics: every message it publishes arrives.
  uint64_t sent = 0, got = 0;
  const uint64_t deadline = now_ns() + 60'000'000'000ull;
  bool a_done = false, b_done = false;
  std::string out_a, out_b;
  while (!(a_done && b_done) && now_ns() < deadline) {
    const std::string m = "victim-" + std::to_string(sent);
    REQUIRE(pub->offer(m.data(), uint32_t(m.size())) == Status::ok);
    ++sent;
    View v;
    while (sub->poll(v) == Status::ok) {
      CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) ==
            "victim-" + std::to_string(got));
      ++got;
      sub->release(v);
    }
    auto info = DaemonClient::connect({rd.sock})->call(
        [](proto::Request::Builder r) { r.setDescribeTopic("vfz.1"); });
    REQUIRE(info.get().getTopic().getOwnerUid() == 0u);
    if (!a_done && a.wait(0) != -1) a_done = true;
    if (!b_done && b.wait(0) != -1) b_done = true;
  }
  REQUIRE(a_done);
  REQUIRE(b_done);
  out_a = a.read_all(1000);
  out_b = b.read_all(1000);
  INFO("fuzzer A: " << out_a << "fuzzer B: " << out_b);
  CHECK(out_a.find("fuzz:sent=" + n) == 0);
  CHECK(out_b.find("fuzz:sent=" + n) == 0);
  CHECK(out_a.find("drops=0 breach=none") != std::string::npos);
  CHECK(out_b.find("drops=0 breach=none") != std::string::npos);
  View v;
  while (sub->poll(v) == Status::ok) {
    CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "victim-" + std::to_string(got));
    ++got;
    sub->release(v);
  }
  CHECK(got == sent);
  CHECK(serving(rd.sock));
  // The registry the fuzzers wrote into restores; the victim's topics are as made.
  sub.reset();
  pub.reset();
  REQUIRE(rd.d.stop());
  REQUIRE(rd.start());
  CHECK(serving(rd.sock));
  for (int k = 0; k < 4; ++k) {
    auto info = DaemonClient::connect({rd.sock})->call(
        [&](proto::Request::Builder r) { r.setDescribeTopic("vfz." + std::to_string(k)); });
    auto t = info.get().getTopic();
    CHECK(t.getOwnerUid() == 0u);
    CHECK(t.getSpec().getPartitions() == 2u);
    CHECK(t.getSpec().getCapacity() == 8192u);
  }
  CHECK(rd.d.stop());
}

// ---------------------------------------------------------------------------
// Isolation in shared memory (layout 3, issues 8 and 9): a subscriber writes its own
// cursor page and its data-waiter bit, nothing else; the daemon reclaims only from
// its own grant records.

namespace {
// The line a child prints first (without the newline), "" on EOF or after 10 s.
std::string first_line(Child& c) {
  std::string l;
  for (;;) {
    char ch = c.read_char(10000);
    if (ch == 0 || ch == '\n') return l;
    l += ch;
  }
}
}  // namespace

TEST_CASE("isolation: another uid's subscriber cannot write the control segment nor open any cursor page",
          "[security][isolation]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.ctl", {.capacity = 8192, .mode = 0644});
  Subscriber victim = bus.subscriber("iso.ctl");  // a grant, so a page exists
  // Cursor pages are sealed memfds: no name in /dev/shm to open at all.
  CHECK(as_att(att, {"ctl", rd.sock, "iso.ctl"}) == "ctl:ro\npages:none\n");
  Publisher pub = bus.publisher("iso.ctl");
  REQUIRE(pub.offer("still", 5) == Status::ok);
  View v;
  REQUIRE(victim.poll_wait(v, 1'000'000'000) == Status::ok);
  CHECK(v.size() == 5);
  victim.release(v);
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "isolation: a forged cursor page never makes another subscriber lose or misread a frame; "
    "an untethered forger holds nobody back",
    "[security][isolation]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.forge", {.capacity = 8192, .mode = 0644});
  // The forger, tethered: 0, far beyond the tail, random, flipping.
  Child forger(att.as({hostile(), "forge", rd.sock, "iso.forge", "1"}));
  REQUIRE(first_line(forger) == "forge:forging");
  std::atomic<bool> done{false};
  std::atomic<uint64_t> got{0}, bad{0};
  Subscriber honest = bus.subscriber("iso.forge");
  std::thread reader([&] {
    uint64_t expect = 0;  // message ids of the messages published ok, in order
    View v;
    for (;;) {
      Status s = honest.poll_wait(v, 20'000'000);
      if (s == Status::timed_out) {
        if (done.load()) break;
        continue;
      }
      if (s != Status::ok) {
        ++bad;
        break;
      }
      uint64_t body[8];
      std::memcpy(body, v.data(), std::min<size_t>(v.size(), sizeof body));
      bool ok = v.size() == sizeof body && v.message_id() > expect;
      for (uint64_t w : body) ok = ok && w == v.message_id() * 0x9e3779b97f4a7c15ull;
      if (!ok) ++bad;
      expect = v.message_id();
      ++got;
      honest.release(v);
    }
  });
  Publisher pub = bus.publisher("iso.forge", {.block_timeout_ns = 20'000'000});
  uint64_t published = 0, held = 0;
  for (uint64_t id = 1; id <= 3000; ++id) {
    uint64_t body[8];
    for (uint64_t& w : body) w = id * 0x9e3779b97f4a7c15ull;
    Status s = pub.offer(body, sizeof body, id);
    if (s == Status::ok)
      ++published;
    else if (s == Status::back_pressured)
      ++held;  // the forger's power: hold us back
    else
      FAIL("offer: " << to_string(s));
  }
  done = true;
  reader.join();
  INFO("published " << published << ", held back " << held << ", received " << got.load());
  CHECK(bad.load() == 0);
  CHECK(got.load() == published);  // every frame the honest reader was owed, intact and in order
  CHECK(published > 0);
  forger.kill_now();
  honest.close();
  // Untethered, the forger holds nobody back: three laps with no reader at all.
  Child loose(att.as({hostile(), "forge", rd.sock, "iso.forge", "0"}));
  REQUIRE(first_line(loose) == "forge:forging");
  Publisher pub2 = std::move(pub);
  uint64_t before = pub2.stats().back_pressured;
  for (int i = 0; i < 400; ++i) REQUIRE(pub2.offer("0123456789abcdef0123456789abcdef", 32) == Status::ok);
  CHECK(pub2.stats().back_pressured == before);
  loose.kill_now();
  CHECK(serving(rd.sock));
}

TEST_CASE("isolation: a subscriber in another pid namespace that is SIGKILLed is reclaimed; the topic flows",
          "[security][isolation][pidns]") {
  if (geteuid() != 0 || access("/usr/bin/unshare", X_OK) != 0) {
    WARN("skipped: needs root and unshare");
    return;
  }
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.pidns", {.capacity = 8192});
  Child ns({"/usr/bin/unshare", "-pf", hostile(), "sub", rd.sock, "iso.pidns"});
  REQUIRE(first_line(ns) == "sub:joined");
  // It is pid 1 in its namespace; the slot holds the pid the daemon sees.
  auto st = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("iso.pidns"); });
  auto subs = st.get().getStats()[0].getPartitions()[0].getSubscribers();
  REQUIRE(subs.size() == 1);
  const pid_t pid = pid_t(subs[0].getPid());
  CHECK(pid != 1);
  CHECK(pid != ns.pid());
  REQUIRE(shm::process_alive(uint32_t(pid)));
  // It never reads: the producer fills the ring and is held back.
  Publisher pub = bus.publisher("iso.pidns", {.block_timeout_ns = 10'000'000'000});
  int n = 0;
  for (ClaimView c; pub.try_claim(16, c) == Status::ok; ++n) REQUIRE(pub.commit(16) == Status::ok);
  REQUIRE(n > 0);
  const uint64_t t0 = now_ns();
  REQUIRE(kill(pid, SIGKILL) == 0);
  // The daemon frees its slot (the pidfd of the pid it recorded) and wakes us.
  CHECK(pub.offer("0123456789abcdef", 16) == Status::ok);
  INFO("reclaimed and woken after " << (now_ns() - t0) / 1000 << " us");
  CHECK(now_ns() - t0 < 5'000'000'000ull);
  for (int i = 0; i < 3 * n; ++i) REQUIRE(pub.offer("0123456789abcdef", 16) == Status::ok);
  ns.wait(10000);
  CHECK(serving(rd.sock));
}

TEST_CASE("isolation: another uid cannot resume a durable name it does not own, parked or not",
          "[security][isolation][ownership]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.dur", {.capacity = 8192, .mode = 0644});
  Publisher pub = bus.publisher("iso.dur");
  {
    Subscriber s = bus.subscriber("iso.dur", {.name = "victim-dur"});
    REQUIRE(pub.offer("one", 3) == Status::ok);
  }  // parked under its name, holding its position
  CHECK(as_att(att, {"resume", rd.sock, "iso.dur", "victim-dur"}) == "resume:denied\n");
  CHECK(as_att(att, {"resume", rd.sock, "iso.dur", "att-dur"}) == "resume:ok\n");
  // The owner resumes it, exactly where it left.
  Subscriber s = bus.subscriber("iso.dur", {.name = "victim-dur"});
  CHECK(s.resumed());
  View v;
  REQUIRE(s.poll_wait(v, 1'000'000'000) == Status::ok);
  CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "one");
  s.release(v);
  CHECK(serving(rd.sock));
}

TEST_CASE("isolation: a subscriber that truncates its cursor page and the wake segment crashes nobody",
          "[security][isolation][truncate]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.trunc", {.capacity = 8192, .mode = 0644});
  Subscriber victim = bus.subscriber("iso.trunc");
  Child cutter(att.as({hostile(), "truncate", rd.sock, "iso.trunc"}));
  CHECK(first_line(cutter) == "truncate:page=sealed wake=sealed");
  // A producer in another process scans the cutter's (tethered) page and reads the
  // wake segment at every commit; the victim sleeps on the wake segment meanwhile.
  std::thread pub([&] {
    CHECK(run_capture({hostile(), "publish", rd.sock, "iso.trunc", "after"}) == "publish:ok\n");
  });
  View v;
  REQUIRE(victim.poll_wait(v, 5'000'000'000) == Status::ok);
  CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "after");
  victim.release(v);
  pub.join();
  // The cutter dies: the daemon frees its slot (and wakes its page's sleepers).
  cutter.kill_now();
  auto subscribers = [&] {
    try {
      auto st = DaemonClient::connect({rd.sock, 2000, 0})->call([](proto::Request::Builder r) {
        r.setStat("iso.trunc");
      });
      return int(st.get().getStats()[0].getPartitions()[0].getSubscribers().size());
    } catch (...) {
      return -1;  // the daemon is gone
    }
  };
  const uint64_t until = now_ns() + 5'000'000'000ull;
  while (subscribers() == 2 && now_ns() < until) std::this_thread::yield();
  CHECK(subscribers() == 1);
  CHECK(serving(rd.sock));
  victim.close();
  Publisher p2 = bus.publisher("iso.trunc");
  for (int i = 0; i < 600; ++i) REQUIRE(p2.offer("0123456789abcdef0123456789abcdef", 32) == Status::ok);
  CHECK(serving(rd.sock));
}

// Issue 9, item 2: a publisher's data fd is O_RDWR. A named tmpfs file could be
// ftruncate()d through it under the root daemon's and every subscriber's mapping: the
// next access SIGBUSes them all. The data segment is a sealed memfd: the size is fixed.
TEST_CASE("isolation: a publisher that truncates the data segment crashes nobody",
          "[security][isolation][truncate]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.dtrunc", {.capacity = 65536, .mode = 0666});
  Subscriber victim = bus.subscriber("iso.dtrunc");
  Publisher pub = bus.publisher("iso.dtrunc");
  REQUIRE(pub.offer("before", 6) == Status::ok);
  Child cutter(att.as({hostile(), "truncate-data", rd.sock, "iso.dtrunc"}));
  CHECK(first_line(cutter) == "truncate-data:data=sealed reopen=denied");
  // Every message, old and new, reaches the victim; the daemon reads the ring's header
  // (stat) and serves.
  const int n = 200;
  for (int i = 0; i < n; ++i) {
    const std::string m = "msg-" + std::to_string(i);
    REQUIRE(pub.offer(m.data(), m.size()) == Status::ok);
  }
  for (int i = -1; i < n; ++i) {
    View v;
    REQUIRE(victim.poll_wait(v, 5'000'000'000) == Status::ok);
    CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) ==
          (i < 0 ? std::string("before") : "msg-" + std::to_string(i)));
    victim.release(v);
  }
  CHECK(run_capture({SHMBUS_TEST_CLI, "--socket", rd.sock, "stat", "iso.dtrunc"}).find("iso.dtrunc") !=
        std::string::npos);
  cutter.kill_now();
  CHECK(serving(rd.sock));
  victim.close();  // before the daemon stops (a client would wait to reconnect)
  pub.close();
  CHECK(rd.d.stop());
}

// Issue 9, item 9: daemon-mode segments have no name in /dev/shm, so names another
// user creates there first (the old ones were predictable) stop nothing.
TEST_CASE("isolation: names another user pre-creates in /dev/shm do not stop a create",
          "[security][isolation][names]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  for (const char* ext : {".0.data", ".0.ctl", ".0.wake"})
    REQUIRE(run_capture(att.as({"/usr/bin/touch", "/dev/shm/" + rd.d.prefix + ".iso.squat" + ext})).empty());
  REQUIRE(shm_files(rd.d.prefix).size() == 3);
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.squat", {.capacity = 8192});
  Subscriber sub = bus.subscriber("iso.squat");
  Publisher pub = bus.publisher("iso.squat");
  REQUIRE(pub.offer("mine", 4) == Status::ok);
  View v;
  REQUIRE(sub.poll_wait(v, 5'000'000'000) == Status::ok);
  CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "mine");
  sub.release(v);
  // ... and nothing of the topic is listed there.
  for (auto& e : std::filesystem::directory_iterator("/dev/shm"))
    if (e.path().filename().string().find("iso.squat") != std::string::npos)
      CHECK(e.path().filename().string().rfind(rd.d.prefix + ".iso.squat.0.", 0) == 0);  // the squats only
  CHECK(serving(rd.sock));
}

TEST_CASE("isolation: a connection cannot leave a grant it does not hold, even from the grantee's pid",
          "[security][isolation][leave]") {
  if (geteuid() != 0) {
    WARN("skipped: needs root (clone3 set_tid reuses a pid exactly)");
    return;
  }
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.leave", {.capacity = 8192, .mode = 0644});
  Subscriber victim = bus.subscriber("iso.leave");
  // Another process's connection, same uid or another: the victim's slot and
  // generation are public (the control segment), the grant is not theirs.
  {
    auto st =
        DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("iso.leave"); });
    const uint32_t slot = st.get().getStats()[0].getPartitions()[0].getSubscribers()[0].getSlot();
    const std::string gen = std::to_string(shm::aref(victim.refs().slots[slot].generation).load());
    CHECK(run_capture({hostile(), "leave", rd.sock, "iso.leave", std::to_string(slot), gen}) ==
          "leave:notfound\n");
    SecondUser att = second_user();
    if (att.skip.empty())
      CHECK(as_att(att, {"leave", rd.sock, "iso.leave", std::to_string(slot), gen}) == "leave:notfound\n");
  }
  // The pid the daemon recorded for a connection, given to a victim process later.
  const std::string out = run_capture({hostile(), "leave-reuse", rd.sock, "iso.leave"});
  if (out == "leave-reuse:noreuse\n") {
    WARN("skipped: clone3 set_tid unavailable");
  } else {
    CHECK(out == "leave:notfound victim:kept\n");
  }
  Publisher pub = bus.publisher("iso.leave");
  REQUIRE(pub.offer("kept", 4) == Status::ok);
  View v;
  REQUIRE(victim.poll_wait(v, 1'000'000'000) == Status::ok);
  victim.release(v);
  CHECK(serving(rd.sock));
}

TEST_CASE("quotas: another uid cannot take every subscriber slot of a topic; the owner still joins",
          "[security][isolation][grants]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  rd.extra = {"--uid-max-grants", "6"};
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.g1", {.capacity = 8192, .slots = 8, .mode = 0644});
  bus.create_topic("iso.g2", {.capacity = 8192, .slots = 8, .mode = 0644});
  // Half the slots of a partition by default...
  Child a1(att.as({hostile(), "grants", rd.sock, "iso.g1"}));
  CHECK(first_line(a1) == "grants:4 refused:partition-quota");
  // ... and uid_max_grants in all.
  Child a2(att.as({hostile(), "grants", rd.sock, "iso.g2"}));
  CHECK(first_line(a2) == "grants:2 refused:uid-quota");
  std::vector<Subscriber> mine;
  for (int i = 0; i < 4; ++i) REQUIRE_NOTHROW(mine.push_back(bus.subscriber("iso.g1", {.tethered = false})));
  a1.kill_now();
  a2.kill_now();
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "ownership: a durable name's owner is on disk before its join is answered; a daemon SIGKILLed "
    "right after restarts refusing another uid's resume",
    "[security][isolation][ownership][durable-record]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.rec", {.capacity = 8192, .mode = 0644});
  Child owner({hostile(), "named", rd.sock, "iso.rec", "victim-rec"});
  REQUIRE(first_line(owner) == "named:joined");
  rd.d.proc.kill_now();  // SIGKILL right after the answer
  owner.kill_now();
  REQUIRE(rd.start());
  CHECK(as_att(att, {"resume", rd.sock, "iso.rec", "victim-rec"}) == "resume:denied\n");
  CHECK(serving(rd.sock));
}

TEST_CASE("a join resent (new connection, or a restarted daemon) never leaves a second, orphaned slot",
          "[security][isolation][token]") {
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.tok", {.capacity = 8192});
  auto join = [&](uint64_t token, bool keep, std::vector<DaemonClient::Reply>& held) {
    auto rep = DaemonClient::connect({rd.sock})->call([&](proto::Request::Builder r) {
      auto j = r.initJoin();
      j.setTopic("iso.tok");
      j.setPartition(0);
      j.setToken(token);
    });
    const uint32_t slot = rep.get().getJoin().getSlot(), gen = rep.get().getJoin().getGeneration();
    if (keep) held.push_back(std::move(rep));
    return std::make_pair(slot, gen);
  };
  auto subscribers = [&] {
    auto st = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("iso.tok"); });
    return st.get().getStats()[0].getPartitions()[0].getSubscribers().size();
  };
  std::vector<DaemonClient::Reply> held;
  // Resent over a new connection (the answer to the first was lost with its connection).
  auto g1 = join(0x5eed0001, true, held);
  auto g2 = join(0x5eed0001, true, held);
  CHECK(g1 == g2);
  CHECK(subscribers() == 1);
  // Resent to a restarted daemon, the first answer lost (its fd never kept): the
  // restarted daemon cannot find the page in the client, frees that grant, and the
  // resend makes the only one.
  join(0x5eed0002, false, held);
  CHECK(subscribers() == 2);
  rd.d.proc.kill_now();
  REQUIRE(rd.start());
  join(0x5eed0002, true, held);
  CHECK(subscribers() == 2);
  // The kept grant survived the restart (its page taken back from us) and a resend
  // of its join still gets it.
  auto g3 = join(0x5eed0001, true, held);
  CHECK(g3 == g1);
  CHECK(subscribers() == 2);
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "a producer request resent (new connection, or a restarted daemon) gets the same grant, never a second "
    "entry; a single-producer topic is not wedged for its process",
    "[security][isolation][token][producer-token]") {
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.ptok", {.capacity = 8192, .multi_producer = true});
  bus.create_topic("iso.ptok1", {.capacity = 8192});
  // Each request on its own connection, its answer dropped with it: what a client
  // whose answer was lost resends.
  auto producer = [&](const std::string& topic, uint64_t token, bool release = false) {
    auto rep = DaemonClient::connect({rd.sock})->call([&](proto::Request::Builder r) {
      auto q = r.initProducer();
      q.setTopic(topic);
      q.setPartition(0);
      q.setToken(token);
      q.setRelease(release);
    });
    if (release) return std::make_pair(0u, 0u);
    return std::make_pair(rep.get().getProducer().getSlot(), rep.get().getProducer().getToken());
  };
  auto stat = [&](const std::string& topic) {
    auto st = DaemonClient::connect({rd.sock})->call([&](proto::Request::Builder r) { r.setStat(topic); });
    auto p = st.get().getStats()[0].getPartitions()[0];
    return std::make_pair(p.getLiveProducers(), p.getProducerPid());
  };
  // Multi-producer: the resend gets the same entry and owner token.
  auto g1 = producer("iso.ptok", 0x9e0001);
  CHECK(producer("iso.ptok", 0x9e0001) == g1);
  CHECK(stat("iso.ptok").first == 1);
  // Single-producer: the resend gets the role back (it was "already has a publisher
  // in this process", a wedge until the process exits).
  auto s1 = producer("iso.ptok1", 0x9e0003);
  CHECK(producer("iso.ptok1", 0x9e0003) == s1);
  CHECK(stat("iso.ptok1").second == uint32_t(getpid()));
  // Resent to a restarted daemon (SIGKILLed after answering): the grants and their
  // tokens are in the control segment.
  rd.d.proc.kill_now();
  REQUIRE(rd.start());
  CHECK(producer("iso.ptok", 0x9e0001) == g1);
  CHECK(producer("iso.ptok1", 0x9e0003) == s1);
  CHECK(stat("iso.ptok").first == 1);
  // Another token is another publisher: a second entry, and a refusal on the role.
  auto g2 = producer("iso.ptok", 0x9e0002);
  CHECK(g2.first != g1.first);
  CHECK(stat("iso.ptok").first == 2);
  try {
    producer("iso.ptok1", 0x9e0004);
    FAIL("a second single-producer grant to one process");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::already_exists);
    CHECK_THAT(e.what(), Catch::Contains("already has a publisher in this process"));
  }
  // Released by token, the entries and the role are free again; this process
  // publishes on the single-producer topic through the library.
  producer("iso.ptok", 0x9e0001, true);
  producer("iso.ptok", 0x9e0002, true);
  producer("iso.ptok1", 0x9e0003, true);
  CHECK(stat("iso.ptok").first == 0);
  CHECK(stat("iso.ptok1").second == 0);
  Subscriber sub = bus.subscriber("iso.ptok1");
  Publisher pub = bus.publisher("iso.ptok1");
  REQUIRE(pub.offer("one", 3) == Status::ok);
  View v;
  REQUIRE(sub.poll_wait(v, 2'000'000'000) == Status::ok);
  CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "one");
  sub.release(v);
  // Closing gives the role back to the daemon (a release): a new publisher of this
  // process gets it.
  pub.close();
  CHECK(stat("iso.ptok1").second == 0);
  REQUIRE_NOTHROW(bus.publisher("iso.ptok1"));
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "a daemon killed after recording a producer grant, before answering: the publisher's resend gets that "
    "grant from the restarted daemon",
    "[security][isolation][token][producer-token]") {
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.pdie", {.capacity = 8192, .multi_producer = true});
  bus.create_topic("iso.pdie1", {.capacity = 8192});
  auto stat = [&](const std::string& topic) {
    auto st = DaemonClient::connect({rd.sock})->call([&](proto::Request::Builder r) { r.setStat(topic); });
    auto p = st.get().getStats()[0].getPartitions()[0];
    return std::make_pair(p.getLiveProducers(), p.getProducerPid());
  };
  Subscriber sub = bus.subscriber("iso.pdie1");
  for (const std::string topic : {"iso.pdie", "iso.pdie1"}) {
    REQUIRE(rd.d.stop());
    REQUIRE(rd.d.start({"--socket", rd.sock, "--state-dir", rd.s / "state"}, nullptr,
                       {"SHMBUS_TEST_EXIT_AFTER_PRODUCER_GRANT=1"}));
    std::optional<Publisher> pub;
    std::string err;
    std::thread opener([&] {
      try {
        pub.emplace(bus.publisher(topic));
      } catch (const Error& e) {
        err = e.what();
      }
    });
    // The grant is recorded, the answer never sent: the library resends it.
    const int st = rd.d.proc.wait(10000);
    CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 9));
    REQUIRE(rd.start());
    opener.join();
    INFO(topic << ": " << err);
    REQUIRE(pub.has_value());
    if (topic == "iso.pdie") {
      CHECK(stat(topic).first == 1);  // one entry, not two
    } else {
      CHECK(stat(topic).second == uint32_t(getpid()));  // not "already has a publisher in this process"
      REQUIRE(pub->offer("after", 5) == Status::ok);
      View v;
      REQUIRE(sub.poll_wait(v, 2'000'000'000) == Status::ok);
      CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "after");
      sub.release(v);
    }
  }
  CHECK(serving(rd.sock));
}

TEST_CASE("quotas: another uid cannot take every producer entry of a topic; the owner still publishes",
          "[security][isolation][grants][producer-quota]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  rd.extra = {"--uid-max-producer-grants", "20"};
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.p1", {.capacity = 8192, .multi_producer = true, .mode = 0666});
  bus.create_topic("iso.p2", {.capacity = 8192, .multi_producer = true, .mode = 0666});
  // Half the partition's 32 entries by default (it took all 32 before)...
  Child a1(att.as({hostile(), "publishers", rd.sock, "iso.p1"}));
  CHECK(first_line(a1) == "pubs:16 refused:partition-quota");
  // ... and uid_max_producer_grants in all.
  Child a2(att.as({hostile(), "publishers", rd.sock, "iso.p2"}));
  CHECK(first_line(a2) == "pubs:4 refused:uid-quota");
  // The owner (exempt) still opens publishers, and they publish.
  Subscriber sub = bus.subscriber("iso.p1");
  std::vector<Publisher> mine;
  for (int i = 0; i < 16; ++i) REQUIRE_NOTHROW(mine.push_back(bus.publisher("iso.p1")));
  REQUIRE(mine.back().offer("owner", 5) == Status::ok);
  View v;
  REQUIRE(sub.poll_wait(v, 2'000'000'000) == Status::ok);
  sub.release(v);
  // A grant ends with its grantee: the uid's count comes back down.
  a1.kill_now();
  a2.kill_now();
  Child a3(att.as({hostile(), "publishers", rd.sock, "iso.p2"}));
  CHECK(first_line(a3) == "pubs:16 refused:partition-quota");
  a3.kill_now();
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "quotas: on a durable topic with 2 slots (one the archiver's) another uid cannot take the client slot; "
    "the owner joins",
    "[security][isolation][grants][durable-slots]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.d2", {.capacity = 8192, .slots = 2, .mode = 0644, .durable = true});
  bus.create_topic("iso.d4", {.capacity = 8192, .slots = 4, .mode = 0644, .durable = true});
  // One slot is left for clients: never another uid's (it took it before, half of
  // 2 being 1, and the owner was refused: every slot taken).
  Child a1(att.as({hostile(), "grants", rd.sock, "iso.d2"}));
  CHECK(first_line(a1) == "grants:0 refused:partition-quota");
  // 3 left for clients: half of them, rounded down.
  Child a2(att.as({hostile(), "grants", rd.sock, "iso.d4"}));
  CHECK(first_line(a2) == "grants:1 refused:partition-quota");
  REQUIRE_NOTHROW(bus.subscriber("iso.d2", {.tethered = false}));
  std::vector<Subscriber> mine;
  for (int i = 0; i < 2; ++i) REQUIRE_NOTHROW(mine.push_back(bus.subscriber("iso.d4", {.tethered = false})));
  a1.kill_now();
  a2.kill_now();
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "quotas: another uid adds at most uid_max_schema_versions to a topic it does not own, and stores at most "
    "uid_max_schema_bytes in all",
    "[security][isolation][schema-quota]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  // From the TOML config (the flags when built without toml++).
  spit(rd.s / "shmbusd.toml", "uid_max_schema_bytes = 26000\nuid_max_producer_grants = 4\n");
  rd.extra = {"--config", rd.s / "shmbusd.toml"};
  if (!rd.start()) {
    REQUIRE(rd.d.stderr_text().find("built without toml++") != std::string::npos);
    rd.extra = {"--uid-max-schema-bytes", "26000", "--uid-max-producer-grants", "4"};
    REQUIRE(rd.start());
  }
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.sch", {.capacity = 8192, .mode = 0666});
  // Small versions: the per-topic count (default 8) binds first; it took all 64 of
  // the topic's versions before, and the owner's next version was refused.
  CHECK(as_att(att, {"schemas", rd.sock, "iso.sch", "70", "0"}) == "schemas:8 refused:version-quota\n");
  // The owner still adds versions to its topic.
  CHECK(run_capture({hostile(), "schemas", rd.sock, "iso.sch", "10", "0"}) == "schemas:2 none\n");
  {
    auto c = DaemonClient::connect({rd.sock});
    auto hist = c->call([](proto::Request::Builder r) { r.initSchemaHistory().setTopic("iso.sch"); });
    CHECK(hist.get().getSchemaHistory().getVersions().size() == 10);
  }
  // ~4 KiB versions in a topic of its own (no per-topic count): the bytes bound.
  CHECK(as_att(att, {"schemas", rd.sock, "att.sch", "64", "4000", "own"}) ==
        "schemas:4 refused:bytes-quota\n");
  // Counted from what is stored on disk after a restart too.
  rd.d.proc.kill_now();
  REQUIRE(rd.start());
  CHECK(as_att(att, {"schemas", rd.sock, "att.sch2", "64", "4000", "own"}) ==
        "schemas:0 refused:bytes-quota\n");
  // (uid_max_producer_grants comes from the same file.)
  bus.create_topic("iso.schm", {.capacity = 8192, .multi_producer = true, .mode = 0666});
  Child a(att.as({hostile(), "publishers", rd.sock, "iso.schm"}));
  CHECK(first_line(a) == "pubs:4 refused:uid-quota");
  a.kill_now();
  CHECK(serving(rd.sock));
}

TEST_CASE("quotas: parked durable slots count against uid_max_partition_grants; the owner still joins",
          "[security][isolation][grants][parked]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.park", {.capacity = 8192, .slots = 8, .mode = 0644});
  // Join under a new name, park it (leave with park), again and again: each parked
  // slot is still the uid's, so half the slots (the default quota) is all it gets,
  // and it can still resume one of its own parked names.
  CHECK(as_att(att, {"park", rd.sock, "iso.park"}) == "parked:4 refused:partition-quota resume:ok\n");
  std::vector<Subscriber> mine;
  for (int i = 0; i < 4; ++i)
    REQUIRE_NOTHROW(mine.push_back(bus.subscriber("iso.park", {.tethered = false})));
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "quotas: another uid cannot fill a topic's durable names (uid_max_durable_names); the owner's new "
    "durable subscriber still joins",
    "[security][isolation][durable-quota]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());  // the default uid_max_durable_names: 256 of a topic's 4096
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.names", {.capacity = 8192, .mode = 0644});
  // saveCursor under new names (each a record owned by the uid, never expiring):
  // the uid's cap, not the topic's 4096.
  CHECK(as_att(att, {"save-many", rd.sock, "iso.names", "5000"}) == "saves:256 refused:durable-quota\n");
  // A named join makes a record too: refused the same way, naming the limit.
  CHECK(as_att(att, {"resume", rd.sock, "iso.names", "att-new"}) == "resume:refused\n");
  // Its own names are still its own to move.
  CHECK(as_att(att, {"save-cursor", rd.sock, "iso.names", "sv-3"}) == "save:ok\n");
  // The owner's new durable subscriber.
  {
    Subscriber s = bus.subscriber("iso.names", {.name = "owner-new"});
    CHECK_FALSE(s.resumed());
  }
  // The limit is the daemon's to set (the flag, or uid_max_durable_names in its TOML
  // file); the records, and whose they are, survive the restart.
  REQUIRE(rd.d.stop());
  rd.extra = {"--uid-max-durable-names", "260"};
  REQUIRE(rd.start());
  CHECK(as_att(att, {"save-many", rd.sock, "iso.names", "5000"}) == "saves:260 refused:durable-quota\n");
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "isolation: without rights, every request answers the same whether the topic, partition or grant "
    "exists or not",
    "[security][isolation][existence]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("v.hidden", {.partitions = 2, .capacity = 8192, .mode = 0600});
  Subscriber victim = bus.subscriber("v.hidden");  // a live grant in slot 0 of partition 0
  Publisher pub = bus.publisher("v.hidden");
  save_cursor(rd.sock, "v.hidden", "probe");  // a durable name the probe also asks for
  // The same requests on the victim's topic and on one that does not exist (the
  // topic's name written as <T> in both): byte for byte the same answers.
  const std::string there = as_att(att, {"probe", rd.sock, "v.hidden"});
  const std::string absent = as_att(att, {"probe", rd.sock, "v.absent"});
  INFO("victim's topic:\n" << there << "missing topic:\n" << absent);
  CHECK(there.find(":ok\n") == std::string::npos);
  CHECK(std::count(there.begin(), there.end(), '\n') == 21);
  CHECK(there == absent);
  // The victim's grant and topic are untouched.
  REQUIRE(pub.offer("kept", 4) == Status::ok);
  View v;
  REQUIRE(victim.poll_wait(v, 1'000'000'000) == Status::ok);
  CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "kept");
  victim.release(v);
  CHECK(serving(rd.sock));
}

namespace {
// The daemon's open fd numbers.
std::set<int> fds_of(pid_t pid) {
  std::set<int> s;
  for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
    s.insert(std::atoi(e.path().filename().c_str()));
  return s;
}
}  // namespace

TEST_CASE("robustness: a daemon out of fds says 'Too many open files' when it cannot make a topic's segments",
          "[security][robustness][emfile]") {
  if (geteuid() != 0) {
    WARN("skipped: needs root (prlimit on the daemon)");
    return;
  }
  RootDaemon rd;
  REQUIRE(rd.start());
  auto c = DaemonClient::connect({rd.sock, 5000, 0});
  c->call([](proto::Request::Builder r) { r.setHello(); });
  const pid_t dp = rd.d.proc.pid();
  rlimit old{};
  REQUIRE(prlimit(dp, RLIMIT_NOFILE, nullptr, &old) == 0);
  // Leave the daemon `budget` free fd numbers (0..4): a create then runs out at each
  // step in turn (the segments, their duplicates, the wake memfd).
  int failed = 0;
  for (int budget = 0; budget <= 4; ++budget) {
    const std::set<int> used = fds_of(dp);
    int limit = 0;
    for (int n = 0, free = 0;; ++n)
      if (!used.count(n) && free++ == budget) {
        limit = n;
        break;
      }
    rlimit low{rlim_t(limit), old.rlim_max};
    REQUIRE(prlimit(dp, RLIMIT_NOFILE, &low, nullptr) == 0);
    std::string err;
    try {
      c->create_topic("emfile." + std::to_string(budget), {.capacity = 8192});
    } catch (const Error& e) {
      err = e.what();
    }
    REQUIRE(prlimit(dp, RLIMIT_NOFILE, &old, nullptr) == 0);
    INFO("budget " << budget << ": " << (err.empty() ? "created" : err));
    if (err.empty()) continue;
    ++failed;
    CHECK(err.find(strerror(EMFILE)) != std::string::npos);
    CHECK(err.find(strerror(EBADF)) == std::string::npos);
  }
  CHECK(failed >= 2);
  // Nothing was left behind, and the daemon makes topics again.
  c->create_topic("emfile.after", {.capacity = 8192});
  CHECK(serving(rd.sock));
}

TEST_CASE("restart: memfds are taken back walking each grantee's fd table once, however many grants it holds",
          "[security][isolation][restart][takeback]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  constexpr int kTopics = 16;
  for (int i = 0; i < kTopics; ++i)
    bus.create_topic("iso.tb." + std::to_string(i), {.capacity = 8192, .mode = 0644});
  // One subscriber process: a grant on each topic, and 5 000 more fds.
  Child hoard(att.as({hostile(), "hoard", rd.sock, "iso.tb", std::to_string(kTopics), "5000"}));
  REQUIRE(first_line(hoard) == "hoard:ready");
  rd.d.proc.kill_now();
  REQUIRE(rd.start());
  const std::string log = rd.d.stderr_text();
  const size_t at = log.rfind("\"memfds_taken_back\"");
  REQUIRE(at != std::string::npos);
  const std::string line = log.substr(at, log.find('\n', at) - at);
  INFO(line);
  // One fd-table walk (one process), a wake segment and a page per topic taken.
  CHECK(line.find("1 fd tables walked") != std::string::npos);
  CHECK(line.find(std::to_string(2 * kTopics) + " memfds taken back") != std::string::npos);
  // Every grant survived the restart (its page found in its grantee).
  auto st = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat(""); });
  int subs = 0;
  for (auto t : st.get().getStats()) subs += int(t.getPartitions()[0].getSubscribers().size());
  CHECK(subs == kTopics);
  hoard.kill_now();
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "restart: a subscriber whose grant a restarted daemon could not take back is told (lapped), "
    "not left reading overwritten frames",
    "[security][isolation][restart][grant-lost]") {
  NEED_SECOND_USER(att);
  if (access("/usr/bin/setpriv", X_OK) != 0) {
    WARN("skipped: no setpriv");
    return;
  }
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.lost", {.capacity = 8192, .mode = 0644});
  // Another uid's tethered subscriber that reads nothing yet: it holds the producer.
  Child lag(att.as({hostile(), "lag", rd.sock, "iso.lost"}), "", {}, true);
  REQUIRE(first_line(lag) == "lag:joined");
  Publisher pub = bus.publisher("iso.lost", {.block_timeout_ns = 10'000'000});
  int held = 0;
  while (pub.offer("0123456789abcdef0123456789abcdef", 32) == Status::ok) ++held;
  REQUIRE(held > 0);
  // A restarted daemon without CAP_SYS_PTRACE cannot take the grant's page back from
  // another uid's process: it frees the slot.
  rd.d.proc.kill_now();
  rd.d.wrapper = {"/usr/bin/setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"};
  REQUIRE(rd.start());
  auto st = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("iso.lost"); });
  REQUIRE(st.get().getStats()[0].getPartitions()[0].getSubscribers().size() == 0);
  // Nobody holds the producer now: three laps over what the subscriber has not read.
  for (int i = 0; i < 3 * held; ++i) REQUIRE(pub.offer("0123456789abcdef0123456789abcdef", 32) == Status::ok);
  lag.close_stdin();
  const std::string got = first_line(lag);
  INFO(got);
  CHECK(got.rfind("lag:read=", 0) == 0);
  CHECK(got.find(" status=lapped") != std::string::npos);
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "groups: another uid's plain named join or saveCursor under 'group:<g>' is refused; the group's owner "
    "joins its group",
    "[security][isolation][groups][group-name]") {
  NEED_SECOND_USER(owner);
  SecondUser att = second_user("shmbustest3");
  if (!att.skip.empty()) {
    WARN("skipped: " << att.skip);
    return;
  }
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.grp", {.partitions = 2, .capacity = 8192, .mode = 0644});
  // Before: both made the record "group:g" the attacker's, and the owner's
  // GroupSubscriber for g was refused ("belongs to uid ...").
  CHECK(as_att(att, {"save-cursor", rd.sock, "iso.grp", "group:g"}) == "save:denied\n");
  CHECK(as_att(att, {"resume", rd.sock, "iso.grp", "group:g"}) == "resume:denied\n");
  CHECK(as_att(owner, {"group", rd.sock, "iso.grp", "g"}) == "group:held=2\n");
  // The group is the owner's now (its record): still nobody else's name.
  CHECK(as_att(att, {"save-cursor", rd.sock, "iso.grp", "group:g"}) == "save:denied\n");
  CHECK(as_att(att, {"resume", rd.sock, "iso.grp", "group:g"}) == "resume:denied\n");
  // Other names are not reserved.
  CHECK(as_att(att, {"save-cursor", rd.sock, "iso.grp", "groupie"}) == "save:ok\n");
  CHECK(serving(rd.sock));
}

TEST_CASE("quotas: uid_max_producer_grants does not count the producer grants a uid holds in its own topics",
          "[security][isolation][grants][producer-quota]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  rd.extra = {"--uid-max-producer-grants", "4"};
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.pq", {.capacity = 8192, .multi_producer = true, .mode = 0666});
  // The uid's own topic: it publishes there with more grants than the quota...
  REQUIRE(as_att(att, {"create", rd.sock, "iso.pq.own", "600", "multi"}) == "create:ok\n");
  Child own(att.as({hostile(), "publishers", rd.sock, "iso.pq.own"}));
  const std::string o = first_line(own);
  INFO(o);
  REQUIRE(o.rfind("pubs:", 0) == 0);
  CHECK(std::atoi(o.c_str() + 5) > 4);
  // ... and still gets its quota's grants in another's topic (before: none).
  Child other(att.as({hostile(), "publishers", rd.sock, "iso.pq"}));
  CHECK(first_line(other) == "pubs:4 refused:uid-quota");
  own.kill_now();
  other.kill_now();
  CHECK(serving(rd.sock));
}

namespace {
// The daemon log's last line of `event`, or "".
std::string last_event(const std::string& log, const std::string& event) {
  const size_t at = log.rfind("\"event\":\"" + event + "\"");
  if (at == std::string::npos) return "";
  const size_t b = log.rfind('\n', at);
  return log.substr(b == std::string::npos ? 0 : b + 1,
                    log.find('\n', at) - (b == std::string::npos ? 0 : b + 1));
}

bool has_topic(const std::string& sock, const std::string& name) {
  try {
    DaemonClient::connect({sock})->call([&](proto::Request::Builder r) { r.setDescribeTopic(name); });
    return true;
  } catch (const Error&) {
    return false;
  }
}
}  // namespace

TEST_CASE(
    "restart: a grantee keeping thousands of left grants' cursor pages does not run a restarted daemon out "
    "of "
    "fds; another topic is restored, kept, and its tethered subscriber not lapped",
    "[security][isolation][restart][takeback][emfile]") {
  NEED_SECOND_USER(att);
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  // The attacker's grants are in a topic restored first (name order), the victim's after.
  bus.create_topic("a12.open", {.capacity = 8192, .mode = 0644});
  bus.create_topic("v12.victim", {.capacity = 8192, .mode = 0600});
  constexpr int kPages = 2000;
  Child hoard(att.as({hostile(), "hoard-pages", rd.sock, "a12.open", std::to_string(kPages)}));
  REQUIRE(first_line(hoard) == "hoard:pages=" + std::to_string(kPages));
  // The victim's tethered subscriber (another process) holds the producer.
  Child lag({hostile(), "lag", rd.sock, "v12.victim"}, "", {}, true);
  REQUIRE(first_line(lag) == "lag:joined");
  Publisher pub = bus.publisher("v12.victim", {.block_timeout_ns = 10'000'000});
  int held = 0;
  while (pub.offer("0123456789abcdef0123456789abcdef", 32) == Status::ok) ++held;
  REQUIRE(held > 0);
  // A restart with 512 descriptors: before, the walk took and held all 2 000 pages,
  // the victim's wake segment could not be made ("Too many open files"), the topic
  // vanished at the next persist and its subscriber's grant was freed (lapped).
  rd.d.proc.kill_now();
  rd.d.wrapper = {"/usr/bin/prlimit", "--nofile=512:512", "--"};
  REQUIRE(rd.start());
  const std::string log = rd.d.stderr_text();
  INFO(last_event(log, "memfds_taken_back"));
  CHECK(last_event(log, "topic_restore_failed").empty());
  auto st =
      DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("v12.victim"); });
  REQUIRE(st.get().getStats().size() == 1);
  CHECK(st.get().getStats()[0].getPartitions()[0].getSubscribers().size() == 1);
  // The next persist keeps it.
  bus.create_topic("z12.after", {.capacity = 8192});
  // Still tethered: the ring is full, the publisher cannot lap the subscriber.
  CHECK(pub.offer("0123456789abcdef0123456789abcdef", 32) != Status::ok);
  lag.close_stdin();
  const std::string got = first_line(lag);
  INFO(got);
  CHECK(got == "lag:read=" + std::to_string(held) + " status=timed out");
  hoard.kill_now();
  rd.d.proc.kill_now();
  rd.d.wrapper.clear();
  REQUIRE(rd.start());
  CHECK(has_topic(rd.sock, "v12.victim"));
  CHECK(has_topic(rd.sock, "a12.open"));
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "robustness: a topic that cannot be restored at start is kept in the registry (its name taken, its "
    "contents kept) and restored at the next start",
    "[security][robustness][restore-kept]") {
  RootDaemon rd;
  REQUIRE(rd.start());
  {
    Bus bus = Bus::connect(rd.sock);
    bus.create_topic("kept.big", {.partitions = 2, .capacity = 65536});
    bus.create_topic("kept.small", {.capacity = 4096});
    Publisher pub = bus.publisher("kept.big");
    for (int i = 0; i < 10; ++i) REQUIRE(pub.offer("kept", 4) == Status::ok);
  }
  // Restarted with a bound the topic exceeds: not restored, reported...
  rd.d.proc.kill_now();
  rd.extra = {"--max-topic-bytes", "100000"};
  REQUIRE(rd.start());
  CHECK(!has_topic(rd.sock, "kept.big"));
  CHECK(has_topic(rd.sock, "kept.small"));
  CHECK(last_event(rd.d.stderr_text(), "topic_restore_failed").find("kept.big") != std::string::npos);
  {
    Bus bus = Bus::connect(rd.sock);
    // ... its name still taken (before: a create made a new, empty topic) ...
    try {
      bus.create_topic("kept.big", {.capacity = 8192});
      FAIL("a create took the name of a topic kept unrestored");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("could not be restored") != std::string::npos);
    }
    bus.create_topic("kept.after", {.capacity = 8192});  // a persist
  }
  // ... and kept: restored, with its messages, by a start that may (before: gone).
  rd.d.proc.kill_now();
  rd.extra.clear();
  REQUIRE(rd.start());
  REQUIRE(has_topic(rd.sock, "kept.big"));
  auto st = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("kept.big"); });
  CHECK(st.get().getStats()[0].getPartitions()[0].getProducerPosition() > 0);
  CHECK(last_event(rd.d.stderr_text(), "topic_reattached").find("kept.big") != std::string::npos);
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "restart: the take-back walk is bounded per uid (uid_max_restart_fds); another uid's grants are taken "
    "back",
    "[security][isolation][restart][takeback][budget]") {
  NEED_SECOND_USER(att);
  SecondUser vic = second_user("shmbustest3");
  if (!vic.skip.empty()) {
    WARN("skipped: " << vic.skip);
    return;
  }
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("iso.15.0", {.capacity = 8192, .mode = 0644});
  // Four processes of one uid, one grant and 1 500 more fds each...
  std::vector<std::unique_ptr<Child>> hoards;
  for (int i = 0; i < 4; ++i) {
    hoards.push_back(std::make_unique<Child>(att.as({hostile(), "hoard", rd.sock, "iso.15", "1", "1500"})));
    REQUIRE(first_line(*hoards.back()) == "hoard:ready");
  }
  // ... and another uid's subscriber.
  Child sub(vic.as({hostile(), "sub", rd.sock, "iso.15.0"}));
  REQUIRE(first_line(sub) == "sub:joined");
  rd.d.proc.kill_now();
  rd.extra = {"--uid-max-restart-fds", "2000"};
  REQUIRE(rd.start());
  const std::string log = rd.d.stderr_text();
  const std::string budget = last_event(log, "takeback_budget");
  INFO(last_event(log, "memfds_taken_back"));
  INFO(budget);
  CHECK(budget.find("uid " + std::to_string(att.uid) + ": ") != std::string::npos);
  CHECK(budget.find("uid " + std::to_string(vic.uid)) == std::string::npos);
  auto st = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("iso.15.0"); });
  std::set<uint32_t> pids;
  for (auto s : st.get().getStats()[0].getPartitions()[0].getSubscribers()) pids.insert(s.getPid());
  CHECK(pids.count(uint32_t(sub.pid())) == 1);  // the other uid's grant was taken back
  int kept = 0;
  for (auto& h : hoards) kept += int(pids.count(uint32_t(h->pid())));
  CHECK(kept <= 2);  // past 2 000 fds, the uid's other processes were not walked
  for (auto& h : hoards) h->kill_now();
  sub.kill_now();
  CHECK(serving(rd.sock));
}

TEST_CASE(
    "robustness: a topic whose restore failed at start is retried while the daemon runs: restored with its "
    "contents and its tethered subscriber's grant",
    "[security][robustness][restore-kept][retry]") {
  RootDaemon rd;
  REQUIRE(rd.start());
  Bus bus = Bus::connect(rd.sock);
  bus.create_topic("retry.t", {.capacity = 8192});
  Child lag({hostile(), "lag", rd.sock, "retry.t"}, "", {}, true);
  REQUIRE(first_line(lag) == "lag:joined");
  Publisher pub = bus.publisher("retry.t", {.block_timeout_ns = 10'000'000});
  int held = 0;
  while (pub.offer("0123456789abcdef0123456789abcdef", 32) == Status::ok) ++held;
  REQUIRE(held > 0);
  rd.d.proc.kill_now();
  rd.env = {"SHMBUS_TEST_RESTORE_FAIL_ONCE=retry.t"};
  REQUIRE(rd.start());
  CHECK(last_event(rd.d.stderr_text(), "topic_restore_failed").find("retry.t") != std::string::npos);
  CHECK(!has_topic(rd.sock, "retry.t"));
  bus.create_topic("retry.after", {.capacity = 8192});  // a persist meanwhile
  // Retried every 5 s.
  const uint64_t deadline = now_ns() + 15'000'000'000ull;
  while (!has_topic(rd.sock, "retry.t") && now_ns() < deadline) {
    poll(nullptr, 0, 100);  // a bounded wait for the daemon's retry
  }
  REQUIRE(has_topic(rd.sock, "retry.t"));
  CHECK(last_event(rd.d.stderr_text(), "topic_restored").find("retry.t") != std::string::npos);
  auto st = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setStat("retry.t"); });
  CHECK(st.get().getStats()[0].getPartitions()[0].getSubscribers().size() == 1);
  // The same ring, still tethered: full for the publisher, all there for the subscriber.
  CHECK(pub.offer("0123456789abcdef0123456789abcdef", 32) != Status::ok);
  lag.close_stdin();
  CHECK(first_line(lag) == "lag:read=" + std::to_string(held) + " status=timed out");
  CHECK(serving(rd.sock));
}
