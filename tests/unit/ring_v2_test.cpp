// Regression tests for the defects of layout 1.x (issue "ring protocol v2"), each
// replayed step by step on a ring in a heap buffer: no fork of a producer, no
// daemon, claims left half-done on purpose. A dead producer or subscriber is a
// real pid that has exited (a child that was reaped), so recovery proves its death
// with the same pidfd test it uses in production.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "shmbus/shm/recovery.hpp"

using namespace shmbus::shm;

namespace {

struct HeapRing {
  uint64_t cap;
  uint32_t slots;
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte[], Free> data, ctl;
  static std::byte* zalloc(size_t n) {
    auto* p = static_cast<std::byte*>(std::aligned_alloc(64, (n + 63) / 64 * 64));
    std::memset(p, 0, n);
    return p;
  }
  size_t dbytes, cbytes;
  RingRefs r;
  HeapRing(uint64_t capacity, bool multi, uint32_t nslots = 8)
      : cap(capacity), slots(nslots), dbytes(data_segment_size(capacity)),
        cbytes(control_segment_size(nslots)) {
    // 64-byte alignment (the 16-byte tail CAS needs 16).
    data.reset(zalloc(dbytes));
    ctl.reset(zalloc(cbytes));
    init_segments(reinterpret_cast<DataHeader*>(data.get()), reinterpret_cast<ControlHeader*>(ctl.get()),
                  capacity, nslots, multi ? kFlagMultiProducer : 0, kPolicyFail, 0, 0, capacity / 4, 1);
    REQUIRE(bind_ring(data.get(), dbytes, ctl.get(), cbytes, r) == nullptr);
  }
  uint64_t tail() const { return aref(r.data->tail_pos).load(); }
  uint64_t commit_at(uint64_t pos) const { return aref(r.frame_at(pos)->commit).load(); }
};

// A pid that existed and is now gone for good (reaped).
uint32_t dead_pid() {
  pid_t c = fork();
  if (c == 0) _exit(0);
  int st;
  waitpid(c, &st, 0);
  return uint32_t(c);
}

// Registers producer-table slot k for `pid` without a RingWriter (a producer that
// will die at a chosen step).
ProducerSlot& fake_producer(const RingRefs& r, uint32_t k, uint32_t pid) {
  ProducerSlot& p = r.producers[k];
  aref(p.pid).store(pid);
  aref(p.claim).store(claim_word(0, kClaimIdle));
  return p;
}

// Step 1 of a multi-producer claim for slot k at the current tail (the intent).
void record_intent(const RingRefs& r, uint32_t k, uint64_t pos, uint64_t seq, uint32_t len) {
  ProducerSlot& p = r.producers[k];
  aref(p.claim_pos).store(pos);
  aref(p.frame_len).store(len);
  aref(p.claim).store(claim_word(seq, kClaimIntent));
}

uint32_t flen(uint32_t payload) { return uint32_t(align_frame(kFrameHeaderSize + payload)); }

}  // namespace

TEST_CASE("layout 4.0 is pinned and an older segment is refused") {
  CHECK(sizeof(DataHeader) == 384);
  CHECK(sizeof(ControlHeader) == 384);
  CHECK(sizeof(ProducerSlot) == 128);
  CHECK(sizeof(CursorPage) == 64);
  CHECK(sizeof(ProducerGrant) == 16);
  CHECK(kLayoutMajor == 4);
  HeapRing h(4096, true);
  CHECK(h.r.producers == reinterpret_cast<ProducerSlot*>(h.data.get() + kProducerTableOffset));
  CHECK(h.r.ring == h.data.get() + kRingOffset);
  // The producer grant records follow the cursor slots in the control segment.
  CHECK(reinterpret_cast<std::byte*>(h.r.grants) ==
        h.ctl.get() + sizeof(ControlHeader) + 8 * sizeof(CursorSlot));
  CHECK(h.cbytes == sizeof(ControlHeader) + 8 * sizeof(CursorSlot) + kProducerGrantTableSize);
  RingRefs rg;  // granted: the slot count comes from the size, net of the grant table
  REQUIRE(bind_ring(h.data.get(), h.dbytes, h.ctl.get(), h.cbytes, rg, true) == nullptr);
  CHECK(rg.slot_count == 8);
  CHECK(rg.grants == h.r.grants);
  RingRefs r2;
  auto* d = reinterpret_cast<DataHeader*>(h.data.get());
  d->layout_version = (3u << 16) | 0;
  const char* why = bind_ring(h.data.get(), h.dbytes, h.ctl.get(), h.cbytes, r2);
  REQUIRE(why != nullptr);
  CHECK(std::string(why).find("layout version") != std::string::npos);
}

// Defect 7: the opener validated header fields, then read them again from shared
// memory; a peer flipping slot_count in between made it read out of bounds.
TEST_CASE("bind_ring uses its validated copy: later header writes cannot move the bounds") {
  HeapRing h(8192, false, 4);
  auto* c = reinterpret_cast<ControlHeader*>(h.ctl.get());
  auto* d = reinterpret_cast<DataHeader*>(h.data.get());
  c->slot_count = 4000;  // a hostile peer, after the bind
  d->capacity = 1ull << 30;
  d->max_payload = 1ull << 29;
  CHECK(h.r.slot_count == 4);
  CHECK(h.r.capacity == 8192);
  CHECK(h.r.max_payload == 2048);
  RingWriter w;
  REQUIRE(w.attach(h.r, false, uint32_t(getpid())));
  CHECK(w.max_payload() == 2048);
  RingRefs r2;  // and a fresh bind of the hostile header is refused, not trusted
  CHECK(bind_ring(h.data.get(), h.dbytes, h.ctl.get(), h.cbytes, r2) != nullptr);
}

