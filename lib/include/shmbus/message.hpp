// Cap'n Proto over ring memory, both ways without a copy.
//
// Publishing in place:
//   shmbus::MessageClaim m(pub, 256);          // claims up to 256 payload bytes
//   if (!m) { /* m.status(): back_pressured, too_large ... */ }
//   auto q = m.init_root<Quote>();             // builder's first segment = ring memory
//   q.setPrice(...);
//   shmbus::Status s = m.commit();
//
// The serialized form is the standard flat Cap'n Proto message: an 8-byte segment
// table followed by the segment. The table's 8 bytes are reserved at the start of
// the claim and written at commit, when the size is known. A message that
// outgrows its claim spills into heap segments; commit then copies it flat into
// the ring (claiming again if needed) and counts a builder fallback.
//
// Reading in place:
//   shmbus::MessageReader r(view);             // no copy: points into the ring
//   if (!r) { /* malformed segment table */ }
//   Quote::Reader q = r.root<Quote>();
// The reader applies traversal and nesting limits (ring bytes are untrusted) and
// never follows a pointer outside the frame's payload.
#pragma once

#include <capnp/generated-header-support.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/vector.h>

#include <optional>

#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus {

// A MessageBuilder whose first segment is caller-provided zeroed memory; further
// segments (only when the message outgrows it) come from the heap.
class RingMessageBuilder final : public capnp::MessageBuilder {
 public:
  explicit RingMessageBuilder(kj::ArrayPtr<capnp::word> first) : first_(first) {}
  ~RingMessageBuilder() noexcept(false) override = default;
  kj::ArrayPtr<capnp::word> allocateSegment(uint minimumSize) override;
  bool first_only() const { return extra_.size() == 0; }
  const capnp::word* first_begin() const { return first_.begin(); }

 private:
  kj::ArrayPtr<capnp::word> first_;
  bool first_given_ = false;
  kj::Vector<kj::Array<capnp::word>> extra_;
};

class MessageClaim {
 public:
  MessageClaim(Publisher& pub, uint32_t max_bytes);
  MessageClaim(const MessageClaim&) = delete;
  MessageClaim& operator=(const MessageClaim&) = delete;
  ~MessageClaim();

  explicit operator bool() const { return status_ == Status::ok && builder_.has_value(); }
  Status status() const { return status_; }
  capnp::MessageBuilder& builder() { return *builder_; }
  template <class T>
  typename T::Builder init_root() {
    return builder_->initRoot<T>();
  }
  // Publishes. schema_id 0 takes the root's type id when init_root<T> was used via
  // commit<T>().
  Status commit(uint64_t message_id = 0, uint64_t schema_id = 0);
  template <class T>
  Status commit_as(uint64_t message_id = 0) {
    return commit(message_id, capnp::typeId<T>());
  }
  void abort();
  // True once commit() had to copy (message larger than the claim).
  bool fell_back() const { return fell_back_; }
  // The builder's first segment (for tests: it must be ring memory).
  const std::byte* ring_memory() const { return ring_; }

 private:
  Publisher& pub_;
  Status status_ = Status::ok;
  std::optional<RingMessageBuilder> builder_;
  std::byte* ring_ = nullptr;
  uint32_t size_ = 0;
  bool done_ = false;
  bool fell_back_ = false;
};

// Copy path: publishes a message built anywhere (one flat copy into the ring).
Status publish_copy(Publisher& pub, capnp::MessageBuilder& msg, uint64_t message_id = 0,
                    uint64_t schema_id = 0);

// Zero-copy reader over a View's payload.
class MessageReader {
 public:
  explicit MessageReader(const View& v, uint64_t traversal_limit_words = 0, int nesting_limit = 64);
  explicit operator bool() const { return reader_.has_value(); }
  // Where the reader's first segment lives (for tests: inside the ring mapping).
  const void* segment0() const;
  template <class T>
  typename T::Reader root() {
    return reader_->getRoot<T>();
  }
  capnp::MessageReader& reader() { return *reader_; }

 private:
  std::optional<capnp::FlatArrayMessageReader> reader_;
};

// Reads the root of `v` as T and calls f(T::Reader). Turns Cap'n Proto decoding
// errors (kj::Exception) into Status::malformed. Never throws.
template <class T, class F>
Status read_message(const View& v, F&& f, uint64_t traversal_limit_words = 0) noexcept {
  try {
    MessageReader r(v, traversal_limit_words);
    if (!r) return Status::malformed;
    f(r.root<T>());
    return Status::ok;
  } catch (...) {
    return Status::malformed;
  }
}

}  // namespace shmbus
