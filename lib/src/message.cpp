#include "shmbus/message.hpp"

#include <cstring>

namespace shmbus {

kj::ArrayPtr<capnp::word> RingMessageBuilder::allocateSegment(uint minimumSize) {
  if (!first_given_) {
    first_given_ = true;
    if (first_.size() >= minimumSize && first_.size() > 0) return first_;
  }
  // Outgrew the ring claim: a zeroed heap segment (commit() copies the message flat).
  size_t n = minimumSize < 1024 ? 1024 : minimumSize;
  auto seg = kj::heapArray<capnp::word>(n);
  std::memset(seg.begin(), 0, n * sizeof(capnp::word));
  kj::ArrayPtr<capnp::word> out = seg;
  extra_.add(kj::mv(seg));
  return out;
}

MessageClaim::MessageClaim(Publisher& pub, uint32_t max_bytes) : pub_(pub) {
  if (max_bytes < 16) max_bytes = 16;
  ClaimView c;
  status_ = pub_.claim(max_bytes, c);
  if (status_ != Status::ok) return;
  ring_ = c.data;
  size_ = c.size;
  // Reserve the 8-byte segment table; the rest is the builder's first segment.
  auto* words = reinterpret_cast<capnp::word*>(c.data + 8);
  builder_.emplace(kj::arrayPtr(words, (c.size - 8) / sizeof(capnp::word)));
}

MessageClaim::~MessageClaim() { abort(); }

void MessageClaim::abort() {
  if (!done_ && status_ == Status::ok && builder_) pub_.abort();
  done_ = true;
  builder_.reset();
}

Status MessageClaim::commit(uint64_t message_id, uint64_t schema_id) {
  if (done_ || status_ != Status::ok || !builder_) return status_ == Status::ok ? Status::closed : status_;
  done_ = true;
  auto segs = builder_->getSegmentsForOutput();
  const auto* first = reinterpret_cast<const capnp::word*>(ring_ + 8);
  if (segs.size() == 1 && segs[0].begin() == first) {
    // In place: write the segment table now that the size is known.
    uint32_t table[2] = {0, uint32_t(segs[0].size())};
    std::memcpy(ring_, table, sizeof(table));
    uint32_t used = uint32_t(8 + segs[0].size() * sizeof(capnp::word));
    builder_.reset();
    return pub_.commit_clean(used, message_id, schema_id);
  }
  // Fallback: the message spilled into heap segments. Flatten and copy.
  fell_back_ = true;
  ++pub_.mutable_stats().builder_fallbacks;
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(segs);
  auto bytes = flat.asBytes();
  builder_.reset();
  if (bytes.size() <= size_) {
    std::memcpy(ring_, bytes.begin(), bytes.size());
    return pub_.commit(uint32_t(bytes.size()), message_id, schema_id);
  }
  pub_.abort();
  return pub_.offer(bytes.begin(), bytes.size(), message_id, schema_id);
}

Status publish_copy(Publisher& pub, capnp::MessageBuilder& msg, uint64_t message_id, uint64_t schema_id) {
  auto segs = msg.getSegmentsForOutput();
  size_t words = capnp::computeSerializedSizeInWords(segs);
  size_t bytes = words * sizeof(capnp::word);
  if (bytes > pub.max_payload()) return Status::too_large;
  ClaimView c;
  Status s = pub.claim(uint32_t(bytes), c);
  if (s != Status::ok) return s;
  // Write the flat form straight into the claim: table, then each segment.
  auto* out = reinterpret_cast<capnp::word*>(c.data);
  auto* table = reinterpret_cast<uint32_t*>(out);
  table[0] = uint32_t(segs.size() - 1);
  for (size_t i = 0; i < segs.size(); ++i) table[1 + i] = uint32_t(segs[i].size());
  size_t table_words = (segs.size() + 2) / 2;  // 4 + 4n bytes rounded up to words (pad is zero)
  capnp::word* p = out + table_words;
  for (auto seg : segs) {
    std::memcpy(p, seg.begin(), seg.size() * sizeof(capnp::word));
    p += seg.size();
  }
  return pub.commit(uint32_t(bytes), message_id, schema_id);
}

MessageReader::MessageReader(const View& v, uint64_t traversal_limit_words, int nesting_limit) {
  if (!v || (v.size() & 7) || v.size() < 8) return;
  capnp::ReaderOptions o;
  const size_t words = v.size() / sizeof(capnp::word);
  // Bound the work a hostile message can cause: by default a few times its size.
  o.traversalLimitInWords = traversal_limit_words ? traversal_limit_words : words * 8 + 64;
  o.nestingLimit = nesting_limit;
  try {
    reader_.emplace(kj::arrayPtr(reinterpret_cast<const capnp::word*>(v.data()), words), o);
  } catch (...) {
    reader_.reset();
  }
}

const void* MessageReader::segment0() const {
  if (!reader_) return nullptr;
  return const_cast<capnp::FlatArrayMessageReader&>(*reader_).getSegment(0).begin();
}

}  // namespace shmbus