// Defect 1: the space limit ignored other producers' open claims, so with only
// untethered readers (or none) a held claim was zeroed and handed out one lap later.
TEST_CASE("an open multi-producer claim is never reused a lap later, with no tethered reader") {
  HeapRing h(4096, true);
  RingWriter a, b;
  REQUIRE(a.attach(h.r, true, uint32_t(getpid())));
  REQUIRE(b.attach(h.r, true, uint32_t(getpid())));
  Claim ca;
  REQUIRE(a.try_claim(200, ca) == RingStatus::ok);
  std::memset(ca.payload, 0xAB, 200);
  // B publishes far more than a lap while A's claim stays open.
  uint64_t published = 0;
  FrameMeta meta;
  for (int i = 0; i < 200; ++i) {
    Claim cb;
    RingStatus s = b.try_claim(100, cb);
    if (s != RingStatus::ok) {
      CHECK(s == RingStatus::back_pressured);
      break;
    }
    std::memset(cb.payload, 0x11, 100);
    b.commit(cb, 100, meta);
    ++published;
  }
  CHECK(published > 0);
  CHECK(published < 200);  // held back by A's open claim, not by a cursor
  CHECK(h.tail() <= ca.pos + h.cap);
  for (int k = 0; k < 200; ++k) REQUIRE(uint8_t(ca.payload[k]) == 0xAB);
  a.commit(ca, 200, meta);
  // A reader from position 0 sees A's frame intact, then B's.
  RingReader rd;
  REQUIRE(rd.join(h.r, uint32_t(getpid()), false, 0, 0));
  FrameView v;
  REQUIRE(rd.poll(v) == RingStatus::ok);
  CHECK(v.hdr->sequence == 1);
  CHECK(v.payload_len == 200);
  CHECK(uint8_t(v.payload[199]) == 0xAB);
}

// Defect 2: a multi-producer commit gave back its unused tail by a tail CAS before
// publishing its commit word; a producer killed in between left a hole.
TEST_CASE("a multi-producer claim never shrinks: the frame keeps its claimed length") {
  HeapRing h(8192, true);
  RingWriter a;
  REQUIRE(a.attach(h.r, true, uint32_t(getpid())));
  Claim c;
  REQUIRE(a.try_claim(1000, c) == RingStatus::ok);
  const uint64_t end = c.end;
  CHECK(h.tail() == end);
  a.commit(c, 10, FrameMeta{});
  CHECK(h.tail() == end);  // nothing given back
  CHECK(commit_length(h.commit_at(0)) == flen(1000));
  RingReader rd;
  REQUIRE(rd.join(h.r, uint32_t(getpid()), false, 0, 0));
  FrameView v;
  REQUIRE(rd.poll(v) == RingStatus::ok);
  CHECK(v.payload_len == 10);
  CHECK(v.next == end);
}

// Defect 3: the reclaimer took tail_seq > claim_seq as proof that a dead producer's
// CAS happened, and padded a live producer's open claim.
TEST_CASE("a dead producer that recorded its intent but lost the CAS: nothing is padded") {
  HeapRing h(8192, true);
  const uint32_t dead = dead_pid();
  RingWriter live;
  REQUIRE(live.attach(h.r, true, uint32_t(getpid())));
  fake_producer(h.r, 5, dead);
  // The dead producer read the tail {0, 1} and recorded its intent, then died
  // before its CAS; the live producer claims the same position and wins.
  record_intent(h.r, 5, 0, 1, flen(64));
  Claim c;
  REQUIRE(live.try_claim(300, c) == RingStatus::ok);
  REQUIRE(c.pos == 0);
  CHECK(recover_dead_producer(h.r, 5, dead) == ClaimRecovery::none);
  CHECK(h.commit_at(0) == 0);  // the live claim is untouched
  CHECK(aref(h.r.producers[5].pid).load() == 0);
  live.commit(c, 300, FrameMeta{.message_id = 77});
  RingReader rd;
  REQUIRE(rd.join(h.r, uint32_t(getpid()), false, 0, 0));
  FrameView v;
  REQUIRE(rd.poll(v) == RingStatus::ok);
  CHECK(v.hdr->message_id == 77);
  CHECK(v.payload_len == 300);
}

TEST_CASE("a producer that died right after its pending CAS: completed, then padded exactly") {
  HeapRing h(8192, true);
  const uint32_t dead = dead_pid();
  fake_producer(h.r, 3, dead);
  record_intent(h.r, 3, 0, 1, flen(500));
  uint64_t e_pos = 0, e_tw = tail_word(1, 0);
  REQUIRE(cas_tail(h.r, e_pos, e_tw, 0, tail_word(1, 3 + 1)));  // step 2, then death
  // Another producer finds the pending tail: it completes it and claims after it.
  RingWriter live;
  REQUIRE(live.attach(h.r, true, uint32_t(getpid())));
  Claim c;
  REQUIRE(live.try_claim(100, c) == RingStatus::ok);
  CHECK(c.pos == flen(500));
  CHECK(c.seq == 2);
  live.commit(c, 100, FrameMeta{.message_id = 9});
  CHECK(recover_dead_producer(h.r, 3, dead) == ClaimRecovery::padded);
  CHECK(h.commit_at(0) == make_commit(flen(500), kFramePad));
  CHECK(recover_dead_producer(h.r, 3, dead) == ClaimRecovery::none);  // exactly once
  RingReader rd;
  REQUIRE(rd.join(h.r, uint32_t(getpid()), false, 0, 0));
  FrameView v;
  REQUIRE(rd.poll(v) == RingStatus::ok);
  CHECK(v.hdr->message_id == 9);
  CHECK(v.hdr->sequence == 2);
}

