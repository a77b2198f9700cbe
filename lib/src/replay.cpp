// Replay: spill log first, then the live ring, with lap detection (P9).
#include "shmbus/replay.hpp"

#include <sched.h>
#include <unistd.h>

#include <cstring>

#include "shmbus/spill_format.hpp"

namespace shmbus {

using shm::aref;

struct ReplaySubscriber::Impl {
  std::shared_ptr<PartitionMapping> m;
  shm::RingRefs r;
  ReplayOptions o;
  spill::ChunkArena log_arena, ring_arena;
  spill::LogReader log;
  shm::RingReader slot;  // untethered: visibility for tools, never holds the producer
  CursorGrant grant;     // daemon mode: the slot the daemon granted (our page)
  ReplaySource mode = ReplaySource::log;
  uint64_t want_seq = 0;
  // `latest`: what is new is what lies at or after the ring position joined (of that
  // ring epoch), until the first delivery (then last_seq orders everything). Not the
  // tail's sequence: a pending multi-producer claim's tail word names the batch's
  // LAST sequence while the position is its first frame, and commits landing between
  // the join and the read of the word would be skipped.
  bool pos_floor = false;
  uint64_t join_pos = 0, join_epoch = 0;
  uint64_t seek_hint = 0;  // a lower bound for the log seek of a lap before the first delivery
  bool ts_filter = false;
  uint64_t min_ts = 0;
  uint64_t last_seq = 0;
  bool have_end = false;
  uint64_t last_end = 0, last_epoch = 0;
  bool handover_armed = false;
  uint64_t candidate = 0, archiver_pos = 0;
  uint64_t released_pos = 0;
  ReplayStats st;
  bool open = true;
  shm::Interrupt intr;  // ReplaySubscriber::interrupt

  Impl(std::shared_ptr<PartitionMapping> mp, const ReplayOptions& opts)
      : m(std::move(mp)), r(m->refs()), o(opts), log_arena(opts.chunk_bytes), ring_arena(opts.chunk_bytes),
        log(spill::partition_dir(opts.state_dir, m->topic(), m->partition()), log_arena) {
    // Read before the join: sequences only grow, so (unless a claim was pending) every
    // frame at or after the joined position has at least this sequence.
    const uint64_t tw = aref(r.data->tail_seq).load(std::memory_order_acquire);
    if (m->granted()) {
      grant = m->join_cursor(false, "", shm::RingReader::kAtTail);
      slot.adopt(r, grant.slot, grant.page, grant.position, false, grant.check_below);
    } else if (!slot.join(r, uint32_t(getpid()), false)) {
      throw Error(ErrorCode::no_slot, "topic '" + m->topic() + "': every subscriber slot is taken");
    }
    switch (o.start.kind) {
      case StartAt::Kind::latest:
        mode = ReplaySource::ring;
        pos_floor = true;
        join_pos = slot.position();
        join_epoch = r.data->created_ns;
        seek_hint = shm::tail_pending_of(tw) ? 0 : shm::tail_seq_of(tw);
        have_end = true;
        last_end = join_pos;
        last_epoch = join_epoch;
        break;
      case StartAt::Kind::earliest: log.seek_earliest(); break;
      case StartAt::Kind::sequence:
        want_seq = o.start.value;
        log.seek_sequence(o.start.value);
        break;
      case StartAt::Kind::time:
        ts_filter = true;
        min_ts = o.start.value;
        log.seek_time(o.start.value);
        break;
    }
    st.gaps = log.gaps();
  }

  // P9: after reading ring bytes at `pos`, were they possibly overwritten?
  bool lapped(uint64_t pos) const {
    // SYNC(zero_intent) acquire fence: pairs with the release fence in
    // RingWriter::announce_zero(); any zeroing store we observed implies we see
    // the intent that preceded it.
    std::atomic_thread_fence(std::memory_order_acquire);
    return aref(r.data->zero_intent).load(std::memory_order_relaxed) > pos + r.capacity;
  }

