// shmbus shared-memory layout. Normative spec: docs/protocol.md.
// Every byte that lives in shared memory is declared here, with fixed-width
// integers, explicit padding and offsets (never pointers). Changing a size or an
// offset means changing docs/protocol.md and kLayoutMajor/kLayoutMinor.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmbus::shm {

inline constexpr uint64_t kDataMagic = 0x3444'5355'424d'4853ULL;  // "SHMBUSD4" little-endian
inline constexpr uint64_t kCtlMagic = 0x3443'5355'424d'4853ULL;   // "SHMBUSC4"
// 2.0: producer table moved into the data segment (subscribers cannot write it);
// multi-producer claims go through a pending tail and a won state (P8 v2); claims
// never shrink with several producers; waiters are per-slot bits, not counters;
// data_futex lives in the data segment. A 1.x segment is refused.
// 3.0: per-subscriber isolation. The control segment is written only by its
// creator's side (the daemon; in direct mode the self-serving participants); a
// subscriber's released position, heartbeat and space-wake word live in its own
// CursorPage (daemon mode: a fresh page per grant that only it can write); data
// waiter bits live in a WakeBlock (daemon mode: the wake segment). A 2.x segment
// is refused.
// 4.0: daemon-granted producers. In daemon mode ProducerSlot::pid and
// DataHeader::producer_pid hold an owner token the daemon chose and wrote at the
// grant (never a pid); the daemon's own record of every producer grant (token,
// SO_PEERCRED pid, process identity) is a table after the cursor slots in the
// control segment; CursorSlot::ident records a cursor grantee's identity. A 3.x
// segment is refused.
inline constexpr uint32_t kLayoutMajor = 4;
inline constexpr uint32_t kLayoutMinor = 0;
inline constexpr uint32_t kLayoutVersion = (kLayoutMajor << 16) | kLayoutMinor;
inline constexpr size_t kCacheLine = 64;
inline constexpr uint64_t kFrameAlign = 8;

// Frame types (FrameHeader::commit bits 32..47).
inline constexpr uint16_t kFrameData = 1;
inline constexpr uint16_t kFramePad = 2;

// Topic policy at the back-pressure limit (DataHeader::policy).
inline constexpr uint32_t kPolicyBlock = 0;
inline constexpr uint32_t kPolicyFail = 1;
inline constexpr uint32_t kPolicySpill = 2;

// DataHeader::flags
inline constexpr uint32_t kFlagMultiProducer = 1u << 0;

// CursorSlot::state
inline constexpr uint32_t kSlotFree = 0;
inline constexpr uint32_t kSlotJoining = 1;
inline constexpr uint32_t kSlotActive = 2;
inline constexpr uint32_t kSlotDead = 3;

// CursorSlot::flags
inline constexpr uint32_t kSlotTethered = 1u << 0;
// The slot's cursor page is the one embedded in the slot (CursorSlot::page): direct
// mode, and the daemon's own cursors (the archiver). Otherwise the page is a
// separate per-grant segment (daemon mode) that producers map through a page table.
inline constexpr uint32_t kSlotEmbedded = 1u << 1;

// ProducerSlot::claim word (2.0): (sequence << 2) | state. The sequence makes every
// transition a CAS on one particular claim, so a late helper cannot act on the
// owner's next claim (P8).
inline constexpr uint64_t kClaimIdle = 0;    // no claim in flight
inline constexpr uint64_t kClaimIntent = 1;  // intent recorded; the pending CAS may still happen
inline constexpr uint64_t kClaimWon = 2;     // the pending CAS happened: [pos, pos+pad+len) is ours
inline constexpr uint64_t claim_word(uint64_t seq, uint64_t state) { return (seq << 2) | state; }
inline constexpr uint64_t claim_state(uint64_t w) { return w & 3; }
inline constexpr uint64_t claim_seq(uint64_t w) { return w >> 2; }
inline constexpr uint32_t kProducerSlots = 32;

// DataHeader::tail_seq (2.0): bits 0..55 the next sequence, bits 56..63 "pending":
// 0, or 1 + the producer slot whose claim of [tail_pos, ...) is being completed (P8).
inline constexpr uint64_t kSeqMask = (uint64_t(1) << 56) - 1;
inline constexpr uint64_t tail_seq_of(uint64_t w) { return w & kSeqMask; }
inline constexpr uint32_t tail_pending_of(uint64_t w) { return uint32_t(w >> 56); }
inline constexpr uint64_t tail_word(uint64_t seq, uint32_t pending) {
  return (seq & kSeqMask) | (uint64_t(pending) << 56);
}
// Space-waiter bit of the single producer (multi-producer slots use bits 0..31).
inline constexpr uint32_t kSpaceBitSingle = 63;
// Cursor slots are limited so that their waiter bits fit WakeBlock::data_waiter_bits.
inline constexpr uint32_t kMaxSlots = 512;

