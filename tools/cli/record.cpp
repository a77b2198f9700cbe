// shmbus record / shmbus play: a self-describing recording of topics (the format:
// record_format.hpp, docs/record-format.md).
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "cli/common.hpp"
#include "cli/record_format.hpp"
#include "shmbus/bus.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/spill_format.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus::cli {
namespace {

using namespace rec;

uint64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

uint64_t wall_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

uint32_t crc(uint32_t c, const void* p, size_t n) { return spill::crc32c(c, p, n); }

// The recording file. Records are appended to a buffer and written with write(2) a
// buffer of whole records at a time (flush(): when 1 MiB is pending, and every 50 ms
// from the recorder's main loop), so that a recorder killed at any instruction leaves
// a file that ends between two records: play uses every record in it.
class Out {
 public:
  explicit Out(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(ErrorCode::system, path + ": " + strerror(errno));
  }
  ~Out() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    buf_.insert(buf_.end(), c, c + n);
    bytes_ += n;
  }
  // Called after each whole record.
  void record_done() {
    if (buf_.size() >= (1u << 20)) flush();
  }
  void flush() {
    size_t off = 0;
    while (off < buf_.size()) {
      const ssize_t w = ::write(fd_, buf_.data() + off, buf_.size() - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw Error(ErrorCode::system, path_ + ": write: " + strerror(w < 0 ? errno : ENOSPC));
      off += size_t(w);
    }
    buf_.clear();
  }
  void close() {
    flush();
    const bool ok = fsync(fd_) == 0;
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    if (!ok) throw Error(ErrorCode::system, path_ + ": fsync: " + strerror(e));
  }
  uint64_t bytes() const { return bytes_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::vector<char> buf_;
  uint64_t bytes_ = 0;
};

struct RecTopic {
  std::string name;
  uint32_t partitions = 0;
  uint64_t topic_schema = 0;
  SchemaNodes schema;
  uint64_t records = 0;
};

}  // namespace

// ---------------------------------------------------------------- record

int run_record(DaemonClient& c, const std::string& socket, const RecordArgs& a, bool json) {
  if (a.topics.empty()) throw Error(ErrorCode::invalid_argument, "name at least one topic");
  if (a.topics.size() > kMaxTopics) throw Error(ErrorCode::invalid_argument, "too many topics");
  std::vector<RecTopic> topics;
  std::set<std::string> seen;
  for (auto& t : a.topics) {
    if (!seen.insert(t).second) throw Error(ErrorCode::invalid_argument, "topic '" + t + "' named twice");
    auto rep = c.call([&](proto::Request::Builder r) { r.setDescribeTopic(t); });
    auto spec = rep.get().getTopic().getSpec();
    RecTopic rt;
    rt.name = t;
    rt.partitions = spec.getPartitions();
    rt.topic_schema = spec.getSchemaId();
    rt.schema = registered_schema(c, t);
    capnp::StructSchema compiled;
    if (!rt.schema && rt.topic_schema && find_schema(rt.topic_schema, compiled))
      rt.schema = schema_nodes(compiled);
    if (rt.schema.bytes.size() > kMaxSchemaLen) rt.schema = {};
    topics.push_back(std::move(rt));
  }

  stop_on_signals();
  Bus bus = Bus::connect(socket);
  // One subscriber per partition, all joined before the first record is written (so
  // that "recording" on stdout means every partition is being read).
  struct Sub {
    uint16_t topic;
    Subscriber s;
  };
  std::vector<Sub> subs;
  for (size_t i = 0; i < topics.size(); ++i)
    for (uint32_t p = 0; p < topics[i].partitions; ++p) {
      SubscriberOptions so;
      so.partition = p;
      so.tethered = a.tethered;
      so.log_fallback = false;
      subs.push_back({uint16_t(i), bus.subscriber(topics[i].name, so)});
    }

  Out out(a.out);
  FileHeader fh{};
  std::memcpy(fh.magic, kMagic, sizeof kMagic);
  fh.version = kRecordVersion;
  fh.header_size = sizeof(FileHeader);
  fh.topic_count = uint32_t(topics.size());
  fh.start_wall_ns = wall_ns();
  fh.crc = crc(0, &fh, offsetof(FileHeader, crc));
  out.write(&fh, sizeof fh);
  for (auto& t : topics) {
    TopicHeader th{};
    th.name_len = uint16_t(t.name.size());
    th.partitions = t.partitions;
    th.schema_len = uint32_t(t.schema.bytes.size());
    th.topic_schema_id = t.topic_schema;
    th.root_id = t.schema.root_id;
    uint32_t x = crc(0, reinterpret_cast<const char*>(&th) + 4, sizeof th - 4);
    x = crc(x, t.name.data(), t.name.size());
    th.crc = crc(x, t.schema.bytes.data(), t.schema.bytes.size());
    out.write(&th, sizeof th);
    out.write(t.name.data(), t.name.size());
    out.write(t.schema.bytes.data(), t.schema.bytes.size());
    static const char zeros[8] = {};
    out.write(zeros, pad8(uint32_t(t.name.size() + t.schema.bytes.size())));
  }

  out.flush();  // the header and the topic table: a file from here on is playable

  std::mutex mu;  // the file and the counters
  std::condition_variable cv;
  uint64_t records = 0, lapped = 0;
  std::string error;
  std::atomic<bool> stop{false};
  const uint64_t t0 = mono_ns();
  std::vector<std::thread> threads;
  for (auto& sub : subs)
    threads.emplace_back([&, sp = &sub] {
      std::vector<std::byte> copy;
      View v;
      while (!stop.load(std::memory_order_relaxed)) {
        const Status s = sp->s.poll_wait(v, 50'000'000);
        if (s == Status::lapped) {
          std::lock_guard<std::mutex> g(mu);
          ++lapped;
          continue;
        }
        if (s != Status::ok) continue;
        // Copied once out of the ring; the header fields read once.
        RecordHeader rh{};
        rh.topic = sp->topic;
        rh.partition = sp->s.partition();
        rh.sequence = v.sequence();
        rh.message_id = v.message_id();
        rh.schema_id = v.schema_id();
        const uint32_t len = v.size();
        copy.assign(v.data(), v.data() + len);
        sp->s.release(v);
        v = View{};
        if (len > kMaxPayload) continue;
        rh.payload_len = len;
        std::lock_guard<std::mutex> g(mu);
        if (stop.load(std::memory_order_relaxed)) break;
        rh.recv_ns = mono_ns() - t0;  // taken under the lock: never decreases in the file
        uint32_t x = crc(0, reinterpret_cast<const char*>(&rh) + 4, sizeof rh - 4);
        rh.crc = crc(x, copy.data(), len);
        try {
          out.write(&rh, sizeof rh);
          out.write(copy.data(), len);
          out.record_done();
        } catch (const Error& e) {
          error = e.what();
          stop = true;
          cv.notify_all();
          break;
        }
        ++records;
        ++topics[sp->topic].records;
        if (a.count && records >= a.count) {
          stop = true;
          cv.notify_all();
          break;
        }
      }
    });

  const std::string what = std::to_string(topics.size()) + (topics.size() == 1 ? " topic, " : " topics, ") +
                           std::to_string(subs.size()) + (subs.size() == 1 ? " partition" : " partitions");
  if (json)
    std::printf("{\"recording\":%s,\"topics\":%zu,\"partitions\":%zu}\n", jstr(a.out).c_str(), topics.size(),
                subs.size());
  else
    std::printf("recording %s to %s\n", what.c_str(), a.out.c_str());
  std::fflush(stdout);
  {
    std::unique_lock<std::mutex> g(mu);
    const uint64_t deadline = a.duration > 0 ? t0 + uint64_t(a.duration * 1e9) : UINT64_MAX;
    while (!stop && !g_stop && mono_ns() < deadline) {
      cv.wait_for(g, std::chrono::milliseconds(50));  // a signal or the deadline: checked each 50 ms
      try {
        out.flush();  // whole records only (under the lock)
      } catch (const Error& e) {
        error = e.what();
        stop = true;
      }
    }
    stop = true;
  }
  for (auto& t : threads) t.join();
  subs.clear();
  const double secs = double(mono_ns() - t0) / 1e9;
  if (error.empty()) {
    try {
      RecordHeader end{};
      end.topic = kEndMarker;
      end.recv_ns = mono_ns() - t0;
      end.sequence = records;
      end.crc = crc(0, reinterpret_cast<const char*>(&end) + 4, sizeof end - 4);
      out.write(&end, sizeof end);
      out.close();
    } catch (const Error& e) {
      error = e.what();
    }
  }
  if (!error.empty()) throw Error(ErrorCode::system, error);
  if (json) {
    std::printf("{\"file\":%s,\"records\":%" PRIu64 ",\"bytes\":%" PRIu64
                ",\"seconds\":%.3f,\"lapped\":%" PRIu64 ",\"topics\":[",
                jstr(a.out).c_str(), records, out.bytes(), secs, lapped);
    for (size_t i = 0; i < topics.size(); ++i)
      std::printf("%s{\"topic\":%s,\"partitions\":%u,\"records\":%" PRIu64 ",\"schema_id\":\"%s\"}",
                  i ? "," : "", jstr(topics[i].name).c_str(), topics[i].partitions, topics[i].records,
                  hex64(topics[i].schema.root_id).c_str());
    std::printf("]}\n");
  } else {
    std::printf("recorded %" PRIu64 " messages (%s) to %s in %.1f s, %s\n", records, what.c_str(),
                a.out.c_str(), secs, human_bytes(double(out.bytes())).c_str());
    for (auto& t : topics)
      std::printf("  %s: %" PRIu64 " messages, schema %s\n", t.name.c_str(), t.records,
                  t.schema ? hex64(t.schema.root_id).c_str() : "none");
  }
  if (lapped)
    std::fprintf(stderr, "shmbus: lapped %" PRIu64 " times: messages were missed (record with --tethered)\n",
                 lapped);
  return lapped ? 3 : 0;
}

// ---------------------------------------------------------------- play

namespace {

struct PlayTopic {
  std::string name, target;
  uint32_t partitions = 0;
  uint64_t topic_schema = 0;
  SchemaNodes schema;
  std::string type;  // the schema's root type name, "" when none
  uint64_t records = 0;
  uint32_t max_partition = 0;
};

// Reads and checks a recording. open() reads the header and topic table; next()
// each record in turn (false at the end marker). Every problem is an Error
// (invalid_argument) saying what is wrong and at which offset.
class RecReader {
 public:
  explicit RecReader(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(ErrorCode::not_found, path + ": " + strerror(errno));
    f_ = fdopen(fd, "rb");
    struct stat st {};
    if (!f_ || fstat(fd, &st) != 0) {
      if (!f_) ::close(fd);
      throw Error(ErrorCode::system, path + ": " + strerror(errno));
    }
    size_ = uint64_t(st.st_size);
  }
  ~RecReader() {
    if (f_) std::fclose(f_);
  }

