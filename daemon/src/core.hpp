// shmbusd internals: the roles (one file each) and the command queues between them.
//
//   control_server.cpp  thread "server":  socket, connections, framing, replies
//   registry.cpp        thread "registry": topics, segments, access, persistence
//   reaper.cpp          thread "reaper":   pidfds, liveness scan, reclamation, rates
//   segments.cpp        segment create / re-attach / remove (sealed memfds)
//   keeper.cpp          the keeper process that holds the segment memfds across restarts
//   request_codec.cpp   decode + validate a request frame (the fuzz target's entry)
//   log.cpp             structured JSON logs (spdlog)
//
// Each thread owns its state; other threads talk to it only through its queue.
#pragma once

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <concurrentqueue/concurrentqueue.h>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/daemon.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/shm/recovery.hpp"
#include "groups.hpp"
#include "metrics.hpp"
#include "schema_registry.hpp"

namespace shmbus::spill {
class Archiver;
}

namespace shmbus::daemon {

// ---- command queue: moodycamel queue + an eventfd to wake the owner's poll loop.
template <class T>
class CommandQueue {
 public:
  CommandQueue() : efd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~CommandQueue() {
    if (efd_ >= 0) close(efd_);
  }
  // Thread-safe, never blocks; allocates when the queue grows.
  void push(T&& t) {
    q_.enqueue(std::move(t));
    uint64_t one = 1;
    ssize_t r = write(efd_, &one, 8);
    (void)r;
  }
  bool try_pop(T& t) { return q_.try_dequeue(t); }
  int fd() const { return efd_; }
  void clear_signal() {
    uint64_t v;
    ssize_t r = read(efd_, &v, 8);
    (void)r;
  }

