// Crash torture for multi-producer topics (issue 8), with exactness after death
// (issue 10). Each trial: a small ring, 2-4 producer processes (fork, no exec),
// each claiming more than it commits and often holding a claim open across a
// random pause (raw claims and Cap'n Proto MessageClaims), and 1-3 of them
// SIGKILLed at random points. Readers run in the test process: one tethered and
// one untethered reader, or untethered readers only. Dead claims are padded by
// shmbusd (daemon trials) or by a survivor blocked on them (direct trials).
//
// Every producer publishes its progress in a MAP_SHARED page created before the
// fork: `committing` (the producer sequence handed to commit, stored before the
// call) and `committed` (stored after the commit returned). After a SIGKILL the
// page says exactly what the dead producer committed: a tethered reader must then
// receive exactly messages 1..committed of it, plus message committed+1 only when
// the kill landed inside that commit call (committing == committed + 1), where
// the page cannot tell. Nothing lost, nothing extra, nothing torn.
//
// Checked per trial: every delivered message intact (BlobCodec: checksum, body,
// Cap'n Proto structure), each producer's messages in order (dense for tethered
// readers), no reader ever sees `corrupt`, every survivor exits 0 with no claim
// that ran into its block timeout and its longest claim wait measured below it,
// and at the end no segment left in /dev/shm.
//
// Also here: three regression cases for what the torture found (heap rings and an
// in-process topic, no fork): space sleepers not woken when a dead producer's claim
// is resolved or a live one's closes, and policy block giving up before its timeout.
//
// SHMBUS_TEST_SEED replays a run; SHMBUS_TORTURE_TRIALS=N scales the trial counts
// (550 by default: 400 direct, 150 through shmbusd).
#include <catch2/catch.hpp>

#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "../multiproc/blob_codec.hpp"
#include "daemon_util.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/shm/recovery.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

constexpr int kMaxProducers = 4;
constexpr int64_t kBlockTimeoutNs = 2'000'000'000;     // a survivor's longest allowed wait
constexpr int64_t kDirectReclaimNs = 2'000'000;        // direct mode: blocked publisher recovers after
constexpr uint64_t kTrialWatchdogNs = 15'000'000'000;  // a trial that hangs fails, with a diagnosis
constexpr uint32_t kMaxBody = 240;

// One producer's record in the page shared with the test process.
struct alignas(64) ProducerRecord {
  std::atomic<uint64_t> committing;  // producer seq handed to commit/offer (stored before the call)
  std::atomic<uint64_t> committed;   // last producer seq whose commit returned ok (stored after)
  std::atomic<uint64_t> claims;
  std::atomic<uint64_t> max_wait_ns;  // longest claim (or offer) call
  std::atomic<uint64_t> blocked;      // claims that took over 1 ms
  std::atomic<uint32_t> failed;       // 0, or a code (why[] says more)
  char why[160];
};
struct Shared {
  std::atomic<uint32_t> stop;  // survivors: finish once past their count
  ProducerRecord prod[kMaxProducers];
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);

uint64_t torture_seed() {
  uint64_t seed;
  if (const char* e = std::getenv("SHMBUS_TEST_SEED"))
    seed = std::strtoull(e, nullptr, 0);
  else
    seed = now_ns() ^ (uint64_t(getpid()) << 32);
  seed &= 0xffffffffffffull;
  std::fprintf(stderr, "[crash torture] seed %llu (replay: SHMBUS_TEST_SEED=%llu)\n",
               (unsigned long long)seed, (unsigned long long)seed);
  return seed;
}

int scaled(int n) {
  if (const char* e = std::getenv("SHMBUS_TORTURE_TRIALS")) return std::max(1, atoi(e) * n / 550);
  return trials(n, std::max(1, n / 10));
}

struct Where {
  bool daemon = false;
  std::string sock;    // daemon mode
  std::string prefix;  // direct mode
};

// A random hold while a claim is open (or between messages): nothing, a spin, a
// yield or a short nap. It only decides where the SIGKILL may land; nothing
// waits on it.
void random_hold(Rng& rng) {
  const uint64_t r = rng.next();
  switch (r % 6) {
    case 0:
    case 1: break;
    case 2:
      for (uint64_t i = (r >> 8) % 30000; i > 0; --i) shm::cpu_relax();
      break;
    case 3: sched_yield(); break;
    case 4: {
      timespec ts{0, long(20'000 + (r >> 8) % 300'000)};
      nanosleep(&ts, nullptr);
      break;
    }
    default:
      for (uint64_t i = (r >> 8) % 2000; i > 0; --i) shm::cpu_relax();
      break;
  }
}

