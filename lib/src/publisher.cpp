#include "shmbus/publisher.hpp"
#include "shmbus/shm/recovery.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <sched.h>
#include <unistd.h>

namespace shmbus {

using shm::aref;

static std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

const char* to_string(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::empty: return "empty";
    case Status::back_pressured: return "back-pressured";
    case Status::timed_out: return "timed out";
    case Status::too_large: return "too large";
    case Status::corrupt: return "corrupt frame";
    case Status::malformed: return "malformed message";
    case Status::closed: return "closed";
    case Status::lapped: return "lapped by the producer";
    case Status::interrupted: return "interrupted";
  }
  return "unknown";
}

Publisher::Publisher(std::shared_ptr<PartitionMapping> m, const PublisherOptions& opts)
    : m_(std::move(m)), opts_(opts) {
  const shm::RingRefs& r = m_->refs();
  const bool multi = r.multi();
  const uint32_t me = uint32_t(getpid());
  // The topic's root type (written by the segment's creator, the daemon in daemon
  // mode) against the one this producer builds: refused before anything is written.
  if (opts_.schema_id != 0 && r.schema_id != 0 && opts_.schema_id != r.schema_id)
    throw Error(ErrorCode::incompatible, "topic '" + m_->topic() + "' carries Cap'n Proto root type @0x" +
                                             hex(r.schema_id) + ", this publisher builds @0x" +
                                             hex(opts_.schema_id) + ": incompatible schema");
  if (m_->granted()) {
    // Daemon mode (layout 4): the daemon grants the ownership and writes its own
    // token as the owner (it takes over from a grantee it proved dead, refuses one
    // that lives); our pid appears nowhere in the data segment.
    const PartitionMapping::ProducerGrantInfo g = m_->grant_producer();
    if (!w_.attach_granted(r, multi, g.token, g.slot)) {
      m_->release_producer(g.token);
      throw Error(ErrorCode::protocol, "partition " + std::to_string(m_->partition()) + " of '" +
                                           m_->topic() +
                                           "': the producer entry the daemon granted is not ours");
    }
    claimed_sp_ = !multi;
  } else if (!multi) {
    // Single-producer partition: take exclusive ownership, or take over from a dead owner.
    uint32_t owner = 0;
    for (;;) {
      if (aref(r.data->producer_pid).compare_exchange_strong(owner, me, std::memory_order_acq_rel)) break;
      if (owner == me)
        throw Error(ErrorCode::already_exists,
                    "partition " + std::to_string(m_->partition()) + " of '" + m_->topic() +
                        "' already has a publisher in this process (single-producer topic)");
      if (shm::process_alive(owner))
        throw Error(ErrorCode::already_exists, "partition " + std::to_string(m_->partition()) + " of '" +
                                                   m_->topic() + "' already has a publisher (pid " +
                                                   std::to_string(owner) +
                                                   "); create the topic with multi_producer for several");
      // Dead owner: free the partition (shm/recovery.hpp), then CAS 0 -> me.
      shm::release_dead_single_producer(r, owner);
      owner = 0;
    }
    claimed_sp_ = true;
  }
  if (!m_->granted() && !w_.attach(r, multi, me)) {
    // Every producer-table entry is taken: entries of dead producers are freed
    // (their claims padded) and the attach is tried once more.
    for (uint32_t k = 0; k < r.producer_count; ++k) {
      uint32_t pid = shm::owner_pid(aref(r.producers[k].pid).load(std::memory_order_acquire));
      if (pid && !shm::process_alive(pid)) shm::recover_dead_producer(r, k, pid);
    }
    if (!w_.attach(r, multi, me))
      throw Error(ErrorCode::no_slot, "partition " + std::to_string(m_->partition()) + " of '" + m_->topic() +
                                          "' already has " + std::to_string(r.producer_count) +
                                          " publishers (the multi-producer limit)");
  }
  if (!multi) w_.recover_sp();
  if (m_->granted()) {
    // Layout 3: other subscribers' cursors are read through their pages, mapped
    // read-only from the daemon on the slow path (until then a slot's join
    // position bounds the limit).
    pages_ = std::make_unique<shm::PageTable>();
    w_.set_page_table(pages_.get());
  }
  policy_ = r.policy;
  meta_.producer_id = opts_.producer_id ? opts_.producer_id : me;
  if (!opts_.stamp_frames) meta_.timestamp_ns = shm::kNoTimestamp;
  open_ = true;
}

