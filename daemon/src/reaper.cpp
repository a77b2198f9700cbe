// The reaper thread: client liveness and reclamation (docs/memory-ordering.md P8).
// Layout 3: cursor slots are granted by the daemon, which writes the grantee's
// SO_PEERCRED pid (in the daemon's pid namespace) into the read-only control
// segment; a cursor is freed only on that record, with the pidfd of that pid.
//
// Death is seen through a pidfd per client pid (readable at once when the process
// exits; the control socket closing prompts an immediate check), and through a
// scan every reclaim_interval_ms of every partition's cursor slots, producer table,
// producer grant records, which also finds pids the daemon never saw (clients that
// died while the daemon was down). For a dead pid it
//  1. frees its cursor slots and wakes producers blocked on space,
// and for every producer grant whose grantee (pid + process identity, layout 4) is gone
//  2. releases a single-producer partition it owned,
//  3. releases the multi-producer zero lock if it held it,
//  4. pads a multi-producer claim it made and never committed, exactly once
//     (CAS of the commit word 0 -> padding), then frees its producer-table entry.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>

#include "core.hpp"
#include "shmbus/shm/recovery.hpp"
#include "shmbus/spill_format.hpp"

namespace shmbus::daemon {

using shm::aref;

namespace {
int pidfd_open_(pid_t pid) { return int(syscall(SYS_pidfd_open, pid, 0)); }

// Field 22 of /proc/PID/stat (starttime), 0 when it cannot be read. The comm field
// (2) may hold spaces and parentheses: fields are counted after the last ')'.
uint64_t stat_start(pid_t pid) {
  char path[40];
  std::snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  const ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');
  if (!p) return 0;
  int field = 2;  // p is the end of field 2
  for (++p; *p && field < 22; ++p)
    if (*p == ' ') ++field;
  if (field != 22) return 0;
  while (*p == ' ') ++p;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(p, &end, 10);
  return end != p ? uint64_t(v) : 0;
}

// The identity of the process behind `pidfd` (whose pid is `pid`): its pidfs inode
// (unique for the boot, Linux 6.9+), else 2^63 | its start time in clock ticks. Read,
// then the pidfd checked not exited, so the pid was that process's throughout.
uint64_t identity_of_pidfd(pid_t pid, int pidfd) {
  uint64_t id = pidfd_identity(pidfd);
  if (id == 0) {
    const uint64_t st = stat_start(pid);
    id = st ? (uint64_t(1) << 63) | st : 0;
  }
  pollfd p{pidfd, POLLIN, 0};
  return (id != 0 && poll(&p, 1, 0) == 0) ? id : 0;
}

}  // namespace

uint64_t proc_identity(pid_t pid, uint64_t proc) {
  if (pid <= 0) return 0;
  const int fd = pidfd_open_(pid);
  if (fd < 0) return 0;
  uint64_t id = identity_of_pidfd(pid, fd);
  if (proc != 0 && pidfd_identity(fd) != proc) id = 0;
  close(fd);
  return id;
}

bool Reaper::grantee_alive(uint32_t pid, uint64_t ident) {
  if (pid == 0 || ident == 0) return false;
  auto it = pids_.find(pid_t(pid));
  if (it != pids_.end() && it->second.ident == ident) {
    pollfd p{it->second.pidfd, POLLIN, 0};  // readable: exited
    return poll(&p, 1, 0) == 0;
  }
  // Not watched (yet), or the watched process is another one with that number.
  std::lock_guard<std::mutex> g(core_.fd_reserve_mu);  // see watch_pid
  return proc_identity(pid_t(pid)) == ident;
}

bool Reaper::alive(uint32_t pid) {
  if (pid == 0) return false;
  auto it = pids_.find(pid_t(pid));
  if (it != pids_.end()) {
    // A readable pidfd means the process has exited.
    pollfd p{it->second.pidfd, POLLIN, 0};
    return poll(&p, 1, 0) == 0;
  }
  return shm::process_alive(pid);
}

// A process with this pid exists now and has not exited (a zombie has: its pidfd
// is readable).
static bool live_now(pid_t pid, std::mutex& fd_reserve_mu) {
  int fd;
  {
    std::lock_guard<std::mutex> g(fd_reserve_mu);  // see watch_pid
    fd = pidfd_open_(pid);
  }
  if (fd < 0) return false;
  pollfd p{fd, POLLIN, 0};
  const bool live = poll(&p, 1, 0) == 0;
  close(fd);
  return live;
}

void Reaper::watch_pid(pid_t pid) {
  if (pid <= 0 || pid == getpid()) return;
  if (pids_.count(pid)) {
    if (alive(uint32_t(pid))) return;
    on_dead(pid, "exited");  // the pid we watched died; this is a new process with its number
  }
  int fd;
  {
    std::lock_guard<std::mutex> g(core_.fd_reserve_mu);
    fd = pidfd_open_(pid);
  }
  if (fd < 0) {
    if (errno == ESRCH) on_dead(pid, "gone before it was watched");
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = uint64_t(pid) << 1 | 1;
  epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
  pids_[pid] = Watched{fd, identity_of_pidfd(pid, fd)};
}

void Reaper::on_dead(pid_t pid, const char* how) {
  bool any = false;
  const uint64_t t0 = shm::monotonic_ns();
  // The kernel may already have given the number to another process, which may hold
  // grants of its own under it: nothing is reclaimed by number while a process has
  // it (what the dead one held is reclaimed when that one is gone too).
  const bool reused = live_now(pid, core_.fd_reserve_mu);
  for (auto& p : parts_) {
    uint64_t before = p->reclaimed_cursors.load() + p->filled_claims.load();
    if (!reused) reclaim_in(*p, pid);
    // Producer grants: decided per record by pid AND process identity, so a reused pid
    // neither hides a dead grantee nor makes a live one look dead.
    resolve_dead_claims(*p);
    if (p->reclaimed_cursors.load() + p->filled_claims.load() != before) {
      any = true;
      log_event(core_.instance, LOG_INFO, "client_reclaimed", p->topic, pid,
                std::string(how) + "; partition " + std::to_string(p->index));
    }
  }
  if (any) {
    core_.counters.reclaimed_clients.fetch_add(1);
    core_.counters.reclaim_ns.fetch_add(shm::monotonic_ns() - t0);
  }
  // Forget the pidfd only now: alive() above must keep answering "dead".
  auto it = pids_.find(pid);
  if (it != pids_.end()) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, it->second.pidfd, nullptr);
    close(it->second.pidfd);
    pids_.erase(it);
  }
}

