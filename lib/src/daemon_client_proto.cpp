// Control-protocol framing shared by the client and shmbusd: one SOCK_SEQPACKET
// packet = "SBC1" | u32 length | one flat Cap'n Proto message. See
// docs/control-protocol.md.
#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include "shmbus/daemon_client.hpp"

namespace shmbus::control {

std::vector<uint8_t> encode_frame(capnp::MessageBuilder& msg) {
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(msg);
  auto bytes = flat.asBytes();
  std::vector<uint8_t> out(kFrameHeader + bytes.size());
  uint32_t magic = kFrameMagic, len = uint32_t(bytes.size());
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &len, 4);
  std::memcpy(out.data() + kFrameHeader, bytes.begin(), bytes.size());
  return out;
}

bool decode_frame(std::span<const uint8_t> bytes, Decoded& out, std::string& err) {
  if (bytes.size() < kFrameHeader) {
    err = "frame shorter than its 8-byte header";
    return false;
  }
  if (bytes.size() > kMaxFrame) {
    err = "frame larger than " + std::to_string(kMaxFrame) + " bytes";
    return false;
  }
  uint32_t magic, len;
  std::memcpy(&magic, bytes.data(), 4);
  std::memcpy(&len, bytes.data() + 4, 4);
  if (magic != kFrameMagic) {
    err = "bad frame magic";
    return false;
  }
  if (len != bytes.size() - kFrameHeader) {
    err = "frame length field " + std::to_string(len) + " does not match the packet (" +
          std::to_string(bytes.size() - kFrameHeader) + " payload bytes)";
    return false;
  }
  if (len == 0 || len % 8) {
    err = "payload is not a whole number of 8-byte words";
    return false;
  }
  // Copy into word-aligned memory: the reader needs alignment, and the copy is
  // ours, so nothing the peer does later can change what we validated.
  out.words = kj::heapArray<capnp::word>(len / 8);
  std::memcpy(out.words.begin(), bytes.data() + kFrameHeader, len);
  try {
    capnp::ReaderOptions ro;
    ro.traversalLimitInWords = kTraversalLimitWords;
    ro.nestingLimit = kNestingLimit;
    // Checks the segment table against the buffer (throws on a lie).
    kj::ArrayPtr<const capnp::word> rest = out.words.asPtr();
    out.reader = std::make_unique<capnp::FlatArrayMessageReader>(rest, ro);
    if (out.reader->getEnd() != out.words.end()) {
      err = "trailing bytes after the message";
      out.reader.reset();
      return false;
    }
    // Walks every pointer once: bounds, traversal and nesting limits.
    auto root = out.reader->getRoot<capnp::AnyStruct>();
    (void)root.totalSize();
    // totalSize() consumed part of the traversal budget; give the caller a fresh one.
    out.reader = std::make_unique<capnp::FlatArrayMessageReader>(rest, ro);
  } catch (const kj::Exception& e) {
    err = std::string("malformed Cap'n Proto message: ") + e.getDescription().cStr();
    out.reader.reset();
    return false;
  } catch (const std::exception& e) {
    err = std::string("malformed message: ") + e.what();
    out.reader.reset();
    return false;
  }
  return true;
}

int send_packet(int fd, std::span<const uint8_t> bytes, std::span<const int> fds) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFds)];
  if (!fds.empty()) {
    if (fds.size() > size_t(kMaxFds)) return -EINVAL;
    std::memset(cbuf, 0, sizeof(cbuf));
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (n >= 0) return 0;
    if (errno == EINTR) continue;
    return -errno;
  }
}

long recv_packet(int fd, std::vector<uint8_t>& buf, std::vector<int>* fds, int timeout_ms) {
  if (timeout_ms >= 0) {
    pollfd p{fd, POLLIN, 0};
    for (;;) {
      int r = poll(&p, 1, timeout_ms);
      if (r > 0) break;
      if (r == 0) return -ETIMEDOUT;
      if (errno != EINTR) return -errno;
    }
  }
  buf.resize(kMaxFrame + 1);
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFds)];
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof(cbuf);
  ssize_t n;
  for (;;) {
    n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    if (errno == EINTR) continue;
    return -errno;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; ++i) {
      int f;
      std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (fds)
        fds->push_back(f);
      else
        close(f);
    }
  }
  if ((mh.msg_flags & MSG_TRUNC) || size_t(n) > kMaxFrame) {
    buf.clear();
    return -EMSGSIZE;
  }
  buf.resize(size_t(n));
  return n;
}

ErrorCode to_error_code(proto::ErrorCode c) {
  switch (c) {
    case proto::ErrorCode::INVALID_ARGUMENT: return ErrorCode::invalid_argument;
    case proto::ErrorCode::NOT_FOUND: return ErrorCode::not_found;
    case proto::ErrorCode::ALREADY_EXISTS: return ErrorCode::already_exists;
    case proto::ErrorCode::INCOMPATIBLE: return ErrorCode::incompatible;
    case proto::ErrorCode::PERMISSION_DENIED: return ErrorCode::permission_denied;
    case proto::ErrorCode::NO_SLOT: return ErrorCode::no_slot;
    case proto::ErrorCode::SYSTEM: return ErrorCode::system;
    case proto::ErrorCode::TIMED_OUT: return ErrorCode::timed_out;
    case proto::ErrorCode::TOO_LARGE: return ErrorCode::invalid_argument;
    case proto::ErrorCode::SHUTTING_DOWN: return ErrorCode::not_connected;
    default: return ErrorCode::protocol;
  }
}

proto::ErrorCode from_error_code(ErrorCode c) {
  switch (c) {
    case ErrorCode::invalid_argument: return proto::ErrorCode::INVALID_ARGUMENT;
    case ErrorCode::not_found: return proto::ErrorCode::NOT_FOUND;
    case ErrorCode::already_exists: return proto::ErrorCode::ALREADY_EXISTS;
    case ErrorCode::incompatible: return proto::ErrorCode::INCOMPATIBLE;
    case ErrorCode::permission_denied: return proto::ErrorCode::PERMISSION_DENIED;
    case ErrorCode::no_slot: return proto::ErrorCode::NO_SLOT;
    case ErrorCode::timed_out: return proto::ErrorCode::TIMED_OUT;
    case ErrorCode::protocol: return proto::ErrorCode::PROTOCOL;
    default: return proto::ErrorCode::SYSTEM;
  }
}

}  // namespace shmbus::control
