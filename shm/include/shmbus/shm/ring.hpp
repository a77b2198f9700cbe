// The partition ring: claim/commit for producers, poll/release for subscribers,
// back-pressure from the subscriber cursor table, and futex-based waiting.
//
// Protocols (numbered steps in docs/memory-ordering.md):
//   P1 claim/commit      P2 zero-ahead       P3 wrap (padding frame)
//   P4 cursor release    P5 subscriber join  P6 data wait/wake   P7 space wait/wake
//   P8 claim intent (multi-producer; lets a reclaimer pad a dead producer's claim)
//   P9 lap detection (untethered readers re-check zero_intent)
//   P11 durable park / resume (a named cursor slot outlives its owner)
// Every acquire/release pair carries the same SYNC(label); `grep 'SYNC('` lists them.
//
// No allocation, no syscalls except futex. Positions are 64-bit byte offsets that
// only grow; the ring index of a position is `pos & (capacity - 1)`.
#pragma once

#include <atomic>
#include <cstring>

#include "shmbus/shm/futex.hpp"
#include "shmbus/shm/layout.hpp"

#if defined(__SANITIZE_THREAD__)
#define SHMBUS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHMBUS_TSAN 1
#endif
#endif
#ifndef SHMBUS_TSAN
#define SHMBUS_TSAN 0
#endif
#if SHMBUS_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace shmbus::shm {

enum class RingStatus : uint8_t {
  ok = 0,
  empty,           // nothing to read yet
  back_pressured,  // the ring is full up to the slowest live tethered cursor
  too_large,       // the frame can never fit
  corrupt,         // the bytes at the read position are not a valid frame
  lapped,          // untethered reader: the producer overwrote the read position (P9)
};

template <class T>
inline std::atomic_ref<T> aref(T& v) {
  return std::atomic_ref<T>(v);
}

// A view of one partition's two segments, as mapped by this process.
struct RingRefs {
  DataHeader* data = nullptr;      // data segment base (read-only for subscribers)
  std::byte* ring = nullptr;       // data + data_offset
  ControlHeader* ctl = nullptr;    // control segment base
  CursorSlot* slots = nullptr;     // ctl + sizeof(ControlHeader)
  ProducerSlot* producers = nullptr;  // (1.1) producer table, null for a 1.0 segment
  uint64_t capacity = 0;
  uint32_t slot_count = 0;
  uint32_t producer_count = 0;

  uint64_t mask() const { return capacity - 1; }
  FrameHeader* frame_at(uint64_t pos) const {
    return reinterpret_cast<FrameHeader*>(ring + (pos & mask()));
  }
};

// Points r.producers at the control segment's producer table when the segment has
// one that fits in the `ctl_bytes` mapped (untrusted header: bounds checked).
inline void bind_producer_table(RingRefs& r, size_t ctl_bytes) {
  r.producers = nullptr;
  r.producer_count = 0;
  const uint64_t n = r.ctl->producer_slots, off = r.ctl->producer_offset;
  if (n == 0 || n > 4096 || off % 8 || off < sizeof(ControlHeader) ||
      off + n * sizeof(ProducerSlot) > ctl_bytes)
    return;
  r.producers = reinterpret_cast<ProducerSlot*>(reinterpret_cast<std::byte*>(r.ctl) + off);
  r.producer_count = uint32_t(n);
}

// Lowest position any live tethered subscriber still needs, or `none`.
// SYNC(cursor) acquire: the bytes below a cursor were fully read before the
// subscriber released them; pairs with the release in RingReader::release_to().
inline uint64_t min_live_cursor(const RingRefs& r, uint64_t none) {
  uint64_t m = none;
  // seq_cst: a joiner raises slot_hwm before its seq_cst state store (P5), so a
  // scan that misses the raise also misses the slot, and the P5 argument holds.
  uint32_t n = aref(r.ctl->slot_hwm).load(std::memory_order_seq_cst);
  if (n == 0 || n > r.slot_count) n = r.slot_count;
  for (uint32_t i = 0; i < n; ++i) {
    CursorSlot& s = r.slots[i];
    // seq_cst: pairs with the seq_cst state store/tail load in join (P5).
    if (aref(s.state).load(std::memory_order_seq_cst) != kSlotActive) continue;
    if (!(aref(s.flags).load(std::memory_order_relaxed) & kSlotTethered)) continue;
    // SYNC(cursor) acquire; seq_cst so that a producer that announced itself in
    // space_waiters (P7) cannot miss a cursor stored before the subscriber read
    // space_waiters == 0 (a plain load on x86, so free).
    uint64_t p = aref(s.position).load(std::memory_order_seq_cst);
    if (p < m) m = p;
  }
  return m;
}

// FrameMeta::timestamp_ns value that skips the clock read at commit (~20 ns of a
// ~40 ns claim+commit on a KVM guest, see docs/benchmarks.md); the frame's
// timestamp_ns is then 0 ("not stamped").
inline constexpr uint64_t kNoTimestamp = ~uint64_t(0);

