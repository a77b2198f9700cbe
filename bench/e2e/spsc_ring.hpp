// The floor for a same-host byte ring: a minimal hand-written single-producer /
// single-consumer ring of length-prefixed records, in memory shared by two
// processes. It is the honest best we can write in a page of code, with none of
// shmbus's features (no frame header, no multiple subscribers, no back-pressure
// policy, no futex, no crash recovery):
//  * head (producer) and tail (consumer) on their own lines, two lines apart;
//  * each side caches the other's index and re-reads it only when it must;
//  * the consumer publishes its tail once per snapshot of the head (batched),
//    the producer publishes its head once per record (so latency is not hurt);
//  * records are 8-byte aligned: [u64 length][payload]; a length of ~0 marks the
//    unused end of the lap (the record restarts at offset 0).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shmbus::bench {

struct alignas(128) SpscIndex {
  std::atomic<uint64_t> value{0};
  char pad[128 - sizeof(std::atomic<uint64_t>)];
};

struct SpscShared {
  SpscIndex head;  // written by the producer: bytes published
  SpscIndex tail;  // written by the consumer: bytes consumed
};

inline constexpr uint64_t kSpscWrap = ~uint64_t(0);

class SpscProducer {
 public:
  SpscProducer(SpscShared* s, std::byte* ring, uint64_t capacity) : s_(s), ring_(ring), cap_(capacity) {}

  // Room for `len` payload bytes; spins while the ring is full.
  std::byte* claim(uint32_t len) {
    rec_ = (8 + uint64_t(len) + 7) & ~uint64_t(7);
    uint64_t off = head_ & (cap_ - 1);
    uint64_t pad = off + rec_ > cap_ ? cap_ - off : 0;
    while (head_ + pad + rec_ - cached_tail_ > cap_) {
      // SYNC(spsc.tail) acquire: the consumer is done with the bytes below tail.
      cached_tail_ = s_->tail.value.load(std::memory_order_acquire);
      if (head_ + pad + rec_ - cached_tail_ > cap_) __builtin_ia32_pause();
    }
    if (pad) {
      *reinterpret_cast<uint64_t*>(ring_ + off) = kSpscWrap;
      head_ += pad;
      off = 0;
    }
    *reinterpret_cast<uint64_t*>(ring_ + off) = len;
    return ring_ + off + 8;
  }
  void commit() {
    head_ += rec_;
    // SYNC(spsc.head) release: publishes the record; pairs with poll().
    s_->head.value.store(head_, std::memory_order_release);
  }

 private:
  SpscShared* s_;
  std::byte* ring_;
  uint64_t cap_;
  uint64_t head_ = 0;
  uint64_t cached_tail_ = 0;
  uint64_t rec_ = 0;
};

class SpscConsumer {
 public:
  SpscConsumer(SpscShared* s, std::byte* ring, uint64_t capacity) : s_(s), ring_(ring), cap_(capacity) {}

  // Next record or nullptr; *len receives its payload length. The record stays
  // valid until release().
  const std::byte* poll(uint32_t* len) {
    for (;;) {
      if (read_ == cached_head_) {
        if (published_ != read_) {
          // SYNC(spsc.tail) release: our reads of the records below read_ are done.
          s_->tail.value.store(read_, std::memory_order_release);
          published_ = read_;
        }
        // SYNC(spsc.head) acquire: records below head are complete.
        cached_head_ = s_->head.value.load(std::memory_order_acquire);
        if (read_ == cached_head_) return nullptr;
      }
      uint64_t off = read_ & (cap_ - 1);
      uint64_t n = *reinterpret_cast<const uint64_t*>(ring_ + off);
      if (n == kSpscWrap) {
        read_ += cap_ - off;
        continue;
      }
      *len = uint32_t(n);
      rec_ = (8 + n + 7) & ~uint64_t(7);
      return ring_ + off + 8;
    }
  }
  void release() { read_ += rec_; }

 private:
  SpscShared* s_;
  const std::byte* ring_;
  uint64_t cap_;
  uint64_t read_ = 0;
  uint64_t cached_head_ = 0;
  uint64_t published_ = 0;
  uint64_t rec_ = 0;
};

}  // namespace shmbus::bench