TEST_CASE("a dead producer's pending tail is completed by the reclaimer alone") {
  HeapRing h(8192, true);
  const uint32_t dead = dead_pid();
  fake_producer(h.r, 0, dead);
  record_intent(h.r, 0, 0, 1, flen(64));
  uint64_t e_pos = 0, e_tw = tail_word(1, 0);
  REQUIRE(cas_tail(h.r, e_pos, e_tw, 0, tail_word(1, 1)));
  CHECK(recover_dead_producer(h.r, 0, dead) == ClaimRecovery::padded);
  CHECK(h.tail() == flen(64));
  CHECK(tail_seq_of(aref(h.r.data->tail_seq).load()) == 2);
  CHECK(tail_pending_of(aref(h.r.data->tail_seq).load()) == 0);
}

TEST_CASE("a dead producer's committed frame is never padded over") {
  HeapRing h(8192, true);
  const uint32_t dead = dead_pid();
  RingWriter w;
  REQUIRE(w.attach(h.r, true, dead));  // it registers under the pid that will be dead
  Claim c;
  REQUIRE(w.try_claim(64, c) == RingStatus::ok);
  std::memcpy(c.payload, "committed", 9);
  // Commit word published, then "death" before the claim went IDLE: put WON back.
  const uint64_t seq = c.seq;
  w.commit(c, 9, FrameMeta{});
  aref(h.r.producers[w.producer_slot()].claim).store(claim_word(seq, kClaimWon));
  CHECK(recover_dead_producer(h.r, w.producer_slot(), dead) == ClaimRecovery::done);
  CHECK(commit_type(h.commit_at(0)) == kFrameData);
}

// Defect 5: a producer that died holding zero_lock made every other producer spin
// forever in try_claim, whatever its policy.
TEST_CASE("a dead zero-lock holder is taken over; a live one makes claims back-pressured, not stuck") {
  HeapRing h(4096, true);
  const uint32_t dead = dead_pid();
  fake_producer(h.r, 7, dead);
  RingWriter w;
  REQUIRE(w.attach(h.r, true, uint32_t(getpid())));
  // Fill the zeroed region so that the next claim must extend zero_mark.
  aref(h.r.data->zero_mark).store(h.cap);  // (already: a fresh ring is all zero)
  FrameMeta meta;
  RingReader rd;  // a tethered reader that keeps up
  REQUIRE(rd.join(h.r, uint32_t(getpid()), true));
  for (int i = 0; i < 40; ++i) {
    Claim c;
    aref(h.r.data->zero_lock).store(7 + 1);  // held by the dead producer
    RingStatus s = w.try_claim(200, c);
    REQUIRE(s == RingStatus::ok);
    w.commit(c, 200, meta);
    FrameView v;
    while (rd.poll(v) == RingStatus::ok) {
    }
    rd.release_all();
  }
  CHECK(aref(h.r.data->zero_mark).load() > h.cap);  // it did extend, past the dead holder
  // A live holder (this process, another slot): bounded, then back_pressured.
  fake_producer(h.r, 9, uint32_t(getpid()));
  aref(h.r.data->zero_lock).store(9 + 1);
  RingStatus s = RingStatus::ok;
  for (int i = 0; i < 100 && s == RingStatus::ok; ++i) {
    Claim c;
    s = w.try_claim(1000, c);
    if (s == RingStatus::ok) w.commit(c, 1000, meta);
    FrameView v;
    while (rd.poll(v) == RingStatus::ok) {
    }
    rd.release_all();
  }
  CHECK(s == RingStatus::back_pressured);
}

// Layout 4, daemon mode: the owner is the daemon's token, and a dead zero-lock
// holder is the daemon's to clear (on its grant record). A producer never takes the
// lock over on a pid read from the table: a forged dead pid there changes nothing.
TEST_CASE(
    "a granted producer writes the daemon's token, never its pid, and never takes over a zero lock itself") {
  HeapRing h(4096, true);
  const uint32_t tok = kTokenBit | 5;
  fake_producer(h.r, 3, tok);
  RingWriter w;
  REQUIRE_FALSE(w.attach_granted(h.r, true, tok, 4));  // not the entry the token is in
  REQUIRE(w.attach_granted(h.r, true, tok, 3));
  CHECK(w.producer_slot() == 3);
  CHECK(w.owner() == tok);
  RingReader rd;
  REQUIRE(rd.join(h.r, uint32_t(getpid()), true));
  FrameMeta meta;
  Claim c;
  REQUIRE(w.try_claim(100, c) == RingStatus::ok);
  CHECK(aref(h.r.producers[3].pid).load() == tok);
  CHECK(claim_state(aref(h.r.producers[3].claim).load()) == kClaimWon);
  w.commit(c, 100, meta);
  FrameView v;
  REQUIRE(rd.poll(v) == RingStatus::ok);
  rd.release_all();
  // The lock "held" by entry 7, whose table pid (publisher-writable) says dead:
  // direct mode would take it over; granted, claims that need zeroing back off.
  fake_producer(h.r, 7, dead_pid());
  aref(h.r.data->zero_lock).store(7 + 1);
  RingStatus s = RingStatus::ok;
  for (int i = 0; i < 100 && s == RingStatus::ok; ++i) {
    s = w.try_claim(1000, c);
    if (s == RingStatus::ok) w.commit(c, 1000, meta);
    while (rd.poll(v) == RingStatus::ok) {
    }
    rd.release_all();
  }
  CHECK(s == RingStatus::back_pressured);
  CHECK(aref(h.r.data->zero_lock).load() == 7 + 1);
  // The daemon resolves entry 7 on its own record (its token there): lock freed.
  aref(h.r.producers[7].pid).store(kTokenBit | 9);
  recover_dead_producer(h.r, 7, kTokenBit | 9);
  CHECK(aref(h.r.data->zero_lock).load() == 0);
  REQUIRE(w.try_claim(1000, c) == RingStatus::ok);
  w.commit(c, 1000, meta);
}