 private:
  moodycamel::ConcurrentQueue<T> q_;
  int efd_;
};

// ---- logging (log.cpp)
void log_init(const DaemonOptions& o, const std::string& instance);
// One JSON object per line: {"ts","level","event","topic","pid","reason",...}.
void log_event(const std::string& instance, int level, const char* event, const std::string& topic,
               int64_t pid, const std::string& reason);
enum { LOG_DEBUG = 1, LOG_INFO = 2, LOG_WARN = 3, LOG_ERROR = 4 };
// log_event, at most 10 lines a second per event (events a client can provoke).
void log_limited(const std::string& instance, int level, const char* event, const std::string& topic,
                 int64_t pid, const std::string& reason);

// ---- trusted directories and state files (paths.cpp)
// Opens `path` (created with `create_mode` when missing) as a directory fd after
// checking it: not a symlink, owned by the daemon's euid, not group/other writable.
// Throws Error with a message that names the path and what is wrong.
int open_trusted_dir(const std::string& path, mode_t create_mode, const char* what);
void check_trusted_dir(int fd, const std::string& path, const char* what);
// The same for `name` inside an already trusted directory (created 0700).
int open_private_dir_at(int dirfd, const std::string& name, const std::string& shown, const char* what);
// openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600), then checks it is a
// regular file owned by the daemon's euid. -1 with errno on failure.
int open_state_file(int dirfd, const char* name, int flags, const std::string& shown);

// ---- segments (segments.cpp)
struct TopicSettings {
  std::string name;
  uint32_t partitions = 1;
  uint64_t capacity = 16ull << 20;
  uint64_t max_payload = 0;
  uint32_t policy = 0;
  bool multi_producer = false;
  uint32_t slots = shm::kDefaultSlots;
  uint64_t schema_id = 0;
  AccessSpec access;
  // Durable topics (docs/spill-log.md): archived by the daemon's spill::Archiver.
  bool durable = false;  // policy spill implies it
  uint32_t flush = 1;    // proto::FlushPolicy: 0 none, 1 interval, 2 batch
  uint32_t flush_interval_ms = 10;
  uint64_t retention_bytes = 0;
  uint64_t retention_age_s = 0;
  uint64_t segment_bytes = 0;  // 0: the archiver's default (64 MiB)
  // Ephemeral: owned by the creating connection, removed when it closes, not
  // restored after a restart.
  bool ephemeral = false;
  uint32_t schema_mode = 0;  // proto::SchemaMode: 0 backward, 1 forward, 2 full, 3 none
  bool is_durable() const { return durable || policy == shm::kPolicySpill; }
};

// One partition's segments as the daemon holds them: sealed memfds (no name in
// /dev/shm; size fixed by F_SEAL_SHRINK | F_SEAL_GROW), mapped read-write, their fds
// kept for the partition's life (clients get new open file descriptions of them) and
// held by the segment keeper too, so a restarted daemon gets them back.
struct Partition {
  std::string topic;
  uint32_t index = 0;
  std::string data_name, ctl_name;  // the keeper's names (keeper_name)
  int data_fd = -1, ctl_fd = -1;
  uint64_t data_ino = 0, ctl_ino = 0;  // the memfds' inode numbers (in the registry)
  void* data_map = nullptr;
  void* ctl_map = nullptr;
  size_t data_size = 0, ctl_size = 0;
  shm::RingRefs refs{};
  // Layout 3: the wake segment (data waiter bits; subscribers write it) and the
  // cursor pages of the grants (one segment each, named by page id), mapped here
  // read-write. pages_mu guards `pages` (the registry grants and frees, the reaper
  // frees).
  // Both are sealed memfds (no names): the daemon keeps their fds and hands out new
  // open file descriptions of them (see segments.cpp).
  int wake_fd = -1;
  void* wake_map = nullptr;
  std::mutex pages_mu;
  std::map<uint64_t, shm::CursorPage*> pages;  // page id -> the daemon's mapping
  std::map<uint64_t, int> page_fds;            // page id -> the daemon's memfd
  // The daemon's mapping of slot i's page (null: embedded or unknown). Under pages_mu.
  shm::CursorPage* page_of(uint32_t i);
  // Layout 4: guards the producer grant records (refs.grants, in the control
  // segment): the registry grants, the reaper reclaims.
  std::mutex prod_mu;
  std::atomic<uint64_t> reclaimed_cursors{0};
  std::atomic<uint64_t> filled_claims{0};
  std::atomic<uint64_t> rate_milli{0};  // messages/s * 1000, sampled by the reaper
  ~Partition();
};

// ---- segment keeper (keeper.cpp)
// A memfd lives as long as something holds it. So that a partition's contents outlive
// a daemon that is killed (or stopped), a keeper process holds every segment memfd:
// forked by the daemon (same uid, its own session, not killed with the daemon), it
// listens on <state dir>/keeper.sock (SO_PEERCRED: only its uid) and holds fds by
// name. A daemon at start takes its inventory back (take); each new segment is put,
// each removed one dropped. A keeper that dies is respawned and re-fed by the running
// daemon (a watch thread). Without a keeper (disabled, or it cannot be started) the
// daemon still works; its segments then die with it.
class SegmentKeeper {
 public:
  ~SegmentKeeper();
  // Connects to the keeper of the state dir (spawning one when none answers) and takes
  // its inventory. `enabled` false: no keeper at all. Never throws.
  void start(int state_fd, const std::string& state_dir, const std::string& instance, bool enabled);
  // Start-up (one thread, before any client): the kept fd of `name`, -1 when none.
  int take(const std::string& name);
  // A segment taken at start that a partition could not use after all (its topic's
  // restore failed): kept for a later restore.
  void give_back(const std::string& name, int fd);
  // After the registry loaded: what no partition took is dropped, except the
  // segments of `keep_topics` (kept by the registry, not restored yet); the watch
  // thread starts.
  void finish_start(const std::set<std::string>& keep_topics = {});
  // A segment of `p` the keeper must hold (fd: the partition's own; -1: it holds it
  // already, from take).
  void put(const std::string& name, const std::shared_ptr<Partition>& p, int fd);
  // The partition's segment `name` is gone.
  void drop(const std::string& name);
  // Clean stop: a keeper that holds nothing is told to exit (its files go with it).
  void stop();
  pid_t keeper_pid() const { return pid_; }

