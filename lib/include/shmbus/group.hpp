// shmbus::GroupSubscriber — one member of a consumer group (shmbusd only).
//
//   auto m = bus.group_subscriber("orders", "billing", {});
//   shmbus::GroupView v;
//   while (running)
//     if (m.poll_wait(v, 100'000'000) == shmbus::Status::ok) { handle(v); m.release(v); }
//
// The members of a group split the topic's partitions (the daemon assigns them: an
// even, sticky share per member). On each assigned partition a member reads through a
// durable subscriber named "group:<group>": the group's committed position on that
// partition is that name's (the last release), it survives member deaths and daemon
// restarts, and only one process at a time holds it. Delivery is at least once per
// group, in order per partition: what a member polled and did not release before it
// died (or before a rebalance took the partition away while it was unreleased — a
// member never gives up a partition with unreleased views) is read again by the next
// holder.
//
// The slow path (a sync with the daemon) runs inside poll: every sync_interval_ns
// (busy or idle), and after an empty round at most every idle_sync_ns while an
// assigned partition is still to be taken. On a new
// assignment the member first gives up (parks) the partitions it lost, then takes
// the new ones; a partition still held by its previous owner ("in use") is retried on
// each slow path until that owner lets go (its own next sync) or dies (the daemon
// parks a dead holder's slot at once).
//
// Contract: one thread at a time (interrupt() excepted); poll/release never throw;
// the slow path may throw Error (the daemon refused: access, quotas, the topic went).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shmbus/bus.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus {

struct GroupOptions {
  bool tethered = true;
  WaitStrategy wait = WaitStrategy::hybrid;
  int64_t spin_ns = 20'000;
  int open_timeout_ms = 5000;
  int64_t sync_interval_ns = 10'000'000;  // the longest between two syncs
  int64_t idle_sync_ns =
      1'000'000;  // waiting to take a partition: a sync per empty round, at most this often
};

// A polled message and the partition it came from.
class GroupView : public View {
 public:
  GroupView() = default;
  GroupView(const View& v, uint32_t partition) : View(v), partition_(partition) {}
  uint32_t partition() const { return partition_; }

 private:
  uint32_t partition_ = 0;
};

struct GroupStats {
  uint64_t received = 0;
  uint64_t syncs = 0;
  uint64_t rebalances = 0;    // assignments that changed what this member should hold
  uint64_t taken = 0;         // partitions taken
  uint64_t given_up = 0;      // partitions parked for another member
  uint64_t take_retries = 0;  // takes refused "in use" (the previous holder had not let go)
  uint64_t rejoins = 0;       // the daemon had no such member (its connection ended): joined again
};

class GroupSubscriber {
 public:
  GroupSubscriber(Bus bus, const std::string& topic, const std::string& group, const GroupOptions& opts);
  GroupSubscriber(GroupSubscriber&&) noexcept;
  GroupSubscriber& operator=(GroupSubscriber&&) noexcept;
  ~GroupSubscriber();

  // The next message of any held partition (round robin over them), if any. Never
  // blocks long (a slow path is one round trip to the daemon); throws only from
  // the slow path (Error).
  Status poll(GroupView& out);
  // The same, waiting up to timeout_ns (<0: forever); Status::interrupted when
  // interrupt() ended the wait.
  Status poll_wait(GroupView& out, int64_t timeout_ns);
  // Ends a poll_wait blocked in another thread at once (Status::interrupted).
  // Raised while nothing waits, it ends the next poll_wait at once, one time.
  // Thread-safe and async-signal-safe: the one member another thread may call
  // (never concurrently with close or destruction). The C ABI's
  // shmbus_group_interrupt, Go's context and Rust's Interrupter are built on it.
  void interrupt() noexcept;
  // Frees `v` and everything polled before it on its partition (commits it).
  void release(const GroupView& v);
  // Frees everything polled so far, on every partition.
  void release_all();

  // Runs the slow path now; true when what this member holds changed.
  bool sync();
  // Partitions held now (reading them), ascending.
  std::vector<uint32_t> partitions() const;
  // Partitions the daemon assigned in generation() (some may still be held by
  // their previous owner), ascending.
  const std::vector<uint32_t>& assigned() const { return assigned_; }
  uint32_t generation() const { return generation_; }
  uint64_t member_id() const { return member_; }
  const GroupStats& stats() const { return stats_; }
  const std::string& topic() const { return topic_; }
  const std::string& group() const { return group_; }
  // Parks every held partition (committed up to the last release) and leaves the group.
  void close();

  // The durable subscriber name a group reads each partition under.
  static std::string durable_name(const std::string& group) { return "group:" + group; }

 private:
  struct Held {
    uint32_t partition = 0;
    std::unique_ptr<Subscriber> sub;
    uint64_t polled_next = 0;  // next position of the last view polled
    bool outstanding = false;  // a polled view is not released yet
    bool leaving = false;      // lost in a rebalance: parked once released
  };
  void slow_path(uint64_t now);
  void apply(const SegmentProvider::GroupState& st);
  bool try_take(uint32_t p);
  void give_up(size_t i);
  Held* held(uint32_t p);

  Bus bus_;
  std::string topic_, group_;
  GroupOptions opts_;
  uint64_t member_ = 0;
  uint32_t generation_ = 0;
  std::vector<uint32_t> assigned_;
  std::vector<Held> held_;  // by partition, ascending
  size_t rr_ = 0;
  uint64_t last_sync_ns_ = 0;
  uint64_t polls_ = 0;
  bool want_ = false;  // an assigned partition is not held yet
  bool open_ = false;
  GroupStats stats_;
  // interrupt(): the group's flag, and the held subscriber poll_wait is waiting on
  // (interrupted too, so the wait ends at once). A subscriber is given up (freed)
  // only outside a wait and after interrupters_ drops to 0, so an interrupting
  // thread never touches a freed one.
  shm::Interrupt intr_;
  std::atomic<Subscriber*> waiting_{nullptr};
  std::atomic<uint32_t> interrupters_{0};
  Status wait_on(Subscriber* s, int64_t chunk);
};

}  // namespace shmbus
