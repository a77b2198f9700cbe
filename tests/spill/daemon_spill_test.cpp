// Durable topics through shmbusd (real processes): a topic created durable with the
// `shmbus` CLI is archived by the daemon's archiver; replay from earliest / sequence /
// time gives exactly the produced stream and continues live without a gap or a
// duplicate; a daemon restart recovers and continues the log; SIGKILL of the daemon
// under batch flush never loses an acknowledged message; `shmbus replay` / `tail`
// print what was published, as JSON.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <capnp/compat/json.h>
#include <capnp/message.h>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <thread>

#include "../daemon/daemon_util.hpp"
#include "market.capnp.h"
#include "shmbus/daemon_client.hpp"
#include "shmbus/group.hpp"
#include "shmbus/handler.hpp"
#include "shmbus/message.hpp"
#include "shmbus/spill_format.hpp"
#include "log_check.hpp"
#include "spill_util.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

const char* kCli = SHMBUS_TEST_CLI;

struct Run {
  std::string out, err;
  int status = -1;  // raw wait status
  int code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

// Runs a command to completion (watchdog: 60 s without output), capturing stdout and stderr.
Run run(const std::vector<std::string>& args, const std::string& errfile) {
  unlink(errfile.c_str());
  Child c(args, errfile);
  Run r;
  bool hung = false;
  r.out = c.read_all(30000, &hung);
  if (hung) {  // watchdog: a hung command fails the test (status -1)
    c.kill_now();
    r.out.clear();
    return r;
  }
  r.status = c.wait(10000);
  char buf[4096];
  FILE* f = fopen(errfile.c_str(), "r");
  if (f) {
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) r.err.append(buf, n);
    fclose(f);
  }
  return r;
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream is(s);
  std::string l;
  while (std::getline(is, l))
    if (!l.empty()) v.push_back(l);
  return v;
}

// A DaemonProc whose state dir is on the real disk (the spill log lives there).
struct Daemon {
  TempDir tmp;
  DaemonProc d;
  explicit Daemon(const char* what) : d(what) { d.state = tmp.path + "/state"; }
  std::vector<std::string> cli(std::vector<std::string> args) {
    args.insert(args.begin(), {kCli, "--socket", d.sock});
    return args;
  }
};

// Reads `n` messages from r, each must be the next expected sequence with an intact
// payload. Returns the timestamps (index = sequence - first).
std::vector<uint64_t> expect_stream(ReplaySubscriber& r, uint64_t first, uint64_t n) {
  std::vector<uint64_t> ts;
  ts.reserve(n);
  View v;
  for (uint64_t s = first; s < first + n; ++s) {
    Status st = r.poll_wait(v, 10'000'000'000);  // watchdog
    const ReplayStats rs = r.stats();
    INFO("replay: from_log " << rs.from_log << " from_ring " << rs.from_ring << " handovers " << rs.handovers
                             << " lapped " << rs.lapped << " corrupt " << rs.corrupt << " gaps " << rs.gaps);
    REQUIRE(st == Status::ok);
    REQUIRE(v.sequence() == s);
    REQUIRE(payload_ok(s, v.data(), v.size()));
    ts.push_back(v.timestamp_ns());
    r.release(v);
  }
  return ts;
}

// Stops and joins helper threads when a REQUIRE throws (a joinable std::thread
// would terminate the process and leak the daemon child).
struct Joiner {
  std::atomic<bool>* stop;
  std::vector<std::thread*> ts;
  ~Joiner() {
    if (stop) stop->store(true);
    for (auto* t : ts)
      if (t->joinable()) t->join();
  }
};

}  // namespace

