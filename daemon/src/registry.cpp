// The registry thread: owns the topics and their segments, checks access, and
// persists itself to <state-dir>/registry.bin (Cap'n Proto `State`), atomically
// (write, fsync, rename) after every change and at shutdown.
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <poll.h>
#include <sstream>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include <filesystem>
#include <set>
#include <utility>

#include "core.hpp"
#include "shmbus/spill/archiver.hpp"
#include "shmbus/spill_format.hpp"

namespace shmbus::daemon {

using shm::aref;

namespace {

bool in(const std::vector<uint32_t>& l, uint32_t v) {
  for (uint32_t x : l)
    if (x == v || x == kAnyone) return true;
  return false;
}

std::string state_file(const Core& c) { return c.opts.state_dir + "/registry.bin"; }
constexpr const char* kStateName = "registry.bin";
constexpr const char* kStateTmp = "registry.bin.tmp";
constexpr const char* kStateCorrupt = "registry.bin.corrupt";

// The ACTIVE slot holding durable name hash `h` in `p`, or null.
shm::CursorSlot* named_slot(const Partition& p, uint64_t h) {
  const shm::RingRefs& r = p.refs;
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    shm::CursorSlot& s = r.slots[i];
    if (aref(s.state).load(std::memory_order_acquire) == shm::kSlotActive &&
        aref(s.name_hash).load(std::memory_order_relaxed) == h)
      return &s;
  }
  return nullptr;
}

// Slot i's released position as its page says it, clamped to what the slot may
// hold (the page is the subscriber's: hostile). Takes pages_mu.
uint64_t slot_position(Partition& p, uint32_t i) {
  const shm::RingRefs& r = p.refs;
  shm::CursorSlot& s = r.slots[i];
  std::lock_guard<std::mutex> g(p.pages_mu);
  shm::CursorPage* pg =
      (aref(s.flags).load(std::memory_order_relaxed) & shm::kSlotEmbedded) ? &s.page : p.page_of(i);
  const uint64_t pos = pg ? aref(pg->position).load(std::memory_order_acquire)
                          : aref(s.join_position).load(std::memory_order_acquire);
  return shm::clamp_page_position(r, i, pos);
}

// The daemon's own mapping of a partition, as the archiver wants it (read-write).
class DaemonMapping final : public PartitionMapping {
 public:
  explicit DaemonMapping(std::shared_ptr<Partition> p) : p_(std::move(p)) {
    refs_ = p_->refs;
    topic_ = p_->topic;
    partition_ = p_->index;
  }

 private:
  std::shared_ptr<Partition> p_;
};

// A durable topic's ring created afresh (first creation, or its segments vanished)
// continues the log's sequences, so the log keeps growing monotonically. No client
// has the segment yet: the fds are handed out later, over the socket.
void continue_log_sequence(Partition& p, const std::string& log_root) {
  const uint64_t next = spill::next_sequence_after_log(log_root, p.topic, p.index);
  if (next > 1) aref(p.refs.data->tail_seq).store(next, std::memory_order_release);
}

}  // namespace

// The spill logs' root, a private directory of the state dir (created, or checked:
// ours, not a symlink, not writable by others) before a path under it is used.
std::string Registry::log_root() const {
  close(open_private_dir_at(core_.state_fd, "log", core_.opts.state_dir + "/log", "log dir"));
  return core_.opts.state_dir + "/log";
}

void Registry::archive_topic(Topic& t) {
  spill::LogConfig lc;
  lc.state_dir = log_root();
  lc.flush = spill::FlushPolicy(t.s.flush);
  lc.flush_interval_ms = t.s.flush_interval_ms;
  if (t.s.segment_bytes) lc.segment_bytes = t.s.segment_bytes;
  lc.retention_bytes = t.s.retention_bytes;
  lc.retention_age_s = int64_t(t.s.retention_age_s);
  for (auto& part : t.parts) core_.archiver().add_partition(std::make_shared<DaemonMapping>(part), lc);
}

static uint64_t topic_bytes(const TopicSettings& t) {
  return uint64_t(t.partitions) * (shm::data_segment_size(t.capacity) + shm::control_segment_size(t.slots));
}

// A durable topic's worst-case log disk: retention deletes whole segments, so one
// segment per partition more than the retention.
static uint64_t log_bytes(const TopicSettings& t) {
  if (!t.is_durable()) return 0;
  const uint64_t seg = t.segment_bytes ? t.segment_bytes : (64ull << 20);
  return uint64_t(t.partitions) * (t.retention_bytes + seg);
}

// Bounds (every uid) and per-uid quotas (not root, not the daemon's uid) for a new
// topic; false with the reason when it is refused.
bool Registry::admit(const Peer& peer, const TopicSettings& t, std::string& why) const {
  const DaemonOptions& o = core_.opts;
  const uint64_t bytes = topic_bytes(t);
  if (bytes > o.max_topic_bytes) {
    why = "topic '" + t.name + "' needs " + std::to_string(bytes) +
          " bytes of shared memory, more than the daemon allows per topic (max_topic_bytes " +
          std::to_string(o.max_topic_bytes) + ")";
    return false;
  }
  if (peer.uid != 0 && peer.uid != geteuid()) {
    uint64_t owned = 0, owned_bytes = 0, owned_parts = 0;
    for (auto& [n, x] : topics_)
      if (x.owner_uid == peer.uid) ++owned, owned_bytes += topic_bytes(x.s), owned_parts += x.s.partitions;
    if (owned >= o.uid_max_topics) {
      why = "uid " + std::to_string(peer.uid) + " owns " + std::to_string(owned) +
            " topics, the most one uid may (uid_max_topics)";
      return false;
    }
    if (owned_parts + t.partitions > o.uid_max_partitions) {
      why = "uid " + std::to_string(peer.uid) + " would own " + std::to_string(owned_parts + t.partitions) +
            " partitions, more than one uid may (uid_max_partitions " + std::to_string(o.uid_max_partitions) +
            "; each costs the daemon an open file)";
      return false;
    }
    if (t.is_durable()) {
      if (t.retention_bytes == 0) {
        why = "durable topic '" + t.name + "': uid " + std::to_string(peer.uid) +
              " must set retentionBytes (its spill logs are bounded by uid_max_log_bytes)";
        return false;
      }
      uint64_t logs = log_bytes(t);
      for (auto& [n, x] : topics_)
        if (x.owner_uid == peer.uid) logs += log_bytes(x.s);
      if (logs > o.uid_max_log_bytes) {
        why = "uid " + std::to_string(peer.uid) + " would own " + std::to_string(logs) +
              " bytes of spill logs, more than one uid may (uid_max_log_bytes " +
              std::to_string(o.uid_max_log_bytes) + ")";
        return false;
      }
    }
    if (owned_bytes + bytes > o.uid_max_segment_bytes) {
      why = "uid " + std::to_string(peer.uid) + " would own " + std::to_string(owned_bytes + bytes) +
            " bytes of segments, more than one uid may (uid_max_segment_bytes " +
            std::to_string(o.uid_max_segment_bytes) + ")";
      return false;
    }
  }
  struct statvfs vf {};
  if (statvfs("/dev/shm", &vf) == 0) {
    const unsigned __int128 avail = (unsigned __int128)vf.f_bavail * vf.f_frsize;
    const unsigned __int128 keep = (unsigned __int128)vf.f_blocks * vf.f_frsize * o.shm_reserve_percent / 100;
    if ((unsigned __int128)bytes + keep > avail) {
      why = "/dev/shm has " + std::to_string(uint64_t(avail)) + " bytes free; topic '" + t.name + "' needs " +
            std::to_string(bytes) + " and " + std::to_string(o.shm_reserve_percent) + "% must stay free";
      return false;
    }
  }
  return true;
}

bool Registry::may(const Topic& t, const Peer& p, Role role) const {
  if (p.uid == 0 || p.uid == geteuid() || p.uid == t.owner_uid) return true;
  const auto& uids = role == Role::publisher ? t.s.access.publish_uids : t.s.access.subscribe_uids;
  const auto& gids = role == Role::publisher ? t.s.access.publish_gids : t.s.access.subscribe_gids;
  if (role == Role::admin) return false;
  if (in(uids, p.uid)) return true;
  if (gids.empty()) return false;
  if (in(gids, p.gid)) return true;
  if (p.groups)
    for (uint32_t g : *p.groups)
      if (in(gids, g)) return true;
  return false;
}

static const char* role_verb(Role role) {
  return role == Role::publisher ? "publish" : role == Role::subscriber ? "subscribe" : "administer";
}

Registry::Topic* Registry::seen(const Peer& peer, uint64_t id, const std::string& name,
                                const char* log_verb) {
  auto it = topics_.find(name);
  if (it != topics_.end() && visible(it->second, peer)) return &it->second;
  if (it != topics_.end() && log_verb)
    log_limited(core_.instance, LOG_WARN, "access_denied", name, peer.pid,
                "uid " + std::to_string(peer.uid) + " may not " + log_verb);
  reply_error(peer, id, proto::ErrorCode::NOT_FOUND, "no topic '" + name + "'");
  return nullptr;
}

bool Registry::allowed(const Peer& peer, uint64_t id, const Topic& t, const std::string& name, Role role,
                       bool log) {
  if (may(t, peer, role)) return true;
  const char* verb = role_verb(role);
  if (log)
    log_limited(core_.instance, LOG_WARN, "access_denied", name, peer.pid,
                "uid " + std::to_string(peer.uid) + " may not " + verb);
  reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
              "uid " + std::to_string(peer.uid) + " may not " + verb +
                  (role == Role::admin ? " '" : " to '") + name + "'");
  return false;
}

