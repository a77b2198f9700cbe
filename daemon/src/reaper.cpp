// The reaper thread: client liveness and reclamation (docs/memory-ordering.md P8).
//
// Death is seen through a pidfd per client pid (readable at once when the process
// exits; the control socket closing prompts an immediate check), and through a
// scan every reclaim_interval_ms of every partition's cursor slots, producer table,
// single-producer owner and zero lock, which also finds pids the daemon never saw
// (clients that died while the daemon was down). For a dead pid it
//  1. frees its cursor slots and wakes producers blocked on space,
//  2. releases a single-producer partition it owned,
//  3. releases the multi-producer zero lock if it held it,
//  4. pads a multi-producer claim it made and never committed, exactly once
//     (CAS of the commit word 0 -> padding), then frees its producer-table entry.
#include <cerrno>
#include <csignal>
#include <cstring>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>

#include "core.hpp"
#include "shmbus/spill_format.hpp"

namespace shmbus::daemon {

using shm::aref;

namespace {
int pidfd_open_(pid_t pid) { return int(syscall(SYS_pidfd_open, pid, 0)); }

void wake_space(shm::ControlHeader* c) {
  aref(c->space_futex).fetch_add(1, std::memory_order_seq_cst);
  shm::futex_wake_all(&c->space_futex);
}
void wake_data(shm::ControlHeader* c) {
  aref(c->data_futex).fetch_add(1, std::memory_order_seq_cst);
  shm::futex_wake_all(&c->data_futex);
}
}  // namespace

bool Reaper::alive(uint32_t pid) {
  if (pid == 0) return false;
  auto it = pids_.find(pid_t(pid));
  if (it != pids_.end()) {
    // A readable pidfd means the process has exited.
    pollfd p{it->second.pidfd, POLLIN, 0};
    return poll(&p, 1, 0) == 0;
  }
  // Not watched: a pidfd also reports a zombie (an unreaped child) as exited,
  // where kill(pid, 0) would still succeed.
  int fd = pidfd_open_(pid_t(pid));
  if (fd < 0) return errno != ESRCH;
  pollfd p{fd, POLLIN, 0};
  bool live = poll(&p, 1, 0) == 0;
  close(fd);
  return live;
}

void Reaper::watch_pid(pid_t pid) {
  if (pid <= 0 || pid == getpid() || pids_.count(pid)) return;
  int fd = pidfd_open_(pid);
  if (fd < 0) {
    if (errno == ESRCH) on_dead(pid, "gone before it was watched");
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = uint64_t(pid) << 1 | 1;
  epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
  pids_[pid] = Watched{fd};
}

void Reaper::on_dead(pid_t pid, const char* how) {
  bool any = false;
  for (auto& p : parts_) {
    uint64_t before = p->reclaimed_cursors.load() + p->filled_claims.load();
    reclaim_in(*p, pid);
    if (p->reclaimed_cursors.load() + p->filled_claims.load() != before) {
      any = true;
      log_event(core_.instance, LOG_INFO, "client_reclaimed", p->topic, pid,
                std::string(how) + "; partition " + std::to_string(p->index));
    }
  }
  if (any) core_.counters.reclaimed_clients.fetch_add(1);
  // Forget the pidfd only now: alive() above must keep answering "dead".
  auto it = pids_.find(pid);
  if (it != pids_.end()) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, it->second.pidfd, nullptr);
    close(it->second.pidfd);
    pids_.erase(it);
  }
}

void Reaper::reclaim_in(Partition& part, pid_t pid) {
  const shm::RingRefs& r = part.refs;
  const uint32_t dead = uint32_t(pid);
  // 1. Cursor slots.
  bool freed = false;
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    shm::CursorSlot& s = r.slots[i];
    if (aref(s.pid).load(std::memory_order_acquire) != dead) continue;
    uint32_t st = aref(s.state).load(std::memory_order_acquire);
    if (st != shm::kSlotActive && st != shm::kSlotJoining) continue;
    const uint64_t nh = aref(s.name_hash).load(std::memory_order_relaxed);
    if (st == shm::kSlotActive && nh != 0 && nh != spill::kArchiverNameHash) {
      // P11: a durable subscriber's slot is parked, not freed: it keeps its
      // position (and holds a tethered ring) until its name resumes it or the
      // registry expires it. The CAS on pid makes parking exclusive with a
      // resumer's takeover; the heartbeat is the parking time.
      aref(s.heartbeat_ns).store(shm::monotonic_ns(), std::memory_order_relaxed);
      uint32_t owner = dead;
      if (aref(s.pid).compare_exchange_strong(owner, 0, std::memory_order_acq_rel))
        log_event(core_.instance, LOG_INFO, "durable_parked", part.topic, pid,
                  "partition " + std::to_string(part.index) + " slot " + std::to_string(i));
      continue;
    }
    // The owner is dead: nobody else writes this slot (a joiner only takes FREE).
    if (aref(s.state).compare_exchange_strong(st, shm::kSlotFree, std::memory_order_acq_rel)) {
      part.reclaimed_cursors.fetch_add(1, std::memory_order_relaxed);
      freed = true;
    }
  }
  if (freed) wake_space(r.ctl);
  // 2. Single-producer ownership (the next publisher runs recover_sp()).
  uint32_t owner = dead;
  aref(r.data->producer_pid).compare_exchange_strong(owner, 0, std::memory_order_acq_rel);
  // 3. The multi-producer zero lock.
  uint32_t zl = dead;
  aref(r.data->zero_lock).compare_exchange_strong(zl, 0, std::memory_order_acq_rel);
  // 4. Claims (needs the whole table: resolves every dead entry).
  resolve_dead_claims(part);
}