// ---------------------------------------------------------------------------
// Frame: a fixed 48-byte header followed by the payload (a serialized Cap'n Proto
// message for data frames). Frames start at 8-byte aligned ring positions and
// never cross the end of the ring (a padding frame fills the rest of the lap).
//
// `commit` is written last, as one 64-bit atomic store with release ordering:
//   bits  0..31  frame length in bytes (header + payload + tail padding, multiple of 8)
//   bits 32..47  frame type (kFrameData, kFramePad)
//   bits 48..63  frame flags (reserved, 0)
// A zero commit word means "nothing here yet": the producer keeps the ring zeroed
// ahead of its tail (see RingWriter), so a reader never sees stale bytes from the
// previous lap at its read position.
// A padding frame may be as short as 8 bytes: only its commit word is meaningful.
struct FrameHeader {
  uint64_t commit;        // 0   see above; written last (release)
  uint32_t payload_len;   // 8   bytes of payload actually used (<= length - 48)
  uint32_t producer_id;   // 12  publisher id (pid-derived unless set)
  uint64_t sequence;      // 16  partition sequence, dense, starts at 1
  uint64_t timestamp_ns;  // 24  CLOCK_MONOTONIC at commit (same host: comparable)
  uint64_t message_id;    // 32  caller-defined (correlation / idempotence)
  uint64_t schema_id;     // 40  Cap'n Proto type id of the root struct, or 0
};
static_assert(sizeof(FrameHeader) == 48, "update docs/protocol.md and the layout version");
static_assert(offsetof(FrameHeader, commit) == 0);
static_assert(offsetof(FrameHeader, payload_len) == 8);
static_assert(offsetof(FrameHeader, producer_id) == 12);
static_assert(offsetof(FrameHeader, sequence) == 16);
static_assert(offsetof(FrameHeader, timestamp_ns) == 24);
static_assert(offsetof(FrameHeader, message_id) == 32);
static_assert(offsetof(FrameHeader, schema_id) == 40);
inline constexpr uint32_t kFrameHeaderSize = sizeof(FrameHeader);

constexpr uint64_t make_commit(uint32_t frame_len, uint16_t type) {
  return uint64_t(frame_len) | (uint64_t(type) << 32);
}
constexpr uint32_t commit_length(uint64_t w) { return uint32_t(w); }
constexpr uint16_t commit_type(uint64_t w) { return uint16_t(w >> 32); }
constexpr uint64_t align_frame(uint64_t n) { return (n + kFrameAlign - 1) & ~(kFrameAlign - 1); }

// ---------------------------------------------------------------------------
// Data segment: DataHeader (384 bytes), reserved up to kProducerTableOffset, the
// producer table (kProducerSlots x 128 bytes), reserved up to kRingOffset, then
// `capacity` bytes of ring. Producers map it read-write, subscribers read-only:
// nothing a subscriber writes can reach a producer's claim or the ring.
inline constexpr uint64_t kProducerTableOffset = 1024;
inline constexpr uint64_t kRingOffset = 8192;

