// shmbus: the command-line tool for shmbusd.
//   shmbus topic create NAME [--partitions N] [--capacity B] [--policy block|fail|spill]
//                            [--multi-producer] [--slots N] [--schema-id ID]
//                            [--durable] [--flush none|interval|batch] [--flush-interval-ms N]
//                            [--retention-bytes B] [--retention-age S] [--segment-bytes B]
//                            [--publish-uid U]... [--subscribe-uid U]... [--publish-gid G]... [--subscribe-gid G]...
//   shmbus topic list | describe NAME | delete NAME
//   shmbus stat [TOPIC] [--watch] [--interval S]
//   shmbus top [TOPIC] [--once] [--interval S] [--sort name|rate|bytes|lag]
//   shmbus hz TOPIC [--partition P] [--count N] [--window N] [--duration S]
//   shmbus doctor
//   shmbus health
//   shmbus replay TOPIC [--partition P] [--from earliest|latest|seq:N|time:NS|time:ISO|mono:NS]
//                       [--to seq:N|time:..|mono:NS] [--count N] [--follow] [--progress]
//   shmbus tail TOPIC [--partition P] [--count N]
//   shmbus schema show TOPIC [--version N] | history TOPIC
//   shmbus schema check|register TOPIC FILE.capnp:Type [--import-path DIR]...
//   shmbus schema mode TOPIC backward|forward|full|none
//   shmbus pub TOPIC (--json TEXT | --json-file F|-) [--schema F.capnp:Type] [--count N]
//                    [--rate HZ] [--partition P | --key K] [--message-id N]   (tools/cli/pub.cpp)
//                    [--correlation-id N] [--causation-id N] [--reply-to T] [--traceparent TP]
//   shmbus record TOPIC... -o FILE [--duration S] [--count N] [--tethered]   (tools/cli/record.cpp)
//   shmbus play FILE [--speed X] [--topic-map A=B]... [--check]
//   shmbus bench [--topic T] [--size B] [--count N] [--pubs P] [--subs S] [--rate HZ] (tools/cli/bench.cpp)
//   shmbus group TOPIC                                                      (tools/cli/group.cpp)
// Human-readable by default, --json for scripts. Exit 0 ok, 1 error, 2 not serving.
// replay/tail print one JSON object per message (the payload decoded with the
// topic's Cap'n Proto schema when it is compiled into this tool, else with the
// schema registered for the topic in shmbusd).
#include <liburing.h>
#include <linux/membarrier.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <map>
#include <sstream>

#include <CLI/CLI.hpp>
#include <capnp/compat/json.h>
#include <capnp/dynamic.h>
#include <capnp/schema-parser.h>
#include <capnp/serialize.h>
#include <kj/filesystem.h>

#include <optional>

#include "market.capnp.h"
#include "envelope.capnp.h"
#include "shmbus/daemon_client.hpp"
#include "shmbus/envelope.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/schema_nodes.hpp"
#include "shmbus/subscriber.hpp"
#include "testmsg.capnp.h"
#include "cli/common.hpp"

using namespace shmbus;
using namespace shmbus::cli;

namespace {

const char* flush_name(proto::FlushPolicy f) {
  switch (f) {
    case proto::FlushPolicy::NONE: return "none";
    case proto::FlushPolicy::INTERVAL: return "interval";
    case proto::FlushPolicy::BATCH: return "batch";
  }
  return "?";
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
  char sid[24];  // ids in hex everywhere (as tail and schema history print them)
  std::snprintf(sid, sizeof sid, "0x%016" PRIx64, s.getSchemaId());
  std::ostringstream o;
  o << "{\"name\":" << jstr(s.getName().cStr()) << ",\"partitions\":" << s.getPartitions()
    << ",\"capacity\":" << s.getCapacity() << ",\"max_payload\":" << s.getMaxPayload() << ",\"policy\":\""
    << policy_name(s.getPolicy()) << "\",\"multi_producer\":" << (s.getMultiProducer() ? "true" : "false")
    << ",\"slots\":" << s.getSlots() << ",\"schema_id\":\"" << sid << "\""
    << ",\"owner_uid\":" << t.getOwnerUid() << ",\"created_ns\":" << t.getCreatedNs()
    << ",\"access\":{\"publish_uids\":" << list_json(a.getPublishUids())
    << ",\"publish_gids\":" << list_json(a.getPublishGids())
    << ",\"subscribe_uids\":" << list_json(a.getSubscribeUids())
    << ",\"subscribe_gids\":" << list_json(a.getSubscribeGids()) << "}";
  o << ",\"durable\":" << (s.getDurable() ? "true" : "false");
  if (s.getDurable()) {
    o << ",\"flush\":\"" << flush_name(s.getFlush()) << "\",\"flush_interval_ms\":" << s.getFlushIntervalMs()
      << ",\"retention_bytes\":" << s.getRetentionBytes() << ",\"retention_age_s\":" << s.getRetentionAgeS()
      << ",\"segment_bytes\":" << s.getSegmentBytes() << ",\"log_dir\":" << jstr(t.getLogDir().cStr())
      << ",\"archived\":[";
    for (uint32_t i = 0; i < t.getArchived().size(); ++i) {
      auto ar = t.getArchived()[i];
      o << (i ? "," : "") << "{\"partition\":" << ar.getPartition()
        << ",\"archived_seq\":" << ar.getArchivedSeq() << ",\"durable_seq\":" << ar.getDurableSeq()
        << ",\"error\":" << ar.getError() << "}";
    }
    o << "]";
  }
  o << "}";
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
  if (!s.getDurable()) {
    std::printf("  not durable\n");
    return;
  }
  std::printf("  durable: flush %s", flush_name(s.getFlush()));
  if (s.getFlush() == proto::FlushPolicy::INTERVAL) std::printf(" every %u ms", s.getFlushIntervalMs());
  std::printf(", retention %s bytes / %s s, segment %s bytes\n  log %s/%s/<partition>/\n",
              s.getRetentionBytes() ? std::to_string(s.getRetentionBytes()).c_str() : "unlimited",
              s.getRetentionAgeS() ? std::to_string(s.getRetentionAgeS()).c_str() : "unlimited",
              s.getSegmentBytes() ? std::to_string(s.getSegmentBytes()).c_str() : "67108864 (default)",
              t.getLogDir().cStr(), s.getName().cStr());
  for (auto ar : t.getArchived())
    std::printf("  partition %u: archived up to seq %" PRIu64 ", durable up to seq %" PRIu64 "%s\n",
                ar.getPartition(), ar.getArchivedSeq(), ar.getDurableSeq(),
                ar.getError() ? (std::string(", FAILING: ") + strerror(ar.getError())).c_str() : "");
}

// ---------------------------------------------------------------- replay / tail

// The message schemas compiled into this tool, by Cap'n Proto type id.

std::string base64(const std::byte* p, size_t n) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string o;
  o.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = uint32_t(uint8_t(p[i])) << 16;
    if (i + 1 < n) v |= uint32_t(uint8_t(p[i + 1])) << 8;
    if (i + 2 < n) v |= uint32_t(uint8_t(p[i + 2]));
    o += tbl[(v >> 18) & 63];
    o += tbl[(v >> 12) & 63];
    o += i + 1 < n ? tbl[(v >> 6) & 63] : '=';
    o += i + 2 < n ? tbl[v & 63] : '=';
  }
  return o;
}

// Parses "earliest", "latest", "seq:N", "time:NS" / "time:ISO-8601" (wall clock,
// converted to the frames' CLOCK_MONOTONIC), "mono:NS" (CLOCK_MONOTONIC as stored).
// Returns false with `err` set on a bad spec.
uint64_t wall_to_mono(uint64_t wall_ns) {
  timespec r, m;
  clock_gettime(CLOCK_REALTIME, &r);
  clock_gettime(CLOCK_MONOTONIC, &m);
  const int64_t off = (int64_t(r.tv_sec) - int64_t(m.tv_sec)) * 1'000'000'000ll + (r.tv_nsec - m.tv_nsec);
  const int64_t v = int64_t(wall_ns) - off;
  return v < 0 ? 0 : uint64_t(v);
}

uint64_t mono_to_wall(uint64_t mono_ns) {
  timespec r, m;
  clock_gettime(CLOCK_REALTIME, &r);
  clock_gettime(CLOCK_MONOTONIC, &m);
  const int64_t off = (int64_t(r.tv_sec) - int64_t(m.tv_sec)) * 1'000'000'000ll + (r.tv_nsec - m.tv_nsec);
  return uint64_t(int64_t(mono_ns) + off);
}

bool parse_u64(const std::string& s, uint64_t& v) {
  if (s.empty() || s.size() > 20) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  errno = 0;
  char* end = nullptr;
  v = std::strtoull(s.c_str(), &end, 10);
  return errno == 0 && end && *end == 0;
}

// YYYY-MM-DDTHH:MM:SS[.fraction][Z|+HH:MM|-HH:MM]; no zone = UTC.
bool parse_iso(const std::string& s, uint64_t& wall_ns) {
  int Y, M, D, h, m, sec, n = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2d%*1[T ]%2d:%2d:%2d%n", &Y, &M, &D, &h, &m, &sec, &n) != 6)
    return false;
  size_t i = size_t(n);
  uint64_t frac = 0;
  if (i < s.size() && s[i] == '.') {
    ++i;
    uint64_t scale = 100'000'000;
    size_t digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (scale) frac += uint64_t(s[i] - '0') * scale, scale /= 10;
      ++i, ++digits;
    }
    if (!digits) return false;
  }
  int64_t zone_s = 0;
  if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
    ++i;
  } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    int zh, zm;
    if (std::sscanf(s.c_str() + i + 1, "%2d:%2d", &zh, &zm) != 2) return false;
    zone_s = (s[i] == '+' ? 1 : -1) * (zh * 3600 + zm * 60);
    i += 6;
  }
  if (i != s.size() || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60) return false;
  tm t{};
  t.tm_year = Y - 1900;
  t.tm_mon = M - 1;
  t.tm_mday = D;
  t.tm_hour = h;
  t.tm_min = m;
  t.tm_sec = sec;
  const time_t secs = timegm(&t) - zone_s;
  if (secs < 0 || uint64_t(secs) >= 18'000'000'000ull) return false;  // ns must fit in 64 bits
  wall_ns = uint64_t(secs) * 1'000'000'000ull + frac;
  return true;
}

