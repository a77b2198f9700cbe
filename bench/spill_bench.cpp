// Durable-topic benchmark: archiver throughput per flush policy against the raw
// sequential write bandwidth of the same disk (large O_DIRECT writes, same run),
// publish->durable-ack latency, and the p99 latency a durable topic adds.
//   shmbus-spill-bench [--dir /var/tmp] [--seconds 2] [--json]
#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/publisher.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/spill/archiver.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;

namespace {

uint64_t now_ns() { return shm::monotonic_ns(); }

int rm_entry(const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }

double raw_direct_mbps(const std::string& dir, double seconds) {
  std::string path = dir + "/raw-direct.bin";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  if (fd < 0) return 0;
  const size_t blk = 4 << 20;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, blk) != 0) return 0;
  std::memset(buf, 0xab, blk);
  uint64_t t0 = now_ns(), bytes = 0;
  while (now_ns() - t0 < uint64_t(seconds * 1e9) && bytes < (2ull << 30)) {
    ssize_t n = pwrite(fd, buf, blk, off_t(bytes));
    if (n != ssize_t(blk)) break;
    bytes += blk;
  }
  fdatasync(fd);
  double s = (now_ns() - t0) / 1e9;
  close(fd);
  unlink(path.c_str());
  free(buf);
  return bytes / s / 1e6;
}

// The same disk through the page cache with the plainest writer: one thread, 256 KiB
// buffered pwrite()s, an fdatasync every interval_ms (blocking it), and a final one.
// A reference for the buffered path, not a ceiling: the archiver overlaps its writes
// and syncs (io_uring) and starts writeback early.
double raw_buffered_mbps(const std::string& dir, double seconds, uint32_t interval_ms) {
  std::string path = dir + "/raw-buffered.bin";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 0;
  const size_t blk = 256 << 10;
  std::vector<char> buf(blk, char(0xab));
  uint64_t t0 = now_ns(), bytes = 0, last_sync = t0;
  while (now_ns() - t0 < uint64_t(seconds * 1e9) && bytes < (2ull << 30)) {
    ssize_t n = pwrite(fd, buf.data(), blk, off_t(bytes));
    if (n != ssize_t(blk)) break;
    bytes += blk;
    if (now_ns() - last_sync >= uint64_t(interval_ms) * 1'000'000) {
      fdatasync(fd);
      last_sync = now_ns();
    }
  }
  fdatasync(fd);
  double s = (now_ns() - t0) / 1e9;
  close(fd);
  unlink(path.c_str());
  return bytes / s / 1e6;
}

struct Result {
  std::string policy;
  uint32_t size;
  double msgs_s, mb_s, log_mb_s;
  double log_b_per_msg = 0;  // log bytes written per message (format overhead included)
};

spill::ArchiverConfig g_acfg;  // --buffer-kib, --buffers, --inflight
uint32_t g_interval_ms = 10;   // --interval-ms (throughput rows)

// archived == false: the same producer loop on a topic without any cursor (the ring
// just wraps): the producer's own ceiling on this machine, in the same run.
// slow_rate > 0: a ReplaySubscriber thread from `earliest` consumes at most slow_rate
// messages/s (a batch every millisecond, sleeping in between, so it takes almost no
// CPU from the producer and the archiver), verifying the sequence of each message.
// Under policy spill it must not hold the producer back: it falls into the log.
struct SlowResult {
  uint64_t received = 0, lapped = 0, from_log = 0, out_of_order = 0;
};
SlowResult g_slow;