struct DataHeader {
  // line 0: written once by the creator; layout_version written LAST (release) =
  // "segment ready". Openers copy this line once, validate the copy, use only it.
  uint64_t magic;           // 0
  uint32_t layout_version;  // 8   SYNC(data.ready) release by creator / acquire by openers
  uint32_t flags;           // 12  kFlagMultiProducer
  uint64_t capacity;        // 16  ring bytes, power of two, >= 4096
  uint64_t data_offset;     // 24  = kRingOffset
  uint64_t schema_id;       // 32  root struct type id expected on this topic, 0 = any
  uint32_t policy;          // 40  kPolicy*
  uint32_t partition;       // 44
  uint64_t created_ns;      // 48  CLOCK_REALTIME at creation
  uint64_t max_payload;     // 56  largest payload a frame may carry
  // line 1: written once by the creator.
  uint64_t producer_offset;  // 64  = kProducerTableOffset
  uint32_t producer_slots;   // 72  = kProducerSlots
  uint32_t reserved1;        // 76
  uint8_t pad0[48];          // 80 .. 127
  // line 2: producer-written.
  uint64_t tail_pos;   // 128 next free ring position (claimed, not necessarily committed)
  uint64_t tail_seq;   // 136 tail_word(): next sequence | pending owner; one 16-byte CAS with tail_pos (MP)
  uint64_t zero_mark;  // 144 ring bytes in [tail_pos, zero_mark) are zero
  uint32_t zero_lock;  // 152 MP: 1 + producer slot extending zero_mark, 0 = free
  uint32_t producer_pid;           // 156 SP: pid of the exclusive producer, 0 = none
  uint64_t backpressure_events;    // 160 times a producer found the ring full (approximate)
  uint64_t producer_heartbeat_ns;  // 168
  // Highest position a producer has started to zero (P2). Stored BEFORE the
  // zeroing, so an untethered reader that re-reads it after copying a frame knows
  // whether the copy may be torn (P9 in docs/memory-ordering.md).
  uint64_t zero_intent;  // 176 SYNC(zero_intent) relaxed + release fence / acquire fence + relaxed
  uint8_t pad2[72];      // 184 .. 255
  // line 4: written by the archiver of a durable topic (daemon/spill), read
  // by producers waiting for durability acknowledgements (P10).
  uint64_t durable_seq;            // 256 every frame with sequence <= this is durable per the flush policy
  uint32_t durable_futex;          // 264 bumped (and woken if durable_waiters) when durable_seq grows
  uint32_t durable_waiters;        // 268 producers sleeping on durable_futex
  uint64_t archived_seq;           // 272 highest sequence written to the log (maybe not yet synced)
  uint64_t archived_pos;           // 280 ring position up to which frames are in the log
  uint32_t archiver_error;         // 288 errno of the failing log write/sync, 0 = healthy
  uint32_t archiver_pid;           // 292 pid of the process running the archiver, 0 = none
  uint64_t archiver_heartbeat_ns;  // 296 CLOCK_MONOTONIC, refreshed by the archiver loop
  uint8_t pad3[16];                // 304 .. 319
  // line 5: producer wait words.
  uint32_t data_futex;         // 320 bumped (and woken) by a producer that finds a data waiter bit set (P6)
  uint32_t space_futex;        // 324 P7 wake word of producers bound by an open claim (producer-written)
  uint64_t space_waiter_bits;  // 328 bit k: producer slot k sleeps on space (P7); bit 63: the single producer
  uint8_t pad5[48];            // 336 .. 383
};
static_assert(sizeof(DataHeader) == 384, "update docs/protocol.md and the layout version");
static_assert(offsetof(DataHeader, layout_version) == 8);
static_assert(offsetof(DataHeader, capacity) == 16);
static_assert(offsetof(DataHeader, max_payload) == 56);
static_assert(offsetof(DataHeader, producer_offset) == 64);
static_assert(offsetof(DataHeader, producer_slots) == 72);
static_assert(offsetof(DataHeader, tail_pos) == 128);
static_assert(offsetof(DataHeader, tail_pos) % 16 == 0, "16-byte CAS needs 16-byte alignment");
static_assert(offsetof(DataHeader, tail_seq) == 136);
static_assert(offsetof(DataHeader, zero_mark) == 144);
static_assert(offsetof(DataHeader, zero_lock) == 152);
static_assert(offsetof(DataHeader, producer_pid) == 156);
static_assert(offsetof(DataHeader, backpressure_events) == 160);
static_assert(offsetof(DataHeader, zero_intent) == 176);
static_assert(offsetof(DataHeader, durable_seq) == 256, "archiver line: two lines from the producer's");
static_assert(offsetof(DataHeader, durable_futex) == 264);
static_assert(offsetof(DataHeader, archived_seq) == 272);
static_assert(offsetof(DataHeader, archiver_error) == 288);
static_assert(offsetof(DataHeader, archiver_heartbeat_ns) == 296);
static_assert(offsetof(DataHeader, data_futex) == 320);
static_assert(offsetof(DataHeader, space_futex) == 324);
static_assert(offsetof(DataHeader, space_waiter_bits) == 328);

// ---------------------------------------------------------------------------
// Data waiter bits (P6). Bit i: the subscriber of cursor slot i sleeps on
// DataHeader::data_futex. One bit per slot (not a counter), so a reclaimer clears a
// dead sleeper's bit and nothing leaks. Daemon mode: the whole of the wake segment
// (subscribers map it read-write, producers read-only); direct mode: inside the
// control segment (ControlHeader::wake).
struct WakeBlock {
  uint64_t data_waiter_bits[kMaxSlots / 64];  // 0 .. 63
  uint8_t pad[64];                            // 64 .. 127
};
static_assert(sizeof(WakeBlock) == 128, "update docs/protocol.md and the layout version");
inline constexpr size_t kWakeSegmentSize = 4096;  // one page (mapped on its own)

