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

#if defined(SHMBUS_SCHED_HOOK)
// Deterministic-schedule tests (tests/sched): every atomic access to shared memory
// is a scheduling point, where the test's scheduler may run another participant
// (or kill this one). Never defined in the library or the daemon.
void shmbus_sched_point() noexcept;
template <class T>
struct SchedRef {
  std::atomic_ref<T> r;
  using MO = std::memory_order;
  T load(MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.load(o);
  }
  void store(T v, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    r.store(v, o);
  }
  T exchange(T v, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.exchange(v, o);
  }
  bool compare_exchange_strong(T& e, T d, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.compare_exchange_strong(e, d, o);
  }
  bool compare_exchange_strong(T& e, T d, MO s, MO f) const noexcept {
    shmbus_sched_point();
    return r.compare_exchange_strong(e, d, s, f);
  }
  bool compare_exchange_weak(T& e, T d, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.compare_exchange_weak(e, d, o);
  }
  bool compare_exchange_weak(T& e, T d, MO s, MO f) const noexcept {
    shmbus_sched_point();
    return r.compare_exchange_weak(e, d, s, f);
  }
  T fetch_add(T v, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.fetch_add(v, o);
  }
  T fetch_sub(T v, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.fetch_sub(v, o);
  }
  T fetch_or(T v, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.fetch_or(v, o);
  }
  T fetch_and(T v, MO o = std::memory_order_seq_cst) const noexcept {
    shmbus_sched_point();
    return r.fetch_and(v, o);
  }
};
template <class T>
inline SchedRef<T> aref(T& v) {
  return SchedRef<T>{std::atomic_ref<T>(v)};
}
#else
template <class T>
inline std::atomic_ref<T> aref(T& v) {
  return std::atomic_ref<T>(v);
}
#endif

// A view of one partition's two segments, as mapped by this process.
// Every value in it was copied once from the segment headers and validated
// (bind_ring); nothing is read again from the shared headers' identity lines.
struct RingRefs {
  DataHeader* data = nullptr;         // data segment base (read-only for subscribers)
  std::byte* ring = nullptr;          // data + kRingOffset
  ControlHeader* ctl = nullptr;       // control segment base (daemon mode: read-only for clients)
  CursorSlot* slots = nullptr;        // ctl + sizeof(ControlHeader)
  WakeBlock* wake = nullptr;          // P6 data waiter bits: &ctl->wake, or the wake segment (daemon mode)
  bool shared_wake = false;           // the wake block is writable by every subscriber (daemon mode)
  ProducerSlot* producers = nullptr;  // data + kProducerTableOffset
  ProducerGrant* grants = nullptr;    // the daemon's producer grant records (after the cursor slots; 4.0)
  uint64_t capacity = 0;
  uint32_t slot_count = 0;
  uint32_t producer_count = 0;
  uint32_t flags = 0;  // copies of the creator-written identity line
  uint32_t policy = 0;
  uint64_t max_payload = 0;
  uint64_t schema_id = 0;
  uint32_t partition = 0;

  bool multi() const { return flags & kFlagMultiProducer; }

  uint64_t mask() const { return capacity - 1; }
  FrameHeader* frame_at(uint64_t pos) const { return reinterpret_cast<FrameHeader*>(ring + (pos & mask())); }
};

// Binds `r` to mapped segments: copies each header's creator-written lines once
// into local memory, validates the copy and fills `r` only from it (a peer may
// rewrite the shared header between a check and a use). Returns nullptr, or why
// the segments are refused. The caller has already waited for layout_version != 0.
//
// `granted`: the segments came from the daemon, which sized the control segment
// itself; the slot count is then taken from its size and the control header's
// identity line (which every subscriber can write) is not consulted at all.
inline const char* bind_ring(void* data, size_t data_bytes, void* ctl, size_t ctl_bytes, RingRefs& r,
                             bool granted = false) {
  r = RingRefs{};
  if (data_bytes < kRingOffset || ctl_bytes < sizeof(ControlHeader)) return "segment shorter than its header";
  auto* dh = static_cast<DataHeader*>(data);
  auto* ch = static_cast<ControlHeader*>(ctl);
  // SYNC(data.ready) / SYNC(ctl.ready) acquire, then one copy of the identity lines.
  const uint32_t dv = aref(dh->layout_version).load(std::memory_order_acquire);
  uint32_t cv = aref(ch->layout_version).load(std::memory_order_acquire);
  DataHeader d;
  ControlHeader c;
  std::memcpy(static_cast<void*>(&d), data, 128);
  std::memcpy(static_cast<void*>(&c), ctl, 32);
  if (granted) {
    // Only the daemon writes the data segment's identity; the control segment's
    // is replaced by what the daemon's own sizing says.
    c.magic = kCtlMagic;
    cv = kLayoutVersion;
    c.capacity = d.capacity;
    const size_t n = ctl_bytes < sizeof(ControlHeader) + kProducerGrantTableSize
                         ? 0
                         : (ctl_bytes - sizeof(ControlHeader) - kProducerGrantTableSize) / sizeof(CursorSlot);
    c.slot_count = n > kMaxSlots ? 0 : uint32_t(n);
  }
  if ((dv >> 16) != kLayoutMajor || (cv >> 16) != kLayoutMajor)
    return "segment layout version differs from this build's (4.x: daemon-granted producers); "
           "a client or segment of another shmbus release: upgrade it, or recreate the topic";
  if (d.magic != kDataMagic || c.magic != kCtlMagic) return "bad segment magic";
  if (d.capacity < 4096 || (d.capacity & (d.capacity - 1)) || d.capacity > (uint64_t(1) << 40))
    return "ring capacity is not a power of two in [4 KiB, 1 TiB]";
  if (d.data_offset != kRingOffset || d.producer_offset != kProducerTableOffset ||
      d.producer_slots != kProducerSlots)
    return "data segment offsets differ from layout 4.0";
  if (data_bytes < data_segment_size(d.capacity)) return "data segment shorter than its ring";
  if (c.capacity != d.capacity) return "control and data segments disagree on the capacity";
  if (c.slot_count == 0 || c.slot_count > kMaxSlots) return "bad cursor slot count";
  if (ctl_bytes < control_segment_size(c.slot_count)) return "control segment shorter than its slots";
  if (d.max_payload == 0 || d.max_payload > d.capacity / 4 ||
      d.max_payload > uint64_t(UINT32_MAX) - 2 * kFrameHeaderSize)
    return "bad max_payload";
  if (d.policy > kPolicySpill) return "bad policy";
  r.data = dh;
  r.ring = static_cast<std::byte*>(data) + kRingOffset;
  r.ctl = ch;
  r.slots = reinterpret_cast<CursorSlot*>(static_cast<std::byte*>(ctl) + sizeof(ControlHeader));
  r.wake = &ch->wake;
  r.producers = reinterpret_cast<ProducerSlot*>(static_cast<std::byte*>(data) + kProducerTableOffset);
  r.grants = reinterpret_cast<ProducerGrant*>(static_cast<std::byte*>(ctl) + sizeof(ControlHeader) +
                                              size_t(c.slot_count) * sizeof(CursorSlot));
  r.capacity = d.capacity;
  r.slot_count = c.slot_count;
  r.producer_count = kProducerSlots;
  r.flags = d.flags;
  r.policy = d.policy;
  r.max_payload = d.max_payload;
  r.schema_id = d.schema_id;
  r.partition = d.partition;
  return nullptr;
}