void Registry::load() {
  const std::string path = state_file(core_);
  int fd = open_state_file(core_.state_fd, kStateName, O_RDONLY, path);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) return;
    throw Error(ErrorCode::system,
                path + ": " +
                    (e == ELOOP || e == EPERM ? std::string("a symlink or not our file: refusing it")
                                              : std::string(strerror(e))),
                e);
  }
  std::vector<TopicSettings> loaded;
  std::vector<std::pair<uint32_t, uint64_t>> meta;
  std::vector<std::map<std::pair<uint64_t, uint32_t>, DurableRec>> durable;
  std::vector<std::vector<KnownSegments>> known;
  try {
    capnp::ReaderOptions ro;
    ro.traversalLimitInWords = 64ull << 20;
    capnp::StreamFdMessageReader rd(fd, ro);
    auto st = rd.getRoot<proto::State>();
    for (auto ti : st.getTopics()) {
      TopicSettings t;
      std::string err;
      if (!spec_from_proto(ti.getSpec(), t, err)) {  // one bad entry: skipped, reported
        log_event(core_.instance, LOG_ERROR, "topic_restore_failed",
                  ti.getSpec().hasName() ? std::string(ti.getSpec().getName().cStr()) : std::string(), 0,
                  "invalid settings in the registry (" + err + "): skipped");
        continue;
      }
      loaded.push_back(std::move(t));
      meta.emplace_back(ti.getOwnerUid(), ti.getCreatedNs());
      auto& k = known.emplace_back();
      // Inodes recorded by a daemon of this layout, one pair per partition: else
      // unknown (the segments are then re-attached only when their header matches).
      if (ti.getSegmentLayout() == shm::kLayoutVersion &&
          ti.getSegmentInodes().size() == 2 * loaded.back().partitions)
        for (uint32_t p = 0; p < loaded.back().partitions; ++p)
          k.push_back({ti.getSegmentInodes()[2 * p], ti.getSegmentInodes()[2 * p + 1]});
      auto& d = durable.emplace_back();
      for (auto dc : ti.getDurable())
        d[{dc.getNameHash(), dc.getPartition()}] = DurableRec{
            dc.getName(), dc.getPosition(), dc.getHasOwner() ? dc.getOwnerUid() : ti.getOwnerUid()};
    }
  } catch (const std::exception& e) {
    close(fd);
    std::string bad = path + ".corrupt";
    renameat(core_.state_fd, kStateName, core_.state_fd, kStateCorrupt);
    log_event(core_.instance, LOG_ERROR, "state_corrupt", "", 0,
              std::string(e.what()) + "; moved to " + bad + ", starting empty");
    return;
  } catch (const kj::Exception& e) {
    close(fd);
    std::string bad = path + ".corrupt";
    renameat(core_.state_fd, kStateName, core_.state_fd, kStateCorrupt);
    log_event(core_.instance, LOG_ERROR, "state_corrupt", "", 0, e.getDescription().cStr());
    return;
  }
  close(fd);
  takeback_begin(core_.opts.uid_max_restart_fds);
  for (size_t i = 0; i < loaded.size(); ++i) {
    Topic t;
    t.s = loaded[i];
    t.owner_uid = meta[i].first;
    t.created_ns = meta[i].second;
    t.durable = durable[i];
    t.known = known[i];
    if (t.s.ephemeral) {
      // Its connection ended with the previous daemon: the topic goes with it.
      for (uint32_t p = 0; p < t.s.partitions; ++p)
        remove_partition_segments(core_.keeper, core_.opts.shm_prefix, t.s.name, p);
      log_event(core_.instance, LOG_INFO, "topic_deleted", t.s.name, 0,
                "ephemeral: its connection ended with the previous daemon");
      must_persist_ = true;
      continue;
    }
    uint32_t again = 0;
    std::string why;
    // A topic that cannot be restored (a bound, segments that cannot be mapped or
    // made, out of fds or memory, ...) never stops the daemon from starting, and is
    // never lost: it stays in the registry (written back as it was, its name taken,
    // its kept segments and durable log kept), reported, and retried (every
    // kRetryNs, and at the next start). Before, it vanished at the next persist.
    if (!restore_topic(t, again, why)) {
      log_event(core_.instance, LOG_ERROR, "topic_restore_failed", t.s.name, 0,
                why + ": not restored now; kept in the registry, retried every " +
                    std::to_string(kRetryNs / 1'000'000'000) + " s and at the next start");
      const std::string name = t.s.name;
      unrestored_.emplace(name, Unrestored{std::move(t), why});
      continue;
    }
    log_event(core_.instance, LOG_INFO, again == t.s.partitions ? "topic_reattached" : "topic_recreated",
              t.s.name, 0,
              std::to_string(again) + " of " + std::to_string(t.s.partitions) + " partitions re-attached");
    topics_.emplace(t.s.name, std::move(t));
  }
  if (const TakeBackStats tb = takeback_end(); tb.walks || !tb.over.empty()) {
    log_event(core_.instance, LOG_INFO, "memfds_taken_back", "", 0,
              std::to_string(tb.walks) + " fd tables walked (" + std::to_string(tb.fds) + " fds), " +
                  std::to_string(tb.getfd) + " pidfd_getfd calls, " + std::to_string(tb.taken) +
                  " memfds taken back");
    for (auto& [uid, n] : tb.over)
      log_event(core_.instance, LOG_WARN, "takeback_budget", "", 0,
                "uid " + std::to_string(uid) + ": " + std::to_string(n.second) + " fds walked, " +
                    std::to_string(n.first) +
                    " processes not walked (or cut short) beyond uid_max_restart_fds " +
                    std::to_string(core_.opts.uid_max_restart_fds) +
                    "; their grants not taken back (their subscribers are told: lapped)");
  }
  last_retry_ns_ = shm::monotonic_ns();
  core_.counters.topics = uint32_t(topics_.size());
}

std::set<std::string> Registry::unrestored_names() const {
  std::set<std::string> n;
  for (auto& [name, u] : unrestored_) n.insert(name);
  return n;
}

bool Registry::restore_topic(Topic& t, uint32_t& again, std::string& why) {
  again = 0;
  // Test hook: the first restore of this topic fails (the retry is then tested).
  static bool failed_once = false;
  if (const char* f = getenv("SHMBUS_TEST_RESTORE_FAIL_ONCE"); f && t.s.name == f && !failed_once) {
    failed_once = true;
    why = "SHMBUS_TEST_RESTORE_FAIL_ONCE";
    return false;
  }
  if (topic_bytes(t.s) > core_.opts.max_topic_bytes) {  // checked before anything is mapped
    why = "needs " + std::to_string(topic_bytes(t.s)) +
          " bytes of shared memory, more than max_topic_bytes " + std::to_string(core_.opts.max_topic_bytes);
    return false;
  }
  try {
    for (uint32_t p = 0; p < t.s.partitions; ++p) {
      bool re = false;
      t.parts.push_back(
          open_partition(core_.keeper, t.s, p, re, p < t.known.size() ? t.known[p] : KnownSegments{}));
      again += re;
      if (t.s.is_durable() && !re) continue_log_sequence(*t.parts.back(), log_root());
    }
  } catch (const std::exception& e) {
    why = e.what();
    // The partitions opened so far: their segments back to the keeper's inventory
    // (their contents kept for the next try).
    for (auto& part : t.parts) {
      core_.keeper.give_back(part->data_name, std::exchange(part->data_fd, -1));
      core_.keeper.give_back(part->ctl_name, std::exchange(part->ctl_fd, -1));
    }
    t.parts.clear();
    return false;
  }
  for (uint32_t p = 0; p < t.parts.size(); ++p)  // new segments: the registry records them
    if (p >= t.known.size() || t.known[p].data_ino != t.parts[p]->data_ino ||
        t.known[p].ctl_ino != t.parts[p]->ctl_ino)
      must_persist_ = true;
  for (auto& part : t.parts) {
    core_.reaper_q.push(ReaperCmd{ReaperCmd::watch_partition, part, 0});
    // Grants the previous daemon made: held by the process they were made to, as
    // it is now (its pidfd's identity); a pid reused later is another process.
    for (uint32_t i = 0; i < part->refs.slot_count; ++i) {
      const shm::CursorSlot& s = part->refs.slots[i];
      const uint32_t pid = aref(const_cast<uint32_t&>(s.pid)).load(std::memory_order_acquire);
      if (aref(const_cast<uint32_t&>(s.state)).load(std::memory_order_acquire) != shm::kSlotActive ||
          pid == 0 || (pid & shm::kReclaimBit) ||
          (aref(const_cast<uint32_t&>(s.flags)).load() & shm::kSlotEmbedded))
        continue;
      // Layout 4: only the process with the recorded identity is the grantee. A
      // grantee that died while no daemon ran, whose pid another process has now,
      // is dead: its slot is parked (durable name) or freed, never adopted.
      const uint64_t ident = aref(const_cast<uint64_t&>(s.ident)).load(std::memory_order_relaxed);
      if (ident != 0 && proc_identity(pid_t(pid)) != ident) {
        std::lock_guard<std::mutex> g(part->pages_mu);
        const uint64_t page_id = aref(const_cast<uint64_t&>(s.page_id)).load(std::memory_order_relaxed);
        if (shm::recover_dead_cursor(part->refs, i, pid, true, spill::kArchiverNameHash, part->page_of(i)) ==
                shm::CursorRecovery::freed &&
            page_id)
          drop_page(*part, page_id);
        log_event(core_.instance, LOG_INFO, "grant_dropped", t.s.name, pid,
                  "partition " + std::to_string(part->index) + " slot " + std::to_string(i) +
                      ": its grantee exited while no daemon ran (pid now another process's)");
        continue;
      }
      Peer who;
      who.conn = 0;
      const int pfd = int(syscall(SYS_pidfd_open, pid_t(pid), 0));
      who.proc = pfd >= 0 ? pidfd_identity(pfd) : 0;
      struct stat ps {};
      who.uid = stat(("/proc/" + std::to_string(pid)).c_str(), &ps) == 0 ? ps.st_uid : 0;
      if (pfd >= 0) close(pfd);
      record_grant(who, part, i);
    }
  }
  if (t.s.is_durable()) {
    // Before any client is served: recovery (torn tail truncated), then the
    // archiver adopts the cursor of the previous daemon's archiver.
    try {
      archive_topic(t);
      log_event(core_.instance, LOG_INFO, "archive_resumed", t.s.name, 0, log_root());
    } catch (const Error& e) {
      log_event(core_.instance, LOG_ERROR, "archive_failed", t.s.name, 0, e.what());
    }
  }
  return true;
}

// The kept topics a start could not restore, tried again (the registry thread).
void Registry::retry_unrestored() {
  for (auto it = unrestored_.begin(); it != unrestored_.end();) {
    uint32_t again = 0;
    std::string why;
    Topic& t = it->second.t;
    if (!restore_topic(t, again, why)) {
      if (why != it->second.why)
        log_event(core_.instance, LOG_ERROR, "topic_restore_failed", it->first, 0,
                  why + ": retried every " + std::to_string(kRetryNs / 1'000'000'000) + " s");
      it->second.why = why;
      ++it;
      continue;
    }
    log_event(core_.instance, LOG_INFO, "topic_restored", it->first, 0,
              std::to_string(again) + " of " + std::to_string(t.s.partitions) +
                  " partitions re-attached (it could not be restored at start)");
    topics_.emplace(it->first, std::move(t));
    it = unrestored_.erase(it);
    must_persist_ = true;
  }
  core_.counters.topics = uint32_t(topics_.size());
}

void Registry::persist(bool sync) {
  dirty_ = false;
  must_persist_ = false;
  last_persist_ns_ = shm::monotonic_ns();
  capnp::MallocMessageBuilder mb;
  auto st = mb.initRoot<proto::State>();
  auto l = st.initTopics(uint32_t(topics_.size() + unrestored_.size()));
  uint32_t i = 0;
  // The segments' inode numbers (a restart whose keeper died takes them back from live
  // clients: open_partition); the registry only, never in a reply.
  auto inodes = [](const Topic& t, proto::TopicInfo::Builder b) {
    std::vector<uint64_t> v;
    if (!t.parts.empty())
      for (auto& p : t.parts) v.push_back(p->data_ino), v.push_back(p->ctl_ino);
    else
      for (auto& k : t.known) v.push_back(k.data_ino), v.push_back(k.ctl_ino);
    auto l = b.initSegmentInodes(uint32_t(v.size()));
    for (size_t j = 0; j < v.size(); ++j) l.set(uint32_t(j), v[j]);
    b.setSegmentLayout(shm::kLayoutVersion);
  };
  for (auto& [name, t] : topics_) {
    sync_durable(t);
    topic_info(t, l[i]);
    inodes(t, l[i++]);
  }
  for (auto& [name, u] : unrestored_) {  // kept as they were
    topic_info(u.t, l[i]);
    inodes(u.t, l[i++]);
  }
  const std::string path = state_file(core_), tmp = path + ".tmp";
  // A fresh file (O_EXCL, O_NOFOLLOW) in the state dir's fd: never an existing one.
  unlinkat(core_.state_fd, kStateTmp, 0);
  int fd = openat(core_.state_fd, kStateTmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    log_event(core_.instance, LOG_ERROR, "persist_failed", "", 0, tmp + ": " + strerror(errno));
    return;
  }
  try {
    capnp::writeMessageToFd(fd, mb);
  } catch (const kj::Exception& e) {
    close(fd);
    log_event(core_.instance, LOG_ERROR, "persist_failed", "", 0, e.getDescription().cStr());
    return;
  }
  if (sync) fsync(fd);
  close(fd);
  if (renameat(core_.state_fd, kStateTmp, core_.state_fd, kStateName) < 0)
    log_event(core_.instance, LOG_ERROR, "persist_failed", "", 0, strerror(errno));
  if (sync) fsync(core_.state_fd);
}

void Registry::reply(const Peer& p, capnp::MessageBuilder& mb, std::shared_ptr<Partition> keep,
                     std::vector<int> fds) {
  ServerCmd c;
  c.conn = p.conn;
  c.frame = control::encode_frame(mb);
  if (c.frame.size() > control::kMaxFrame) {
    for (int f : fds) close(f);
    // Keep the request's id: the client matches replies by it.
    const uint64_t id = mb.getRoot<proto::Response>().asReader().getId();
    c.frame = error_frame(id, proto::ErrorCode::TOO_LARGE,
                          "response exceeds the frame limit (use listPage/statPage)");
    fds.clear();
    keep.reset();
  }
  c.keep = std::move(keep);
  c.fds = std::move(fds);
  if (batching_)
    outbox_.push_back(std::move(c));
  else
    core_.server_q.push(std::move(c));
}

void Registry::reply_error(const Peer& p, uint64_t id, proto::ErrorCode code, const std::string& msg) {
  ServerCmd c;
  c.conn = p.conn;
  c.frame = error_frame(id, code, msg);
  if (batching_)
    outbox_.push_back(std::move(c));
  else
    core_.server_q.push(std::move(c));
}

// One page of topics the peer may see, in name order after pr.after: at most the
// limit, halved until the reply fits in a frame (so any number of topics can be listed).
void Registry::reply_page(const Peer& peer, uint64_t id, proto::PageRequest::Reader pr, bool stats) {
  constexpr uint32_t kPage = 256;
  const std::string after = pr.getAfter();
  uint32_t limit = pr.getLimit() == 0 || pr.getLimit() > kPage ? kPage : pr.getLimit();
  for (;;) {
    std::vector<Topic*> sel;
    auto it = after.empty() ? topics_.begin() : topics_.upper_bound(after);
    for (; it != topics_.end() && sel.size() < limit; ++it)
      if (visible(it->second, peer)) sel.push_back(&it->second);
    while (it != topics_.end() && !visible(it->second, peer)) ++it;
    capnp::MallocMessageBuilder mb(4096);
    auto resp = mb.initRoot<proto::Response>();
    resp.setId(id);
    auto pg = resp.initPage();
    if (stats) {
      auto l = pg.initStats(uint32_t(sel.size()));
      for (size_t i = 0; i < sel.size(); ++i) stat_topic(*sel[i], l[uint32_t(i)]);
    } else {
      auto l = pg.initTopics(uint32_t(sel.size()));
      for (size_t i = 0; i < sel.size(); ++i) {
        sync_durable(*sel[i]);
        topic_info(*sel[i], l[uint32_t(i)]);
      }
    }
    pg.setNext(sel.empty() ? after : sel.back()->s.name);
    pg.setMore(it != topics_.end());
    if (sel.size() <= 1 ||
        capnp::computeSerializedSizeInWords(mb) * 8 + control::kFrameHeader <= control::kMaxFrame)
      return reply(peer, mb);
    limit = uint32_t(sel.size() / 2);
  }
}

void Registry::topic_info(const Topic& t, proto::TopicInfo::Builder b) {
  spec_to_proto(t.s, b.initSpec());
  b.setOwnerUid(t.owner_uid);
  b.setCreatedNs(t.created_ns);
  auto dl = b.initDurable(uint32_t(t.durable.size()));
  uint32_t i = 0;
  for (auto& [key, rec] : t.durable) {
    auto d = dl[i++];
    d.setName(rec.name);
    d.setNameHash(key.first);
    d.setPartition(key.second);
    d.setPosition(rec.position);
    d.setOwnerUid(rec.owner_uid);
    d.setHasOwner(true);
    if (key.second < t.parts.size())
      if (shm::CursorSlot* s = named_slot(*t.parts[key.second], key.first)) {
        d.setPosition(slot_position(*t.parts[key.second], uint32_t(s - t.parts[key.second]->refs.slots)));
        const bool parked = aref(s->pid).load(std::memory_order_acquire) == 0;
        d.setParked(parked);
        d.setLive(!parked);
      }
  }
  if (t.s.is_durable()) {
    b.setLogDir(log_root());
    if (core_.has_archiver()) {
      std::vector<spill::PartitionStats> st;
      for (auto& ps : core_.archiver().stats())
        if (ps.topic == t.s.name) st.push_back(ps);
      auto al = b.initArchived(uint32_t(st.size()));
      for (size_t i = 0; i < st.size(); ++i) {
        auto a = al[uint32_t(i)];
        a.setPartition(st[i].partition);
        a.setArchivedSeq(st[i].archived_seq);
        a.setDurableSeq(st[i].durable_seq);
        a.setError(st[i].last_error);
      }
    }
  }
}

// P11: a record's position follows its slot while the slot exists (live or parked).
void Registry::sync_durable(Topic& t) {
  for (auto& [key, rec] : t.durable)
    if (key.second < t.parts.size())
      if (shm::CursorSlot* s = named_slot(*t.parts[key.second], key.first))
        rec.position = slot_position(*t.parts[key.second], uint32_t(s - t.parts[key.second]->refs.slots));
}

// P11 expiry: a parked slot (ACTIVE, pid 0, named) older than durable_hold_ms is
// taken by CAS pid 0 -> the daemon's pid (so a resumer cannot take it meanwhile),
// its position recorded, then freed; producers held by it are woken (P7).
bool Registry::expire_parked(uint64_t now_ns) {
  const uint64_t hold = uint64_t(core_.opts.durable_hold_ms < 0 ? 0 : core_.opts.durable_hold_ms) * 1'000'000;
  const uint32_t me = uint32_t(getpid());
  bool changed = false;
  for (auto& [name, t] : topics_) {
    for (auto& part : t.parts) {
      const shm::RingRefs& r = part->refs;
      for (uint32_t i = 0; i < r.slot_count; ++i) {
        shm::CursorSlot& s = r.slots[i];
        if (aref(s.state).load(std::memory_order_acquire) != shm::kSlotActive) continue;
        const uint64_t h = aref(s.name_hash).load(std::memory_order_relaxed);
        if (h == 0 || h == spill::kArchiverNameHash || aref(s.pid).load(std::memory_order_acquire) != 0)
          continue;
        const uint64_t since = aref(s.parked_ns).load(std::memory_order_relaxed);
        if (now_ns < since + hold) continue;
        uint32_t zero = 0;
        if (!aref(s.pid).compare_exchange_strong(zero, me, std::memory_order_acq_rel)) continue;
        const uint64_t pos = slot_position(*part, i);
        auto [rit, fresh] = t.durable.try_emplace({h, part->index});
        auto& rec = rit->second;
        if (fresh) rec.owner_uid = t.owner_uid;
        rec.position = pos;
        {
          std::lock_guard<std::mutex> g(part->pages_mu);
          const uint64_t pid_ = aref(s.page_id).load(std::memory_order_relaxed);
          shm::free_cursor_slot(r, i, part->page_of(i));  // P7 wake on its page
          if (pid_) drop_page(*part, pid_);
        }
        changed = true;
        log_event(core_.instance, LOG_INFO, "durable_expired", name, 0,
                  "subscriber '" + rec.name + "' partition " + std::to_string(part->index) + " position " +
                      std::to_string(pos));
      }
    }
  }
  return changed;
}

void Registry::stat_topic(const Topic& t, proto::TopicStat::Builder b) {
  b.setName(t.s.name);
  std::vector<spill::PartitionStats> archive;  // this topic's, when durable
  if (t.s.is_durable() && core_.has_archiver())
    for (auto& a : core_.archiver().stats())
      if (a.topic == t.s.name) archive.push_back(a);
  auto pl = b.initPartitions(uint32_t(t.parts.size()));
  for (size_t i = 0; i < t.parts.size(); ++i) {
    const Partition& p = *t.parts[i];
    const shm::RingRefs& r = p.refs;
    auto ps = pl[uint32_t(i)];
    ps.setPartition(p.index);
    const uint64_t tail = aref(r.data->tail_pos).load(std::memory_order_acquire);
    ps.setProducerPosition(tail);
    ps.setNextSequence(shm::tail_seq_of(aref(r.data->tail_seq).load(std::memory_order_relaxed)));
    ps.setRatePerSec(double(p.rate_milli.load(std::memory_order_relaxed)) / 1000.0);
    ps.setBackPressureEvents(aref(r.data->backpressure_events).load(std::memory_order_relaxed));
    ps.setReclaimedCursors(p.reclaimed_cursors.load(std::memory_order_relaxed));
    ps.setFilledClaims(p.filled_claims.load(std::memory_order_relaxed));
    ps.setCapacity(r.capacity);
    const uint64_t next_seq = shm::tail_seq_of(aref(r.data->tail_seq).load(std::memory_order_relaxed));
    for (auto& a : archive)
      if (a.partition == p.index) {
        ps.setDurable(true);
        ps.setArchivedSeq(a.archived_seq);
        ps.setDurableSeq(a.durable_seq);
        ps.setArchiverError(a.last_error);
      }
    // From the daemon's own grant records (layout 4: the data segment holds tokens).
    uint32_t live = 0;
    {
      std::lock_guard<std::mutex> g(const_cast<Partition&>(p).prod_mu);
      const shm::ProducerGrant& sp = r.grants[shm::kSingleProducerGrant];
      ps.setProducerPid(
          sp.token != 0 && aref(r.data->producer_pid).load(std::memory_order_relaxed) == sp.token ? sp.pid
                                                                                                  : 0);
      for (uint32_t k = 0; k < r.producer_count; ++k)
        if (r.grants[k].token != 0 &&
            aref(r.producers[k].pid).load(std::memory_order_relaxed) == r.grants[k].token)
          ++live;
    }
    ps.setLiveProducers(live);
    std::vector<uint32_t> active;
    for (uint32_t k = 0; k < r.slot_count; ++k)
      if (aref(r.slots[k].state).load(std::memory_order_acquire) == shm::kSlotActive) active.push_back(k);
    auto sl = ps.initSubscribers(uint32_t(active.size()));
    for (size_t j = 0; j < active.size(); ++j) {
      const shm::CursorSlot& s = r.slots[active[j]];
      auto ss = sl[uint32_t(j)];
      uint64_t pos = slot_position(const_cast<Partition&>(p), active[j]);
      ss.setSlot(active[j]);
      ss.setPid(aref(const_cast<uint32_t&>(s.pid)).load(std::memory_order_relaxed));
      ss.setPosition(pos);
      ss.setLag(tail > pos ? tail - pos : 0);
      bool lapped = false;
      ss.setLagMessages(lag_messages(r, pos, tail, next_seq, lapped));
      ss.setLapped(lapped);
      ss.setTethered(aref(const_cast<uint32_t&>(s.flags)).load(std::memory_order_relaxed) &
                     shm::kSlotTethered);
      ss.setDurable(aref(const_cast<uint64_t&>(s.name_hash)).load(std::memory_order_relaxed) != 0);
    }
  }
}

bool Registry::grant_live(const std::pair<const Partition*, uint32_t>& key, const Grant& g) const {
  auto part = g.part.lock();
  if (!part || part.get() != key.first || key.second >= part->refs.slot_count) return false;
  const shm::CursorSlot& s = part->refs.slots[key.second];
  const uint32_t pid = aref(const_cast<uint32_t&>(s.pid)).load(std::memory_order_acquire);
  return aref(const_cast<uint32_t&>(s.state)).load(std::memory_order_acquire) == shm::kSlotActive &&
         aref(const_cast<uint32_t&>(s.generation)).load(std::memory_order_acquire) == g.generation &&
         pid != 0 && !(pid & shm::kReclaimBit);
}

void Registry::record_grant(const Peer& p, const std::shared_ptr<Partition>& part, uint32_t slot) {
  Grant g;
  g.conn = p.conn;
  g.proc = p.proc;
  g.uid = p.uid;
  g.generation = aref(part->refs.slots[slot].generation).load(std::memory_order_acquire);
  g.part = part;
  grants_[{part.get(), slot}] = g;
}

// Per-uid quotas on live grants (not root, not the daemon's uid): in all, and in
// one partition (so one uid cannot take every slot of a topic it may read). In one
// partition its parked durable slots count too: join under a new name, leave (park),
// again and again, would otherwise take every slot with no live grant at all.
bool Registry::grant_quota(const Peer& p, const Topic& t, const Partition& part, uint64_t resuming,
                           std::string& why) {
  if (p.uid == 0 || p.uid == geteuid()) return true;
  uint32_t all = 0, here = 0, parked = 0;
  for (auto it = grants_.begin(); it != grants_.end();) {
    if (!grant_live(it->first, it->second)) {
      it = grants_.erase(it);  // ended (left, reclaimed, expired, re-granted)
      continue;
    }
    if (it->second.uid == p.uid) ++all, here += it->first.first == &part;
    ++it;
  }
  for (uint32_t i = 0; i < part.refs.slot_count; ++i) {
    const shm::CursorSlot& s = part.refs.slots[i];
    const uint64_t h = aref(const_cast<uint64_t&>(s.name_hash)).load(std::memory_order_relaxed);
    if (aref(const_cast<uint32_t&>(s.state)).load(std::memory_order_acquire) != shm::kSlotActive || h == 0 ||
        h == spill::kArchiverNameHash || h == resuming ||
        aref(const_cast<uint32_t&>(s.pid)).load(std::memory_order_acquire) != 0)
      continue;
    auto rec = t.durable.find({h, part.index});
    if ((rec != t.durable.end() ? rec->second.owner_uid : t.owner_uid) == p.uid) ++parked;
  }
  here += parked;
  const DaemonOptions& o = core_.opts;
  // The bound is on the slots left for clients (a durable topic's archiver holds one
  // in each partition): half of them (rounded down), and never the last one, so
  // another uid cannot take the slot the owner needs (the owner is not bounded in a
  // partition of its own topic; uid_max_grants still counts its grants).
  const uint32_t clients = part.refs.slot_count - (t.s.is_durable() && part.refs.slot_count > 0 ? 1 : 0);
  const uint32_t per_part = std::min(o.uid_max_partition_grants ? o.uid_max_partition_grants : clients / 2,
                                     clients ? clients - 1 : 0);
  if (all >= o.uid_max_grants) {
    why = "uid " + std::to_string(p.uid) + " holds " + std::to_string(all) +
          " subscriber grants (each a slot, a cursor page and a daemon mapping), the most one uid may "
          "(uid_max_grants)";
    return false;
  }
  if (p.uid != t.owner_uid && here >= per_part) {
    why = "uid " + std::to_string(p.uid) + " holds " + std::to_string(here) + " of the " +
          std::to_string(clients) + " client subscriber slots of '" + part.topic + "' partition " +
          std::to_string(part.index) +
          (parked ? " (" + std::to_string(parked) + " of them parked under its durable names)"
                  : std::string()) +
          (clients != part.refs.slot_count ? " (the archiver holds one more)" : std::string()) +
          ", the most one uid may (uid_max_partition_grants " + std::to_string(per_part) + ")";
    return false;
  }
  return true;
}

constexpr size_t kMaxDurableNames = 4096;  // records (name x partition) per topic

bool Registry::durable_quota(const Peer& p, const Topic& t, std::string& why) const {
  if (t.durable.size() >= kMaxDurableNames) {
    why = "topic '" + t.s.name + "' has " + std::to_string(t.durable.size()) +
          " durable subscriber names (x partitions), the most a topic holds";
    return false;
  }
  if (p.uid == 0 || p.uid == geteuid() || p.uid == t.owner_uid) return true;
  uint32_t mine = 0;
  for (auto& [key, rec] : t.durable) mine += rec.owner_uid == p.uid;
  if (mine >= core_.opts.uid_max_durable_names) {
    why = "uid " + std::to_string(p.uid) + " made " + std::to_string(mine) +
          " durable subscriber names (x partitions) in '" + t.s.name +
          "', the most one uid may in a topic it does not own (uid_max_durable_names " +
          std::to_string(core_.opts.uid_max_durable_names) + ")";
    return false;
  }
  return true;
}

// JOIN: a cursor slot and a fresh page for it (layout 3). A durable name resumes
// its parked slot (only by the uid that made the name) on a fresh page starting at
// the parked position, or starts at its record.
void Registry::handle_join(const Peer& peer, uint64_t id, proto::JoinRequest::Reader j,
                           capnp::MessageBuilder& mb, proto::Response::Builder resp) {
  std::string name = j.getTopic();
  Topic* tp = topic_for(peer, id, name, Role::subscriber, true);
  if (!tp) return;
  Topic& t = *tp;
  const uint32_t pi = j.getPartition();
  if (pi >= t.parts.size())
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND,
                       "topic '" + name + "' has no partition " + std::to_string(pi));
  Partition& part = *t.parts[pi];
  const shm::RingRefs& r = part.refs;
  const bool tethered = j.getTethered();
  const std::string dn = j.getDurableName();
  const uint64_t h = dn.empty() ? 0 : durable_name_hash(dn);
  if (h == spill::kArchiverNameHash)
    return reply_error(peer, id, proto::ErrorCode::INVALID_ARGUMENT, "that durable name is reserved");
  if (std::string why; !group_name_allowed(peer, t, dn, why)) {
    log_limited(core_.instance, LOG_WARN, "access_denied", name, peer.pid, why);
    return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED, why);
  }
  // A join resent (the client retries a request whose answer it lost, over a new
  // connection or to a restarted daemon) gets the grant the first one made, when
  // that grant is the same process's: never a second, orphaned slot.
  if (const uint64_t token = j.getToken()) {
    for (uint32_t i = 0; i < r.slot_count; ++i) {
      shm::CursorSlot& s = r.slots[i];
      if (aref(s.join_token).load(std::memory_order_relaxed) != token) continue;
      auto git = grants_.find({&part, i});
      if (git == grants_.end() || !grant_live(git->first, git->second) ||
          !(git->second.conn == peer.conn || (git->second.proc != 0 && git->second.proc == peer.proc)))
        continue;
      int fd = -1;
      {
        std::lock_guard<std::mutex> g(part.pages_mu);
        fd = reopen_page(part, aref(s.page_id).load(std::memory_order_relaxed), true);
      }
      if (fd < 0) continue;
      git->second.conn = peer.conn;
      auto jr = resp.initJoin();
      jr.setSlot(i);
      jr.setGeneration(git->second.generation);
      jr.setPosition(slot_position(part, i));
      jr.setCheckBelow(0);
      jr.setResumed(false);
      jr.setPageSize(shm::kCursorPageSize);
      return reply(peer, mb, t.parts[pi], {fd});
    }
  }
  if (std::string why; !grant_quota(peer, t, part, h, why)) {
    log_limited(core_.instance, LOG_WARN, "grant_refused", name, peer.pid, why);
    return reply_error(peer, id, proto::ErrorCode::NO_SLOT, why);
  }
  const uint64_t tail = aref(r.data->tail_pos).load(std::memory_order_seq_cst);
  uint64_t start = shm::RingReader::kAtTail;
  if (j.getHasStart()) start = std::min(j.getStart(), tail);
  const auto key = std::make_pair(h, pi);
  auto rit = t.durable.end();
  if (h) {
    rit = t.durable.find(key);
    // A durable name belongs to the uid that made it: no other uid resumes it.
    if (rit != t.durable.end() && rit->second.owner_uid != peer.uid && peer.uid != 0 && peer.uid != geteuid())
      return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                         "durable subscriber '" + dn + "' of '" + name + "' belongs to uid " +
                             std::to_string(rit->second.owner_uid));
    if (std::string why; rit == t.durable.end() && !durable_quota(peer, t, why)) {
      log_limited(core_.instance, LOG_WARN, "durable_refused", name, peer.pid, why);
      return reply_error(peer, id, proto::ErrorCode::NO_SLOT, why);
    }
    if (shm::CursorSlot* s = named_slot(part, h)) {
      const uint32_t i = uint32_t(s - r.slots);
      uint32_t owner = shm::owner_pid(aref(s->pid).load(std::memory_order_acquire));
      if (owner != 0 && !shm::process_alive(owner)) {
        // Its owner died and the reaper has not parked it yet: park it now (the pid
        // is the one this daemon wrote at the grant).
        std::lock_guard<std::mutex> g(part.pages_mu);
        shm::recover_dead_cursor(r, i, owner, true, spill::kArchiverNameHash, part.page_of(i));
      }
      uint32_t zero = 0;
      if (!aref(s->pid).compare_exchange_strong(zero, uint32_t(peer.pid), std::memory_order_acq_rel))
        return reply_error(peer, id, proto::ErrorCode::ALREADY_EXISTS,
                           "topic '" + name + "' partition " + std::to_string(pi) + ": durable subscriber '" +
                               dn + "' is in use by pid " + std::to_string(shm::owner_pid(zero)));
      const uint64_t pos = slot_position(part, i);
      int fd = -1;
      uint64_t below = 0;
      try {
        std::lock_guard<std::mutex> g(part.pages_mu);
        const uint64_t old_id = aref(s->page_id).load(std::memory_order_relaxed);
        shm::CursorPage* old_pg = part.page_of(i);
        const uint64_t nid = create_page(part, fd);
        aref(s->join_token).store(j.getToken(), std::memory_order_relaxed);
        aref(s->ident).store(proc_identity(peer.pid, peer.proc), std::memory_order_relaxed);
        below = shm::regrant_parked(r, i, uint32_t(peer.pid), tethered, part.pages[nid], nid, pos);
        if (old_pg) shm::wake_space_page(old_pg);
        if (old_id) drop_page(part, old_id);
      } catch (const Error& e) {
        aref(s->pid).store(0, std::memory_order_release);  // parked again
        return reply_error(peer, id, proto::ErrorCode::SYSTEM, e.what());
      }
      core_.reaper_q.push(ReaperCmd{ReaperCmd::client_pid, nullptr, peer.pid});
      record_grant(peer, t.parts[pi], i);
      auto jr = resp.initJoin();
      jr.setSlot(i);
      jr.setGeneration(aref(s->generation).load(std::memory_order_relaxed));
      jr.setPosition(pos);
      jr.setCheckBelow(below);
      jr.setResumed(true);
      jr.setPageSize(shm::kCursorPageSize);
      log_limited(
          core_.instance, LOG_INFO, "durable_resumed", name, peer.pid,
          "subscriber '" + dn + "' partition " + std::to_string(pi) + " position " + std::to_string(pos));
      return reply(peer, mb, t.parts[pi], {fd});
    }
    if (rit != t.durable.end() && !j.getHasStart()) start = std::min(rit->second.position, tail);
  }
  int fd = -1;
  uint64_t pos = 0, below = 0;
  int32_t slot = -1;
  try {
    std::lock_guard<std::mutex> g(part.pages_mu);
    const uint64_t nid = create_page(part, fd);
    slot = shm::join_slot(r, uint32_t(peer.pid), tethered, h, start, part.pages[nid], nid, pos, below);
    if (slot >= 0) {
      aref(r.slots[slot].join_token).store(j.getToken(), std::memory_order_relaxed);
      // The grantee's identity (layout 4): a restarted daemon adopts the grant only for
      // the process with this pid AND identity, never a later holder of the pid.
      aref(r.slots[slot].ident).store(proc_identity(peer.pid, peer.proc), std::memory_order_relaxed);
    }
    if (slot < 0) {
      drop_page(part, nid);
      close(fd);
      return reply_error(
          peer, id, proto::ErrorCode::NO_SLOT,
          "topic '" + name + "' partition " + std::to_string(pi) + ": every subscriber slot is taken");
    }
  } catch (const Error& e) {
    return reply_error(peer, id, proto::ErrorCode::SYSTEM, e.what());
  }
  core_.reaper_q.push(ReaperCmd{ReaperCmd::client_pid, nullptr, peer.pid});
  record_grant(peer, t.parts[pi], uint32_t(slot));
  if (h) {
    const uint32_t owner = rit != t.durable.end() ? rit->second.owner_uid : peer.uid;
    // A new name's owner is on disk before the grant is answered (the batch is
    // written before its replies): a daemon killed right after cannot restart with
    // a parked slot of this name and no owner, which any reader could resume.
    if (rit == t.durable.end())
      must_persist_ = true;
    else
      dirty_ = true;
    t.durable[key] = DurableRec{dn, pos, owner};
    log_limited(
        core_.instance, LOG_INFO, "durable_joined", name, peer.pid,
        "subscriber '" + dn + "' partition " + std::to_string(pi) + " position " + std::to_string(pos));
  }
  auto jr = resp.initJoin();
  jr.setSlot(uint32_t(slot));
  jr.setGeneration(aref(r.slots[slot].generation).load(std::memory_order_relaxed));
  jr.setPosition(pos);
  jr.setCheckBelow(below);
  jr.setResumed(false);
  jr.setPageSize(shm::kCursorPageSize);
  return reply(peer, mb, t.parts[pi], {fd});
}

