// shmbus::Publisher — writes frames into one partition ring.
//
// Zero copy: claim() hands out zeroed ring memory; build the message there and
// commit(). For Cap'n Proto, MessageClaim (message.hpp) wraps this.
// Copy path: offer(bytes).
//
// Contract: one thread at a time per Publisher; at most one open claim. Hot-path
// calls return Status and never throw or allocate (except the counted Cap'n Proto
// fallback when a message outgrows its claim).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "shmbus/bus.hpp"
#include "shmbus/error.hpp"
#include "shmbus/shm/ring.hpp"

namespace shmbus {

struct PublishStats {
  uint64_t published = 0;
  uint64_t back_pressured = 0;     // claims that found the ring full (policy fail or timeout)
  uint64_t blocked_waits = 0;      // times a claim had to wait for space
  uint64_t builder_fallbacks = 0;  // Cap'n Proto messages that outgrew their claim (copied)
  uint64_t reclaimed_cursors = 0;  // dead subscriber slots reclaimed (direct mode)
};

// An open claim: `data` is zeroed ring memory of `size` bytes, 8-byte aligned.
struct ClaimView {
  std::byte* data = nullptr;
  uint32_t size = 0;
  uint64_t sequence = 0;
  explicit operator bool() const { return data != nullptr; }
};

// An open multi-frame claim (claim_n): `count` frames, the payload room of frame
// i is data(i), zeroed ring memory of `size` bytes, 8-byte aligned. Frame i
// gets sequence `sequence + i`.
struct BatchView {
  std::byte* base = nullptr;
  uint32_t count = 0;
  uint32_t size = 0;
  uint32_t stride = 0;  // bytes from one frame's payload to the next
  uint64_t sequence = 0;
  std::byte* data(uint32_t i) const { return base + size_t(i) * stride; }
  explicit operator bool() const { return base != nullptr; }
};

class Publisher {
 public:
  Publisher(std::shared_ptr<PartitionMapping> m, const PublisherOptions& opts);
  Publisher(Publisher&&) noexcept;
  Publisher& operator=(Publisher&&) noexcept;
  ~Publisher();

  // Reserves room for `max_bytes` of payload. Applies the topic's policy when the
  // ring is full: `fail` returns back_pressured at once, `block` waits up to
  // block_timeout_ns. Never throws.
  Status claim(uint32_t max_bytes, ClaimView& out);
  // Like claim() but never waits.
  Status try_claim(uint32_t max_bytes, ClaimView& out);
  // Publishes the open claim with `used` payload bytes (<= out.size).
  Status commit(uint32_t used, uint64_t message_id = 0, uint64_t schema_id = 0);
  // Same, and promises the claim's bytes past `used` were never written.
  Status commit_clean(uint32_t used, uint64_t message_id, uint64_t schema_id);
  // Drops the open claim or batch (readers skip it).
  void abort();

  // Multi-frame claim: `n` frames of `max_bytes` payload each, taken as one ring
  // claim (one back-pressure wait, one multi-producer CAS), built in place, then
  // published together by commit_n: readers see none of them before and all of
  // them after. Same policy and blocking as claim(); too_large when one frame
  // exceeds max_payload() or the n frames could never fit the ring (n * frame
  // length > about half the capacity). An open claim or batch is dropped first.
  Status claim_n(uint32_t n, uint32_t max_bytes, BatchView& out);
  Status try_claim_n(uint32_t n, uint32_t max_bytes, BatchView& out);
  // Publishes frames 0..k-1 of the open batch (k <= its count; k 0 aborts it):
  // frame i with used[i] payload bytes and message id message_ids[i] (null: 0).
  // One timestamp for the whole batch. The unused frames after k are skipped by
  // readers (one padding frame; single-producer: given back). A used[i] past the
  // frame's size aborts the batch (too_large). `clean`: as commit_clean, for every
  // frame (bytes past used[i] never written).
  Status commit_n(uint32_t k, const uint32_t* used, const uint64_t* message_ids = nullptr,
                  uint64_t schema_id = 0, bool clean = false);
  bool has_batch() const { return batch_.active(); }
  // The open batch as claim_n returned it (empty when none is open).
  BatchView batch_view() const {
    if (!batch_.active()) return {};
    return BatchView{batch_.payload(0), batch_.count, batch_.max_payload, batch_.frame_len, batch_.seq};
  }
  uint32_t batch_count() const { return batch_.count; }

  // Copy path: claim + memcpy + commit.
  Status offer(const void* data, size_t len, uint64_t message_id = 0, uint64_t schema_id = 0);
  // Publishes several messages; one wake-up check at the end. Returns how many
  // were published (stops at the first failure, whose status is in *last).
  size_t offer_batch(std::span<const std::span<const std::byte>> msgs, Status* last = nullptr);

  uint32_t max_payload() const { return w_.max_payload(); }
  bool has_claim() const { return claim_.active() || batch_.active(); }
  const PublishStats& stats() const { return stats_; }
  PublishStats& mutable_stats() { return stats_; }
  uint32_t partition() const;
  const shm::RingRefs& refs() const { return w_.refs(); }
  void close();

  // Ends a claim (claim, offer, offer_batch) blocked for space, or a wait_durable,
  // in another thread of this process at once: it returns Status::interrupted.
  // Raised while nothing waits, it ends the next such wait at once, one time (a
  // claim that finds space, or a wait_durable already satisfied, does not wait and
  // leaves it raised). Thread-safe, async-signal-safe.
  void interrupt() noexcept { intr_.raise(); }
  // Durable topics: waits until every frame of this partition with sequence <= seq
  // is durable per the topic's flush policy: ok, timed_out (timeout_ns < 0: no
  // limit), closed, or interrupted (interrupt()). The free shmbus::wait_durable
  // (shmbus/replay.hpp) is the same wait on a const publisher, without interrupt.
  Status wait_durable(uint64_t seq, int64_t timeout_ns);
  // Waits up to timeout_ns (<0: forever) until a claim of max_bytes would find
  // space, per the wait strategy: ok, back_pressured (timed out) or interrupted.
  // (A claim may still lose the space to another producer: claim again.)
  // `frames` > 1: until a claim_n of that many frames would find space.
  Status wait_space(uint32_t max_bytes, int64_t timeout_ns, uint32_t frames = 1);

 private:
  Status wait_for_space(uint32_t max_bytes, uint64_t deadline, uint32_t frames = 1);
  template <class Try>
  Status claim_blocking(uint32_t max_bytes, uint32_t frames, Try attempt);
  void drop_open();
  void reclaim_dead_cursors();
  // Daemon mode: maps the cursor pages the last limit refresh lacked (slow path).
  bool fetch_pages();
  void drop_pages();

  std::shared_ptr<PartitionMapping> m_;
  PublisherOptions opts_;
  shm::RingWriter w_;
  std::unique_ptr<shm::PageTable> pages_;  // daemon mode: cursor pages by slot (read-only)
  shm::Claim claim_;
  shm::ClaimBatch batch_;
  shm::FrameMeta meta_;
  PublishStats stats_;
  uint32_t policy_ = 0;
  bool claimed_sp_ = false;
  bool open_ = false;
  shm::Interrupt intr_;
};

}  // namespace shmbus
