// Durable topics, client side: replay from the spill log into the live ring, and
// durability acknowledgements for producers. Design: docs/spill-log.md.
//
//   shmbus::ReplayOptions o;
//   o.state_dir = "/var/lib/shmbus";             // where the archiver keeps the log
//   o.start = shmbus::StartAt::sequence(1000);   // or earliest(), latest(), time(ns)
//   shmbus::ReplaySubscriber sub = shmbus::replay_subscriber(bus, "orders", o);
//   shmbus::View v;
//   while (sub.poll_wait(v, -1) == shmbus::Status::ok) { ...; sub.release(v); }
//
// The subscriber reads history from the log, then switches to the live ring at
// exactly the frame after the last one it delivered (by ring position: every log
// record carries the ring position of its frame), without a gap or a duplicate.
// Its cursor is UNTETHERED: it never holds the producer back. When the producer
// laps it, it notices (P9: zero_intent re-checked after each copy), drops what it
// was reading and continues from the log at the next sequence; it merges back
// into the ring once it catches up.
//
// Views are the same View type as Subscriber's, valid until released; they point
// into private buffers (log records, or frames copied out of the ring and
// validated after the copy), never into ring memory that could be overwritten.
//
// Contract: one thread at a time per ReplaySubscriber; hot-path calls return
// Status and never throw; they allocate only when a new buffer chunk is needed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "shmbus/bus.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus {

struct StartAt {
  enum class Kind : uint8_t { earliest, latest, sequence, time };
  Kind kind = Kind::latest;
  uint64_t value = 0;
  static StartAt earliest() { return {Kind::earliest, 0}; }
  static StartAt latest() { return {Kind::latest, 0}; }
  // The first frame with sequence >= n.
  static StartAt sequence(uint64_t n) { return {Kind::sequence, n}; }
  // The first frame (in partition order) with timestamp_ns >= t; CLOCK_MONOTONIC,
  // like FrameHeader::timestamp_ns.
  static StartAt time(uint64_t t_ns) { return {Kind::time, t_ns}; }
};

struct ReplayOptions {
  uint32_t partition = 0;
  StartAt start = StartAt::earliest();
  std::string state_dir;  // the archiver's state directory (log in <state_dir>/<topic>/<p>/)
  WaitStrategy wait = WaitStrategy::hybrid;
  int64_t spin_ns = 20'000;
  int open_timeout_ms = 5000;
  size_t chunk_bytes = 1 << 20;  // private buffer granularity
};

enum class ReplaySource : uint8_t { log, ring };

struct ReplayStats {
  uint64_t received = 0;
  uint64_t from_log = 0, from_ring = 0;
  uint64_t handovers = 0;  // log -> ring switches
  uint64_t lapped = 0;     // ring -> log fallbacks (the producer overwrote our position)
  uint64_t corrupt = 0;    // corrupt log records skipped (never delivered)
  uint64_t gaps = 0;       // history asked for but no longer in the log (retention)
};

class ReplaySubscriber {
 public:
  ReplaySubscriber(std::shared_ptr<PartitionMapping> m, const ReplayOptions& opts);
  ReplaySubscriber(ReplaySubscriber&&) noexcept;
  ReplaySubscriber& operator=(ReplaySubscriber&&) noexcept;
  ~ReplaySubscriber();

  // Next message, if any. Never blocks. Status::corrupt: a corrupt log record was
  // skipped (call again).
  Status poll(View& out);
  Status poll_wait(View& out, int64_t timeout_ns);
  void release(const View& v);
  void release_all();
  // Waits until a message may be available (true), or timeout, close, interrupt.
  bool wait(int64_t timeout_ns) { return wait_for(timeout_ns) == Status::ok; }
  Status wait_for(int64_t timeout_ns);  // ok, timed_out, closed or interrupted
  // As Subscriber::interrupt: ends a wait blocked in another thread at once.
  void interrupt() noexcept;

  template <class F>
  size_t poll_batch(size_t max, F&& f) {
    size_t n = 0;
    View v;
    while (n < max && poll(v) == Status::ok) {
      f(v);
      ++n;
    }
    if (n) release_all();
    return n;
  }

  ReplaySource source() const;
  uint64_t last_sequence() const;  // of the last message delivered, 0 if none
  const ReplayStats& stats() const;
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

ReplaySubscriber replay_subscriber(Bus& bus, const std::string& topic, const ReplayOptions& opts);

// --- durability acknowledgements (P10 in docs/memory-ordering.md) -----------------
// Highest sequence of the publisher's partition that is durable per the topic's
// flush policy (racy snapshot; 0 if no archiver ever ran).
uint64_t durable_sequence_approx(const Publisher& pub);
// Waits until every frame with sequence <= seq is durable. ok or timed_out.
// (Claim sequences: ClaimView::sequence.)
Status wait_durable(const Publisher& pub, uint64_t seq, int64_t timeout_ns);
// errno of the archiver's currently failing write or sync (ENOSPC, EIO), 0 when
// healthy: why a durable topic is back-pressured.
int archiver_error(const Publisher& pub);

}  // namespace shmbus