struct Point {
  enum Kind { earliest, latest, seq, mono } kind = earliest;
  uint64_t v = 0;
};

// Where `replay` and `dlq replay` read from: the topic's log dir (or the daemon's
// state dir + /log for an older daemon that does not say), the partition, the start.
template <class Client, class Info>
ReplayOptions replay_options(Client& c, const Info& info, uint32_t partition, const Point& from) {
  ReplayOptions ro;
  ro.partition = partition;
  ro.state_dir = info.getLogDir().cStr();
  if (ro.state_dir.empty()) {
    auto h = c.call([](proto::Request::Builder r) { r.setHealth(); });
    ro.state_dir = std::string(h.get().getHealth().getStateDir().cStr()) + "/log";
  }
  switch (from.kind) {
    case Point::earliest: ro.start = StartAt::earliest(); break;
    case Point::latest: ro.start = StartAt::latest(); break;
    case Point::seq: ro.start = StartAt::sequence(from.v); break;
    case Point::mono: ro.start = StartAt::time(from.v); break;
  }
  return ro;
}

bool parse_point(const std::string& s, Point& p, std::string& err) {
  uint64_t v = 0;
  if (s == "earliest") {
    p = {Point::earliest, 0};
  } else if (s == "latest") {
    p = {Point::latest, 0};
  } else if (s.rfind("seq:", 0) == 0 && parse_u64(s.substr(4), v)) {
    p = {Point::seq, v};
  } else if (s.rfind("mono:", 0) == 0 && parse_u64(s.substr(5), v)) {
    p = {Point::mono, v};
  } else if (s.rfind("time:", 0) == 0 && (parse_u64(s.substr(5), v) || parse_iso(s.substr(5), v))) {
    p = {Point::mono, wall_to_mono(v)};
  } else {
    err = "bad position '" + s +
          "': expected earliest, latest, seq:N, time:<ns since the epoch>, time:<ISO 8601, e.g. "
          "2026-11-27T17:00:00.5Z> or mono:<CLOCK_MONOTONIC ns>";
    return false;
  }
  return true;
}

// One JSON line per message. Decoding failures never stop the stream.
class Printer {
 public:
  Printer(uint32_t partition, uint64_t topic_schema) : partition_(partition), topic_schema_(topic_schema) {}
  // The topic's registered schema (shmbusd's schema registry): decodes payloads of
  // its root type that are not compiled into this tool (and, when the topic declares
  // no schema id, payloads without one).
  void use_registered(SchemaBundle b) {
    if (!topic_schema_) topic_schema_ = b.root_id();
    registered_.emplace(std::move(b));
  }
  void print(const View& frame) {
    std::string line = "{\"partition\":" + std::to_string(partition_) +
                       ",\"seq\":" + std::to_string(frame.sequence()) +
                       ",\"ts_ns\":" + std::to_string(frame.timestamp_ns()) +
                       ",\"wall_ns\":" + std::to_string(mono_to_wall(frame.timestamp_ns())) +
                       ",\"producer\":" + std::to_string(frame.producer_id()) + ",\"message_id\":\"" +
                       hex64(frame.message_id()) + "\"";
    // An enveloped message (docs/messaging.md): the envelope's fields, then its payload
    // decoded by the payload's own schema id.
    EnvelopedView ev;
    if (ev.open(frame) != Status::ok) {
      line += ",\"note\":\"malformed envelope\",\"len\":" + std::to_string(frame.size()) +
              ",\"payload_base64\":\"" + base64(frame.data(), frame.size()) + "\"}\n";
      std::fwrite(line.data(), 1, line.size(), stdout);
      return;
    }
    if (ev.enveloped()) line += ",\"envelope\":" + envelope_json(ev.envelope(), ev.payload().schema_id());
    const View& v = ev.payload();
    line += ",\"len\":" + std::to_string(v.size());
    const uint64_t id = v.schema_id() ? v.schema_id() : (ev.enveloped() ? 0 : topic_schema_);
    char idbuf[32];
    std::snprintf(idbuf, sizeof idbuf, "0x%016" PRIx64, id);
    line += ",\"schema_id\":\"" + std::string(idbuf) + "\"";
    capnp::StructSchema sch;
    std::string decoded, why;
    const bool found = find_schema(id, sch) || (registered_ && id && registered_->root_id() == id &&
                                                (sch = registered_->root_schema(), true));
    if (!found) {
      why =
          id ? "schema neither compiled into shmbus nor registered for the topic" : "topic has no schema id";
      if (!warned_) {
        std::fprintf(stderr,
                     "shmbus: schema %s is not known to this tool (%s); printing payloads as base64\n", idbuf,
                     why.c_str());
        warned_ = true;
      }
    } else {
      try {
        const size_t words = (v.size() + 7) / 8;
        buf_.resize(std::max<size_t>(words, 1));
        std::memset(buf_.data(), 0, buf_.size() * 8);
        std::memcpy(buf_.data(), v.data(), v.size());
        capnp::ReaderOptions ro;
        ro.traversalLimitInWords = words * 8 + 1024;
        ro.nestingLimit = 64;
        capnp::FlatArrayMessageReader rd(kj::arrayPtr(buf_.data(), words), ro);
        auto root = rd.getRoot<capnp::DynamicStruct>(sch);
        decoded = json_.encode(root).cStr();
        line += ",\"type\":" + jstr(sch.getShortDisplayName().cStr()) + ",\"message\":" + decoded;
      } catch (const kj::Exception& e) {
        why = std::string("undecodable: ") + e.getDescription().cStr();
      }
    }
    if (decoded.empty())
      line += ",\"note\":" + jstr(why) + ",\"payload_base64\":\"" + base64(v.data(), v.size()) + "\"";
    line += "}\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
  }

 private:
  uint32_t partition_;
  uint64_t topic_schema_;
  capnp::JsonCodec json_;
  std::optional<SchemaBundle> registered_;
  std::vector<capnp::word> buf_;
  bool warned_ = false;
};

struct ReplayArgs {
  std::string topic;
  uint32_t partition = 0;
  std::string from = "earliest", to;
  uint64_t count = 0;
  bool follow = false, progress = false;
};

int run_replay(DaemonClient& c, const std::string& socket, const ReplayArgs& a, bool tail) {
  Point from, to;
  std::string err;
  if (!parse_point(a.from, from, err)) {
    std::fprintf(stderr, "shmbus: --from: %s\n", err.c_str());
    return 1;
  }
  bool has_to = !a.to.empty();
  if (has_to && (!parse_point(a.to, to, err) || to.kind == Point::earliest || to.kind == Point::latest)) {
    std::fprintf(stderr, "shmbus: --to: %s\n",
                 err.empty() ? "expected seq:N, time:... or mono:NS" : err.c_str());
    return 1;
  }
  auto rep = c.call([&](proto::Request::Builder r) { r.setDescribeTopic(a.topic); });
  auto info = rep.get().getTopic();
  auto spec = info.getSpec();
  if (a.partition >= spec.getPartitions()) {
    std::fprintf(stderr, "shmbus: topic '%s' has no partition %u (it has %u)\n", a.topic.c_str(), a.partition,
                 spec.getPartitions());
    return 1;
  }
  const bool durable = spec.getDurable();
  if (!durable && !tail) {
    std::fprintf(stderr,
                 "shmbus: topic '%s' is not durable: it has no log to replay (create it with --durable or "
                 "--policy spill; `shmbus tail` follows any topic live)\n",
                 a.topic.c_str());
    return 1;
  }
  if (!durable && from.kind != Point::latest) {
    std::fprintf(stderr, "shmbus: topic '%s' is not durable: only --from latest is possible\n",
                 a.topic.c_str());
    return 1;
  }
  // Where history ends for a replay without --follow: the partition's next sequence now.
  uint64_t end_seq = 0;
  {
    auto st = c.call([&](proto::Request::Builder r) { r.setStat(a.topic); });
    for (auto ts : st.get().getStats())
      for (auto ps : ts.getPartitions())
        if (ps.getPartition() == a.partition) end_seq = ps.getNextSequence();
  }
  const bool follow = a.follow || tail;
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
  std::signal(SIGPIPE, SIG_DFL);
  Bus bus = Bus::connect(socket);
  Printer pr(a.partition, spec.getSchemaId());
  try {  // the registered schema, when the topic has one (older daemons: none)
    auto h = c.call([&](proto::Request::Builder r) { r.initSchemaHistory().setTopic(a.topic); });
    for (auto v : h.get().getSchemaHistory().getVersions())
      if (v.hasNodes()) pr.use_registered(SchemaBundle::parse(v.getNodes(), v.getRootId()));
  } catch (const Error&) {
  }
  const bool show_progress = !follow && (a.progress || isatty(2));
  uint64_t printed = 0, first_seq = 0;
  uint64_t last_progress_ns = 0;
  auto done = [&](const View& v) {
    if (a.count && printed >= a.count) return true;
    if (has_to && to.kind == Point::seq && v.sequence() > to.v) return true;
    if (has_to && to.kind == Point::mono && v.timestamp_ns() > to.v) return true;
    return false;
  };
  auto progress = [&](uint64_t seq, bool final) {
    if (!show_progress || end_seq <= 1) return;
    uint64_t now = shm::monotonic_ns();
    if (!final && now - last_progress_ns < 100'000'000) return;
    last_progress_ns = now;
    const uint64_t lo = first_seq ? first_seq : seq;
    const uint64_t total = end_seq > lo ? end_seq - lo : 1;
    const double f = std::min(1.0, double(seq + 1 - lo) / double(total));
    char bar[41];
    const int fill = int(f * 40);
    for (int i = 0; i < 40; ++i) bar[i] = i < fill ? '#' : '.';
    bar[40] = 0;
    std::fprintf(stderr, "\r[%s] %5.1f%%  %" PRIu64 " messages, seq %" PRIu64 " of %" PRIu64 "%s", bar,
                 f * 100.0, printed, seq, end_seq - 1, final ? "\n" : "");
  };
  int64_t idle_ns = 200'000'000;
  if (durable) {
    ReplaySubscriber sub = replay_subscriber(bus, a.topic, replay_options(c, info, a.partition, from));
    View v;
    uint64_t corrupt = 0;
    if (!follow &&
        (end_seq <= 1 || from.kind == Point::latest || (from.kind == Point::seq && from.v >= end_seq)))
      return 0;  // nothing between the start point and the current end
    while (!g_stop) {
      Status s = sub.poll_wait(v, idle_ns);
      if (s == Status::corrupt) {
        ++corrupt;
        std::fprintf(stderr, "shmbus: a corrupt log record was skipped (never printed)\n");
        v = View{};
        continue;
      }
      if (s != Status::ok) {
        v = View{};
        // Nothing more within idle_ns and already reading the live ring: the history
        // (up to the end as of our start) is through, whatever the filters skipped.
        if (!follow && sub.source() == ReplaySource::ring) break;
        continue;
      }
      if (done(v)) break;
      if (!first_seq) first_seq = v.sequence();
      pr.print(v);
      ++printed;
      progress(v.sequence(), false);
      const uint64_t last = v.sequence();
      sub.release(v);
      if (a.count && printed >= a.count) break;
      if (!follow && last + 1 >= end_seq) break;
      v = View{};
      if (follow) std::fflush(stdout);
    }
    if (printed) progress(sub.last_sequence(), true);
    if (sub.stats().gaps)
      std::fprintf(stderr, "shmbus: history before seq %" PRIu64 " was deleted by retention\n", first_seq);
    std::fflush(stdout);
    return corrupt ? 3 : 0;
  }
  // A non-durable topic: follow the live ring with an untethered cursor.
  SubscriberOptions so;
  so.partition = a.partition;
  so.tethered = false;
  Subscriber sub = bus.subscriber(a.topic, so);
  View v;
  while (!g_stop) {
    Status s = sub.poll_wait(v, idle_ns);
    if (s == Status::lapped) {
      std::fprintf(stderr, "shmbus: lapped by the producer (messages were missed)\n");
      continue;
    }
    if (s != Status::ok) continue;
    if (done(v)) break;
    pr.print(v);
    ++printed;
    sub.release(v);
    std::fflush(stdout);
    if (a.count && printed >= a.count) break;
  }
  return 0;
}

