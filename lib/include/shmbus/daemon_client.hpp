// shmbus::DaemonClient — the client side of the shmbusd control protocol
// (docs/control-protocol.md), and the SegmentProvider that maps segments the
// daemon hands out by SCM_RIGHTS.
//
//   auto bus = shmbus::Bus::connect();            // default socket, see default_socket_path()
//   bus.create_topic("md.quotes", {.capacity = 1 << 24});
//
// Contract: a DaemonClient may be used from any thread (calls are serialised by a
// mutex); every call may block up to Options::timeout_ms and throws shmbus::Error.
// If the daemon went away (restart), the next call reconnects transparently,
// retrying for up to Options::reconnect_ms. Segments already mapped stay valid
// across a daemon restart (the daemon re-attaches them, it never recreates them).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "shmbus/bus.hpp"
#include "shmbus/error.hpp"
#include "shmbus/segment.hpp"
#include "control.capnp.h"

namespace shmbus {

// Where clients and the daemon look by default, first match wins:
//   $SHMBUS_SOCKET; $XDG_RUNTIME_DIR/shmbus/shmbusd.sock; for root,
//   kSystemSocketPath; else /tmp/shmbus-$UID/shmbusd.sock.
// A system-wide daemon (run as root) serves kSystemSocketPath; other users reach it
// with SHMBUS_SOCKET=/run/shmbus/shmbusd.sock (or --socket).
inline constexpr const char* kSystemSocketPath = "/run/shmbus/shmbusd.sock";
std::string default_socket_path();

struct AccessSpec {
  std::vector<uint32_t> publish_uids, publish_gids, subscribe_uids, subscribe_gids;
};
inline constexpr uint32_t kAnyone = 0xFFFFFFFFu;

namespace control {

inline constexpr uint32_t kFrameMagic = 0x31434253u;  // "SBC1"
inline constexpr size_t kFrameHeader = 8;
inline constexpr size_t kMaxFrame = 256 * 1024;  // header + payload, one SOCK_SEQPACKET packet
inline constexpr uint64_t kTraversalLimitWords = kMaxFrame / 8;
inline constexpr int kNestingLimit = 16;
inline constexpr int kMaxFds = 4;

// Serialises `msg` into one frame (header + flat Cap'n Proto message).
std::vector<uint8_t> encode_frame(capnp::MessageBuilder& msg);

// A decoded frame: owns an aligned copy of the bytes and a reader with the limits above.
struct Decoded {
  kj::Array<capnp::word> words;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader;
};
// Validates the frame header and the Cap'n Proto segment table and walks the whole
// message (bounds, traversal and nesting limits). Never throws; on failure returns
// false and says why in `err`. Bytes from a peer are untrusted.
bool decode_frame(std::span<const uint8_t> bytes, Decoded& out, std::string& err);

// One packet with optional fds (SCM_RIGHTS). Retries EINTR. Returns 0 or -errno.
int send_packet(int fd, std::span<const uint8_t> bytes, std::span<const int> fds = {});
// Receives one packet into `buf` (resized to the packet). Waits up to timeout_ms
// (<0: forever). Returns bytes received, 0 on orderly close, or -errno
// (-ETIMEDOUT, -EMSGSIZE for a truncated packet). Received fds are appended to `fds`
// (close-on-exec).
long recv_packet(int fd, std::vector<uint8_t>& buf, std::vector<int>* fds, int timeout_ms);

ErrorCode to_error_code(proto::ErrorCode c);
proto::ErrorCode from_error_code(ErrorCode c);

}  // namespace control

class DaemonClient : public std::enable_shared_from_this<DaemonClient> {
 public:
  struct Options {
    std::string socket_path;   // empty: default_socket_path()
    int timeout_ms = 5000;     // one request/response round trip
    int reconnect_ms = 10000;  // how long a call retries while the daemon restarts
    // The server's uid is checked after connect (SO_PEERCRED): root or our own euid,
    // or this one (e.g. a dedicated service account); anything else is refused with
    // Error(permission_denied). Default: nobody else.
    uint32_t trusted_uid = 0;
  };

  // A response: its reader and the fds that came with it (closed on destruction
  // unless taken).
  struct Reply {
    control::Decoded msg;
    std::vector<int> fds;
    proto::Response::Reader get() const { return msg.reader->getRoot<proto::Response>(); }
    Reply() = default;
    Reply(Reply&&) = default;
    Reply& operator=(Reply&&) = default;
    ~Reply();
  };

  // Connects at once (throws Error(not_connected) when no daemon answers).
  static std::shared_ptr<DaemonClient> connect(const Options& opts);
  ~DaemonClient();

  // Sends the request `fill` builds (version and id are set here) and returns the
  // response. An error response is thrown as shmbus::Error. With the connection
  // gone, it reconnects for up to reconnect_ms (a daemon restarting); with
  // wait_for_daemon false it tries once and throws not_connected at once.
  Reply call(const std::function<void(proto::Request::Builder)>& fill, bool wait_for_daemon = true);
  // For the courtesy calls of a close (a cursor's leave, a producer's release): sent
  // now if the daemon answers, else kept (at most kMaxDeferred) and sent first after
  // the next connection this client makes, answers ignored. A close never waits
  // reconnect_ms for a daemon that is down, and a daemon that comes back still hears
  // that the process let go (it restores grants of live processes). `fill` is called
  // later: it must own what it uses (capture by value).
  void call_or_defer(std::function<void(proto::Request::Builder)> fill) noexcept;
  static constexpr size_t kMaxDeferred = 4096;

  void create_topic(const std::string& topic, const TopicConfig& cfg, const AccessSpec* access = nullptr);
  void delete_topic(const std::string& topic);
  uint32_t partitions(const std::string& topic);
  std::shared_ptr<PartitionMapping> open(const std::string& topic, uint32_t partition, Role role);
  const std::string& socket_path() const { return opts_.socket_path; }
  uint32_t reconnects() const { return reconnects_; }

  explicit DaemonClient(const Options& opts);  // use connect()

 private:
  bool try_connect_locked(std::string& err);
  void close_locked();
  void flush_deferred_locked();

  Options opts_;
  std::mutex mu_;
  int fd_ = -1;
  uint64_t next_id_ = 1;
  uint32_t reconnects_ = 0;
  std::vector<std::function<void(proto::Request::Builder)>> deferred_;  // call_or_defer
};

// The SegmentProvider over a DaemonClient (what Bus::connect() uses).
std::shared_ptr<SegmentProvider> make_daemon_provider(std::shared_ptr<DaemonClient> client);

}  // namespace shmbus
