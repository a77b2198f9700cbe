// Trust boundaries (issue 9): every attack a second, unprivileged local user tried
// against shmbusd, replayed as that user (useradd + setpriv) against a root daemon.
// Each case checks the documented refusal, that the victim's files and messages stay
// intact and private, and that the daemon keeps serving. See docs/operations.md,
// "Security model".
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <fstream>
#include <optional>
#include <sstream>

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
    if (proc.pid > 0) kill9(proc);
    if (nfd >= 0) close(nfd);
    for (auto& f : shm_files(prefix)) unlink(("/dev/shm/" + f).c_str());
  }
  // true: READY; false: exited (see stderr()) or watchdog.
  bool start(std::vector<std::string> args, const SecondUser* as = nullptr,
             std::vector<std::string> env = {}) {
    args.insert(args.begin(), daemon_path());
    args.insert(args.end(), {"--shm-prefix", prefix, "--log-level", "info"});
    env.push_back("NOTIFY_SOCKET=" + notify);
    proc = spawn(as ? as->as(args) : args, err, env);
    const uint64_t deadline = now_ns() + 10'000'000'000ull;
    for (;;) {
      uint64_t t = now_ns();
      if (t >= deadline) return false;
      pollfd p[2] = {{nfd, POLLIN, 0}, {proc.pidfd, POLLIN, 0}};
      if (poll(p, 2, int((deadline - t) / 1'000'000) + 1) <= 0) return false;
      if (p[0].revents) {
        char buf[256];
        ssize_t n = recv(nfd, buf, sizeof buf - 1, 0);
        if (n > 0 && std::string(buf, size_t(n)).find("READY=1") != std::string::npos) return true;
        continue;
      }
      if (p[1].revents) {
        exit_status = wait_exit(proc, 10000);
        return false;
      }
    }
  }
  std::string stderr_text() const { return slurp(err); }
  bool stop() {
    if (proc.pid <= 0) return true;
    kill(proc.pid, SIGTERM);
    int st = wait_exit(proc, 10000);
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

#define NEED_SECOND_USER(u)              \
  SecondUser u = second_user();          \
  if (!u.skip.empty()) {                 \
    WARN("skipped: " << u.skip);         \
    return;                              \
  }

std::string hostile() { return SHMBUS_TEST_HOSTILE; }

}  // namespace

TEST_CASE("paths: a socket or state directory that is another user's, a symlink or writable by others is refused",
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
  struct stat st{};
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
  std::vector<std::string> extra;
  bool start() { 
    std::vector<std::string> a = {"--socket", sock, "--state-dir", s / "state"};
    a.insert(a.end(), extra.begin(), extra.end());
    return d.start(a);
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

TEST_CASE("ownership: another user can neither take a topic's name, delete it, see it, nor resume a durable name",
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
  CHECK(as_att(att, {"read", rd.sock, "v.private"}) == "read:denied\n");
  CHECK(as_att(att, {"publish", rd.sock, "v.private", "forged"}) == "publish:denied\n");
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
  auto info = DaemonClient::connect({rd.sock})->call([](proto::Request::Builder r) { r.setDescribeTopic("dur.shared"); });
  for (auto dc : info.get().getTopic().getDurable())
    CHECK(dc.getOwnerUid() == (std::string(dc.getName().cStr()) == "att-name" ? att.uid : 0u));
  CHECK(as_att(att, {"delete", rd.sock, "sq.orders"}) == "delete:ok\n");
  CHECK(serving(rd.sock));
  bus.remove_topic("v.private");
  bus.remove_topic("dur.shared");
  CHECK(rd.d.stop());
}