Publisher::Publisher(Publisher&& o) noexcept
    : m_(std::move(o.m_)), opts_(o.opts_), w_(o.w_), pages_(std::move(o.pages_)), claim_(o.claim_),
      batch_(o.batch_), meta_(o.meta_), stats_(o.stats_), policy_(o.policy_), claimed_sp_(o.claimed_sp_),
      open_(o.open_) {
  o.open_ = false;
  o.claimed_sp_ = false;
  o.claim_ = {};
  o.batch_ = {};
}

Publisher& Publisher::operator=(Publisher&& o) noexcept {
  if (this != &o) {
    close();
    m_ = std::move(o.m_);
    opts_ = o.opts_;
    w_ = o.w_;
    pages_ = std::move(o.pages_);
    claim_ = o.claim_;
    batch_ = o.batch_;
    meta_ = o.meta_;
    stats_ = o.stats_;
    policy_ = o.policy_;
    claimed_sp_ = o.claimed_sp_;
    open_ = o.open_;
    o.open_ = false;
    o.claimed_sp_ = false;
    o.claim_ = {};
    o.batch_ = {};
  }
  return *this;
}

Publisher::~Publisher() { close(); }

void Publisher::close() {
  if (!open_) return;
  drop_open();
  w_.detach();  // gives back the producer-table entry (P8)
  if (claimed_sp_) {
    uint32_t me = w_.owner();  // our pid (direct mode) or the daemon's token
    aref(m_->refs().data->producer_pid).compare_exchange_strong(me, 0, std::memory_order_acq_rel);
    claimed_sp_ = false;
  }
  // Daemon mode: the grant is the daemon's record, not the owner field we cleared.
  if (m_->granted()) m_->release_producer(w_.owner());
  drop_pages();
  open_ = false;
  m_.reset();
}

bool Publisher::fetch_pages() {
  if (!pages_ || !pages_->any_missing()) return false;
  const shm::RingRefs& r = m_->refs();
  bool any = false;
  for (uint32_t i = 0; i < r.slot_count && i < shm::kMaxSlots; ++i) {
    if (!(pages_->missing[i / 64] & (uint64_t(1) << (i % 64)))) continue;
    const uint32_t gen = aref(r.slots[i].generation).load(std::memory_order_acquire);
    shm::CursorPage* pg = m_->map_page(i, gen);
    if (!pg) continue;  // gone meanwhile (or the daemon is away): its join position still bounds us
    m_->unmap_page(pages_->page[i]);
    pages_->page[i] = pg;
    pages_->gen[i] = gen;
    pages_->missing[i / 64] &= ~(uint64_t(1) << (i % 64));
    any = true;
  }
  return any;
}

void Publisher::drop_pages() {
  if (!pages_ || !m_) return;
  for (uint32_t i = 0; i < shm::kMaxSlots; ++i)
    if (pages_->page[i]) m_->unmap_page(pages_->page[i]), pages_->page[i] = nullptr;
}

uint32_t Publisher::partition() const { return m_ ? m_->partition() : 0; }

Status Publisher::try_claim(uint32_t max_bytes, ClaimView& out) {
  if (!open_) return Status::closed;
  drop_open();  // caller misuse: a second claim drops the first
  shm::RingStatus s = w_.try_claim(max_bytes, claim_);
  if (s == shm::RingStatus::ok) {
    out.data = claim_.payload;
    out.size = claim_.max_payload;
    out.sequence = claim_.seq;
    return Status::ok;
  }
  out = {};
  if (s == shm::RingStatus::too_large) return Status::too_large;
  return Status::back_pressured;
}

Status Publisher::claim(uint32_t max_bytes, ClaimView& out) {
  return claim_blocking(max_bytes, 1, [&] { return try_claim(max_bytes, out); });
}

void Publisher::drop_open() {
  if (claim_.active()) w_.abort(claim_);
  if (batch_.active()) w_.abort_n(batch_);
}

Status Publisher::try_claim_n(uint32_t n, uint32_t max_bytes, BatchView& out) {
  out = {};
  if (!open_) return Status::closed;
  drop_open();
  shm::RingStatus s = w_.try_claim_n(n, max_bytes, batch_);
  if (s == shm::RingStatus::ok) {
    out.base = batch_.payload(0);
    out.count = batch_.count;
    out.size = batch_.max_payload;
    out.stride = batch_.frame_len;
    out.sequence = batch_.seq;
    return Status::ok;
  }
  if (s == shm::RingStatus::too_large) return Status::too_large;
  return Status::back_pressured;
}

Status Publisher::claim_n(uint32_t n, uint32_t max_bytes, BatchView& out) {
  return claim_blocking(max_bytes, n, [&] { return try_claim_n(n, max_bytes, out); });
}