  // `pos`, `epoch`: the message's ring position and ring epoch (for `latest`).
  bool passes(uint64_t seq, uint64_t ts, uint64_t pos, uint64_t epoch) {
    if (seq < want_seq || (last_seq && seq <= last_seq)) return false;
    if (pos_floor && !last_seq && (epoch != join_epoch || pos < join_pos))
      return false;  // another epoch: an older ring
    if (ts_filter) {
      if (ts < min_ts) return false;
      ts_filter = false;
    }
    return true;
  }

  uint64_t archiver_position() const { return spill::archiver_position(r); }

  enum class RingPoll : uint8_t { ok, empty, lapped, corrupt };

  // The frame check is RingReader::poll's (one home, shm/ring.hpp): bounds, types,
  // the "more than a lap of padding" guard and the P9 lap checks of an untethered
  // reader. The frame is then copied out and the copy re-checked (P9) before use.
  RingPoll poll_ring(View& out) {
    const uint64_t epoch = r.data->created_ns;
    for (;;) {
      shm::FrameView f;
      switch (slot.poll(f)) {
        case shm::RingStatus::ok: break;
        case shm::RingStatus::empty: return RingPoll::empty;
        case shm::RingStatus::lapped: return RingPoll::lapped;
        default: return RingPoll::corrupt;
      }
      const uint32_t plen = f.payload_len;
      const size_t need = shm::kFrameHeaderSize + shm::align_frame(plen);
      auto* c = &ring_arena.current();
      if (c->end + need > c->cap) c = &ring_arena.fresh(need, nullptr, 0);
      std::byte* dst = c->data + c->end;
      std::memcpy(dst, f.hdr, shm::kFrameHeaderSize + plen);
      if (slot.lapped_at(f.pos)) return RingPoll::lapped;  // the copy may be torn: discard it
      auto* ch = reinterpret_cast<shm::FrameHeader*>(dst);
      if (shm::commit_length(ch->commit) != f.next - f.pos || ch->payload_len != plen)
        return RingPoll::corrupt;
      if (!passes(ch->sequence, ch->timestamp_ns, f.pos, epoch)) continue;
      c->end += need;
      ring_arena.mark(ch->sequence);
      shm::FrameView v;
      v.hdr = ch;
      v.payload = dst + shm::kFrameHeaderSize;
      v.payload_len = plen;
      v.pos = f.pos;
      v.next = f.next;
      out = View(v);
      last_seq = ch->sequence;
      have_end = true;
      last_end = f.next;
      last_epoch = epoch;
      ++st.from_ring;
      return RingPoll::ok;
    }
  }

  Status poll(View& out) {
    if (!open) return Status::closed;
    for (int guard = 0; guard < 8; ++guard) {
      if (mode == ReplaySource::log) {
        spill::RecordView rv;
        spill::LogReader::Next n = log.next(rv);
        if (n == spill::LogReader::Next::ok) {
          handover_armed = false;
          if (!passes(rv.seq(), rv.ts(), rv.ring_pos, log.file_epoch())) continue;
          shm::FrameView f;
          f.hdr = rv.hdr;
          f.payload = rv.payload;
          f.payload_len = rv.payload_len;
          f.pos = rv.ring_pos;
          f.next = rv.ring_end();
          out = View(f);
          last_seq = rv.seq();
          have_end = true;
          last_end = rv.ring_end();
          last_epoch = log.file_epoch();
          ++st.from_log;
          ++st.received;
          return Status::ok;
        }
        if (n == spill::LogReader::Next::corrupt) {
          ++st.corrupt;
          return Status::corrupt;
        }
        // End of the log for now: hand over to the ring.
        const uint64_t epoch = r.data->created_ns;
        if (!handover_armed) {
          // The archiver's position, read BEFORE the log is checked once more: every
          // data frame below it reached the log before it was released, so if the
          // log has nothing new, [our end, archiver) holds padding only.
          archiver_pos = archiver_position();
          candidate = (have_end && last_epoch == epoch) ? last_end : archiver_pos;
          handover_armed = true;
          continue;
        }
        handover_armed = false;
        if (lapped(candidate) && archiver_pos >= candidate) candidate = archiver_pos;
        if (lapped(candidate)) return Status::empty;  // the archiver has it: the log grows soon
        slot.seek(candidate);
        mode = ReplaySource::ring;
        ++st.handovers;
        continue;
      }
      switch (poll_ring(out)) {
        case RingPoll::ok: ++st.received; return Status::ok;
        case RingPoll::empty: return Status::empty;
        case RingPoll::corrupt: return Status::corrupt;
        case RingPoll::lapped:
          ++st.lapped;
          mode = ReplaySource::log;
          handover_armed = false;
          log.seek_sequence(last_seq ? last_seq + 1 : std::max(want_seq, seek_hint));
          continue;
      }
    }
    return Status::empty;
  }