// LEAVE: the grantee gives its slot back (or parks a durable one). Only the pid the
// grant was made to (its SO_PEERCRED pid, recorded by us in the slot) may.
void Registry::handle_leave(const Peer& peer, uint64_t id, proto::LeaveRequest::Reader l,
                            capnp::MessageBuilder& mb, proto::Response::Builder resp) {
  std::string name = l.getTopic();
  // One answer for every grant this connection does not hold, whether the topic, the
  // partition, the slot exist or not: a leave tells nobody what exists.
  auto none = [&] {
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND,
                       "no cursor grant of this connection in '" + name + "' partition " +
                           std::to_string(l.getPartition()) + " slot " + std::to_string(l.getSlot()) +
                           " generation " + std::to_string(l.getGeneration()));
  };
  auto it = topics_.find(name);
  if (it == topics_.end() || l.getPartition() >= it->second.parts.size()) return none();
  Partition& part = *it->second.parts[l.getPartition()];
  const shm::RingRefs& r = part.refs;
  const uint32_t i = l.getSlot();
  if (i >= r.slot_count) return none();
  shm::CursorSlot& s = r.slots[i];
  // The grant must be held by this connection (or the process that made it, over
  // another connection of its own): never by a pid number, which the kernel gives
  // to another process once its owner is gone.
  auto git = grants_.find({&part, i});
  const bool held =
      git != grants_.end() && grant_live(git->first, git->second) &&
      git->second.generation == l.getGeneration() &&
      (git->second.conn == peer.conn || (git->second.proc != 0 && git->second.proc == peer.proc));
  uint32_t owner = aref(s.pid).load(std::memory_order_acquire);
  if (!held || owner == 0 || (owner & shm::kReclaimBit) ||
      !aref(s.pid).compare_exchange_strong(owner, shm::reclaimer_mark(), std::memory_order_acq_rel))
    return none();
  grants_.erase(git);
  {
    std::lock_guard<std::mutex> g(part.pages_mu);
    shm::CursorPage* pg = part.page_of(i);
    const uint64_t pid_ = aref(s.page_id).load(std::memory_order_relaxed);
    if (l.getPark() && aref(s.name_hash).load(std::memory_order_relaxed) != 0) {
      aref(r.wake->data_waiter_bits[i / 64]).fetch_and(~(uint64_t(1) << (i % 64)), std::memory_order_seq_cst);
      shm::park_position(r, i, pg);
      aref(s.parked_ns).store(shm::monotonic_ns(), std::memory_order_relaxed);
      aref(s.pid).store(0, std::memory_order_release);  // P11: parked under its name
    } else {
      shm::free_cursor_slot(r, i, pg);
      if (pid_) drop_page(part, pid_);
    }
  }
  resp.setDone();
  return reply(peer, mb);
}