[[noreturn]] void child_fail(ProducerRecord& rec, uint32_t code, const std::string& why) {
  std::snprintf(rec.why, sizeof rec.why, "%s", why.c_str());
  rec.failed.store(code, std::memory_order_release);
  _exit(int(code));
}

// One producer process: publishes (idx, 1), (idx, 2), ... until killed, or (a
// survivor) until it is past `count` and the test says stop. Never returns.
[[noreturn]] void run_producer(const Where& w, const std::string& topic, uint32_t idx, uint64_t count,
                               uint64_t seed, const BlobCodec& codec, Shared* sh) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  alarm(60);  // watchdog: a hung producer dies (the test then sees a bad exit status)
  ProducerRecord& rec = sh->prod[idx];
  try {
    Bus bus = w.daemon ? Bus::connect(w.sock) : Bus::direct({.shm_prefix = w.prefix});
    PublisherOptions po;
    po.producer_id = idx + 1;
    po.block_timeout_ns = kBlockTimeoutNs;
    // Direct: a survivor blocked on a dead claim recovers it. Daemon: shmbusd must.
    po.reclaim_after_ns = w.daemon ? 60'000'000'000 : kDirectReclaimNs;
    Publisher pub = bus.publisher(topic, po);
    Rng rng(seed);
    auto timed = [&](uint64_t t0) {
      const uint64_t d = now_ns() - t0;
      if (d > rec.max_wait_ns.load(std::memory_order_relaxed))
        rec.max_wait_ns.store(d, std::memory_order_relaxed);
      if (d > 1'000'000) rec.blocked.fetch_add(1, std::memory_order_relaxed);
      rec.claims.fetch_add(1, std::memory_order_relaxed);
    };
    uint64_t t_claim = 0;  // when the current claim call began
    auto refused = [&](Status s, uint64_t seq) {
      const shm::RingRefs& r = pub.refs();
      child_fail(rec, s == Status::back_pressured ? 10 : 11,
                 std::string("claim of seq ") + std::to_string(seq) + ": " + to_string(s) + " after " +
                     std::to_string((now_ns() - t_claim) / 1000) + " us (zero_lock " +
                     std::to_string(shm::aref(r.data->zero_lock).load()) + ", tail_seq " +
                     std::to_string(shm::aref(r.data->tail_seq).load()) + ")");
    };
    for (uint64_t seq = 1;; ++seq) {
      if (count && seq > count && sh->stop.load(std::memory_order_acquire)) break;
      const BlobCodec::Msg m = codec.message(idx, seq);
      const uint64_t sum = codec.body_sum(m);
      // Claims larger than what is committed: up to 256 bytes of unused claim.
      const uint32_t slack = (rng.next() % 4 == 0) ? 0 : uint32_t(rng.next() % 257);
      const bool hold = rng.next() % 3 == 0;
      if (m.kind == 0) {  // the copy path (claim + memcpy + commit inside offer)
        uint8_t buf[sizeof(RawHeader) + kMaxBody];
        RawHeader h{kRawMagic, seq, idx, m.size, sum, 0};
        std::memcpy(buf, &h, sizeof h);
        std::memcpy(buf + sizeof h, m.body, m.size);
        rec.committing.store(seq, std::memory_order_release);
        const uint64_t t0 = t_claim = now_ns();
        Status s = pub.offer(buf, sizeof h + m.size, seq);
        timed(t0);
        if (s != Status::ok) refused(s, seq);
      } else if (m.kind == 1) {      // raw bytes in place, claim held open
        if (rng.next() % 16 == 0) {  // now and then a claim that is scribbled on and aborted
          ClaimView junk;
          const uint64_t t0 = t_claim = now_ns();
          Status s = pub.claim(m.size + slack + 40, junk);
          timed(t0);
          if (s != Status::ok) refused(s, seq);
          std::memset(junk.data, 0xA5, junk.size / 2);
          if (hold) random_hold(rng);
          pub.abort();
        }
        ClaimView c;
        const uint64_t t0 = t_claim = now_ns();
        Status s = pub.claim(uint32_t(sizeof(RawHeader) + m.size + slack), c);
        timed(t0);
        if (s != Status::ok) refused(s, seq);
        RawHeader h{kRawMagic, seq, idx, m.size, sum, 0};
        std::memcpy(c.data, &h, sizeof h);
        if (hold) random_hold(rng);
        std::memcpy(c.data + sizeof h, m.body, m.size);
        rec.committing.store(seq, std::memory_order_release);
        s = pub.commit_clean(uint32_t(sizeof h + m.size), seq, 0);
        if (s != Status::ok) refused(s, seq);
      } else {  // a Cap'n Proto message built in place, claim held open
        const uint64_t t0 = t_claim = now_ns();
        MessageClaim mc(pub, m.size + 64 + slack);
        timed(t0);
        if (!mc) refused(mc.status(), seq);
        auto b = mc.init_root<schema::Blob>();
        b.setSeq(seq);
        b.setProducer(idx);
        b.setChecksum(sum);
        if (hold) random_hold(rng);
        auto body = b.initBody(m.size);
        std::memcpy(body.begin(), m.body, m.size);
        rec.committing.store(seq, std::memory_order_release);
        Status s = mc.commit_as<schema::Blob>(seq);
        if (s != Status::ok) refused(s, seq);
      }
      rec.committed.store(seq, std::memory_order_release);
      if (rng.next() % 8 == 0) random_hold(rng);
    }
    pub.close();
  } catch (const std::exception& e) {
    child_fail(rec, 12, std::string("exception: ") + e.what());
  }
  _exit(0);
}