  void open(std::vector<PlayTopic>& topics, FileHeader& fh) {
    read(&fh, sizeof fh, "file header");
    if (std::memcmp(fh.magic, kMagic, sizeof kMagic) != 0) bad(0, "not a shmbus recording (bad magic)");
    if (fh.version != kRecordVersion)
      bad(0, "format version " + std::to_string(fh.version) + ", this tool reads version " +
                 std::to_string(kRecordVersion));
    if (fh.crc != crc(0, &fh, offsetof(FileHeader, crc))) bad(0, "file header CRC mismatch");
    if (fh.header_size != sizeof fh || fh.flags != 0) bad(0, "unknown header size or flags");
    if (fh.topic_count == 0 || fh.topic_count > kMaxTopics)
      bad(0, "topic count " + std::to_string(fh.topic_count) + " out of range");
    std::set<std::string> names;
    for (uint32_t i = 0; i < fh.topic_count; ++i) {
      const uint64_t at = pos_;
      TopicHeader th;
      read(&th, sizeof th, "topic header");
      if (th.name_len == 0 || th.name_len > kMaxNameLen || th.schema_len > kMaxSchemaLen || th.reserved != 0)
        bad(at, "topic " + std::to_string(i) + ": name or schema length out of range");
      PlayTopic t;
      t.name.resize(th.name_len);
      read(t.name.data(), th.name_len, "topic name");
      t.schema.bytes.resize(th.schema_len);
      read(t.schema.bytes.data(), th.schema_len, "topic schema");
      char pad[8] = {};
      const uint32_t npad = pad8(uint32_t(th.name_len) + th.schema_len);
      read(pad, npad, "topic padding");
      for (uint32_t k = 0; k < npad; ++k)
        if (pad[k]) bad(at, "topic " + std::to_string(i) + ": padding is not zero");
      uint32_t x = crc(0, reinterpret_cast<const char*>(&th) + 4, sizeof th - 4);
      x = crc(x, t.name.data(), t.name.size());
      if (th.crc != crc(x, t.schema.bytes.data(), t.schema.bytes.size()))
        bad(at, "topic " + std::to_string(i) + ": CRC mismatch");
      for (unsigned char ch : t.name)
        if (ch <= 0x20 || ch >= 0x7f) bad(at, "topic " + std::to_string(i) + ": name is not printable");
      if (!names.insert(t.name).second) bad(at, "topic '" + t.name + "' recorded twice");
      if (th.partitions == 0) bad(at, "topic '" + t.name + "' has no partitions");
      t.partitions = th.partitions;
      t.topic_schema = th.topic_schema_id;
      if (th.schema_len) {
        t.schema.root_id = th.root_id;
        try {  // validated like any schema from a peer
          SchemaBundle b = SchemaBundle::parse({t.schema.bytes.data(), t.schema.bytes.size()}, th.root_id);
          t.type = b.type_name(th.root_id);
        } catch (const Error& e) {
          bad(at, "topic '" + t.name + "': bad schema: " + e.what());
        }
      }
      t.target = t.name;
      topics.push_back(std::move(t));
    }
    topics_ = topics.size();
  }