struct FrameMeta {
  uint32_t producer_id = 0;
  uint64_t timestamp_ns = 0;  // 0: taken at commit; kNoTimestamp: header keeps 0
  uint64_t message_id = 0;
  uint64_t schema_id = 0;
};

struct Claim {
  uint64_t pos = 0;        // position of this frame's header
  uint64_t end = 0;        // pos + frame_len (claimed)
  uint64_t seq = 0;        // sequence assigned to this frame
  uint32_t frame_len = 0;  // claimed frame length
  uint32_t max_payload = 0;
  FrameHeader* hdr = nullptr;
  std::byte* payload = nullptr;  // zeroed memory, max_payload bytes, 8-aligned
  bool active() const { return hdr != nullptr; }
};

// ---------------------------------------------------------------------------
// Producer side. One RingWriter per producer per partition. In single-producer
// mode (the fast path) the tail lives in this object and is published with a
// plain release store; in multi-producer mode the tail is claimed with a 16-byte
// CAS on {tail_pos, tail_seq}.
class RingWriter {
 public:
  RingWriter() = default;
  RingWriter(const RingRefs& r, bool multi, uint32_t self_pid) { attach(r, multi, self_pid); }

  void attach(const RingRefs& r, bool multi, uint32_t self_pid) {
    r_ = r;
    multi_ = multi;
    pid_ = self_pid;
    cap_ = r.capacity;
    max_payload_ = uint32_t(r.data->max_payload);
    tail_ = aref(r.data->tail_pos).load(std::memory_order_acquire);
    seq_ = aref(r.data->tail_seq).load(std::memory_order_acquire);
    zero_mark_ = aref(r.data->zero_mark).load(std::memory_order_acquire);
    limit_ = 0;
    zero_chunk_ = cap_ / 8 < 16384 ? cap_ / 8 : 16384;
    if (zero_chunk_ < 64) zero_chunk_ = 64;
    prod_ = nullptr;
    if (multi) register_producer();
  }

  // P8 step 0: takes a free producer-table entry so that claims are recorded. Without
  // one (table full, 1.0 segment) the producer still works, unrecorded: a claim it
  // leaves behind at its death cannot be padded by a reclaimer.
  void register_producer() {
    for (uint32_t i = 0; i < r_.producer_count; ++i) {
      ProducerSlot& p = r_.producers[i];
      uint32_t expect = 0;
      if (!aref(p.pid).compare_exchange_strong(expect, pid_, std::memory_order_acq_rel)) continue;
      aref(p.generation).fetch_add(1, std::memory_order_relaxed);
      aref(p.state).store(kProdIdle, std::memory_order_release);
      prod_ = &p;
      return;
    }
  }
  // Gives the producer-table entry back (call when no claim is open).
  void detach() {
    if (!prod_) return;
    aref(prod_->state).store(kProdFree, std::memory_order_relaxed);
    aref(prod_->pid).store(0, std::memory_order_release);
    prod_ = nullptr;
  }
  bool recorded() const { return prod_ != nullptr; }

  // Single-producer takeover (the previous exclusive producer is gone): skips any
  // frame it committed without publishing the tail, then re-zeroes what it may
  // have written into an uncommitted claim, so the P2 invariant holds again.
  void recover_sp() {
    uint64_t pos = aref(r_.data->tail_pos).load(std::memory_order_acquire);
    uint64_t seq = aref(r_.data->tail_seq).load(std::memory_order_acquire);
    for (uint64_t n = 0; n < cap_ / 8; ++n) {
      FrameHeader* h = r_.frame_at(pos);
      uint64_t w = aref(h->commit).load(std::memory_order_acquire);
      uint32_t len = commit_length(w);
      uint64_t off = pos & (cap_ - 1);
      if (w == 0 || len < 8 || (len & 7) || off + len > cap_) break;
      if (commit_type(w) == kFrameData && len >= kFrameHeaderSize) seq = h->sequence + 1;
      pos += len;
    }
    uint64_t z = aref(r_.data->zero_mark).load(std::memory_order_acquire);
    if (z < pos + 8) z = pos + 8;
    if (z > pos + cap_) z = pos + cap_;
    zero_range(pos, z);
    tail_ = pos;
    seq_ = seq;
    zero_mark_ = z;
    aref(r_.data->zero_mark).store(z, std::memory_order_release);
    aref(r_.data->tail_seq).store(seq, std::memory_order_relaxed);
    aref(r_.data->tail_pos).store(pos, std::memory_order_release);
  }

  // Bytes of zeroing done ahead of the tail per refill (trades memset burst size for frequency).
  void set_zero_chunk(uint64_t n) { zero_chunk_ = n < 64 ? 64 : (n > cap_ / 2 ? cap_ / 2 : n); }
  uint32_t max_payload() const { return max_payload_; }
  bool multi() const { return multi_; }
  uint64_t tail_guess() const {
    return multi_ ? aref(r_.data->tail_pos).load(std::memory_order_relaxed) : tail_;
  }