 private:
  bool connect_locked();
  bool spawn_locked();
  bool send_locked(char op, const std::string& name, int fd);
  void refeed_locked();
  void retire_locked();
  void write_pid_locked();
  void watch();
  std::mutex mu_;
  int state_fd_ = -1;
  std::string state_dir_, instance_;
  bool enabled_ = false;
  int conn_ = -1;
  pid_t pid_ = 0;  // the keeper's pid (SO_PEERCRED)
  bool our_child_ = false;
  std::map<std::string, int> inventory_;                  // at start: name -> fd
  std::map<std::string, std::weak_ptr<Partition>> held_;  // name -> its partition
  int stop_efd_ = -1;
  std::thread watcher_;
};
// "<topic>/<partition>/data" or ".../ctl": '/' never occurs in a topic name.
std::string keeper_name(const std::string& topic, uint32_t p, bool data);

// Creates the partition's segments (sealed memfds, 0600, the daemon's uid, handed to
// the keeper), or re-attaches the ones the keeper kept for a previous daemon when they
// match. `reattached` says which. `known` (a restart: the registry's record of the
// segments, {0, 0} otherwise): the inode numbers of the data and control memfds the
// topic had. When the keeper lost them, they are taken back from a live client that
// holds them; a segment whose inode is the recorded one gets its identity line
// restored from the settings (a publisher may have overwritten it) instead of being
// made afresh.
struct KnownSegments {
  uint64_t data_ino = 0, ctl_ino = 0;
};
std::shared_ptr<Partition> open_partition(SegmentKeeper& keeper, const TopicSettings& t, uint32_t p,
                                          bool& reattached, KnownSegments known = {});
// A new open file description of one of the partition's segments (through
// /proc/self/fd): O_RDONLY, or O_RDWR when `writable`; -1 with errno.
int reopen_segment(const Partition& p, bool data, bool writable);
// A deleted topic's partition: its ring and cursor pages freed (punched) although
// clients may still map them, so that create, map, delete, repeated, pins no memory
// beyond the quotas (docs/protocol.md, defect 13).
void release_deleted(Partition& p);
int reopen_wake(const Partition& p, bool writable);
// A fresh cursor page for a grant: created (O_EXCL, 0600, fallocated), mapped into
// p.pages. Returns the page id and an O_RDWR fd for the grantee; throws Error.
// Under p.pages_mu.
uint64_t create_page(Partition& p, int& fd);
// Unmaps and unlinks page `id` (the grant ended). Under p.pages_mu.
void drop_page(Partition& p, uint64_t id);
// A new fd of page `id`: read-only (producers) or read-write (its grantee, a resent
// join); -1 with errno when it is gone.
int reopen_page(const Partition& p, uint64_t id, bool writable = false);
// The keeper lets go of the partition's segments (and any named segment an older
// version left in /dev/shm under the prefix is unlinked).
void remove_partition_segments(SegmentKeeper& keeper, const std::string& prefix, const std::string& topic,
                               uint32_t p);
// A restart takes the previous daemon's memfds back from their holders (pidfd_getfd):
// between takeback_begin and takeback_end (Registry::load, one thread) the partitions
// re-attached share one take-back; the counts are logged ("memfds_taken_back").
struct TakeBackStats {
  uint64_t walks = 0;  // fd tables walked (/proc/<pid>/fd)
  uint64_t fds = 0;    // fd entries walked
  uint64_t getfd = 0;  // pidfd_getfd calls
  uint64_t taken = 0;  // memfds taken back and used
  // uids whose walk budget ran out: {processes not walked or cut short, fds walked}.
  std::map<uid_t, std::pair<uint64_t, uint64_t>> over;
};
// uid_budget: fd entries walked per uid (not root, not the daemon's uid); 0: no bound.
void takeback_begin(uint64_t uid_budget);
TakeBackStats takeback_end();
std::string shm_segment_name(const std::string& prefix, const std::string& topic, uint32_t p, bool data);

// ---- request codec (request_codec.cpp)
struct DecodedRequest {
  control::Decoded msg;
  proto::Request::Reader root() const { return msg.reader->getRoot<proto::Request>(); }
};
// Decodes and validates one request frame. Never throws. On failure `code` and
// `err` say why and `id` holds the request id when it could be read (else 0).
bool decode_request(std::span<const uint8_t> frame, DecodedRequest& out, proto::ErrorCode& code,
                    std::string& err, uint64_t& id);
bool spec_from_proto(proto::TopicSpec::Reader s, TopicSettings& t, std::string& err);
void spec_to_proto(const TopicSettings& t, proto::TopicSpec::Builder s);
std::vector<uint8_t> error_frame(uint64_t id, proto::ErrorCode code, const std::string& msg);

// ---- messages between threads
struct Peer {
  uint64_t conn = 0;
  pid_t pid = 0;  // SO_PEERCRED: in the daemon's pid namespace
  uid_t uid = 0;
  gid_t gid = 0;
  std::shared_ptr<const std::vector<gid_t>> groups;  // SO_PEERGROUPS at connect
  // The connecting process itself (not its pid number): the pidfs inode of its pidfd
  // (SO_PEERPIDFD at connect), unique for the boot; 0 when the kernel has no pidfs.
  uint64_t proc = 0;
};
// The process identity (pidfs inode) of a pidfd, 0 when pidfds have none (pre-6.9).
uint64_t pidfd_identity(int pidfd);
// The identity of the live process that has `pid` now, 0 when there is none (gone,
// or a zombie): the pidfs inode of its pidfd (unique for the boot, Linux 6.9+), else
// 2^63 | its start time (/proc/PID/stat field 22, clock ticks: there, a pid reused
// within one tick would pass). With `proc` != 0, also 0 unless that process is the
// one of pidfs identity `proc` (the connected peer). A pid plus this identity names
// one process: the daemon's grant records hold both (layout 4).
uint64_t proc_identity(pid_t pid, uint64_t proc = 0);
struct RegistryCmd {
  // conn_closed: the server dropped connection peer.conn (its ephemeral topics go).
  // metrics: fill `snap` (a scrape of the metrics endpoint).
  enum Kind { request, stop, conn_closed, metrics } kind = request;
  Peer peer;
  std::shared_ptr<DecodedRequest> req;
  uint64_t recv_ns = 0;                     // CLOCK_MONOTONIC at decode (the request latency metric)
  std::shared_ptr<MetricsSnapshot> snap{};  // "{}": aggregate initialisers may leave it out
};
struct ServerCmd {
  uint64_t conn = 0;
  std::vector<uint8_t> frame;
  std::shared_ptr<Partition> keep;  // keeps the partition alive until sent
  std::vector<int> fds;             // owned: closed by the server after sending
};
struct ReaperCmd {
  enum Kind { watch_partition, unwatch_partition, client_pid, client_gone, stop } kind;
  std::shared_ptr<Partition> part;
  pid_t pid = 0;
};

struct Counters {
  std::atomic<uint32_t> clients{0};
  std::atomic<uint32_t> topics{0};
  std::atomic<uint64_t> reclaimed_clients{0};
  std::atomic<uint64_t> reclaim_ns{0};  // time the reaper spent reclaiming dead clients
  std::atomic<bool> serving{false};
  uint64_t start_ns = 0;
};

class Core;

class Registry {
 public:
  explicit Registry(Core& core) : core_(core) {}
  void load();                                     // before the threads start
  std::set<std::string> unrestored_names() const;  // after load: topics kept, not restored
  void run();                                      // thread body
  void persist(bool sync = true);                  // sync: fsync the file and the directory