TEST_CASE("durable topic through shmbusd: replay from earliest, sequence and time, then live",
          "[spill][daemon]") {
  Daemon dm("e2e");
  REQUIRE(dm.d.start());
  const std::string topic = "dur.e2e";
  Run c = run(dm.cli({"--json", "topic", "create", topic, "--durable", "--flush", "batch", "--capacity",
                      "262144", "--max-payload", "4096", "--segment-bytes", "1048576"}),
              dm.d.dir + "/cli.err");
  INFO(c.err);
  REQUIRE(c.code() == 0);
  CHECK(c.out.find("\"durable\":true") != std::string::npos);
  CHECK(c.out.find("\"flush\":\"batch\"") != std::string::npos);
  const std::string log_root = dm.d.state + "/log";
  const std::string pdir = spill::partition_dir(log_root, topic, 0);

  Bus bus = Bus::connect(dm.d.sock);
  Publisher pub = bus.publisher(topic, patient_publisher());
  const uint64_t N = 30000;  // ~3.5 MB of log: several 1 MiB segment files
  for (uint64_t i = 1; i <= N; ++i) REQUIRE(publish_one(pub, i) == i);
  REQUIRE(wait_durable(pub, N, 30'000'000'000) == Status::ok);  // acknowledged through the daemon
  CHECK(spill::list_segments(pdir).size() >= 3);

  ReplayOptions ro;
  ro.state_dir = log_root;
  std::vector<uint64_t> ts;
  SECTION("earliest, then live messages without gap or duplicate") {
    ro.start = StartAt::earliest();
    ReplaySubscriber r = replay_subscriber(bus, topic, ro);
    ts = expect_stream(r, 1, N);
    // At the end of the history the replay hands over to the ring (nothing is being
    // published now, so the live messages below must come through the ring: a producer
    // started earlier could be archived before a slow replay reached the end of the
    // log, and the replay would never need the ring).
    View none;
    REQUIRE(r.poll(none) == Status::empty);
    CHECK(r.stats().handovers == 1);
    std::thread prod([&] {
      for (uint64_t i = N + 1; i <= N + 5000; ++i)
        if (publish_one(pub, i) != i) return;
    });
    Joiner j{nullptr, {&prod}};
    expect_stream(r, N + 1, 5000);
    prod.join();
    CHECK(r.stats().from_log >= N / 2);
    CHECK(r.stats().handovers >= 1);
    CHECK(r.stats().corrupt == 0);
  }
  SECTION("sequence and time start points, while the producer keeps publishing") {
    {
      ro.start = StartAt::earliest();
      ReplaySubscriber all = replay_subscriber(bus, topic, ro);
      ts = expect_stream(all, 1, N);
    }
    // The producer publishes on demand, concurrently with each replay: every replay asks
    // for 2000 messages beyond what exists when it starts, so it reads history and then
    // live messages that are being published while it reads. (A producer that stopped
    // after a fixed count could finish before a slow replay asked for more: a hang.)
    std::atomic<uint64_t> produced{N};
    std::atomic<bool> stop{false};
    std::mutex mu;
    std::condition_variable cv;
    uint64_t want = N;  // guarded by mu
    std::thread prod([&] {
      for (uint64_t i = N + 1;; ++i) {
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] { return stop.load() || want >= i; });
          if (stop.load()) return;
        }
        if (publish_one(pub, i) != i) return;
        produced.store(i, std::memory_order_release);
        if (i % 64 == 0) {
          timespec pace{0, 200'000};  // load shape: keep the log growing while replays run
          nanosleep(&pace, nullptr);
        }
      }
    });
    struct Wake {  // stops the producer before the Joiner joins it, also on a failure
      std::atomic<bool>& stop;
      std::mutex& mu;
      std::condition_variable& cv;
      ~Wake() {
        {
          std::lock_guard<std::mutex> lk(mu);
          stop = true;
        }
        cv.notify_all();
      }
    };
    Joiner j{&stop, {&prod}};
    Wake w{stop, mu, cv};
    Rng rng(uint64_t(time(nullptr)));
    for (int k = 0; k < 6; ++k) {
      const uint64_t s = 1 + rng.next() % N;
      ReplayOptions o = ro;
      uint64_t first = s;
      if (k % 2 == 0) {
        o.start = StartAt::sequence(s);
      } else {
        // The first frame with timestamp >= t, in log order.
        o.start = StartAt::time(ts[s - 1]);
        first = 1;
        while (ts[first - 1] < ts[s - 1]) ++first;
      }
      INFO("start " << (k % 2 ? "time" : "sequence") << " at seq " << s);
      ReplaySubscriber r = replay_subscriber(bus, topic, o);
      // History, then whatever the producer publishes meanwhile (at least 2000 more).
      const uint64_t upto = std::max<uint64_t>(produced.load(std::memory_order_acquire), N) + 2000;
      {
        std::lock_guard<std::mutex> lk(mu);
        want = std::max(want, upto);
      }
      cv.notify_all();
      expect_stream(r, first, upto - first + 1);
      CHECK(r.stats().corrupt == 0);
    }
  }
  SECTION("a daemon restart recovers the log and continues it") {
    REQUIRE(dm.d.stop());
    // While the daemon is down the archiver's cursor still holds the ring (no frame
    // escapes the log); the publisher keeps its mapping.
    for (uint64_t i = N + 1; i <= N + 100; ++i) REQUIRE(publish_one(pub, i) == i);
    REQUIRE(dm.d.start());
    for (uint64_t i = N + 101; i <= N + 3000; ++i) REQUIRE(publish_one(pub, i) == i);
    REQUIRE(wait_durable(pub, N + 3000, 30'000'000'000) == Status::ok);
    check_log_range(pdir, 1, N + 3000);
    ro.start = StartAt::sequence(N - 10);
    ReplaySubscriber r = replay_subscriber(bus, topic, ro);
    expect_stream(r, N - 10, 3011);
  }
  SECTION("topic delete stops the archiver and removes the log") {
    Run del = run(dm.cli({"topic", "delete", topic}), dm.d.dir + "/cli.err");
    REQUIRE(del.code() == 0);
    CHECK(!std::filesystem::exists(log_root + "/" + topic));
    // The daemon still serves, and a durable topic of the same name starts afresh.
    Run again = run(dm.cli({"topic", "create", topic, "--policy", "spill", "--capacity", "262144"}),
                    dm.d.dir + "/cli.err");
    REQUIRE(again.code() == 0);
    Publisher p2 = bus.publisher(topic, patient_publisher());
    for (uint64_t i = 1; i <= 100; ++i) REQUIRE(publish_one(p2, i) == i);
    REQUIRE(wait_durable(p2, 100, 30'000'000'000) == Status::ok);
    check_log_range(spill::partition_dir(log_root, topic, 0), 1, 100);
  }
  REQUIRE(dm.d.stop());
}

TEST_CASE("SIGKILL of shmbusd under batch flush never loses an acknowledged message",
          "[spill][daemon][crash]") {
  const char* t = getenv("SHMBUS_CRASH_TRIALS");
  const int trials = t ? atoi(t) : shmbus::test::trials(100, 6);
  Daemon dm("crash");
  REQUIRE(dm.d.start());
  const std::string topic = "dur.crash";
  Run c = run(dm.cli({"topic", "create", topic, "--policy", "spill", "--flush", "batch", "--capacity",
                      "262144", "--max-payload", "4096", "--segment-bytes", "1048576"}),
              dm.d.dir + "/cli.err");
  INFO(c.err);
  REQUIRE(c.code() == 0);
  const std::string log_root = dm.d.state + "/log";
  const std::string pdir = spill::partition_dir(log_root, topic, 0);

  Bus bus = Bus::connect(dm.d.sock);
  Publisher pub = bus.publisher(topic, patient_publisher());
  std::atomic<bool> stop{false}, failed{false};
  std::atomic<uint64_t> produced{0}, acked{0};
  std::thread producer([&] { paced_producer(pub, stop, failed, produced); });
  // The acknowledgement reader: what a producer asking for acks=all would see.
  std::thread acker([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const uint64_t want = produced.load(std::memory_order_acquire);
      if (want > acked.load(std::memory_order_relaxed) && wait_durable(pub, want, 20'000'000) == Status::ok)
        acked.store(want, std::memory_order_release);
      else if (want == 0)
        wait_durable(pub, 1, 1'000'000);
    }
  });

  Joiner j{&stop, {&producer, &acker}};
  const uint64_t seed = uint64_t(time(nullptr));
  std::printf("daemon crash test seed %llu, %d trials\n", (unsigned long long)seed, trials);
  Rng rng(seed);
  uint64_t verified = 0;
  const uint64_t t0 = now_ns();
  for (int trial = 0; trial < trials && !failed; ++trial) {
    uint64_t wait_ns = 500'000 + rng.next() % 15'000'000;  // a random kill point
    timespec ts{0, long(wait_ns)};
    nanosleep(&ts, nullptr);
    dm.d.crash();  // SIGKILL + reap: its archiver is gone, durable_seq cannot move
    const uint64_t a = acked.load(std::memory_order_acquire);
    REQUIRE(dm.d.start());  // recovery (torn tail truncated), cursor adopted
    INFO("trial " << trial);
    check_log_range(pdir, verified + 1, a);
    verified = std::max(verified, a);
  }
  stop = true;
  producer.join();
  acker.join();
  REQUIRE(!failed);
  const uint64_t last = produced.load();
  REQUIRE(wait_durable(pub, last, 60'000'000'000) == Status::ok);
  std::printf("daemon crash test: %d kills in %.1f s, %llu messages, %llu verified acknowledged\n", trials,
              double(now_ns() - t0) / 1e9, (unsigned long long)last, (unsigned long long)verified);
  CHECK(verified > 0);
  check_log_range(pdir, 1, last);
  // Served through the daemon: a replay from the start sees exactly the stream, no corrupt record.
  ReplayOptions ro;
  ro.state_dir = log_root;
  ro.start = StartAt::earliest();
  ReplaySubscriber r = replay_subscriber(bus, topic, ro);
  expect_stream(r, 1, last);
  CHECK(r.stats().corrupt == 0);
  View v;
  CHECK(r.poll(v) == Status::empty);
  REQUIRE(dm.d.stop());
}

namespace {
void make_quote(schema::Quote::Builder q, uint64_t i) {
  q.setInstrumentId(uint32_t(1000 + i));
  q.setBidPx(int64_t(i) * 100 - 7);
  q.setAskPx(int64_t(i) * 100 + 7);
  q.setBidQty(uint32_t(i % 17));
  q.setAskQty(uint32_t(i % 19));
  q.setExchangeTsNs(1'700'000'000'000'000'000ull + i);
  q.setSeq(i);
}

// Checks one JSON line of `shmbus replay/tail` against quote i (published as seq i).
void check_line(const std::string& l, uint64_t i) {
  INFO(l);
  REQUIRE(l.find("\"seq\":" + std::to_string(i) + ",") != std::string::npos);
  REQUIRE(l.find("\"type\":\"Quote\"") != std::string::npos);
  const auto at = l.find("\"message\":");
  REQUIRE(at != std::string::npos);
  const std::string msg = l.substr(at + 10, l.size() - (at + 10) - 1);  // up to the closing brace
  capnp::MallocMessageBuilder mb;
  auto q = mb.initRoot<schema::Quote>();
  capnp::JsonCodec codec;
  codec.decode(kj::StringPtr(msg.c_str()), q);
  CHECK(q.getInstrumentId() == uint32_t(1000 + i));
  CHECK(q.getBidPx() == int64_t(i) * 100 - 7);
  CHECK(q.getAskPx() == int64_t(i) * 100 + 7);
  CHECK(q.getBidQty() == uint32_t(i % 17));
  CHECK(q.getAskQty() == uint32_t(i % 19));
  CHECK(q.getExchangeTsNs() == 1'700'000'000'000'000'000ull + i);
  CHECK(q.getSeq() == i);
}

uint64_t field_u64(const std::string& l, const std::string& key) {
  auto at = l.find("\"" + key + "\":");
  REQUIRE(at != std::string::npos);
  return std::strtoull(l.c_str() + at + key.size() + 3, nullptr, 10);
}
}  // namespace

TEST_CASE("shmbus replay and tail print the published messages as JSON", "[spill][daemon][cli]") {
  Daemon dm("cli");
  REQUIRE(dm.d.start());
  const std::string err = dm.d.dir + "/cli.err";
  const std::string topic = "dur.quotes";
  char id[32];
  std::snprintf(id, sizeof id, "%llu", (unsigned long long)capnp::typeId<schema::Quote>());
  REQUIRE(run(dm.cli({"topic", "create", topic, "--durable", "--flush", "none", "--schema-id", id}), err)
              .code() == 0);
  Run desc = run(dm.cli({"topic", "describe", topic}), err);
  CHECK(desc.out.find("durable: flush none") != std::string::npos);

  Bus bus = Bus::connect(dm.d.sock);
  PublisherOptions po = patient_publisher();
  po.schema_id = capnp::typeId<schema::Quote>();
  Publisher pub = bus.publisher(topic, po);
  auto publish_quote = [&](uint64_t i) {
    MessageClaim m(pub, 256);
    REQUIRE(bool(m));
    make_quote(m.init_root<schema::Quote>(), i);
    REQUIRE(m.commit_as<schema::Quote>() == Status::ok);
  };
  for (uint64_t i = 1; i <= 50; ++i) publish_quote(i);
  REQUIRE(wait_durable(pub, 50, 30'000'000'000) == Status::ok);

  SECTION("replay from earliest prints every message, decoded") {
    Run r = run(dm.cli({"replay", topic, "--from", "earliest"}), err);
    INFO(r.err);
    REQUIRE(r.code() == 0);
    auto ls = lines(r.out);
    REQUIRE(ls.size() == 50);
    for (uint64_t i = 1; i <= 50; ++i) check_line(ls[i - 1], i);
    // --progress draws on stderr, never on stdout.
    Run p = run(dm.cli({"replay", topic, "--progress"}), err);
    CHECK(lines(p.out).size() == 50);
    CHECK(p.err.find("100.0%") != std::string::npos);
  }
  SECTION("start points: seq, mono, ISO time; --count and --to") {
    auto ls = lines(run(dm.cli({"replay", topic, "--from", "seq:20", "--count", "5"}), err).out);
    REQUIRE(ls.size() == 5);
    for (uint64_t i = 0; i < 5; ++i) check_line(ls[i], 20 + i);
    ls = lines(run(dm.cli({"replay", topic, "--from", "seq:45", "--to", "seq:47"}), err).out);
    REQUIRE(ls.size() == 3);
    check_line(ls[0], 45);
    check_line(ls[2], 47);
    const uint64_t ts30 = field_u64(
        lines(run(dm.cli({"replay", topic, "--from", "seq:30", "--count", "1"}), err).out).at(0), "ts_ns");
    ls = lines(run(dm.cli({"replay", topic, "--from", "mono:" + std::to_string(ts30)}), err).out);
    REQUIRE(ls.size() == 21);
    check_line(ls[0], 30);
    ls = lines(run(dm.cli({"replay", topic, "--from", "time:2001-02-03T04:05:06.5Z"}), err).out);
    CHECK(ls.size() == 50);  // long before any message: everything
    Run late = run(dm.cli({"replay", topic, "--from", "time:2200-01-01T00:00:00+01:00"}), err);
    CHECK(late.code() == 0);         // returns (does not wait for the future) ...
    CHECK(lines(late.out).empty());  // ... and prints nothing: every message is older
  }
  SECTION("tail follows live messages") {
    // Start at a sequence not yet published: tail waits for it, no race with the publisher.
    std::vector<std::string> args = dm.cli({"tail", topic, "--from", "seq:51", "--count", "3"});
    Child tc(args, err);
    for (uint64_t i = 51; i <= 53; ++i) publish_quote(i);
    bool hung = false;
    std::string out = tc.read_all(20000, &hung);  // --count 3: it exits after the third
    REQUIRE(!hung);                               // watchdog
    int st = tc.wait(20000);
    CHECK(WIFEXITED(st));
    auto ls = lines(out);
    REQUIRE(ls.size() == 3);
    for (uint64_t i = 0; i < 3; ++i) check_line(ls[i], 51 + i);
  }
  SECTION("an unknown schema prints header fields and the payload in base64") {
    REQUIRE(run(dm.cli({"topic", "create", "dur.raw", "--durable", "--flush", "none"}), err).code() == 0);
    Publisher raw = bus.publisher("dur.raw", patient_publisher());
    for (uint64_t i = 1; i <= 3; ++i) REQUIRE(publish_one(raw, i) == i);
    REQUIRE(wait_durable(raw, 3, 30'000'000'000) == Status::ok);
    Run r = run(dm.cli({"replay", "dur.raw"}), err);
    auto ls = lines(r.out);
    REQUIRE(ls.size() == 3);
    CHECK(ls[0].find("\"payload_base64\":\"") != std::string::npos);
    CHECK(ls[0].find("\"seq\":1,") != std::string::npos);
    CHECK(r.err.find("base64") != std::string::npos);
  }
  SECTION("clear errors") {
    Run r = run(dm.cli({"replay", "no.such.topic"}), err);
    CHECK(r.code() == 1);
    CHECK(r.err.find("no topic 'no.such.topic'") != std::string::npos);
    REQUIRE(run(dm.cli({"topic", "create", "plain"}), err).code() == 0);
    r = run(dm.cli({"replay", "plain"}), err);
    CHECK(r.code() == 1);
    CHECK(r.err.find("is not durable") != std::string::npos);
    r = run(dm.cli({"replay", topic, "--from", "yesterday"}), err);
    CHECK(r.code() == 1);
    CHECK(r.err.find("bad position 'yesterday'") != std::string::npos);
    r = run(dm.cli({"replay", topic, "--from", "time:2026-13-01T00:00:00Z"}), err);
    CHECK(r.code() == 1);
    r = run(dm.cli({"replay", topic, "--from", "time:2999-01-01T00:00:00Z"}), err);  // beyond 64-bit ns
    CHECK(r.code() == 1);
  }
  REQUIRE(dm.d.stop());
}

TEST_CASE("Bus::create_topic through shmbusd carries the durable settings", "[spill][daemon]") {
  Daemon dm("api");
  REQUIRE(dm.d.start());
  Bus bus = Bus::connect(dm.d.sock);
  TopicConfig tc;
  tc.capacity = 1 << 20;
  tc.durable = true;
  tc.flush = TopicConfig::Flush::batch;
  tc.retention_bytes = 2 << 20;
  tc.segment_bytes = 1 << 20;
  bus.create_topic("dur.api", tc);
  bus.create_topic("dur.api", tc);  // idempotent with the same durable settings
  TopicConfig other = tc;
  other.flush = TopicConfig::Flush::none;
  REQUIRE_THROWS_AS(bus.create_topic("dur.api", other), Error);  // not with others
  Run d = run(dm.cli({"--json", "topic", "describe", "dur.api"}), dm.d.dir + "/cli.err");
  CHECK(d.out.find("\"durable\":true,\"flush\":\"batch\"") != std::string::npos);
  CHECK(d.out.find("\"retention_bytes\":2097152") != std::string::npos);
  Publisher pub = bus.publisher("dur.api", patient_publisher());
  const uint64_t n = 50000;  // ~6 MB of log over 1 MiB segments, retention 2 MiB
  for (uint64_t i = 1; i <= n; ++i) REQUIRE(publish_one(pub, i) == i);
  REQUIRE(wait_durable(pub, n, 30'000'000'000) == Status::ok);
  const std::string pdir = spill::partition_dir(dm.d.state + "/log", "dur.api", 0);
  // Retention deletes whole old segments, at every roll-over and once a second: it
  // converges to at most the limit (the segment being written included) once the
  // producer stops. Wait for that (bounded), so that the replay below and this listing
  // see the same segments (a deletion between the two moved the replay's start).
  std::vector<spill::SegmentInfo> segs;
  uint64_t total = 0;
  for (const uint64_t t0 = now_ns(); now_ns() - t0 < 20'000'000'000ull;) {
    segs = spill::list_segments(pdir);
    total = 0;
    for (auto& sg : segs) total += sg.size;
    if (total <= (2u << 20) || segs.size() <= 1) break;
    timespec ts{0, 10'000'000};  // polling the directory for the daemon's deletion
    nanosleep(&ts, nullptr);
  }
  INFO(segs.size() << " segments, " << total << " bytes");
  CHECK(total <= (2u << 20));
  REQUIRE(!segs.empty());
  CHECK(segs.front().first_seq > 1);
  check_log_range(pdir, segs.front().first_seq, n);
  // A replay from earliest starts at the earliest record kept.
  ReplayOptions ro;
  ro.state_dir = dm.d.state + "/log";
  ro.start = StartAt::earliest();
  ReplaySubscriber r = replay_subscriber(bus, "dur.api", ro);
  expect_stream(r, segs.front().first_seq, n - segs.front().first_seq + 1);
  REQUIRE(dm.d.stop());
}

// Policy `spill` for every subscriber (docs/spill-log.md): a plain anonymous
// Subscriber never holds the producer back. Here it reads nothing while the producer
// publishes ~40 laps of a 64 KiB ring (a tethered subscriber would stop the producer
// within one lap: each claim would wait its 5 s and fail); it then reads every
// message in order, intact, from the log and then the ring, and goes on live.
TEST_CASE("a plain subscriber of a spill topic never holds the producer back and misses nothing",
          "[spill][daemon]") {
  Daemon dm("plain");
  REQUIRE(dm.d.start());
  Bus bus = Bus::connect(dm.d.sock);
  bus.create_topic("spill.plain", durable_topic(64 << 10));
  Subscriber sub = bus.subscriber("spill.plain");
  REQUIRE(sub.spilling());
  SubscriberOptions tethered_opts;
  tethered_opts.log_fallback = false;  // the opt-out: a plain tethered subscriber
  CHECK_FALSE(bus.subscriber("spill.plain", tethered_opts).spilling());
  PublisherOptions po = patient_publisher();
  po.block_timeout_ns = 5'000'000'000;  // held back by a subscriber: fails here
  Publisher pub = bus.publisher("spill.plain", po);
  const uint64_t n = 40'000;  // ~76 B frames on average: ~45 laps
  for (uint64_t i = 1; i <= n; ++i) REQUIRE(publish_one(pub, i) == i);
  auto read = [&](uint64_t first, uint64_t last) {
    View v;
    for (uint64_t s = first; s <= last; ++s) {
      Status st = sub.poll_wait(v, 10'000'000'000);  // watchdog
      INFO("sequence " << s << " received " << sub.stats().received << " lapped " << sub.stats().lapped);
      REQUIRE(st == Status::ok);
      REQUIRE(v.sequence() == s);
      REQUIRE(payload_ok(s, v.data(), v.size()));
      sub.release(v);
    }
  };
  read(1, n);
  // Live: the next messages come as they are published (from the ring once caught up).
  for (uint64_t i = n + 1; i <= n + 100; ++i) {
    REQUIRE(publish_one(pub, i) == i);
    read(i, i);
  }
  View v;
  CHECK(sub.poll(v) == Status::empty);
  CHECK(sub.stats().received == n + 100);
  sub.close();
  pub.close();
  REQUIRE(dm.d.stop());
}

// The messaging contract's dead letters (docs/messaging.md): a handler that rejects a
// message sends it to <topic>.dlq with its envelope, kept by a durable dead-letter
// topic and printed by `shmbus replay` as JSON, decoded.
TEST_CASE("a rejected message lands in a durable <topic>.dlq and replays as JSON with its envelope",
          "[spill][daemon][cli][contract]") {
  Daemon dm("dlq");
  REQUIRE(dm.d.start());
  const std::string err = dm.d.dir + "/cli.err";
  REQUIRE(run(dm.cli({"topic", "create", "orders.done"}), err).code() == 0);
  REQUIRE(
      run(dm.cli({"topic", "create", "orders.done.dlq", "--durable", "--flush", "none", "--multi-producer"}),
          err)
          .code() == 0);
  Bus bus = Bus::connect(dm.d.sock);
  Publisher pub = bus.publisher("orders.done", patient_publisher());
  for (int i = 0; i < 5; ++i) {
    const std::string m = "order-" + std::to_string(i);
    REQUIRE(pub.offer(m.data(), m.size(), uint64_t(700 + i)) == Status::ok);
  }
  HandlerOptions o;
  o.name = "fulfilment";
  int acked = 0;
  {
    HandlerRunner run(
        bus, "orders.done",
        [&](const View& v) {
          if (std::string(reinterpret_cast<const char*>(v.data()), v.size()) == "order-3")
            return Outcome::reject("unknown customer", 404);
          ++acked;
          return Outcome::ack();
        },
        o);
    // The five above came before the runner joined (it starts at the tail): not its own.
    for (int i = 5; i < 10; ++i) {
      const std::string m = "order-" + std::to_string(i == 8 ? 3 : i);
      REQUIRE(pub.offer(m.data(), m.size(), uint64_t(700 + i)) == Status::ok);
    }
    while (run.step(0)) {
    }
    CHECK(run.stats().dead_lettered == 1);
  }
  CHECK(acked == 4);
  Run r = run(dm.cli({"replay", "orders.done.dlq", "--from", "earliest", "--count", "1"}), err);
  INFO(r.err);
  REQUIRE(r.code() == 0);
  auto ls = lines(r.out);
  REQUIRE(ls.size() == 1);
  INFO(ls[0]);
  CHECK(ls[0].find("\"code\":404") != std::string::npos);
  CHECK(ls[0].find("\"message\":\"unknown customer\"") != std::string::npos);
  CHECK(ls[0].find("\"attempts\":1") != std::string::npos);
  CHECK(ls[0].find("\"handler\":\"fulfilment\"") != std::string::npos);
  CHECK(ls[0].find("\"reason\":\"rejected\"") != std::string::npos);
  CHECK(ls[0].find("\"originalTopic\":\"orders.done\"") != std::string::npos);
  CHECK(ls[0].find("\"sequence\":\"9\"") != std::string::npos);  // 64-bit as strings in capnp JSON
  CHECK(ls[0].find("\"messageId\":\"708\"") != std::string::npos);
  CHECK(ls[0].find("\"payload\":[111,114,100,101,114,45,51]") != std::string::npos);  // "order-3"
}

// `shmbus dlq replay` (docs/messaging.md): dead letters go back to their original
// topic with their original payload, message id and schema id; --to sends them
// elsewhere; --count stops early; the rest of the stream was handled meanwhile.
TEST_CASE("shmbus dlq replay re-drives dead letters to their topic with the original payload and schema id",
          "[spill][daemon][cli][contract]") {
  Daemon dm("dlqre");
  REQUIRE(dm.d.start());
  const std::string err = dm.d.dir + "/cli.err";
  REQUIRE(run(dm.cli({"topic", "create", "orders.rd", "--multi-producer"}), err).code() == 0);
  REQUIRE(run(dm.cli({"topic", "create", "orders.other", "--multi-producer"}), err).code() == 0);
  REQUIRE(
      run(dm.cli({"topic", "create", "orders.rd.dlq", "--durable", "--flush", "none", "--multi-producer"}),
          err)
          .code() == 0);
  Bus bus = Bus::connect(dm.d.sock);
  // The original messages: Quote-typed; instrument 13 is poison.
  auto quote_bytes = [](uint32_t instrument) {
    capnp::MallocMessageBuilder mb;
    mb.initRoot<schema::Quote>().setInstrumentId(instrument);
    auto f = capnp::messageToFlatArray(mb);
    return std::string(reinterpret_cast<const char*>(f.asBytes().begin()), f.asBytes().size());
  };
  const uint64_t quote_id = capnp::typeId<schema::Quote>();
  std::vector<std::string> poison;
  {
    HandlerOptions o;
    o.name = "pricer";
    int acked = 0;
    HandlerRunner run(
        bus, "orders.rd",
        [&](const View& v) {
          uint32_t inst = 0;
          if (read_message<schema::Quote>(v, [&](schema::Quote::Reader q) { inst = q.getInstrumentId(); }) !=
              Status::ok)
            return Outcome::reject("undecodable");
          if (inst == 13) return Outcome::reject("instrument 13 is suspended", 409);
          ++acked;
          return Outcome::ack();
        },
        o);
    Publisher pub = bus.publisher("orders.rd", patient_publisher());
    for (uint32_t i = 0; i < 10; ++i) {
      const std::string b = quote_bytes(i % 5 == 3 ? 13 : i);
      if (i % 5 == 3) poison.push_back(b);
      REQUIRE(pub.offer(b.data(), b.size(), 800 + i, quote_id) == Status::ok);
    }
    while (run.step(0)) {
    }
    CHECK(run.stats().dead_lettered == 2);
    CHECK(acked == 8);
  }
  Subscriber back = bus.subscriber("orders.rd");
  Subscriber other = bus.subscriber("orders.other");
  Run r = run(dm.cli({"dlq", "replay", "orders.rd.dlq"}), err);
  INFO(r.out << r.err);
  REQUIRE(r.code() == 0);
  CHECK(lines(r.out).size() == 2);
  CHECK(r.err.find("2 dead letters re-driven, 0 failed") != std::string::npos);
  View v;
  for (int i = 0; i < 2; ++i) {
    REQUIRE(back.poll_wait(v, 5'000'000'000) == Status::ok);
    CHECK(v.schema_id() == quote_id);
    CHECK(v.message_id() == uint64_t(803 + 5 * i));
    CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == poison[size_t(i)]);
    back.release(v);
  }
  CHECK(back.poll(v) == Status::empty);
  // --to and --count: the first dead letter only, to another topic.
  r = run(dm.cli({"--json", "dlq", "replay", "orders.rd.dlq", "--to", "orders.other", "--count", "1"}), err);
  INFO(r.out << r.err);
  REQUIRE(r.code() == 0);
  auto ls = lines(r.out);
  REQUIRE(ls.size() == 1);
  CHECK(ls[0].find("\"to\":\"orders.other\"") != std::string::npos);
  REQUIRE(other.poll_wait(v, 5'000'000'000) == Status::ok);
  CHECK(v.message_id() == 803);
  CHECK(std::string(reinterpret_cast<const char*>(v.data()), v.size()) == poison[0]);
  other.release(v);
  CHECK(other.poll(v) == Status::empty);
  CHECK(back.poll(v) == Status::empty);
  // A DLQ that is not durable is refused with the reason.
  REQUIRE(run(dm.cli({"topic", "create", "orders.tmp.dlq"}), err).code() == 0);
  r = run(dm.cli({"dlq", "replay", "orders.tmp.dlq"}), err);
  CHECK(r.code() == 1);
  CHECK(r.err.find("not durable") != std::string::npos);
}

// A consumer group on a `spill` topic (issue 11, docs/messaging.md "Group members on
// durable topics: reading the log"): the group's committed position left the ring
// while no member held the partition (its parked slot expired, the producer went on
// for many laps). The next member starts from the committed position, reading the
// log, then the ring, with no gap and no duplicate; one that closes during the
// catch-up parks at its last release, and the member that resumes that parked slot
// (its position lapped) reads the log again from there instead of taking a later
// lap's frame for the next one.
TEST_CASE("a member of a durable topic's group replays from the log what the ring lost",
          "[spill][daemon][group]") {
  Daemon dm("grouplog");
  dm.d.extra = {"--durable-hold-ms", "0"};  // a parked slot expires at once: the producer goes on
  REQUIRE(dm.d.start());
  const std::string topic = "grp.log";
  const uint64_t k = 60, n = 20'000;  // ~76 B frames in 64 KiB: ~25 laps after k
  {
    Bus bus = Bus::connect(dm.d.sock);
    bus.create_topic(topic, durable_topic(64 << 10));
    Publisher pub = bus.publisher(topic, patient_publisher());
    GroupSubscriber m = bus.group_subscriber(topic, "g", {});  // a new group starts at the tail
    REQUIRE(m.partitions() == std::vector<uint32_t>{0});
    for (uint64_t i = 1; i <= k; ++i) REQUIRE(publish_one(pub, i) == i);
    GroupView v;
    for (uint64_t s = 1; s <= k; ++s) {
      REQUIRE(m.poll_wait(v, 10'000'000'000) == Status::ok);
      REQUIRE(v.sequence() == s);
      m.release(v);
    }
    m.close();  // committed: k; parked, then expired by the daemon
    for (uint64_t i = k + 1; i <= n; ++i) REQUIRE(publish_one(pub, i) == i);
    REQUIRE(wait_durable(pub, n, 20'000'000'000) == Status::ok);
  }
  // The daemon restarts with parked slots kept (10 s): the next member's close
  // during its catch-up parks it.
  dm.d.crash();
  dm.d.extra = {"--durable-hold-ms", "60000"};
  REQUIRE(dm.d.start());
  Bus bus = Bus::connect(dm.d.sock);
  auto read = [&](GroupSubscriber& g, uint64_t first, uint64_t last) {
    GroupView v;
    for (uint64_t s = first; s <= last; ++s) {
      const Status st = g.poll_wait(v, 10'000'000'000);  // watchdog
      INFO("sequence " << s << " received " << g.stats().received);
      REQUIRE(st == Status::ok);
      REQUIRE(v.sequence() == s);
      REQUIRE(payload_ok(s, v.data(), v.size()));
      g.release(v);
    }
  };
  const uint64_t half = k + (n - k) / 2;
  {
    GroupSubscriber m2 = bus.group_subscriber(topic, "g", {});
    read(m2, k + 1, half);  // from the log: the ring lost these long ago
    GroupView v;
    REQUIRE(m2.poll_wait(v, 10'000'000'000) == Status::ok);  // polled, not released: read again
    CHECK(v.sequence() == half + 1);
    m2.close();  // parked at half, below what the ring holds
  }
  GroupSubscriber m3 = bus.group_subscriber(topic, "g", {});
  read(m3, half + 1, n);
  // Caught up: live messages come from the ring, in order, none twice.
  Publisher pub = bus.publisher(topic, patient_publisher());
  for (uint64_t i = n + 1; i <= n + 500; ++i) {
    REQUIRE(publish_one(pub, i) == i);
    if (i % 50 == 0) read(m3, i - 49, i);
  }
  GroupView v;
  CHECK(m3.poll(v) == Status::empty);
  m3.close();
  pub.close();
  REQUIRE(dm.d.stop());
}

// The same catch-up with the log gone (its files deleted: retention, an operator):
// the member must not skip what the ring lost as if it were padding. It says lapped
// once, then reads on from the ring, in order.
TEST_CASE("a group member whose committed position is in no log says lapped, then reads on",
          "[spill][daemon][group]") {
  Daemon dm("grouplog-gone");
  dm.d.extra = {"--durable-hold-ms", "0"};
  REQUIRE(dm.d.start());
  const std::string topic = "grp.gone";
  const uint64_t k = 60, n = 8'000;
  Bus bus = Bus::connect(dm.d.sock);
  bus.create_topic(topic, durable_topic(64 << 10));
  Publisher pub = bus.publisher(topic, patient_publisher());
  {
    GroupSubscriber m = bus.group_subscriber(topic, "g", {});
    for (uint64_t i = 1; i <= k; ++i) REQUIRE(publish_one(pub, i) == i);
    GroupView v;
    for (uint64_t s = 1; s <= k; ++s) {
      REQUIRE(m.poll_wait(v, 10'000'000'000) == Status::ok);
      m.release(v);
    }
  }  // committed: k; expired at once
  for (uint64_t i = k + 1; i <= n; ++i) REQUIRE(publish_one(pub, i) == i);
  REQUIRE(wait_durable(pub, n, 20'000'000'000) == Status::ok);
  const std::string pdir = spill::partition_dir(dm.d.state + "/log", topic, 0);
  size_t removed = 0;
  for (auto& e : std::filesystem::directory_iterator(pdir))
    if (e.is_regular_file()) removed += std::filesystem::remove(e.path()) ? 1 : 0;
  REQUIRE(removed > 0);
  GroupSubscriber m2 = bus.group_subscriber(topic, "g", {});
  GroupView v;
  REQUIRE(m2.poll_wait(v, 10'000'000'000) == Status::lapped);
  {
    // The member's cursor left the lost positions behind: committed where the
    // producer stands (the archiver had all of it), not below the ring, where it
    // would hold the producer with nothing in the ring to read (a stall, seen under
    // ASan once the producer refreshed its limit).
    auto c = DaemonClient::connect({dm.d.sock});
    auto d = c->call([&](proto::Request::Builder r) { r.setDescribeTopic(topic); });
    uint64_t committed = 0;
    for (auto rec : d.get().getTopic().getDurable())
      if (rec.getName() == GroupSubscriber::durable_name("g")) committed = rec.getPosition();
    auto st = c->call([&](proto::Request::Builder r) { r.setStat(topic); });
    CHECK(committed == st.get().getStats()[0].getPartitions()[0].getProducerPosition());
  }
  // On from the ring: whatever it still holds, then live, consecutive.
  for (uint64_t i = n + 1; i <= n + 100; ++i) REQUIRE(publish_one(pub, i) == i);
  REQUIRE(m2.poll_wait(v, 10'000'000'000) == Status::ok);
  uint64_t s = v.sequence();
  CHECK(s > k + 1);
  m2.release(v);
  while (s < n + 100) {
    REQUIRE(m2.poll_wait(v, 10'000'000'000) == Status::ok);
    REQUIRE(v.sequence() == ++s);
    REQUIRE(payload_ok(s, v.data(), v.size()));
    m2.release(v);
  }
  m2.close();
  pub.close();
  REQUIRE(dm.d.stop());
}