// The daemon's per-grant extras in the producer grant table (control segment, which
// only the daemon writes): the client's request token and the grantee's uid.
static uint64_t* request_tokens(const shm::RingRefs& r) {
  return reinterpret_cast<uint64_t*>(reinterpret_cast<std::byte*>(r.grants) +
                                     shm::kProducerRequestTokensOffset);
}
static uint32_t* grant_uids(const shm::RingRefs& r) {
  return reinterpret_cast<uint32_t*>(reinterpret_cast<std::byte*>(r.grants) + shm::kProducerGrantUidsOffset);
}
static void clear_producer_grant(const shm::RingRefs& r, uint32_t k) {
  r.grants[k] = shm::ProducerGrant{};
  request_tokens(r)[k] = 0;
  grant_uids(r)[k] = 0;
}

// Per-uid quotas on producer grants (not root, the daemon's uid or the topic's
// owner): in all, and in one partition (half its producer entries, at least 1), so
// that one uid allowed to publish cannot take every entry of a topic. Counted on the
// daemon's own grant records (live grantees only), never on the data segment.
bool Registry::producer_quota(const Peer& p, const Topic& t, const Partition& part, std::string& why) {
  if (p.uid == 0 || p.uid == geteuid() || p.uid == t.owner_uid) return true;
  uint32_t all = 0, here = 0;
  for (auto& [n, tt] : topics_) {
    if (tt.owner_uid == p.uid) continue;  // its own topics: not counted (as for subscriber grants)
    for (auto& pp : tt.parts) {
      const shm::RingRefs& r = pp->refs;
      if (!r.grants) continue;
      std::lock_guard<std::mutex> g(pp->prod_mu);
      const uint32_t* uids = grant_uids(r);
      for (uint32_t k = 0; k < shm::kProducerGrants; ++k) {
        const shm::ProducerGrant& gr = r.grants[k];
        if (gr.token == 0 || uids[k] != p.uid || proc_identity(pid_t(gr.pid)) != gr.ident) continue;
        ++all;
        here += pp.get() == &part;
      }
    }
  }
  const DaemonOptions& o = core_.opts;
  const uint32_t entries = part.refs.multi() ? part.refs.producer_count : 1;
  const uint32_t per_part = o.uid_max_partition_producer_grants ? o.uid_max_partition_producer_grants
                                                                : std::max<uint32_t>(1, entries / 2);
  if (all >= o.uid_max_producer_grants) {
    why = "uid " + std::to_string(p.uid) + " holds " + std::to_string(all) +
          " producer grants (publishers) in topics it does not own, the most one uid may "
          "(uid_max_producer_grants " +
          std::to_string(o.uid_max_producer_grants) + ")";
    return false;
  }
  if (here >= per_part) {
    why = "uid " + std::to_string(p.uid) + " holds " + std::to_string(here) + " of the " +
          std::to_string(entries) + " producer entries of '" + part.topic + "' partition " +
          std::to_string(part.index) + ", the most one uid may (uid_max_partition_producer_grants " +
          std::to_string(per_part) + ")";
    return false;
  }
  return true;
}

