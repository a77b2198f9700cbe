// The test message stream shared by the multi-process helper and the threaded
// stress tests: what producer p publishes as its message s is a pure function of
// (seed, p, s), so any receiver can check size, body and checksum on its own.
//
// Three ways to put a message on the bus, chosen by s % 4:
//   0  raw bytes through the copy path (Publisher::offer)
//   1  raw bytes written in place into a claim (Publisher::claim + commit)
//   2,3 a schema::Blob Cap'n Proto message built in place (MessageClaim)
// plus an end marker (raw, kEndMagic) that carries how many messages the producer
// published, so a receiver knows when it has seen everything.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "shmbus/shmbus.hpp"
#include "testmsg.capnp.h"
#include "../test_util.hpp"

namespace shmbus::test {

inline constexpr uint64_t kRawMagic = 0x3147534d57415253ull;  // "SRAWMSG1"
inline constexpr uint64_t kEndMagic = 0x31444e454d4d5453ull;  // "STMMEND1"

// Raw message layout (little-endian, 8-byte aligned), body follows.
struct RawHeader {
  uint64_t magic;
  uint64_t seq;
  uint32_t producer;
  uint32_t body_len;
  uint64_t checksum;
  uint64_t sent_ns;
};
static_assert(sizeof(RawHeader) == 40);

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

enum class Kinds { mixed, capnp, raw };

// Deterministic bodies: message (p, s) is a slice of one random pool.
class BlobCodec {
 public:
  BlobCodec(uint64_t seed, uint32_t max_body, Kinds kinds = Kinds::mixed)
      : seed_(seed), max_body_(max_body), kinds_(kinds), pool_(kPool + max_body),
        sums_(size_t(kOffsets) * max_body) {
    if (max_body == 0 || max_body > 60000) throw std::invalid_argument("max_body must be 1..60000");
    Rng r(seed ^ 0x5eed);
    for (auto& b : pool_) b = uint8_t(r.next() >> 24);
  }

  uint32_t max_body() const { return max_body_; }
  // Largest payload any message of this stream needs.
  uint32_t max_payload() const { return max_body_ + 64; }

  struct Msg {
    const uint8_t* body;
    uint32_t size;
    int kind;  // 0 offer, 1 raw in place, 2 capnp in place
    uint32_t off_index;
  };
  Msg message(uint32_t producer, uint64_t seq) const {
    uint64_t h = splitmix64(seed_ ^ (uint64_t(producer) << 40) ^ (seq * 0x2545f4914f6cdd1dull));
    uint32_t size = 1 + uint32_t(h % max_body_);
    uint32_t off = uint32_t((h >> 32) % kOffsets) * (kPool / kOffsets);
    int kind = 2;
    if (kinds_ == Kinds::raw)
      kind = int(seq & 1);
    else if (kinds_ == Kinds::mixed)
      kind = (seq & 3) < 2 ? int(seq & 3) : 2;
    return {pool_.data() + off, size, kind, off / (kPool / kOffsets)};
  }

  // Checksum of a message body as the producer sends it. Bodies repeat (a few
  // offsets times every size), so the producer's sums are cached; receivers
  // always hash what they received.
  uint64_t body_sum(const Msg& m) const {
    std::atomic<uint64_t>& c = sums_[size_t(m.off_index) * max_body_ + (m.size - 1)];
    uint64_t v = c.load(std::memory_order_relaxed);
    if (v == 0) {  // not known yet (or a sum that is really 0: recomputed each time)
      v = fnv1a(m.body, m.size);
      c.store(v, std::memory_order_relaxed);
    }
    return v;
  }