// P8 (reclaimer side). For each producer-table entry whose owner is dead:
//  a. not CLAIMING -> free the entry;
//  b. the tail CAS never happened (tail_seq <= claim_seq), the intent is torn
//     (claim end beyond the tail) or the claim was lapped -> free;
//  c. the claimed frame is committed -> free;
//  d. a live producer records an intent at the same position -> wait (it may be
//     the CAS winner, it will commit or die);
//  e. otherwise walk committed frames from the slowest cursor; if the first
//     uncommitted frame is this claim, pad it under the zero lock (commit word
//     CAS 0 -> padding: exactly once), then free the entry. If the walk stops at
//     an earlier hole, wait for that one first. Without any cursor nobody is
//     held back: free.
void Reaper::resolve_dead_claims(Partition& part) {
  const shm::RingRefs& r = part.refs;
  if (!r.producers || !(r.data->flags & shm::kFlagMultiProducer)) return;
  const uint64_t cap = r.capacity;
  for (uint32_t i = 0; i < r.producer_count; ++i) {
    shm::ProducerSlot& ps = r.producers[i];
    const uint32_t owner = aref(ps.pid).load(std::memory_order_acquire);
    if (owner == 0 || alive(owner)) continue;
    auto free_entry = [&] {
      aref(ps.state).store(shm::kProdFree, std::memory_order_relaxed);
      aref(ps.pid).store(0, std::memory_order_release);
    };
    // SYNC(prod.intent) acquire: the intent fields the dead producer wrote.
    if (aref(ps.state).load(std::memory_order_acquire) != shm::kProdClaiming) {
      free_entry();
      continue;
    }
    const uint64_t pos = aref(ps.claim_pos).load(std::memory_order_relaxed);
    const uint64_t seq = aref(ps.claim_seq).load(std::memory_order_relaxed);
    const uint64_t flen = aref(ps.frame_len).load(std::memory_order_relaxed);
    const uint64_t tail_pos = aref(r.data->tail_pos).load(std::memory_order_acquire);
    const uint64_t tail_seq = aref(r.data->tail_seq).load(std::memory_order_acquire);
    const uint64_t off = pos & (cap - 1);
    const uint64_t pad = (off + flen > cap) ? cap - off : 0;
    const uint64_t fpos = pos + pad, end = fpos + flen;
    if (tail_seq <= seq || flen < shm::kFrameHeaderSize || (flen & 7) || flen > cap ||
        end > tail_pos || tail_pos > pos + cap) {
      free_entry();
      continue;
    }
    auto commit_at = [&](uint64_t p) { return aref(r.frame_at(p)->commit).load(std::memory_order_acquire); };
    if ((!pad || commit_at(pos) != 0) && commit_at(fpos) != 0) {
      free_entry();
      continue;
    }
    bool contested = false;
    for (uint32_t k = 0; k < r.producer_count; ++k) {
      if (k == i) continue;
      shm::ProducerSlot& o = r.producers[k];
      uint32_t op = aref(o.pid).load(std::memory_order_acquire);
      if (op && aref(o.state).load(std::memory_order_acquire) == shm::kProdClaiming &&
          aref(o.claim_pos).load(std::memory_order_relaxed) == pos && alive(op))
        contested = true;
    }
    if (contested) continue;
    // The slowest active cursor is a frame boundary; walk committed frames from it.
    uint64_t start = UINT64_MAX;
    for (uint32_t k = 0; k < r.slot_count; ++k) {
      if (aref(r.slots[k].state).load(std::memory_order_acquire) != shm::kSlotActive) continue;
      uint64_t c = aref(r.slots[k].position).load(std::memory_order_acquire);
      if (c <= tail_pos && c + cap >= tail_pos && c < start) start = c;
    }
    if (start == UINT64_MAX || start > pos) {
      if (start == UINT64_MAX) free_entry();  // nobody reads behind it
      else free_entry();                      // every reader is already past it
      continue;
    }
    uint64_t h = start;
    for (uint64_t n = 0; n < cap / 8 && h < pos; ++n) {
      uint64_t w = commit_at(h);
      uint32_t len = shm::commit_length(w);
      if (w == 0 || len < 8 || (len & 7) || (h & (cap - 1)) + len > cap) break;
      h += len;
    }
    if (h != pos && h != fpos) continue;  // an earlier hole (or a gap): later
    // Fill under the zero lock, so that no producer re-zeroes these bytes for the
    // next lap while we write (P2): zero_mark <= pos + capacity means they are
    // still this lap's.
    const uint32_t me = uint32_t(getpid());
    uint32_t expect = 0;
    if (!aref(r.data->zero_lock).compare_exchange_strong(expect, me, std::memory_order_acquire)) {
      if (expect == 0 || alive(expect)) continue;
      if (!aref(r.data->zero_lock).compare_exchange_strong(expect, me, std::memory_order_acquire))
        continue;
    }
    bool filled = false;
    if (aref(r.data->zero_mark).load(std::memory_order_acquire) <= pos + cap) {
      uint64_t zero = 0;
      if (pad)
        aref(r.frame_at(pos)->commit)
            .compare_exchange_strong(zero, shm::make_commit(uint32_t(pad), shm::kFramePad),
                                     std::memory_order_release);  // SYNC(frame.commit)
      zero = 0;
      filled = aref(r.frame_at(fpos)->commit)
                   .compare_exchange_strong(zero, shm::make_commit(uint32_t(flen), shm::kFramePad),
                                            std::memory_order_seq_cst);  // SYNC(frame.commit)
    }
    aref(r.data->zero_lock).store(0, std::memory_order_release);
    if (filled) {
      aref(ps.fills).fetch_add(1, std::memory_order_relaxed);
      part.filled_claims.fetch_add(1, std::memory_order_relaxed);
      wake_data(r.ctl);
      log_event(core_.instance, LOG_INFO, "claim_padded", part.topic, owner,
                "partition " + std::to_string(part.index) + " position " + std::to_string(fpos) +
                    " length " + std::to_string(flen));
    }
    free_entry();
  }
}