// What is done lives in shm/recovery.hpp; the reaper decides when, from its own
// proof of death (the pidfd of a pid it watches).
void Reaper::reclaim_in(Partition& part, pid_t pid) {
  const shm::RingRefs& r = part.refs;
  const uint32_t dead = uint32_t(pid);
  // 1. Cursor slots: durable names are parked (P11), others freed.
  // The pid in a slot is the one this daemon wrote at the grant (layout 3: clients
  // cannot write the control segment), so it is our own record.
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    if (shm::owner_pid(aref(r.slots[i].pid).load(std::memory_order_acquire)) != dead) continue;
    std::lock_guard<std::mutex> g(part.pages_mu);
    const uint64_t page_id = aref(r.slots[i].page_id).load(std::memory_order_relaxed);
    switch (shm::recover_dead_cursor(r, i, dead, true, spill::kArchiverNameHash, part.page_of(i))) {
      case shm::CursorRecovery::freed:
        if (page_id) drop_page(part, page_id);
        part.reclaimed_cursors.fetch_add(1, std::memory_order_relaxed);
        break;
      case shm::CursorRecovery::parked:
        log_event(core_.instance, LOG_INFO, "durable_parked", part.topic, pid,
                  "partition " + std::to_string(part.index) + " slot " + std::to_string(i));
        break;
      case shm::CursorRecovery::none: break;
    }
  }
  // 2. Producer grants are resolved by the caller (resolve_dead_claims), on the
  // grant records, not on this pid.
}

// Producer grants (layout 4): the daemon's own records in the control segment
// (token, SO_PEERCRED pid, process identity). A grant whose grantee is not alive
// (that pid with that identity) is resolved on its token: a single-producer role is
// released (the next publisher runs recover_sp()), a producer-table entry has its
// pending tail completed, its won claim padded, its zero lock and space bit freed
// (P8). Nothing read from the data segment names whom to reclaim: a forged owner
// or claim in an entry the daemon did not grant, or granted to a live process, is
// never acted on.
void Reaper::resolve_dead_claims(Partition& part) {
  const shm::RingRefs& r = part.refs;
  if (!r.grants) return;
  std::lock_guard<std::mutex> g(part.prod_mu);
  for (uint32_t k = 0; k < shm::kProducerGrants; ++k) {
    shm::ProducerGrant& gr = r.grants[k];
    if (gr.token == 0 || grantee_alive(gr.pid, gr.ident)) continue;
    const uint32_t pid = gr.pid;
    if (k == shm::kSingleProducerGrant) {
      shm::release_dead_single_producer(r, gr.token);
    } else if (r.multi()) {
      shm::ClaimRecovery rc = shm::recover_dead_producer(r, k, gr.token);
      // A daemon that died while recovering this entry left its mark (kReclaimBit |
      // its pid): the grant is ours and its grantee dead, so finish that recovery.
      const uint32_t cur = aref(r.producers[k].pid).load(std::memory_order_acquire);
      if (rc == shm::ClaimRecovery::none && (cur & shm::kReclaimBit) &&
          shm::owner_pid(cur) != uint32_t(getpid()) && !shm::process_alive(shm::owner_pid(cur)))
        rc = shm::recover_dead_producer(r, k, shm::owner_pid(cur));
      if (rc == shm::ClaimRecovery::padded) {
        part.filled_claims.fetch_add(1, std::memory_order_relaxed);
        log_event(core_.instance, LOG_INFO, "claim_padded", part.topic, pid,
                  "partition " + std::to_string(part.index) + " producer slot " + std::to_string(k));
      }
    }
    gr = shm::ProducerGrant{};  // resolved (or released by the producer itself earlier)
  }
}

