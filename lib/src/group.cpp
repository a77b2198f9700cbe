// shmbus::GroupSubscriber: a consumer group member over durable subscribers named
// "group:<group>" (see shmbus/group.hpp and docs/messaging.md, "Consumer groups").
#include "shmbus/group.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>

namespace shmbus {

GroupSubscriber::GroupSubscriber(Bus bus, const std::string& topic, const std::string& group,
                                 const GroupOptions& opts)
    : bus_(std::move(bus)), topic_(topic), group_(group), opts_(opts) {
  auto st = bus_.provider().group_call(SegmentProvider::GroupOp::join, topic_, group_, 0, 0);
  open_ = true;
  last_sync_ns_ = shm::monotonic_ns();
  try {
    apply(st);
  } catch (...) {
    close();
    throw;
  }
}

GroupSubscriber::GroupSubscriber(GroupSubscriber&& o) noexcept
    : bus_(o.bus_), topic_(std::move(o.topic_)), group_(std::move(o.group_)), opts_(o.opts_),
      member_(o.member_), generation_(o.generation_), assigned_(std::move(o.assigned_)),
      held_(std::move(o.held_)), rr_(o.rr_), last_sync_ns_(o.last_sync_ns_), want_(o.want_), open_(o.open_),
      stats_(o.stats_) {
  o.open_ = false;
  o.held_.clear();
}

GroupSubscriber& GroupSubscriber::operator=(GroupSubscriber&& o) noexcept {
  if (this != &o) {
    close();
    bus_ = o.bus_;
    topic_ = std::move(o.topic_);
    group_ = std::move(o.group_);
    opts_ = o.opts_;
    member_ = o.member_;
    generation_ = o.generation_;
    assigned_ = std::move(o.assigned_);
    held_ = std::move(o.held_);
    rr_ = o.rr_;
    last_sync_ns_ = o.last_sync_ns_;
    want_ = o.want_;
    open_ = o.open_;
    stats_ = o.stats_;
    o.open_ = false;
    o.held_.clear();
  }
  return *this;
}

GroupSubscriber::~GroupSubscriber() { close(); }

void GroupSubscriber::close() {
  if (!open_) return;
  open_ = false;
  for (auto& h : held_) h.sub->close();  // parked: committed up to the last release
  held_.clear();
  try {
    bus_.provider().group_call(SegmentProvider::GroupOp::leave, topic_, group_, member_, generation_);
  } catch (...) {
    // Gone already (the daemon restarted, the topic went): nothing to leave.
  }
}

GroupSubscriber::Held* GroupSubscriber::held(uint32_t p) {
  for (auto& h : held_)
    if (h.partition == p) return &h;
  return nullptr;
}

std::vector<uint32_t> GroupSubscriber::partitions() const {
  std::vector<uint32_t> v;
  for (auto& h : held_)
    if (!h.leaving) v.push_back(h.partition);
  return v;
}

void GroupSubscriber::give_up(size_t i) {
  held_[i].sub->close();  // parks the name at the last release: the next holder resumes there
  held_.erase(held_.begin() + ptrdiff_t(i));
  ++stats_.given_up;
  if (rr_ >= held_.size()) rr_ = 0;
}

bool GroupSubscriber::try_take(uint32_t p) {
  SubscriberOptions so;
  so.partition = p;
  so.tethered = opts_.tethered;
  so.wait = opts_.wait;
  so.spin_ns = opts_.spin_ns;
  so.open_timeout_ms = opts_.open_timeout_ms;
  so.name = durable_name(group_);
  std::unique_ptr<Subscriber> s;
  try {
    s = std::make_unique<Subscriber>(bus_.subscriber(topic_, so));
  } catch (const Error& e) {
    // Its previous holder has not let go yet (its next sync parks it, or the daemon
    // does when it dies): retried on the next slow path.
    if (e.code() != ErrorCode::already_exists) throw;
    ++stats_.take_retries;
    return false;
  }
  Held h;
  h.partition = p;
  h.sub = std::move(s);
  auto at = std::lower_bound(held_.begin(), held_.end(), p,
                             [](const Held& a, uint32_t b) { return a.partition < b; });
  held_.insert(at, std::move(h));
  ++stats_.taken;
  return true;
}

void GroupSubscriber::apply(const SegmentProvider::GroupState& st) {
  member_ = st.member_id;
  if (st.partitions != assigned_) ++stats_.rebalances;
  generation_ = st.generation;
  assigned_ = st.partitions;
  const auto mine = [&](uint32_t p) { return std::binary_search(assigned_.begin(), assigned_.end(), p); };
  // First give up what was lost (a partition with unreleased views stops being
  // polled and goes at its release), then take what is new.
  for (size_t i = held_.size(); i-- > 0;) {
    Held& h = held_[i];
    if (mine(h.partition)) {
      h.leaving = false;
      continue;
    }
    if (h.outstanding)
      h.leaving = true;
    else
      give_up(i);
  }
  want_ = false;
  for (uint32_t p : assigned_)
    if (!held(p) && !try_take(p)) want_ = true;
}

void GroupSubscriber::slow_path(uint64_t now) {
  last_sync_ns_ = now;
  ++stats_.syncs;
  SegmentProvider::GroupState st;
  try {
    st = bus_.provider().group_call(SegmentProvider::GroupOp::sync, topic_, group_, member_, generation_);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::not_found) throw;
    // No such member: our connection ended (a daemon restart, a reconnect) and took
    // the membership with it. Join again; what we hold stays held until the new
    // assignment says otherwise.
    st = bus_.provider().group_call(SegmentProvider::GroupOp::join, topic_, group_, 0, 0);
    ++stats_.rejoins;
  }
  apply(st);
}