// What one reader saw.
struct ReaderLog {
  bool tethered = false;
  std::vector<uint64_t> last;   // last producer seq received, per producer
  std::vector<uint64_t> count;  // messages received, per producer
  uint64_t last_frame_seq = 0;
  uint64_t received = 0, torn_discarded = 0;
  std::string error;
};

// Polls up to `max` frames; false on a check failure (ReaderLog::error says what).
bool drain_some(Subscriber& sub, ReaderLog& log, const BlobCodec& codec, uint32_t nprod, int max,
                bool& progressed) {
  View v;
  for (int i = 0; i < max; ++i) {
    Status s = sub.poll(v);
    if (s == Status::empty) return true;
    if (s == Status::lapped) {
      if (log.tethered) {
        log.error = "tethered reader lapped";
        return false;
      }
      progressed = true;
      continue;
    }
    if (s != Status::ok) {
      log.error = std::string("poll: ") + to_string(s) + " at position " + std::to_string(sub.position());
      return false;
    }
    progressed = true;
    BlobCodec::Decoded d;
    std::string err = codec.check(v, d);
    const uint64_t fseq = v.sequence();
    // An untethered reader's bytes count only if the producer had not lapped them
    // meanwhile (P9); then they must be intact like any other.
    if (sub.check(v) == Status::lapped) {
      ++log.torn_discarded;
      continue;
    }
    sub.release(v);
    if (!err.empty()) {
      log.error =
          err + " (frame seq " + std::to_string(fseq) + ", position " + std::to_string(v.position()) + ")";
      return false;
    }
    if (fseq <= log.last_frame_seq) {
      log.error = "partition sequence went from " + std::to_string(log.last_frame_seq) + " to " +
                  std::to_string(fseq);
      return false;
    }
    log.last_frame_seq = fseq;
    if (d.end || d.producer >= nprod) {
      log.error = "unexpected frame from producer " + std::to_string(d.producer);
      return false;
    }
    const uint32_t p = d.producer;
    if (d.seq <= log.last[p] || (log.tethered && d.seq != log.last[p] + 1)) {
      log.error = "producer " + std::to_string(p) + ": seq " + std::to_string(d.seq) + " after " +
                  std::to_string(log.last[p]) +
                  (d.seq <= log.last[p] ? " (out of order)" : " (gap: a message lost)");
      return false;
    }
    log.last[p] = d.seq;
    ++log.count[p];
    ++log.received;
  }
  return true;
}

struct Totals {
  int trials = 0, tethered_trials = 0, kills = 0, padded = 0, in_commit = 0, laps = 0;
  uint64_t messages = 0;
  std::vector<uint64_t> trial_max_wait;  // per trial: the longest claim wait of any survivor
  uint64_t start_ns = now_ns();
  void print(const char* what) const {
    auto v = trial_max_wait;
    std::sort(v.begin(), v.end());
    const double secs = (now_ns() - start_ns) / 1e9;
    std::printf(
        "%s: %d trials (%d with a tethered reader) in %.1f s, %d producers killed, %d dead claims "
        "padded, %d kills inside a commit call, %llu messages checked, %d untethered laps; "
        "survivors' longest claim wait per trial p50 %.2f ms, p99 %.2f ms, max %.2f ms (limit %lld ms)\n",
        what, trials, tethered_trials, secs, kills, padded, in_commit, (unsigned long long)messages, laps,
        v.empty() ? 0 : v[v.size() / 2] / 1e6, v.empty() ? 0 : v[v.size() * 99 / 100] / 1e6,
        v.empty() ? 0 : v.back() / 1e6, (long long)(kBlockTimeoutNs / 1'000'000));
    std::fflush(stdout);
  }
};

uint64_t tail_pos(const shm::RingRefs& r) {
  return shm::aref(r.data->tail_pos).load(std::memory_order_acquire);
}

