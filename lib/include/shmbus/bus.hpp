// shmbus::Bus — a process's connection to the bus.
//
//   auto bus = shmbus::Bus::direct();               // no daemon: segments in /dev/shm
//   bus.create_topic("md.quotes", {.capacity = 1 << 24});
//   shmbus::Publisher pub = bus.publisher("md.quotes");
//   shmbus::Subscriber sub = bus.subscriber("md.quotes");
//
// A Bus is cheap to copy (it shares its provider). Thread-safety: a Bus may be
// used from any thread; each Publisher/Subscriber from one thread at a time.
#pragma once

#include <memory>
#include <string>

#include "shmbus/error.hpp"
#include "shmbus/segment.hpp"

namespace shmbus {

class Publisher;
class Subscriber;
class GroupSubscriber;
struct GroupOptions;

enum class WaitStrategy : uint8_t {
  busy_spin,   // lowest latency, burns a core
  spin_yield,  // spins, then sched_yield()
  futex,       // sleeps at once (a syscall per wake)
  hybrid,      // spins for spin_ns, then sleeps on the futex (default)
};

struct PublisherOptions {
  uint32_t partition = 0;
  uint32_t producer_id = 0;                  // 0: the pid
  int64_t block_timeout_ns = 1'000'000'000;  // policy block: longest wait for space
  WaitStrategy wait = WaitStrategy::hybrid;  // how to wait for space under `block`
  int64_t spin_ns = 20'000;
  int open_timeout_ms = 5000;
  // Direct mode: a subscriber process that died without releasing its slot is
  // reclaimed after the producer has been held back this long by it.
  int64_t reclaim_after_ns = 100'000'000;
  // Stamp each frame's timestamp_ns with CLOCK_MONOTONIC at commit. A clock read
  // is about half the cost of claim+commit here; false leaves timestamp_ns 0
  // (replay by time then has no timestamps from this publisher). offer_batch
  // reads the clock once per batch either way.
  bool stamp_frames = true;
  // Cap'n Proto type id of the root struct this publisher builds (0: not said). When
  // both it and the topic's schema_id are non-zero they must match, else opening the
  // publisher throws Error(incompatible).
  uint64_t schema_id = 0;
  // Schema registry (shmbusd): the compiled schema presented at open, e.g.
  // shmbus::with_schema<orders::Order>(). A new compatible version is registered; an
  // incompatible one makes the open throw Error(incompatible) naming the type, the
  // field and the rule. Empty: nothing presented.
  SchemaNodes schema{};
};

struct SubscriberOptions {
  uint32_t partition = 0;
  bool tethered = true;  // holds producers back (never overwritten)
  WaitStrategy wait = WaitStrategy::hybrid;
  int64_t spin_ns = 20'000;
  int open_timeout_ms = 5000;
  uint64_t traversal_limit_words = 0;  // Cap'n Proto reader limit; 0: payload size based
  int nesting_limit = 64;
  // Durable name (empty: anonymous). A named subscriber that closes or dies leaves
  // its cursor slot parked under the name; the next subscriber with that name (on
  // the same partition) resumes right after the last message released, with no gap
  // and no duplicate. While parked a tethered slot keeps holding the producer, until
  // the daemon expires it (DaemonOptions::durable_hold_ms; docs/architecture.md).
  std::string name{};  // "{}": designated initializers may leave it out (-Wmissing-field-initializers)
  // Bytes of released ring a subscriber may hold back before it stores its cursor
  // (the line producers scan for space): releases are then made visible in chunks,
  // not one cache-line transfer per message. Always flushed when a poll finds
  // nothing, before a wait and at close, so producers are delayed by at most this
  // much ring, never stuck. kReleaseBatchAuto: min(capacity / 16, 16 KiB); 0: every
  // release is stored at once. A durable (named) subscriber always stores at once, so
  // that its saved position is exactly its last release.
  static constexpr uint32_t kReleaseBatchAuto = ~uint32_t(0);
  uint32_t release_batch = kReleaseBatchAuto;
  // On a topic with policy `spill` (through shmbusd), an anonymous tethered
  // subscriber never holds the producer back: it reads untethered and, when the
  // producer overtakes it, continues from the topic's log and merges back into the
  // ring once it catches up, with no gap and no duplicate (ReplaySubscriber from
  // the tail). Its views are private copies, not ring memory. false: a plain
  // tethered subscriber, which holds the producer back like on any topic.
  bool log_fallback = true;
  // Schema registry (shmbusd): the schema this subscriber reads with; checked
  // against the topic's registered versions by its mode (nothing is stored).
  SchemaNodes schema{};
};

class Bus {
 public:
  struct Options {
    std::string shm_prefix = "shmbus";  // namespaces segment names (tests use their own)
  };

  // A bus without a daemon: this process creates and maps segments itself.
  static Bus direct(const Options& opts);
  static Bus direct() { return direct(Options{}); }
  // A bus through shmbusd at `socket_path` (empty: default_socket_path() from
  // shmbus/daemon_client.hpp). Throws Error(not_connected) when no daemon answers;
  // reconnects transparently when the daemon restarts.
  static Bus connect(const std::string& socket_path = {});
  // A bus over any segment provider (the daemon client plugs in here).
  explicit Bus(std::shared_ptr<SegmentProvider> provider) : provider_(std::move(provider)) {}

  void create_topic(const std::string& topic, const TopicConfig& cfg);
  void remove_topic(const std::string& topic);
  uint32_t partitions(const std::string& topic);
  // Schema registry (shmbusd): registers `nodes` for `topic` (publish access needed),
  // or with check_only says whether it would be accepted. Returns the version.
  uint32_t register_schema(const std::string& topic, const SchemaNodes& nodes, bool check_only = false);
  // Schema registry (shmbusd): sets `topic`'s compatibility mode (the topic's owner or
  // root only; the stored versions stay, the next registration is checked under the
  // new mode; saved with the topic's settings). Throws Error: permission_denied for
  // another uid with access, not_found for no such topic (or no access),
  // invalid_argument for a mode outside TopicConfig::SchemaMode or a direct bus.
  void set_schema_mode(const std::string& topic, TopicConfig::SchemaMode mode);

  Publisher publisher(const std::string& topic, const PublisherOptions& opts);
  Publisher publisher(const std::string& topic);
  Subscriber subscriber(const std::string& topic, const SubscriberOptions& opts);
  Subscriber subscriber(const std::string& topic);
  // A member of consumer group `group` of `topic` (shmbusd; shmbus/group.hpp).
  GroupSubscriber group_subscriber(const std::string& topic, const std::string& group,
                                   const GroupOptions& opts);
  GroupSubscriber group_subscriber(const std::string& topic, const std::string& group);

  SegmentProvider& provider() { return *provider_; }

 private:
  std::shared_ptr<SegmentProvider> provider_;
};

}  // namespace shmbus