// One subscriber's cursor page: everything a subscriber writes about its cursor.
// Daemon mode: a segment of its own (kCursorPageSize), fresh for every grant; the
// subscriber maps it read-write, producers read-only, nobody else at all. Direct
// mode and the daemon's own cursors: embedded in the CursorSlot.
// Every value a producer reads here is hostile: it is clamped to
// [CursorSlot::join_position, tail] (see min_live_cursor).
struct CursorPage {
  uint64_t position;      // 0  everything below is released. SYNC(cursor) release by the owner
  uint64_t heartbeat_ns;  // 8  CLOCK_MONOTONIC, refreshed by the owner while idle (display)
  uint32_t space_wake;    // 16 P7: bumped (and woken) by the owner after a release that saw a
                          //    space waiter bit, and by whoever frees the slot
  uint32_t reserved;      // 20
  uint8_t pad[40];        // 24 .. 63
};
static_assert(sizeof(CursorPage) == 64, "update docs/protocol.md and the layout version");
static_assert(offsetof(CursorPage, position) == 0);
static_assert(offsetof(CursorPage, heartbeat_ns) == 8);
static_assert(offsetof(CursorPage, space_wake) == 16);
inline constexpr size_t kCursorPageSize = 4096;

// ---------------------------------------------------------------------------
// Control segment: ControlHeader (384 bytes) then `slot_count` CursorSlots.
// Daemon mode: written only by the daemon (clients get a read-only fd); it is the
// daemon's own record of who holds which slot. Direct mode (one uid): the
// participants join and leave by themselves, through the same shm/ code.
struct ControlHeader {
  uint64_t magic;           // 0
  uint32_t layout_version;  // 8   SYNC(ctl.ready) written last by the creator
  uint32_t slot_count;      // 12  <= kMaxSlots
  uint64_t capacity;        // 16  copy of the data ring capacity (cross-check)
  uint32_t reserved0;       // 24
  uint32_t slot_hwm;        // 28  1 + highest slot index ever joined; cursor scans stop there
  uint64_t wake_id;         // 32  daemon mode: inode of the wake segment (a sealed memfd; 0 = none)
  uint8_t pad0[88];         // 40 .. 127
  // lines 2-3: the data waiter bits of direct mode (daemon mode: the wake segment).
  WakeBlock wake;     // 128 .. 255
  uint8_t pad4[128];  // 256 .. 383
};
static_assert(sizeof(ControlHeader) == 384, "update docs/protocol.md and the layout version");
static_assert(offsetof(ControlHeader, slot_count) == 12);
static_assert(offsetof(ControlHeader, slot_hwm) == 28);
static_assert(offsetof(ControlHeader, wake_id) == 32);
static_assert(offsetof(ControlHeader, wake) == 128);

// One subscriber cursor slot. 128 bytes (two lines) so that neighbours do not share
// a line. Line 0 is the grant (daemon-written in daemon mode); line 1 is the
// embedded cursor page (used when kSlotEmbedded is set).
struct CursorSlot {
  uint32_t state;       // 0  kSlot*; FREE->JOINING by CAS
  uint32_t pid;         // 4  owner (daemon mode: its SO_PEERCRED pid in the daemon's namespace; 0 = parked)
  uint32_t flags;       // 8  kSlotTethered | kSlotEmbedded
  uint32_t generation;  // 12 bumped on every (re)grant of the slot; tags the page
  uint64_t name_hash;   // 16 durable subscriber name (0 = anonymous)
  uint64_t join_position;  // 24 the cursor never goes below this (bounds the limit until the page is mapped)
  uint64_t page_id;        // 32 daemon mode: inode of the grant's page (a sealed memfd; 0 = embedded or none)
  uint64_t parked_ns;      // 40 CLOCK_MONOTONIC when parked (P11)
  uint64_t
      join_token;  // 48 daemon mode: the client's token of the join that made this grant (a resent join gets it again)
  uint64_t
      ident;  // 56 daemon mode: the grantee's process identity (pidfs inode, or 2^63 | start time), 0 = unknown (4.0)
  CursorPage page;  // 64 .. 127 the embedded page
};
static_assert(sizeof(CursorSlot) == 128, "update docs/protocol.md and the layout version");
static_assert(offsetof(CursorSlot, state) == 0);
static_assert(offsetof(CursorSlot, pid) == 4);
static_assert(offsetof(CursorSlot, flags) == 8);
static_assert(offsetof(CursorSlot, generation) == 12);
static_assert(offsetof(CursorSlot, name_hash) == 16);
static_assert(offsetof(CursorSlot, join_position) == 24);
static_assert(offsetof(CursorSlot, page_id) == 32);
static_assert(offsetof(CursorSlot, parked_ns) == 40);
static_assert(offsetof(CursorSlot, join_token) == 48);
static_assert(offsetof(CursorSlot, ident) == 56);
static_assert(offsetof(CursorSlot, page) == 64);