// ---------------------------------------------------------------- dlq replay

struct DlqArgs {
  std::string topic, to, from = "earliest";
  uint32_t partition = 0;
  uint64_t count = 0;
};

// Re-drives the dead letters of a durable `<topic>.dlq` (docs/messaging.md): each
// DeadLetter's original payload is published again, with its original message id and
// schema id, to its original topic and partition (or --to, partition 0 if the
// original partition does not exist there). One line per dead letter on stdout;
// the DLQ sequence to continue from on stderr.
int run_dlq_replay(DaemonClient& c, const std::string& socket, const DlqArgs& a, bool json) {
  Point from;
  std::string err;
  if (!parse_point(a.from, from, err)) {
    std::fprintf(stderr, "shmbus: --from: %s\n", err.c_str());
    return 1;
  }
  auto rep = c.call([&](proto::Request::Builder r) { r.setDescribeTopic(a.topic); });
  auto info = rep.get().getTopic();
  auto spec = info.getSpec();
  if (!spec.getDurable()) {
    std::fprintf(
        stderr,
        "shmbus: dead-letter topic '%s' is not durable: it keeps no dead letters to re-drive (create it "
        "with --durable before the handlers dead-letter anything)\n",
        a.topic.c_str());
    return 1;
  }
  if (a.partition >= spec.getPartitions()) {
    std::fprintf(stderr, "shmbus: topic '%s' has no partition %u\n", a.topic.c_str(), a.partition);
    return 1;
  }
  uint64_t end_seq = 0;
  {
    auto st = c.call([&](proto::Request::Builder r) { r.setStat(a.topic); });
    for (auto ts : st.get().getStats())
      for (auto ps : ts.getPartitions())
        if (ps.getPartition() == a.partition) end_seq = ps.getNextSequence();
  }
  if (end_seq <= 1 || from.kind == Point::latest || (from.kind == Point::seq && from.v >= end_seq)) {
    std::fprintf(stderr, "shmbus: no dead letters in %s from %s\n", a.topic.c_str(), a.from.c_str());
    return 0;
  }
  Bus bus = Bus::connect(socket);
  ReplaySubscriber sub = replay_subscriber(bus, a.topic, replay_options(c, info, a.partition, from));
  std::map<std::pair<std::string, uint32_t>, Publisher> pubs;
  std::map<std::string, uint32_t> parts;
  std::vector<capnp::word> buf;
  uint64_t redriven = 0, skipped = 0, failed = 0, last = 0;
  View v;
  while (!g_stop) {
    const Status ps = sub.poll_wait(v, 200'000'000);
    if (ps == Status::corrupt) {
      std::fprintf(stderr, "shmbus: a corrupt log record was skipped\n");
      continue;
    }
    if (ps != Status::ok) {
      if (sub.source() == ReplaySource::ring) break;  // the history is through
      continue;
    }
    last = v.sequence();
    std::string line;
    if (v.schema_id() != capnp::typeId<shmbus::schema::DeadLetter>()) {
      ++skipped;
      line = "{\"dlq_seq\":" + std::to_string(last) + ",\"skipped\":\"not a DeadLetter\"}";
    } else {
      // Copied once into aligned memory, read with limits (log bytes are untrusted).
      const size_t words = (v.size() + 7) / 8;
      buf.assign(std::max<size_t>(words, 1), capnp::word{});
      std::memcpy(buf.data(), v.data(), v.size());
      std::string target;
      uint32_t part = 0;
      uint64_t mid = 0, sid = 0;
      std::vector<std::byte> payload;
      std::string why;
      try {
        capnp::ReaderOptions rdo;
        rdo.traversalLimitInWords = words + 1024;
        rdo.nestingLimit = 16;
        capnp::FlatArrayMessageReader rd(kj::arrayPtr(buf.data(), words), rdo);
        auto d = rd.getRoot<shmbus::schema::DeadLetter>();
        target = a.to.empty() ? std::string(d.getOriginalTopic().cStr()) : a.to;
        part = a.to.empty() ? d.getPartition() : 0;
        mid = d.getMessageId();
        sid = d.getSchemaId();
        auto p = d.getPayload();
        payload.assign(reinterpret_cast<const std::byte*>(p.begin()),
                       reinterpret_cast<const std::byte*>(p.end()));
      } catch (const kj::Exception& e) {
        why = std::string("undecodable dead letter: ") + e.getDescription().cStr();
      }
      if (why.empty() && target.empty()) why = "the dead letter names no original topic (give --to)";
      Status st = Status::closed;
      if (why.empty()) {
        try {
          auto pi = parts.find(target);
          if (pi == parts.end()) pi = parts.emplace(target, bus.partitions(target)).first;
          if (part >= pi->second) part = 0;
          auto key = std::make_pair(target, part);
          auto it = pubs.find(key);
          if (it == pubs.end()) {
            PublisherOptions po;
            po.partition = part;
            po.block_timeout_ns = 10'000'000'000;
            it = pubs.emplace(key, bus.publisher(target, po)).first;
          }
          st = it->second.offer(payload.data(), payload.size(), mid, sid);
          if (st != Status::ok) why = std::string("publish: ") + to_string(st);
        } catch (const Error& e) {
          why = e.what();
        }
      }
      if (why.empty()) {
        ++redriven;
        if (json)
          line = "{\"dlq_seq\":" + std::to_string(last) + ",\"to\":" + jstr(target) +
                 ",\"partition\":" + std::to_string(part) + ",\"message_id\":\"" + hex64(mid) + "\"}";
        else
          line = "re-drove dlq seq " + std::to_string(last) + " to " + target + "[" + std::to_string(part) +
                 "], message id " + hex64(mid);
      } else {
        ++failed;
        line = json ? "{\"dlq_seq\":" + std::to_string(last) + ",\"error\":" + jstr(why) + "}"
                    : "dlq seq " + std::to_string(last) + " NOT re-driven: " + why;
      }
    }
    std::printf("%s\n", line.c_str());
    sub.release(v);
    if (a.count && redriven + failed >= a.count) break;
    if (last + 1 >= end_seq) break;
  }
  std::fflush(stdout);
  std::fprintf(stderr,
               "shmbus: %" PRIu64 " dead letters re-driven, %" PRIu64 " failed, %" PRIu64
               " skipped; continue with --from seq:%" PRIu64 "\n",
               redriven, failed, skipped, last + 1);
  return failed ? 1 : 0;
}

// ---- shmbus schema: the topic's registered schema versions (shmbusd's registry).

struct SchemaArgs {
  std::string topic, type, mode;
  uint32_t version = 0;
  std::vector<std::string> import_path;
};

