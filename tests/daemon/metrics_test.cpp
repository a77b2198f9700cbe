// shmbusd's Prometheus endpoint (--metrics-listen): a real daemon process, real
// traffic through the library, scraped with a real HTTP client (cpp-httplib); the text
// parsed and its figures checked against what was published and read. Hostile HTTP
// (garbage, a huge header, a flood of idle connections) must not hurt the daemon.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>

#include <cstring>
#include <fstream>
#include <map>
#include <cctype>
#include <set>
#include <sstream>

#include <httplib.h>

#include "daemon_util.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

// The port the daemon logged ("metrics_listening", reason "127.0.0.1:PORT").
int metrics_port(const DaemonProc& d) {
  std::ifstream f(d.log);
  std::string line;
  const std::string key = "\"reason\":\"127.0.0.1:";
  int port = 0;  // the last one logged (a restarted daemon appends to the same log)
  while (std::getline(f, line)) {
    const auto at = line.find(key);
    if (line.find("\"event\":\"metrics_listening\"") != std::string::npos && at != std::string::npos)
      port = std::atoi(line.c_str() + at + key.size());
  }
  return port;
}

struct Scrape {
  std::map<std::string, double> v;  // series (name{labels}) -> value
  std::map<std::string, std::string> type;
  std::set<std::string> help;
};

Scrape scrape(int port) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(10, 0);
  auto res = cli.Get("/metrics");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  REQUIRE(res->get_header_value("Content-Type").rfind("text/plain", 0) == 0);
  Scrape s;
  std::istringstream in(res->body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0) {
      s.help.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name, ty;
      t >> name >> ty;
      s.type[name] = ty;
      continue;
    }
    REQUIRE(line[0] != '#');
    const auto sp = line.rfind(' ');
    REQUIRE(sp != std::string::npos);
    s.v[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return s;
}

// The only series of `name` whose labels start with `prefix`.
double one(const Scrape& s, const std::string& name, const std::string& prefix) {
  const std::string key = name + "{" + prefix;
  double v = -1;
  int n = 0;
  for (auto& [k, x] : s.v)
    if (k.rfind(key, 0) == 0) v = x, ++n;
  INFO(key);
  REQUIRE(n == 1);
  return v;
}

void publish(Publisher& pub, int n, size_t len = 64) {
  char buf[256] = {};
  for (int i = 0; i < n; ++i) REQUIRE(pub.offer(buf, len) == Status::ok);
}

int tcp_connect(int port, bool nonblock = false) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int r = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  if (r < 0 && !(nonblock && errno == EINPROGRESS)) {
    close(fd);
    return -1;
  }
  return fd;
}