// Defect 6: the waiter count leaked when a sleeper was killed; every later commit
// paid a futex wake.
TEST_CASE("a dead sleeper's waiter bit is cleared by recovery, so commits stop waking") {
  HeapRing h(8192, false);
  const uint32_t dead = dead_pid();
  RingReader rd;
  REQUIRE(rd.join(h.r, dead, true));
  const uint32_t i = rd.slot_index();
  // The sleeper set its bit and died in futex_wait.
  aref(h.r.wake->data_waiter_bits[i / 64]).fetch_or(uint64_t(1) << (i % 64));
  RingWriter w;
  REQUIRE(w.attach(h.r, false, uint32_t(getpid())));
  FrameMeta meta;
  Claim c;
  REQUIRE(w.try_claim(8, c) == RingStatus::ok);
  const uint32_t f0 = aref(h.r.data->data_futex).load();
  w.commit(c, 8, meta);
  CHECK(aref(h.r.data->data_futex).load() == f0 + 1);  // a wake while the bit is set
  CHECK(recover_dead_cursor(h.r, i, dead) == CursorRecovery::freed);
  CHECK(aref(h.r.wake->data_waiter_bits[0]).load() == 0);
  REQUIRE(w.try_claim(8, c) == RingStatus::ok);
  w.commit(c, 8, meta);
  CHECK(aref(h.r.data->data_futex).load() == f0 + 1);  // no more wakes
}

// Defect 4: resuming a parked untethered named slot as tethered re-tethered a
// position that may already be lapped, with no check: the reader saw corrupt.
TEST_CASE("a parked untethered slot resumed as tethered reports lapped, not corrupt") {
  HeapRing h(4096, false);
  const uint64_t name = 0x1234;
  {
    RingReader rd;
    REQUIRE(rd.join(h.r, uint32_t(getpid()), false, name));
    rd.park();
  }
  RingWriter w;
  REQUIRE(w.attach(h.r, false, uint32_t(getpid())));
  FrameMeta meta;
  for (int i = 0; i < 100; ++i) {  // several laps of 4 KiB
    Claim c;
    REQUIRE(w.try_claim(200, c) == RingStatus::ok);
    std::memset(c.payload, 0x5A, 200);
    w.commit(c, 200, meta);
  }
  RingReader rd;
  uint32_t owner = 0;
  REQUIRE(rd.resume(h.r, uint32_t(getpid()), true, name, owner) == RingReader::Resume::resumed);
  FrameView v;
  CHECK(rd.poll(v) == RingStatus::lapped);
}

// Found by the model (tests/model, ring-reclaim-race-nonexclusive): a reclaimer that
// checked the pid once and then acted could pad the live claim of a producer that
// reused the entry meanwhile. Recovery now takes the entry by CAS of its pid to the
// reclaimer's mark; a second reclaimer of the same death gets nothing to do.
TEST_CASE("recovery of a dead producer is exclusive, and a dead reclaimer's mark is taken over") {
  HeapRing h(8192, true);
  const uint32_t dead = dead_pid();
  const uint32_t dead_reclaimer = dead_pid();
  fake_producer(h.r, 2, dead);
  record_intent(h.r, 2, 0, 1, flen(64));
  uint64_t e_pos = 0, e_tw = tail_word(1, 0);
  REQUIRE(cas_tail(h.r, e_pos, e_tw, 0, tail_word(1, 2 + 1)));
  // A reclaimer holds the entry (its mark) and is alive: nobody else may act.
  aref(h.r.producers[2].pid).store(reclaimer_mark());
  CHECK(recover_dead_producer(h.r, 2, dead) == ClaimRecovery::none);
  CHECK(h.commit_at(0) == 0);
  // The reclaimer died midway: its death is proven, its mark taken over, the work done.
  aref(h.r.producers[2].pid).store(kReclaimBit | dead_reclaimer);
  CHECK(recover_dead_producer(h.r, 2, dead_reclaimer) == ClaimRecovery::padded);
  CHECK(aref(h.r.producers[2].pid).load() == 0);
  // The entry is reused by a live producer with an open claim; the first death's
  // reclaimer arriving late changes nothing.
  RingWriter n;
  REQUIRE(n.attach(h.r, true, uint32_t(getpid())));
  Claim c;
  REQUIRE(n.try_claim(64, c) == RingStatus::ok);
  CHECK(recover_dead_producer(h.r, n.producer_slot(), dead) == ClaimRecovery::none);
  const uint64_t at = c.pos;
  CHECK(h.commit_at(at) == 0);
  n.commit(c, 64, FrameMeta{});
  CHECK(commit_type(h.commit_at(at)) == kFrameData);
}

TEST_CASE("a dead subscriber's slot is freed once: a late second reclaimer cannot free a new joiner") {
  HeapRing h(8192, false);
  const uint32_t dead = dead_pid();
  RingReader a;
  REQUIRE(a.join(h.r, dead, true));
  const uint32_t i = a.slot_index();
  CHECK(recover_dead_cursor(h.r, i, dead) == CursorRecovery::freed);
  RingReader b;  // a new subscriber takes the freed slot
  REQUIRE(b.join(h.r, uint32_t(getpid()), true));
  REQUIRE(b.slot_index() == i);
  CHECK(recover_dead_cursor(h.r, i, dead) == CursorRecovery::none);
  CHECK(aref(h.r.slots[i].state).load() == kSlotActive);
}

// ---------------------------------------------------------------------------
// Layout 3: per-subscriber cursor pages. Daemon-mode grants are replayed here with
// heap pages (the daemon's join_slot with a separate page, a producer page table).