// A dead producer still holding an open claim (its table entry not yet resolved)?
bool dead_claim_open(const shm::RingRefs& r, const std::vector<pid_t>& dead) {
  for (uint32_t k = 0; k < r.producer_count; ++k) {
    uint32_t pid = shm::aref(r.producers[k].pid).load(std::memory_order_acquire);
    // Through shmbusd (layout 4) the entry holds the daemon's token; its grant record
    // (control segment, readable here) names the grantee's pid.
    if ((pid & shm::kTokenBit) && r.grants &&
        shm::aref(r.grants[k].token).load(std::memory_order_relaxed) == pid)
      pid = shm::aref(r.grants[k].pid).load(std::memory_order_relaxed);
    if (pid == 0 || std::find(dead.begin(), dead.end(), pid_t(pid)) == dead.end()) continue;
    if (shm::claim_state(shm::aref(r.producers[k].claim).load(std::memory_order_acquire)) != shm::kClaimIdle)
      return true;
  }
  return false;
}

uint64_t fills(const shm::RingRefs& r) {
  uint64_t n = 0;
  for (uint32_t k = 0; k < r.producer_count; ++k)
    n += shm::aref(r.producers[k].fills).load(std::memory_order_relaxed);
  return n;
}

std::string ring_state(const shm::RingRefs& r, uint64_t pos) {
  return "reader at " + std::to_string(pos) + ", commit word there " +
         std::to_string(shm::aref(r.frame_at(pos)->commit).load(std::memory_order_acquire)) + ", tail " +
         std::to_string(tail_pos(r)) + ", tail_seq " +
         std::to_string(shm::aref(r.data->tail_seq).load(std::memory_order_acquire));
}

// Everything a producer's space limit depends on, for a diagnosis.
std::string limit_state(const shm::RingRefs& r) {
  std::string s = "tail " + std::to_string(tail_pos(r)) + " tail_seq " +
                  std::to_string(shm::aref(r.data->tail_seq).load()) + " zero_mark " +
                  std::to_string(shm::aref(r.data->zero_mark).load()) + " zero_lock " +
                  std::to_string(shm::aref(r.data->zero_lock).load()) + " space_waiters " +
                  std::to_string(shm::aref(r.data->space_waiter_bits).load()) + " space_futex " +
                  std::to_string(shm::aref(r.data->space_futex).load()) + "; producers:";
  for (uint32_t k = 0; k < r.producer_count; ++k) {
    const uint32_t pid = shm::aref(r.producers[k].pid).load();
    const uint64_t w = shm::aref(r.producers[k].claim).load();
    if (pid == 0 && w == 0) continue;
    s += " [" + std::to_string(k) + " pid " + std::to_string(pid) +
         (shm::process_alive(pid) ? " alive" : " dead") + " state " + std::to_string(shm::claim_state(w)) +
         " seq " + std::to_string(shm::claim_seq(w)) + " pos " +
         std::to_string(shm::aref(r.producers[k].claim_pos).load()) + " len " +
         std::to_string(shm::aref(r.producers[k].frame_len).load()) + "]";
  }
  s += "; cursors:";
  for (uint32_t i = 0; i < r.slot_count; ++i) {
    const uint32_t st = shm::aref(r.slots[i].state).load();
    if (st == shm::kSlotFree) continue;
    s += " [" + std::to_string(i) + " state " + std::to_string(st) + " pid " +
         std::to_string(shm::aref(r.slots[i].pid).load()) + " flags " +
         std::to_string(shm::aref(r.slots[i].flags).load()) + " pos " +
         std::to_string(shm::aref(r.slots[i].join_position).load()) + "]";
  }
  return s;
}