inline uint64_t wrap_pad(uint64_t pos, uint64_t frame_len, uint64_t cap) {
  const uint64_t off = pos & (cap - 1);
  return (off + frame_len > cap) ? cap - off : 0;  // P3
}

// P8 (2.0): a consistent snapshot of producer slot k's claim (seqlock over the
// claim word, SYNC(prod.claim)). False when the owner changed it meanwhile.
inline bool read_claim(const ProducerSlot& p, uint64_t& word, uint64_t& pos, uint32_t& len) {
  auto& ps = const_cast<ProducerSlot&>(p);
  const uint64_t w1 = aref(ps.claim).load(std::memory_order_acquire);
  pos = aref(ps.claim_pos).load(std::memory_order_relaxed);
  len = aref(ps.frame_len).load(std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_acquire);
  word = aref(ps.claim).load(std::memory_order_relaxed);
  return w1 == word;
}

// The 16-byte CAS of {tail_pos, tail_seq}; on failure e_pos/e_tw get the current pair.
inline bool cas_tail(const RingRefs& r, uint64_t& e_pos, uint64_t& e_tw, uint64_t n_pos, uint64_t n_tw) {
  using u128 = unsigned __int128;
  u128 expected = (u128(e_tw) << 64) | e_pos;
  u128 desired = (u128(n_tw) << 64) | n_pos;
  u128* p = reinterpret_cast<u128*>(&r.data->tail_pos);
#if defined(SHMBUS_SCHED_HOOK)
  shmbus_sched_point();
#endif
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
  e_tw = uint64_t(prev >> 64);
  return false;
}

// P8 step 3 (owner, helper or reclaimer): the claim of slot k at {pos, seq} won the
// pending CAS. Marks it WON, then moves the tail past it. Both are CASes on this one
// claim, so a late or repeated call changes nothing. WON is stored before the tail
// leaves "pending k": a reclaimer that finds the tail past the claim finds WON.
inline void complete_claim(const RingRefs& r, uint32_t k, uint64_t pos, uint64_t seq, uint32_t len) {
  uint64_t expect = claim_word(seq, kClaimIntent);
  aref(r.producers[k].claim)
      .compare_exchange_strong(expect, claim_word(seq, kClaimWon), std::memory_order_seq_cst);
  const uint64_t end = pos + wrap_pad(pos, len, r.capacity) + len;
  uint64_t e_pos = pos, e_tw = tail_word(seq, k + 1);
  cas_tail(r, e_pos, e_tw, end, tail_word(seq + 1, 0));
}

// Helps a pending tail {pos, tw} along (any producer that finds it, or a reclaimer).
// Does nothing when the snapshot is stale or the owner's record does not match it.
inline void help_pending(const RingRefs& r, uint64_t pos, uint64_t tw) {
  const uint32_t pend = tail_pending_of(tw);
  if (pend == 0 || pend > r.producer_count) return;
  const uint32_t k = pend - 1;
  uint64_t w, cpos;
  uint32_t len;
  if (!read_claim(r.producers[k], w, cpos, len)) return;
  const uint64_t st = claim_state(w);
  if ((st != kClaimIntent && st != kClaimWon) || claim_seq(w) != tail_seq_of(tw) || cpos != pos) return;
  if (len < kFrameHeaderSize || (len & (kFrameAlign - 1)) || len > r.capacity / 2) return;  // hostile
  complete_claim(r, k, pos, tail_seq_of(tw), len);
}

// Lowest position of an open multi-producer claim (intent recorded or won), or `none`.
// seq_cst: a claimer stores its intent (seq_cst) before its pending CAS; a zeroer
// reads the tail (seq_cst RMW) before this scan, so it either sees the intent or
// read a tail <= the claim's position (P2).
inline uint64_t min_open_claim(const RingRefs& r, uint64_t none) {
  uint64_t m = none;
  for (uint32_t k = 0; k < r.producer_count; ++k) {
    ProducerSlot& p = r.producers[k];
    if (claim_state(aref(p.claim).load(std::memory_order_seq_cst)) == kClaimIdle) continue;
    uint64_t pos = aref(p.claim_pos).load(std::memory_order_relaxed);
    if (pos < m) m = pos;
  }
  return m;
}

// P6 waker side: after a commit (release store + compiler barrier, or a seq_cst
// exchange), wake the sleepers if any data-waiter bit is set. seq_cst loads pair
// with the sleeper's seq_cst fetch_or and its membarrier (sleep_for_data).
inline void notify_data_waiters(const RingRefs& r, uint32_t words) {
  for (uint32_t i = 0; i < words; ++i) {
    if (aref(r.wake->data_waiter_bits[i]).load(std::memory_order_seq_cst) != 0) {
      aref(r.data->data_futex).fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&r.data->data_futex);
      return;
    }
  }
}
// P7 waker sides (3.0). A producer asleep on space sleeps on the wake word of what
// bound its limit: the binding cursor's page (CursorPage::space_wake) or, when an
// open claim bound it, DataHeader::space_futex.
// After a cursor release by the page's owner:
inline void notify_space_waiters(const RingRefs& r, CursorPage* page) {
  // seq_cst: pairs with RingWriter::prepare_space_wait.
  if (aref(r.data->space_waiter_bits).load(std::memory_order_seq_cst) != 0) {
    aref(page->space_wake).fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&page->space_wake);
  }
}
// After a claim closed (producers only):
inline void notify_space_waiters_claim(const RingRefs& r) {
  if (aref(r.data->space_waiter_bits).load(std::memory_order_seq_cst) != 0) {
    aref(r.data->space_futex).fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&r.data->space_futex);
  }
}
// Unconditional wakes. A cursor freed (by its owner, the daemon or a direct-mode
// reclaimer): its page's word, which the producers it bound sleep on (a subscriber
// cannot write the data segment). A claim padded or closed by a reclaimer:
// DataHeader::space_futex.
inline void wake_space_page(CursorPage* page) {
  aref(page->space_wake).fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&page->space_wake);
}
inline void wake_all_space(const RingRefs& r) {
  aref(r.data->space_futex).fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&r.data->space_futex);
}
inline void wake_all_data(const RingRefs& r) {
  aref(r.data->data_futex).fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&r.data->data_futex);
}

// Longest single sleep on data when the waiter bits are writable by every
// subscriber (daemon mode): a hostile subscriber may clear our bit, so we re-arm it
// at least this often. The worst it can do is this much extra latency.
inline constexpr int64_t kSharedWakeSliceNs = 20'000'000;