namespace {
struct HeapPage {
  std::unique_ptr<std::byte[], HeapRing::Free> mem{HeapRing::zalloc(4096)};
  CursorPage* get() const { return reinterpret_cast<CursorPage*>(mem.get()); }
};
uint64_t fill(RingWriter& w, uint32_t payload) {
  FrameMeta meta;
  uint64_t n = 0;
  for (Claim c; w.try_claim(payload, c) == RingStatus::ok; ++n) w.commit(c, payload, meta);
  return n;
}
}  // namespace

TEST_CASE("a forged cursor page can hold producers back at worst, never expose another reader") {
  HeapRing h(8192, false);
  HeapPage honest_pg, forger_pg;
  PageTable table;
  RingWriter w;
  REQUIRE(w.attach(h.r, false, uint32_t(getpid())));
  w.set_page_table(&table);
  uint64_t pos = 0, below = 0;
  // Both granted as by the daemon: slot, flags, join position written by it.
  const int32_t honest = join_slot(h.r, 1, true, 0, RingReader::kAtTail, honest_pg.get(), 11, pos, below);
  const int32_t forger = join_slot(h.r, 2, true, 0, RingReader::kAtTail, forger_pg.get(), 12, pos, below);
  REQUIRE((honest == 0 && forger == 1));
  // Not mapped yet: each join position bounds the limit (the ring fills one lap).
  CHECK(fill(w, 200) > 0);
  CHECK(w.pages_missing());
  for (int32_t i : {honest, forger}) {
    table.page[i] = i == honest ? honest_pg.get() : forger_pg.get();
    table.gen[i] = aref(h.r.slots[i].generation).load();
  }
  const uint64_t tail = h.tail();
  // The forger claims to have read far beyond the tail: clamped to the tail, so the
  // honest reader (still at 0) alone bounds the producer: nothing it has not read
  // is overwritten.
  for (uint64_t forged : {tail + 1, tail + 8192 * 4, ~uint64_t(0), uint64_t(0x5a5a5a5a5a5a5a5a)}) {
    aref(forger_pg.get()->position).store(forged);
    CHECK(min_live_cursor(h.r, tail, &table) == 0);
    Claim c;
    CHECK(w.try_claim(200, c) == RingStatus::back_pressured);
  }
  // The honest reader releases everything; the forger at 0 holds the producer back
  // like a tethered reader that stopped (the power being tethered gives), no more.
  aref(honest_pg.get()->position).store(tail);
  aref(forger_pg.get()->position).store(0);
  CHECK(min_live_cursor(h.r, tail, &table) == 0);
  // Below its join position counts as the join position.
  aref(h.r.slots[forger].join_position).store(4096);
  CHECK(min_live_cursor(h.r, tail, &table) == 4096);
  // Untethered, a forger holds nobody back at all.
  aref(h.r.slots[forger].flags).store(0);
  CHECK(min_live_cursor(h.r, tail, &table) == tail);
}

TEST_CASE("a page of an old generation is never read for a re-granted slot") {
  HeapRing h(8192, false);
  HeapPage old_pg, new_pg;
  PageTable table;
  uint64_t pos = 0, below = 0;
  REQUIRE(join_slot(h.r, 1, true, 0, RingReader::kAtTail, old_pg.get(), 1, pos, below) == 0);
  table.page[0] = old_pg.get();
  table.gen[0] = aref(h.r.slots[0].generation).load();
  RingWriter w;
  REQUIRE(w.attach(h.r, false, uint32_t(getpid())));
  fill(w, 200);
  const uint64_t tail = h.tail();
  // The old owner (or a forked child keeping the mapping) writes its old page after
  // the slot was freed and granted again at the tail...
  aref(h.r.slots[0].state).store(kSlotFree);
  REQUIRE(join_slot(h.r, 2, true, 0, 100, new_pg.get(), 2, pos, below) == 0);
  aref(old_pg.get()->position).store(tail);
  // ...the producer's table still maps the old page: the new generation's join
  // position counts, and the new page is marked missing.
  CHECK(min_live_cursor(h.r, tail, &table) == 100);
  CHECK(table.any_missing());
}

TEST_CASE("P7 on pages: a producer sleeps on the binding cursor's page word; its release wakes it") {
  HeapRing h(8192, false);
  HeapPage pg;
  PageTable table;
  RingWriter w;
  REQUIRE(w.attach(h.r, false, uint32_t(getpid())));
  w.set_page_table(&table);
  uint64_t pos = 0, below = 0;
  REQUIRE(join_slot(h.r, 1, true, 0, RingReader::kAtTail, pg.get(), 5, pos, below) == 0);
  table.page[0] = pg.get();
  table.gen[0] = aref(h.r.slots[0].generation).load();
  RingReader rd;
  rd.adopt(h.r, 0, pg.get(), pos, true, below);
  fill(w, 200);
  uint32_t* word = nullptr;
  uint32_t v = 0;
  REQUIRE(w.prepare_space_wait(200, word, v));
  CHECK(word == &pg.get()->space_wake);
  CHECK(w.space_wait_fenced() == asym_fence_available());
  FrameView f;
  while (rd.poll(f) == RingStatus::ok) {
  }
  rd.release_all();  // the owner's release sees our bit and bumps its own page word
  CHECK(aref(pg.get()->space_wake).load() != v);
  w.end_space_wait();
  CHECK(w.space_available(200));
  // Freeing the slot (the daemon, on its record) bumps the page word too.
  fill(w, 200);
  REQUIRE(w.prepare_space_wait(200, word, v));
  REQUIRE(word == &pg.get()->space_wake);
  free_cursor_slot(h.r, 0, pg.get());
  CHECK(aref(pg.get()->space_wake).load() != v);
  w.end_space_wait();
}

