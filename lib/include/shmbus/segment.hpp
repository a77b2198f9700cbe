// The segment seam: how a process gets the two shared-memory segments of a topic
// partition mapped. User code never sees this directly; the Bus owns a provider.
//  * DirectSegmentProvider creates and opens segments itself (no daemon).
//  * The daemon's provider (daemon issue) asks shmbusd, which creates them with the
//    topic's permissions; the mapping objects handed back are the same.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shmbus/error.hpp"
#include "shmbus/schema_nodes.hpp"
#include "shmbus/shm/ring.hpp"

namespace shmbus {

enum class Policy : uint32_t {
  block = shm::kPolicyBlock,
  fail = shm::kPolicyFail,
  spill = shm::kPolicySpill
};

struct TopicConfig {
  uint32_t partitions = 1;
  uint64_t capacity = 16ull << 20;  // ring bytes per partition, power of two
  uint64_t max_payload = 0;         // 0: capacity / 4
  Policy policy = Policy::block;
  bool multi_producer = false;  // false: one producer per partition (fast path)
  uint32_t slots = shm::kDefaultSlots;
  uint64_t schema_id = 0;  // expected Cap'n Proto root type id, 0 = any
  uint32_t mode = 0660;    // permission bits of the segments
  // Durable topics: archived to the spill log by shmbusd (docs/spill-log.md). Only
  // through the daemon (Bus::connect / open_embedded); the direct provider has no
  // archiver and ignores them. Policy::spill implies durable.
  enum class Flush : uint8_t { none, interval, batch };
  bool durable = false;
  Flush flush = Flush::interval;
  uint32_t flush_interval_ms = 10;
  uint64_t retention_bytes = 0;  // per partition, 0 = unlimited
  uint64_t retention_age_s = 0;  // 0 = unlimited
  uint64_t segment_bytes = 0;    // log segment file size, 0 = 64 MiB
  // Ephemeral: owned by this process's daemon connection; shmbusd removes it when
  // the connection closes (exit, crash, SIGKILL) and never restores it after a
  // restart. Only through the daemon (SegmentProvider::ephemeral_topics()); the
  // direct provider ignores it. Not durable.
  bool ephemeral = false;
  // Schema registry (shmbusd only): how a new schema version presented for this
  // topic is checked against the stored ones (docs/messaging.md, "Schema registry").
  enum class SchemaMode : uint8_t { backward, forward, full, none };
  SchemaMode schema_mode = SchemaMode::backward;
};

enum class Role { publisher, subscriber, admin };

// A cursor slot the daemon granted (layout 3): the slot, its generation and this
// grant's own cursor page, mapped read-write (nothing else of the control segment
// is writable here).
struct CursorGrant {
  uint32_t slot = 0;
  uint32_t generation = 0;
  uint64_t position = 0;     // where to start reading
  uint64_t check_below = 0;  // frames below get the lap check (P9/P11)
  shm::CursorPage* page = nullptr;
  bool resumed = false;  // a parked durable slot was taken over
  explicit operator bool() const { return page != nullptr; }
};

// One mapped partition. Keeps the mappings alive; shared by the publishers and
// subscribers of this process that use the partition.
class PartitionMapping {
 public:
  virtual ~PartitionMapping() = default;
  // Daemon mode: the control segment is read-only here; cursor slots are granted
  // by the daemon (join_cursor / leave_cursor) and producers read other
  // subscribers' pages through map_page. Direct mode (false): self-service.
  virtual bool granted() const { return false; }
  // Throws Error (no_slot, already_exists, permission_denied, ...).
  virtual CursorGrant join_cursor(bool /*tethered*/, const std::string& /*durable_name*/,
                                  uint64_t /*start*/) {
    throw Error(ErrorCode::invalid_argument, "cursor grants need a daemon");
  }
  // Gives the grant back (park: keep it under its durable name). Never throws.
  virtual void leave_cursor(CursorGrant& /*g*/, bool /*park*/) noexcept {}
  // Producers: slot `slot`'s page of generation `gen`, mapped read-only; null when
  // the grant is gone or the daemon cannot be reached (the caller retries later).
  virtual shm::CursorPage* map_page(uint32_t /*slot*/, uint32_t /*gen*/) noexcept { return nullptr; }
  virtual void unmap_page(shm::CursorPage* /*page*/) noexcept {}
  // Daemon mode (layout 4): producer ownership granted by the daemon, which wrote
  // `token` as the owner (producer-table entry `slot`, or the single-producer
  // owner). Throws Error (already_exists, no_slot, permission_denied, ...).
  struct ProducerGrantInfo {
    uint32_t slot = 0;
    uint32_t token = 0;
  };
  virtual ProducerGrantInfo grant_producer() {
    throw Error(ErrorCode::invalid_argument, "producer grants need a daemon");
  }
  // Gives back the grant whose owner value is `token` (the publisher detached from
  // it). Never throws: when the daemon cannot be told, the grant ends with this process.
  virtual void release_producer(uint32_t /*token*/) noexcept {}
  const shm::RingRefs& refs() const { return refs_; }
  const std::string& topic() const { return topic_; }
  uint32_t partition() const { return partition_; }