// P6 sleeper side, the one implementation (RingReader::wait, the archiver): sets
// the caller's own data-waiter bit (not a count: a reclaimer clears the bit of a
// sleeper that died, so nothing leaks; defect 6 of 1.x), then the heavy fence,
// then `ready()` (a seq_cst re-check), then sleeps on data_futex.
// `intr` (may be null): the caller's Interrupt, which ends the sleep at once.
template <class Ready>
inline bool sleep_for_data(const RingRefs& r, uint32_t slot_index, int64_t timeout_ns, Ready ready,
                           Interrupt* intr = nullptr) {
  uint64_t& word = r.wake->data_waiter_bits[slot_index / 64];
  const uint64_t bit = uint64_t(1) << (slot_index % 64);
  aref(word).fetch_or(bit, std::memory_order_seq_cst);
  // P6 heavy side: producers commit with a plain store + compiler barrier; the
  // membarrier makes each running producer execute a full barrier, so either
  // its commit is visible to the re-check below or it sees our bit.
  const bool fenced = asym_fence_heavy();
  const uint32_t v = aref(r.data->data_futex).load(std::memory_order_seq_cst);
  bool ok = ready();
  if (!ok) {
    if (!fenced && (timeout_ns < 0 || timeout_ns > 1'000'000)) timeout_ns = 1'000'000;
    if (r.shared_wake && (timeout_ns < 0 || timeout_ns > kSharedWakeSliceNs)) timeout_ns = kSharedWakeSliceNs;
    futex_wait_interruptible(&r.data->data_futex, v, intr, timeout_ns);
    ok = ready();
  }
  aref(word).fetch_and(~bit, std::memory_order_seq_cst);
  return ok;
}

// Producers' page table (3.0): the cursor page of each slot, tagged with the slot
// generation it belongs to. Daemon mode: pages mapped read-only on the slow path
// (fetched from the daemon, never per message); slots with kSlotEmbedded (direct
// mode, the daemon's own cursors) need no entry. One table per producer (one
// thread), so an entry is replaced (and its old page unmapped) by its owner only.
struct PageTable {
  CursorPage* page[kMaxSlots] = {};
  uint32_t gen[kMaxSlots] = {};
  uint64_t missing[kMaxSlots / 64] = {};  // set by scans: the slot's page of this generation is not mapped
  bool any_missing() const {
    for (uint64_t w : missing)
      if (w) return true;
    return false;
  }
};

// The page of slot i at generation `gen`, or null when it is not mapped here.
inline CursorPage* slot_page(const RingRefs& r, const PageTable* t, uint32_t i, uint32_t gen,
                             uint32_t flags) {
  if (flags & kSlotEmbedded) return &r.slots[i].page;
  if (t && t->page[i] && t->gen[i] == gen) return t->page[i];
  return nullptr;
}

// What bound a producer's last limit: the wake word to sleep on (P7).
struct SpaceBinding {
  uint32_t* word = nullptr;  // a cursor page's space_wake, or DataHeader::space_futex
  bool exact = true;         // false: the binding cursor's page is not mapped (sleep a short slice)
};

// Lowest position any live tethered subscriber still needs, or `none` (the tail).
// Every position read from a page is hostile and clamped to [join_position, none]:
// above the tail counts as the tail (min), below the join position as the join
// position (the daemon wrote it; a cursor never goes below it). A slot whose page
// is not mapped here counts at its join position, and is marked in t->missing.
// SYNC(cursor) acquire: the bytes below a cursor were fully read before the
// subscriber released them; pairs with the release in RingReader::release_to().
inline uint64_t min_live_cursor(const RingRefs& r, uint64_t none, PageTable* t = nullptr,
                                SpaceBinding* b = nullptr) {
  uint64_t m = none;
  // seq_cst: a joiner raises slot_hwm before its seq_cst state store (P5), so a
  // scan that misses the raise also misses the slot, and the P5 argument holds.
  uint32_t n = aref(r.ctl->slot_hwm).load(std::memory_order_seq_cst);
  if (n == 0 || n > r.slot_count) n = r.slot_count;
  if (t)
    for (uint64_t& w : t->missing) w = 0;
  for (uint32_t i = 0; i < n; ++i) {
    CursorSlot& s = r.slots[i];
    // seq_cst: pairs with the seq_cst state store/tail load in join (P5).
    if (aref(s.state).load(std::memory_order_seq_cst) != kSlotActive) continue;
    const uint32_t flags = aref(s.flags).load(std::memory_order_relaxed);
    if (!(flags & kSlotTethered)) continue;
    const uint32_t g1 = aref(s.generation).load(std::memory_order_seq_cst);
    uint64_t jp = aref(s.join_position).load(std::memory_order_relaxed);
    CursorPage* pg = slot_page(r, t, i, g1, flags);
    // SYNC(cursor) acquire; seq_cst so that a producer that announced itself in
    // space_waiter_bits (P7) cannot miss a cursor stored before the subscriber read
    // the bits (a plain load on x86, so free).
    uint64_t p = pg ? aref(pg->position).load(std::memory_order_seq_cst) : jp;
    if (aref(s.generation).load(std::memory_order_seq_cst) != g1) {
      // Re-granted (or resumed on a fresh page) meanwhile: the new grant's join
      // position was stored before its generation, and bounds its cursor.
      jp = aref(s.join_position).load(std::memory_order_acquire);
      p = jp;
      pg = nullptr;
    }
    if (!pg && t && !(flags & kSlotEmbedded)) t->missing[i / 64] |= uint64_t(1) << (i % 64);
    if (p < jp) p = jp;
    if (p < m) {
      m = p;
      if (b) {
        b->word = pg ? &pg->space_wake : &r.data->space_futex;
        b->exact = pg != nullptr;
      }
    }
  }
  return m;
}

// P5 (self-service joiner in direct mode; the daemon granting a slot in daemon
// mode): take a free slot, make its page hold the tail (or `start`, a frame
// boundary remembered from an earlier session: P11). `page` null: the slot's
// embedded page. Returns the slot index, or -1 when every slot is taken; `pos` gets
// the read position and `check_below` the P11 check bound (0: none).
inline int32_t join_slot(const RingRefs& r, uint32_t pid, bool tethered, uint64_t name_hash, uint64_t start,
                         CursorPage* page, uint64_t page_id, uint64_t& pos, uint64_t& check_below) {
  constexpr uint64_t kAtTail = ~uint64_t(0);
  check_below = 0;
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    CursorSlot& s = r.slots[i];
    uint32_t expect = kSlotFree;
    if (!aref(s.state).compare_exchange_strong(expect, kSlotJoining, std::memory_order_acq_rel)) continue;
    // P5: slot_hwm only grows; seq_cst so it precedes our seq_cst state store.
    uint32_t cur = aref(r.ctl->slot_hwm).load(std::memory_order_seq_cst);
    while (cur < i + 1 &&
           !aref(r.ctl->slot_hwm).compare_exchange_weak(cur, i + 1, std::memory_order_seq_cst)) {
    }
    CursorPage* pg = page ? page : &s.page;
    aref(s.pid).store(pid, std::memory_order_relaxed);
    aref(s.flags).store((tethered ? kSlotTethered : 0u) | (page ? 0u : kSlotEmbedded),
                        std::memory_order_relaxed);
    aref(s.name_hash).store(name_hash, std::memory_order_relaxed);
    aref(s.page_id).store(page ? page_id : 0, std::memory_order_relaxed);
    aref(s.parked_ns).store(0, std::memory_order_relaxed);
    aref(pg->heartbeat_ns).store(monotonic_ns(), std::memory_order_relaxed);
    uint64_t t1 = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
    if (start != kAtTail && start < t1) t1 = start;
    aref(pg->position).store(t1, std::memory_order_release);
    aref(s.join_position).store(t1, std::memory_order_release);
    aref(s.generation).fetch_add(1, std::memory_order_seq_cst);
    // seq_cst store then seq_cst load of the tail: pairs with the seq_cst RMW and
    // slot scan in RingWriter::refresh_limit (P5). Either the producer sees us,
    // or we see a tail at least as new as the one its limit was computed from.
    aref(s.state).store(kSlotActive, std::memory_order_seq_cst);
    uint64_t t2 = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
    if (start != kAtTail && start < t2) {
      // P11: a producer that missed our slot may still overwrite up to its cached
      // limit, <= t2 + capacity; frames below t2 are checked as untethered (P9).
      check_below = t2;
      t2 = start;
    }
    aref(pg->position).store(t2, std::memory_order_release);
    pos = t2;
    return int32_t(i);
  }
  return -1;
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