// PRODUCER (layout 4): producer ownership, decided on the daemon's own grant
// records (control segment: token, SO_PEERCRED pid, start time) and never on an
// owner value read from the data segment, which publishers write. The daemon picks
// the entry, resolves a dead grantee's claim first, writes an owner token of its
// own choosing (never a pid) and records the grant before answering. An entry is
// free only when no grant record holds it or its grantee is dead: a publisher that
// zeroes a live grantee's owner field does not free it. The client's request token
// makes a resend (answer lost: new connection, restarted daemon) get the same grant,
// and a `release` with it gives the grant back (the publisher closed).
void Registry::handle_producer(const Peer& peer, uint64_t id, proto::ProducerRequest::Reader q,
                               capnp::MessageBuilder& mb, proto::Response::Builder resp) {
  std::string name = q.getTopic();
  Topic* tp = topic_for(peer, id, name, Role::publisher);
  if (!tp) return;
  const uint32_t pi = q.getPartition();
  if (pi >= tp->parts.size())
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND,
                       "topic '" + name + "' has no partition " + std::to_string(pi));
  Partition& part = *tp->parts[pi];
  const shm::RingRefs& r = part.refs;
  const std::string where = "partition " + std::to_string(pi) + " of '" + name + "'";
  // The requester's identity for the record: its pid and process identity, checked
  // to be the connected process (its pidfd) so a pid reused meanwhile is refused.
  const uint64_t ident = proc_identity(peer.pid, peer.proc);
  if (ident == 0)
    return reply_error(peer, id, proto::ErrorCode::SYSTEM,
                       "cannot identify pid " + std::to_string(peer.pid) +
                           " (pidfd, /proc): it exited, or /proc is not mounted; no producer grant");
  auto live = [&](const shm::ProducerGrant& g) {
    return g.token != 0 && proc_identity(pid_t(g.pid)) == g.ident;
  };
  uint64_t* rtok = request_tokens(r);
  uint32_t* uids = grant_uids(r);
  const uint64_t request = q.getToken();
  {
    // A resent request (or a release): the grant recorded for this token, if this
    // very process (pid and identity) holds it.
    std::lock_guard<std::mutex> g(part.prod_mu);
    int32_t mine = -1;
    for (uint32_t k = 0; request != 0 && k < shm::kProducerGrants && mine < 0; ++k)
      if (rtok[k] == request && r.grants[k].token != 0 && r.grants[k].pid == uint32_t(peer.pid) &&
          r.grants[k].ident == ident)
        mine = int32_t(k);
    if (q.getRelease()) {
      if (mine < 0)
        return reply_error(peer, id, proto::ErrorCode::NOT_FOUND,
                           "no producer grant of this process for that token in " + where);
      const uint32_t k = uint32_t(mine);
      // The publisher gave its entry back (it closes): anything it left is resolved
      // on its token as for a dead grantee (nothing, when it detached cleanly).
      if (k == shm::kSingleProducerGrant) {
        shm::release_dead_single_producer(r, r.grants[k].token);
      } else if (shm::recover_dead_producer(r, k, r.grants[k].token) == shm::ClaimRecovery::padded) {
        part.filled_claims.fetch_add(1, std::memory_order_relaxed);
      }
      clear_producer_grant(r, k);
      resp.setDone();
      return reply(peer, mb);
    }
    if (mine >= 0) {
      const uint32_t k = uint32_t(mine);
      auto pr = resp.initProducer();
      pr.setSlot(k == shm::kSingleProducerGrant ? 0 : k);
      pr.setToken(r.grants[k].token);
      pr.setMulti(r.multi());
      return reply(peer, mb);
    }
  }
  if (q.getRelease())
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND,
                       "no producer grant of this process for that token in " + where);
  if (std::string why; !producer_quota(peer, *tp, part, why)) {
    log_limited(core_.instance, LOG_WARN, "grant_refused", name, peer.pid, why);
    return reply_error(peer, id, proto::ErrorCode::NO_SLOT, why);
  }
  auto token_used = [&](uint32_t t) {
    for (uint32_t k = 0; k < shm::kProducerGrants; ++k)
      if (r.grants[k].token == t) return true;
    return false;
  };
  std::lock_guard<std::mutex> g(part.prod_mu);
  uint32_t tok = 0;
  while (tok == 0 || token_used(tok)) {
    if (next_token_ == 0) {
      uint32_t seed = 0;
      if (getrandom(&seed, sizeof seed, 0) != ssize_t(sizeof seed)) seed = uint32_t(shm::monotonic_ns());
      next_token_ = seed;
    }
    tok = shm::kTokenBit | (++next_token_ & (shm::kTokenBit - 1));
    if (tok == shm::kTokenBit) tok = 0;
  }
  uint32_t slot = 0, k = shm::kSingleProducerGrant;
  if (!r.multi()) {
    shm::ProducerGrant& gr = r.grants[shm::kSingleProducerGrant];
    // Held while its grantee lives, whatever the owner field says now (a publisher
    // can write it): only a release or the grantee's death frees the role.
    if (live(gr)) {
      return reply_error(peer, id, proto::ErrorCode::ALREADY_EXISTS,
                         gr.pid == uint32_t(peer.pid)
                             ? where + " already has a publisher in this process (single-producer topic)"
                             : where + " already has a publisher (pid " + std::to_string(gr.pid) +
                                   "); create the topic with multi_producer for several");
    }
    // No live grant holds it: a dead grantee's role is released on its token (the new
    // publisher repairs the tail, recover_sp), then the role is ours to hand out.
    if (gr.token) shm::release_dead_single_producer(r, gr.token);
    aref(r.data->space_waiter_bits)
        .fetch_and(~(uint64_t(1) << shm::kSpaceBitSingle), std::memory_order_seq_cst);
    gr = shm::ProducerGrant{tok, uint32_t(peer.pid), ident};
    aref(r.data->producer_pid).store(tok, std::memory_order_release);
  } else {
    int32_t got = -1;
    for (uint32_t e = 0; e < r.producer_count && got < 0; ++e) {
      shm::ProducerGrant& gr = r.grants[e];
      shm::ProducerSlot& p = r.producers[e];
      if (gr.token != 0) {
        // Granted: held while its grantee lives, whatever its owner field says (a
        // publisher can zero it); a dead grantee's entry is resolved on its token.
        if (live(gr)) continue;
        if (shm::recover_dead_producer(r, e, gr.token) == shm::ClaimRecovery::padded)
          part.filled_claims.fetch_add(1, std::memory_order_relaxed);
        clear_producer_grant(r, e);
      }
      uint32_t cur = aref(p.pid).load(std::memory_order_acquire);
      if (cur != 0) continue;  // a value we never granted (or a recovery under way): left alone
      if (!aref(p.pid).compare_exchange_strong(cur, tok, std::memory_order_acq_rel)) continue;
      aref(p.generation).fetch_add(1, std::memory_order_relaxed);
      aref(p.claim).store(shm::claim_word(0, shm::kClaimIdle), std::memory_order_release);
      gr = shm::ProducerGrant{tok, uint32_t(peer.pid), ident};
      got = int32_t(e);
    }
    if (got < 0)
      return reply_error(peer, id, proto::ErrorCode::NO_SLOT,
                         where + " already has " + std::to_string(r.producer_count) +
                             " publishers (the multi-producer limit)");
    slot = k = uint32_t(got);
  }
  rtok[k] = request;
  uids[k] = uint32_t(peer.uid);
  if (exit_after_producer_grant_) _exit(9);
  core_.reaper_q.push(ReaperCmd{ReaperCmd::client_pid, nullptr, peer.pid});
  auto pr = resp.initProducer();
  pr.setSlot(slot);
  pr.setToken(tok);
  pr.setMulti(r.multi());
  return reply(peer, mb);
}