std::string iso_time(uint64_t ns) {
  time_t s = time_t(ns / 1'000'000'000ull);
  struct tm tm {};
  gmtime_r(&s, &tm);
  char b[64];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

SchemaNodes parse_schema_arg(const SchemaArgs& a) { return parse_schema_file(a.type, a.import_path); }

int run_schema(DaemonClient& c, const std::string& what, const SchemaArgs& a, bool json) {
  if (what == "mode") {
    static const char* names[] = {"backward", "forward", "full", "none"};
    uint16_t m = 0;
    while (m < 4 && a.mode != names[m]) ++m;
    if (m == 4)
      throw Error(ErrorCode::invalid_argument, "mode '" + a.mode + "': backward, forward, full or none");
    c.call([&](proto::Request::Builder r) {
      auto q = r.initSetSchemaMode();
      q.setTopic(a.topic);
      q.setMode(proto::SchemaMode(m));
    });
    if (json)
      std::printf("{\"topic\":%s,\"mode\":\"%s\"}\n", jstr(a.topic).c_str(), names[m]);
    else
      std::printf("schema mode of '%s' is %s\n", a.topic.c_str(), names[m]);
    return 0;
  }
  if (what == "check" || what == "register") {
    const SchemaNodes n = parse_schema_arg(a);
    try {
      auto rep = c.call([&](proto::Request::Builder r) {
        auto s = r.initRegisterSchema();
        s.setTopic(a.topic);
        s.setRootId(n.root_id);
        s.setNodes(kj::arrayPtr(n.bytes.data(), n.bytes.size()));
        s.setRole(proto::Role::PUBLISHER);
        s.setCheckOnly(what == "check");
      });
      auto s = rep.get().getSchema();
      if (json)
        std::printf("{\"accepted\":true,\"version\":%u,\"stored\":%s}\n", s.getVersion(),
                    s.getStored() ? "true" : "false");
      else if (what == "check")
        std::printf("compatible: %s would be version %u of '%s'\n", a.type.c_str(), s.getVersion(),
                    a.topic.c_str());
      else
        std::printf("%s version %u of '%s'\n", s.getStored() ? "registered" : "already registered as",
                    s.getVersion(), a.topic.c_str());
      return 0;
    } catch (const Error& e) {
      if (e.code() != ErrorCode::incompatible && e.code() != ErrorCode::invalid_argument) throw;
      if (json) std::printf("{\"accepted\":false,\"reason\":%s}\n", jstr(e.what()).c_str());
      std::fprintf(stderr, "shmbus: %s\n", e.what());
      return 1;
    }
  }
  auto rep = c.call([&](proto::Request::Builder r) {
    auto q = r.initSchemaHistory();
    q.setTopic(a.topic);
    q.setVersion(what == "show" ? a.version : 0);
  });
  auto h = rep.get().getSchemaHistory();
  static const char* modes[] = {"backward", "forward", "full", "none"};
  const char* mode = uint16_t(h.getMode()) < 4 ? modes[uint16_t(h.getMode())] : "?";
  if (what == "history") {
    if (json)
      std::printf("{\"topic\":%s,\"mode\":\"%s\",\"versions\":[", jstr(a.topic).c_str(), mode);
    else
      std::printf("%s (mode %s)\n", a.topic.c_str(), mode);
    uint32_t i = 0;
    for (auto v : h.getVersions()) {
      if (json)
        std::printf("%s{\"version\":%u,\"registered_ns\":%" PRIu64
                    ",\"uid\":%u,\"root_id\":\"%s\",\"type\":%s}",
                    i++ ? "," : "", v.getVersion(), v.getRegisteredNs(), v.getUid(),
                    hex64(v.getRootId()).c_str(), jstr(v.getTypeName()).c_str());
      else
        std::printf("  version %u  %s  uid %u  %s %s\n", v.getVersion(),
                    iso_time(v.getRegisteredNs()).c_str(), v.getUid(), v.getTypeName().cStr(),
                    hex64(v.getRootId()).c_str());
    }
    if (json) std::printf("]}\n");
    return 0;
  }
  for (auto v : h.getVersions()) {
    if (!v.hasNodes()) continue;
    SchemaBundle b = SchemaBundle::parse(v.getNodes(), v.getRootId());
    if (json)
      std::printf("{\"topic\":%s,\"version\":%u,\"mode\":\"%s\",\"type\":%s,\"schema\":%s}\n",
                  jstr(a.topic).c_str(), v.getVersion(), mode, jstr(b.type_name(b.root_id())).c_str(),
                  jstr(b.text()).c_str());
    else
      std::printf("# '%s' schema version %u (mode %s), registered %s by uid %u\n%s", a.topic.c_str(),
                  v.getVersion(), mode, iso_time(v.getRegisteredNs()).c_str(), v.getUid(), b.text().c_str());
    return 0;
  }
  throw Error(ErrorCode::not_found, "no schema version in the reply");
}

// ---- live views: stat, stat --watch, top (docs/operations.md, "Live views")

struct SubRow {
  uint32_t slot = 0, pid = 0;
  uint64_t position = 0, lag_bytes = 0, lag_messages = 0;
  bool lapped = false, tethered = false, durable = false;
};
struct PartRow {
  std::string topic;
  uint32_t partition = 0;
  uint64_t producer_position = 0, last_sequence = 0, capacity = 0;
  double rate_per_sec = 0;  // the daemon's sample
  uint64_t back_pressure_events = 0, reclaimed_cursors = 0, filled_claims = 0;
  uint32_t producer_pid = 0, live_producers = 0;
  bool durable = false;
  uint64_t archived_seq = 0, durable_seq = 0;
  int32_t archiver_error = 0;
  std::vector<SubRow> subscribers;
  // Between two samples (watch, top): this tool's own rates.
  double msg_per_sec = -1, bytes_per_sec = -1;
  uint32_t producers() const { return live_producers + (producer_pid ? 1 : 0); }
  uint64_t max_lag_messages() const {
    uint64_t m = 0;
    for (auto& s : subscribers) m = std::max(m, s.lag_messages);
    return m;
  }
  uint64_t lapped() const {
    uint64_t n = 0;
    for (auto& s : subscribers) n += s.lapped;
    return n;
  }
};

// Every partition of `name` ("": every topic, a page at a time).
std::vector<PartRow> fetch_stats(DaemonClient& c, const std::string& name) {
  std::vector<PartRow> rows;
  std::string after;
  for (bool more = true; more;) {
    auto rep = c.call([&](proto::Request::Builder r) {
      if (name.empty())
        r.initStatPage().setAfter(after);
      else
        r.setStat(name);
    });
    auto ts = name.empty() ? rep.get().getPage().getStats() : rep.get().getStats();
    more = name.empty() && rep.get().getPage().getMore() && ts.size() > 0;
    if (name.empty()) after = rep.get().getPage().getNext();
    for (auto t : ts)
      for (auto p : t.getPartitions()) {
        PartRow r;
        r.topic = t.getName().cStr();
        r.partition = p.getPartition();
        r.producer_position = p.getProducerPosition();
        r.last_sequence = p.getNextSequence() ? p.getNextSequence() - 1 : 0;
        r.capacity = p.getCapacity();
        r.rate_per_sec = p.getRatePerSec();
        r.back_pressure_events = p.getBackPressureEvents();
        r.reclaimed_cursors = p.getReclaimedCursors();
        r.filled_claims = p.getFilledClaims();
        r.producer_pid = p.getProducerPid();
        r.live_producers = p.getLiveProducers();
        r.durable = p.getDurable();
        r.archived_seq = p.getArchivedSeq();
        r.durable_seq = p.getDurableSeq();
        r.archiver_error = p.getArchiverError();
        for (auto s : p.getSubscribers())
          r.subscribers.push_back({s.getSlot(), s.getPid(), s.getPosition(), s.getLag(), s.getLagMessages(),
                                   s.getLapped(), s.getTethered(), s.getDurable()});
        rows.push_back(std::move(r));
      }
  }
  return rows;
}

// This tool's rates from two samples `dt_s` apart (same topic and partition).
void rates_between(std::vector<PartRow>& now, const std::vector<PartRow>& before, double dt_s) {
  std::map<std::pair<std::string, uint32_t>, const PartRow*> prev;
  for (auto& r : before) prev[{r.topic, r.partition}] = &r;
  for (auto& r : now) {
    auto it = prev.find({r.topic, r.partition});
    if (it == prev.end() || dt_s <= 0) continue;
    const PartRow& b = *it->second;
    r.msg_per_sec = r.last_sequence >= b.last_sequence ? double(r.last_sequence - b.last_sequence) / dt_s : 0;
    r.bytes_per_sec = r.producer_position >= b.producer_position
                          ? double(r.producer_position - b.producer_position) / dt_s
                          : 0;
  }
}

std::string stat_json(const std::vector<PartRow>& rows) {
  // Grouped by topic (rows come in topic order).
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < rows.size(); ++i) {
    const PartRow& p = rows[i];
    const bool first = i == 0 || rows[i - 1].topic != p.topic;
    const bool last = i + 1 == rows.size() || rows[i + 1].topic != p.topic;
    if (first)
      o << (i ? "," : "") << "{\"topic\":" << jstr(p.topic) << ",\"partitions\":[";
    else
      o << ",";
    o << "{\"partition\":" << p.partition << ",\"producer_position\":" << p.producer_position
      << ",\"last_sequence\":" << p.last_sequence << ",\"next_sequence\":" << p.last_sequence + 1
      << ",\"capacity\":" << p.capacity << ",\"rate_per_sec\":" << p.rate_per_sec;
    if (p.msg_per_sec >= 0)
      o << ",\"msg_per_sec\":" << p.msg_per_sec << ",\"bytes_per_sec\":" << p.bytes_per_sec;
    o << ",\"back_pressure_events\":" << p.back_pressure_events
      << ",\"reclaimed_cursors\":" << p.reclaimed_cursors << ",\"filled_claims\":" << p.filled_claims
      << ",\"producer_pid\":" << p.producer_pid << ",\"live_producers\":" << p.live_producers
      << ",\"producers\":" << p.producers() << ",\"durable\":" << (p.durable ? "true" : "false");
    if (p.durable)
      o << ",\"archived_seq\":" << p.archived_seq << ",\"durable_seq\":" << p.durable_seq
        << ",\"archiver_backlog\":"
        << (p.last_sequence > p.archived_seq ? p.last_sequence - p.archived_seq : 0)
        << ",\"durable_lag\":" << (p.last_sequence > p.durable_seq ? p.last_sequence - p.durable_seq : 0)
        << ",\"archiver_error\":" << p.archiver_error;
    o << ",\"subscribers\":[";
    for (size_t k = 0; k < p.subscribers.size(); ++k) {
      const SubRow& s = p.subscribers[k];
      o << (k ? "," : "") << "{\"slot\":" << s.slot << ",\"pid\":" << s.pid << ",\"position\":" << s.position
        << ",\"lag_messages\":" << s.lag_messages << ",\"lag_bytes\":" << s.lag_bytes
        << ",\"lag\":" << s.lag_bytes << ",\"lapped\":" << (s.lapped ? "true" : "false")
        << ",\"tethered\":" << (s.tethered ? "true" : "false")
        << ",\"durable\":" << (s.durable ? "true" : "false") << "}";
    }
    o << "]}";
    if (last) o << "]}";
  }
  o << "]";
  return o.str();
}

std::string stat_text(const std::vector<PartRow>& rows) {
  std::ostringstream o;
  for (size_t i = 0; i < rows.size(); ++i) {
    const PartRow& p = rows[i];
    if (i == 0 || rows[i - 1].topic != p.topic) o << p.topic << "\n";
    o << "  partition " << p.partition << ": last seq " << p.last_sequence << ", producer position "
      << p.producer_position << ", " << p.producers() << " producers, ";
    if (p.msg_per_sec >= 0)
      o << p.msg_per_sec << " msg/s, " << human_bytes(p.bytes_per_sec) << "/s";
    else
      o << p.rate_per_sec << " msg/s";
    o << ", " << p.back_pressure_events << " back-pressure events, " << p.reclaimed_cursors
      << " reclaimed cursors, " << p.filled_claims << " filled claims\n";
    if (p.durable)
      o << "    archiver: archived seq " << p.archived_seq << ", durable seq " << p.durable_seq
        << ", backlog " << (p.last_sequence > p.archived_seq ? p.last_sequence - p.archived_seq : 0)
        << " messages"
        << (p.archiver_error ? ", error " + std::string(strerror(p.archiver_error)) : std::string()) << "\n";
    for (auto& s : p.subscribers)
      o << "    subscriber slot " << s.slot << " pid " << s.pid << ": at " << s.position << ", lag "
        << s.lag_messages << " messages / " << s.lag_bytes << " B" << (s.tethered ? "" : " (untethered)")
        << (s.durable ? " (durable)" : "") << (s.lapped ? " LAPPED: messages lost" : "") << "\n";
  }
  if (rows.empty()) o << "no topics\n";
  return o.str();
}

// Waits up to `s` seconds for a key (top) or a signal; the key, or -1.
int wait_key(double s, bool keys) {
  pollfd p{STDIN_FILENO, POLLIN, 0};
  int r = poll(&p, keys ? 1 : 0, int(s * 1000));
  if (r > 0 && (p.revents & POLLIN)) {
    char ch = 0;
    if (read(STDIN_FILENO, &ch, 1) == 1) return ch;
  }
  return -1;
}

int run_stat(DaemonClient& c, const std::string& name, bool json, bool watch, double interval) {
  if (!watch) {
    auto rows = fetch_stats(c, name);
    std::fputs(json ? (stat_json(rows) + "\n").c_str() : stat_text(rows).c_str(), stdout);
    return 0;
  }
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
  const bool tty = isatty(STDOUT_FILENO) && !json;
  std::vector<PartRow> prev = fetch_stats(c, name);
  double t_prev = mono_s();
  while (!g_stop) {
    wait_key(interval, false);
    if (g_stop) break;
    auto rows = fetch_stats(c, name);
    const double t = mono_s();
    rates_between(rows, prev, t - t_prev);
    if (tty) std::fputs("\x1b[H\x1b[2J", stdout);
    std::fputs(json ? (stat_json(rows) + "\n").c_str() : stat_text(rows).c_str(), stdout);
    if (!json && !tty) std::fputs("\n", stdout);
    std::fflush(stdout);
    prev = std::move(rows);
    t_prev = t;
  }
  return 0;
}

enum class TopSort { name, rate, bytes, lag };

std::string top_frame(std::vector<PartRow> rows, TopSort sort, bool reverse, int width) {
  auto key = [&](const PartRow& r) -> double {
    switch (sort) {
      case TopSort::rate: return r.msg_per_sec >= 0 ? r.msg_per_sec : r.rate_per_sec;
      case TopSort::bytes: return r.bytes_per_sec;
      case TopSort::lag: return double(r.max_lag_messages());
      case TopSort::name: break;
    }
    return 0;
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const PartRow& a, const PartRow& b) {
    if (sort == TopSort::name)
      return reverse ? std::tie(b.topic, b.partition) < std::tie(a.topic, a.partition)
                     : std::tie(a.topic, a.partition) < std::tie(b.topic, b.partition);
    return reverse ? key(a) < key(b) : key(a) > key(b);
  });
  std::ostringstream o;
  char line[512];
  const char* sname = sort == TopSort::name    ? "name"
                      : sort == TopSort::rate  ? "msg/s"
                      : sort == TopSort::bytes ? "bytes/s"
                                               : "lag";
  std::snprintf(
      line, sizeof line,
      "shmbus top: %zu partitions, sorted by %s%s  (n name, r msg/s, b bytes/s, l lag, i invert, q quit)\n",
      rows.size(), sname, reverse ? " (inverted)" : "");
  o << line;
  std::snprintf(line, sizeof line, "%-28s %4s %10s %11s %12s %5s %4s %10s %12s %6s %8s %7s %7s\n", "TOPIC",
                "PART", "LAST SEQ", "MSG/S", "BYTES/S", "PROD", "SUBS", "LAG MSGS", "LAG BYTES", "LAPPED",
                "BP WAITS", "RECLAIM", "BACKLOG");
  o << line;
  for (auto& r : rows) {
    uint64_t lag_b = 0;
    for (auto& s : r.subscribers) lag_b = std::max(lag_b, s.lag_bytes);
    const std::string backlog =
        r.durable ? std::to_string(r.last_sequence > r.archived_seq ? r.last_sequence - r.archived_seq : 0)
                  : "-";
    std::string t = r.topic.size() > 28 ? r.topic.substr(0, 27) + "~" : r.topic;
    std::snprintf(line, sizeof line,
                  "%-28s %4u %10" PRIu64 " %11.1f %12s %5u %4zu %10" PRIu64 " %12s %6" PRIu64 " %8" PRIu64
                  " %7" PRIu64 " %7s\n",
                  t.c_str(), r.partition, r.last_sequence,
                  r.msg_per_sec >= 0 ? r.msg_per_sec : r.rate_per_sec,
                  (human_bytes(std::max(0.0, r.bytes_per_sec)) + "/s").c_str(), r.producers(),
                  r.subscribers.size(), r.max_lag_messages(), human_bytes(double(lag_b)).c_str(), r.lapped(),
                  r.back_pressure_events, r.reclaimed_cursors + r.filled_claims, backlog.c_str());
    o << std::string(line).substr(0, width > 0 ? size_t(width) : std::string::npos);
    if (width > 0 && std::string(line).size() > size_t(width)) o << "\n";
    for (auto& s : r.subscribers) {
      std::snprintf(line, sizeof line, "  └ slot %-4u pid %-8u %-10s lag %" PRIu64 " msgs / %s%s\n", s.slot,
                    s.pid, s.tethered ? (s.durable ? "durable" : "tethered") : "untethered", s.lag_messages,
                    human_bytes(double(s.lag_bytes)).c_str(), s.lapped ? "  LAPPED" : "");
      o << line;
    }
  }
  return o.str();
}