// A claim of `count` frames taken as one ring claim (P1m, docs/memory-ordering.md):
// one range [pos, end) of `count` frames of `frame_len` bytes each, back to back
// (the range never crosses the end of the ring: one wrap pad goes before it), and
// `count` sequences, seq .. seq + count - 1. Multi-producer: one producer-table
// record, whose claim word carries the last sequence (`tag`), so that the tail
// completion (claim word sequence + 1) advances tail_seq past all of them.
struct ClaimBatch {
  uint64_t pos = 0;  // position of frame 0's header
  uint64_t end = 0;  // pos + count * frame_len
  uint64_t seq = 0;  // sequence of frame 0; frame i has seq + i
  uint64_t tag = 0;  // multi-producer: the claim word's sequence (seq + count - 1)
  uint32_t count = 0;
  uint32_t frame_len = 0;     // claimed length of each frame
  uint32_t max_payload = 0;   // payload room of each frame
  std::byte* base = nullptr;  // frame 0's header in this mapping (the frames are contiguous)
  bool active() const { return count != 0; }
  FrameHeader* hdr(uint32_t i) const { return reinterpret_cast<FrameHeader*>(base + size_t(i) * frame_len); }
  std::byte* payload(uint32_t i) const { return base + size_t(i) * frame_len + kFrameHeaderSize; }
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

  // Multi-producer: returns false when every producer-table entry is taken (a
  // multi-producer claim is always recorded, so that a reclaimer can pad it).
  bool attach(const RingRefs& r, bool multi, uint32_t self_pid) {
    r_ = r;
    multi_ = multi;
    pid_ = self_pid;
    cap_ = r.capacity;
    max_payload_ = uint32_t(r.max_payload);
    waiter_words_ = (r.slot_count + 63) / 64;
    binding_ = SpaceBinding{&r.data->space_futex, true};
    tail_ = aref(r.data->tail_pos).load(std::memory_order_acquire);
    seq_ = tail_seq_of(aref(r.data->tail_seq).load(std::memory_order_acquire));
    zero_mark_ = aref(r.data->zero_mark).load(std::memory_order_acquire);
    limit_ = 0;
    zero_chunk_ = cap_ / 8 < 16384 ? cap_ / 8 : 16384;
    if (zero_chunk_ < 64) zero_chunk_ = 64;
    prod_ = nullptr;
    self_service_ = true;
    space_bit_ = uint64_t(1) << kSpaceBitSingle;
    return !multi || register_producer();
  }

  // Daemon mode (4.0): the daemon granted this producer its ownership and wrote
  // `token` (its own choice, never a pid) as the owner: into producer-table entry
  // `slot` (multi) or DataHeader::producer_pid (single). Nothing is taken here, and
  // a dead zero-lock holder is left to the daemon, which knows its grantee (a pid
  // read from the table could be another pid namespace's, or forged).
  bool attach_granted(const RingRefs& r, bool multi, uint32_t token, uint32_t slot) {
    attach(r, false, token);
    multi_ = multi;
    self_service_ = false;
    if (!multi) return true;
    if (slot >= r.producer_count) return false;
    ProducerSlot& p = r_.producers[slot];
    if (aref(p.pid).load(std::memory_order_acquire) != token) return false;
    prod_ = &p;
    slot_ = slot;
    space_bit_ = uint64_t(1) << slot;
    return true;
  }

  // P8 step 0: takes a free producer-table entry (pid 0 -> ours by CAS).
  bool register_producer() {
    for (uint32_t i = 0; i < r_.producer_count; ++i) {
      ProducerSlot& p = r_.producers[i];
      uint32_t expect = 0;
      if (!aref(p.pid).compare_exchange_strong(expect, pid_, std::memory_order_acq_rel)) continue;
      aref(p.generation).fetch_add(1, std::memory_order_relaxed);
      aref(p.claim).store(claim_word(0, kClaimIdle), std::memory_order_release);
      prod_ = &p;
      slot_ = i;
      space_bit_ = uint64_t(1) << i;
      return true;
    }
    return false;
  }
  // Gives the producer-table entry back (call when no claim is open).
  void detach() {
    if (!prod_) return;
    aref(prod_->claim).store(claim_word(0, kClaimIdle), std::memory_order_relaxed);
    aref(prod_->pid).store(0, std::memory_order_release);
    prod_ = nullptr;
  }
  bool recorded() const { return prod_ != nullptr; }
  uint32_t owner() const { return pid_; }
  uint32_t producer_slot() const { return slot_; }

  // Single-producer takeover (the previous exclusive producer is gone): skips any
  // frame it committed without publishing the tail, then re-zeroes what it may
  // have written into an uncommitted claim, so the P2 invariant holds again.
  void recover_sp() {
    uint64_t pos = aref(r_.data->tail_pos).load(std::memory_order_acquire);
    uint64_t seq = aref(r_.data->tail_seq).load(std::memory_order_acquire);
    seq = tail_seq_of(seq);
    const uint64_t start = pos;
    const uint64_t seq0 = seq;  // the dead owner published it: never handed out again
    for (uint64_t n = 0; n < cap_ / 8; ++n) {
      FrameHeader* h = r_.frame_at(pos);
      uint64_t w = aref(h->commit).load(std::memory_order_acquire);
      uint32_t len = commit_length(w);
      uint64_t off = pos & (cap_ - 1);
      if (w == 0 || len < 8 || (len & 7) || off + len > cap_) break;
      if (commit_type(w) == kFrameData && len >= kFrameHeaderSize) {
        const uint64_t s = aref(h->sequence).load(std::memory_order_relaxed);  // copied once
        // commit() and commit_n() publish tail_seq (the next sequence) before
        // tail_pos: an owner killed between the two stores left tail_seq past the
        // committed frames that still sit at tail_pos, the first of them k below it
        // (1 for commit(), a batch's k for commit_n()). Those frames are visible to
        // readers (their commit words are set), so they are walked over like any
        // other, never re-zeroed and reused (seen as a reader stuck inside the next
        // producer's first frame, crash_mp_test). Only at tail_pos itself, and at
        // most a ring's worth of frames (capacity / 48) below tail_seq.
        if (pos == start && s != 0 && s < seq && seq - s <= cap_ / kFrameHeaderSize) seq = s;
        if (s != seq) break;  // not the frame the dead owner committed next: stop here
        seq = s + 1;
      }
      pos += len;
    }
    if (seq < seq0) seq = seq0;  // the walk stopped inside such a commit: skip past tail_seq
    // A dead single producer may have been asleep on space: its bit would make
    // every release wake nobody.
    aref(r_.data->space_waiter_bits).fetch_and(~(uint64_t(1) << kSpaceBitSingle), std::memory_order_relaxed);
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
    if (used < flen && !multi_) {
      if (!tail_clean)
        std::memset(reinterpret_cast<std::byte*>(c.hdr) + kFrameHeaderSize + payload_len, 0,
                    flen - kFrameHeaderSize - payload_len);
      // Single producer: nobody claimed after us, shrink to fit. Several: a claim
      // never shrinks (2.0); the unused tail stays inside the frame, skipped by
      // its length, so the reclaimer's record of the claim stays exact (P8).
      flen = used;
    }
    FrameHeader* h = c.hdr;
    h->payload_len = payload_len;
    h->producer_id = meta.producer_id;
    h->timestamp_ns = meta.timestamp_ns == 0              ? monotonic_ns()
                      : meta.timestamp_ns == kNoTimestamp ? 0
                                                          : meta.timestamp_ns;
    h->message_id = meta.message_id;
    h->schema_id = meta.schema_id;
    aref(h->sequence).store(c.seq, std::memory_order_relaxed);
    publish_commit(h, make_commit(flen, kFrameData), notify);
    // P8 step 5: the claim is closed (IDLE is also the seqlock's "writing" state).
    if (prod_) close_claim(c.seq);
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
    if (prod_) close_claim(c.seq);
    if (!multi_) {
      tail_ = c.pos + flen;
      aref(r_.data->tail_pos).store(tail_, std::memory_order_release);
    }
    c = Claim{};
  }