// CURSOR_PAGE: a producer maps slot i's page of generation g read-only.
void Registry::handle_page(const Peer& peer, uint64_t id, proto::PageFetch::Reader f,
                           capnp::MessageBuilder& mb, proto::Response::Builder resp) {
  std::string name = f.getTopic();
  Topic* tp = topic_for(peer, id, name, Role::publisher);
  if (!tp) return;
  if (f.getPartition() >= tp->parts.size())
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND, "no such partition");
  Partition& part = *tp->parts[f.getPartition()];
  const shm::RingRefs& r = part.refs;
  const uint32_t i = f.getSlot();
  if (i >= r.slot_count) return reply_error(peer, id, proto::ErrorCode::NOT_FOUND, "no such slot");
  shm::CursorSlot& s = r.slots[i];
  auto stale = [&] {
    return aref(s.state).load(std::memory_order_seq_cst) != shm::kSlotActive ||
           aref(s.generation).load(std::memory_order_seq_cst) != f.getGeneration() ||
           (aref(s.flags).load(std::memory_order_relaxed) & shm::kSlotEmbedded);
  };
  if (stale()) return reply_error(peer, id, proto::ErrorCode::NOT_FOUND, "stale cursor grant");
  int fd;
  {
    // The reaper drops pages (and closes their fds) under pages_mu: without it this
    // read of page_fds raced with the erase, and the fd could be closed (its number
    // reused) before it was reopened (TSan, daemon crash matrix).
    std::lock_guard<std::mutex> g(part.pages_mu);
    fd = reopen_page(part, aref(s.page_id).load(std::memory_order_relaxed));
  }
  if (fd < 0 || stale()) {
    if (fd >= 0) close(fd);
    return reply_error(peer, id, proto::ErrorCode::NOT_FOUND, "stale cursor grant");
  }
  auto pr = resp.initCursorPage();
  pr.setGeneration(f.getGeneration());
  pr.setPageSize(shm::kCursorPageSize);
  return reply(peer, mb, tp->parts[f.getPartition()], {fd});
}

