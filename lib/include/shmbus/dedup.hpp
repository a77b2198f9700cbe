// Dedup: a consumer drops duplicates across its own restart and a producer's retry
// (docs/messaging.md, "Delivery semantics").
//
//   shmbus::DedupWindow w({.capacity = 4096, .path = "/var/lib/app/orders.dedup"});
//   // a durable subscriber name: it resumes after the last message it released
//   View v;
//   while (sub.poll_wait(v, -1) == Status::ok) {
//     if (!w.seen(v)) {
//       apply(v, state);
//       w.record(v);
//       w.commit(state);     // the window, the position and `state`: one atomic write
//     }
//     sub.release(v);        // after the commit
//   }
//
// Two checks, both on the frame header:
//  * position: a message whose partition sequence is <= the last one recorded was
//    already handled: the consumer restarted after committing but before releasing it
//    (its durable subscriber gets it again);
//  * window: (producer id, message id) pairs of the last `capacity` messages recorded
//    (message id 0: not checked). A producer that restarts and publishes again what
//    it is unsure went out (a retry) gets new sequences but keeps its message ids and,
//    when PublisherOptions::producer_id is set to a stable value, its producer id.
// commit() writes both, plus an application state blob, to `path` atomically (a
// temporary file, fsync, rename, fsync of the directory): a handler that keeps its
// side effects in that state (or writes them in the same transaction elsewhere,
// keyed by the same position) is effectively-once. Without `path` the window lives
// in memory only (a producer's retry, not a restart, is caught).
//
// Not covered: a partition sequence that starts again at 1 (the topic deleted and
// made again) makes every message look old; delete the state file with the topic.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_set>

#include "shmbus/subscriber.hpp"

namespace shmbus {

struct DedupOptions {
  size_t capacity = 4096;  // (producer, message id) pairs remembered
  std::string path{};      // the persisted state ("": in memory only)
};

struct DedupStats {
  uint64_t by_position = 0;  // duplicates caught by the position (consumer restart)
  uint64_t by_id = 0;        // duplicates caught by (producer, message id) (producer retry)
};

class DedupWindow {
 public:
  // Loads `path` when it exists. A file that is not a valid state (bad magic, sizes,
  // checksum) throws Error(invalid_argument) naming the path: it is never half-used.
  explicit DedupWindow(DedupOptions opts = {});

  // Was this message handled already? (Counts what it finds in stats().)
  bool seen(const View& v) { return seen(v.producer_id(), v.message_id(), v.sequence()); }
  bool seen(uint32_t producer_id, uint64_t message_id, uint64_t sequence);
  // Marks a message handled: position = its sequence, its ids enter the window.
  void record(const View& v) { record(v.producer_id(), v.message_id(), v.sequence()); }
  void record(uint32_t producer_id, uint64_t message_id, uint64_t sequence);
  // Persists the window, the position and `app_state` atomically. Throws
  // Error(system) if the file cannot be written.
  void commit(std::string_view app_state);
  // Persists with the application state as it is (set_app_state, or as loaded).
  void commit() { commit_current(); }
  // Replaces the application state kept in memory (persisted by the next commit).
  void set_app_state(std::string s) { app_ = std::move(s); }

  uint64_t position() const { return position_; }
  size_t size() const { return order_.size(); }
  const std::string& app_state() const { return app_; }
  const DedupStats& stats() const { return stats_; }

 private:
  struct Key {
    uint32_t producer;
    uint64_t id;
    bool operator==(const Key& o) const { return producer == o.producer && id == o.id; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<uint64_t>()(k.id * 0x9E3779B97F4A7C15ull ^ k.producer);
    }
  };
  void insert(Key k);
  void load();
  void commit_current();

  DedupOptions opts_;
  uint64_t position_ = 0;
  std::deque<Key> order_;
  std::unordered_set<Key, KeyHash> set_;
  std::string app_;
  DedupStats stats_;
};

}  // namespace shmbus