  // P1m step 1: reserve `n` frames able to hold `payload_max` bytes each, as ONE
  // ring claim (ClaimBatch). Never blocks. too_large when a frame exceeds the
  // topic's max_payload, or when the n frames (with a wrap pad before them and the
  // 8 zeroed bytes after them) could never fit the ring: 2 * n * frame_len + 8 >
  // capacity, the same bound space_available() applies to a single frame.
  RingStatus try_claim_n(uint32_t n, uint32_t payload_max, ClaimBatch& b) {
    if (n == 0 || payload_max > max_payload_) return RingStatus::too_large;
    const uint64_t frame_len = align_frame(uint64_t(kFrameHeaderSize) + payload_max);
    if (n > cap_ / frame_len) return RingStatus::too_large;
    const uint64_t total = frame_len * n;
    if (total * 2 + 8 > cap_ || total > UINT32_MAX) return RingStatus::too_large;
    Claim c;
    const RingStatus s = multi_ ? claim_mp(total, c, n) : claim_sp(total, c);
    if (s != RingStatus::ok) return s;
    b.pos = c.pos;
    b.end = c.end;
    b.seq = c.seq;
    b.tag = c.seq + n - 1;
    b.count = n;
    b.frame_len = uint32_t(frame_len);
    b.max_payload = uint32_t(frame_len - kFrameHeaderSize);
    b.base = reinterpret_cast<std::byte*>(c.hdr);
    return RingStatus::ok;
  }

  // P1m step 2: publishes frames 0..k-1 of the batch (k <= b.count), frame i with
  // lens[i] <= b.max_payload payload bytes and message id ids[i] (ids null: 0).
  // One timestamp for the batch (one clock read; meta.timestamp_ns as commit()).
  // Every frame keeps its claimed length (payloads do not move), except in
  // single-producer mode the last committed frame, which shrinks to fit, and the
  // frames after it, which are given back (re-zeroed: the caller may have touched
  // them). With several producers the frames after k become one padding frame.
  //
  // Store order (docs/memory-ordering.md P1m): the headers and commit words of
  // frames 1..k-1 (and the pad) first, frame 0's commit word LAST (release,
  // publish_commit). Readers reach frames 1.. only through frame 0, so nothing of
  // the batch is visible before that store and all of it is after (frame 0's
  // acquire load orders the rest). A producer that dies before it leaves frame 0's
  // commit word 0: exactly a dead single-frame claim of b.count * b.frame_len
  // bytes, padded as one frame by the reclaimer (MP) or re-zeroed by recover_sp (SP).
  // `tail_clean`: as commit(), for the bytes past each frame's payload.
  void commit_n(ClaimBatch& b, uint32_t k, const uint32_t* lens, const uint64_t* ids, const FrameMeta& meta,
                bool notify = true, bool tail_clean = false) {
    if (k == 0) {
      abort_n(b, notify);
      return;
    }
    if (k > b.count) k = b.count;
    const uint64_t stamp = meta.timestamp_ns == 0              ? monotonic_ns()
                           : meta.timestamp_ns == kNoTimestamp ? 0
                                                               : meta.timestamp_ns;
    const uint32_t fl = b.frame_len;
    uint32_t last_len = fl;
    uint64_t end = b.end;
    if (!multi_) {
      // Single producer: nobody claimed after us; the last frame shrinks and the
      // rest of the claim is given back, zeroed again (P2).
      const uint32_t used = uint32_t(align_frame(uint64_t(kFrameHeaderSize) + lens[k - 1]));
      std::byte* from = tail_clean ? b.base + size_t(k) * fl : b.payload(k - 1) + lens[k - 1];
      std::byte* to = b.base + size_t(b.count) * fl;
      if (from < to) std::memset(from, 0, size_t(to - from));
      last_len = used;
      end = b.pos + uint64_t(k - 1) * fl + used;
    }
    for (uint32_t i = 1; i < k; ++i) {
      FrameHeader* h = b.hdr(i);
      write_header(h, lens[i], ids ? ids[i] : 0, meta, stamp, b.seq + i);
      // SYNC(frame.commit) release; readers get here only past frame 0, whose
      // release store below orders this one for them.
      aref(h->commit).store(make_commit(i + 1 == k ? last_len : fl, kFrameData), std::memory_order_release);
    }
    if (multi_ && k < b.count)
      aref(b.hdr(k)->commit)
          .store(make_commit((b.count - k) * fl, kFramePad),
                 std::memory_order_release);  // SYNC(frame.commit)
    write_header(b.hdr(0), lens[0], ids ? ids[0] : 0, meta, stamp, b.seq);
    publish_commit(b.hdr(0), make_commit(k == 1 ? last_len : fl, kFrameData), notify);  // LAST
    // P8 step 5: the claim is closed.
    if (prod_) close_claim(b.tag);
    if (!multi_) {
      tail_ = end;
      seq_ = b.seq + k;
      // As commit(): tail_seq before tail_pos; recover_sp accepts frames at tail_pos
      // whose sequences are below tail_seq (a death between these two stores).
      aref(r_.data->tail_seq).store(seq_, std::memory_order_relaxed);
      aref(r_.data->tail_pos).store(tail_, std::memory_order_release);
    }
    b = ClaimBatch{};
  }

  // P1m abort: the whole batch becomes one padding frame (what a reclaimer would
  // write for it), whatever the caller wrote inside.
  void abort_n(ClaimBatch& b, bool notify = true) {
    publish_commit(b.hdr(0), make_commit(b.count * b.frame_len, kFramePad), notify);
    if (prod_) close_claim(b.tag);
    if (!multi_) {
      tail_ = b.end;
      aref(r_.data->tail_pos).store(tail_, std::memory_order_release);
    }
    b = ClaimBatch{};
  }

  // Wakes subscribers sleeping on data (P6). Called by commit() when notify=true.
  void notify_subscribers() { notify_data_waiters(r_, waiter_words_); }