Result throughput(const std::string& dir, spill::FlushPolicy pol, uint32_t size, double seconds,
                  bool archived = true, double slow_rate = 0) {
  std::string prefix = "shmbus-sb-" + std::to_string(getpid());
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "bench.durable";
  TopicConfig tc;
  tc.capacity = 16 << 20;
  tc.max_payload = 64 << 10;
  tc.policy = archived ? Policy::spill : Policy::block;
  bus.create_topic(topic, tc);
  std::string sdir = dir + "/state-" + std::to_string(getpid());
  spill::Archiver a(g_acfg);
  spill::LogConfig lc;
  lc.state_dir = sdir;
  lc.flush = pol;
  lc.flush_interval_ms = g_interval_ms;
  lc.segment_bytes = 256 << 20;
  if (archived) {
    a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
    a.start();
  }
  Result r{archived ? spill::to_string(pol) : "no archiver", size, 0, 0, 0};
  double secs = 0;
  uint64_t msgs = 0;
  std::atomic<bool> stop_slow{false};
  std::thread slow;
  g_slow = {};
  if (slow_rate > 0) {
    ReplayOptions ro;
    ro.start = StartAt::earliest();
    ro.state_dir = sdir;
    auto rs = std::make_shared<ReplaySubscriber>(replay_subscriber(bus, topic, ro));
    slow = std::thread([rs, slow_rate, &stop_slow] {
      const uint64_t per_ms = std::max<uint64_t>(1, uint64_t(slow_rate / 1000));
      uint64_t expect = 1;
      while (!stop_slow.load(std::memory_order_relaxed)) {
        // Load shape, not synchronisation: the consumer's pace.
        timespec ts{0, 1'000'000};
        nanosleep(&ts, nullptr);
        rs->poll_batch(per_ms, [&](const View& v) {
          if (v.sequence() != expect) ++g_slow.out_of_order;
          expect = v.sequence() + 1;
          ++g_slow.received;
        });
      }
      g_slow.lapped = rs->stats().lapped;
      g_slow.from_log = rs->stats().from_log;
    });
  }
  {
    PublisherOptions po;
    po.block_timeout_ns = 10'000'000'000;
    Publisher pub = bus.publisher(topic, po);
    std::vector<std::byte> payload(size, std::byte{0x5a});
    uint64_t t0 = now_ns(), n = 0;
    while (now_ns() - t0 < uint64_t(seconds * 1e9)) {
      for (int k = 0; k < 256; ++k)
        if (pub.offer(payload.data(), size) == Status::ok) ++n;
    }
    if (archived) wait_durable(pub, n, 60'000'000'000);
    double s = (now_ns() - t0) / 1e9;
    r.msgs_s = n / s;
    r.mb_s = n * double(size) / s / 1e6;
    secs = s;
    msgs = n;
  }
  stop_slow = true;
  if (slow.joinable()) slow.join();
  a.stop(true);
  // Log bytes as the archiver wrote them (segment file headers excluded); without an
  // archiver, what format v1 would have written (64 B per record + padded payload).
  uint64_t log_bytes = 0;
  if (archived) {
    for (const auto& ps : a.stats()) log_bytes += ps.bytes;
  } else {
    log_bytes = msgs * (64 + ((uint64_t(size) + 7) & ~uint64_t(7)));
  }
  r.log_mb_s = secs > 0 ? log_bytes / secs / 1e6 : 0;
  r.log_b_per_msg = msgs ? double(log_bytes) / double(msgs) : 0;
  bus.remove_topic(topic);
  nftw(sdir.c_str(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return r;
}

struct Lat {
  double p50, p99, p999, max;
};
Lat pct(std::vector<uint64_t>& v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v.empty() ? 0.0 : v[std::min(v.size() - 1, size_t(q * v.size()))] / 1e3; };
  return {at(0.5), at(0.99), at(0.999), v.empty() ? 0.0 : v.back() / 1e3};
}

// Paced 64 B messages, a subscriber thread records commit->receive latency.
// durable: with an archiver (policy spill, `pol`); else a plain topic.
Lat delivery_latency(const std::string& dir, bool durable, spill::FlushPolicy pol, int rate, double seconds) {
  std::string prefix = "shmbus-sl-" + std::to_string(getpid());
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "bench.lat";
  TopicConfig tc;
  tc.capacity = 4 << 20;
  tc.policy = durable ? Policy::spill : Policy::block;
  bus.create_topic(topic, tc);
  std::string sdir = dir + "/lat-" + std::to_string(getpid());
  std::unique_ptr<spill::Archiver> a;
  if (durable) {
    a = std::make_unique<spill::Archiver>();
    spill::LogConfig lc;
    lc.state_dir = sdir;
    lc.flush = pol;
    a->add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
    a->start();
  }
  SubscriberOptions so;
  so.tethered = false;
  Subscriber sub = bus.subscriber(topic, so);
  const uint64_t total = uint64_t(rate * seconds);
  std::vector<uint64_t> lat;
  lat.reserve(total);
  std::thread rx([&] {
    View v;
    while (lat.size() < total) {
      if (sub.poll_wait(v, 2'000'000'000) != Status::ok) break;
      lat.push_back(now_ns() - v.timestamp_ns());
      sub.release(v);
    }
  });
  {
    Publisher pub = bus.publisher(topic);
    char msg[64] = {};
    const uint64_t gap = 1'000'000'000ull / uint64_t(rate);
    uint64_t next = now_ns();
    for (uint64_t i = 0; i < total; ++i) {
      while (now_ns() < next) {
      }
      pub.offer(msg, sizeof msg);
      next += gap;
    }
  }
  rx.join();
  if (a) a->stop(true);
  bus.remove_topic(topic);
  nftw(sdir.c_str(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return pct(lat);
}

// publish -> durable acknowledgement, one message at a time.
Lat ack_latency(const std::string& dir, spill::FlushPolicy pol, int count) {
  std::string prefix = "shmbus-sa-" + std::to_string(getpid());
  Bus bus = Bus::direct({.shm_prefix = prefix});
  const std::string topic = "bench.ack";
  TopicConfig tc;
  tc.capacity = 4 << 20;
  tc.policy = Policy::spill;
  bus.create_topic(topic, tc);
  std::string sdir = dir + "/ack-" + std::to_string(getpid());
  spill::Archiver a;
  spill::LogConfig lc;
  lc.state_dir = sdir;
  lc.flush = pol;
  lc.flush_interval_ms = 10;
  a.add_partition(bus.provider().open(topic, 0, Role::admin, 5000), lc);
  a.start();
  std::vector<uint64_t> lat;
  {
    Publisher pub = bus.publisher(topic);
    char msg[64] = {};
    for (int i = 0; i < count; ++i) {
      ClaimView cv;
      if (pub.claim(sizeof msg, cv) != Status::ok) break;
      std::memcpy(cv.data, msg, sizeof msg);
      uint64_t t0 = now_ns();
      pub.commit(sizeof msg);
      wait_durable(pub, cv.sequence, 5'000'000'000);
      lat.push_back(now_ns() - t0);
    }
  }
  a.stop(true);
  bus.remove_topic(topic);
  nftw(sdir.c_str(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return pct(lat);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/var/tmp";
  double seconds = 2;
  bool json = false, only_tp = false;
  bool raw_buffered = false;  // --raw-buffered
  std::string row_policy;     // --row
  uint32_t row_size = 0;
  int reps = 1;
  std::vector<spill::ArchiverConfig> compare;
  bool slow_mode = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc)
      dir = argv[++i];
    else if (a == "--buffer-kib" && i + 1 < argc)
      g_acfg.buffer_bytes = uint32_t(atoi(argv[++i])) << 10;
    else if (a == "--buffers" && i + 1 < argc)
      g_acfg.buffer_count = uint32_t(atoi(argv[++i]));
    else if (a == "--inflight" && i + 1 < argc)
      g_acfg.max_inflight_writes = uint32_t(atoi(argv[++i]));
    else if (a == "--buffered")
      g_acfg.direct_io = false;
    else if (a == "--kick-kib" && i + 1 < argc)
      g_acfg.writeback_kick_bytes = uint64_t(atoi(argv[++i])) << 10;
    else if (a == "--reps" && i + 1 < argc)
      reps = std::max(1, atoi(argv[++i]));
    else if (a == "--interval-ms" && i + 1 < argc)
      g_interval_ms = uint32_t(std::max(1, atoi(argv[++i])));
    else if (a == "--throughput-only")
      only_tp = true;
    else if (a == "--raw-buffered")
      raw_buffered = true;
    else if (a == "--row" && i + 1 < argc) {
      // --row POLICY:SIZE (with --throughput-only): that row alone, e.g. to profile it.
      std::string v = argv[++i];
      const size_t c = v.find(':');
      if (c == std::string::npos) return 2;
      row_policy = v.substr(0, c);
      row_size = uint32_t(atoi(v.c_str() + c + 1));
    } else if (a == "--slow-consumer")
      slow_mode = true;
    else if (a == "--config" && i + 1 < argc) {
      // BUFFER_KIB,BUFFERS,INFLIGHT,KICK_KIB[,DIRECT]: compare archiver configurations
      // in one run, interleaved row by row (repeat --config; the first is the
      // reference). DIRECT 0 writes interval/batch segments through the page cache.
      unsigned k = 0, n = 0, f = 0, kk = 0, direct = 1;
      const int got = std::sscanf(argv[++i], "%u,%u,%u,%u,%u", &k, &n, &f, &kk, &direct);
      if (got != 4 && got != 5) return 2;
      spill::ArchiverConfig c;
      c.buffer_bytes = k << 10;
      c.buffer_count = n;
      c.max_inflight_writes = f;
      c.writeback_kick_bytes = uint64_t(kk) << 10;
      c.direct_io = direct != 0;
      compare.push_back(c);
    } else if (a == "--seconds" && i + 1 < argc)
      seconds = atof(argv[++i]);
    else if (a == "--json")
      json = true;
    else if (a == "--quick")
      seconds = 0.2;
    else {
      std::printf(
          "usage: %s [--dir DIR] [--seconds S] [--quick] [--json] [--throughput-only] [--reps N] "
          "[--slow-consumer] [--row POLICY:SIZE] [--raw-buffered] [--buffered]\n"
          "          [--buffer-kib K] [--buffers N] [--inflight N] [--interval-ms M] [--kick-kib K]\n"
          "          [--config BUFFER_KIB,BUFFERS,INFLIGHT,KICK_KIB[,DIRECT] ...]\n",
          argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  if (slow_mode) {
    // Issue 4: under policy spill a consumer 100x slower than the producer must not
    // slow it: producer throughput with that consumer against none, interleaved per
    // rep (none, slow, slow, none, ...), medians and the median of per-rep ratios.
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::printf(
        "| flush | msg | no consumer msgs/s | consumer at 1/100 msgs/s | ratio (per-rep median) | consumer "
        "received, from log, lapped, out of order |\n"
        "|---|---|---|---|---|---|\n");
    bool ok = true;
    for (uint32_t size : {64u, 1024u}) {
      std::vector<double> base, with, ratio;
      SlowResult last{};
      for (int rep = 0; rep < reps; ++rep) {
        const bool slow_first = rep % 2 == 1;
        double b = 0, w = 0;
        for (int k = 0; k < 2; ++k) {
          if ((k == 0) != slow_first) {
            b = throughput(dir, spill::FlushPolicy::interval, size, seconds).msgs_s;
          } else {
            const double target = (base.empty() ? b : med(base)) / 100;
            w = throughput(dir, spill::FlushPolicy::interval, size, seconds, true,
                           target > 0 ? target : 10'000)
                    .msgs_s;
            last = g_slow;
            if (g_slow.out_of_order || !g_slow.received) ok = false;
          }
        }
        base.push_back(b);
        with.push_back(w);
        ratio.push_back(w / b);
      }
      std::printf("| interval | %u B | %.0f | %.0f | %.3f | %llu, %llu, %llu, %llu |\n", size, med(base),
                  med(with), med(ratio), (unsigned long long)last.received, (unsigned long long)last.from_log,
                  (unsigned long long)last.lapped, (unsigned long long)last.out_of_order);
      std::printf("verdict %u B: producer with the slow consumer at %.1f%% of the no-consumer run: %s\n",
                  size, 100 * med(ratio), med(ratio) >= 0.90 ? "WITHIN 10%" : "NOT WITHIN 10%");
    }
    return ok ? 0 : 1;
  }
  if (!compare.empty()) {
    // rows x configs, interleaved per rep; medians; ratios against the first config.
    std::vector<double> raws;
    const std::vector<std::pair<spill::FlushPolicy, uint32_t>> rows = {{spill::FlushPolicy::interval, 1024},
                                                                       {spill::FlushPolicy::none, 1024},
                                                                       {spill::FlushPolicy::batch, 1024},
                                                                       {spill::FlushPolicy::interval, 64},
                                                                       {spill::FlushPolicy::batch, 64}};
    std::vector<std::vector<std::vector<double>>> mbs(rows.size(),
                                                      std::vector<std::vector<double>>(compare.size()));
    for (int rep = 0; rep < reps; ++rep) {
      raws.push_back(raw_direct_mbps(dir, seconds));
      for (size_t r = 0; r < rows.size(); ++r)
        for (size_t c = 0; c < compare.size(); ++c) {
          g_acfg = compare[c];
          mbs[r][c].push_back(throughput(dir, rows[r].first, rows[r].second, seconds).log_mb_s);
        }
    }
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::vector<double> rw = raws;
    const double raw = med(rw);
    std::printf(
        "raw O_DIRECT %.0f MB/s (median of %d); log MB/s medians, %% of raw, ratio to config 1 (per-rep "
        "ratio median)\n",
        raw, reps);
    std::printf("| flush | msg |");
    for (auto& c : compare)
      std::printf(" %uK x %u, %u in flight, kick %lluK, %s |", c.buffer_bytes >> 10, c.buffer_count,
                  c.max_inflight_writes, (unsigned long long)(c.writeback_kick_bytes >> 10),
                  c.direct_io ? "direct" : "buffered");
    std::printf("\n|---|---|");
    for (size_t c = 0; c < compare.size(); ++c) std::printf("---|");
    std::printf("\n");
    for (size_t r = 0; r < rows.size(); ++r) {
      std::printf("| %s | %u B |", spill::to_string(rows[r].first), rows[r].second);
      for (size_t c = 0; c < compare.size(); ++c) {
        std::vector<double> ratio;
        for (int k = 0; k < reps; ++k) ratio.push_back(mbs[r][c][size_t(k)] / mbs[r][0][size_t(k)]);
        std::printf(" %.0f (%.0f%%, x%.2f) |", med(mbs[r][c]), 100.0 * med(mbs[r][c]) / raw, med(ratio));
      }
      std::printf("\n");
    }
    return 0;
  }
  // --reps N: the raw baseline and every row are measured N times, interleaved
  // (raw, rows, raw, rows, ...), and the medians reported: the machine is shared.
  std::vector<double> raws, bufs;
  std::vector<std::vector<Result>> runs;
  for (int rep = 0; rep < reps; ++rep) {
    raws.push_back(raw_direct_mbps(dir, seconds));
    if (raw_buffered) bufs.push_back(raw_buffered_mbps(dir, seconds, g_interval_ms));
    std::vector<Result> rr;
    for (uint32_t size : {64u, 1024u}) {
      if (!row_policy.empty()) {
        if (size != row_size) continue;
        for (auto p : {spill::FlushPolicy::none, spill::FlushPolicy::interval, spill::FlushPolicy::batch})
          if (row_policy == spill::to_string(p)) rr.push_back(throughput(dir, p, size, seconds));
        if (rr.empty()) return 2;
        continue;
      }
      rr.push_back(throughput(dir, spill::FlushPolicy::none, size, seconds, false));
      for (auto p : {spill::FlushPolicy::none, spill::FlushPolicy::interval, spill::FlushPolicy::batch})
        rr.push_back(throughput(dir, p, size, seconds));
    }
    runs.push_back(rr);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double raw = median(raws);
  std::vector<Result> rs = runs[0];
  for (size_t i = 0; i < rs.size(); ++i) {
    std::vector<double> m, mb, lm, lb;
    for (auto& rr : runs) {
      m.push_back(rr[i].msgs_s);
      mb.push_back(rr[i].mb_s);
      lm.push_back(rr[i].log_mb_s);
      lb.push_back(rr[i].log_b_per_msg);
    }
    rs[i].msgs_s = median(m);
    rs[i].mb_s = median(mb);
    rs[i].log_mb_s = median(lm);
    rs[i].log_b_per_msg = median(lb);
  }
  if (only_tp) {
    std::printf(
        "archiver: %u x %u KiB buffers, %u writes in flight, writeback kick %llu KiB, interval %u ms; "
        "%d rep(s) of %.1f s, medians\n",
        g_acfg.buffer_count, g_acfg.buffer_bytes >> 10, g_acfg.max_inflight_writes,
        (unsigned long long)(g_acfg.writeback_kick_bytes >> 10), g_interval_ms, reps, seconds);
    if (!bufs.empty()) {
      std::vector<double> ratio;
      for (size_t k = 0; k < bufs.size(); ++k) ratio.push_back(raws[k] > 0 ? bufs[k] / raws[k] : 0);
      std::printf(
          "raw buffered write (256 KiB pwrite, fdatasync every %u ms): %.0f MB/s = %.0f%% of O_DIRECT "
          "(median of per-rep ratios; runs:",
          g_interval_ms, median(bufs), 100 * median(ratio));
      for (double b : bufs) std::printf(" %.0f", b);
      std::printf(")\n");
    }
    std::printf("raw sequential O_DIRECT write (4 MiB blocks) in %s: %.0f MB/s (runs:", dir.c_str(), raw);
    for (double r : raws) std::printf(" %.0f", r);
    std::printf(
        ")\n\n| flush | msg | msgs/s | payload MB/s | payload / raw | log MB/s | log / raw | log B/msg | "
        "msgs / no-archiver |\n"
        "|---|---|---|---|---|---|---|---|---|\n");
    double base = 0;
    for (auto& r : rs) {
      if (r.policy == "no archiver") base = r.msgs_s;
      std::printf("| %s | %u B | %.0f | %.1f | %.0f%% | %.1f | %.0f%% | %.1f | %.0f%% |\n", r.policy.c_str(),
                  r.size, r.msgs_s, r.mb_s, raw > 0 ? 100.0 * r.mb_s / raw : 0.0, r.log_mb_s,
                  raw > 0 ? 100.0 * r.log_mb_s / raw : 0.0, r.log_b_per_msg,
                  base > 0 ? 100.0 * r.msgs_s / base : 0.0);
    }
    return 0;
  }
  const int rate = 20000;
  Lat plain = delivery_latency(dir, false, spill::FlushPolicy::none, rate, seconds / 2);
  Lat dur = delivery_latency(dir, true, spill::FlushPolicy::interval, rate, seconds / 2);
  const int acks = seconds < 1 ? 100 : 1000;
  Lat ack_none = ack_latency(dir, spill::FlushPolicy::none, acks);
  Lat ack_batch = ack_latency(dir, spill::FlushPolicy::batch, acks);
  Lat ack_interval = ack_latency(dir, spill::FlushPolicy::interval, acks / 10);
  if (json) {
    std::printf("{\"raw_direct_mb_s\": %.1f, \"throughput\": [", raw);
    for (size_t i = 0; i < rs.size(); ++i)
      std::printf(
          "%s{\"policy\": \"%s\", \"size\": %u, \"msgs_s\": %.0f, \"mb_s\": %.1f, \"log_mb_s\": %.1f}",
          i ? ", " : "", rs[i].policy.c_str(), rs[i].size, rs[i].msgs_s, rs[i].mb_s, rs[i].log_mb_s);
    std::printf(
        "], \"delivery_us\": {\"plain_p99\": %.2f, \"durable_p99\": %.2f}, "
        "\"ack_us\": {\"none_p99\": %.1f, \"batch_p99\": %.1f, \"interval_p99\": %.1f}}\n",
        plain.p99, dur.p99, ack_none.p99, ack_batch.p99, ack_interval.p99);
    return 0;
  }
  std::printf("raw sequential O_DIRECT write (4 MiB blocks) in %s: %.0f MB/s\n\n", dir.c_str(), raw);
  std::printf("| flush | msg | msgs/s | payload MB/s | log MB/s | log / raw |\n|---|---|---|---|---|---|\n");
  for (auto& r : rs)
    std::printf("| %s | %u B | %.0f | %.1f | %.1f | %.0f%% |\n", r.policy.c_str(), r.size, r.msgs_s, r.mb_s,
                r.log_mb_s, raw > 0 ? 100.0 * r.log_mb_s / raw : 0.0);
  std::printf(
      "\ndelivery latency, 64 B at %d msg/s (us): plain p50 %.2f p99 %.2f p99.9 %.2f max %.1f | "
      "durable(interval) p50 %.2f p99 %.2f p99.9 %.2f max %.1f | added p99 %.2f\n",
      rate, plain.p50, plain.p99, plain.p999, plain.max, dur.p50, dur.p99, dur.p999, dur.max,
      dur.p99 - plain.p99);
  std::printf(
      "publish -> durable ack (us): none p50 %.1f p99 %.1f | batch p50 %.1f p99 %.1f | "
      "interval(10 ms) p50 %.1f p99 %.1f\n",
      ack_none.p50, ack_none.p99, ack_batch.p50, ack_batch.p99, ack_interval.p50, ack_interval.p99);
  return 0;
}