  // P1 step 1: reserve a frame able to hold `payload_max` bytes. Never blocks.
  // On ok, c.payload points to zeroed ring memory the caller may fill.
  RingStatus try_claim(uint32_t payload_max, Claim& c) {
    if (payload_max > max_payload_) return RingStatus::too_large;
    const uint64_t frame_len = align_frame(uint64_t(kFrameHeaderSize) + payload_max);
    return multi_ ? claim_mp(frame_len, c) : claim_sp(frame_len, c);
  }

  // P1 step 2: publish the frame. payload_len <= c.max_payload. `notify` selects
  // whether sleeping subscribers are checked for (P6); false only inside a batch
  // whose last commit notifies.
  //
  // `tail_clean` promises that the claim's bytes past payload_len were never
  // written (true for the in-place Cap'n Proto builder); otherwise they are
  // zeroed again before the claim shrinks, because the ring ahead of the tail
  // must stay zero (P2).
  void commit(Claim& c, uint32_t payload_len, const FrameMeta& meta, bool notify = true,
              bool tail_clean = false) {
    uint32_t used = uint32_t(align_frame(uint64_t(kFrameHeaderSize) + payload_len));
    uint32_t flen = c.frame_len;
    if (used < flen) {
      if (!tail_clean)
        std::memset(reinterpret_cast<std::byte*>(c.hdr) + kFrameHeaderSize + payload_len, 0,
                    flen - kFrameHeaderSize - payload_len);
      if (!multi_) {
        flen = used;  // single producer: nobody claimed after us, shrink to fit
      } else {
        // Multi-producer: give back the unused tail if nobody claimed after us.
        uint64_t e_pos = c.end, e_seq = c.seq + 1;
        if (cas_tail(e_pos, e_seq, c.pos + used, c.seq + 1)) flen = used;
      }
    }
    FrameHeader* h = c.hdr;
    h->payload_len = payload_len;
    h->producer_id = meta.producer_id;
    h->sequence = c.seq;
    h->timestamp_ns = meta.timestamp_ns == 0              ? monotonic_ns()
                      : meta.timestamp_ns == kNoTimestamp ? 0
                                                          : meta.timestamp_ns;
    h->message_id = meta.message_id;
    h->schema_id = meta.schema_id;
    publish_commit(h, make_commit(flen, kFrameData), notify);
    if (prod_) aref(prod_->state).store(kProdIdle, std::memory_order_release);  // P8 step 4
    if (!multi_) {
      tail_ = c.pos + flen;
      seq_ = c.seq + 1;
      // Published for joiners (P5), other producers and tools; not read on the data path.
      aref(r_.data->tail_seq).store(seq_, std::memory_order_relaxed);
      aref(r_.data->tail_pos).store(tail_, std::memory_order_release);
    }
    c = Claim{};
  }

  // Turns a claim into padding so readers skip it (P1 abort).
  void abort(Claim& c, bool notify = true) {
    // The whole claim becomes one pad: whatever the caller wrote inside it is skipped.
    uint32_t flen = c.frame_len;
    publish_commit(c.hdr, make_commit(flen, kFramePad), notify);
    if (prod_) aref(prod_->state).store(kProdIdle, std::memory_order_release);  // P8 step 4
    if (!multi_) {
      tail_ = c.pos + flen;
      aref(r_.data->tail_pos).store(tail_, std::memory_order_release);
    }
    c = Claim{};
  }