  // P7 sleeper side (3.0). Announces this producer in space_waiter_bits, then finds
  // what binds its limit and reads that wake word BEFORE a re-scan: a cursor's
  // page word (its owner bumps it after a release that sees our bit, the daemon
  // when it frees the slot) or DataHeader::space_futex (a claim closing bumps it).
  // Returns false when a claim of payload_max would succeed now (no sleep);
  // otherwise `word`/`v` to futex_wait on. Call end_space_wait() afterwards.
  bool prepare_space_wait(uint32_t payload_max, uint32_t*& word, uint32_t& v, uint32_t frames = 1) {
    aref(r_.data->space_waiter_bits).fetch_or(space_bit_, std::memory_order_seq_cst);
    // P7 heavy side: subscribers release with a plain store + compiler barrier.
    space_fenced_ = asym_fence_heavy();
    for (int i = 0; i < 4; ++i) {
      if (space_available(payload_max, frames)) return false;
      const SpaceBinding b1 = binding_;
      v = aref(*b1.word).load(std::memory_order_seq_cst);
      if (space_available(payload_max, frames)) return false;  // the re-scan
      if (binding_.word == b1.word) {
        word = b1.word;
        space_exact_ = b1.exact;
        return true;
      }
    }
    word = &r_.data->space_futex;  // the binding keeps moving: a short slice
    v = aref(*word).load(std::memory_order_seq_cst);
    space_exact_ = false;
    return true;
  }
  // False when the last prepare_space_wait() could not rely on a wake-up (the
  // membarrier was refused, or the binding cursor's page is not mapped yet): sleep
  // in short slices then (a missed wake-up costs one slice).
  bool space_wait_fenced() const { return space_fenced_ && space_exact_; }
  void end_space_wait() {
    aref(r_.data->space_waiter_bits).fetch_and(~space_bit_, std::memory_order_seq_cst);
  }
  // True if a claim of payload_max (`frames` frames of it: try_claim_n) would
  // succeed now (re-reads the cursors).
  bool space_available(uint32_t payload_max, uint32_t frames = 1) {
    const uint64_t frame_len = align_frame(uint64_t(kFrameHeaderSize) + payload_max) * frames;
    uint64_t tail = multi_ ? aref(r_.data->tail_pos).load(std::memory_order_seq_cst) : tail_;
    uint64_t need = tail + frame_len * 2 + 8;  // worst case with a wrap pad
    return need <= refresh_limit();
  }