  // Publishes message (p, s) with the publisher's policy. Returns the claim or
  // offer status (ok, back_pressured, ...).
  Status publish(Publisher& pub, uint32_t producer, uint64_t seq) const {
    Msg m = message(producer, seq);
    const uint64_t sum = body_sum(m);
    if (m.kind == 2) {
      MessageClaim mc(pub, m.size + 64);
      if (!mc) return mc.status();
      check_zeroed(pub, mc.ring_memory(), m.size + 64);
      auto b = mc.init_root<schema::Blob>();
      b.setSeq(seq);
      b.setProducer(producer);
      b.setChecksum(sum);
      b.setSentNs(shm::monotonic_ns());
      auto body = b.initBody(m.size);
      std::memcpy(body.begin(), m.body, m.size);
      return mc.commit_as<schema::Blob>(seq);
    }
    RawHeader h{kRawMagic, seq, producer, m.size, sum, shm::monotonic_ns()};
    if (m.kind == 0) {
      uint8_t buf[sizeof(RawHeader) + 65536];
      std::memcpy(buf, &h, sizeof h);
      std::memcpy(buf + sizeof h, m.body, m.size);
      return pub.offer(buf, sizeof h + m.size, seq);
    }
    ClaimView c;
    Status s = pub.claim(uint32_t(sizeof h + m.size), c);
    if (s != Status::ok) return s;
    check_zeroed(pub, c.data, c.size);
    std::memcpy(c.data, &h, sizeof h);
    std::memcpy(c.data + sizeof h, m.body, m.size);
    return pub.commit_clean(uint32_t(sizeof h + m.size), seq, 0);
  }

  // The ring hands out zeroed memory (P2): Cap'n Proto builds on that promise.
  static void check_zeroed(Publisher& pub, const std::byte* p, size_t n) {
    const auto* w = reinterpret_cast<const uint64_t*>(p);
    uint64_t any = 0;
    for (size_t i = 0; i < n / 8; ++i) any |= w[i];
    if (any == 0) return;
    size_t i = 0;
    while (w[i] == 0) ++i;
    const shm::RingRefs& r = pub.refs();
    throw std::runtime_error(
        "claimed ring memory is not zero: ring offset " + std::to_string(p - r.ring) + " + " +
        std::to_string(i * 8) + " holds " + std::to_string(w[i]) + "; claim bytes " + std::to_string(n) +
        ", tail " + std::to_string(shm::aref(r.data->tail_pos).load(std::memory_order_acquire)) +
        ", zero_mark " + std::to_string(shm::aref(r.data->zero_mark).load(std::memory_order_acquire)));
  }

  Status publish_end(Publisher& pub, uint32_t producer, uint64_t published) const {
    RawHeader h{kEndMagic, published, producer, 0, 0, shm::monotonic_ns()};
    return pub.offer(&h, sizeof h);
  }

  // What a receiver learned from one frame.
  struct Decoded {
    bool end = false;
    uint32_t producer = 0;
    uint64_t seq = 0;
  };

  // Checks one received frame completely: framing, Cap'n Proto structure,
  // checksum of the body as received, and the body against what (p, s) must be.
  // Returns "" when intact, else what is wrong.
  std::string check(const View& v, Decoded& d) const {
    if (v.schema_id() == capnp::typeId<schema::Blob>()) {
      std::string err;
      Status st = read_message<schema::Blob>(v, [&](schema::Blob::Reader b) {
        d.seq = b.getSeq();
        d.producer = b.getProducer();
        auto body = b.getBody();
        err = check_body(d.producer, d.seq, body.begin(), body.size(), b.getChecksum(), 2);
      });
      if (st != Status::ok) return "Cap'n Proto frame does not decode: " + std::string(to_string(st));
      if (v.message_id() != d.seq) return "message id differs from the Blob seq";
      return err;
    }
    if (v.size() < sizeof(RawHeader)) return "raw frame shorter than its header: " + std::to_string(v.size());
    RawHeader h;
    std::memcpy(&h, v.data(), sizeof h);
    d.producer = h.producer;
    d.seq = h.seq;
    if (h.magic == kEndMagic) {
      d.end = true;
      return v.size() == sizeof h ? "" : "end marker with a body";
    }
    if (h.magic != kRawMagic) return "raw frame with a bad magic";
    if (v.size() != sizeof h + h.body_len) return "raw frame size differs from its header";
    if (v.message_id() != h.seq) return "message id differs from the raw seq";
    return check_body(h.producer, h.seq, reinterpret_cast<const uint8_t*>(v.data()) + sizeof h, h.body_len,
                      h.checksum, -1);
  }