void Registry::remove_topic(std::map<std::string, Topic>::iterator it, pid_t by, const char* why) {
  const std::string name = it->first;
  if (it->second.s.is_durable() && core_.has_archiver()) {
    // Stop archiving first (its I/O in flight completes), then remove the log:
    // deleting a topic deletes its history.
    for (auto& p : it->second.parts) core_.archiver().remove_partition(name, p->index);
  }
  if (it->second.s.is_durable()) {
    std::error_code ec;
    std::filesystem::remove_all(log_root() + "/" + name, ec);
    if (ec) log_event(core_.instance, LOG_WARN, "log_remove_failed", name, by, ec.message());
  }
  for (auto& p : it->second.parts) {
    core_.reaper_q.push(ReaperCmd{ReaperCmd::unwatch_partition, p, 0});
    remove_partition_segments(core_.keeper, core_.opts.shm_prefix, name, p->index);
    release_deleted(*p);
    std::lock_guard<std::mutex> g(p->pages_mu);
    std::vector<uint64_t> ids;
    for (auto& [pid_, pg] : p->pages) ids.push_back(pid_);
    for (uint64_t pid_ : ids) drop_page(*p, pid_);
  }
  topics_.erase(it);
  schemas_.topic_deleted(name);
  core_.counters.topics = uint32_t(topics_.size());
  must_persist_ = true;  // written before the replies go out (see run)
  log_event(core_.instance, LOG_INFO, "topic_deleted", name, by, why);
}

void Registry::connection_closed(uint64_t conn) {
  if (conn == 0) return;
  groups_connection_closed(conn);  // its consumer group members go (the groups rebalance)
  for (auto it = topics_.begin(); it != topics_.end();) {
    auto next = std::next(it);
    if (it->second.s.ephemeral && it->second.owner_conn == conn) {
      try {
        remove_topic(it, it->second.owner_pid, "ephemeral: its connection closed");
      } catch (const std::exception& e) {
        log_event(core_.instance, LOG_ERROR, "topic_delete_failed", it->first, 0, e.what());
      }
    }
    it = next;
  }
}

void Registry::handle(const RegistryCmd& c) {
  const Peer& peer = c.peer;
  auto req = c.req->root();
  const uint64_t id = req.getId();
  capnp::MallocMessageBuilder mb(1024);
  auto resp = mb.initRoot<proto::Response>();
  resp.setId(id);
  switch (req.which()) {
    case proto::Request::HELLO: {
      auto h = resp.initHello();
      h.setVersion(proto::PROTOCOL_VERSION);
      h.setDaemonPid(uint32_t(getpid()));
      h.setUid(peer.uid);
      h.setGid(peer.gid);
      h.setPid(uint32_t(peer.pid));
      reply(peer, mb);
      return;
    }
    case proto::Request::HEALTH: {
      auto h = resp.initHealth();
      h.setServing(core_.counters.serving.load() && !core_.stopping.load());
      h.setUptimeNs(realtime_ns() - core_.counters.start_ns);
      h.setTopics(uint32_t(topics_.size()));
      h.setClients(core_.counters.clients.load());
      h.setOpenFds(uint32_t(count_open_fds()));
      h.setRssBytes(rss_bytes());
      h.setReclaimedClients(core_.counters.reclaimed_clients.load());
      h.setDaemonPid(uint32_t(getpid()));
      h.setStateDir(core_.opts.state_dir);
      reply(peer, mb);
      return;
    }
    case proto::Request::CREATE_TOPIC: {
      TopicSettings t;
      std::string err;
      if (!spec_from_proto(req.getCreateTopic(), t, err))
        return reply_error(peer, id, proto::ErrorCode::INVALID_ARGUMENT, err);
      if (auto u = unrestored_.find(t.name); u != unrestored_.end())
        return reply_error(peer, id, proto::ErrorCode::ALREADY_EXISTS,
                           visible(u->second.t, peer)
                               ? "topic '" + t.name + "' exists but could not be restored at start (" +
                                     u->second.why + "); it is retried every " +
                                     std::to_string(kRetryNs / 1'000'000'000) + " s and at the next start"
                               : "topic '" + t.name + "' exists and belongs to another user");
      auto it = topics_.find(t.name);
      if (it != topics_.end()) {
        // Topic squatting: another uid's create is refused unless the topic admits it
        // AND asks for exactly the stored access list (and settings, below); it never
        // takes the topic over (the owner stays).
        const Topic& ex = it->second;
        if (peer.uid != ex.owner_uid && !visible(ex, peer))
          return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                             "topic '" + t.name + "' exists and belongs to another user");
        // An ephemeral topic is its connection's alone: another connection (even of
        // the same uid) cannot adopt it, and a normal topic cannot become one.
        if (ex.s.ephemeral != t.ephemeral || (ex.s.ephemeral && ex.owner_conn != peer.conn))
          return reply_error(peer, id, proto::ErrorCode::ALREADY_EXISTS,
                             "topic '" + t.name + "' exists" +
                                 (ex.s.ephemeral ? " as an ephemeral topic of another connection (pid " +
                                                       std::to_string(ex.owner_pid) + ")"
                                                 : std::string(" and is not ephemeral")));
        auto sorted = [](const AccessSpec& a) {
          AccessSpec s = a;
          for (auto* v : {&s.publish_uids, &s.publish_gids, &s.subscribe_uids, &s.subscribe_gids})
            std::sort(v->begin(), v->end());
          return std::make_tuple(s.publish_uids, s.publish_gids, s.subscribe_uids, s.subscribe_gids);
        };
        if (sorted(ex.s.access) != sorted(t.access))
          return reply_error(peer, id, proto::ErrorCode::ALREADY_EXISTS,
                             "topic '" + t.name + "' exists with another access list (owner uid " +
                                 std::to_string(ex.owner_uid) + ")");
        const TopicSettings& e = it->second.s;
        uint64_t em = e.max_payload ? e.max_payload : e.capacity / 4;
        uint64_t tm = t.max_payload ? t.max_payload : t.capacity / 4;
        if (e.partitions != t.partitions || e.capacity != t.capacity || em != tm || e.policy != t.policy ||
            e.multi_producer != t.multi_producer || e.slots != t.slots || e.schema_id != t.schema_id ||
            e.schema_mode != t.schema_mode || e.is_durable() != t.is_durable() ||
            (t.is_durable() &&
             (e.flush != t.flush || e.flush_interval_ms != t.flush_interval_ms ||
              e.retention_bytes != t.retention_bytes || e.retention_age_s != t.retention_age_s ||
              e.segment_bytes != t.segment_bytes)))
          return reply_error(peer, id, proto::ErrorCode::ALREADY_EXISTS,
                             "topic '" + t.name + "' exists with other settings");
        topic_info(it->second, resp.initTopic());  // idempotent
        return reply(peer, mb);
      }
      if (topics_.size() >= core_.opts.max_topics)
        return reply_error(peer, id, proto::ErrorCode::NO_SLOT, "topic limit reached");
      if (std::string why; !admit(peer, t, why)) return reply_error(peer, id, proto::ErrorCode::NO_SLOT, why);
      schemas_.topic_deleted(t.name);  // a history left behind by an earlier topic of this name
      Topic tp;
      tp.s = t;
      tp.owner_uid = peer.uid;
      tp.created_ns = realtime_ns();
      if (t.ephemeral) {
        tp.owner_conn = peer.conn;
        tp.owner_pid = peer.pid;
      }
      try {
        for (uint32_t p = 0; p < t.partitions; ++p) {
          bool re = false;
          tp.parts.push_back(open_partition(core_.keeper, t, p, re));
          if (t.is_durable() && !re) continue_log_sequence(*tp.parts.back(), log_root());
        }
        // The archiver's tethered cursor joins before any producer is granted, so
        // no frame escapes the log.
        if (t.is_durable()) archive_topic(tp);
      } catch (const Error& e) {
        if (t.is_durable() && core_.has_archiver())
          for (uint32_t p = 0; p < t.partitions; ++p) core_.archiver().remove_partition(t.name, p);
        tp.parts.clear();
        for (uint32_t p = 0; p < t.partitions; ++p)
          remove_partition_segments(core_.keeper, core_.opts.shm_prefix, t.name, p);
        return reply_error(peer, id, proto::ErrorCode::SYSTEM, e.what());
      }
      for (auto& p : tp.parts) core_.reaper_q.push(ReaperCmd{ReaperCmd::watch_partition, p, 0});
      topic_info(tp, resp.initTopic());
      log_event(core_.instance, LOG_INFO, "topic_created", t.name, peer.pid,
                std::to_string(t.partitions) + " partitions x " + std::to_string(t.capacity) + " bytes" +
                    (t.is_durable() ? std::string(", durable (flush ") +
                                          spill::to_string(spill::FlushPolicy(t.flush)) + ")"
                                    : std::string()) +
                    (t.ephemeral ? ", ephemeral" : ""));
      topics_.emplace(t.name, std::move(tp));
      core_.counters.topics = uint32_t(topics_.size());
      must_persist_ = true;  // written before the replies go out (see run)
      return reply(peer, mb);
    }
    case proto::Request::DESCRIBE_TOPIC: {
      std::string name = req.getDescribeTopic();
      Topic* t = seen(peer, id, name);  // no rights: learns nothing
      if (!t) return;
      sync_durable(*t);
      topic_info(*t, resp.initTopic());
      return reply(peer, mb);
    }
    case proto::Request::LIST_TOPICS: {  // all at once: tooLarge beyond a frame (listPage pages)
      std::vector<const Topic*> sel;
      for (auto& [n, t] : topics_)
        if (visible(t, peer)) sel.push_back(&t);
      auto l = resp.initTopics(uint32_t(sel.size()));
      for (size_t i = 0; i < sel.size(); ++i) topic_info(*sel[i], l[uint32_t(i)]);
      return reply(peer, mb);
    }
    case proto::Request::DELETE_TOPIC: {
      std::string name = req.getDeleteTopic();
      if (auto u = unrestored_.find(name); u != unrestored_.end() && may(u->second.t, peer, Role::admin)) {
        // A topic kept without being restored: its kept segments and log go.
        for (uint32_t p = 0; p < u->second.t.s.partitions; ++p)
          remove_partition_segments(core_.keeper, core_.opts.shm_prefix, name, p);
        if (u->second.t.s.is_durable()) {
          std::error_code ec;
          std::filesystem::remove_all(log_root() + "/" + name, ec);
        }
        unrestored_.erase(u);
        must_persist_ = true;
        log_event(core_.instance, LOG_INFO, "topic_deleted", name, peer.pid, "it had not been restored");
        resp.setDone();
        return reply(peer, mb);
      }
      if (!seen(peer, id, name)) return;
      auto it = topics_.find(name);
      if (!may(it->second, peer, Role::admin))
        return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                           "only the topic's owner or root may delete '" + name + "'");
      // Ephemeral: only its connection deletes it early (not another connection,
      // whatever its uid, root included: ending the owner process removes it).
      if (it->second.s.ephemeral && it->second.owner_conn != peer.conn)
        return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                           "topic '" + name + "' is ephemeral: only the connection that created it (pid " +
                               std::to_string(it->second.owner_pid) +
                               ") may delete it; it goes when that connection closes");
      try {
        remove_topic(it, peer.pid, "");
      } catch (const Error& e) {
        return reply_error(peer, id, proto::ErrorCode::SYSTEM, e.what());
      }
      resp.setDone();
      return reply(peer, mb);
    }
    case proto::Request::OPEN: {
      auto o = req.getOpen();
      std::string name = o.getTopic();
      Role role = o.getRole() == proto::Role::PUBLISHER    ? Role::publisher
                  : o.getRole() == proto::Role::SUBSCRIBER ? Role::subscriber
                                                           : Role::admin;
      // No rights at all: the answer of a topic that does not exist (it learns
      // nothing); it may see the topic (the other role): told why.
      const Topic* tp = seen(peer, id, name, role_verb(role));
      if (!tp || !allowed(peer, id, *tp, name, role, true)) return;
      const Topic& t = *tp;
      uint32_t p = o.getPartition();
      if (p >= t.parts.size())
        return reply_error(peer, id, proto::ErrorCode::NOT_FOUND,
                           "topic '" + name + "' has no partition " + std::to_string(p));
      auto part = t.parts[p];
      auto r = resp.initOpen();
      r.setDataSize(part->data_size);
      r.setCtlSize(part->ctl_size);
      r.setWakeSize(shm::kWakeSegmentSize);
      // Layout 3: the control segment is the daemon's alone (read-only fd for every
      // client); the wake segment is written by subscribers (their data-waiter bits).
      const int dfd = reopen_segment(*part, true, role != Role::subscriber);
      const int cfd = dfd < 0 ? -1 : reopen_segment(*part, false, false);
      const int wfd = cfd < 0 ? -1 : reopen_wake(*part, role == Role::subscriber);
      if (wfd < 0) {
        const int e = errno;
        if (dfd >= 0) close(dfd);
        if (cfd >= 0) close(cfd);
        return reply_error(peer, id, proto::ErrorCode::SYSTEM,
                           "cannot hand out the segments of '" + name + "' partition " + std::to_string(p) +
                               ": " + strerror(e));
      }
      core_.reaper_q.push(ReaperCmd{ReaperCmd::client_pid, nullptr, peer.pid});
      log_event(core_.instance, LOG_DEBUG, "open", name, peer.pid,
                role == Role::publisher    ? "publisher"
                : role == Role::subscriber ? "subscriber"
                                           : "admin");
      return reply(peer, mb, part, {dfd, cfd, wfd});
    }
    case proto::Request::REGISTER_SCHEMA:
    case proto::Request::SCHEMA_HISTORY: return handle_schema(peer, id, req, mb, resp);
    case proto::Request::SET_SCHEMA_MODE: {
      auto q = req.getSetSchemaMode();
      const std::string name = q.getTopic();
      if (!seen(peer, id, name)) return;  // no rights: learns nothing
      auto it = topics_.find(name);
      if (!may(it->second, peer, Role::admin))
        return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                           "only the topic's owner or root may change the schema mode of '" + name + "'");
      const uint32_t from = it->second.s.schema_mode, to = uint32_t(q.getMode());
      if (from != to) {
        it->second.s.schema_mode = to;
        must_persist_ = true;  // saved with the topic's settings before the next reply
        log_event(core_.instance, LOG_INFO, "schema_mode_changed", name, peer.pid,
                  std::string(schema_mode_name(proto::SchemaMode(uint16_t(from)))) + " -> " +
                      schema_mode_name(q.getMode()));
      }
      resp.setDone();
      return reply(peer, mb);
    }
    case proto::Request::JOIN: return handle_join(peer, id, req.getJoin(), mb, resp);
    case proto::Request::LEAVE: return handle_leave(peer, id, req.getLeave(), mb, resp);
    case proto::Request::CURSOR_PAGE: return handle_page(peer, id, req.getCursorPage(), mb, resp);
    case proto::Request::PRODUCER: return handle_producer(peer, id, req.getProducer(), mb, resp);
    case proto::Request::GROUP_JOIN:
    case proto::Request::GROUP_SYNC:
    case proto::Request::GROUP_LEAVE: return handle_group(peer, id, req, mb, resp);
    case proto::Request::LIST_PAGE: return reply_page(peer, id, req.getListPage(), false);
    case proto::Request::STAT_PAGE: return reply_page(peer, id, req.getStatPage(), true);
    case proto::Request::STAT: {
      std::string name = req.getStat();
      std::vector<const Topic*> sel;
      for (auto& [n, t] : topics_)
        if ((name.empty() || n == name) && visible(t, peer)) sel.push_back(&t);
      if (!name.empty() && sel.empty())
        return reply_error(peer, id, proto::ErrorCode::NOT_FOUND, "no topic '" + name + "'");
      auto l = resp.initStats(uint32_t(sel.size()));
      for (size_t i = 0; i < sel.size(); ++i) stat_topic(*sel[i], l[uint32_t(i)]);
      return reply(peer, mb);
    }
    case proto::Request::SAVE_CURSOR: {
      // P11: a durable subscriber joined under `name`; remember name and position.
      auto d = req.getSaveCursor();
      std::string name = d.getTopic();
      Topic* tp = topic_for(peer, id, name, Role::subscriber);  // no rights: as if it did not exist
      if (!tp) return;
      Topic& t = *tp;
      if (d.getPartition() >= t.parts.size() || d.getName().size() == 0)
        return reply_error(peer, id, proto::ErrorCode::INVALID_ARGUMENT,
                           "saveCursor: no such partition, or an empty name");
      std::string dn = d.getName();
      const auto key = std::make_pair(durable_name_hash(dn), d.getPartition());
      auto rit = t.durable.find(key);
      if (std::string why; !group_name_allowed(peer, t, dn, why)) {
        log_limited(core_.instance, LOG_WARN, "access_denied", name, peer.pid, why);
        return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED, why);
      }
      if (std::string why; rit == t.durable.end() && !durable_quota(peer, t, why)) {
        log_limited(core_.instance, LOG_WARN, "durable_refused", name, peer.pid, why);
        return reply_error(peer, id, proto::ErrorCode::NO_SLOT, why);
      }
      // A durable name belongs to the uid that made it: another uid neither moves its
      // saved position nor resumes it.
      if (rit != t.durable.end() && rit->second.owner_uid != peer.uid && peer.uid != 0 &&
          peer.uid != geteuid())
        return reply_error(peer, id, proto::ErrorCode::PERMISSION_DENIED,
                           "durable subscriber '" + dn + "' of '" + name + "' belongs to uid " +
                               std::to_string(rit->second.owner_uid));
      const uint32_t owner = rit != t.durable.end() ? rit->second.owner_uid : peer.uid;
      t.durable[key] = DurableRec{dn, d.getPosition(), owner};
      dirty_ = true;  // coalesced: written within kPersistDelayNs, not once per save
      log_limited(core_.instance, LOG_INFO, "durable_joined", name, peer.pid,
                  "subscriber '" + dn + "' partition " + std::to_string(d.getPartition()) + " position " +
                      std::to_string(d.getPosition()));
      resp.setDone();
      return reply(peer, mb);
    }
    default: return reply_error(peer, id, proto::ErrorCode::INVALID_ARGUMENT, "request not supported");
  }
}