  // Wakes subscribers sleeping on data (P6). Called by commit() when notify=true.
  void notify_subscribers() {
    // seq_cst load: pairs with the seq_cst fetch_add in RingReader::wait (P6).
    if (aref(r_.ctl->data_waiters).load(std::memory_order_seq_cst) != 0) {
      aref(r_.ctl->data_futex).fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&r_.ctl->data_futex);
    }
  }

  // Announces that this producer will sleep on space (P7). Returns the futex value
  // to wait on; call end_space_wait() afterwards.
  uint32_t begin_space_wait() {
    aref(r_.ctl->space_waiters).fetch_add(1, std::memory_order_seq_cst);
    // P7 heavy side: subscribers release with a plain store + compiler barrier.
    space_fenced_ = asym_fence_heavy();
    return aref(r_.ctl->space_futex).load(std::memory_order_seq_cst);
  }
  // False when the membarrier of the last begin_space_wait() was refused: sleep in
  // short slices then (a missed wake-up costs one slice).
  bool space_wait_fenced() const { return space_fenced_; }
  void end_space_wait() { aref(r_.ctl->space_waiters).fetch_sub(1, std::memory_order_seq_cst); }
  // True if a claim of payload_max would succeed now (re-reads the cursors).
  bool space_available(uint32_t payload_max) {
    const uint64_t frame_len = align_frame(uint64_t(kFrameHeaderSize) + payload_max);
    uint64_t tail = multi_ ? aref(r_.data->tail_pos).load(std::memory_order_seq_cst) : tail_;
    uint64_t need = tail + frame_len * 2 + 8;  // worst case with a wrap pad
    return need <= refresh_limit();
  }
  uint32_t* space_futex() { return &r_.ctl->space_futex; }

  const RingRefs& refs() const { return r_; }

 private:
  RingStatus claim_sp(uint64_t frame_len, Claim& c) {
    const uint64_t pos = tail_;
    const uint64_t off = pos & (cap_ - 1);
    const uint64_t pad = (off + frame_len > cap_) ? cap_ - off : 0;  // P3
    const uint64_t fpos = pos + pad;
    const uint64_t end = fpos + frame_len;
    if (end + 8 > zero_mark_ && !extend_zero_sp(end + 8)) return RingStatus::back_pressured;
    if (pad) {
      // P3: the pad is committed at claim time; its bytes are ours (zeroed, below zero_mark).
      FrameHeader* ph = r_.frame_at(pos);
      aref(ph->commit).store(make_commit(uint32_t(pad), kFramePad), std::memory_order_release);  // SYNC(frame.commit)
      tail_ = fpos;  // if the claim is aborted, the pad stays valid
      // Readers may pass the pad before we commit: publish the tail past it so a
      // producer taking over after our death does not write behind them.
      aref(r_.data->tail_pos).store(tail_, std::memory_order_release);
    }
    fill_claim(c, fpos, end, seq_, frame_len);
    return RingStatus::ok;
  }

  RingStatus claim_mp(uint64_t frame_len, Claim& c) {
    for (;;) {
      uint64_t pos = aref(r_.data->tail_pos).load(std::memory_order_acquire);
      uint64_t seq = aref(r_.data->tail_seq).load(std::memory_order_acquire);
      const uint64_t off = pos & (cap_ - 1);
      const uint64_t pad = (off + frame_len > cap_) ? cap_ - off : 0;
      const uint64_t end = pos + pad + frame_len;
      // SYNC(zero_mark) acquire: the zeroing below zero_mark is visible; pairs with extend_zero_mp.
      uint64_t z = aref(r_.data->zero_mark).load(std::memory_order_acquire);
      if (end + 8 > z) {
        RingStatus s = extend_zero_mp(end + 8);
        if (s != RingStatus::ok) return s;
        continue;
      }
      if (prod_) {
        // P8 steps 1-2: the intent, complete before the tail CAS can succeed.
        // SYNC(prod.intent) release; the CAS below is a full barrier as well. A
        // reclaimer reads it only once this process is proven dead.
        aref(prod_->claim_pos).store(pos, std::memory_order_relaxed);
        aref(prod_->claim_seq).store(seq, std::memory_order_relaxed);
        aref(prod_->frame_len).store(uint32_t(frame_len), std::memory_order_relaxed);
        aref(prod_->state).store(kProdClaiming, std::memory_order_release);
      }
      // The 16-byte CAS both claims [pos, end) and takes sequence `seq` (P8 step 3).
      if (!cas_tail(pos, seq, end, seq + 1)) {
        if (prod_) aref(prod_->state).store(kProdIdle, std::memory_order_relaxed);  // lost: no claim
        continue;
      }
      if (pad) {
        aref(r_.frame_at(pos)->commit)
            .store(make_commit(uint32_t(pad), kFramePad), std::memory_order_release);  // SYNC(frame.commit)
      }
      fill_claim(c, pos + pad, end, seq, frame_len);
      return RingStatus::ok;
    }
  }

  void fill_claim(Claim& c, uint64_t fpos, uint64_t end, uint64_t seq, uint64_t frame_len) {
    c.pos = fpos;
    c.end = end;
    c.seq = seq;
    c.frame_len = uint32_t(frame_len);
    c.max_payload = uint32_t(frame_len - kFrameHeaderSize);
    c.hdr = r_.frame_at(fpos);
    c.payload = reinterpret_cast<std::byte*>(c.hdr) + kFrameHeaderSize;
  }

  // Highest position a producer may write below: min(live cursors) + capacity.
  uint64_t refresh_limit() {
    // P5: a seq_cst RMW on the tail orders our tail before the slot scan, so a
    // joiner that we miss reads a tail at least this new.
    uint64_t tail = aref(r_.data->tail_pos).fetch_add(0, std::memory_order_seq_cst);
    if (!multi_ && tail < tail_) tail = tail_;
    limit_ = min_live_cursor(r_, tail) + cap_;
    return limit_;
  }

  // P2 (single producer): zero ring bytes [zero_mark, target) so that the commit
  // word after every frame we publish reads 0 until the next frame is committed,
  // and so that Cap'n Proto builders get zeroed memory.
  bool extend_zero_sp(uint64_t need) {
    if (need > limit_ && need > refresh_limit()) {
      aref(r_.data->backpressure_events).fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    uint64_t target = zero_mark_ + zero_chunk_;
    if (target < need) target = need;
    if (target > limit_) target = limit_;
    announce_zero(target);
    zero_range(zero_mark_, target);
    zero_mark_ = target;
    aref(r_.data->zero_mark).store(target, std::memory_order_release);  // for tools / MP handover
    return true;
  }

  // P2 (multi producer): one producer at a time extends zero_mark, under zero_lock.
  RingStatus extend_zero_mp(uint64_t need) {
    uint32_t expect = 0;
    if (!aref(r_.data->zero_lock)
             .compare_exchange_strong(expect, pid_, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
      cpu_relax();  // another producer is zeroing; the caller retries
      return RingStatus::ok;
    }
    RingStatus result = RingStatus::ok;
    uint64_t z = aref(r_.data->zero_mark).load(std::memory_order_relaxed);
    if (z < need) {
      uint64_t lim = (need > limit_) ? refresh_limit() : limit_;
      if (need > lim) {
        aref(r_.data->backpressure_events).fetch_add(1, std::memory_order_relaxed);
        result = RingStatus::back_pressured;
      } else {
        uint64_t target = z + zero_chunk_;
        if (target < need) target = need;
        if (target > lim) target = lim;
        // Safe: every claim ends at or below z - 8 and every reader reads below the
        // tail, so nobody touches [z, target) while we zero it.
        announce_zero(target);
        zero_range(z, target);
        aref(r_.data->zero_mark).store(target, std::memory_order_release);  // SYNC(zero_mark)
      }
    }
    aref(r_.data->zero_lock).store(0, std::memory_order_release);
    return result;
  }

  // P9: before overwriting ring bytes (zeroing is the first write of every lap),
  // say how far. An untethered reader that copied a frame at p re-reads this after
  // the copy; if it is above p + capacity the copy may be torn.
  void announce_zero(uint64_t target) {
    if (aref(r_.data->zero_intent).load(std::memory_order_relaxed) < target)
      aref(r_.data->zero_intent).store(target, std::memory_order_relaxed);
    // SYNC(zero_intent) release fence: the store above is ordered before the
    // zeroing stores; pairs with the acquire fence in untethered readers (P9).
    std::atomic_thread_fence(std::memory_order_release);
  }

  void zero_range(uint64_t from, uint64_t to) {
    while (from < to) {
      uint64_t off = from & (cap_ - 1);
      uint64_t n = to - from;
      if (off + n > cap_) n = cap_ - off;
      std::memset(r_.ring + off, 0, n);
      from += n;
    }
  }

  void publish_commit(FrameHeader* h, uint64_t word, bool notify) {
    if (notify && light_) {
      // SYNC(frame.commit) release + P6 light side: the compiler barrier keeps the
      // waiter check after the commit; the CPU is ordered by the sleeper's
      // membarrier (asym_fence_heavy in RingReader::wait).
      aref(h->commit).store(word, std::memory_order_release);
      asym_fence_light();
      notify_subscribers();
    } else if (notify) {
      // SYNC(frame.commit) release + P6 without membarrier: seq_cst so that the
      // waiter check below cannot be reordered before the commit (Dekker).
      aref(h->commit).exchange(word, std::memory_order_seq_cst);
      notify_subscribers();
    } else {
      aref(h->commit).store(word, std::memory_order_release);  // SYNC(frame.commit)
    }
  }

  bool cas_tail(uint64_t& e_pos, uint64_t& e_seq, uint64_t n_pos, uint64_t n_seq) {
    using u128 = unsigned __int128;
    u128 expected = (u128(e_seq) << 64) | e_pos;
    u128 desired = (u128(n_seq) << 64) | n_pos;
    u128* p = reinterpret_cast<u128*>(&r_.data->tail_pos);
#if SHMBUS_TSAN && defined(__x86_64__)
    // ThreadSanitizer emulates 128-bit atomics under a process-local lock, which
    // is not atomic against the other processes sharing this ring (two producers
    // then claim the same bytes). Issue the instruction ourselves and tell TSan
    // about its ordering: it is a full barrier.
    __tsan_release(p);
    uint64_t lo = uint64_t(expected), hi = uint64_t(expected >> 64);
    asm volatile("lock cmpxchg16b %0"
                 : "+m"(*p), "+a"(lo), "+d"(hi)
                 : "b"(uint64_t(desired)), "c"(uint64_t(desired >> 64))
                 : "memory", "cc");
    __tsan_acquire(p);
    u128 prev = (u128(hi) << 64) | lo;
#else
    u128 prev = __sync_val_compare_and_swap(p, expected, desired);  // full barrier
#endif
    if (prev == expected) return true;
    e_pos = uint64_t(prev);
    e_seq = uint64_t(prev >> 64);
    return false;
  }

  RingRefs r_{};
  ProducerSlot* prod_ = nullptr;  // MP: this producer's table entry (P8), or null
  bool multi_ = false;
  uint32_t pid_ = 0;
  uint32_t max_payload_ = 0;
  uint64_t cap_ = 0;
  uint64_t tail_ = 0;       // SP: next claim position
  uint64_t seq_ = 1;        // SP: next sequence
  uint64_t zero_mark_ = 0;  // SP: local copy of the zero watermark
  uint64_t limit_ = 0;      // cached min(cursor) + capacity
  uint64_t zero_chunk_ = 16384;
  bool light_ = asym_fence_available();  // P6 light side allowed
  bool space_fenced_ = true;
};

// ---------------------------------------------------------------------------
// Subscriber side: a cursor slot plus a private read position.
struct FrameView {
  const FrameHeader* hdr = nullptr;
  const std::byte* payload = nullptr;
  uint32_t payload_len = 0;
  uint64_t pos = 0;   // position of the frame
  uint64_t next = 0;  // position after the frame
};

class RingReader {
 public:
  RingReader() = default;

  static constexpr uint64_t kAtTail = ~uint64_t(0);

  // P5: take a free cursor slot and start at the current tail (or at `start`, a
  // frame boundary remembered from an earlier session: P11). Returns false when
  // every slot is taken.
  bool join(const RingRefs& r, uint32_t pid, bool tethered, uint64_t name_hash = 0,
            uint64_t start = kAtTail) {
    r_ = r;
    tethered_ = tethered;
    check_below_ = 0;
    for (uint32_t i = 0; i < r.slot_count; ++i) {
      CursorSlot& s = r.slots[i];
      uint32_t expect = kSlotFree;
      if (!aref(s.state).compare_exchange_strong(expect, kSlotJoining, std::memory_order_acq_rel))
        continue;
      slot_ = &s;
      slot_index_ = i;
      raise_slot_hwm(r, i + 1);
      aref(s.pid).store(pid, std::memory_order_relaxed);
      aref(s.flags).store(tethered ? kSlotTethered : 0u, std::memory_order_relaxed);
      aref(s.name_hash).store(name_hash, std::memory_order_relaxed);
      aref(s.generation).fetch_add(1, std::memory_order_relaxed);
      aref(s.heartbeat_ns).store(monotonic_ns(), std::memory_order_relaxed);
      uint64_t t1 = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
      if (start != kAtTail && start < t1) t1 = start;
      aref(s.position).store(t1, std::memory_order_release);
      // seq_cst store then seq_cst load of the tail: pairs with the seq_cst RMW and
      // slot scan in RingWriter::refresh_limit (P5). Either the producer sees us,
      // or we see a tail at least as new as the one its limit was computed from.
      aref(s.state).store(kSlotActive, std::memory_order_seq_cst);
      uint64_t t2 = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
      if (start != kAtTail && start < t2) {
        // P11: a producer that missed our slot may still overwrite up to its cached
        // limit, <= t2 + capacity; frames below t2 are checked as untethered (P9).
        check_below_ = t2;
        t2 = start;
      }
      aref(s.position).store(t2, std::memory_order_release);
      read_pos_ = released_ = t2;
      return true;
    }
    return false;
  }

  enum class Resume : uint8_t { resumed, none, in_use };
  // P11: take over the parked slot of durable name `name_hash` (ACTIVE, pid 0):
  // the CAS of pid 0 -> ours is the ownership transfer, so that the daemon's expiry
  // (which CASes pid 0 -> its own) and a second resumer cannot both win. The slot
  // never stopped holding the producer (when tethered), so the read position is
  // exactly the last release. `owner` gets the pid of a live owner (in_use).
  Resume resume(const RingRefs& r, uint32_t pid, bool tethered, uint64_t name_hash,
                uint32_t& owner) {
    for (uint32_t i = 0; i < r.slot_count; ++i) {
      CursorSlot& s = r.slots[i];
      if (aref(s.state).load(std::memory_order_acquire) != kSlotActive) continue;
      if (aref(s.name_hash).load(std::memory_order_relaxed) != name_hash) continue;
      uint32_t expect = 0;
      if (!aref(s.pid).compare_exchange_strong(expect, pid, std::memory_order_acq_rel)) {
        owner = expect;
        return Resume::in_use;
      }
      // The slot may have been freed (expired) between the state load and the CAS.
      if (aref(s.state).load(std::memory_order_seq_cst) != kSlotActive) {
        aref(s.pid).store(0, std::memory_order_relaxed);
        continue;
      }
      r_ = r;
      slot_ = &s;
      slot_index_ = i;
      tethered_ = tethered;
      check_below_ = 0;
      aref(s.generation).fetch_add(1, std::memory_order_relaxed);
      aref(s.heartbeat_ns).store(monotonic_ns(), std::memory_order_relaxed);
      aref(s.flags).store(tethered ? kSlotTethered : 0u, std::memory_order_seq_cst);
      // SYNC(cursor) acquire: the position the previous owner released (P4).
      read_pos_ = released_ = aref(s.position).load(std::memory_order_acquire);
      return Resume::resumed;
    }
    return Resume::none;
  }

  // P11: leaves the slot ACTIVE under its durable name with pid 0 ("parked"): it
  // keeps its position (and, tethered, keeps holding the producer) until its name
  // resumes it or the daemon expires it. The heartbeat is the parking time.
  void park() {
    if (!slot_) return;
    aref(slot_->heartbeat_ns).store(monotonic_ns(), std::memory_order_relaxed);
    aref(slot_->pid).store(0, std::memory_order_release);
    slot_ = nullptr;
  }

  // P9: true if ring bytes at `pos` read so far may have been overwritten by a
  // later lap. Call after reading them.
  bool lapped_at(uint64_t pos) const {
    // SYNC(zero_intent) acquire fence: pairs with the release fence in
    // RingWriter::announce_zero(); if our reads saw any byte of the next lap's
    // zeroing, the load below sees the intent stored before it.
    std::atomic_thread_fence(std::memory_order_acquire);
    return aref(r_.data->zero_intent).load(std::memory_order_relaxed) > pos + r_.capacity;
  }
  // Whether frames at `pos` need the P9 check (untethered, or below the join tail
  // of a tethered reader that joined at an old position).
  bool checked(uint64_t pos) const { return !tethered_ || pos < check_below_; }

  // After a lap: continue at the producer's tail (a frame boundary), releasing all.
  void skip_to_tail() {
    uint64_t t = aref(r_.data->tail_pos).load(std::memory_order_acquire);
    read_pos_ = t;
    if (tethered_) check_below_ = 0;
    release_to(t);
  }

  // Gives the slot back; a producer blocked on this cursor may proceed.
  void leave() {
    if (!slot_) return;
    aref(slot_->state).store(kSlotFree, std::memory_order_release);
    wake_producers();  // a blocked producer may now proceed
    slot_ = nullptr;
  }

  bool joined() const { return slot_ != nullptr; }
  uint32_t slot_index() const { return slot_index_; }
  uint64_t position() const { return read_pos_; }
  uint64_t released() const { return released_; }
  CursorSlot* slot() const { return slot_; }
  const RingRefs& refs() const { return r_; }

  // Next frame at the read position, without releasing anything. Padding frames
  // are skipped. Validates the frame against the ring bounds (the bytes come from
  // another process and are untrusted).
  RingStatus poll(FrameView& v) {
    const uint64_t start = read_pos_;
    for (;;) {
      const uint64_t off = read_pos_ & r_.mask();
      const FrameHeader* h = reinterpret_cast<const FrameHeader*>(r_.ring + off);
      // SYNC(frame.commit) acquire: the header and payload written before the
      // commit are visible; pairs with the release/seq_cst in publish_commit().
      uint64_t w = aref(const_cast<FrameHeader*>(h)->commit).load(std::memory_order_acquire);
      const bool chk = checked(read_pos_);
      if (w == 0) return chk && lapped_at(read_pos_) ? RingStatus::lapped : RingStatus::empty;
      const uint32_t len = commit_length(w);
      const uint16_t type = commit_type(w);
      if (len < 8 || (len & 7) || off + len > r_.capacity)
        return chk && lapped_at(read_pos_) ? RingStatus::lapped : RingStatus::corrupt;
      if (type == kFramePad) {
        if (chk && lapped_at(read_pos_)) return RingStatus::lapped;
        // More than a lap of padding in one call cannot come from a producer that
        // respects our cursor: stale or hostile bytes. Stop instead of circling.
        if (read_pos_ + len - start > r_.capacity) {
          read_pos_ = start;
          return RingStatus::corrupt;
        }
        read_pos_ += len;
        continue;
      }
      if (type != kFrameData || len < kFrameHeaderSize)
        return chk && lapped_at(read_pos_) ? RingStatus::lapped : RingStatus::corrupt;
      const uint32_t plen = h->payload_len;
      // P9: the header (commit word and payload_len) was read; still this lap's?
      if (chk && lapped_at(read_pos_)) return RingStatus::lapped;
      if (plen > len - kFrameHeaderSize) return RingStatus::corrupt;
      v.hdr = h;
      v.payload = reinterpret_cast<const std::byte*>(h) + kFrameHeaderSize;
      v.payload_len = plen;
      v.pos = read_pos_;
      v.next = read_pos_ + len;
      read_pos_ = v.next;
      return RingStatus::ok;
    }
  }

  // P4: everything below `pos` may be overwritten.
  void release_to(uint64_t pos) {
    released_ = pos;
    // SYNC(cursor) release: our reads of the frames below pos happen-before the
    // producer's reuse; seq_cst (exchange) so the space-waiter check that follows
    // cannot move above it (P7).
    if (light_) {
      // P7 light side: a compiler barrier; the blocked producer's membarrier
      // orders the CPU (begin_space_wait).
      aref(slot_->position).store(pos, std::memory_order_release);
      asym_fence_light();
    } else {
      aref(slot_->position).exchange(pos, std::memory_order_seq_cst);
    }
    wake_producers();
  }
  void release_all() { release_to(read_pos_); }

  // Rewinds the read position to the last release (e.g. a view handed back unread).
  void rewind() { read_pos_ = released_; }

  // P6: sleep until the commit word at the read position changes or timeout.
  // Returns true if data may be available.
  bool wait(int64_t timeout_ns) {
    if (has_data()) return true;
    aref(r_.ctl->data_waiters).fetch_add(1, std::memory_order_seq_cst);
    // P6 heavy side: producers commit with a plain store + compiler barrier; the
    // membarrier makes each running producer execute a full barrier, so either
    // its commit is visible to the re-check below or it sees data_waiters != 0.
    const bool fenced = asym_fence_heavy();
    uint32_t v = aref(r_.ctl->data_futex).load(std::memory_order_seq_cst);
    bool ready = has_data_sc();
    if (!ready) {
      if (!fenced && (timeout_ns < 0 || timeout_ns > 1'000'000)) timeout_ns = 1'000'000;
      futex_wait(&r_.ctl->data_futex, v, timeout_ns);
      ready = has_data();
    }
    aref(r_.ctl->data_waiters).fetch_sub(1, std::memory_order_seq_cst);
    return ready;
  }

  // True when poll() has something to say: a frame, or (checked readers) a lap.
  bool has_data() const {
    const FrameHeader* h = r_.frame_at(read_pos_);
    return aref(const_cast<FrameHeader*>(h)->commit).load(std::memory_order_acquire) != 0 ||
           (checked(read_pos_) && lapped_at(read_pos_));
  }

  void heartbeat(uint64_t now_ns) {
    aref(slot_->heartbeat_ns).store(now_ns, std::memory_order_relaxed);
  }

 private:
  bool has_data_sc() const {
    const FrameHeader* h = r_.frame_at(read_pos_);
    return aref(const_cast<FrameHeader*>(h)->commit).load(std::memory_order_seq_cst) != 0 ||
           (checked(read_pos_) && lapped_at(read_pos_));
  }
  void wake_producers() {
    // seq_cst: pairs with begin_space_wait (P7).
    if (aref(r_.ctl->space_waiters).load(std::memory_order_seq_cst) != 0) {
      aref(r_.ctl->space_futex).fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&r_.ctl->space_futex);
    }
  }

  RingRefs r_{};
  CursorSlot* slot_ = nullptr;
  uint32_t slot_index_ = 0;
  uint64_t read_pos_ = 0;
  uint64_t released_ = 0;
  bool light_ = asym_fence_available();  // P7 light side allowed

  // P5: slot_hwm only grows; seq_cst so it precedes our seq_cst state store.
  static void raise_slot_hwm(const RingRefs& r, uint32_t n) {
    uint32_t cur = aref(r.ctl->slot_hwm).load(std::memory_order_seq_cst);
    while (cur < n &&
           !aref(r.ctl->slot_hwm).compare_exchange_weak(cur, n, std::memory_order_seq_cst)) {
    }
  }
  bool tethered_ = true;
  uint64_t check_below_ = 0;  // P11: frames below this position get the P9 check
};