bool GroupSubscriber::sync() {
  if (!open_) return false;
  const auto before = partitions();
  slow_path(shm::monotonic_ns());
  return partitions() != before;
}

Status GroupSubscriber::poll(GroupView& out) {
  if (!open_) return Status::closed;
  // The clock is read every 16th poll (busy) and on every empty round: a clock read
  // costs more than the poll itself.
  uint64_t now = 0;
  if ((++polls_ & 15) == 0 && (now = shm::monotonic_ns()) - last_sync_ns_ >= uint64_t(opts_.sync_interval_ns))
    slow_path(now);
  for (int round = 0; round < 2; ++round) {
    const size_t n = held_.size();
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (rr_ + k) % n;
      Held& h = held_[i];
      if (h.leaving) continue;
      View v;
      const Status s = h.sub->poll(v);
      if (s == Status::empty) continue;
      rr_ = (i + 1) % n;
      if (s != Status::ok) return s;
      h.outstanding = true;
      h.polled_next = v.next_position();
      ++stats_.received;
      out = GroupView(v, h.partition);
      return Status::ok;
    }
    // An empty round: the slow path when due, or while a partition is still to be
    // taken (its previous holder had not let go) or nothing is held, at most every
    // idle_sync_ns; then one more round.
    if (round == 0) {
      now = shm::monotonic_ns();
      const uint64_t since = now - last_sync_ns_;
      if (since < uint64_t(opts_.sync_interval_ns) &&
          (!(want_ || held_.empty()) || since < uint64_t(opts_.idle_sync_ns)))
        break;
      slow_path(now);
    }
  }
  return Status::empty;
}

void GroupSubscriber::interrupt() noexcept {
  intr_.raise();
  // The waiter publishes its subscriber, then re-checks intr_ (both seq_cst): either
  // it sees the raise, or this sees its subscriber and interrupts that wait too.
  interrupters_.fetch_add(1, std::memory_order_seq_cst);
  if (Subscriber* s = waiting_.load(std::memory_order_seq_cst)) s->interrupt();
  interrupters_.fetch_sub(1, std::memory_order_release);
}