// A single producer killed inside commit() after it published tail_seq and before it
// published tail_pos: the committed frame still sits at tail_pos, visible to readers.
// The next producer's recover_sp must walk over it (not re-zero it and write its own
// first frame there): a reader that already took the frame would otherwise stand
// inside the new frame, and one that had not would lose a committed message.
// (Seen as a 10 s stall of crash_mp_test's single-producer trials under ASan.)
TEST_CASE(
    "a single producer killed between publishing tail_seq and tail_pos: the taker-over keeps its frame") {
  HeapRing h(4096, false);
  RingWriter a;
  REQUIRE(a.attach(h.r, false, uint32_t(getpid())));
  FrameMeta meta;
  RingReader early, late;
  REQUIRE(early.join(h.r, uint32_t(getpid()), false, 0, 0));
  uint64_t last_pos = 0;
  for (uint32_t i = 0; i < 3; ++i) {
    Claim c;
    REQUIRE(a.try_claim(40 + 24 * i, c) == RingStatus::ok);
    std::memset(c.payload, int(0x10 + i), 40 + 24 * i);
    last_pos = c.pos;
    a.commit(c, 40 + 24 * i, meta);
  }
  // The kill: tail_pos back at the third frame, tail_seq already past it (4).
  aref(h.r.data->tail_pos).store(last_pos);
  REQUIRE(tail_seq_of(aref(h.r.data->tail_seq).load()) == 4);
  // The early reader had taken all three frames before the takeover.
  FrameView v;
  for (uint64_t s = 1; s <= 3; ++s) {
    REQUIRE(early.poll(v) == RingStatus::ok);
    CHECK(v.hdr->sequence == s);
    early.release_all();
  }
  RingWriter b;
  REQUIRE(b.attach(h.r, false, uint32_t(getpid())));
  b.recover_sp();
  CHECK(h.tail() > last_pos);  // walked over the dead owner's last frame
  Claim c;
  REQUIRE(b.try_claim(100, c) == RingStatus::ok);
  std::memset(c.payload, 0x77, 100);
  b.commit(c, 100, meta);
  // The early reader gets B's frame next, whole; one from the start sees all four.
  REQUIRE(early.poll(v) == RingStatus::ok);
  CHECK(v.hdr->sequence == 4);
  CHECK(v.payload_len == 100);
  CHECK(uint8_t(v.payload[99]) == 0x77);
  REQUIRE(late.join(h.r, uint32_t(getpid()), false, 0, 0));
  for (uint64_t s = 1; s <= 4; ++s) {
    REQUIRE(late.poll(v) == RingStatus::ok);
    CHECK(v.hdr->sequence == s);
    CHECK(uint8_t(v.payload[0]) == (s == 4 ? 0x77 : 0x10 + s - 1));
    late.release_all();
  }
}
// ---------------------------------------------------------------------------
// Multi-frame claims (try_claim_n / commit_n, P1m): one ring claim of n frames.

namespace {

// Fills frame i of a batch with `len` bytes of (tag + i).
void fill_frame(const ClaimBatch& b, uint32_t i, uint32_t len, uint8_t tag) {
  std::memset(b.payload(i), tag + int(i), len);
}

// Reads the next data frame, checking its sequence, length and fill byte.
void expect_frame(RingReader& rd, uint64_t seq, uint32_t len, uint8_t byte) {
  FrameView v;
  REQUIRE(rd.poll(v) == RingStatus::ok);
  CHECK(v.hdr->sequence == seq);
  CHECK(v.payload_len == len);
  if (len) {
    CHECK(uint8_t(v.payload[0]) == byte);
    CHECK(uint8_t(v.payload[len - 1]) == byte);
  }
  rd.release_all();
}

}  // namespace

TEST_CASE("a multi-frame claim becomes visible at once, in order, one sequence per frame") {
  for (const bool multi : {false, true}) {
    INFO((multi ? "multi-producer" : "single-producer"));
    HeapRing h(16384, multi);
    RingWriter w;
    REQUIRE(w.attach(h.r, multi, uint32_t(getpid())));
    RingReader rd;
    REQUIRE(rd.join(h.r, uint32_t(getpid()), true));
    ClaimBatch b;
    REQUIRE(w.try_claim_n(4, 200, b) == RingStatus::ok);
    CHECK(b.count == 4);
    CHECK(b.seq == 1);
    CHECK(b.frame_len == flen(200));
    CHECK(b.end == b.pos + 4 * flen(200));
    if (multi) {
      // One claim took four sequences: the tail's next sequence is past all of them.
      CHECK(tail_seq_of(aref(h.r.data->tail_seq).load()) == 5);
      CHECK(h.tail() == b.end);
    }
    const uint32_t lens[4] = {10, 200, 0, 77};
    const uint64_t ids[4] = {101, 102, 103, 104};
    for (uint32_t i = 0; i < 4; ++i) fill_frame(b, i, lens[i], 0x40);
    FrameView v;
    CHECK(rd.poll(v) == RingStatus::empty);  // nothing before the commit
    w.commit_n(b, 4, lens, ids, FrameMeta{.producer_id = 9});
    CHECK_FALSE(b.active());
    uint64_t stamp = 0;
    for (uint32_t i = 0; i < 4; ++i) {
      REQUIRE(rd.poll(v) == RingStatus::ok);
      CHECK(v.hdr->sequence == 1 + i);
      CHECK(v.hdr->message_id == ids[i]);
      CHECK(v.hdr->producer_id == 9);
      CHECK(v.payload_len == lens[i]);
      if (lens[i]) CHECK(uint8_t(v.payload[lens[i] - 1]) == 0x40 + i);
      if (i == 0) stamp = v.hdr->timestamp_ns;
      CHECK(v.hdr->timestamp_ns == stamp);  // one timestamp per batch
      CHECK(stamp != 0);
    }
    rd.release_all();
    CHECK(rd.poll(v) == RingStatus::empty);
    // Part of a batch: two of three frames; the third is skipped (multi) or given
    // back (single), and the sequences go on from the claim's.
    REQUIRE(w.try_claim_n(3, 64, b) == RingStatus::ok);
    CHECK(b.seq == 5);
    const uint32_t two[2] = {64, 5};
    fill_frame(b, 0, 64, 0x50);
    fill_frame(b, 1, 5, 0x50);
    fill_frame(b, 2, 64, 0x50);  // written, never committed
    w.commit_n(b, 2, two, nullptr, FrameMeta{});
    expect_frame(rd, 5, 64, 0x50);
    expect_frame(rd, 6, 5, 0x51);
    Claim c;
    REQUIRE(w.try_claim(32, c) == RingStatus::ok);
    std::memset(c.payload, 0x60, 32);
    w.commit(c, 32, FrameMeta{});
    expect_frame(rd, multi ? 8 : 7, 32, 0x60);  // multi: the unused sequence 7 is a gap
    CHECK(rd.poll(v) == RingStatus::empty);
    // An aborted batch is one padding frame.
    REQUIRE(w.try_claim_n(5, 100, b) == RingStatus::ok);
    const uint64_t apos = b.pos;
    fill_frame(b, 3, 100, 0x70);
    w.abort_n(b);
    CHECK(h.commit_at(apos) == make_commit(5 * flen(100), kFramePad));
    REQUIRE(w.try_claim(8, c) == RingStatus::ok);
    std::memset(c.payload, 0x71, 8);
    w.commit(c, 8, FrameMeta{});
    expect_frame(rd, multi ? 14 : 8, 8, 0x71);
  }
}