// One trial. Returns "" or what went wrong (the caller REQUIREs it empty).
std::string run_trial(Bus& bus, const Where& w, const std::string& topic, std::mt19937_64& rng,
                      const BlobCodec& codec, Shared* sh, bool tethered, Totals& tot) {
  const uint32_t nprod = 2 + uint32_t(rng() % 3);            // 2..4 producers
  const uint32_t nvict = 1 + uint32_t(rng() % (nprod - 1));  // 1..n-1 of them killed
  const uint64_t capacity = (rng() % 2) ? 4096 : 8192;
  const uint64_t count = 15 + rng() % 30;  // per survivor, at least
  bus.create_topic(topic, {.capacity = capacity, .policy = Policy::block, .multi_producer = true});
  struct RemoveTopic {
    Bus& b;
    const std::string& t;
    ~RemoveTopic() {
      try {
        b.remove_topic(t);
      } catch (...) {
      }
    }
  } remover{bus, topic};

  std::vector<Subscriber> subs;
  std::vector<ReaderLog> logs(2);
  for (int i = 0; i < 2; ++i) {
    SubscriberOptions so;
    so.tethered = tethered && i == 0;
    subs.push_back(bus.subscriber(topic, so));
    logs[i].tethered = so.tethered;
    logs[i].last.assign(nprod, 0);
    logs[i].count.assign(nprod, 0);
  }
  const shm::RingRefs& r = subs[0].refs();
  const uint64_t fills_before = fills(r);

  std::memset(static_cast<void*>(sh), 0, sizeof *sh);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  struct Proc {
    pid_t pid = -1;
    bool victim = false, killed = false, reaped = false;
    int status = 0;
    uint64_t kill_after = 0, kill_spin = 0;
  };
  std::vector<Proc> procs(nprod);
  for (uint32_t p = 0; p < nprod; ++p) {
    procs[p].victim = p < nvict;
    procs[p].kill_after = rng() % 25;
    procs[p].kill_spin = rng() % 40000;
    const uint64_t pseed = rng();
    const pid_t pid = fork();
    if (pid == 0) run_producer(w, topic, p, procs[p].victim ? 0 : count, pseed, codec, sh);
    if (pid < 0) return "fork failed";
    procs[p].pid = pid;
  }
  struct KillAll {  // whatever happens, no producer outlives its trial
    std::vector<Proc>& v;
    ~KillAll() {
      for (auto& p : v)
        if (!p.reaped && p.pid > 0) {
          kill(p.pid, SIGKILL);
          waitpid(p.pid, nullptr, 0);
        }
    }
  } killer{procs};

  std::vector<pid_t> dead;
  const uint64_t deadline = now_ns() + kTrialWatchdogNs;
  bool stopping = false;
  std::vector<uint64_t> last_claims(nprod, 0), last_change(nprod, now_ns());
  std::string stall;  // the ring as seen when a survivor made no claim for 500 ms
  for (;;) {
    for (uint32_t p = 0; p < nprod; ++p) {
      const uint64_t c = sh->prod[p].claims.load(std::memory_order_relaxed);
      if (c != last_claims[p] || procs[p].reaped || procs[p].victim) {
        last_claims[p] = c;
        last_change[p] = now_ns();
      } else if (stall.empty() && now_ns() - last_change[p] > 500'000'000) {
        stall = "; survivor " + std::to_string(p) + " stalled 500 ms; readers at " +
                std::to_string(subs[0].position()) + ", " + std::to_string(subs[1].position()) + "; " +
                limit_state(r);
      }
    }
    bool progressed = false;
    for (int i = 0; i < 2; ++i)
      if (!drain_some(subs[i], logs[i], codec, nprod, i == 0 ? 64 : 8, progressed))
        return "reader " + std::to_string(i) + (logs[i].tethered ? " (tethered)" : " (untethered)") + ": " +
               logs[i].error;
    bool survivors_done = true, all_exited = true;
    for (uint32_t p = 0; p < nprod; ++p) {
      Proc& pr = procs[p];
      if (pr.victim && !pr.killed && sh->prod[p].committed.load(std::memory_order_acquire) >= pr.kill_after) {
        for (uint64_t i = pr.kill_spin; i > 0; --i) shm::cpu_relax();  // a random point from here
        kill(pr.pid, SIGKILL);
        pr.killed = true;
        ++tot.kills;
        progressed = true;
      }
      if (!pr.reaped) {
        if (waitpid(pr.pid, &pr.status, WNOHANG) == pr.pid) {
          pr.reaped = true;
          progressed = true;
          if (pr.victim && !pr.killed)
            return "producer " + std::to_string(p) + " (to be killed) ended on its own with status " +
                   std::to_string(pr.status) + ": " + sh->prod[p].why + "; " + limit_state(r);
          if (pr.victim)
            dead.push_back(pr.pid);
          else if (!WIFEXITED(pr.status) || WEXITSTATUS(pr.status) != 0)
            return "survivor " + std::to_string(p) + " ended with status " + std::to_string(pr.status) +
                   ": " + sh->prod[p].why + stall + "; now: reader 0 " + ring_state(r, subs[0].position()) +
                   "; " + limit_state(r);
        }
      }
      if (!pr.reaped) all_exited = false;
      if (!pr.victim && sh->prod[p].committed.load(std::memory_order_acquire) < count) survivors_done = false;
      if (pr.victim && !pr.reaped) survivors_done = false;
    }
    // Stop once every victim is dead, no dead claim is left open (padded by the
    // daemon, or by a survivor blocked on it: survivors publish on until then)
    // and every survivor is past its count.
    if (!stopping && survivors_done && !dead_claim_open(r, dead)) {
      sh->stop.store(1, std::memory_order_release);
      stopping = true;
    }
    if (stopping && all_exited) break;
    if (now_ns() > deadline) {
      std::string s = "trial watchdog: ";
      for (uint32_t p = 0; p < nprod; ++p)
        s += "p" + std::to_string(p) + (procs[p].victim ? "(victim" : "(survivor") +
             (procs[p].reaped ? ", exited)" : ")") + " committed " +
             std::to_string(sh->prod[p].committed.load()) + "; ";
      s += "dead claim open " + std::to_string(dead_claim_open(r, dead)) + "; " +
           ring_state(r, subs[0].position());
      return s;
    }
    if (!progressed) subs[0].wait(1'000'000);  // data, or 1 ms to look at the processes again
  }

  // Every producer is gone and no dead claim is open: everything below the tail
  // is committed or padding. Read up to it.
  const uint64_t tail = tail_pos(r);
  for (int i = 0; i < 2; ++i) {
    const uint64_t until = now_ns() + 5'000'000'000ull;
    while (subs[i].position() < tail) {
      bool progressed = false;
      if (!drain_some(subs[i], logs[i], codec, nprod, 64, progressed))
        return "reader " + std::to_string(i) + ": " + logs[i].error;
      if (!progressed && now_ns() > until)
        return "reader " + std::to_string(i) +
               " stuck after every producer ended: " + ring_state(r, subs[i].position());
    }
    if (subs[i].position() != tail)
      return "reader " + std::to_string(i) + " passed the tail: " + ring_state(r, subs[i].position());
  }

  // Exactness after death, and survivors' waits.
  uint64_t trial_max_wait = 0;
  for (uint32_t p = 0; p < nprod; ++p) {
    const ProducerRecord& rec = sh->prod[p];
    const uint64_t committed = rec.committed.load(), committing = rec.committing.load();
    const std::string who = "producer " + std::to_string(p) +
                            (procs[p].victim ? " (killed)" : " (survivor)") + ": committed " +
                            std::to_string(committed) + ", committing " + std::to_string(committing);
    if (rec.failed.load()) return who + ": failed: " + rec.why;
    if (!procs[p].victim) {
      trial_max_wait = std::max<uint64_t>(trial_max_wait, rec.max_wait_ns.load());
      if (rec.max_wait_ns.load() >= uint64_t(kBlockTimeoutNs))
        return who + ": a claim waited past its timeout" + stall;
      if (committing != committed) return who + ": exited inside a commit";
    }
    for (int i = 0; i < 2; ++i) {
      const ReaderLog& L = logs[i];
      const std::string rd = " (reader " + std::to_string(i) + (L.tethered ? ", tethered)" : ", untethered)");
      if (L.last[p] > std::max(committed, committing))
        return who + ": received seq " + std::to_string(L.last[p]) + ", never published" + rd;
      if (!L.tethered) continue;
      // Dense was checked frame by frame, so count == last: exactly 1..received.
      if (L.count[p] == committed) continue;
      if (procs[p].victim && L.count[p] == committed + 1 && committing == committed + 1) {
        ++tot.in_commit;  // killed inside the commit call, after its commit word
        continue;
      }
      return who + ": received exactly 1.." + std::to_string(L.count[p]) +
             (L.count[p] < committed ? " (committed messages lost)" : " (more than committed)") + rd;
    }
  }
  for (auto& L : logs) tot.messages += L.received;
  for (auto& s : subs) tot.laps += int(s.stats().lapped);
  tot.padded += int(fills(r) - fills_before);
  tot.trial_max_wait.push_back(trial_max_wait);
  ++tot.trials;
  if (tethered) ++tot.tethered_trials;
  for (auto& s : subs) s.close();
  return "";
}