// Initialises freshly created (zero-filled) segments. The layout version is
// written last with release: "version present" means "ready" (SYNC(data.ready),
// SYNC(ctl.ready)).
inline void init_segments(DataHeader* d, ControlHeader* c, uint64_t capacity, uint32_t slots,
                          uint32_t flags, uint32_t policy, uint32_t partition, uint64_t schema_id,
                          uint64_t max_payload, uint64_t created_ns) {
  d->magic = kDataMagic;
  d->flags = flags;
  d->capacity = capacity;
  d->data_offset = sizeof(DataHeader);
  d->schema_id = schema_id;
  d->policy = policy;
  d->partition = partition;
  d->created_ns = created_ns;
  d->max_payload = max_payload;
  d->tail_pos = 0;
  d->tail_seq = 1;
  d->zero_mark = capacity;  // a fresh segment is all zeros
  d->zero_intent = capacity;
  c->magic = kCtlMagic;
  c->slot_count = slots;
  c->capacity = capacity;
  c->producer_slots = kProducerSlots;
  c->producer_offset = sizeof(ControlHeader) + uint64_t(slots) * sizeof(CursorSlot);
  aref(c->layout_version).store(kLayoutVersion, std::memory_order_release);  // SYNC(ctl.ready)
  aref(d->layout_version).store(kLayoutVersion, std::memory_order_release);  // SYNC(data.ready)
}

}  // namespace shmbus::shm