Status Publisher::commit_n(uint32_t k, const uint32_t* used, const uint64_t* message_ids, uint64_t schema_id,
                           bool clean) {
  if (!batch_.active()) return Status::closed;
  if (k > batch_.count || (k && !used)) {
    w_.abort_n(batch_);
    return Status::too_large;
  }
  for (uint32_t i = 0; i < k; ++i)
    if (used[i] > batch_.max_payload) {
      w_.abort_n(batch_);
      return Status::too_large;
    }
  meta_.message_id = 0;
  meta_.schema_id = schema_id;
  w_.commit_n(batch_, k, used, message_ids, meta_, true, clean);
  stats_.published += k;
  return Status::ok;
}

// claim() and claim_n(): `attempt` never waits; this applies the topic's policy.
template <class Try>
Status Publisher::claim_blocking(uint32_t max_bytes, uint32_t frames, Try attempt) {
  Status s = attempt();
  if (s != Status::back_pressured) return s;
  if (fetch_pages()) {  // a subscriber's page we lacked bounded us at its join position
    s = attempt();
    if (s != Status::back_pressured) return s;
  }
  if (policy_ == shm::kPolicyFail) {
    ++stats_.back_pressured;
    return s;
  }
  // Policy block: back_pressured only once block_timeout_ns has passed. Space seen
  // free can be taken by another producer before our claim, and a claim can also
  // fail on the zero lock of a live producer that was descheduled (claim_mp gives
  // up after kClaimTries): wait and claim again until the deadline, never return
  // early (with several producers on 2 busy cores a single retry returned
  // back_pressured within ~2 ms of a 2 s timeout; tests/daemon/torture_mp_test.cpp).
  ++stats_.blocked_waits;
  const uint64_t deadline = shm::monotonic_ns() + uint64_t(opts_.block_timeout_ns);
  for (;;) {
    s = wait_for_space(max_bytes, deadline, frames);
    if (s == Status::ok) s = attempt();
    if (s != Status::back_pressured || shm::monotonic_ns() >= deadline) break;
    if (intr_.take()) {
      s = Status::interrupted;
      break;
    }
    sched_yield();  // the producer ahead of us may be waiting for this CPU
  }
  if (s == Status::back_pressured) ++stats_.back_pressured;
  return s;
}

Status Publisher::wait_space(uint32_t max_bytes, int64_t timeout_ns, uint32_t frames) {
  if (!open_) return Status::closed;
  if (max_bytes > w_.max_payload() || frames == 0) return Status::too_large;
  const uint64_t cap = w_.refs().capacity;
  const uint64_t flen = shm::align_frame(uint64_t(shm::kFrameHeaderSize) + max_bytes);
  if (frames > cap / flen || 2 * flen * frames + 8 > cap) return Status::too_large;  // as try_claim_n
  const uint64_t now = shm::monotonic_ns();
  return wait_for_space(max_bytes, timeout_ns < 0 ? UINT64_MAX : now + uint64_t(timeout_ns), frames);
}

// Waits until a claim of max_bytes can succeed (P7), per the wait strategy, or
// until `deadline` (back_pressured).
Status Publisher::wait_for_space(uint32_t max_bytes, uint64_t deadline, uint32_t frames) {
  const uint64_t start = shm::monotonic_ns();
  uint64_t reclaim_at = start + uint64_t(opts_.reclaim_after_ns);
  const bool spin_only = opts_.wait == WaitStrategy::busy_spin;
  uint32_t iter = 0;
  for (;;) {
    if (w_.space_available(max_bytes, frames)) return Status::ok;
    if (intr_.take()) return Status::interrupted;
    if (fetch_pages()) continue;
    uint64_t now = shm::monotonic_ns();
    if (now >= reclaim_at) {
      reclaim_dead_cursors();
      reclaim_at = now + uint64_t(opts_.reclaim_after_ns);
      continue;
    }
    if (now >= deadline) return Status::back_pressured;
    ++iter;
    bool sleep = opts_.wait == WaitStrategy::futex ||
                 (opts_.wait == WaitStrategy::hybrid && now - start >= uint64_t(opts_.spin_ns));
    if (!sleep || spin_only) {
      if (opts_.wait == WaitStrategy::spin_yield && iter > 64) {
        sched_yield();
      } else {
        // Back off between cursor scans: each scan pulls the subscribers' cursor
        // lines away from them, which slows the very readers we wait for.
        uint32_t pauses = iter < 6 ? (4u << iter) : 256u;
        for (uint32_t k = 0; k < pauses; ++k) shm::cpu_relax();
      }
      continue;
    }
    // P7 (3.0): sleep on the wake word of what binds us (the slowest cursor's page,
    // or the space word of the open claims), read before a re-scan.
    uint32_t* word = nullptr;
    uint32_t v = 0;
    if (w_.prepare_space_wait(max_bytes, word, v, frames)) {
      uint64_t until = deadline < reclaim_at ? deadline : reclaim_at;
      int64_t slice = int64_t(until - now);
      if (!w_.space_wait_fenced() && slice > 1'000'000) slice = 1'000'000;
      shm::futex_wait_interruptible(word, v, &intr_, slice);
    }
    w_.end_space_wait();
  }
}