int run_top(DaemonClient& c, const std::string& name, bool once, double interval,
            const std::string& sort_by) {
  TopSort sort = sort_by == "rate"    ? TopSort::rate
                 : sort_by == "bytes" ? TopSort::bytes
                 : sort_by == "lag"   ? TopSort::lag
                                      : TopSort::name;
  bool reverse = false;
  once = once || !isatty(STDOUT_FILENO);
  std::vector<PartRow> prev = fetch_stats(c, name);
  double t_prev = mono_s();
  if (once) {
    // Two samples `interval` apart give this tool's own rates.
    if (interval > 0) wait_key(interval, false);
    auto rows = fetch_stats(c, name);
    rates_between(rows, prev, mono_s() - t_prev);
    std::fputs(top_frame(rows, sort, reverse, 0).c_str(), stdout);
    return 0;
  }
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
  termios old{};
  const bool keys = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
  if (keys) {
    termios raw = old;
    raw.c_lflag &= tcflag_t(~(ICANON | ECHO));
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    tcsetattr(STDIN_FILENO, TCSANOW, &raw);
  }
  std::fputs("\x1b[?25l", stdout);  // cursor hidden while drawing
  std::vector<PartRow> rows = prev;
  double t_next = t_prev + interval;
  while (!g_stop) {
    winsize ws{};
    const int width = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 ? ws.ws_col : 0;
    std::fputs(("\x1b[H\x1b[2J" + top_frame(rows, sort, reverse, width)).c_str(), stdout);
    std::fflush(stdout);
    const int k = wait_key(std::max(0.0, t_next - mono_s()), keys);
    if (k == 'q' || k == 'Q') break;
    if (k == 'n') sort = TopSort::name;
    if (k == 'r') sort = TopSort::rate;
    if (k == 'b') sort = TopSort::bytes;
    if (k == 'l') sort = TopSort::lag;
    if (k == 'i') reverse = !reverse;
    if (k >= 0 && mono_s() < t_next) continue;  // a key: redraw at once, same sample
    auto now = fetch_stats(c, name);
    const double t = mono_s();
    rates_between(now, prev, t - t_prev);
    prev = now;
    rows = std::move(now);
    t_prev = t;
    t_next = t + interval;
  }
  std::fputs("\x1b[?25h", stdout);
  if (keys) tcsetattr(STDIN_FILENO, TCSANOW, &old);
  return 0;
}

// ---- hz: a topic's message rate and inter-arrival times (like `ros2 topic hz`)

struct HzArgs {
  std::string topic;
  uint32_t partition = 0;
  uint64_t count = 0;       // stop after this many messages (0: until Ctrl-C or --duration)
  uint32_t window = 10000;  // inter-arrival times the statistics cover
  double duration = 0;      // stop after this many seconds (0: no limit)
};

