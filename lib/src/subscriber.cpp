#include "shmbus/subscriber.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/shm/recovery.hpp"

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace shmbus {

uint64_t durable_name_hash(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h ? h : 1;
}

Subscriber::Subscriber(std::shared_ptr<PartitionMapping> m, const SubscriberOptions& opts)
    : m_(std::move(m)), opts_(opts) {
  open_slot(nullptr);
}

Subscriber::Subscriber(std::shared_ptr<PartitionMapping> m, const SubscriberOptions& opts,
                       std::shared_ptr<SegmentProvider> records)
    : m_(std::move(m)), opts_(opts) {
  open_slot(records.get());
}

void Subscriber::open_slot(SegmentProvider* records) {
  const auto where = [&] {
    return "topic '" + m_->topic() + "' partition " + std::to_string(m_->partition());
  };
  if (m_->granted()) {
    // Daemon mode (layout 3): the daemon runs the join (or the resume of a parked
    // durable name, which it checks belongs to our uid) and grants this
    // subscriber its own cursor page; nothing else here is writable.
    grant_ = m_->join_cursor(opts_.tethered, opts_.name, shm::RingReader::kAtTail);
    r_.adopt(m_->refs(), grant_.slot, grant_.page, grant_.position, opts_.tethered, grant_.check_below);
    r_.watch_grant(grant_.generation);
    resumed_ = grant_.resumed;
    open_ = true;
    return;
  }
  const uint32_t me = uint32_t(getpid());
  uint64_t h = 0, start = shm::RingReader::kAtTail;
  if (!opts_.name.empty()) {
    h = durable_name_hash(opts_.name);
    // P11: take over the parked slot of this name, if there is one.
    for (int tries = 0;; ++tries) {
      uint32_t owner = 0;
      auto r = r_.resume(m_->refs(), me, opts_.tethered, h, owner);
      if (r == shm::RingReader::Resume::resumed) {
        resumed_ = open_ = true;
        return;
      }
      if (r == shm::RingReader::Resume::none) break;
      // In use: by a live process, or by a dead one nobody has parked yet. A dead
      // owner makes no further stores, so parking it here (CAS pid -> 0) is safe
      // against the daemon doing the same (only one CAS wins).
      if (tries < 4 && owner != me && !shm::process_alive(owner)) {
        for (uint32_t i = 0; i < m_->refs().slot_count; ++i)
          if (shm::aref(m_->refs().slots[i].name_hash).load(std::memory_order_relaxed) == h)
            shm::recover_dead_cursor(m_->refs(), i, owner);  // parks it (P11)
        continue;
      }
      throw Error(ErrorCode::already_exists, where() + ": durable subscriber '" + opts_.name +
                                                 "' is in use by pid " + std::to_string(owner));
    }
    uint64_t pos = 0;
    if (records && records->durable_position(m_->topic(), m_->partition(), opts_.name, pos)) start = pos;
  }
  if (!r_.join(m_->refs(), me, opts_.tethered, h, start))
    throw Error(ErrorCode::no_slot, where() + ": every subscriber slot is taken");
  open_ = true;
  if (opts_.name.empty()) {
    uint64_t batch = opts_.release_batch;
    if (batch == SubscriberOptions::kReleaseBatchAuto)
      batch = std::min<uint64_t>(m_->refs().capacity / 16, 16384);
    r_.set_release_batch(batch);
  }
  if (h && records) {
    try {
      records->durable_joined(m_->topic(), m_->partition(), opts_.name, r_.released());
    } catch (...) {
      r_.leave();
      open_ = false;
      throw;
    }
  }
}

Subscriber::Subscriber(std::unique_ptr<ReplaySubscriber> spill, const SubscriberOptions& opts)
    : opts_(opts), open_(spill != nullptr), spill_(std::move(spill)) {}

Subscriber::Subscriber(Subscriber&& o) noexcept
    : m_(std::move(o.m_)), opts_(o.opts_), r_(o.r_), grant_(o.grant_), stats_(o.stats_), open_(o.open_),
      resumed_(o.resumed_), spill_(std::move(o.spill_)) {
  o.open_ = false;
  o.grant_ = {};
}

Subscriber& Subscriber::operator=(Subscriber&& o) noexcept {
  if (this != &o) {
    close();
    m_ = std::move(o.m_);
    opts_ = o.opts_;
    r_ = o.r_;
    grant_ = o.grant_;
    stats_ = o.stats_;
    open_ = o.open_;
    resumed_ = o.resumed_;
    spill_ = std::move(o.spill_);
    o.open_ = false;
    o.grant_ = {};
  }
  return *this;
}

Subscriber::~Subscriber() { close(); }

void Subscriber::close() {
  if (!open_) return;
  if (spill_) {
    spill_->close();
    spill_.reset();
    open_ = false;
    return;
  }
  r_.flush_release();
  if (grant_) {
    r_.detach();
    m_->leave_cursor(grant_, !opts_.name.empty());  // P11: a named slot is parked
  } else if (opts_.name.empty())
    r_.leave();
  else
    r_.park();  // P11: the position stays, under the name
  open_ = false;
  m_.reset();
}

void Subscriber::forget() {
  if (!open_) return;
  if (spill_) return close();  // anonymous: nothing kept
  if (grant_) {
    r_.detach();
    m_->leave_cursor(grant_, false);
  } else
    r_.leave();
  open_ = false;
  m_.reset();
}

Status Subscriber::lapped_now() {
  ++stats_.lapped;
  r_.skip_to_tail();
  return Status::lapped;
}

void Subscriber::interrupt() noexcept {
  if (spill_)
    spill_->interrupt();
  else
    intr_.raise();
}

// The log-backed reader of a `spill` topic (Bus::subscriber). Its views are private
// copies checked after the copy, so check() has nothing to add.
Status Subscriber::spill_poll(View& out, int64_t timeout_ns, bool wait) {
  const Status s = wait ? spill_->poll_wait(out, timeout_ns) : spill_->poll(out);
  if (s == Status::ok) ++stats_.received;
  stats_.lapped = spill_->stats().lapped;
  return s;
}

Status Subscriber::check(const View& v) const {
  if (!open_ || !v) return Status::closed;
  if (spill_) return Status::ok;
  return r_.checked(v.position()) && r_.lapped_at(v.position()) ? Status::lapped : Status::ok;
}

uint32_t Subscriber::partition() const { return m_ ? m_->partition() : opts_.partition; }

Status Subscriber::poll(View& out) {
  if (!open_) return Status::closed;
  if (spill_) [[unlikely]]
    return spill_poll(out, 0, false);
  shm::FrameView f;
  switch (r_.poll(f)) {
    case shm::RingStatus::ok:
      out = View(f);
      ++stats_.received;
      return Status::ok;
    case shm::RingStatus::empty: {
      r_.flush_release();  // going idle: producers must see every release (P4)
      // Slow path: a restarted daemon that could not take our grant back freed its
      // slot; if frames read since it was last seen held may have been overwritten,
      // say so (lapped) instead of going on as if nothing happened.
      bool lapped = false;
      if (r_.grant_gone(lapped) && lapped) return lapped_now();
      return Status::empty;
    }
    case shm::RingStatus::lapped: return lapped_now();
    default: ++stats_.corrupt; return Status::corrupt;
  }
}

Status Subscriber::wait_for(int64_t timeout_ns) {
  if (!open_) return Status::closed;
  if (spill_) return spill_->wait_for(timeout_ns);
  if (r_.has_data()) return Status::ok;
  r_.flush_release();  // about to wait: producers must see every release (P4)
  const uint64_t start = shm::monotonic_ns();
  const uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + uint64_t(timeout_ns);
  uint32_t iter = 0;
  for (;;) {
    if (r_.has_data()) return Status::ok;
    if (intr_.take()) return Status::interrupted;
    uint64_t now = shm::monotonic_ns();
    if (now >= deadline) return Status::timed_out;
    bool sleep = opts_.wait == WaitStrategy::futex ||
                 (opts_.wait == WaitStrategy::hybrid && now - start >= uint64_t(opts_.spin_ns));
    if (!sleep) {
      ++iter;
      if (opts_.wait == WaitStrategy::spin_yield && iter > 64)
        sched_yield();
      else
        shm::cpu_relax();
      continue;
    }
    ++stats_.waits;
    // Bounded sleeps keep the heartbeat fresh for the daemon's liveness checks.
    int64_t chunk = 100'000'000;
    if (deadline != UINT64_MAX && int64_t(deadline - now) < chunk) chunk = int64_t(deadline - now);
    if (r_.wait(chunk, &intr_)) return Status::ok;
    if (bool lapped = false; r_.grant_gone(lapped) && lapped) return lapped_now();
    r_.heartbeat(shm::monotonic_ns());
  }
}

Status Subscriber::poll_wait(View& out, int64_t timeout_ns) {
  if (spill_) [[unlikely]]
    return open_ ? spill_poll(out, timeout_ns, true) : Status::closed;
  Status s = poll(out);
  if (s != Status::empty) return s;  // a message at once: no clock read (the common case)
  const uint64_t start = shm::monotonic_ns();
  for (;;) {
    int64_t left = timeout_ns;
    if (timeout_ns >= 0) {
      uint64_t spent = shm::monotonic_ns() - start;
      if (spent >= uint64_t(timeout_ns)) return Status::timed_out;
      left = timeout_ns - int64_t(spent);
    }
    // A wake-up can be for a padding frame only: poll again until the deadline.
    if (Status w = wait_for(left); w != Status::ok) return w;
    s = poll(out);
    if (s != Status::empty) return s;
  }
}

void Subscriber::release(const View& v) {
  if (spill_) [[unlikely]] {
    if (open_) spill_->release(v);
    return;
  }
  if (open_ && v) r_.release_deferred(v.next_position());
}

void Subscriber::release_all() {
  if (spill_) [[unlikely]] {
    if (open_) spill_->release_all();
    return;
  }
  if (open_) r_.release_deferred(r_.position());
}

}  // namespace shmbus