// One multi-producer table entry (in the data segment, 2.0). Written by its
// producer, by helpers completing its pending claim, and by a reclaimer once the
// owner is dead (P8). 128 bytes so that producers do not share lines.
struct ProducerSlot {
  uint32_t pid;         // 0  owner; registration CASes 0 -> pid
  uint32_t generation;  // 4  bumped on every registration
  uint64_t claim;       // 8  claim_word(seq, kClaim*): SYNC(prod.claim) seqlock over the fields below
  uint64_t claim_pos;   // 16 tail position read for the claim (before any wrap pad)
  uint32_t frame_len;   // 24 claimed frame length (the wrap pad not included); never shrinks
  uint32_t reserved;    // 28
  uint64_t fills;       // 32 claims of this slot filled with padding by a reclaimer
  uint8_t pad[88];      // 40 .. 127
};
static_assert(sizeof(ProducerSlot) == 128, "update docs/protocol.md and the layout version");
static_assert(offsetof(ProducerSlot, generation) == 4);
static_assert(offsetof(ProducerSlot, claim) == 8);
static_assert(offsetof(ProducerSlot, claim_pos) == 16);
static_assert(offsetof(ProducerSlot, frame_len) == 24);
static_assert(offsetof(ProducerSlot, fills) == 32);
static_assert(kProducerTableOffset >= sizeof(DataHeader));
static_assert(kProducerTableOffset + kProducerSlots * sizeof(ProducerSlot) <= kRingOffset);

// Daemon mode (4.0): the daemon's own record of one producer grant, in the control
// segment (written by the daemon only; clients map it read-only). Entry k <
// kProducerSlots: multi-producer table entry k; entry kProducerSlots: the single
// producer. The daemon decides liveness, takeover and padding from these records
// only, never from a pid or token read from the data segment (publishers write it).
struct ProducerGrant {
  uint32_t token;  // 0  the owner value the daemon wrote into the data segment; 0 = no grant
  uint32_t pid;    // 4  the grantee's SO_PEERCRED pid (the daemon's pid namespace)
  uint64_t ident;  // 8  the grantee's process identity: the pidfs inode of its pidfd
                   //    (unique for the boot), or 2^63 | its start time (/proc/PID/stat
                   //    field 22) without pidfs; a pid reused by another process differs
};
static_assert(sizeof(ProducerGrant) == 16, "update docs/protocol.md and the layout version");
static_assert(offsetof(ProducerGrant, pid) == 4);
static_assert(offsetof(ProducerGrant, ident) == 8);
inline constexpr uint32_t kProducerGrants = kProducerSlots + 1;
inline constexpr uint32_t kSingleProducerGrant = kProducerSlots;
inline constexpr size_t kProducerGrantTableSize = 1024;  // 33 x 16 bytes, rest reserved
static_assert(kProducerGrants * sizeof(ProducerGrant) <= kProducerGrantTableSize);
// In the same table, after the records (4.0, bytes that were reserved and zero):
// for grant k, the client's 64-bit request token (a resent `producer` request gets
// grant k back) and the grantee's SO_PEERCRED uid (per-uid producer quotas).
inline constexpr size_t kProducerRequestTokensOffset = kProducerGrants * sizeof(ProducerGrant);  // 528
inline constexpr size_t kProducerGrantUidsOffset =
    kProducerRequestTokensOffset + kProducerGrants * sizeof(uint64_t);  // 792
static_assert(kProducerGrantUidsOffset + kProducerGrants * sizeof(uint32_t) <= kProducerGrantTableSize);
// Daemon-chosen owner tokens have this bit set: a token is never a pid (pids are
// below 2^22) and never carries kReclaimBit (bit 31).
inline constexpr uint32_t kTokenBit = 0x4000'0000u;

inline constexpr uint32_t kDefaultSlots = 64;

constexpr size_t data_segment_size(uint64_t capacity) { return kRingOffset + capacity; }
// Control segment: header, the cursor slots, then the producer grant table (4.0).
constexpr size_t control_segment_size(uint32_t slots) {
  return sizeof(ControlHeader) + size_t(slots) * sizeof(CursorSlot) + kProducerGrantTableSize;
}

}  // namespace shmbus::shm