  // The next record (false: the end marker, or with `complete` false the end of a
  // file cut short exactly between two records).
  bool next(RecordHeader& rh, std::vector<std::byte>& payload, const std::vector<PlayTopic>& topics) {
    const uint64_t at = pos_;
    if (pos_ == size_) {
      complete_ = false;
      return false;
    }
    read(&rh, sizeof rh, "record header");
    if (rh.payload_len > kMaxPayload)
      bad(at, "record length " + std::to_string(rh.payload_len) + " out of range");
    if (rh.payload_len > size_ - pos_)
      bad(at, "truncated: the record says " + std::to_string(rh.payload_len) +
                  " payload bytes, the file has " + std::to_string(size_ - pos_) + " left");
    payload.resize(rh.payload_len);
    read(payload.data(), rh.payload_len, "payload");
    uint32_t x = crc(0, reinterpret_cast<const char*>(&rh) + 4, sizeof rh - 4);
    if (rh.crc != crc(x, payload.data(), payload.size()))
      bad(at, "record " + std::to_string(n_) + ": CRC mismatch");
    if (rh.recv_ns < last_ns_) bad(at, "record " + std::to_string(n_) + ": receive time goes back");
    last_ns_ = rh.recv_ns;
    if (rh.topic == kEndMarker) {
      if (rh.payload_len != 0 || rh.sequence != n_)
        bad(at, "end marker says " + std::to_string(rh.sequence) + " records, the file has " +
                    std::to_string(n_));
      if (pos_ != size_) bad(pos_, std::to_string(size_ - pos_) + " bytes after the end marker");
      complete_ = true;
      return false;
    }
    if (rh.topic >= topics_)
      bad(at, "record " + std::to_string(n_) + ": topic index " + std::to_string(rh.topic) + " out of range");
    if (rh.flags != 0) bad(at, "record " + std::to_string(n_) + ": unknown flags");
    if (rh.partition >= topics[rh.topic].partitions)
      bad(at,
          "record " + std::to_string(n_) + ": partition " + std::to_string(rh.partition) + " out of range");
    ++n_;
    return true;
  }
  bool complete() const { return complete_; }
  uint64_t records() const { return n_; }