  // ok: poll again (data, a lap, or the log may have grown); timed_out, closed,
  // interrupted.
  Status wait(int64_t timeout_ns) {
    if (!open) return Status::closed;
    if (mode == ReplaySource::ring && slot.has_data()) return Status::ok;
    const uint64_t start = shm::monotonic_ns();
    const uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + uint64_t(timeout_ns);
    for (uint32_t iter = 0;; ++iter) {
      if (mode == ReplaySource::ring && slot.has_data()) return Status::ok;
      if (intr.take()) return Status::interrupted;
      const uint64_t now = shm::monotonic_ns();
      if (now >= deadline) return Status::timed_out;
      const bool sleep = o.wait == WaitStrategy::futex ||
                         (o.wait == WaitStrategy::hybrid && now - start >= uint64_t(o.spin_ns));
      if (!sleep) {
        if (o.wait == WaitStrategy::spin_yield && iter > 64)
          sched_yield();
        else
          shm::cpu_relax();
        if (mode == ReplaySource::log && iter > 256) return Status::ok;  // re-poll the log
        continue;
      }
      // In log mode the log may have grown (nothing wakes us for that): short naps.
      int64_t chunk = mode == ReplaySource::log ? 1'000'000 : 100'000'000;
      if (deadline != UINT64_MAX && int64_t(deadline - now) < chunk) chunk = int64_t(deadline - now);
      if (mode == ReplaySource::ring) {
        // P6 through the one implementation (RingReader::wait: waiter bit,
        // membarrier, re-check, sleep). Every commit wakes us, so a lap (which only
        // happens through commits) is noticed by the next poll.
        slot.wait(chunk, &intr);
      } else {
        // Log mode: nothing wakes us for the log growing; a short nap, no announce.
        uint32_t v = aref(r.data->data_futex).load(std::memory_order_relaxed);
        shm::futex_wait_interruptible(&r.data->data_futex, v, &intr, chunk);
      }
      slot.heartbeat(shm::monotonic_ns());
      if (intr.take()) return Status::interrupted;
      return Status::ok;  // poll again: data, a lap, or the log has grown
    }
  }