void Reaper::scan(uint64_t now_ns) {
  // Pids found in shared memory that we do not watch yet.
  for (auto& p : parts_) {
    const shm::RingRefs& r = p->refs;
    auto consider = [&](uint32_t pid) {
      pid = shm::owner_pid(pid);  // a slot being recovered: its reclaimer's pid
      if (pid && pid_t(pid) != getpid() && !pids_.count(pid_t(pid))) watch_pid(pid_t(pid));
    };
    for (uint32_t i = 0; i < r.slot_count; ++i) {
      uint32_t st = aref(r.slots[i].state).load(std::memory_order_acquire);
      if (st == shm::kSlotActive || st == shm::kSlotJoining)
        consider(aref(r.slots[i].pid).load(std::memory_order_relaxed));
    }
    // Producers: the grantees of our own records (never a pid from the data segment).
    if (r.grants) {
      std::vector<uint32_t> grantees;
      {
        std::lock_guard<std::mutex> g(p->prod_mu);
        for (uint32_t k = 0; k < shm::kProducerGrants; ++k)
          if (r.grants[k].token) grantees.push_back(r.grants[k].pid);
      }
      for (uint32_t pid : grantees) consider(pid);
    }
    resolve_dead_claims(*p);  // records left from earlier rounds, or a previous daemon
  }
  // Rates, sampled at most every 500 ms.
  if (now_ns - last_rate_ns_ >= 500'000'000ull) {
    for (auto& p : parts_) {
      uint64_t seq = shm::tail_seq_of(aref(p->refs.data->tail_seq).load(std::memory_order_relaxed));
      Sample& s = samples_[p.get()];
      if (s.ns && now_ns > s.ns)
        p->rate_milli.store(uint64_t(double(seq - s.seq) * 1e12 / double(now_ns - s.ns)),
                            std::memory_order_relaxed);
      s = Sample{seq, now_ns};
    }
    last_rate_ns_ = now_ns;
  }
}

Reaper::~Reaper() {
  if (tfd_ >= 0) close(tfd_);
  if (ep_ >= 0) close(ep_);
}

void Reaper::init() {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  if (ep_ < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, std::string("reaper: epoll_create1: ") + strerror(e), e);
  }
  tfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd_ < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, std::string("reaper: timerfd_create: ") + strerror(e), e);
  }
}

void Reaper::run() {
  const int tfd = tfd_;
  itimerspec its{};
  int64_t iv = core_.opts.reclaim_interval_ms > 0 ? core_.opts.reclaim_interval_ms : 20;
  its.it_interval.tv_sec = iv / 1000;
  its.it_interval.tv_nsec = (iv % 1000) * 1'000'000;
  its.it_value = its.it_interval;
  timerfd_settime(tfd, 0, &its, nullptr);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 2;  // timer
  epoll_ctl(ep_, EPOLL_CTL_ADD, tfd, &ev);
  ev.data.u64 = 4;  // queue
  epoll_ctl(ep_, EPOLL_CTL_ADD, core_.reaper_q.fd(), &ev);
  epoll_event evs[64];
  for (;;) {
    ReaperCmd c;
    while (core_.reaper_q.try_pop(c)) {
      switch (c.kind) {
        case ReaperCmd::stop:
          for (auto& [pid, w] : pids_) close(w.pidfd);
          pids_.clear();
          parts_.clear();
          close(tfd_);
          close(ep_);
          tfd_ = ep_ = -1;
          return;
        case ReaperCmd::watch_partition: parts_.push_back(c.part); break;
        case ReaperCmd::unwatch_partition:
          samples_.erase(c.part.get());
          std::erase(parts_, c.part);
          break;
        case ReaperCmd::client_pid: watch_pid(c.pid); break;
        case ReaperCmd::client_gone:
          // The socket closed: check at once (the pidfd fires if it is exiting).
          if (!alive(uint32_t(c.pid))) on_dead(c.pid, "control socket closed");
          break;
      }
    }
    int n = epoll_wait(ep_, evs, 64, 1000);
    for (int i = 0; i < n; ++i) {
      uint64_t tag = evs[i].data.u64;
      if (tag == 2) {
        uint64_t x;
        ssize_t rr = read(tfd, &x, 8);
        (void)rr;
        scan(shm::monotonic_ns());
      } else if (tag == 4) {
        core_.reaper_q.clear_signal();
      } else if (tag & 1) {
        on_dead(pid_t(tag >> 1), "process exited (pidfd)");
      }
    }
  }
}

}  // namespace shmbus::daemon