 private:
  [[noreturn]] void bad(uint64_t at, const std::string& why) const {
    throw Error(ErrorCode::invalid_argument, path_ + ": offset " + std::to_string(at) + ": " + why);
  }
  void read(void* p, size_t n, const char* what) {
    if (n > size_ - pos_)
      bad(pos_, std::string("truncated: ") + what + " of " + std::to_string(n) + " bytes, " +
                    std::to_string(size_ - pos_) + " left in the file");
    if (n && std::fread(p, 1, n, f_) != n)
      throw Error(ErrorCode::system, path_ + ": read: " + strerror(errno));
    pos_ += n;
  }

  std::string path_;
  FILE* f_ = nullptr;
  uint64_t size_ = 0, pos_ = 0, n_ = 0, last_ns_ = 0;
  size_t topics_ = 0;
  bool complete_ = false;
};

void sleep_until_ns(uint64_t t) {
  timespec ts{time_t(t / 1'000'000'000ull), long(t % 1'000'000'000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR && !g_stop) {
  }
}

}  // namespace

int run_play(const std::string& socket, const PlayArgs& a, bool json) {
  if (a.speed < 0) throw Error(ErrorCode::invalid_argument, "--speed must be >= 0");
  // Pass 1: the whole file is checked before anything is published.
  std::vector<PlayTopic> topics;
  FileHeader fh{};
  uint64_t duration_ns = 0, first_ns = UINT64_MAX;
  bool complete = false;
  {
    RecReader r(a.file);
    r.open(topics, fh);
    RecordHeader rh;
    std::vector<std::byte> payload;
    while (r.next(rh, payload, topics)) {
      ++topics[rh.topic].records;
      topics[rh.topic].max_partition = std::max(topics[rh.topic].max_partition, rh.partition);
      // The span play reproduces: first record to last (not the lead time before the
      // first record, which play does not wait).
      if (first_ns == UINT64_MAX) first_ns = rh.recv_ns;
      duration_ns = rh.recv_ns - first_ns;
    }
    complete = r.complete();
  }
  for (auto& m : a.topic_map) {
    const auto eq = m.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == m.size())
      throw Error(ErrorCode::invalid_argument, "--topic-map expects RECORDED=TARGET, got '" + m + "'");
    bool found = false;
    for (auto& t : topics)
      if (t.name == m.substr(0, eq)) t.target = m.substr(eq + 1), found = true;
    if (!found)
      throw Error(ErrorCode::invalid_argument,
                  "--topic-map: no topic '" + m.substr(0, eq) + "' in " + a.file);
  }
  uint64_t total = 0;
  for (auto& t : topics) total += t.records;
  if (!complete)
    std::fprintf(stderr,
                 "shmbus: %s has no end marker (the recorder was stopped hard): its %" PRIu64
                 " complete records are used\n",
                 a.file.c_str(), total);
  if (a.check) {
    if (json) {
      std::printf("{\"file\":%s,\"version\":%u,\"start_wall_ns\":%" PRIu64 ",\"records\":%" PRIu64
                  ",\"duration_ns\":%" PRIu64 ",\"complete\":%s,\"topics\":[",
                  jstr(a.file).c_str(), fh.version, fh.start_wall_ns, total, duration_ns,
                  complete ? "true" : "false");
      for (size_t i = 0; i < topics.size(); ++i)
        std::printf("%s{\"topic\":%s,\"partitions\":%u,\"records\":%" PRIu64
                    ",\"schema_id\":\"%s\",\"type\":%s}",
                    i ? "," : "", jstr(topics[i].name).c_str(), topics[i].partitions, topics[i].records,
                    hex64(topics[i].schema.root_id).c_str(), jstr(topics[i].type).c_str());
      std::printf("]}\n");
    } else {
      std::printf("%s: format version %u, %" PRIu64 " records over %.3f s%s\n", a.file.c_str(), fh.version,
                  total, double(duration_ns) / 1e9, complete ? "" : " (no end marker)");
      for (auto& t : topics)
        std::printf("  %s: %u partitions, %" PRIu64 " records, schema %s%s%s\n", t.name.c_str(), t.partitions,
                    t.records, t.type.empty() ? "none" : t.type.c_str(), t.type.empty() ? "" : " ",
                    t.type.empty() ? "" : hex64(t.schema.root_id).c_str());
    }
    return 0;
  }