 private:
  struct DurableRec {
    std::string name;
    uint64_t position = 0;
    uint32_t owner_uid = 0;  // the uid that made the name; only it (or root) may save it
  };
  struct Topic {
    TopicSettings s;
    uint32_t owner_uid = 0;
    uint64_t created_ns = 0;
    // Ephemeral topics: the connection that created it (and its pid, for messages).
    uint64_t owner_conn = 0;
    pid_t owner_pid = 0;
    std::vector<std::shared_ptr<Partition>> parts;
    // Durable subscriber records by {name hash, partition} (P11).
    std::map<std::pair<uint64_t, uint32_t>, DurableRec> durable;
    // From the registry at a start: the segments the topic had (restore_topic).
    std::vector<KnownSegments> known;
  };
  // Topics a start could not restore: kept (written back as they were, their names
  // taken, their kept segments held), retried every kRetryNs and at the next start.
  struct Unrestored {
    Topic t;  // no partitions
    std::string why;
  };
  std::map<std::string, Unrestored> unrestored_;
  static constexpr uint64_t kRetryNs = 5'000'000'000ull;
  uint64_t last_retry_ns_ = 0;
  // Opens t's partitions (its kept segments re-attached, or made afresh), adopts the
  // previous daemon's grants, resumes archiving. False with why (nothing lost: the
  // segments go back to the keeper's inventory).
  bool restore_topic(Topic& t, uint32_t& again, std::string& why);
  void retry_unrestored();
  void sync_durable(Topic& t);          // refresh record positions from the slots
  bool expire_parked(uint64_t now_ns);  // frees parked slots older than durable_hold_ms
  void handle(const RegistryCmd& c);
  // Unmaps and unlinks a topic's segments (and a durable topic's log), erases it.
  // Throws Error when its archiving cannot be stopped.
  void remove_topic(std::map<std::string, Topic>::iterator it, pid_t by, const char* why);
  // The connection `conn` closed: removes the ephemeral topics it owned.
  void connection_closed(uint64_t conn);
  // Layout 3 cursor grants (the daemon runs P5/P11 in the control segment).
  void handle_join(const Peer& p, uint64_t id, proto::JoinRequest::Reader j, capnp::MessageBuilder& mb,
                   proto::Response::Builder resp);
  void handle_leave(const Peer& p, uint64_t id, proto::LeaveRequest::Reader l, capnp::MessageBuilder& mb,
                    proto::Response::Builder resp);
  void handle_page(const Peer& p, uint64_t id, proto::PageFetch::Reader f, capnp::MessageBuilder& mb,
                   proto::Response::Builder resp);
  // registerSchema / schemaHistory (schema_registry.cpp).
  void handle_schema(const Peer& p, uint64_t id, proto::Request::Reader req, capnp::MessageBuilder& mb,
                     proto::Response::Builder resp);
  // Layout 4: producer ownership (a producer-table entry or the single-producer
  // role), granted on the daemon's own records.
  void handle_producer(const Peer& p, uint64_t id, proto::ProducerRequest::Reader q,
                       capnp::MessageBuilder& mb, proto::Response::Builder resp);
  uint32_t next_token_ = 0;
  // Refuses (false, why) a producer grant beyond the uid's quotas
  // (uid_max_producer_grants, uid_max_partition_producer_grants).
  bool producer_quota(const Peer& p, const Topic& t, const Partition& part, std::string& why);
  // groupJoin / groupSync / groupLeave (groups.cpp); a connection's end removes its members.
  void handle_group(const Peer& p, uint64_t id, proto::Request::Reader req, capnp::MessageBuilder& mb,
                    proto::Response::Builder resp);
  void groups_connection_closed(uint64_t conn);
  // The durable-name prefix "group:" is the consumer groups' (groups.cpp): a join or
  // saveCursor under "group:<g>" only by the uid the group belongs to. False with why.
  bool group_name_allowed(const Peer& p, const Topic& t, const std::string& durable_name, std::string& why);
  Groups groups_;
  void reply(const Peer& p, capnp::MessageBuilder& mb, std::shared_ptr<Partition> keep = {},
             std::vector<int> fds = {});
  void reply_error(const Peer& p, uint64_t id, proto::ErrorCode code, const std::string& msg);
  void reply_page(const Peer& p, uint64_t id, proto::PageRequest::Reader pr, bool stats);
  bool may(const Topic& t, const Peer& p, Role role) const;
  bool admit(const Peer& p, const TopicSettings& t, std::string& why) const;
  // May `p` learn that `t` exists (publish or subscribe rights, owner, root)?
  bool visible(const Topic& t, const Peer& p) const {
    return may(t, p, Role::publisher) || may(t, p, Role::subscriber);
  }
  // The common head of a request on one named topic. seen(): the topic when `p` may
  // see it, else null with the answer of a topic that does not exist sent ("no topic
  // '<name>'": without rights a uid learns nothing; `log_verb`: an access_denied line
  // when it does exist). allowed(): whether `p` has `role`, else false with
  // permissionDenied sent ("uid U may not publish to / subscribe to / administer
  // '<name>'"; `log`: an access_denied line). topic_for(): both, in that order.
  Topic* seen(const Peer& p, uint64_t id, const std::string& name, const char* log_verb = nullptr);
  bool allowed(const Peer& p, uint64_t id, const Topic& t, const std::string& name, Role role,
               bool log = false);
  Topic* topic_for(const Peer& p, uint64_t id, const std::string& name, Role role, bool log = false) {
    Topic* t = seen(p, id, name);
    return t && allowed(p, id, *t, name, role, log) ? t : nullptr;
  }
  void topic_info(const Topic& t, proto::TopicInfo::Builder b);
  // Durable topics: gives every partition to the archiver (recovers its log, joins
  // or adopts the tethered archiver cursor). Throws Error.
  void archive_topic(Topic& t);
  std::string log_root() const;
  void stat_topic(const Topic& t, proto::TopicStat::Builder b);
  void metrics_snapshot(MetricsSnapshot& s);  // metrics.cpp