Shared* shared_page() {
  void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) Shared{};
}

std::vector<std::string> dev_shm_with(const std::string& prefix) {
  std::vector<std::string> v;
  for (auto& e : std::filesystem::directory_iterator("/dev/shm"))
    if (e.path().filename().string().find(prefix) != std::string::npos) v.push_back(e.path().filename());
  return v;
}

// A 4 KiB multi-producer block-policy ring with 4 reader slots on the heap (no fork, no
// /dev/shm), for single-process regression tests of the claim protocol.
struct HeapRing {
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  static std::unique_ptr<std::byte[], Free> zalloc(size_t n) {
    auto* p = static_cast<std::byte*>(std::aligned_alloc(64, (n + 63) / 64 * 64));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, n);
    return std::unique_ptr<std::byte[], Free>(p);
  }
  static constexpr uint64_t cap = 4096;
  std::unique_ptr<std::byte[], Free> data = zalloc(shm::data_segment_size(cap));
  std::unique_ptr<std::byte[], Free> ctl = zalloc(shm::control_segment_size(4));
  shm::RingRefs r;
  HeapRing() {
    shm::init_segments(reinterpret_cast<shm::DataHeader*>(data.get()),
                       reinterpret_cast<shm::ControlHeader*>(ctl.get()), cap, 4, shm::kFlagMultiProducer,
                       shm::kPolicyBlock, 0, 0, cap / 4, 1);
    REQUIRE(shm::bind_ring(data.get(), shm::data_segment_size(cap), ctl.get(), shm::control_segment_size(4),
                           r) == nullptr);
  }
};

}  // namespace

