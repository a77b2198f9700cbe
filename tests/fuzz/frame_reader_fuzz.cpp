// libFuzzer target over the subscriber's view of a ring: the input is the bytes a
// (buggy or hostile) producer left in a 4 KiB ring. RingReader::poll must validate
// every frame (docs/protocol.md, "Reader validation") and either hand out a view
// that lies inside the ring or say corrupt/empty; MessageReader must read any
// payload as Cap'n Proto within its limits or refuse it. Never a crash, an
// out-of-bounds read or a hang.
// Built and run by tests/fuzz/run.sh (clang, -fsanitize=fuzzer,address,undefined);
// tests/fuzz/fuzz_replay_test.cpp replays the corpus and crashes/frames/ with gcc.
#include <capnp/any.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

#include "shmbus/message.hpp"
#include "shmbus/shm/ring.hpp"
#include "shmbus/subscriber.hpp"

namespace {
constexpr uint64_t kCap = 4096;
constexpr uint32_t kSlots = 2;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shmbus;
  alignas(64) static std::byte dseg[sizeof(shm::DataHeader) + kCap];
  alignas(64) static std::byte cseg[sizeof(shm::ControlHeader) + kSlots * sizeof(shm::CursorSlot)];
  std::memset(dseg, 0, sizeof dseg);
  std::memset(cseg, 0, sizeof cseg);
  auto* d = reinterpret_cast<shm::DataHeader*>(dseg);
  auto* c = reinterpret_cast<shm::ControlHeader*>(cseg);
  shm::init_segments(d, c, kCap, kSlots, 0, shm::kPolicyBlock, 0, 0, kCap / 4, 1);
  shm::RingRefs r;
  r.data = d;
  r.ring = dseg + sizeof(shm::DataHeader);
  r.ctl = c;
  r.slots = reinterpret_cast<shm::CursorSlot*>(cseg + sizeof(shm::ControlHeader));
  r.wake = &c->wake;
  r.capacity = kCap;
  r.slot_count = kSlots;
  if (size) std::memcpy(r.ring, data, size < kCap ? size : kCap);  // data may be null when size is 0

  shm::RingReader rd;
  if (!rd.join(r, 1, /*tethered=*/true)) __builtin_trap();
  const std::byte* lo = r.ring;
  const std::byte* hi = r.ring + kCap;
  // What poll() must hold for every frame it returns (docs/protocol.md, "Reader
  // validation"); a breach is a bug, reported by trapping so libFuzzer saves the input.
  //
  // Stale laps, by design not detectable here: a tethered reader trusts its own
  // cursor. It needs no tail, lap counter or sequence check because the producer never
  // overwrites what it has not released and keeps the zero-ahead invariant, so the
  // word after the last committed frame is 0 (docs/protocol.md, "The zero-ahead
  // invariant"). A ring image full of well-formed data frames (stale or hostile: a
  // producer may write any bytes) therefore reads as an endless stream of valid frames,
  // exactly like a producer that keeps publishing; returning ok lap after lap is the
  // specified outcome, not a failure. What the protocol does bound, and what is checked
  // below, is each step: one poll skips at most one capacity of padding (more is
  // `corrupt`), and each returned frame is a validated data frame inside the ring.
  // The loop stops after 1024 polls (more than 4 KiB can hold at 48 bytes a frame,
  // so 12+ laps) only to keep each input fast.
  uint64_t prev = 0;  // the reader joined at tail_pos 0
  for (int i = 0; i < 1024; ++i) {
    shm::FrameView f;
    if (rd.poll(f) != shm::RingStatus::ok) return 0;
    const uint64_t len = f.next - f.pos;
    if (f.pos < prev || f.pos - prev > kCap) __builtin_trap();  // more than a lap of padding skipped
    if (len < shm::kFrameHeaderSize || (len & 7) || (f.pos & (kCap - 1)) + len > kCap)
      __builtin_trap();  // not a valid data frame length
    if (reinterpret_cast<const std::byte*>(f.hdr) != lo + (f.pos & (kCap - 1))) __builtin_trap();
    if (f.payload_len > len - shm::kFrameHeaderSize) __builtin_trap();
    if (f.payload < lo || f.payload + f.payload_len > hi) __builtin_trap();  // outside the ring
    View v(f);
    MessageReader m(v);
    if (m) {
      try {
        (void)m.reader().getRoot<capnp::AnyPointer>().targetSize();
      } catch (const kj::Exception&) {
        // Refused within the limits: what a hostile message must get.
      }
    }
    rd.release_to(f.next);
    prev = f.next;
  }
  return 0;
}