  // Who holds a cursor grant (layout 3): the connection it was granted over and that
  // connection's process. A `leave` names a grant its connection (or process) holds;
  // quotas count live grants per uid. Keyed by partition and slot; an entry is live
  // while the slot is ACTIVE with the same generation.
  struct Grant {
    uint64_t conn = 0;  // 0: made before a restart (adopted by process identity)
    uint64_t proc = 0;
    uint32_t uid = 0;
    uint32_t generation = 0;
    std::weak_ptr<Partition> part;
  };
  std::map<std::pair<const Partition*, uint32_t>, Grant> grants_;
  bool grant_live(const std::pair<const Partition*, uint32_t>& key, const Grant& g) const;
  void record_grant(const Peer& p, const std::shared_ptr<Partition>& part, uint32_t slot);
  // Refuses (false, why) a new durable name (record) in `t` beyond the topic's 4096
  // or the uid's uid_max_durable_names (not root, the daemon's uid or the owner).
  bool durable_quota(const Peer& p, const Topic& t, std::string& why) const;
  // Refuses (false, why) a grant beyond the uid's quotas. The partition's parked
  // durable slots whose names the uid owns count as its slots there, except the one
  // of name hash `resuming` (the join resumes it: no new slot).
  bool grant_quota(const Peer& p, const Topic& t, const Partition& part, uint64_t resuming, std::string& why);