int run_hz(const std::string& socket, const HzArgs& a, bool json) {
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
  Bus bus = Bus::connect(socket);
  SubscriberOptions so;
  so.partition = a.partition;
  so.tethered = false;  // never holds a producer back
  Subscriber sub = bus.subscriber(a.topic, so);
  std::deque<double> gaps;  // seconds, the last `window`
  double sum = 0, sumsq = 0;
  uint64_t n = 0, lapped = 0;
  int64_t prev_ns = -1;
  const double t0 = mono_s();
  double next_print = t0 + 1;
  auto summary = [&](bool final) {
    double mn = 0, mx = 0;
    if (!gaps.empty())
      mn = *std::min_element(gaps.begin(), gaps.end()), mx = *std::max_element(gaps.begin(), gaps.end());
    const double k = double(gaps.size());
    const double mean = k ? sum / k : 0;
    const double var = k ? std::max(0.0, sumsq / k - mean * mean) : 0;
    const double rate = mean > 0 ? 1 / mean : 0;
    if (json) {
      if (!final) return;
      std::printf("{\"topic\":%s,\"partition\":%u,\"messages\":%" PRIu64
                  ",\"rate\":%.6g,\"min_s\":%.9g,"
                  "\"max_s\":%.9g,\"mean_s\":%.9g,\"stddev_s\":%.9g,\"window\":%zu,\"lapped\":%" PRIu64 "}\n",
                  jstr(a.topic).c_str(), a.partition, n, rate, mn, mx, mean, std::sqrt(var), gaps.size(),
                  lapped);
    } else if (n < 2) {
      std::printf("no messages yet\n");
    } else {
      std::printf(
          "rate %.1f msg/s  min %.3f ms  max %.3f ms  mean %.3f ms  stddev %.3f ms  window %zu  messages "
          "%" PRIu64 "%s\n",
          rate, mn * 1e3, mx * 1e3, mean * 1e3, std::sqrt(var) * 1e3, gaps.size(), n,
          lapped ? ("  lapped " + std::to_string(lapped)).c_str() : "");
    }
    std::fflush(stdout);
  };
  View v;
  while (!g_stop) {
    const double now = mono_s();
    if (a.duration > 0 && now - t0 >= a.duration) break;
    if (now >= next_print) {
      summary(false);
      next_print = now + 1;
    }
    Status s = sub.poll_wait(v, 100'000'000);
    if (s == Status::lapped) {
      ++lapped;
      prev_ns = -1;  // the gap over lost messages is not an inter-arrival time
      continue;
    }
    if (s != Status::ok) continue;
    // The producer's commit time (CLOCK_MONOTONIC), else the time we saw it.
    const int64_t ts = v.timestamp_ns() ? int64_t(v.timestamp_ns()) : int64_t(mono_s() * 1e9);
    sub.release(v);
    v = View{};
    ++n;
    if (prev_ns >= 0 && ts >= prev_ns) {
      const double g = double(ts - prev_ns) / 1e9;
      gaps.push_back(g);
      sum += g, sumsq += g * g;
      if (gaps.size() > a.window) {
        const double o = gaps.front();
        gaps.pop_front();
        sum -= o, sumsq -= o * o;
      }
    }
    prev_ns = ts;
    if (a.count && n >= a.count) break;
  }
  summary(true);
  return n ? 0 : 1;
}

// ---- doctor: what breaks installations

struct Check {
  std::string name, status, detail, fix;
};

