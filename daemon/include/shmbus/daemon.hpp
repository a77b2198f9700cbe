// shmbusd as a library: the daemon core (control server, registry, reaper threads)
// that the shmbusd executable runs, and that a process can start embedded.
//
//   shmbus::DaemonOptions o;  o.state_dir = "/var/lib/myapp/shmbus";
//   shmbus::Bus bus = shmbus::open_embedded(o);   // daemon thread + connected bus
//
// Contract: start() throws shmbus::Error when the socket or state dir cannot be
// set up (e.g. another daemon holds the state dir); stop() is idempotent, blocks
// until the threads have persisted state and exited, and removes the socket but
// never a segment (topics are removed only by `delete`).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "shmbus/bus.hpp"

namespace shmbus {

struct DaemonOptions {
  std::string socket_path;  // empty: default_socket_path()
  std::string state_dir;    // empty: <socket dir>/state
  std::string shm_prefix;   // only to remove named segments of older versions
  // Start (or find) the segment keeper that holds the topics' segments (memfds) across
  // daemon restarts; false: they die with this daemon (docs/operations.md).
  bool segment_keeper = true;
  int64_t reclaim_interval_ms = 20;  // liveness scan period (pidfds react at once)
  uint32_t max_clients = 1024;
  uint32_t max_topics = 4096;
  // Bounds and per-uid quotas (docs/operations.md, "Security model"). Root and the
  // daemon's own uid are exempt from the per-uid quotas, not from the bounds.
  uint64_t max_topic_bytes = 16ull << 30;  // one topic's segments: partitions x (ring + control)
  uint32_t uid_max_topics = 256;           // topics one uid owns
  // Partitions of the topics one uid owns: each costs the daemon an fd (its wake
  // memfd) and three mappings, so this bounds what one uid can take of the daemon's
  // fd and vm.max_map_count budgets (docs/operations.md, "Security model").
  uint32_t uid_max_partitions = 1024;
  uint64_t uid_max_segment_bytes = 32ull << 30;  // segment bytes of the topics one uid owns
  uint32_t uid_max_connections = 64;             // connections of one uid at once
  // Spill-log disk of the durable topics one uid owns, counted as partitions x
  // (retentionBytes + one log segment); such topics need a retentionBytes.
  uint64_t uid_max_log_bytes = 16ull << 30;
  uint32_t max_inflight_per_client = 8;  // requests queued per connection before it is not read
  // Live cursor grants (subscribers) of one uid: each holds a slot, a 4 KiB cursor
  // page and a daemon fd and mapping. In all, and in one partition (0: half its slots).
  uint32_t uid_max_grants = 1024;
  uint32_t uid_max_partition_grants = 0;
  // Durable subscriber names (records: name x partition, kept until the topic goes)
  // one uid makes in one topic it does not own; a topic holds 4096 in all.
  uint32_t uid_max_durable_names = 256;
  // Producer grants (publishers: a producer-table entry or a single-producer role)
  // one uid holds in topics it does not own: in all, and in one partition (0: half
  // its producer entries, at least 1).
  uint32_t uid_max_producer_grants = 256;
  uint32_t uid_max_partition_producer_grants = 0;
  // A restart takes the cursor pages and wake segments back from their grantees by
  // walking their fd tables: at most this many fd entries over all the processes of
  // one uid (not root, not the daemon's uid). Beyond, that uid's grants are not taken
  // back (their subscribers are told, `lapped`). 0: no bound.
  uint64_t uid_max_restart_fds = 65536;
  // Schema versions one uid adds to one topic it does not own (a topic keeps 64, each
  // up to 128 KiB), and the schema bytes one uid has stored in all (memory and disk).
  uint32_t uid_max_schema_versions = 8;
  uint64_t uid_max_schema_bytes = 16ull << 20;
  uint32_t shm_reserve_percent = 10;  // creation leaves this much of /dev/shm free
  std::string log_level = "info";     // trace, debug, info, warn, error, off
  std::string log_file;               // empty: stderr
  uint32_t socket_mode = 0666;        // the socket's permission bits (topics have ACLs)
  // How long a durable subscriber's parked slot (P10) keeps its place (and, when
  // tethered, holds the producer back) after its owner closed or died; then it is
  // freed and its position kept as a record (resumed with a lap check).
  int64_t durable_hold_ms = 10000;
  // Prometheus text metrics over HTTP on "host:port" (docs/operations.md, "Metrics");
  // empty: off. A non-loopback host needs metrics_allow_remote (every topic name and
  // subscriber pid is visible to whoever reaches the port).
  std::string metrics_listen{};
  bool metrics_allow_remote = false;
};

namespace daemon {
class Core;
}

class Daemon {
 public:
  explicit Daemon(DaemonOptions opts);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  void start();         // binds the socket, loads state, starts the threads
  void request_stop();  // async-signal-safe: asks the threads to stop
  void wait();          // joins the threads (after request_stop)
  void stop() {
    request_stop();
    wait();
  }
  const DaemonOptions& options() const;

 private:
  std::unique_ptr<daemon::Core> core_;
};

// Starts a daemon in this process (threads) and returns a Bus connected to it.
// The daemon lives as long as the Bus (and every publisher/subscriber made from it).
// state_dir empty: a private temporary directory, removed at the end.
Bus open_embedded(DaemonOptions opts = {});

}  // namespace shmbus