void Reaper::scan(uint64_t now_ns) {
  // Pids found in shared memory that we do not watch yet.
  for (auto& p : parts_) {
    const shm::RingRefs& r = p->refs;
    auto consider = [&](uint32_t pid) {
      if (pid && pid_t(pid) != getpid() && !pids_.count(pid_t(pid))) watch_pid(pid_t(pid));
    };
    for (uint32_t i = 0; i < r.slot_count; ++i) {
      uint32_t st = aref(r.slots[i].state).load(std::memory_order_acquire);
      if (st == shm::kSlotActive || st == shm::kSlotJoining)
        consider(aref(r.slots[i].pid).load(std::memory_order_relaxed));
    }
    consider(aref(r.data->producer_pid).load(std::memory_order_relaxed));
    consider(aref(r.data->zero_lock).load(std::memory_order_relaxed));
    for (uint32_t i = 0; i < r.producer_count; ++i) consider(aref(r.producers[i].pid).load(std::memory_order_relaxed));
    resolve_dead_claims(*p);  // entries left from earlier rounds
  }
  // Rates, sampled at most every 500 ms.
  if (now_ns - last_rate_ns_ >= 500'000'000ull) {
    for (auto& p : parts_) {
      uint64_t seq = aref(p->refs.data->tail_seq).load(std::memory_order_relaxed);
      Sample& s = samples_[p.get()];
      if (s.ns && now_ns > s.ns)
        p->rate_milli.store(uint64_t(double(seq - s.seq) * 1e12 / double(now_ns - s.ns)),
                            std::memory_order_relaxed);
      s = Sample{seq, now_ns};
    }
    last_rate_ns_ = now_ns;
  }
}

void Reaper::run() {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
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
          close(tfd);
          close(ep_);
          return;
        case ReaperCmd::watch_partition:
          parts_.push_back(c.part);
          break;
        case ReaperCmd::unwatch_partition:
          samples_.erase(c.part.get());
          std::erase(parts_, c.part);
          break;
        case ReaperCmd::client_pid:
          watch_pid(c.pid);
          break;
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
