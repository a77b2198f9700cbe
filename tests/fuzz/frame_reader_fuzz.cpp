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
  r.capacity = kCap;
  r.slot_count = kSlots;
  std::memcpy(r.ring, data, size < kCap ? size : kCap);

  shm::RingReader rd;
  if (!rd.join(r, 1, /*tethered=*/true)) __builtin_trap();
  const std::byte* lo = r.ring;
  const std::byte* hi = r.ring + kCap;
  // More polls than a 4 KiB ring can hold frames (8 bytes each at the least): a
  // reader that keeps returning frames past that is looping over stale laps.
  for (int i = 0; i < 1024; ++i) {
    shm::FrameView f;
    if (rd.poll(f) != shm::RingStatus::ok) return 0;
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
  }
  return 0;
}