 private:
  static constexpr uint32_t kPool = 1u << 16;
  static constexpr uint32_t kOffsets = 64;  // body start offsets: multiples of 1 KiB

  std::string check_body(uint32_t producer, uint64_t seq, const uint8_t* body, size_t n, uint64_t sum,
                         int kind) const {
    if (fnv1a(body, n) != sum)
      return "checksum mismatch at producer " + std::to_string(producer) + " seq " + std::to_string(seq);
    Msg m = message(producer, seq);
    if (kind >= 0 && m.kind != kind) return "message kind differs from the stream";
    if (kind < 0 && m.kind == 2) return "raw frame where the stream has a Cap'n Proto one";
    if (n != m.size || std::memcmp(body, m.body, n) != 0)
      return "body differs from the stream at producer " + std::to_string(producer) + " seq " +
             std::to_string(seq);
    return "";
  }

  uint64_t seed_;
  uint32_t max_body_;
  Kinds kinds_;
  std::vector<uint8_t> pool_;
  mutable std::vector<std::atomic<uint64_t>> sums_;
};

// Follows one subscriber's view of the partition: every frame intact, each
// producer's messages in order (dense unless the producer may drop), the
// partition sequence strictly increasing (dense when nothing can be dropped),
// and each producer's end marker matching what it received from that producer.
class StreamCheck {
 public:
  struct Options {
    uint32_t producers = 1;  // producer indices 0..producers-1
    bool dense_producer_seq = true;
    bool ordered_producers = false;  // takeover: producer index never goes down
  };
  StreamCheck(const BlobCodec& codec, Options o)
      : codec_(codec), o_(o), last_(o.producers, 0), count_(o.producers, 0), ended_(o.producers, 0) {}

  // "" when the frame is fine, else the first thing found wrong.
  std::string on_frame(const View& v) {
    BlobCodec::Decoded d;
    std::string err = codec_.check(v, d);
    if (!err.empty()) return err + " (frame seq " + std::to_string(v.sequence()) + ")";
    if (v.sequence() <= last_frame_seq_)
      return "partition sequence went from " + std::to_string(last_frame_seq_) + " to " +
             std::to_string(v.sequence());
    if (last_frame_seq_ != 0 && v.sequence() != last_frame_seq_ + 1)
      return "partition sequence skipped from " + std::to_string(last_frame_seq_) + " to " +
             std::to_string(v.sequence());
    last_frame_seq_ = v.sequence();
    if (d.producer >= o_.producers) return "unknown producer " + std::to_string(d.producer);
    const uint32_t p = d.producer;
    if (ended_[p]) return "message from producer " + std::to_string(p) + " after its end marker";
    if (o_.ordered_producers) {
      if (p < top_producer_) return "message from replaced producer " + std::to_string(p);
      top_producer_ = p;
    }
    if (d.end) {
      ended_[p] = 1;
      ++ends_;
      if (d.seq != count_[p])
        return "producer " + std::to_string(p) + " published " + std::to_string(d.seq) + " but " +
               std::to_string(count_[p]) + " arrived";
      return "";
    }
    if (d.seq <= last_[p])
      return "producer " + std::to_string(p) + " went back from seq " + std::to_string(last_[p]) + " to " +
             std::to_string(d.seq);
    if (o_.dense_producer_seq && d.seq != last_[p] + 1)
      return "producer " + std::to_string(p) + " skipped from seq " + std::to_string(last_[p]) + " to " +
             std::to_string(d.seq);
    last_[p] = d.seq;
    ++count_[p];
    ++total_;
    return "";
  }

  uint32_t ends() const { return ends_; }
  uint64_t total() const { return total_; }
  uint64_t count(uint32_t p) const { return count_[p]; }
  uint64_t last_seq(uint32_t p) const { return last_[p]; }
  uint64_t last_frame_seq() const { return last_frame_seq_; }

 private:
  const BlobCodec& codec_;
  Options o_;
  std::vector<uint64_t> last_, count_;
  std::vector<uint8_t> ended_;
  uint32_t ends_ = 0;
  uint32_t top_producer_ = 0;
  uint64_t total_ = 0;
  uint64_t last_frame_seq_ = 0;
};

}  // namespace shmbus::test