  void release_to(uint64_t seq, uint64_t pos) {
    log_arena.release(seq);
    ring_arena.release(seq);
    if (mode == ReplaySource::ring && pos > released_pos && slot.joined()) {
      released_pos = pos;
      slot.release_to(pos);
    }
  }
};

ReplaySubscriber::ReplaySubscriber(std::shared_ptr<PartitionMapping> m, const ReplayOptions& opts)
    : impl_(std::make_unique<Impl>(std::move(m), opts)) {}
ReplaySubscriber::ReplaySubscriber(ReplaySubscriber&&) noexcept = default;
ReplaySubscriber& ReplaySubscriber::operator=(ReplaySubscriber&& o) noexcept {
  if (this != &o) {
    close();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
ReplaySubscriber::~ReplaySubscriber() { close(); }

void ReplaySubscriber::close() {
  if (!impl_ || !impl_->open) return;
  if (impl_->grant) {
    impl_->slot.detach();
    impl_->m->leave_cursor(impl_->grant, false);
  } else {
    impl_->slot.leave();
  }
  impl_->open = false;
}

Status ReplaySubscriber::poll(View& out) {
  if (!impl_) return Status::closed;
  return impl_->poll(out);
}

Status ReplaySubscriber::poll_wait(View& out, int64_t timeout_ns) {
  if (!impl_) return Status::closed;
  const uint64_t start = shm::monotonic_ns();
  for (;;) {
    Status s = impl_->poll(out);
    if (s != Status::empty) return s;
    int64_t left = timeout_ns;
    if (timeout_ns >= 0) {
      uint64_t spent = shm::monotonic_ns() - start;
      if (spent >= uint64_t(timeout_ns)) return Status::timed_out;
      left = timeout_ns - int64_t(spent);
    }
    if (Status w = impl_->wait(left); w != Status::ok) return w;
  }
}

void ReplaySubscriber::release(const View& v) {
  if (impl_ && v) impl_->release_to(v.sequence(), v.next_position());
}

void ReplaySubscriber::release_all() {
  if (impl_) impl_->release_to(impl_->last_seq, impl_->last_end);
}

Status ReplaySubscriber::wait_for(int64_t timeout_ns) {
  return impl_ ? impl_->wait(timeout_ns) : Status::closed;
}
void ReplaySubscriber::interrupt() noexcept {
  if (impl_) impl_->intr.raise();
}
ReplaySource ReplaySubscriber::source() const { return impl_->mode; }
uint64_t ReplaySubscriber::last_sequence() const { return impl_->last_seq; }
const ReplayStats& ReplaySubscriber::stats() const {
  impl_->st.gaps = impl_->log.gaps();
  return impl_->st;
}

ReplaySubscriber replay_subscriber(Bus& bus, const std::string& topic, const ReplayOptions& opts) {
  if (opts.state_dir.empty())
    throw Error(ErrorCode::invalid_argument, "replay_subscriber: state_dir is empty");
  return ReplaySubscriber(bus.provider().open(topic, opts.partition, Role::subscriber, opts.open_timeout_ms),
                          opts);
}

// --------------------------------------------------------------------------- acks
uint64_t durable_sequence_approx(const Publisher& pub) {
  return aref(pub.refs().data->durable_seq).load(std::memory_order_acquire);
}

int archiver_error(const Publisher& pub) {
  return int(aref(pub.refs().data->archiver_error).load(std::memory_order_relaxed));
}

namespace {
// P10 sleeper side; `intr` (may be null) ends the wait at once (Publisher::interrupt).
Status wait_durable_on(shm::DataHeader* d, uint64_t seq, int64_t timeout_ns, shm::Interrupt* intr) {
  if (!d) return Status::closed;
  const uint64_t start = shm::monotonic_ns();
  const uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + uint64_t(timeout_ns);
  for (uint32_t iter = 0;; ++iter) {
    // SYNC(durable) acquire: pairs with the archiver's store in publish_durable().
    if (aref(d->durable_seq).load(std::memory_order_acquire) >= seq) return Status::ok;
    if (intr && intr->take()) return Status::interrupted;
    const uint64_t now = shm::monotonic_ns();
    if (now >= deadline) return Status::timed_out;
    if (now - start < 20'000) {
      shm::cpu_relax();
      continue;
    }
    // P10: announce, re-check (seq_cst, Dekker with the archiver), sleep.
    aref(d->durable_waiters).fetch_add(1, std::memory_order_seq_cst);
    uint32_t v = aref(d->durable_futex).load(std::memory_order_seq_cst);
    if (aref(d->durable_seq).load(std::memory_order_seq_cst) < seq) {
      int64_t chunk = 100'000'000;
      if (deadline != UINT64_MAX && int64_t(deadline - now) < chunk) chunk = int64_t(deadline - now);
      shm::futex_wait_interruptible(&d->durable_futex, v, intr, chunk);
    }
    aref(d->durable_waiters).fetch_sub(1, std::memory_order_seq_cst);
  }
}
}  // namespace

Status wait_durable(const Publisher& pub, uint64_t seq, int64_t timeout_ns) {
  return wait_durable_on(pub.refs().data, seq, timeout_ns, nullptr);
}

// A Publisher member, beside the free function it extends: the same wait, ended by
// the publisher's interrupt().
Status Publisher::wait_durable(uint64_t seq, int64_t timeout_ns) {
  return wait_durable_on(refs().data, seq, timeout_ns, &intr_);
}

}  // namespace shmbus
