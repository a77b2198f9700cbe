// shmbus shared-memory layout. Normative spec: docs/protocol.md.
// Every byte that lives in shared memory is declared here, with fixed-width
// integers, explicit padding and offsets (never pointers). Changing a size or an
// offset means changing docs/protocol.md and kLayoutMajor/kLayoutMinor.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmbus::shm {

inline constexpr uint64_t kDataMagic = 0x3144'5355'424d'4853ULL;  // "SHMBUSD1" little-endian
inline constexpr uint64_t kCtlMagic = 0x3143'5355'424d'4853ULL;   // "SHMBUSC1"
inline constexpr uint32_t kLayoutMajor = 1;
inline constexpr uint32_t kLayoutMinor = 2;  // 1: producer table; 2: slot_hwm (cursor scans stop there)
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

// ProducerSlot::state (layout 1.1): multi-producer claim intents, so that a
// reclaimer can fill the claim of a dead producer with padding (P8).
inline constexpr uint32_t kProdFree = 0;      // pid == 0
inline constexpr uint32_t kProdIdle = 1;      // registered, no claim in flight
inline constexpr uint32_t kProdClaiming = 2;  // intent recorded; the tail CAS may have happened
inline constexpr uint32_t kProducerSlots = 32;

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
// Data segment: DataHeader (384 bytes) then `capacity` bytes of ring.
// Producers map it read-write, subscribers read-only.
struct DataHeader {
  // line 0: written once by the creator; layout_version written LAST (release) =
  // "segment ready". Readers wait for a non-zero version, then check it.
  uint64_t magic;            // 0
  uint32_t layout_version;   // 8   SYNC(data.ready) release by creator / acquire by openers
  uint32_t flags;            // 12  kFlagMultiProducer
  uint64_t capacity;         // 16  ring bytes, power of two, >= 4096
  uint64_t data_offset;      // 24  = sizeof(DataHeader)
  uint64_t schema_id;        // 32  root struct type id expected on this topic, 0 = any
  uint32_t policy;           // 40  kPolicy*
  uint32_t partition;        // 44
  uint64_t created_ns;       // 48  CLOCK_REALTIME at creation
  uint64_t max_payload;      // 56  largest payload a frame may carry
  uint8_t pad0[64];          // 64  line 1: keeps producer line away from line 0 prefetch
  // line 2: producer-written.
  uint64_t tail_pos;         // 128 next free ring position (claimed, not necessarily committed)
  uint64_t tail_seq;         // 136 next sequence number; {tail_pos, tail_seq} is one 16-byte CAS in MP mode
  uint64_t zero_mark;        // 144 ring bytes in [tail_pos, zero_mark) are zero
  uint32_t zero_lock;        // 152 MP: pid of the producer extending zero_mark, 0 = free
  uint32_t producer_pid;     // 156 SP: pid of the exclusive producer, 0 = none
  uint64_t backpressure_events;  // 160 times a producer found the ring full (approximate)
  uint64_t producer_heartbeat_ns;  // 168
  // 1.1: highest position a producer has started to zero (P2). Stored BEFORE the
  // zeroing, so an untethered reader that re-reads it after copying a frame knows
  // whether the copy may be torn (P9 in docs/memory-ordering.md).
  uint64_t zero_intent;      // 176 SYNC(zero_intent) relaxed + release fence / acquire fence + relaxed
  uint8_t pad2[72];          // 184 .. 255
  // line 4 (1.1): written by the archiver of a durable topic (daemon/spill), read
  // by producers waiting for durability acknowledgements (P10).
  uint64_t durable_seq;      // 256 every frame with sequence <= this is durable per the flush policy
  uint32_t durable_futex;    // 264 bumped (and woken if durable_waiters) when durable_seq grows
  uint32_t durable_waiters;  // 268 producers sleeping on durable_futex
  uint64_t archived_seq;     // 272 highest sequence written to the log (maybe not yet synced)
  uint64_t archived_pos;     // 280 ring position up to which frames are in the log
  uint32_t archiver_error;   // 288 errno of the failing log write/sync, 0 = healthy
  uint32_t archiver_pid;     // 292 pid of the process running the archiver, 0 = none
  uint64_t archiver_heartbeat_ns;  // 296 CLOCK_MONOTONIC, refreshed by the archiver loop
  uint8_t pad3[80];          // 304 .. 383 reserved
};
static_assert(sizeof(DataHeader) == 384, "update docs/protocol.md and the layout version");
static_assert(offsetof(DataHeader, layout_version) == 8);
static_assert(offsetof(DataHeader, capacity) == 16);
static_assert(offsetof(DataHeader, max_payload) == 56);
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

