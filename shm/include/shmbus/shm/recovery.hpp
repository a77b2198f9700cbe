// Recovery procedures: what is done to a ring when a participant has died. The
// daemon's reaper, a blocked publisher in direct mode and the archiver only decide
// WHEN to call them (once they have proven a death); WHAT is done lives here, once.
//
// The caller proves death from its own record: the daemon from the pid it got over
// the socket (SO_PEERCRED) and its pidfd, a direct-mode peer with process_alive().
// A pid read from shared memory is only ever a hint to check that way.
#pragma once

#include "shmbus/shm/ring.hpp"

namespace shmbus::shm {

// A table entry or cursor slot being recovered holds kReclaimBit | the reclaimer's
// pid in its pid field: recovery is exclusive (two reclaimers of one dead owner, or a
// reclaimer and a new owner reusing the freed entry, never interleave), and a
// reclaimer that dies midway is itself proven dead and taken over (every step is
// idempotent). Real pids are below 2^22.
inline constexpr uint32_t kReclaimBit = 0x8000'0000u;
inline uint32_t owner_pid(uint32_t v) { return v & ~kReclaimBit; }
inline uint32_t reclaimer_mark() { return kReclaimBit | uint32_t(getpid()); }

enum class ClaimRecovery : uint8_t {
  none,    // the dead producer had no claim that won (nothing to do)
  padded,  // its won, uncommitted claim is now padding (readers move on)
  done,    // its won claim was already committed or padded
};

// P8 reclaimer side (2.0) for producer slot k whose owner `dead_pid` is dead:
//  a. a tail left pending by k is completed (the claim becomes WON, the tail moves on);
//  b. a WON claim is padded: CAS 0 -> PAD at the wrap pad and at the frame, exactly
//     the recorded length (claims never shrink), so a committed frame is never hit;
//     an INTENT claim never won (the tail is not pending k, and WON would have been
//     stored before the tail left pending k): nothing to pad;
//  c. the slot's zero lock, space-waiter bit and table entry are freed.
// The bytes of a WON claim cannot have been re-zeroed for the next lap: open claims
// bound every producer's limit (min_open_claim).
// `dead_pid`: a pid proven dead, the entry's owner or a reclaimer that died while
// recovering it; the CAS of the pid field to our own mark is the exclusive right to
// recover the entry.
inline ClaimRecovery recover_dead_producer(const RingRefs& r, uint32_t k, uint32_t dead_pid) {
  if (k >= r.producer_count || dead_pid == 0) return ClaimRecovery::none;
  ProducerSlot& p = r.producers[k];
  uint32_t expect = aref(p.pid).load(std::memory_order_acquire);
  if (expect == 0 || owner_pid(expect) != dead_pid ||
      !aref(p.pid).compare_exchange_strong(expect, reclaimer_mark(), std::memory_order_acq_rel))
    return ClaimRecovery::none;
  // a. A pending tail of ours: complete it (as any producer would).
  for (int i = 0; i < 4; ++i) {
    uint64_t pos = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
    uint64_t tw = aref(r.data->tail_seq).load(std::memory_order_seq_cst);
    if (tail_pending_of(tw) != k + 1) break;
    help_pending(r, pos, tw);
  }
  // The owner is dead: its record is stable, read it once.
  uint64_t w, pos;
  uint32_t len;
  ClaimRecovery out = ClaimRecovery::none;
  if (read_claim(p, w, pos, len) && claim_state(w) == kClaimWon && len >= kFrameHeaderSize &&
      !(len & (kFrameAlign - 1)) && len <= r.capacity / 2) {
    const uint64_t pad = wrap_pad(pos, len, r.capacity);
    out = ClaimRecovery::done;
    uint64_t zero = 0;
    if (pad)
      aref(r.frame_at(pos)->commit)
          .compare_exchange_strong(zero, make_commit(uint32_t(pad), kFramePad),
                                   std::memory_order_release);  // SYNC(frame.commit)
    zero = 0;
    if (aref(r.frame_at(pos + pad)->commit)
            .compare_exchange_strong(zero, make_commit(len, kFramePad),
                                     std::memory_order_seq_cst)) {  // SYNC(frame.commit)
      aref(p.fills).fetch_add(1, std::memory_order_relaxed);
      out = ClaimRecovery::padded;
    }
  }
  // c. Free what the slot held. The claim goes IDLE first (min_open_claim stops
  // counting it only once its frame is committed or padded).
  aref(p.claim).store(claim_word(claim_seq(w), kClaimIdle), std::memory_order_seq_cst);
  uint32_t lock = k + 1;
  aref(r.data->zero_lock).compare_exchange_strong(lock, 0, std::memory_order_release);
  aref(r.data->space_waiter_bits).fetch_and(~(uint64_t(1) << k), std::memory_order_seq_cst);
  aref(p.pid).store(0, std::memory_order_release);  // free for a new producer, only now
  if (out == ClaimRecovery::padded) wake_all_data(r);
  // An open claim (INTENT or WON) bounded every producer's space limit
  // (min_open_claim); now IDLE, it no longer does. Producers asleep on space behind
  // it must be woken here: an INTENT claim pads nothing, and after a pad no reader
  // need release anything, so nobody else would wake them before their block
  // timeout (found by tests/daemon/torture_mp_test.cpp through shmbusd). The seq_cst
  // IDLE store above precedes this bump: a sleeper that still saw the claim open
  // read space_futex before it and does not sleep on the old value (P7).
  if (claim_state(w) != kClaimIdle) wake_all_space(r);
  return out;
}

// A dead single producer: its partition is free for the next one (which runs
// RingWriter::recover_sp), and its space-waiter bit is cleared.
inline bool release_dead_single_producer(const RingRefs& r, uint32_t dead_pid) {
  uint32_t owner = dead_pid;
  if (dead_pid == 0 ||
      !aref(r.data->producer_pid).compare_exchange_strong(owner, 0, std::memory_order_acq_rel))
    return false;
  aref(r.data->space_waiter_bits).fetch_and(~(uint64_t(1) << kSpaceBitSingle), std::memory_order_seq_cst);
  return true;
}

enum class CursorRecovery : uint8_t { none, freed, parked };

// Cursor slot i whose owner `dead_pid` is dead: a named (durable) slot is parked
// (P11: pid 0, keeps its position), any other slot is freed. Its data-waiter bit is
// cleared either way (a dead sleeper must not cost every commit a wake-up), and
// producers blocked on it are woken. `park_names` false frees named slots too;
// `keep_name` is a name never parked (the archiver's own). `page`: the slot's
// cursor page when it is not embedded (daemon mode: the daemon's own mapping of the
// grant's page), whose wake word producers blocked on it sleep on (P7).
// Daemon mode: `dead_pid` is the pid the daemon itself wrote at the grant (its
// SO_PEERCRED pid), proven dead by the daemon's pidfd; never a pid a client wrote.
// A slot being parked keeps its released position in join_position (daemon-written),
// so a parked slot needs no page: a restarted daemon, which cannot map the pages of
// the previous one (sealed memfds, no names), still resumes it where it stood.
// The page's value is hostile: clamped to [join_position, tail].
inline void park_position(const RingRefs& r, uint32_t i, const CursorPage* page) {
  CursorSlot& s = r.slots[i];
  if (!page || page == &s.page) return;
  const uint64_t jp = aref(s.join_position).load(std::memory_order_acquire);
  const uint64_t tail = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
  uint64_t pos = aref(const_cast<CursorPage*>(page)->position).load(std::memory_order_acquire);
  if (pos > tail) pos = tail;
  if (pos > jp) aref(s.join_position).store(pos, std::memory_order_release);
}

inline CursorRecovery recover_dead_cursor(const RingRefs& r, uint32_t i, uint32_t dead_pid,
                                          bool park_names = true, uint64_t keep_name = 0,
                                          CursorPage* page = nullptr) {
  if (i >= r.slot_count || dead_pid == 0) return CursorRecovery::none;
  CursorSlot& s = r.slots[i];
  uint32_t st = aref(s.state).load(std::memory_order_acquire);
  if (st != kSlotActive && st != kSlotJoining) return CursorRecovery::none;
  // Exclusive: a second reclaimer of the same dead owner fails here, so it cannot
  // free the slot again after a new subscriber has joined it.
  uint32_t expect = aref(s.pid).load(std::memory_order_acquire);
  if (expect == 0 || owner_pid(expect) != dead_pid ||
      !aref(s.pid).compare_exchange_strong(expect, reclaimer_mark(), std::memory_order_acq_rel))
    return CursorRecovery::none;
  aref(r.wake->data_waiter_bits[i / 64]).fetch_and(~(uint64_t(1) << (i % 64)), std::memory_order_seq_cst);
  if (aref(s.flags).load(std::memory_order_relaxed) & kSlotEmbedded) page = &s.page;
  const uint64_t nh = aref(s.name_hash).load(std::memory_order_relaxed);
  if (park_names && st == kSlotActive && nh != 0 && nh != keep_name) {
    park_position(r, i, page);
    aref(s.parked_ns).store(monotonic_ns(), std::memory_order_relaxed);
    // pid 0 on an ACTIVE named slot is "parked" (P11); a resumer CASes 0 -> its pid.
    aref(s.pid).store(0, std::memory_order_release);
    return CursorRecovery::parked;
  }
  // The owner is dead and the slot is ours to free; a joiner takes it only once FREE
  // (and writes its own pid over our mark).
  // P7: the FREE store, then the page's wake word (a producer that read the word
  // before its re-scan saw the slot ACTIVE, and is woken).
  aref(s.state).store(kSlotFree, std::memory_order_seq_cst);
  if (page) wake_space_page(page);
  return CursorRecovery::freed;
}

// ---------------------------------------------------------------------------
// Daemon-mode grants (3.0): the daemon is the only writer of the control segment
// and runs these on its own record (a leave request, an expiry, a resume).

// A position read from a page (hostile) clamped to what slot i may hold:
// [join_position, tail].
inline uint64_t clamp_page_position(const RingRefs& r, uint32_t i, uint64_t pos) {
  const uint64_t jp = aref(r.slots[i].join_position).load(std::memory_order_acquire);
  const uint64_t tail = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
  if (pos > tail) pos = tail;
  if (pos < jp) pos = jp;
  return pos;
}

// Frees slot i (its grant ended): the data-waiter bit is cleared, the slot FREE,
// then producers asleep on its page are woken (P7). `page`: the grant's page (the
// daemon's mapping), null when embedded.
inline void free_cursor_slot(const RingRefs& r, uint32_t i, CursorPage* page) {
  CursorSlot& s = r.slots[i];
  aref(r.wake->data_waiter_bits[i / 64]).fetch_and(~(uint64_t(1) << (i % 64)), std::memory_order_seq_cst);
  if (aref(s.flags).load(std::memory_order_relaxed) & kSlotEmbedded) page = &s.page;
  aref(s.state).store(kSlotFree, std::memory_order_seq_cst);
  if (page) wake_space_page(page);
}

// P11 through the daemon: the parked slot i (ACTIVE, pid 0) is granted again to
// `pid` on a fresh page `fresh` (named by page_id) starting at `pos` (the parked
// position, already clamped). The slot stays ACTIVE throughout, so a tethered
// parked slot never stops holding the producer. Returns the P9 check bound for the
// reader (0: none): a parked untethered slot resumed tethered may be lapped.
inline uint64_t regrant_parked(const RingRefs& r, uint32_t i, uint32_t pid, bool tethered, CursorPage* fresh,
                               uint64_t page_id, uint64_t pos) {
  CursorSlot& s = r.slots[i];
  const bool was_tethered = aref(s.flags).load(std::memory_order_relaxed) & kSlotTethered;
  aref(fresh->position).store(pos, std::memory_order_release);
  aref(fresh->heartbeat_ns).store(monotonic_ns(), std::memory_order_relaxed);
  // The join position first (producers still reading the old page clamp it up to
  // pos), then the page, then the generation: a producer that sees the new
  // generation uses the new join position until it maps the new page.
  aref(s.join_position).store(pos, std::memory_order_release);
  aref(s.page_id).store(page_id, std::memory_order_relaxed);
  aref(s.parked_ns).store(0, std::memory_order_relaxed);
  aref(s.generation).fetch_add(1, std::memory_order_seq_cst);
  aref(s.flags).store(tethered ? kSlotTethered : 0u, std::memory_order_seq_cst);
  aref(s.pid).store(pid, std::memory_order_release);
  if (tethered && !was_tethered) return aref(r.data->tail_pos).load(std::memory_order_seq_cst);
  return 0;
}

}  // namespace shmbus::shm
