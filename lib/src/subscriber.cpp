#include "shmbus/subscriber.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/shm/recovery.hpp"
#include "shmbus/spill_format.hpp"

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace shmbus {

using shm::aref;

// A named tethered subscriber of a `spill` topic reading through the topic's log
// what the ring no longer holds (docs/messaging.md "Group members on durable topics:
// reading the log"). Kept while views read from the log are out.
struct Subscriber::LogCatchup {
  spill::ChunkArena arena{256 << 10};  // the log views' private copies, freed by sequence
  spill::LogReader log;
  uint64_t epoch = 0;          // the ring's (DataHeader::created_ns): other epochs' records are skipped
  uint64_t from = 0;           // ring position of the next frame wanted
  uint64_t last_seq = 0;       // of the last view read from the log
  bool active = false;         // reading the log (false: back on the ring)
  bool armed = false;          // the end of the log was seen once (the hand-over rule)
  uint64_t archiver_pos = 0;   // read before the log was checked the second time
  bool archiver = false;       // an archiver slot existed then
  uint64_t ring_from = ~0ull;  // views below this position came from the log
  bool covered = false;        // the log reached our position (a record of this ring at or below it)
  bool gap_reported = false;   // a hole in the log was reported (lapped) once
  bool has_held = false;       // `held` is delivered next (after the lapped that reported its hole)
  spill::RecordView held;
  explicit LogCatchup(const std::string& dir) : log(dir, arena) {}
};

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
  if (!opts_.name.empty()) provider_ = std::move(records);
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
    uint64_t check_below = grant_.check_below;
    if (grant_.resumed) {
      // The daemon resumes a parked tethered slot with no lap check (it held the
      // producer while parked). One parked during a log catch-up sits below what the
      // ring lost before it joined: if its position is lapped, every frame below
      // the tail gets the P9 check, so the first poll says lapped (and a `spill`
      // topic's log is read) instead of taking a later lap's frame for the next.
      const shm::RingRefs& r = m_->refs();
      std::atomic_thread_fence(std::memory_order_acquire);  // SYNC(zero_intent), as RingReader::lapped_at
      if (aref(r.data->zero_intent).load(std::memory_order_relaxed) > grant_.position + r.capacity)
        check_below = std::max(check_below, aref(r.data->tail_pos).load(std::memory_order_seq_cst));
    }
    r_.adopt(m_->refs(), grant_.slot, grant_.page, grant_.position, opts_.tethered, check_below);
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
      resumed_(o.resumed_), spill_(std::move(o.spill_)), provider_(std::move(o.provider_)),
      catchup_(std::move(o.catchup_)), log_catchups_(o.log_catchups_), log_dir_asked_(o.log_dir_asked_),
      log_dir_(std::move(o.log_dir_)) {
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
    provider_ = std::move(o.provider_);
    catchup_ = std::move(o.catchup_);
    log_catchups_ = o.log_catchups_;
    log_dir_asked_ = o.log_dir_asked_;
    log_dir_ = std::move(o.log_dir_);
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
  catchup_.reset();
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

// The ring lost our position. A named tethered subscriber of a `spill` topic reads
// it from the log; any other continues at the tail (lapped).
Status Subscriber::on_lapped(View& out) {
  if (opts_.name.empty() || !opts_.tethered || !opts_.log_fallback || !provider_ || !m_) return lapped_now();
  if (!log_dir_asked_) {
    log_dir_asked_ = true;
    try {
      log_dir_ = provider_->spill_log_dir(m_->topic());  // empty: not a `spill` topic
    } catch (...) {
      log_dir_asked_ = false;  // the daemon is away: asked again at the next lap
      log_dir_.clear();
    }
  }
  if (log_dir_.empty()) return lapped_now();
  try {
    if (!catchup_)
      catchup_ = std::make_unique<LogCatchup>(spill::partition_dir(log_dir_, m_->topic(), m_->partition()));
  } catch (...) {
    return lapped_now();
  }
  LogCatchup& c = *catchup_;
  // The durable record is a ring position: read the log from its first record of
  // this ring's epoch at or above our position.
  c.log.seek_earliest();
  c.epoch = m_->refs().data->created_ns;
  c.from = r_.position();
  c.active = true;
  c.armed = false;
  c.covered = c.gap_reported = c.has_held = false;
  c.ring_from = ~0ull;
  ++log_catchups_;
  return log_poll(out);
}

// The next frame from the log; at its end, the hand-over to the ring at the
// position after the last record delivered (ReplaySubscriber's rule).
Status Subscriber::log_poll(View& out) {
  LogCatchup& c = *catchup_;
  const shm::RingRefs& r = m_->refs();
  const auto deliver = [&](const spill::RecordView& rv) {
    shm::FrameView f;
    f.hdr = rv.hdr;  // a private copy, CRC-checked by LogReader
    f.payload = rv.payload;
    f.payload_len = rv.payload_len;
    f.pos = rv.ring_pos;
    f.next = rv.ring_end();
    out = View(f);
    c.from = f.next;
    c.last_seq = rv.seq();
    c.covered = true;  // the log covers everything up to `from` now
    ++stats_.received;
    return Status::ok;
  };
  if (c.has_held) {
    c.has_held = false;
    return deliver(c.held);
  }
  for (int rounds = 0; rounds < 4;) {
    spill::RecordView rv;
    const spill::LogReader::Next n = c.log.next(rv);
    if (n == spill::LogReader::Next::ok) {
      c.armed = false;
      if (c.log.file_epoch() != c.epoch) continue;  // another ring's positions: meaningless here
      if (rv.ring_pos < c.from) {
        c.covered = true;  // the log reaches below our position: [from, next record) is padding
        continue;
      }
      if (!c.covered && rv.ring_pos > c.from && rv.seq() > 1 && !c.gap_reported) {
        // No record of this ring below our position, and the first one above it
        // leaves a hole: retention dropped what was there (or it never reached the
        // log). Say so once (lapped, the sequences show the gap), then go on.
        c.gap_reported = true;
        c.held = rv;  // its bytes stay in the arena until released
        c.has_held = true;
        ++stats_.lapped;
        return Status::lapped;
      }
      return deliver(rv);
    }
    ++rounds;
    if (n == spill::LogReader::Next::corrupt) {
      ++stats_.corrupt;
      return Status::corrupt;
    }
    if (!c.armed) {
      // The archiver's position, read BEFORE the log is checked once more: every
      // data frame below it reached the log before the archiver released it, so if
      // the log has nothing new, [from, archiver) holds padding only.
      c.archiver_pos = spill::archiver_position(r, &c.archiver);
      c.armed = true;
      continue;
    }
    c.armed = false;
    uint64_t at = c.from;
    bool gap = false;
    if (r_.lapped_at(at)) {
      if (!c.archiver) {
        // Nobody archives the topic (the daemon's archiver is stopped): what the
        // ring lost is not in the log. Continue at the tail; the sequences show the gap.
        c.active = false;
        c.ring_from = aref(r.data->tail_pos).load(std::memory_order_acquire);
        return lapped_now();
      }
      // A log that covers nothing of this ring up to our position (unreadable,
      // emptied by retention) proves no padding: skipping to the archiver is a gap.
      gap = !c.covered && !c.gap_reported;
      if (c.archiver_pos >= at) at = c.archiver_pos;
      if (r_.lapped_at(at)) return Status::empty;  // the archiver has it: the log grows soon
    }
    // Back on the ring. Our cursor (tethered, at most `from`) holds the producer
    // below at + capacity, and `at` was not lapped after that: nothing at or above
    // it can be overwritten before we release it.
    c.active = false;
    c.ring_from = at;
    r_.seek(at);
    // [from, at) holds padding, or a gap just reported: with every view read from
    // the log released, the cursor moves to `at` now. Left below the ring it would
    // hold the producer until the next ring message is released, and with nothing
    // in the ring yet nobody would move it (the producer waits for us, we for it).
    if (at > r_.released() && r_.released() >= c.from) r_.release_to(at);
    if (gap) {
      c.gap_reported = true;
      ++stats_.lapped;
      return Status::lapped;
    }
    return poll(out);
  }
  return Status::empty;
}

bool Subscriber::reading_log() const { return catchup_ && catchup_->active; }

uint64_t Subscriber::position() const {
  return catchup_ && catchup_->active ? catchup_->from : r_.position();
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
  if (catchup_ && v.position() < catchup_->ring_from) return Status::ok;  // a private copy from the log
  return r_.checked(v.position()) && r_.lapped_at(v.position()) ? Status::lapped : Status::ok;
}

uint32_t Subscriber::partition() const { return m_ ? m_->partition() : opts_.partition; }

Status Subscriber::poll(View& out) {
  if (!open_) return Status::closed;
  if (spill_) [[unlikely]]
    return spill_poll(out, 0, false);
  if (catchup_ && catchup_->active) [[unlikely]]
    return log_poll(out);
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
    case shm::RingStatus::lapped: return on_lapped(out);
    default: ++stats_.corrupt; return Status::corrupt;
  }
}

Status Subscriber::wait_for(int64_t timeout_ns) {
  if (!open_) return Status::closed;
  if (spill_) return spill_->wait_for(timeout_ns);
  if (catchup_ && catchup_->active) [[unlikely]] {
    // Reading the log: nothing wakes a reader for the log growing; a short nap.
    if (intr_.take()) return Status::interrupted;
    if (timeout_ns == 0) return Status::timed_out;
    const int64_t nap = timeout_ns < 0 || timeout_ns > 1'000'000 ? 1'000'000 : timeout_ns;
    shm::DataHeader* d = m_->refs().data;
    const uint32_t v = aref(d->data_futex).load(std::memory_order_relaxed);
    shm::futex_wait_interruptible(&d->data_futex, v, &intr_, nap);
    r_.heartbeat(shm::monotonic_ns());
    return intr_.take() ? Status::interrupted : Status::ok;
  }
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
  if (!open_ || !v) return;
  uint64_t pos = v.next_position();
  if (catchup_) [[unlikely]] {
    catchup_->arena.release(v.sequence());
    if (!catchup_->active) {
      if (v.position() >= catchup_->ring_from) {
        catchup_.reset();  // past the hand-over: every log view is released, the reader can go
      } else if (pos >= catchup_->from && catchup_->ring_from > pos) {
        // The last view read from the log, released after the hand-over: [from,
        // ring_from) holds padding (or a reported gap), so the cursor goes to
        // ring_from (else it would hold the producer below the ring: see log_poll).
        pos = catchup_->ring_from;
      }
    }
  }
  r_.release_deferred(pos);
}

void Subscriber::release_all() {
  if (spill_) [[unlikely]] {
    if (open_) spill_->release_all();
    return;
  }
  if (!open_) return;
  if (catchup_) [[unlikely]] {
    if (catchup_->active) {
      catchup_->arena.release(catchup_->last_seq);
      r_.release_deferred(catchup_->from);
      return;
    }
    catchup_.reset();
  }
  r_.release_deferred(r_.position());
}

}  // namespace shmbus
