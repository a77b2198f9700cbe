// Threaded stress scaffolding: producer and subscriber loops over the BlobCodec
// stream, each reporting "" or what went wrong (Catch2 assertions stay on the
// main thread). Every wait is bounded; a failing thread raises `abort` so the
// others stop instead of waiting for it.
#pragma once

#include <sched.h>
#include <time.h>

#include <atomic>
#include <string>

#include "../multiproc/blob_codec.hpp"

namespace shmbus::test {

struct StressResult {
  std::string error;
  uint64_t received = 0;
  uint64_t waits = 0;
  uint64_t last_frame_seq = 0;
  std::vector<uint64_t> per_producer;
};

inline SubscriberOptions waiting(WaitStrategy w) {
  SubscriberOptions o;
  o.wait = w;
  return o;
}

struct ProducerPlan {
  uint32_t producer = 0;
  uint64_t count = 0;
  uint64_t burst = 0;  // 0: no bursts; else bursts of 1..burst then a random gap
  bool ack = false;    // after a burst, wait until every cursor consumed it
  uint64_t seed = 1;
};

// Publishes plan.count messages and an end marker; retries when back-pressured.
inline std::string produce(Publisher& pub, const BlobCodec& codec, const ProducerPlan& plan,
                           std::atomic<bool>& abort) {
  Rng rng(plan.seed * 31 + plan.producer);
  uint64_t in_burst = 0, burst_len = plan.burst ? 1 + rng.next() % plan.burst : 0;
  for (uint64_t seq = 1; seq <= plan.count; ++seq) {
    for (;;) {
      if (abort.load(std::memory_order_relaxed)) return "";
      Status s = codec.publish(pub, plan.producer, seq);
      if (s == Status::ok) break;
      if (s != Status::back_pressured) return std::string("publish: ") + to_string(s);
    }
    if (plan.burst && ++in_burst == burst_len) {
      in_burst = 0;
      burst_len = 1 + rng.next() % plan.burst;
      if (plan.ack) {
        const shm::RingRefs& r = pub.refs();
        const uint64_t tail = shm::aref(r.data->tail_pos).load(std::memory_order_acquire);
        const uint64_t deadline = shm::monotonic_ns() + 30'000'000'000ull;
        while (shm::min_live_cursor(r, tail) < tail) {
          if (abort.load(std::memory_order_relaxed)) return "";
          if (shm::monotonic_ns() > deadline) return "subscribers did not consume a burst in 30 s";
          sched_yield();
        }
      }
      random_gap(rng);
    }
  }
  for (;;) {
    if (abort.load(std::memory_order_relaxed)) return "";
    Status s = codec.publish_end(pub, plan.producer, plan.count);
    if (s == Status::ok) break;
    if (s != Status::back_pressured) return std::string("end marker: ") + to_string(s);
  }
  if (pub.stats().builder_fallbacks != 0) return "a message outgrew its claim";
  return "";
}

inline void finish(StressResult& res, const StreamCheck& chk, uint32_t producers) {
  res.received = chk.total();
  res.last_frame_seq = chk.last_frame_seq();
  for (uint32_t p = 0; p < producers; ++p) res.per_producer.push_back(chk.count(p));
}

// Library subscriber: poll, release in batches, poll_wait with a watchdog.
inline StressResult consume(Subscriber& sub, const BlobCodec& codec, StreamCheck::Options so, uint64_t batch,
                            std::atomic<bool>& abort, int64_t timeout_ns = 10'000'000'000) {
  StressResult res;
  StreamCheck chk(codec, so);
  uint64_t held = 0;
  View v;
  while (chk.ends() < so.producers) {
    if (abort.load(std::memory_order_relaxed)) return res;
    Status s = sub.poll(v);
    if (s == Status::empty) {
      if (held) sub.release_all();
      held = 0;
      s = sub.poll_wait(v, timeout_ns);
      if (s == Status::timed_out) {
        res.error = "poll_wait timed out with " + std::to_string(chk.total()) + " received";
        break;
      }
    }
    if (s != Status::ok) {
      res.error = std::string("poll: ") + to_string(s);
      break;
    }
    res.error = chk.on_frame(v);
    if (!res.error.empty()) break;
    if (++held >= batch) {
      sub.release_all();
      held = 0;
    }
  }
  sub.release_all();
  res.waits = sub.stats().waits;
  finish(res, chk, so.producers);
  if (!res.error.empty()) abort.store(true);
  return res;
}

// Bare ring reader sleeping on the futex with a long timeout: a lost wake-up is
// a failure here, not a delay.
inline StressResult consume_strict(shm::RingReader& r, const BlobCodec& codec, StreamCheck::Options so,
                                   std::atomic<bool>& abort, int64_t timeout_ns = 10'000'000'000) {
  StressResult res;
  StreamCheck chk(codec, so);
  while (chk.ends() < so.producers && res.error.empty()) {
    if (abort.load(std::memory_order_relaxed)) break;
    shm::FrameView f;
    shm::RingStatus s = r.poll(f);
    if (s == shm::RingStatus::empty) {
      r.release_all();
      ++res.waits;
      const uint64_t deadline = shm::monotonic_ns() + uint64_t(timeout_ns);
      for (;;) {
        uint64_t now = shm::monotonic_ns();
        if (now >= deadline) {
          res.error = "futex wait timed out with " + std::to_string(chk.total()) +
                      " received; data present now: " + std::to_string(int(r.has_data()));
          break;
        }
        if (r.wait(int64_t(deadline - now))) {
          // Data found only once the wait ran out: the wake-up for it was lost.
          if (shm::monotonic_ns() >= deadline)
            res.error = "data present only when the futex wait timed out, with " +
                        std::to_string(chk.total()) + " received (lost wake-up)";
          break;
        }
      }
      continue;
    }
    if (s != shm::RingStatus::ok) {
      res.error = "ring poll: corrupt frame";
      break;
    }
    res.error = chk.on_frame(View(f));
    r.release_all();
  }
  finish(res, chk, so.producers);
  if (!res.error.empty()) abort.store(true);
  return res;
}

}  // namespace shmbus::test