// ---------------------------------------------------------------------------
// Control segment: ControlHeader (384 bytes) then `slot_count` CursorSlots.
// Everyone who uses the partition maps it read-write. Subscribers write only
// their own slot (and the waiter counts).
struct ControlHeader {
  uint64_t magic;            // 0
  uint32_t layout_version;   // 8   SYNC(ctl.ready) written last by the creator
  uint32_t slot_count;       // 12
  uint64_t capacity;         // 16  copy of the data ring capacity (cross-check)
  uint32_t producer_slots;   // 24  (1.1) entries in the producer table, 0 = no table (1.0 segment)
  uint32_t slot_hwm;         // 28  (1.2) 1 + highest slot index ever joined; 0 = scan all (older segment)
  uint64_t producer_offset;  // 32  (1.1) byte offset of the producer table in this segment
  uint8_t pad0[88];          // 40 .. 127
  // line 2: "data available" wait word. Producers bump data_futex and FUTEX_WAKE
  // when data_waiters != 0; subscribers announce themselves in data_waiters.
  uint32_t data_futex;       // 128
  uint32_t data_waiters;     // 132
  uint8_t pad2[120];         // 136 .. 255
  // line 4: "space available" wait word, for producers blocked by back-pressure.
  uint32_t space_futex;      // 256
  uint32_t space_waiters;    // 260
  uint8_t pad4[120];         // 264 .. 383
};
static_assert(sizeof(ControlHeader) == 384, "update docs/protocol.md and the layout version");
static_assert(offsetof(ControlHeader, producer_slots) == 24);
static_assert(offsetof(ControlHeader, slot_hwm) == 28);
static_assert(offsetof(ControlHeader, producer_offset) == 32);
static_assert(offsetof(ControlHeader, data_futex) == 128);
static_assert(offsetof(ControlHeader, space_futex) == 256);

// One subscriber cursor. 128 bytes (two lines) so that neighbours do not share a
// line, even with adjacent-line prefetch.
struct CursorSlot {
  uint64_t position;         // 0  everything below is released. SYNC(cursor) release by subscriber
  uint32_t state;            // 8  kSlot*; FREE->JOINING by CAS
  uint32_t pid;              // 12 owner
  uint64_t heartbeat_ns;     // 16 CLOCK_MONOTONIC, refreshed by the owner while idle
  uint32_t flags;            // 24 kSlotTethered
  uint32_t generation;       // 28 bumped on every (re)use of the slot
  uint64_t name_hash;        // 32 durable subscriber name (0 = anonymous)
  uint8_t pad[88];           // 40 .. 127
};
static_assert(sizeof(CursorSlot) == 128, "update docs/protocol.md and the layout version");
static_assert(offsetof(CursorSlot, position) == 0);
static_assert(offsetof(CursorSlot, state) == 8);
static_assert(offsetof(CursorSlot, pid) == 12);
static_assert(offsetof(CursorSlot, heartbeat_ns) == 16);
static_assert(offsetof(CursorSlot, flags) == 24);
static_assert(offsetof(CursorSlot, name_hash) == 32);

// One multi-producer claim intent (layout 1.1). Written by its producer (and by a
// reclaimer once that producer is dead); 128 bytes so that producers do not share
// lines. The intent {claim_pos, claim_seq, frame_len} is stored before the tail CAS
// (P8), so a reclaimer that proves the owner dead knows where its claim lies.
struct ProducerSlot {
  uint32_t pid;              // 0  owner; registration CASes 0 -> pid
  uint32_t state;            // 4  kProd*; SYNC(prod.intent) release before the tail CAS
  uint64_t claim_pos;        // 8  tail position read for the claim (before any wrap pad)
  uint64_t claim_seq;        // 16 tail sequence read for the claim
  uint32_t frame_len;        // 24 claimed frame length (the wrap pad not included)
  uint32_t generation;       // 28 bumped on every registration
  uint64_t fills;            // 32 claims of this slot filled with padding by a reclaimer
  uint8_t pad[88];           // 40 .. 127
};
static_assert(sizeof(ProducerSlot) == 128, "update docs/protocol.md and the layout version");
static_assert(offsetof(ProducerSlot, state) == 4);
static_assert(offsetof(ProducerSlot, claim_pos) == 8);
static_assert(offsetof(ProducerSlot, claim_seq) == 16);
static_assert(offsetof(ProducerSlot, frame_len) == 24);
static_assert(offsetof(ProducerSlot, fills) == 32);

inline constexpr uint32_t kDefaultSlots = 64;

constexpr size_t data_segment_size(uint64_t capacity) { return sizeof(DataHeader) + capacity; }
// Control segment: header, cursor slots, then (1.1) the producer table.
constexpr size_t control_segment_size(uint32_t slots) {
  return sizeof(ControlHeader) + size_t(slots) * sizeof(CursorSlot) +
         size_t(kProducerSlots) * sizeof(ProducerSlot);
}

}  // namespace shmbus::shm