// One wait of at most `chunk` ns on `s` (or, with no subscriber, on the interrupt
// alone): ok, timed_out, interrupted (intr_ taken), or the subscriber's failure.
Status GroupSubscriber::wait_on(Subscriber* s, int64_t chunk) {
  if (!s) {
    if (intr_.take()) return Status::interrupted;
    timespec ts{chunk / 1'000'000'000, long(chunk % 1'000'000'000)};
    syscall(SYS_futex, &intr_.pending, FUTEX_WAIT_PRIVATE, 0, &ts, nullptr, 0);
    return intr_.take() ? Status::interrupted : Status::timed_out;
  }
  waiting_.store(s, std::memory_order_seq_cst);
  Status w = intr_.raised() ? Status::interrupted : s->wait_for(chunk);
  waiting_.store(nullptr, std::memory_order_seq_cst);
  // An interrupter that saw `s` is done with it before `s` may be given up.
  while (interrupters_.load(std::memory_order_seq_cst) != 0) shm::cpu_relax();
  if (intr_.take()) return Status::interrupted;
  // The subscriber's own interrupt, raised by an interrupt() that this wait had
  // already outlived (and whose raise an earlier poll_wait took): not for us.
  if (w == Status::interrupted) w = Status::timed_out;
  return w;
}

Status GroupSubscriber::poll_wait(GroupView& out, int64_t timeout_ns) {
  const uint64_t start = shm::monotonic_ns();
  for (;;) {
    Status s = poll(out);
    if (s != Status::empty) return s;
    if (intr_.take()) return Status::interrupted;
    int64_t left = INT64_MAX;
    if (timeout_ns >= 0) {
      const uint64_t spent = shm::monotonic_ns() - start;
      if (spent >= uint64_t(timeout_ns)) return Status::timed_out;
      left = timeout_ns - int64_t(spent);
    }
    // One partition: wait on its ring until the next sync is due. Several (or none
    // yet): wait on each in turn, a slow-path period at a time.
    const bool one = held_.size() == 1 && !want_;
    int64_t chunk = std::min<int64_t>(left, one ? opts_.sync_interval_ns : opts_.idle_sync_ns);
    Held* h = nullptr;
    for (size_t k = 0; k < held_.size() && !h; ++k)
      if (!held_[(rr_ + k) % held_.size()].leaving) {
        rr_ = (rr_ + k) % held_.size();
        h = &held_[rr_];
      }
    // Nothing to wait on yet (the next slow path may give us a partition): the
    // interrupt alone, for one period.
    const Status w = wait_on(h ? h->sub.get() : nullptr, std::min<int64_t>(chunk, 999'999'999));
    if (w == Status::interrupted) return w;
    if (w != Status::ok && w != Status::timed_out) return w;
    if (w == Status::timed_out && !held_.empty()) rr_ = (rr_ + 1) % held_.size();
  }
}

void GroupSubscriber::release(const GroupView& v) {
  if (!open_ || !v) return;
  for (size_t i = 0; i < held_.size(); ++i) {
    Held& h = held_[i];
    if (h.partition != v.partition()) continue;
    h.sub->release(v);
    if (v.next_position() >= h.polled_next) {
      h.outstanding = false;
      if (h.leaving) give_up(i);
    }
    return;
  }
}

void GroupSubscriber::release_all() {
  if (!open_) return;
  for (size_t i = held_.size(); i-- > 0;) {
    held_[i].sub->release_all();
    held_[i].outstanding = false;
    if (held_[i].leaving) give_up(i);
  }
}

GroupSubscriber Bus::group_subscriber(const std::string& topic, const std::string& group,
                                      const GroupOptions& opts) {
  return GroupSubscriber(*this, topic, group, opts);
}

GroupSubscriber Bus::group_subscriber(const std::string& topic, const std::string& group) {
  return GroupSubscriber(*this, topic, group, GroupOptions{});
}

}  // namespace shmbus