// Direct mode: a subscriber process that died leaves an ACTIVE slot, a producer
// that died may leave a won claim; any peer that proves the owner dead
// (shm::process_alive, a pidfd) recovers them (shm/recovery.hpp). The daemon does
// the same from its own records; this is the fallback without one. Named slots are
// parked, as the daemon does (P11).
void Publisher::reclaim_dead_cursors() {
  const shm::RingRefs& r = w_.refs();
  // Daemon mode: only the daemon frees cursors, from its own grant records (a pid
  // read here could belong to another pid namespace).
  for (uint32_t i = 0; i < r.slot_count && !m_->granted(); ++i) {
    shm::CursorSlot& s = r.slots[i];
    if (aref(s.state).load(std::memory_order_acquire) != shm::kSlotActive) continue;
    uint32_t pid = shm::owner_pid(aref(s.pid).load(std::memory_order_acquire));
    if (pid == 0 || shm::process_alive(pid)) continue;  // pid 0: parked durable slot
    if (shm::recover_dead_cursor(r, i, pid) == shm::CursorRecovery::freed) ++stats_.reclaimed_cursors;
  }
  if (r.multi() && !m_->granted()) {  // daemon mode: the daemon's grant records decide
    for (uint32_t k = 0; k < r.producer_count; ++k) {
      uint32_t pid = shm::owner_pid(aref(r.producers[k].pid).load(std::memory_order_acquire));
      if (pid && !shm::process_alive(pid)) shm::recover_dead_producer(r, k, pid);
    }
  }
}

Status Publisher::commit(uint32_t used, uint64_t message_id, uint64_t schema_id) {
  if (!claim_.active()) return Status::closed;
  if (used > claim_.max_payload) {
    w_.abort(claim_);
    return Status::too_large;
  }
  meta_.message_id = message_id;
  meta_.schema_id = schema_id;
  w_.commit(claim_, used, meta_, true, false);
  ++stats_.published;
  return Status::ok;
}

Status Publisher::commit_clean(uint32_t used, uint64_t message_id, uint64_t schema_id) {
  if (!claim_.active()) return Status::closed;
  if (used > claim_.max_payload) {
    w_.abort(claim_);
    return Status::too_large;
  }
  meta_.message_id = message_id;
  meta_.schema_id = schema_id;
  w_.commit(claim_, used, meta_, true, true);
  ++stats_.published;
  return Status::ok;
}

void Publisher::abort() { drop_open(); }

Status Publisher::offer(const void* data, size_t len, uint64_t message_id, uint64_t schema_id) {
  if (len > w_.max_payload()) return Status::too_large;
  ClaimView c;
  Status s = claim(uint32_t(len), c);
  if (s != Status::ok) return s;
  std::memcpy(c.data, data, len);
  meta_.message_id = message_id;
  meta_.schema_id = schema_id;
  w_.commit(claim_, uint32_t(len), meta_, true, true);
  ++stats_.published;
  return Status::ok;
}

size_t Publisher::offer_batch(std::span<const std::span<const std::byte>> msgs, Status* last) {
  size_t n = 0;
  Status s = Status::ok;
  meta_.message_id = 0;
  meta_.schema_id = 0;
  // One clock read per batch: its frames share the time the batch was offered.
  const uint64_t stamp = meta_.timestamp_ns;
  if (stamp == 0 && !msgs.empty()) meta_.timestamp_ns = shm::monotonic_ns();
  for (const auto& m : msgs) {
    if (m.size() > w_.max_payload()) {
      s = Status::too_large;
      break;
    }
    ClaimView c;
    s = try_claim(uint32_t(m.size()), c);
    if (s == Status::back_pressured) {
      if (n) w_.notify_subscribers();  // let readers drain what is already in
      s = claim(uint32_t(m.size()), c);
    }
    if (s != Status::ok) break;
    std::memcpy(c.data, m.data(), m.size());
    // One wake-up check per batch: only the last commit notifies.
    w_.commit(claim_, uint32_t(m.size()), meta_, n + 1 == msgs.size(), true);
    ++n;
  }
  if (n && n != msgs.size()) w_.notify_subscribers();
  meta_.timestamp_ns = stamp;
  stats_.published += n;
  if (last) *last = s;
  return n;
}

}  // namespace shmbus