 protected:
  shm::RingRefs refs_{};
  std::string topic_;
  uint32_t partition_ = 0;
};

class SegmentProvider {
 public:
  virtual ~SegmentProvider() = default;
  // Creates the topic's segments (all partitions). Idempotent when the existing
  // segments have the same settings; throws Error(incompatible) otherwise.
  virtual void create_topic(const std::string& topic, const TopicConfig& cfg) = 0;
  // Maps partition `p` for `role`, waiting up to timeout_ms for a segment that is
  // being created. Subscribers get the data segment read-only.
  virtual std::shared_ptr<PartitionMapping> open(const std::string& topic, uint32_t p, Role role,
                                                 int timeout_ms) = 0;
  // Removes the topic's segments (mappings already held stay valid until dropped).
  virtual void remove_topic(const std::string& topic) = 0;
  // Number of partitions of an existing topic (0 if none).
  virtual uint32_t partitions(const std::string& topic) = 0;
  // True when create_topic honours TopicConfig::ephemeral (shmbusd).
  virtual bool ephemeral_topics() const { return false; }
  // Whether `topic` is ephemeral (false without a daemon). Throws Error (not_found
  // for a topic that does not exist or that this uid may not see).
  virtual bool is_ephemeral(const std::string& /*topic*/) { return false; }
  // The directory holding the spill log (the archiver's state dir) when `topic` has
  // policy `spill`, else empty (also for a topic that does not exist yet). Through
  // shmbusd only: a direct bus has no archiver.
  virtual std::string spill_log_dir(const std::string& /*topic*/) { return {}; }
  // Durable subscribers (P11): the last position recorded for `name` after its
  // parked slot expired, if any (the daemon keeps these; direct mode does not).
  virtual bool durable_position(const std::string& /*topic*/, uint32_t /*p*/, const std::string& /*name*/,
                                uint64_t& /*pos*/) {
    return false;
  }
  // Tells the record keeper that `name` holds a slot at `pos` (so that it can map
  // the slot's name hash back to the name). Best effort; may throw Error.
  virtual void durable_joined(const std::string& /*topic*/, uint32_t /*p*/, const std::string& /*name*/,
                              uint64_t /*pos*/) {}
  // Schema registry: presents `nodes` for `topic` as a publisher (registers a new
  // version when compatible) or a subscriber, or only checks them. Returns the
  // version they are (would be). Throws Error (incompatible naming type, field and
  // rule; permission_denied; invalid_argument for malformed nodes).
  virtual uint32_t register_schema(const std::string& /*topic*/, const SchemaNodes& /*nodes*/, Role /*role*/,
                                   bool /*check_only*/) {
    throw Error(ErrorCode::invalid_argument, "the schema registry needs shmbusd (Bus::connect)");
  }
  // Schema registry: changes how the next schema presented for `topic` is checked
  // (request setSchemaMode; the stored versions stay). Throws Error (permission_denied:
  // not the topic's owner or root; not_found: no such topic or no access;
  // invalid_argument: a mode outside the enum, or no daemon).
  virtual void set_schema_mode(const std::string& /*topic*/, TopicConfig::SchemaMode /*mode*/) {
    throw Error(ErrorCode::invalid_argument,
                "changing a topic's schema mode needs shmbusd (Bus::connect): a direct bus has no registry");
  }
  // Consumer groups (shmbusd): groupJoin (member ignored), groupSync, groupLeave (the
  // reply is empty) over this provider's connection, which is the member. Throws
  // Error (not_found: no such member on this connection, join again).
  enum class GroupOp { join, sync, leave };
  struct GroupState {
    uint64_t member_id = 0;
    uint32_t generation = 0;
    std::vector<uint32_t> partitions;  // this member's, ascending
    uint32_t members = 0;
    uint32_t topic_partitions = 0;
  };
  virtual GroupState group_call(GroupOp /*op*/, const std::string& /*topic*/, const std::string& /*group*/,
                                uint64_t /*member*/, uint32_t /*known_generation*/) {
    throw Error(ErrorCode::invalid_argument, "consumer groups need shmbusd (Bus::connect)");
  }
};

// The 64-bit hash a durable name is stored as in CursorSlot::name_hash (FNV-1a,
// never 0, which means anonymous).
uint64_t durable_name_hash(const std::string& name);

// Creates and maps segments under /dev/shm with Boost.Interprocess, named
// "<prefix>.<topic>.<partition>.data" and ".ctl".
std::shared_ptr<SegmentProvider> make_direct_provider(const std::string& prefix);

// Topic names: 1-200 chars of [A-Za-z0-9._-], not starting with '.'.
bool valid_topic_name(const std::string& name);
std::string segment_name(const std::string& prefix, const std::string& topic, uint32_t p, bool data);

}  // namespace shmbus