  Core& core_;
  // Test hook (SHMBUS_TEST_EXIT_AFTER_PRODUCER_GRANT set): the daemon exits (status 9)
  // after recording a producer grant, before answering it, as a daemon killed there
  // would; the client resends to the restarted daemon.
  const bool exit_after_producer_grant_ = getenv("SHMBUS_TEST_EXIT_AFTER_PRODUCER_GRANT") != nullptr;
  std::map<std::string, Topic> topics_;
  SchemaRegistry schemas_{core_};
  uint64_t last_expiry_ns_ = 0;
  // Cursor saves mark the registry dirty; it is written at most every
  // kPersistDelayNs (a flood of saves costs one rewrite per period, not one each).
  static constexpr uint64_t kPersistDelayNs = 100'000'000ull;
  bool dirty_ = false;
  uint64_t last_persist_ns_ = 0;
  bool must_persist_ = false;  // a create/delete in this batch: write before replying
  bool batching_ = false;      // replies go to outbox_ until the batch is persisted
  std::vector<ServerCmd> outbox_;
};

class Reaper {
 public:
  explicit Reaper(Core& core) : core_(core) {}
  ~Reaper();
  void init();  // before the threads start (no client can take its fds); throws Error
  void run();

 private:
  struct Watched {
    int pidfd = -1;
    uint64_t ident = 0;  // the watched process's identity (proc_identity)
  };
  // Is the grantee of a producer grant record alive: the process of that pid AND
  // identity (never merely "some process has the pid")?
  bool grantee_alive(uint32_t pid, uint64_t ident);
  void scan(uint64_t now_ns);
  void watch_pid(pid_t pid);
  void on_dead(pid_t pid, const char* how);
  void reclaim_in(Partition& p, pid_t pid);
  void resolve_dead_claims(Partition& p);
  bool alive(uint32_t pid);