// Found by the torture through shmbusd (a survivor's claim waited its whole block
// timeout): a reclaimer that resolves a dead producer's open claim raises every
// producer's space limit (open claims bound it, min_open_claim) but woke only the
// readers, and only when it padded. A producer asleep on space_futex behind that
// claim then slept until its block timeout: always when the claim was INTENT (nothing
// padded, nobody woken), and for a WON claim whenever no reader releases after the pad
// (no reader, or readers elsewhere). A heap ring, no fork: the sleeper's futex value
// must have changed once recover_dead_producer returns.
TEST_CASE("resolving a dead producer's open claim wakes producers asleep on space behind it",
          "[crash][torture][regression]") {
  HeapRing ring;
  shm::RingRefs& r = ring.r;
  // The dead producer: a pid that existed and is reaped.
  const pid_t gone = fork();
  if (gone == 0) _exit(0);
  waitpid(gone, nullptr, 0);
  shm::RingWriter dead(r, true, uint32_t(gone));
  REQUIRE(dead.recorded());
  shm::Claim open;
  SECTION("killed between recording its intent and its pending CAS (INTENT)") {
    // What claim_mp step 1 leaves: the intent at the tail, the CAS never made.
    {
      shm::ProducerSlot& p = r.producers[dead.producer_slot()];
      shm::aref(p.claim_pos).store(shm::aref(r.data->tail_pos).load());
      shm::aref(p.frame_len).store(uint32_t(shm::kFrameHeaderSize + 64));
      shm::aref(p.claim).store(
          shm::claim_word(shm::tail_seq_of(shm::aref(r.data->tail_seq).load()), shm::kClaimIntent));
    }
  }
  SECTION("killed holding a won claim, no reader to release after the pad (WON)") {
    REQUIRE(dead.try_claim(64, open) == shm::RingStatus::ok);
  }
  shm::RingWriter live(r, true, uint32_t(getpid()));
  REQUIRE(live.recorded());
  shm::FrameMeta meta;
  int n = 0;
  for (shm::Claim c; live.try_claim(200, c) == shm::RingStatus::ok; ++n) live.commit(c, 200, meta);
  REQUIRE(n > 0);
  // The live producer goes to sleep on space (Publisher::wait_for_space).
  uint32_t* word = nullptr;
  uint32_t v = 0;
  REQUIRE(live.prepare_space_wait(200, word, v));  // bound by the open claim
  REQUIRE(word == &r.data->space_futex);
  REQUIRE_FALSE(live.space_available(200));
  shm::recover_dead_producer(r, dead.producer_slot(), uint32_t(gone));
  CHECK(live.space_available(200));  // the claim no longer bounds the limit...
  // ...so the sleeper must be woken: futex_wait(space_futex, v) returns at once.
  CHECK(shm::aref(r.data->space_futex).load() != v);
  live.end_space_wait();
}

// Also found by the torture (survivors asleep on space with no claim open and
// readers at the tail, until their block timeout): a LIVE producer's open claim
// bounds the other producers' space limit too, and closing it (commit, abort, or the
// IDLE after a lost pending CAS) did not check for producers asleep on space.
TEST_CASE("a producer closing its claim wakes producers asleep on space behind it",
          "[crash][torture][regression]") {
  HeapRing ring;
  shm::RingRefs& r = ring.r;
  shm::RingWriter slow(r, true, uint32_t(getpid())), fast(r, true, uint32_t(getpid()));
  REQUIRE((slow.recorded() && fast.recorded()));
  shm::FrameMeta meta;
  shm::Claim held;
  REQUIRE(slow.try_claim(64, held) == shm::RingStatus::ok);  // held open (no reader anywhere)
  int n = 0;
  for (shm::Claim c; fast.try_claim(200, c) == shm::RingStatus::ok; ++n) fast.commit(c, 200, meta);
  REQUIRE(n > 0);
  uint32_t* word = nullptr;
  uint32_t v = 0;
  REQUIRE(fast.prepare_space_wait(200, word, v));  // asleep on space behind the held claim
  REQUIRE(word == &r.data->space_futex);
  REQUIRE_FALSE(fast.space_available(200));
  SECTION("commit") { slow.commit(held, 8, meta); }
  SECTION("abort") { slow.abort(held); }
  CHECK(fast.space_available(200));
  CHECK(shm::aref(r.data->space_futex).load() != v);  // futex_wait(v) must not sleep on
  fast.end_space_wait();
}