  // Publishers for every (topic, partition) with records; the recorded schema is
  // presented at open (registered on the target, or refused naming the field).
  stop_on_signals();
  Bus bus = Bus::connect(socket);
  std::map<std::pair<uint16_t, uint32_t>, Publisher> pubs;
  {
    RecReader r(a.file);
    std::vector<PlayTopic> again;
    FileHeader fh2{};
    r.open(again, fh2);
    RecordHeader rh;
    std::vector<std::byte> payload;
    for (size_t i = 0; i < topics.size(); ++i) {
      if (!topics[i].records) continue;
      const uint32_t parts = bus.partitions(topics[i].target);
      if (topics[i].max_partition >= parts)
        throw Error(ErrorCode::invalid_argument,
                    "topic '" + topics[i].target + "' has " + std::to_string(parts) +
                        " partitions; the recording of '" + topics[i].name + "' uses partition " +
                        std::to_string(topics[i].max_partition));
    }
    const uint64_t t0 = mono_ns();
    uint64_t first_ns = UINT64_MAX, played = 0;
    while (!g_stop && r.next(rh, payload, again)) {
      const PlayTopic& t = topics[rh.topic];
      auto key = std::make_pair(rh.topic, rh.partition);
      auto it = pubs.find(key);
      if (it == pubs.end()) {
        PublisherOptions po;
        po.partition = rh.partition;
        po.schema = t.schema;
        po.block_timeout_ns = 10'000'000'000;
        it = pubs.emplace(key, bus.publisher(t.target, po)).first;
      }
      if (first_ns == UINT64_MAX) first_ns = rh.recv_ns;
      if (a.speed > 0) sleep_until_ns(t0 + uint64_t(double(rh.recv_ns - first_ns) / a.speed));
      if (g_stop) break;
      const Status st = it->second.offer(payload.data(), payload.size(), rh.message_id, rh.schema_id);
      if (st != Status::ok)
        throw Error(ErrorCode::system, "publish to '" + t.target + "' [" + std::to_string(rh.partition) +
                                           "] failed after " + std::to_string(played) +
                                           " messages: " + to_string(st));
      ++played;
    }
    const double secs = double(mono_ns() - t0) / 1e9;
    if (json) {
      std::printf("{\"file\":%s,\"played\":%" PRIu64 ",\"records\":%" PRIu64
                  ",\"seconds\":%.3f,\"speed\":%g,\"topics\":[",
                  jstr(a.file).c_str(), played, total, secs, a.speed);
      for (size_t i = 0; i < topics.size(); ++i)
        std::printf("%s{\"topic\":%s,\"to\":%s,\"records\":%" PRIu64 "}", i ? "," : "",
                    jstr(topics[i].name).c_str(), jstr(topics[i].target).c_str(), topics[i].records);
      std::printf("]}\n");
    } else {
      std::printf("played %" PRIu64 " of %" PRIu64 " messages from %s in %.3f s\n", played, total,
                  a.file.c_str(), secs);
      for (auto& t : topics)
        std::printf("  %s -> %s: %" PRIu64 " messages\n", t.name.c_str(), t.target.c_str(), t.records);
    }
    return played == total ? 0 : 1;
  }
}

}  // namespace shmbus::cli
