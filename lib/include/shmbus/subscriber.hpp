// shmbus::Subscriber — reads one partition ring in place.
//
// poll() hands out a View straight into the (read-only) ring mapping. A view is
// valid until it is released: release(view) frees it and everything polled before
// it; release_all() frees everything polled so far. Until then the producer cannot
// overwrite it (tethered subscribers) — so release promptly.
//
// Contract: one thread at a time per Subscriber. Hot-path calls return Status and
// never throw or allocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "shmbus/bus.hpp"
#include "shmbus/error.hpp"
#include "shmbus/shm/ring.hpp"

namespace shmbus {

// A frame in the ring: its header and its payload bytes, both read-only ring memory.
class View {
 public:
  View() = default;
  explicit View(const shm::FrameView& f) : f_(f) {}
  const shm::FrameHeader& header() const { return *f_.hdr; }
  std::span<const std::byte> bytes() const { return {f_.payload, f_.payload_len}; }
  const std::byte* data() const { return f_.payload; }
  uint32_t size() const { return f_.payload_len; }
  uint64_t sequence() const { return f_.hdr->sequence; }
  uint64_t timestamp_ns() const { return f_.hdr->timestamp_ns; }
  uint64_t message_id() const { return f_.hdr->message_id; }
  uint64_t schema_id() const { return f_.hdr->schema_id; }
  uint32_t producer_id() const { return f_.hdr->producer_id; }
  uint64_t position() const { return f_.pos; }
  uint64_t next_position() const { return f_.next; }
  explicit operator bool() const { return f_.hdr != nullptr; }

 private:
  shm::FrameView f_{};
};

class ReplaySubscriber;

struct SubscribeStats {
  uint64_t received = 0;
  uint64_t waits = 0;    // times poll_wait slept on the futex
  uint64_t corrupt = 0;  // polls that found an invalid frame
  uint64_t lapped = 0;   // times the producer overtook this (untethered) subscriber
};

class Subscriber {
 public:
  Subscriber(std::shared_ptr<PartitionMapping> m, const SubscriberOptions& opts);
  // With the provider, for durable names (resume records kept by the daemon).
  Subscriber(std::shared_ptr<PartitionMapping> m, const SubscriberOptions& opts,
             std::shared_ptr<SegmentProvider> records);
  // A subscriber of a `spill` topic that reads through the topic's log when it
  // falls behind (Bus::subscriber makes these; see SubscriberOptions::log_fallback).
  Subscriber(std::unique_ptr<ReplaySubscriber> spill, const SubscriberOptions& opts);
  Subscriber(Subscriber&&) noexcept;
  Subscriber& operator=(Subscriber&&) noexcept;
  ~Subscriber();

  // Next message, if any. Never blocks. An untethered subscriber that the producer
  // overtook gets Status::lapped once (never overwritten bytes), then continues at
  // the producer's tail; the sequence numbers show the gap.
  Status poll(View& out);
  // Untethered subscribers read ring memory the producer may reuse: after reading
  // a view, check(view) says whether what was read is intact (ok) or may have been
  // overwritten meanwhile (lapped: discard what was read). Always ok when tethered.
  Status check(const View& v) const;
  // Next message, waiting up to timeout_ns (<0: forever) per the wait strategy.
  Status poll_wait(View& out, int64_t timeout_ns);
  // Frees `v` and every view polled before it.
  void release(const View& v);
  // Frees every view polled so far.
  void release_all();

  // Polls up to `max` messages, calls f(const View&) on each, then releases them
  // all with one cursor store. Returns the number handled.
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

  // Waits (per strategy) until a message may be available. Returns false on
  // timeout, close or interrupt.
  bool wait(int64_t timeout_ns) { return wait_for(timeout_ns) == Status::ok; }
  // The same, saying why it returned: ok, timed_out, closed or interrupted.
  Status wait_for(int64_t timeout_ns);

  // Ends a wait (poll_wait, wait, wait_for) blocked in another thread of this
  // process at once: it returns Status::interrupted (wait: false). Raised while
  // nothing waits, it ends the next wait at once, one time. Thread-safe and
  // async-signal-safe: the one member another thread may call during a wait.
  // (Go cancels a context through it; Rust's interrupt handle calls it.)
  void interrupt() noexcept;

  const SubscribeStats& stats() const { return stats_; }
  uint64_t position() const;
  uint32_t slot_index() const { return r_.slot_index(); }
  uint32_t partition() const;
  const SubscriberOptions& options() const { return opts_; }
  const shm::RingRefs& refs() const { return r_.refs(); }
  // Closes; a durable (named) subscriber's slot is parked, not freed.
  void close();
  // A durable subscriber gives up its name: the slot is freed, nothing is kept.
  void forget();
  bool resumed() const { return resumed_; }  // true if it took over a parked slot
  // True when this subscriber reads a `spill` topic untethered, falling back to the
  // topic's log when the producer overtakes it (views are then private copies).
  bool spilling() const { return spill_ != nullptr; }
  // A named (durable, group) tethered subscriber of a `spill` topic whose position
  // the ring no longer holds reads what it lost from the topic's log, then the ring
  // (docs/messaging.md "Group members on durable topics"). How often it did.
  uint64_t log_catchups() const { return log_catchups_; }
  // True while it reads the log.
  bool reading_log() const;

 private:
  void open_slot(SegmentProvider* records);
  Status lapped_now();
  Status on_lapped(View& out);
  Status log_poll(View& out);
  struct LogCatchup;
  Status spill_poll(View& out, int64_t timeout_ns, bool wait);
  std::shared_ptr<PartitionMapping> m_;
  SubscriberOptions opts_;
  shm::RingReader r_;
  CursorGrant grant_;  // daemon mode: the daemon's grant (our page)
  SubscribeStats stats_;
  bool open_ = false;
  bool resumed_ = false;
  shm::Interrupt intr_;
  std::unique_ptr<ReplaySubscriber> spill_;  // set: every call goes to the log-backed reader
  // Named subscribers: the provider (asked for the topic's log directory on a lap)
  // and the log reader of a catch-up (kept while its views are out).
  std::shared_ptr<SegmentProvider> provider_;
  std::unique_ptr<LogCatchup> catchup_;
  uint64_t log_catchups_ = 0;
  bool log_dir_asked_ = false;
  std::string log_dir_;
};

}  // namespace shmbus