TEST_CASE(
    "a multi-frame claim wraps at the ring end as one claim; one larger than half the ring is refused") {
  for (const bool multi : {false, true}) {
    INFO((multi ? "multi-producer" : "single-producer"));
    HeapRing h(8192, multi);
    RingWriter w;
    REQUIRE(w.attach(h.r, multi, uint32_t(getpid())));
    RingReader rd;
    REQUIRE(rd.join(h.r, uint32_t(getpid()), true));
    ClaimBatch b;
    CHECK(w.try_claim_n(0, 8, b) == RingStatus::too_large);
    CHECK(w.try_claim_n(1, 2049, b) == RingStatus::too_large);  // past max_payload (capacity / 4)
    // 2 * n * frame_len + 8 must fit the capacity: 40 frames of 56 bytes do, 80 do not.
    CHECK(w.try_claim_n(80, 8, b) == RingStatus::too_large);
    CHECK(w.try_claim_n(uint32_t(1) << 31, 2048, b) == RingStatus::too_large);  // no overflow
    uint64_t seq = 1;
    // Three laps of batches of 3..6 frames: some of them need a wrap pad.
    uint32_t wrapped = 0;
    for (uint32_t round = 0; round < 40; ++round) {
      const uint32_t n = 3 + round % 4;
      const uint32_t len = 100 + 37 * (round % 5);
      REQUIRE(w.try_claim_n(n, len, b) == RingStatus::ok);
      if ((b.pos & (h.cap - 1)) + (b.end - b.pos) > h.cap) FAIL("claim crosses the ring end");
      if ((b.pos & (h.cap - 1)) == 0 && round) ++wrapped;
      std::vector<uint32_t> lens(n, len);
      for (uint32_t i = 0; i < n; ++i) fill_frame(b, i, len, uint8_t(round * 8));
      w.commit_n(b, n, lens.data(), nullptr, FrameMeta{});
      for (uint32_t i = 0; i < n; ++i) expect_frame(rd, seq++, len, uint8_t(round * 8 + i));
      FrameView v;
      CHECK(rd.poll(v) == RingStatus::empty);
    }
    CHECK(wrapped > 0);
    CHECK(h.tail() > 3 * h.cap);
  }
}

TEST_CASE("a producer killed holding a multi-frame claim (frame 0 uncommitted) is padded as one claim") {
  HeapRing h(16384, true);
  const uint32_t dead = dead_pid();
  RingWriter live, doomed;
  REQUIRE(live.attach(h.r, true, uint32_t(getpid())));
  REQUIRE(doomed.attach(h.r, true, dead));  // registers under the pid that will be dead
  RingReader rd;
  REQUIRE(rd.join(h.r, uint32_t(getpid()), true));
  Claim c;
  REQUIRE(live.try_claim(50, c) == RingStatus::ok);
  std::memset(c.payload, 0x11, 50);
  live.commit(c, 50, FrameMeta{});  // sequence 1
  ClaimBatch b;
  REQUIRE(doomed.try_claim_n(4, 300, b) == RingStatus::ok);  // sequences 2..5
  CHECK(b.seq == 2);
  // Another producer claims and commits after it meanwhile.
  Claim c2;
  REQUIRE(live.try_claim(60, c2) == RingStatus::ok);
  CHECK(c2.seq == 6);
  std::memset(c2.payload, 0x22, 60);
  live.commit(c2, 60, FrameMeta{});
  // The kill, midway through commit_n: frames 1..3 have their headers and commit
  // words, frame 0 has not.
  for (uint32_t i = 1; i < 4; ++i) {
    fill_frame(b, i, 300, 0x30);
    b.hdr(i)->payload_len = 300;
    aref(b.hdr(i)->sequence).store(b.seq + i);
    aref(b.hdr(i)->commit).store(make_commit(b.frame_len, kFrameData));
  }
  expect_frame(rd, 1, 50, 0x11);
  FrameView v;
  CHECK(rd.poll(v) == RingStatus::empty);  // frame 0 holds the reader: nothing of the batch
  CHECK(recover_dead_producer(h.r, doomed.producer_slot(), dead) == ClaimRecovery::padded);
  CHECK(h.commit_at(b.pos) == make_commit(4 * b.frame_len, kFramePad));
  // The reader skips the whole claim and loses nothing else.
  expect_frame(rd, 6, 60, 0x22);
  CHECK(rd.poll(v) == RingStatus::empty);
  REQUIRE(live.try_claim(8, c) == RingStatus::ok);
  CHECK(c.seq == 7);
  std::memset(c.payload, 0x33, 8);
  live.commit(c, 8, FrameMeta{});
  expect_frame(rd, 7, 8, 0x33);
}