  // Daemon mode: the page table producers read cursor pages through (owned by the
  // caller, one per producer). Null: every slot's page is embedded (direct mode).
  void set_page_table(PageTable* t) { pages_ = t; }
  PageTable* page_table() const { return pages_; }
  // A tethered slot's page was not mapped at the last limit refresh (its join
  // position bounded the limit): the caller fetches it on its slow path.
  bool pages_missing() const { return pages_ && pages_->any_missing(); }

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
      aref(ph->commit)
          .store(make_commit(uint32_t(pad), kFramePad), std::memory_order_release);  // SYNC(frame.commit)
      tail_ = fpos;  // if the claim is aborted, the pad stays valid
      // Readers may pass the pad before we commit: publish the tail past it so a
      // producer taking over after our death does not write behind them.
      aref(r_.data->tail_pos).store(tail_, std::memory_order_release);
    }
    fill_claim(c, fpos, end, seq_, frame_len);
    return RingStatus::ok;
  }

  // P8 (2.0) steps 1-4. Lock-free: a tail left pending by a slow or dead owner is
  // completed by whoever finds it. Bounded: after kClaimTries the caller gets
  // back_pressured (its policy decides: fail at once, block with its timeout).
  // `nseq` sequences are taken (a multi-frame claim, try_claim_n): the pending
  // tail and the claim word carry the last one, seq + nseq - 1, so that every
  // completion of the claim (ours, a helper's, a reclaimer's: complete_claim moves
  // tail_seq to the claim word's sequence + 1) moves tail_seq past all of them.
  RingStatus claim_mp(uint64_t frame_len, Claim& c, uint64_t nseq = 1) {
    if (!prod_) return RingStatus::back_pressured;  // unrecorded: never claims (attach refused)
    for (uint32_t tries = 0; tries < kClaimTries; ++tries) {
      uint64_t pos = aref(r_.data->tail_pos).load(std::memory_order_acquire);
      uint64_t tw = aref(r_.data->tail_seq).load(std::memory_order_acquire);
      if (tail_pending_of(tw)) {
        help_pending(r_, pos, tw);
        cpu_relax();
        continue;
      }
      const uint64_t seq = tail_seq_of(tw);
      const uint64_t tag = seq + nseq - 1;  // the claim's last sequence
      const uint64_t pad = wrap_pad(pos, frame_len, cap_);
      const uint64_t end = pos + pad + frame_len;
      // SYNC(zero_mark) acquire: the zeroing below zero_mark is visible; pairs with extend_zero_mp.
      uint64_t z = aref(r_.data->zero_mark).load(std::memory_order_acquire);
      if (end + 8 > z) {
        RingStatus s = extend_zero_mp(end + 8);
        if (s != RingStatus::ok) return s;
        continue;
      }
      // Step 1: the intent. SYNC(prod.claim) seqlock: our claim word is IDLE (the
      // "writing" state) while the fields change; the release fence orders that
      // IDLE before them, the seq_cst store of INTENT publishes them.
      std::atomic_thread_fence(std::memory_order_release);
      aref(prod_->claim_pos).store(pos, std::memory_order_relaxed);
      aref(prod_->frame_len).store(uint32_t(frame_len), std::memory_order_relaxed);
      aref(prod_->claim).store(claim_word(tag, kClaimIntent), std::memory_order_seq_cst);
      // Step 2: the pending CAS takes [pos, end) and sequences seq..tag for slot_.
      uint64_t e_pos = pos, e_tw = tail_word(seq, 0);
      if (!cas_tail(r_, e_pos, e_tw, pos, tail_word(tag, slot_ + 1))) {
        close_claim(tag);  // our intent at a stale tail may have bounded another's limit
        continue;
      }
      // Step 3: WON, then the tail moves on (a helper may have done either).
      complete_claim(r_, slot_, pos, tag, uint32_t(frame_len));
      if (pad) {
        aref(r_.frame_at(pos)->commit)
            .store(make_commit(uint32_t(pad), kFramePad), std::memory_order_release);  // SYNC(frame.commit)
      }
      fill_claim(c, pos + pad, end, seq, frame_len);
      return RingStatus::ok;
    }
    return RingStatus::back_pressured;
  }

  // P8 step 5 with the P7 waker side (2.0). An open claim (INTENT or WON) bounds
  // every producer's space limit (min_open_claim), so closing one can be exactly
  // what a producer asleep on space waits for: no cursor moves, no reader releases
  // (none may be tethered), and without this check the sleeper slept until its
  // block timeout (found by tests/daemon/torture_mp_test.cpp). The same Dekker
  // pair as a cursor release (RingReader::release_to): our IDLE store, then the
  // waiter-bit load; the sleeper's bit, its membarrier, then its claim scan.
  void close_claim(uint64_t seq) {
    if (light_) {
      aref(prod_->claim).store(claim_word(seq, kClaimIdle), std::memory_order_release);
      asym_fence_light();
    } else {
      aref(prod_->claim).exchange(claim_word(seq, kClaimIdle), std::memory_order_seq_cst);
    }
    notify_space_waiters_claim(r_);
  }

  static void write_header(FrameHeader* h, uint32_t payload_len, uint64_t message_id, const FrameMeta& meta,
                           uint64_t stamp, uint64_t seq) {
    h->payload_len = payload_len;
    h->producer_id = meta.producer_id;
    h->timestamp_ns = stamp;
    h->message_id = message_id;
    h->schema_id = meta.schema_id;
    aref(h->sequence).store(seq, std::memory_order_relaxed);
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
  // With several producers, open claims bound it too (2.0, defect 1 of 1.x): a claim
  // with no tethered reader behind it is never zeroed for the next lap.
  uint64_t refresh_limit() {
    // P5: a seq_cst RMW on the tail orders our tail before the slot scan, so a
    // joiner that we miss reads a tail at least this new.
    uint64_t tail = aref(r_.data->tail_pos).fetch_add(0, std::memory_order_seq_cst);
    if (!multi_ && tail < tail_) tail = tail_;
    binding_ = SpaceBinding{&r_.data->space_futex, true};
    uint64_t m = min_live_cursor(r_, tail, pages_, &binding_);
    if (multi_) {
      const uint64_t c = min_open_claim(r_, m);
      if (c < m) binding_ = SpaceBinding{&r_.data->space_futex, true};
      m = c;
    }
    limit_ = m + cap_;
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

  // P2 (multi producer): one producer at a time extends zero_mark, under zero_lock
  // (1 + the holder's producer slot). A holder that died is taken over once its
  // death is proven (zeroing is idempotent); until then the caller retries, bounded
  // by kClaimTries.
  RingStatus extend_zero_mp(uint64_t need) {
    uint32_t expect = 0;
    if (!aref(r_.data->zero_lock)
             .compare_exchange_strong(expect, slot_ + 1, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
      if (++lock_waits_ % kLockCheckEvery != 0) {
        cpu_relax();  // another producer is zeroing; the caller retries
        return RingStatus::ok;
      }
      if (expect == 0 || expect > r_.producer_count || !self_service_) return RingStatus::ok;
      if (process_alive(aref(r_.producers[expect - 1].pid).load(std::memory_order_acquire)))
        return RingStatus::ok;
      if (!aref(r_.data->zero_lock)
               .compare_exchange_strong(expect, slot_ + 1, std::memory_order_acquire,
                                        std::memory_order_relaxed))
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

  static constexpr uint32_t kClaimTries = 1u << 16;
  static constexpr uint32_t kLockCheckEvery = 4096;

  RingRefs r_{};
  PageTable* pages_ = nullptr;  // daemon mode: cursor pages by slot (P7, limit)
  SpaceBinding binding_{};      // what bound the last refresh_limit (P7)
  bool space_exact_ = true;
  ProducerSlot* prod_ = nullptr;  // MP: this producer's table entry (P8), or null
  uint32_t slot_ = 0;             // MP: its index
  uint64_t space_bit_ = 0;        // P7: our bit in space_waiter_bits
  uint32_t waiter_words_ = 1;     // P6: words of data_waiter_bits in use
  uint32_t lock_waits_ = 0;
  bool multi_ = false;
  bool self_service_ = true;  // direct mode: owners are pids, a dead lock holder is taken over here
  uint32_t pid_ = 0;          // the owner value: our pid (direct mode) or the daemon's token
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

  // P5, self-service (direct mode, the daemon's own cursors): take a free cursor
  // slot and start at the current tail (or at `start`, a frame boundary remembered
  // from an earlier session: P11). The slot's embedded page holds the cursor.
  // Returns false when every slot is taken.
  bool join(const RingRefs& r, uint32_t pid, bool tethered, uint64_t name_hash = 0,
            uint64_t start = kAtTail) {
    uint64_t pos = 0, below = 0;
    const int32_t i = join_slot(r, pid, tethered, name_hash, start, nullptr, 0, pos, below);
    if (i < 0) return false;
    r_ = r;
    tethered_ = tethered;
    check_below_ = below;
    slot_ = &r.slots[i];
    slot_index_ = uint32_t(i);
    page_ = &slot_->page;
    read_pos_ = released_ = published_ = pos;
    return true;
  }

  // Daemon mode: a slot the daemon granted (it ran P5 in the control segment) with
  // `page`, this grant's own cursor page, mapped read-write. The reader starts at
  // `pos`; frames below `check_below` get the P9 check.
  void adopt(const RingRefs& r, uint32_t slot_index, CursorPage* page, uint64_t pos, bool tethered,
             uint64_t check_below) {
    r_ = r;
    slot_ = &r.slots[slot_index];
    slot_index_ = slot_index;
    page_ = page;
    tethered_ = tethered;
    check_below_ = check_below;
    read_pos_ = released_ = published_ = pos;
  }

  // Daemon mode: the grant this reader's slot must still be (its generation). A
  // restarted daemon that cannot take back the grant's page frees the slot, and
  // producers then no longer count this cursor. Checked on the slow path only
  // (grant_gone: an empty poll, a sleep slice); the fast path is unchanged.
  void watch_grant(uint32_t generation) {
    grant_gen_ = generation;
    watch_grant_ = true;
    verified_ = read_pos_;
  }
  // Slow path: true (once) when the grant is gone: the slot is no longer ACTIVE at
  // the grant's generation (the control segment is the daemon's alone). The reader
  // is then untethered (every frame gets the P9 check), and `lapped` says whether
  // frames read since the last check that found the grant may have been overwritten.
  bool grant_gone(bool& lapped) {
    lapped = false;
    if (!watch_grant_ || !slot_) return false;
    if (aref(slot_->state).load(std::memory_order_seq_cst) == kSlotActive &&
        aref(slot_->generation).load(std::memory_order_seq_cst) == grant_gen_) {
      verified_ = read_pos_;  // held until now: what was read so far was ours
      return false;
    }
    watch_grant_ = false;
    tethered_ = false;
    check_below_ = 0;
    lapped = lapped_at(verified_);
    return true;
  }

  enum class Resume : uint8_t { resumed, none, in_use };
  // P11, self-service: take over the parked slot of durable name `name_hash`
  // (ACTIVE, pid 0): the CAS of pid 0 -> ours is the ownership transfer, so that an
  // expiry (which CASes pid 0 -> its own) and a second resumer cannot both win. The
  // slot never stopped holding the producer (when tethered), so the read position
  // is exactly the last release. `owner` gets the pid of a live owner (in_use).
  Resume resume(const RingRefs& r, uint32_t pid, bool tethered, uint64_t name_hash, uint32_t& owner) {
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
      page_ = &s.page;
      tethered_ = tethered;
      check_below_ = 0;
      aref(s.page.heartbeat_ns).store(monotonic_ns(), std::memory_order_relaxed);
      const uint32_t fl = aref(s.flags).load(std::memory_order_relaxed);
      const bool was_tethered = fl & kSlotTethered;
      aref(s.flags).store((tethered ? kSlotTethered : 0u) | kSlotEmbedded, std::memory_order_seq_cst);
      // SYNC(cursor) acquire: the position the previous owner released (P4).
      read_pos_ = released_ = published_ = aref(s.page.position).load(std::memory_order_acquire);
      if (tethered && !was_tethered) {
        // A parked untethered slot held nobody back: its position may be lapped
        // already (defect 4 of 1.x). Check every frame from it like an untethered
        // reader (P9) until the tail seen now (the seq_cst flags store above is
        // the P5 join edge for producers from here on).
        check_below_ = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
      }
      return Resume::resumed;
    }
    return Resume::none;
  }

  // P11, self-service: leaves the slot ACTIVE under its durable name with pid 0
  // ("parked"): it keeps its position (and, tethered, keeps holding the producer)
  // until its name resumes it or it expires. parked_ns is the parking time.
  void park() {
    if (!slot_) return;
    flush_release();
    aref(slot_->parked_ns).store(monotonic_ns(), std::memory_order_relaxed);
    aref(slot_->pid).store(0, std::memory_order_release);
    slot_ = nullptr;
    page_ = nullptr;
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

  // Self-service: gives the slot back; a producer blocked on this cursor may
  // proceed (its page word is bumped after the FREE store, P7).
  void leave() {
    if (!slot_) return;
    aref(slot_->state).store(kSlotFree, std::memory_order_seq_cst);
    wake_space_page(page_);
    slot_ = nullptr;
    page_ = nullptr;
  }
  // Daemon mode: forgets the grant locally (the daemon frees or parks the slot).
  void detach() {
    flush_release();
    slot_ = nullptr;
    page_ = nullptr;
  }

  bool joined() const { return slot_ != nullptr; }
  CursorPage* page() const { return page_; }
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
    publish_release(pos);
  }
  void release_all() { release_to(read_pos_); }

  // P4, batched: everything below `pos` is released, but the cursor store (the line
  // the producers scan for space) is made only once `release_batch` bytes have
  // accumulated since the last one, or when a producer sleeps on space (a waiter
  // bit: read relaxed, a hint only; flush_release() runs the full P7 handshake), so
  // that a producer at the space limit sees the consumer move in chunks instead of
  // pulling the cursor line across cores once per message. The caller must call
  // flush_release() before it goes idle (an empty poll, a wait, a close): a deferred
  // release then delays producers by at most release_batch bytes of ring, never
  // forever. release_batch 0: every release is stored at once (release_to).
  void release_deferred(uint64_t pos) {
    released_ = pos;
    if (pos - published_ < release_batch_ &&
        aref(r_.data->space_waiter_bits).load(std::memory_order_relaxed) == 0)
      return;
    publish_release(pos);
  }
  void flush_release() {
    if (page_ && published_ != released_) publish_release(released_);
  }
  void set_release_batch(uint64_t bytes) { release_batch_ = bytes; }
  uint64_t release_batch() const { return release_batch_; }

 private:
  void publish_release(uint64_t pos) {
    published_ = pos;
    // SYNC(cursor) release: our reads of the frames below pos happen-before the
    // producer's reuse; seq_cst (exchange) so the space-waiter check that follows
    // cannot move above it (P7).
    if (light_) {
      // P7 light side: a compiler barrier; the blocked producer's membarrier
      // orders the CPU (begin_space_wait).
      aref(page_->position).store(pos, std::memory_order_release);
      asym_fence_light();
    } else {
      aref(page_->position).exchange(pos, std::memory_order_seq_cst);
    }
    wake_producers();
  }

 public:
  // Rewinds the read position to the last release (e.g. a view handed back unread).
  void rewind() { read_pos_ = released_; }
  // Moves the read position (an untethered reader handing over from a log to the
  // ring); nothing is released.
  void seek(uint64_t pos) { read_pos_ = pos; }

  // P6: sleep until the commit word at the read position changes or timeout.
  // Returns true if data may be available.
  bool wait(int64_t timeout_ns, Interrupt* intr = nullptr) {
    if (has_data()) return true;
    return sleep_for_data(
        r_, slot_index_, timeout_ns, [this] { return has_data_sc(); }, intr);
  }

  // True when poll() has something to say: a frame, or (checked readers) a lap.
  bool has_data() const {
    const FrameHeader* h = r_.frame_at(read_pos_);
    return aref(const_cast<FrameHeader*>(h)->commit).load(std::memory_order_acquire) != 0 ||
           (checked(read_pos_) && lapped_at(read_pos_));
  }

  void heartbeat(uint64_t now_ns) { aref(page_->heartbeat_ns).store(now_ns, std::memory_order_relaxed); }

 private:
  bool has_data_sc() const {
    const FrameHeader* h = r_.frame_at(read_pos_);
    return aref(const_cast<FrameHeader*>(h)->commit).load(std::memory_order_seq_cst) != 0 ||
           (checked(read_pos_) && lapped_at(read_pos_));
  }
  void wake_producers() { notify_space_waiters(r_, page_); }

  RingRefs r_{};
  CursorSlot* slot_ = nullptr;
  CursorPage* page_ = nullptr;  // this reader's cursor page (the only thing it writes)
  uint32_t slot_index_ = 0;
  uint64_t read_pos_ = 0;
  uint64_t released_ = 0;
  uint64_t published_ = 0;               // last position stored in the page (released_ may be ahead)
  uint64_t release_batch_ = 0;           // release_deferred: bytes between cursor stores
  bool light_ = asym_fence_available();  // P7 light side allowed

  bool tethered_ = true;
  uint64_t check_below_ = 0;  // P11: frames below this position get the P9 check
  bool watch_grant_ = false;  // daemon mode: grant_gone checks the slot's generation
  uint32_t grant_gen_ = 0;
  uint64_t verified_ = 0;  // read position when the grant was last seen held
};

// The creator (the daemon) restores the identity line of a control segment that a
// participant overwrote; the cursor slots and wait words are left as they are.
inline void restore_control_identity(ControlHeader* c, uint64_t capacity, uint32_t slots) {
  c->magic = kCtlMagic;
  c->slot_count = slots;
  c->capacity = capacity;
  aref(c->layout_version).store(kLayoutVersion, std::memory_order_release);  // SYNC(ctl.ready)
}

// The data segment's identity lines (0 and 1), rewritten from the daemon's own record
// of the topic: publishers map the data segment writable and may have overwritten
// them. Used by a restarted daemon on a segment it knows is the topic's (the inode
// its registry recorded), so a flipped magic no longer makes it re-create the topic
// under live clients. The ring's contents stay as they are (untrusted as always).
inline void restore_data_identity(DataHeader* d, uint64_t capacity, uint32_t flags, uint32_t policy,
                                  uint32_t partition, uint64_t schema_id, uint64_t max_payload) {
  d->magic = kDataMagic;
  d->flags = flags;
  d->capacity = capacity;
  d->data_offset = kRingOffset;
  d->producer_offset = kProducerTableOffset;
  d->producer_slots = kProducerSlots;
  d->schema_id = schema_id;
  d->policy = policy;
  d->partition = partition;
  d->max_payload = max_payload;
  aref(d->layout_version).store(kLayoutVersion, std::memory_order_release);  // SYNC(data.ready)
}

// Initialises freshly created (zero-filled) segments. The layout version is
// written last with release: "version present" means "ready" (SYNC(data.ready),
// SYNC(ctl.ready)).
inline void init_segments(DataHeader* d, ControlHeader* c, uint64_t capacity, uint32_t slots, uint32_t flags,
                          uint32_t policy, uint32_t partition, uint64_t schema_id, uint64_t max_payload,
                          uint64_t created_ns) {
  d->magic = kDataMagic;
  d->flags = flags;
  d->capacity = capacity;
  d->data_offset = kRingOffset;
  d->producer_offset = kProducerTableOffset;
  d->producer_slots = kProducerSlots;
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
  aref(c->layout_version).store(kLayoutVersion, std::memory_order_release);  // SYNC(ctl.ready)
  aref(d->layout_version).store(kLayoutVersion, std::memory_order_release);  // SYNC(data.ready)
}

}  // namespace shmbus::shm