// Also found by the torture (a survivor's claim returned back_pressured ~2 ms into a
// 2 s block timeout): Publisher::claim waited for space once and tried once more, so
// space taken by another producer in between, or a claim giving up on the zero lock
// of a live producer that is descheduled, ended the wait early. Here the zero lock
// is held by a live producer (this process) and never released.
TEST_CASE("policy block: a claim gives up only after its block timeout", "[crash][torture][regression]") {
  TopicGuard g{Bus::direct({.shm_prefix = unique_prefix("torture-block")}), "block.timeout"};
  g.bus.create_topic(g.topic, {.capacity = 4096, .policy = Policy::block, .multi_producer = true});
  PublisherOptions po;
  po.block_timeout_ns = 100'000'000;
  Publisher pub = g.bus.publisher(g.topic, po);
  const shm::RingRefs& r = pub.refs();
  uint8_t buf[256] = {};
  const uint64_t frame = shm::kFrameHeaderSize + sizeof buf;
  while (tail_pos(r) + frame + 8 <= shm::aref(r.data->zero_mark).load())
    REQUIRE(pub.offer(buf, sizeof buf) == Status::ok);
  uint32_t k = 0;
  while (shm::aref(r.producers[k].pid).load() != uint32_t(getpid())) ++k;
  shm::aref(r.data->zero_lock).store(k + 1);  // a live holder, descheduled for good
  ClaimView c;
  const uint64_t t0 = now_ns();
  const Status s = pub.claim(sizeof buf, c);
  const uint64_t waited = now_ns() - t0;
  CHECK(s == Status::back_pressured);
  CHECK(waited >= uint64_t(po.block_timeout_ns));
  shm::aref(r.data->zero_lock).store(0);
  REQUIRE(pub.claim(sizeof buf, c) == Status::ok);
  pub.commit(sizeof buf);
}

TEST_CASE("crash torture, direct mode: producers SIGKILLed with claims held open lose nothing committed",
          "[crash][torture]") {
  const uint64_t seed = torture_seed();
  std::mt19937_64 rng(seed);
  const BlobCodec codec(seed | 1, kMaxBody);
  Shared* sh = shared_page();
  Where w;
  w.prefix = unique_prefix("torture");
  Bus bus = Bus::direct({.shm_prefix = w.prefix});
  Totals tot;
  const int trials = scaled(400);
  for (int t = 0; t < trials; ++t) {
    const bool tethered = t % 2 == 0;
    std::string err = run_trial(bus, w, "torture." + std::to_string(t), rng, codec, sh, tethered, tot);
    INFO("trial " << t << (tethered ? " (tethered + untethered readers)" : " (untethered readers only)")
                  << ", seed " << seed);
    REQUIRE(err == "");
  }
  tot.print("direct mode (a blocked survivor pads dead claims)");
  CHECK(tot.padded > 0);  // the case under test did happen
  CHECK(dev_shm_with(w.prefix).empty());
  munmap(sh, sizeof *sh);
}

TEST_CASE("crash torture through shmbusd: the daemon pads dead claims and nothing committed is lost",
          "[crash][torture][daemon]") {
  const uint64_t seed = torture_seed() ^ 0x5a5a;
  std::mt19937_64 rng(seed);
  const BlobCodec codec(seed | 1, kMaxBody);
  Shared* sh = shared_page();
  DaemonProc d("torture");
  REQUIRE(d.start());
  Where w;
  w.daemon = true;
  w.sock = d.sock;
  Totals tot;
  {
    auto client = DaemonClient::connect({d.sock});
    Bus bus(make_daemon_provider(client));
    const int trials = scaled(150);
    for (int t = 0; t < trials; ++t) {
      const bool tethered = t % 2 == 0;
      std::string err = run_trial(bus, w, "torture." + std::to_string(t), rng, codec, sh, tethered, tot);
      INFO("trial " << t << (tethered ? " (tethered + untethered readers)" : " (untethered readers only)")
                    << ", seed " << seed);
      REQUIRE(err == "");
    }
  }
  tot.print("through shmbusd (the daemon pads dead claims)");
  CHECK(tot.padded > 0);
  REQUIRE(d.stop());
  CHECK(d.leaks().empty());
  munmap(sh, sizeof *sh);
}