size_t fds_of(pid_t pid) {
  size_t n = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("metrics: published counts, subscriber lag in messages and bytes, monotonic counters",
          "[daemon][metrics]") {
  DaemonProc d("met");
  d.extra = {"--metrics-listen", "127.0.0.1:0"};
  REQUIRE(d.start());
  const int port = metrics_port(d);
  REQUIRE(port > 0);

  Bus bus = Bus::connect(d.sock);
  TopicConfig cfg;
  cfg.capacity = 1 << 20;
  cfg.partitions = 2;
  bus.create_topic("met.a", cfg);
  SubscriberOptions so;
  so.release_batch = 0;  // every release stored at once: the daemon sees it
  Subscriber sub = bus.subscriber("met.a", so);
  Publisher pub = bus.publisher("met.a");
  publish(pub, 500);
  View v;
  for (int i = 0; i < 120; ++i) {
    REQUIRE(sub.poll_wait(v, 5'000'000'000) == Status::ok);
    sub.release(v);
  }

  const Scrape a = scrape(port);
  const std::string p0 = "topic=\"met.a\",partition=\"0\"";
  CHECK(a.v.at("shmbus_published_messages_total{" + p0 + "}") == 500);
  CHECK(a.v.at("shmbus_published_messages_total{topic=\"met.a\",partition=\"1\"}") == 0);
  const double frame = 112;  // a 48-byte header + 64 bytes of payload
  CHECK(a.v.at("shmbus_published_bytes_total{" + p0 + "}") == 500 * frame);
  CHECK(one(a, "shmbus_subscriber_lag_messages", p0) == 380);
  CHECK(one(a, "shmbus_subscriber_lag_bytes", p0) == 380 * frame);
  CHECK(one(a, "shmbus_subscriber_lapped", p0) == 0);
  CHECK(a.v.at("shmbus_producers{" + p0 + "}") == 1);
  CHECK(a.v.at("shmbus_subscribers{" + p0 + "}") == 1);
  CHECK(a.v.at("shmbus_subscribers{topic=\"met.a\",partition=\"1\"}") == 0);
  CHECK(a.v.at("shmbus_ring_capacity_bytes{" + p0 + "}") == (1 << 20));
  CHECK(a.v.at("shmbus_topics") == 1);
  CHECK(a.v.at("shmbus_clients") >= 1);
  CHECK(a.v.at("shmbus_up") == 1);
  CHECK(a.v.at("shmbus_control_requests_total{type=\"createTopic\"}") == 1);
  CHECK(a.v.at("shmbus_control_request_duration_seconds_count{type=\"createTopic\"}") == 1);
  CHECK(a.v.at("shmbus_control_request_duration_seconds_bucket{type=\"createTopic\",le=\"+Inf\"}") == 1);
  CHECK(a.v.at("shmbus_control_requests_total{type=\"join\"}") >= 1);
  // Every family has HELP and TYPE; counters end in _total; histograms have their parts.
  for (auto& [series, x] : a.v) {
    std::string name = series.substr(0, series.find('{'));
    for (const char* suf : {"_bucket", "_sum", "_count"})
      if (!a.type.count(name) && name.size() > strlen(suf) &&
          name.compare(name.size() - strlen(suf), std::string::npos, suf) == 0)
        name.resize(name.size() - strlen(suf));
    INFO(series);
    REQUIRE(a.type.count(name));
    CHECK(a.help.count(name));
    if (a.type.at(name) == "counter") CHECK(name.size() > 6);
    if (a.type.at(name) == "counter") CHECK(name.compare(name.size() - 6, 6, "_total") == 0);
  }

  // The Grafana dashboard (tools/grafana-shmbus.json) uses only metrics the daemon serves.
  {
    std::ifstream f(SHMBUS_TEST_GRAFANA);
    REQUIRE(f);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string dash = ss.str();
    size_t used = 0;
    for (size_t at = dash.find("shmbus_"); at != std::string::npos; at = dash.find("shmbus_", at + 1)) {
      size_t end = at + 7;
      while (end < dash.size() && (std::islower(static_cast<unsigned char>(dash[end])) || dash[end] == '_'))
        ++end;
      std::string n = dash.substr(at, end - at);
      if (n == "shmbus_") continue;
      if (n.size() > 7 && n.compare(n.size() - 7, 7, "_bucket") == 0) n.resize(n.size() - 7);
      INFO(n);
      CHECK(a.type.count(n));
      ++used;
    }
    CHECK(used >= 15);
  }

  // More traffic: the counters grow (never go back), the lag follows.
  publish(pub, 100);
  const Scrape b = scrape(port);
  CHECK(b.v.at("shmbus_published_messages_total{" + p0 + "}") == 600);
  CHECK(one(b, "shmbus_subscriber_lag_messages", p0) == 480);
  for (auto& [series, x] : a.v) {
    const std::string name = series.substr(0, series.find('{'));
    if (a.type.count(name) && a.type.at(name) == "counter") {
      INFO(series);
      REQUIRE(b.v.count(series));
      CHECK(b.v.at(series) >= x);
    }
  }
  CHECK(b.v.at("shmbus_uptime_seconds") >= a.v.at("shmbus_uptime_seconds"));

  // A restarted daemon re-attaches the partition: the published counters, read from
  // its shared memory, carry on where they were (no reset for Prometheus to see).
  REQUIRE(d.stop());
  REQUIRE(d.start());
  const int port2 = metrics_port(d);
  REQUIRE(port2 > 0);
  publish(pub, 10);  // the publisher carries on through the restarted daemon
  const Scrape c = scrape(port2);
  CHECK(c.v.at("shmbus_published_messages_total{" + p0 + "}") == 610);
  CHECK(c.v.at("shmbus_published_bytes_total{" + p0 + "}") == 610 * frame);
  CHECK(one(c, "shmbus_subscriber_lag_messages", p0) == 490);
}

TEST_CASE("metrics: an untethered subscriber the producer overtook is shown lapped", "[daemon][metrics]") {
  DaemonProc d("metlap");
  d.extra = {"--metrics-listen", "127.0.0.1:0"};
  REQUIRE(d.start());
  const int port = metrics_port(d);
  REQUIRE(port > 0);
  Bus bus = Bus::connect(d.sock);
  TopicConfig cfg;
  cfg.capacity = 4096;
  bus.create_topic("met.lap", cfg);
  SubscriberOptions so;
  so.tethered = false;
  Subscriber sub = bus.subscriber("met.lap", so);
  Publisher pub = bus.publisher("met.lap");
  publish(pub, 200);  // 22 400 bytes through a 4 KiB ring
  const Scrape s = scrape(port);
  const std::string p0 = "topic=\"met.lap\",partition=\"0\"";
  CHECK(one(s, "shmbus_subscriber_lapped", p0) == 1);
  CHECK(s.v.at("shmbus_lapped_subscribers{" + p0 + "}") == 1);
  const double lag = one(s, "shmbus_subscriber_lag_messages", p0);
  CHECK(lag > 36);  // more than the ring holds (4096 / 112)
  CHECK(lag <= 200);
}

TEST_CASE("metrics: garbage, a huge header and idle connections do not hurt shmbusd", "[daemon][metrics]") {
  DaemonProc d("methostile");
  d.extra = {"--metrics-listen", "127.0.0.1:0"};
  REQUIRE(d.start());
  const int port = metrics_port(d);
  REQUIRE(port > 0);
  const size_t base_fds = fds_of(d.proc.pid());

  // Idle connections: at most a few cost the daemon an fd at once.
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) {
    int fd = tcp_connect(port, true);
    if (fd >= 0) idle.push_back(fd);
  }
  {
    // Watched over half a second (an observation window, not a synchronisation): the
    // daemon takes a few of them (2 workers, 4 queued, 1 in the accepting thread) and
    // leaves the rest in the kernel's backlog.
    size_t most = 0;
    const uint64_t until = now_ns() + 500'000'000ull;
    while (now_ns() < until) most = std::max(most, fds_of(d.proc.pid()));
    CHECK(most <= base_fds + 10);
  }
  for (int fd : idle) close(fd);

  // Garbage, then a header far beyond any limit, then a flood of header lines.
  auto send_all = [&](const std::string& what) {
    int fd = tcp_connect(port);
    REQUIRE(fd >= 0);
    size_t off = 0;
    while (off < what.size()) {
      ssize_t n = send(fd, what.data() + off, what.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;  // the server closed on us: fine
      off += size_t(n);
    }
    shutdown(fd, SHUT_WR);  // no next request: the server closes after answering
    char buf[4096];
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (recv(fd, buf, sizeof buf, 0) > 0) {
    }
    close(fd);
  };
  send_all(std::string("\x01\x02GARBAGE \xff\r\n\r\n", 16));
  send_all("GET /metrics HTTP/1.1\r\nX-Big: " + std::string(1 << 20, 'a') + "\r\n\r\n");
  {
    std::string many = "GET /metrics HTTP/1.1\r\n";
    for (int i = 0; i < 20000; ++i) many += "X-" + std::to_string(i) + ": b\r\n";
    send_all(many + "\r\n");
  }
  send_all("POST /metrics HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n" + std::string(65536, 'c'));

  // Still serving: the endpoint and the control socket.
  const Scrape s = scrape(port);
  CHECK(s.v.at("shmbus_up") == 1);
  Bus bus = Bus::connect(d.sock);
  bus.create_topic("met.after", TopicConfig{});
  CHECK(scrape(port).v.at("shmbus_topics") == 1);
  CHECK(d.stop());
}

TEST_CASE("metrics: a non-loopback address needs --metrics-allow-remote", "[daemon][metrics]") {
  DaemonProc d("metremote");
  d.extra = {"--metrics-listen", "0.0.0.0:0"};
  CHECK_FALSE(d.start(5000));
  std::ifstream f(d.log);
  std::stringstream ss;
  ss << f.rdbuf();
  CHECK(ss.str().find("--metrics-allow-remote") != std::string::npos);
  DaemonProc ok("metremote2");
  ok.extra = {"--metrics-listen", "0.0.0.0:0", "--metrics-allow-remote"};
  REQUIRE(ok.start());
  CHECK(ok.stop());
}

// ---- the shmbus tool's live views against the same kind of daemon

namespace {

std::string cli(const DaemonProc& d, std::vector<std::string> args, int* status = nullptr) {
  args.insert(args.begin(), {SHMBUS_TEST_CLI, "--socket", d.sock});
  Child c(args);
  std::string out = c.read_all(20000);
  const int st = c.wait(20000);
  if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

}  // namespace

TEST_CASE("shmbus stat --json and top --once show last sequence, lag in messages and bytes, lapped",
          "[daemon][metrics][cli]") {
  DaemonProc d("cliops");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  TopicConfig cfg;
  cfg.capacity = 1 << 20;
  bus.create_topic("ops.a", cfg);
  SubscriberOptions so;
  so.release_batch = 0;
  Subscriber sub = bus.subscriber("ops.a", so);
  Publisher pub = bus.publisher("ops.a");
  publish(pub, 300);
  View v;
  for (int i = 0; i < 100; ++i) {
    REQUIRE(sub.poll_wait(v, 5'000'000'000) == Status::ok);
    sub.release(v);
  }
  int st = -1;
  const std::string js = cli(d, {"--json", "stat", "ops.a"}, &st);
  CHECK(st == 0);
  INFO(js);
  CHECK(js.find("\"last_sequence\":300,\"next_sequence\":301") != std::string::npos);
  CHECK(js.find("\"lag_messages\":200,\"lag_bytes\":22400") != std::string::npos);
  CHECK(js.find("\"lapped\":false") != std::string::npos);
  CHECK(js.find("\"filled_claims\":0") != std::string::npos);
  CHECK(js.find("\"producers\":1") != std::string::npos);

  const std::string text = cli(d, {"stat", "ops.a"}, &st);
  CHECK(st == 0);
  CHECK(text.find("last seq 300") != std::string::npos);
  CHECK(text.find("lag 200 messages / 22400 B") != std::string::npos);
  CHECK(text.find("filled claims") != std::string::npos);

  // top: one frame (stdout is a pipe here); 50 more messages between its two samples
  // are not synchronised with it, so only the totals are checked.
  publish(pub, 50);
  const std::string top = cli(d, {"top", "--once", "--interval", "0"}, &st);
  CHECK(st == 0);
  INFO(top);
  CHECK(top.find("LAG MSGS") != std::string::npos);
  // ops.a  0  LAST SEQ  MSG/S  BYTES/S (number and unit)  PROD  SUBS  LAG MSGS ...
  std::vector<std::string> row;
  {
    std::istringstream in(top.substr(std::min(top.size(), top.find("\nops.a "))));
    for (std::string tok; row.size() < 9 && in >> tok;) row.push_back(tok);
  }
  REQUIRE(row.size() == 9);
  CHECK(row[1] == "0");
  CHECK(row[2] == "350");
  CHECK(row[6] == "1");
  CHECK(row[7] == "1");
  CHECK(row[8] == "250");
  CHECK(top.find("lag 250 msgs") != std::string::npos);

  // describe: the schema id in hex, as everywhere.
  const std::string desc = cli(d, {"--json", "topic", "describe", "ops.a"}, &st);
  CHECK(desc.find("\"schema_id\":\"0x0000000000000000\"") != std::string::npos);
}

TEST_CASE("shmbus stat --watch prints a sample per interval with its own rates; Ctrl-C ends it cleanly",
          "[daemon][metrics][cli]") {
  DaemonProc d("cliwatch");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  TopicConfig cfg;
  cfg.capacity = 1 << 20;
  bus.create_topic("ops.w", cfg);
  Publisher pub = bus.publisher("ops.w");
  publish(pub, 100);
  Child w({SHMBUS_TEST_CLI, "--socket", d.sock, "--json", "stat", "--watch", "--interval", "0.05", "ops.w"});
  std::string lines[2];
  for (auto& l : lines)
    for (char ch; (ch = w.read_char(10000)) != '\n';) {
      REQUIRE(ch != 0);
      l += ch;
    }
  for (auto& l : lines) {
    INFO(l);
    CHECK(l.rfind("[{\"topic\":\"ops.w\"", 0) == 0);
    CHECK(l.find("\"last_sequence\":100,") != std::string::npos);
    CHECK(l.find("\"msg_per_sec\":0,\"bytes_per_sec\":0,") !=
          std::string::npos);  // nothing published between
  }
  kill(w.pid(), SIGINT);
  const int st = w.wait(10000);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
}

TEST_CASE("shmbus hz counts the messages of a publisher at a known rate", "[daemon][metrics][cli]") {
  DaemonProc d("clihz");
  REQUIRE(d.start());
  Bus bus = Bus::connect(d.sock);
  TopicConfig cfg;
  cfg.capacity = 1 << 20;
  bus.create_topic("ops.hz", cfg);
  // hz joins at the tail: it is started, then messages are published until it has
  // counted its 200 and exited (a wide rate band only: the machine may be loaded).
  Child hz({SHMBUS_TEST_CLI, "--socket", d.sock, "--json", "hz", "ops.hz", "--count", "200"});
  Publisher pub = bus.publisher("ops.hz");
  // Its subscriber slot shows in stat once it has joined.
  DaemonClient::Options co;
  co.socket_path = d.sock;
  auto c = DaemonClient::connect(co);
  const uint64_t deadline = now_ns() + 20'000'000'000ull;
  for (;;) {
    auto rep = c->call([](proto::Request::Builder r) { r.setStat("ops.hz"); });
    if (rep.get().getStats()[0].getPartitions()[0].getSubscribers().size() == 1) break;
    REQUIRE(now_ns() < deadline);
    pollfd none{-1, 0, 0};
    poll(&none, 0, 5);
  }
  // About 1000 msg/s until hz exits.
  char buf[64] = {};
  uint64_t next = now_ns();
  for (int i = 0; i < 20000; ++i) {
    pollfd p{hz.pidfd(), POLLIN, 0};
    const uint64_t t = now_ns();
    if (poll(&p, 1, next > t ? int((next - t) / 1'000'000) : 0) > 0) break;
    REQUIRE(pub.offer(buf, sizeof buf) == Status::ok);
    next += 1'000'000;
  }
  const std::string out = hz.read_all(20000);
  const int st = hz.wait(20000);
  INFO(out);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  const auto msgs = out.find("\"messages\":"), rate_at = out.find("\"rate\":");
  REQUIRE(msgs != std::string::npos);
  REQUIRE(rate_at != std::string::npos);
  CHECK(std::strtoull(out.c_str() + msgs + 11, nullptr, 10) == 200);
  const double rate = std::strtod(out.c_str() + rate_at + 7, nullptr);
  CHECK(rate > 50);      // 1000 msg/s published; a loaded 2-core machine may stretch it
  CHECK(rate < 200000);  // but not compress 199 gaps of ~1 ms into nothing
  CHECK(out.find("\"window\":199") != std::string::npos);
}

TEST_CASE("shmbus doctor reports each check, and fails on a socket directory others can write",
          "[daemon][metrics][cli]") {
  DaemonProc d("clidoc");
  REQUIRE(d.start());
  int st = -1;
  std::string out = cli(d, {"--json", "doctor"}, &st);
  INFO(out);
  for (const char* n : {"dev_shm", "memlock", "nofile", "io_uring", "pidfd", "membarrier", "clocksource",
                        "socket_dir", "daemon", "state_dir"})
    CHECK(out.find(std::string("\"name\":\"") + n + "\"") != std::string::npos);
  CHECK(out.find("\"name\":\"daemon\",\"status\":\"OK\"") != std::string::npos);
  CHECK(out.find("\"name\":\"socket_dir\",\"status\":\"OK\"") != std::string::npos);
  CHECK(out.find("\"name\":\"state_dir\",\"status\":\"OK\"") != std::string::npos);
  const bool any_fail = out.find("\"status\":\"FAIL\"") != std::string::npos;
  CHECK(st == (any_fail ? 1 : 0));
  CHECK(out.find(any_fail ? "\"ok\":false" : "\"ok\":true") != std::string::npos);

  // The socket's directory made writable by others: FAIL, exit 1, the fix named.
  chmod(d.dir.c_str(), 0777);
  out = cli(d, {"doctor"}, &st);
  chmod(d.dir.c_str(), 0755);
  INFO(out);
  CHECK(st == 1);
  CHECK(out.find("FAIL  socket_dir") != std::string::npos);
  CHECK(out.find("fix: chmod go-w " + d.dir) != std::string::npos);
}