  Core& core_;
  int ep_ = -1;
  int tfd_ = -1;
  std::map<pid_t, Watched> pids_;
  std::vector<std::shared_ptr<Partition>> parts_;
  struct Sample {
    uint64_t seq = 0, ns = 0;
  };
  std::map<Partition*, Sample> samples_;
  uint64_t last_rate_ns_ = 0;
};

class ControlServer {
 public:
  explicit ControlServer(Core& core) : core_(core) {}
  ~ControlServer();
  void bind(int dir_fd);  // before the threads start; throws Error. dir_fd: the socket's directory
  void init();            // before the threads start: its epoll and reserve fd; throws Error
  void run();
  void close_listener();

 private:
  struct Conn {
    int fd = -1;
    Peer peer;
    uint32_t errors = 0;
    uint32_t inflight = 0;  // requests queued to the registry, not yet answered
    bool paused = false;    // not read until its replies catch up (back-pressure)
  };
  void accept_all();
  void on_readable(uint64_t id);
  void drop(uint64_t id, const char* reason);
  void send_to(uint64_t id, const std::vector<uint8_t>& frame, const std::vector<int>& fds);
  void answered(uint64_t id);  // a registry reply went out: resume reading when paused
  void set_reading(Conn& c, bool on);
  void pause_accept();

  int reserve_fd_ = -1;               // given up to accept (and refuse) at EMFILE
  uint64_t accept_paused_until_ = 0;  // monotonic ns; 0: accepting
  std::map<uid_t, uint32_t> uid_conns_;

  Core& core_;
  int dir_fd_ = -1;        // the socket's (trusted) directory
  std::string sock_name_;  // the socket's name in it
  int listen_fd_ = -1;
  int ep_ = -1;
  uint64_t next_conn_ = 1;
  std::map<uint64_t, Conn> conns_;
};

class Core {
 public:
  explicit Core(DaemonOptions o);
  ~Core();
  void start();
  void request_stop();
  void wait();

  DaemonOptions opts;
  std::string instance;  // log name
  Counters counters;
  RequestMetrics requests;
  std::unique_ptr<MetricsServer> metrics;  // --metrics-listen
  CommandQueue<RegistryCmd> registry_q;
  CommandQueue<ServerCmd> server_q;
  CommandQueue<ReaperCmd> reaper_q;
  // Held by the server while it gives up its reserve fd to accept (and refuse) a
  // connection at EMFILE, and by the reaper around pidfd_open: the reaper's pidfds
  // are triggered by accepts, and one taking the freed slot would cost the server
  // its reserve (no free fd to refuse with, queued clients left waiting).
  std::mutex fd_reserve_mu;
  std::atomic<bool> stopping{false};
  int stop_efd = -1;  // written by request_stop (async-signal-safe)
  int lock_fd = -1;
  int sock_dir_fd = -1;  // the socket's directory (trusted: ours, not writable by others)
  int state_fd = -1;     // the state directory: every state file is opened relative to it

  // The spill archiver, created (and started) with the first durable topic.
  spill::Archiver& archiver();
  bool has_archiver() const { return archiver_ != nullptr; }

  SegmentKeeper keeper;  // before the registry: its partitions' fds are put and dropped here
  Registry registry{*this};
  Reaper reaper{*this};
  ControlServer server{*this};

 private:
  std::unique_ptr<spill::Archiver> archiver_;
  std::thread t_server_, t_registry_, t_reaper_;
  bool started_ = false;
  bool joined_ = false;
};

uint64_t realtime_ns();
uint64_t count_open_fds();
uint64_t rss_bytes();

}  // namespace shmbus::daemon