void Registry::run() {
  pollfd pf[2] = {{core_.registry_q.fd(), POLLIN, 0}, {core_.stop_efd, POLLIN, 0}};
  for (;;) {
    RegistryCmd c;
    bool any = false, stop = false;
    // A batch of requests, then one registry write for all their changes, then
    // their replies: a create is on disk when its creator hears of it, and many
    // clients creating at once cost one write per batch, not one each.
    batching_ = true;
    for (int n = 0; n < 256 && core_.registry_q.try_pop(c); ++n) {
      any = true;
      if (c.kind == RegistryCmd::stop) {
        stop = true;
        break;
      }
      if (c.kind == RegistryCmd::conn_closed) {
        connection_closed(c.peer.conn);
        continue;
      }
      if (c.kind == RegistryCmd::metrics) {
        metrics_snapshot(*c.snap);
        continue;
      }
      // Exception-safe: whatever a request does (bad_alloc included), it gets an
      // error reply with its id, and the registry goes on with the next one.
      uint64_t rid = 0;
      unsigned rtype = RequestMetrics::kTypes - 1;
      try {
        rid = c.req->root().getId();
        rtype = unsigned(c.req->root().which());
        handle(c);
      } catch (const kj::Exception& e) {
        log_limited(core_.instance, LOG_ERROR, "request_failed", "", c.peer.pid, e.getDescription().cStr());
        try {
          reply_error(c.peer, rid, proto::ErrorCode::PROTOCOL, e.getDescription().cStr());
        } catch (...) {
        }
      } catch (const std::bad_alloc&) {
        log_limited(core_.instance, LOG_ERROR, "request_failed", "", c.peer.pid, "out of memory");
        try {
          reply_error(c.peer, rid, proto::ErrorCode::SYSTEM, "shmbusd is out of memory");
        } catch (...) {
        }
      } catch (const std::exception& e) {
        log_limited(core_.instance, LOG_ERROR, "request_failed", "", c.peer.pid, e.what());
        try {
          reply_error(c.peer, rid, proto::ErrorCode::SYSTEM, e.what());
        } catch (...) {
        }
      }
      core_.requests.observe(rtype, shm::monotonic_ns() - c.recv_ns);
    }
    batching_ = false;
    if (must_persist_ || stop) persist();
    for (auto& sc : outbox_) core_.server_q.push(std::move(sc));
    outbox_.clear();
    if (stop) {
      log_event(core_.instance, LOG_INFO, "state_persisted", "", 0,
                std::to_string(topics_.size()) + " topics");
      core_.server_q.push(ServerCmd{});  // tells the server we are done
      return;
    }
    const uint64_t now = shm::monotonic_ns();
    // Cursor saves only: no fsync (a record is a resume hint; the parked slot holds
    // the live position), so a flood of saves never stalls the registry on the disk.
    if (dirty_ && now - last_persist_ns_ >= kPersistDelayNs) persist(false);
    if (!unrestored_.empty() && now - last_retry_ns_ >= kRetryNs) {
      last_retry_ns_ = now;
      retry_unrestored();
      if (must_persist_) persist();
    }
    if (now - last_expiry_ns_ >= 50'000'000ull) {
      last_expiry_ns_ = now;
      if (expire_parked(now)) persist();
    }
    if (any) continue;
    int r = poll(pf, 1, 50);
    if (r > 0) core_.registry_q.clear_signal();
  }
}

}  // namespace shmbus::daemon