int run_doctor(const std::string& socket_arg, bool json) {
  std::vector<Check> cs;
  auto add = [&](std::string n, std::string s, std::string d, std::string f = {}) {
    cs.push_back({std::move(n), std::move(s), std::move(d), std::move(f)});
  };
  // /dev/shm: the daemon keeps shm_reserve_percent of it free.
  {
    struct statvfs vf {};
    std::string opts, fstype;
    std::ifstream mi("/proc/self/mounts");
    std::string dev, mnt, ty, op;
    while (mi >> dev >> mnt >> ty >> op) {
      std::string rest;
      std::getline(mi, rest);
      if (mnt == "/dev/shm") fstype = ty, opts = op;
    }
    if (statvfs("/dev/shm", &vf) != 0) {
      add("dev_shm", "FAIL", "/dev/shm: " + std::string(strerror(errno)),
          "mount -t tmpfs -o size=50% tmpfs /dev/shm");
    } else {
      const double size = double(vf.f_blocks) * double(vf.f_frsize),
                   avail = double(vf.f_bavail) * double(vf.f_frsize);
      const std::string d = (fstype.empty() ? std::string("not a mount point") : fstype) + ", " +
                            human_bytes(size) + ", " + human_bytes(avail) + " free" +
                            (opts.empty() ? "" : " (" + opts + ")");
      if (fstype != "tmpfs")
        add("dev_shm", "WARN", d, "mount a tmpfs on /dev/shm (topics' segments are shared memory)");
      else if (size < 64.0 * 1048576)
        add("dev_shm", "WARN", d,
            "enlarge it: mount -o remount,size=1G /dev/shm (topics are refused beyond it)");
      else if (avail < size * 0.1)
        add("dev_shm", "WARN", d,
            "free space: topics are refused when less than --shm-reserve-percent is free");
      else
        add("dev_shm", "OK", d);
    }
  }
  // Limits: memlock (io_uring registered buffers), open files (three per partition).
  {
    rlimit rl{};
    getrlimit(RLIMIT_MEMLOCK, &rl);
    auto lim = [](rlim_t v) {
      return v == RLIM_INFINITY ? std::string("unlimited") : human_bytes(double(v));
    };
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (64ull << 20))
      add("memlock", "WARN", "RLIMIT_MEMLOCK " + lim(rl.rlim_cur) + " (hard " + lim(rl.rlim_max) + ")",
          "LimitMEMLOCK=infinity in the unit, or ulimit -l unlimited (io_uring buffers of durable topics)");
    else
      add("memlock", "OK", "RLIMIT_MEMLOCK " + lim(rl.rlim_cur));
    getrlimit(RLIMIT_NOFILE, &rl);
    const std::string d =
        "RLIMIT_NOFILE soft " + std::to_string(rl.rlim_cur) + ", hard " + std::to_string(rl.rlim_max);
    if (rl.rlim_max < 65536)
      add("nofile", "WARN", d + " (shmbusd raises soft to hard; each partition costs 3 fds, each client 1)",
          "LimitNOFILE=1048576 in the unit, or raise the hard limit in limits.conf");
    else
      add("nofile", "OK", d);
  }
  // io_uring: the spill log of durable topics.
  {
    io_uring ring;
    const int r = io_uring_queue_init(8, &ring, 0);
    if (r == 0) {
      io_uring_queue_exit(&ring);
      add("io_uring", "OK", "io_uring_queue_init works");
    } else {
      std::string d = "io_uring_queue_init: " + std::string(strerror(-r));
      std::ifstream dis("/proc/sys/kernel/io_uring_disabled");
      int v = 0;
      if (dis >> v && v) d += " (kernel.io_uring_disabled=" + std::to_string(v) + ")";
      add("io_uring", "FAIL", d + ": durable topics cannot be archived",
          "sysctl kernel.io_uring_disabled=0, or allow io_uring in the seccomp profile / container");
    }
  }
  // pidfds: how the daemon knows a client died.
  {
    const int pfd = int(syscall(SYS_pidfd_open, getpid(), 0));
    if (pfd >= 0) {
      close(pfd);
      add("pidfd", "OK", "pidfd_open works");
    } else {
      add("pidfd", "FAIL", "pidfd_open: " + std::string(strerror(errno)), "Linux 5.3 or later is needed");
    }
  }
  // membarrier: the asymmetric fences of the ring (a fallback exists, slower).
  {
    const long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (q >= 0 && (q & MEMBARRIER_CMD_GLOBAL_EXPEDITED))
      add("membarrier", "OK", "MEMBARRIER_CMD_GLOBAL_EXPEDITED supported");
    else
      add("membarrier", "WARN",
          q < 0 ? "membarrier: " + std::string(strerror(errno)) : "no MEMBARRIER_CMD_GLOBAL_EXPEDITED",
          "Linux 4.16 or later, and no seccomp filter on membarrier: without it every commit pays a locked "
          "instruction");
  }
  // Clock source: frame timestamps and latency figures read CLOCK_MONOTONIC.
  {
    std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    std::string cs_name;
    f >> cs_name;
    if (cs_name.empty())
      add("clocksource", "WARN", "unknown (no /sys/devices/system/clocksource)", "");
    else if (cs_name == "tsc" || cs_name == "arch_sys_counter" || cs_name == "kvm-clock")
      add("clocksource", "OK", cs_name);
    else
      add("clocksource", "WARN", cs_name + ": clock reads may be system calls (slow frame stamps)",
          "use tsc if the hardware allows (clocksource=tsc tsc=reliable on the kernel command line)");
  }
  // The socket, its directory and the state dir: ownership and modes.
  {
    const std::string sock = socket_arg.empty() ? default_socket_path() : socket_arg;
    const auto slash = sock.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : sock.substr(0, slash);
    struct stat st {};
    if (lstat(dir.c_str(), &st) != 0) {
      add("socket_dir", "WARN", dir + ": " + strerror(errno) + " (no daemon has run with this socket)",
          "start shmbusd (it creates the directory)");
    } else if (!S_ISDIR(st.st_mode)) {
      add("socket_dir", "FAIL", dir + " is not a directory (a symlink?)",
          "remove it; shmbusd creates its own");
    } else if (st.st_mode & 022) {
      char m[8];
      std::snprintf(m, sizeof m, "%04o", unsigned(st.st_mode & 07777));
      add("socket_dir", "FAIL",
          dir + " is writable by group or others (mode " + m + ", uid " + std::to_string(st.st_uid) +
              "): shmbusd refuses it",
          "chmod go-w " + dir + " (or let shmbusd create it)");
    } else {
      char m[8];
      std::snprintf(m, sizeof m, "%04o", unsigned(st.st_mode & 07777));
      add("socket_dir", "OK", dir + " mode " + m + ", uid " + std::to_string(st.st_uid));
    }
    if (lstat(sock.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode))
      add("socket", "FAIL", sock + " exists and is not a socket", "remove it");
    DaemonClient::Options co;
    co.socket_path = sock;
    co.reconnect_ms = 0;
    std::string state_dir;
    try {
      auto c = DaemonClient::connect(co);
      auto rep = c->call([](proto::Request::Builder r) { r.setHealth(); });
      auto h = rep.get().getHealth();
      state_dir = h.getStateDir().cStr();
      add("daemon", h.getServing() ? "OK" : "FAIL",
          "shmbusd pid " + std::to_string(h.getDaemonPid()) +
              (h.getServing() ? " serving on " : " NOT serving on ") + sock,
          h.getServing() ? "" : "see its log (journalctl -u shmbusd)");
    } catch (const Error& e) {
      add("daemon", "WARN", std::string("no daemon at ") + sock + ": " + e.what(),
          "start shmbusd (systemctl start shmbusd, or shmbusd --socket " + sock + ")");
    }
    if (state_dir.empty() && slash != std::string::npos) state_dir = dir + "/state";
    if (!state_dir.empty()) {
      if (lstat(state_dir.c_str(), &st) != 0) {
        add("state_dir", errno == ENOENT ? "WARN" : "FAIL", state_dir + ": " + strerror(errno),
            errno == ENOENT ? "start shmbusd (it creates it)" : "run doctor as the daemon's user");
      } else {
        char m[8];
        std::snprintf(m, sizeof m, "%04o", unsigned(st.st_mode & 07777));
        const std::string d = state_dir + " mode " + m + ", uid " + std::to_string(st.st_uid);
        if (!S_ISDIR(st.st_mode))
          add("state_dir", "FAIL", state_dir + " is not a directory (a symlink?)", "remove it");
        else if (st.st_mode & 077)
          add("state_dir", "WARN", d + ": readable or writable by others", "chmod 0700 " + state_dir);
        else
          add("state_dir", "OK", d);
      }
    }
  }
  bool fail = false;
  for (auto& c : cs) fail = fail || c.status == "FAIL";
  if (json) {
    std::printf("{\"ok\":%s,\"checks\":[", fail ? "false" : "true");
    for (size_t i = 0; i < cs.size(); ++i)
      std::printf("%s{\"name\":%s,\"status\":\"%s\",\"detail\":%s,\"fix\":%s}", i ? "," : "",
                  jstr(cs[i].name).c_str(), cs[i].status.c_str(), jstr(cs[i].detail).c_str(),
                  jstr(cs[i].fix).c_str());
    std::printf("]}\n");
  } else {
    for (auto& c : cs) {
      std::printf("%-4s  %-12s %s\n", c.status.c_str(), c.name.c_str(), c.detail.c_str());
      if (!c.fix.empty() && c.status != "OK") std::printf("      %-12s fix: %s\n", "", c.fix.c_str());
    }
  }
  return fail ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus: inspect and manage shmbusd topics"};
  app.set_version_flag("--version", "shmbus " SHMBUS_VERSION);
  std::string socket;
  bool json = false;
  app.add_option("--socket", socket, "control socket (default " + default_socket_path() + ")");
  bool system_daemon = false;
  app.add_flag("--system", system_daemon,
               std::string("the system-wide daemon's socket (") + kSystemSocketPath + ")");
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
  create->add_option("--policy", policy, "block|fail|spill (spill implies --durable)")
      ->check(CLI::IsMember({"block", "fail", "spill"}));
  bool durable = false;
  std::string flush = "interval";
  uint32_t flush_ms = 10;
  uint64_t retention_bytes = 0, retention_age = 0, segment_bytes = 0;
  create->add_flag("--durable", durable, "archive every message to the spill log (<state-dir>/log/<topic>/)");
  create->add_option("--flush", flush, "durable: none|interval|batch (when a message counts as durable)")
      ->check(CLI::IsMember({"none", "interval", "batch"}));
  create->add_option("--flush-interval-ms", flush_ms, "durable, flush interval: fdatasync period");
  create->add_option("--retention-bytes", retention_bytes,
                     "durable: keep at most this many log bytes per partition (0 = all)");
  create->add_option("--retention-age", retention_age,
                     "durable: delete log segments older than this many seconds (0 = never)");
  create->add_option("--segment-bytes", segment_bytes, "durable: log segment file size (0 = 64 MiB)");
  create->add_flag("--multi-producer", cfg.multi_producer, "allow several producers per partition");
  create->add_option("--slots", cfg.slots, "subscriber slots per partition");
  create->add_option("--schema-id", cfg.schema_id, "Cap'n Proto root type id (0 = any)");
  std::string schema_mode = "backward";
  create
      ->add_option("--schema-mode", schema_mode,
                   "how a new schema version is checked: backward|forward|full|none")
      ->check(CLI::IsMember({"backward", "forward", "full", "none"}));
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
  bool watch = false, once = false;
  double interval = 1.0;
  std::string sort_by = "name";
  stat->add_flag("--watch", watch,
                 "print again every --interval seconds, with this tool's rates (Ctrl-C stops)");
  stat->add_option("--interval", interval, "seconds between samples (default 1)")
      ->check(CLI::Range(0.05, 3600.0));
  auto* top =
      app.add_subcommand("top", "a refreshing view of every partition: rates, producers, lag, lapped");
  top->add_option("topic", name, "one topic (default: all)");
  top->add_flag("--once", once,
                "print one frame (two samples --interval apart) and exit; the default off a tty");
  top->add_option("--interval", interval, "seconds between samples (default 1)")
      ->check(CLI::Range(0.0, 3600.0));
  top->add_option("--sort", sort_by, "name|rate|bytes|lag (keys n r b l, i inverts)")
      ->check(CLI::IsMember({"name", "rate", "bytes", "lag"}));
  HzArgs hz_args;
  auto* hz = app.add_subcommand("hz", "a topic's message rate and inter-arrival times (min/max/mean/stddev)");
  hz->add_option("topic", hz_args.topic)->required();
  hz->add_option("--partition", hz_args.partition, "partition (default 0)");
  hz->add_option("--count", hz_args.count, "stop after N messages");
  hz->add_option("--window", hz_args.window, "inter-arrival times the statistics cover (default 10000)")
      ->check(CLI::Range(1u, 10'000'000u));
  hz->add_option("--duration", hz_args.duration, "stop after S seconds");
  auto* doctor =
      app.add_subcommand("doctor", "check what breaks installations (/dev/shm, limits, io_uring, ...)");
  auto* health = app.add_subcommand("health", "is the daemon serving?");
  ReplayArgs ra;
  auto* replay = app.add_subcommand("replay", "print a durable topic's messages from its log as JSON lines");
  replay->add_option("topic", ra.topic)->required();
  replay->add_option("--partition", ra.partition, "partition (default 0)");
  replay->add_option(
      "--from", ra.from,
      "earliest|latest|seq:N|time:<ns since epoch>|time:<ISO 8601>|mono:<ns> (default earliest)");
  replay->add_option("--to", ra.to, "stop after seq:N / time:... / mono:NS (inclusive)");
  replay->add_option("--count", ra.count, "stop after N messages");
  replay->add_flag("--follow", ra.follow, "continue with live messages (default: stop at the current end)");
  replay->add_flag("--progress", ra.progress, "progress bar on stderr (default: when stderr is a terminal)");
  ReplayArgs ta;
  ta.from = "latest";
  auto* tail = app.add_subcommand("tail", "print a topic's new messages as JSON lines (Ctrl-C stops)");
  tail->add_option("topic", ta.topic)->required();
  tail->add_option("--partition", ta.partition, "partition (default 0)");
  tail->add_option("--from", ta.from, "durable topics: start point as for replay (default latest)");
  tail->add_option("--count", ta.count, "stop after N messages");
  DlqArgs da;
  auto* dlq = app.add_subcommand("dlq", "dead-letter topics (<topic>.dlq)");
  dlq->require_subcommand(1);
  auto* dlq_replay = dlq->add_subcommand(
      "replay",
      "re-drive a durable <topic>.dlq's dead letters to their original topic (payload, message id and "
      "schema id as they were)");
  dlq_replay->add_option("topic", da.topic, "the dead-letter topic")->required();
  dlq_replay->add_option("--to", da.to, "publish to this topic (partition 0) instead of each original topic");
  dlq_replay->add_option("--count", da.count, "stop after N dead letters");
  dlq_replay->add_option("--from", da.from,
                         "start point in the dead-letter log, as for replay (default earliest)");
  dlq_replay->add_option("--partition", da.partition, "partition of the dead-letter topic (default 0)");
  SchemaArgs sa;
  auto* schema = app.add_subcommand("schema", "a topic's registered Cap'n Proto schema versions");
  schema->require_subcommand(1);
  auto* schema_show =
      schema->add_subcommand("show", "the latest (or --version N) schema as Cap'n Proto text");
  schema_show->add_option("topic", sa.topic)->required();
  schema_show->add_option("--version", sa.version, "version (default: the latest)");
  auto* schema_history =
      schema->add_subcommand("history", "every version: number, time, registering uid, type");
  schema_history->add_option("topic", sa.topic)->required();
  auto* schema_check = schema->add_subcommand(
      "check",
      "would FILE.capnp:Type be accepted as the topic's next version? exit 0 yes, 1 no (with the reason)");
  auto* schema_register =
      schema->add_subcommand("register", "register FILE.capnp:Type as the topic's next version");
  auto* schema_mode_cmd = schema->add_subcommand(
      "mode", "change the topic's compatibility mode (its owner or root; the versions stay)");
  schema_mode_cmd->add_option("topic", sa.topic)->required();
  schema_mode_cmd->add_option("mode", sa.mode, "backward|forward|full|none")->required();
  for (auto* s : {schema_check, schema_register}) {
    s->add_option("topic", sa.topic)->required();
    s->add_option("type", sa.type, "FILE.capnp:Type")->required();
    s->add_option("--import-path,-I", sa.import_path, "directory for absolute imports (as capnp compile -I)");
  }
  PubArgs pa;
  auto* pub = app.add_subcommand(
      "pub", "publish messages written as JSON, encoded with the topic's schema (registered, or --schema)");
  pub->add_option("topic", pa.topic)->required();
  pub->add_option("--json", pa.json_text, "the message as a JSON object");
  pub->add_option("--json-file", pa.json_file, "messages as JSON objects, one per line (- : stdin)");
  pub->add_option("--schema", pa.schema, "encode with FILE.capnp:Type (presented to the registry at open)");
  pub->add_option("--import-path,-I", pa.import_path, "directory for absolute imports of --schema");
  pub->add_option("--count", pa.count, "publish N messages, cycling through the inputs (default: each once)");
  pub->add_option("--rate", pa.rate, "messages per second (default: as fast as possible)");
  pub->add_option("--partition", pa.partition, "partition (default 0)");
  pub->add_option("--key", pa.key, "choose the partition by key: fnv1a64(KEY) % partitions");
  pub->add_option("--message-id", pa.message_id, "the frames' message id (default 0)");
  pub->add_flag("--envelope", pa.envelope,
                "send each message inside an Envelope (implied by the options below)");
  pub->add_option("--correlation-id", pa.correlation_id, "envelope: correlation id");
  pub->add_option("--causation-id", pa.causation_id, "envelope: causation id");
  pub->add_option("--reply-to", pa.reply_to, "envelope: the topic replies go to");
  pub->add_option("--traceparent", pa.traceparent, "envelope: W3C trace context 00-<trace>-<span>-<flags>");
  pub->add_option("--content-version", pa.content_version, "envelope: content version");
  RecordArgs rca;
  auto* record = app.add_subcommand("record", "record topics (every partition) to a self-describing file");
  record->add_option("topics", rca.topics, "topics to record")->required();
  record->add_option("-o,--output", rca.out, "the recording (docs/record-format.md)")->required();
  record->add_option("--duration", rca.duration, "stop after S seconds");
  record->add_option("--count", rca.count, "stop after N messages");
  record->add_flag("--tethered", rca.tethered, "hold producers back rather than miss messages");
  PlayArgs pla;
  auto* play =
      app.add_subcommand("play", "publish a recording again, at its original pace scaled by --speed");
  play->add_option("file", pla.file)->required();
  play->add_option("--speed", pla.speed,
                   "pace factor: 2 = twice as fast, 0 = as fast as possible (default 1)");
  play->add_option("--topic-map", pla.topic_map,
                   "RECORDED=TARGET: publish a recorded topic to another topic");
  play->add_flag("--check", pla.check, "check the file and describe it; publish nothing");
  BenchArgs ba;
  auto* bench = app.add_subcommand("bench", "publish/subscribe throughput and latency on a temporary topic");
  bench->add_option("--topic", ba.topic, "the temporary topic's name (default shmbus-bench.<pid>.<random>)");
  bench->add_option("--size", ba.size, "payload bytes (default 128)");
  bench->add_option("--count", ba.count, "messages per publisher (default 100000)");
  bench->add_option("--pubs", ba.pubs, "publishers, one partition each (default 1)");
  bench->add_option("--subs", ba.subs, "subscribers, each reading every partition (default 1)");
  bench->add_option("--capacity", ba.capacity, "ring bytes per partition (default 4 MiB)");
  bench->add_option(
      "--rate", ba.rate,
      "messages per second per publisher (default: as fast as possible; the latency then includes "
      "queueing in the ring)");
  std::string group_topic;
  auto* group = app.add_subcommand("group", "a topic's consumer groups and their committed positions");
  group->add_option("topic", group_topic)->required();
  CLI11_PARSE(app, argc, argv);

  if (system_daemon && socket.empty()) socket = kSystemSocketPath;
  if (doctor->parsed()) return run_doctor(socket, json);
  if (hz->parsed()) {
    try {
      return run_hz(socket, hz_args, json);
    } catch (const Error& e) {
      std::fprintf(stderr, "shmbus: %s\n", e.what());
      return 1;
    }
  }
  DaemonClient::Options co;
  co.socket_path = socket;
  co.reconnect_ms = 0;
  std::shared_ptr<DaemonClient> c;
  try {
    c = DaemonClient::connect(co);
  } catch (const Error& e) {
    if (health->parsed()) {
      if (json)
        std::printf("{\"serving\":false,\"reason\":%s}\n", jstr(e.what()).c_str());
      else
        std::printf("not serving: %s\n", e.what());
      return 2;
    }
    std::fprintf(stderr, "shmbus: %s\n", e.what());
    return 1;
  }
  try {
    if (create->parsed()) {
      cfg.policy = policy == "fail" ? Policy::fail : policy == "spill" ? Policy::spill : Policy::block;
      bool any_acl = !acl.publish_uids.empty() || !acl.publish_gids.empty() || !acl.subscribe_uids.empty() ||
                     !acl.subscribe_gids.empty();
      if (!any_acl) cfg.mode = 0600;  // owner (and root) only unless an ACL is given
      auto rep = c->call([&](proto::Request::Builder r) {
        auto s = r.initCreateTopic();
        s.setName(name);
        s.setPartitions(cfg.partitions);
        s.setCapacity(cfg.capacity);
        s.setMaxPayload(cfg.max_payload);
        s.setPolicy(cfg.policy == Policy::fail    ? proto::Policy::FAIL
                    : cfg.policy == Policy::spill ? proto::Policy::SPILL
                                                  : proto::Policy::BLOCK);
        s.setDurable(durable || cfg.policy == Policy::spill);
        s.setFlush(flush == "none"    ? proto::FlushPolicy::NONE
                   : flush == "batch" ? proto::FlushPolicy::BATCH
                                      : proto::FlushPolicy::INTERVAL);
        s.setFlushIntervalMs(flush_ms);
        s.setRetentionBytes(retention_bytes);
        s.setRetentionAgeS(retention_age);
        s.setSegmentBytes(segment_bytes);
        s.setMultiProducer(cfg.multi_producer);
        s.setSlots(cfg.slots);
        s.setSchemaId(cfg.schema_id);
        s.setSchemaMode(schema_mode == "forward" ? proto::SchemaMode::FORWARD
                        : schema_mode == "full"  ? proto::SchemaMode::FULL
                        : schema_mode == "none"  ? proto::SchemaMode::NONE
                                                 : proto::SchemaMode::BACKWARD);
        auto a = s.initAccess();
        auto put = [](auto l, const std::vector<uint32_t>& v) {
          for (size_t i = 0; i < v.size(); ++i) l.set(uint32_t(i), v[i]);
        };
        put(a.initPublishUids(uint32_t(acl.publish_uids.size())), acl.publish_uids);
        put(a.initPublishGids(uint32_t(acl.publish_gids.size())), acl.publish_gids);
        put(a.initSubscribeUids(uint32_t(acl.subscribe_uids.size())), acl.subscribe_uids);
        put(a.initSubscribeGids(uint32_t(acl.subscribe_gids.size())), acl.subscribe_gids);
      });
      if (json)
        std::printf("%s\n", topic_json(rep.get().getTopic()).c_str());
      else
        topic_human(rep.get().getTopic());
    } else if (list->parsed()) {
      // A page at a time (any number of topics).
      std::string after;
      size_t n = 0;
      if (json) std::printf("[");
      for (bool more = true; more;) {
        auto rep = c->call([&](proto::Request::Builder r) { r.initListPage().setAfter(after); });
        auto pg = rep.get().getPage();
        for (auto t : pg.getTopics()) {
          if (json)
            std::printf("%s%s", n ? "," : "", topic_json(t).c_str());
          else
            std::printf("%-40s %3u partitions  %10" PRIu64 " B  %s\n", t.getSpec().getName().cStr(),
                        t.getSpec().getPartitions(), t.getSpec().getCapacity(),
                        policy_name(t.getSpec().getPolicy()));
          ++n;
        }
        more = pg.getMore() && pg.getTopics().size() > 0;
        after = pg.getNext();
      }
      if (json)
        std::printf("]\n");
      else if (n == 0)
        std::printf("no topics\n");
    } else if (describe->parsed()) {
      auto rep = c->call([&](proto::Request::Builder r) { r.setDescribeTopic(name); });
      if (json)
        std::printf("%s\n", topic_json(rep.get().getTopic()).c_str());
      else
        topic_human(rep.get().getTopic());
    } else if (del->parsed()) {
      c->delete_topic(name);
      if (json)
        std::printf("{\"deleted\":%s}\n", jstr(name).c_str());
      else
        std::printf("deleted %s\n", name.c_str());
    } else if (stat->parsed()) {
      return run_stat(*c, name, json, watch, interval);
    } else if (top->parsed()) {
      return run_top(*c, name, once, interval, sort_by);
    } else if (replay->parsed()) {
      return run_replay(*c, socket, ra, false);
    } else if (schema->parsed()) {
      const std::string what = schema_show->parsed()       ? "show"
                               : schema_history->parsed()  ? "history"
                               : schema_check->parsed()    ? "check"
                               : schema_mode_cmd->parsed() ? "mode"
                                                           : "register";
      return run_schema(*c, what, sa, json);
    } else if (tail->parsed()) {
      return run_replay(*c, socket, ta, true);
    } else if (dlq_replay->parsed()) {
      std::signal(SIGINT, on_sigint);
      std::signal(SIGTERM, on_sigint);
      return run_dlq_replay(*c, socket, da, json);
    } else if (pub->parsed()) {
      return run_pub(*c, socket, pa, json);
    } else if (record->parsed()) {
      return run_record(*c, socket, rca, json);
    } else if (play->parsed()) {
      return run_play(socket, pla, json);
    } else if (bench->parsed()) {
      return run_bench(*c, socket, ba, json);
    } else if (group->parsed()) {
      return run_group(*c, group_topic, json);
    } else if (health->parsed()) {
      auto rep = c->call([](proto::Request::Builder r) { r.setHealth(); });
      auto h = rep.get().getHealth();
      if (json)
        std::printf("{\"serving\":%s,\"pid\":%u,\"uptime_ns\":%" PRIu64
                    ",\"topics\":%u,\"clients\":%u,"
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