TEST_CASE("a multi-frame claim pending when its producer died is completed past all its sequences") {
  HeapRing h(8192, true);
  const uint32_t dead = dead_pid();
  fake_producer(h.r, 2, dead);
  // A claim of 3 frames: the intent and the pending tail carry its last sequence, 3.
  record_intent(h.r, 2, 0, 3, 3 * flen(64));
  uint64_t e_pos = 0, e_tw = tail_word(1, 0);
  REQUIRE(cas_tail(h.r, e_pos, e_tw, 0, tail_word(3, 2 + 1)));
  RingWriter live;
  REQUIRE(live.attach(h.r, true, uint32_t(getpid())));
  Claim c;
  REQUIRE(live.try_claim(16, c) == RingStatus::ok);  // helps the pending claim first
  CHECK(c.pos == 3 * flen(64));
  CHECK(c.seq == 4);
  live.commit(c, 16, FrameMeta{});
  CHECK(recover_dead_producer(h.r, 2, dead) == ClaimRecovery::padded);
  CHECK(h.commit_at(0) == make_commit(3 * flen(64), kFramePad));
}

TEST_CASE("a single producer killed during a multi-frame claim: recover_sp re-zeroes it, nothing leaks") {
  HeapRing h(16384, false);
  RingReader rd;
  REQUIRE(rd.join(h.r, uint32_t(getpid()), true));
  RingWriter a;
  REQUIRE(a.attach(h.r, false, uint32_t(getpid())));
  Claim c;
  REQUIRE(a.try_claim(40, c) == RingStatus::ok);
  std::memset(c.payload, 0x11, 40);
  a.commit(c, 40, FrameMeta{});
  ClaimBatch b;
  REQUIRE(a.try_claim_n(3, 120, b) == RingStatus::ok);
  for (uint32_t i = 1; i < 3; ++i) {  // killed after frames 1, 2, before frame 0
    fill_frame(b, i, 120, 0x50);
    b.hdr(i)->payload_len = 120;
    aref(b.hdr(i)->sequence).store(b.seq + i);
    aref(b.hdr(i)->commit).store(make_commit(b.frame_len, kFrameData));
  }
  RingWriter n;
  REQUIRE(n.attach(h.r, false, uint32_t(getpid())));
  n.recover_sp();
  CHECK(h.tail() == b.pos);
  CHECK(h.commit_at(b.pos + b.frame_len) == 0);  // the dead claim's frames are zero again
  REQUIRE(n.try_claim_n(2, 16, b) == RingStatus::ok);
  CHECK(b.seq == 2);
  const uint32_t lens[2] = {16, 16};
  fill_frame(b, 0, 16, 0x60);
  fill_frame(b, 1, 16, 0x60);
  n.commit_n(b, 2, lens, nullptr, FrameMeta{});
  expect_frame(rd, 1, 40, 0x11);
  expect_frame(rd, 2, 16, 0x60);
  expect_frame(rd, 3, 16, 0x61);
  FrameView v;
  CHECK(rd.poll(v) == RingStatus::empty);
}

// commit_n stores tail_seq (past all k frames) before tail_pos, as commit() does:
// a single producer killed between the two leaves tail_pos at frame 0 of a batch
// whose sequences are k below tail_seq. The next producer must walk over them, not
// hand their position or their sequences out again.
TEST_CASE("a single producer killed between tail_seq and tail_pos of a multi-frame commit") {
  HeapRing h(16384, false);
  RingReader early, late;
  REQUIRE(early.join(h.r, uint32_t(getpid()), false, 0, 0));
  RingWriter a;
  REQUIRE(a.attach(h.r, false, uint32_t(getpid())));
  ClaimBatch b;
  REQUIRE(a.try_claim_n(3, 90, b) == RingStatus::ok);
  const uint64_t first = b.pos;
  const uint32_t lens[3] = {90, 50, 70};
  for (uint32_t i = 0; i < 3; ++i) fill_frame(b, i, lens[i], 0x10);
  a.commit_n(b, 3, lens, nullptr, FrameMeta{});
  // The kill: tail_pos back at frame 0, tail_seq already past the batch (4).
  aref(h.r.data->tail_pos).store(first);
  REQUIRE(tail_seq_of(aref(h.r.data->tail_seq).load()) == 4);
  for (uint64_t s = 1; s <= 3; ++s) expect_frame(early, s, lens[s - 1], uint8_t(0x10 + s - 1));
  RingWriter n;
  REQUIRE(n.attach(h.r, false, uint32_t(getpid())));
  n.recover_sp();
  CHECK(h.tail() > first);  // walked over the dead owner's batch
  Claim c;
  REQUIRE(n.try_claim(100, c) == RingStatus::ok);
  std::memset(c.payload, 0x77, 100);
  n.commit(c, 100, FrameMeta{});
  expect_frame(early, 4, 100, 0x77);
  REQUIRE(late.join(h.r, uint32_t(getpid()), false, 0, 0));
  for (uint64_t s = 1; s <= 3; ++s) expect_frame(late, s, lens[s - 1], uint8_t(0x10 + s - 1));
  expect_frame(late, 4, 100, 0x77);
}
