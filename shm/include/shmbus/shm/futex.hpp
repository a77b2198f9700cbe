// Cross-process futex wait/wake on a 32-bit word in shared memory.
// Never FUTEX_PRIVATE_FLAG: the waiters and wakers live in different processes.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <ctime>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace shmbus::shm {

// Blocks while *word == expected, at most timeout_ns (<0: forever).
// Returns 0 when woken (or the value already differed), ETIMEDOUT on timeout,
// EINTR when interrupted. Spurious returns are allowed: callers re-check.
inline int futex_wait(uint32_t* word, uint32_t expected, int64_t timeout_ns) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = time_t(timeout_ns / 1'000'000'000);
    ts.tv_nsec = long(timeout_ns % 1'000'000'000);
    tsp = &ts;
  }
  long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, nullptr, 0);
  if (rc == 0) return 0;
  if (errno == EAGAIN) return 0;
  return errno;
}

// Wakes every waiter on `word`. Returns the number woken or -errno.
inline int futex_wake_all(uint32_t* word) {
  long rc = syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
  return rc < 0 ? -errno : int(rc);
}

// An interrupt a thread blocked in a cross-process futex wait (a subscriber's P6
// sleep, a producer's P7 sleep) can be given by another thread of its process
// (Subscriber::interrupt, Publisher::interrupt; Go's context, Rust's interrupt
// handle). The sleeper waits on the shared word and on `pending` at once
// (futex_waitv, Linux >= 5.16), so the interrupt needs no write to shared memory
// and wakes nobody else. `pending` stays raised until the waiter takes it: an
// interrupt raised while nobody waits ends the next wait at once (no lost wake-up).
struct Interrupt {
  uint32_t pending = 0;  // 1: raised, not yet taken (process-private futex word)

  // Any thread; async-signal-safe. The store is seq_cst and the kernel compares
  // `pending` with 0 under its futex lock in futex_waitv, so a sleeper either sees
  // 1 before it sleeps or is on the wait queue when this FUTEX_WAKE runs.
  void raise() noexcept {
    std::atomic_ref<uint32_t>(pending).store(1, std::memory_order_seq_cst);
    syscall(SYS_futex, &pending, FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
  }
  // Relaxed: a hint polled in spin loops; take() is the authoritative read.
  bool raised() const noexcept {
    return std::atomic_ref<const uint32_t>(pending).load(std::memory_order_relaxed) != 0;
  }
  // True once per raise (acquire: what the raiser wrote before raise() is visible).
  bool take() noexcept {
    return raised() && std::atomic_ref<uint32_t>(pending).exchange(0, std::memory_order_acquire) != 0;
  }
};

// futex_wait on a shared word that also returns when `intr` is raised. Returns as
// futex_wait. Without futex_waitv (ENOSYS: a kernel before 5.16, or a seccomp
// filter) it sleeps in slices of at most 1 ms, so an interrupt is seen within one.
inline int futex_wait_interruptible(uint32_t* word, uint32_t expected, Interrupt* intr, int64_t timeout_ns) {
  if (!intr) return futex_wait(word, expected, timeout_ns);
  if (intr->raised()) return 0;
  static std::atomic<bool> no_waitv{false};
  if (!no_waitv.load(std::memory_order_relaxed)) {
    struct {  // struct futex_waitv (linux/futex.h, 5.16), spelled out for older headers
      uint64_t val, uaddr;
      uint32_t flags, reserved;
    } w[2] = {{expected, uint64_t(uintptr_t(word)), 0x02 /* FUTEX2_SIZE_U32, shared */, 0},
              {0, uint64_t(uintptr_t(&intr->pending)), 0x02 | 128 /* FUTEX2_PRIVATE */, 0}};
    timespec ts{};
    timespec* tsp = nullptr;
    if (timeout_ns >= 0) {  // futex_waitv takes an absolute CLOCK_MONOTONIC time
      clock_gettime(CLOCK_MONOTONIC, &ts);
      const int64_t ns = int64_t(ts.tv_nsec) + timeout_ns % 1'000'000'000;
      ts.tv_sec += time_t(timeout_ns / 1'000'000'000 + ns / 1'000'000'000);
      ts.tv_nsec = long(ns % 1'000'000'000);
      tsp = &ts;
    }
    long rc = syscall(449 /* SYS_futex_waitv */, w, 2, 0, tsp, CLOCK_MONOTONIC);
    if (rc >= 0 || errno == EAGAIN) return 0;
    if (errno != ENOSYS && errno != EPERM) return errno;
    no_waitv.store(true, std::memory_order_relaxed);
  }
  return futex_wait(word, expected, timeout_ns < 0 || timeout_ns > 1'000'000 ? 1'000'000 : timeout_ns);
}

// Asymmetric fences (membarrier(2), Linux >= 4.16). The frequent side of a
// Dekker handshake (a producer's commit, a subscriber's cursor release) then needs
// only a compiler barrier between its store and its load; the rare side (a
// process about to sleep on a futex) pays one membarrier call (~1 us), which makes
// every running registered thread execute a full barrier. Every process that maps
// a ring registers once (asym_fence_available()). If registration is refused
// (old kernel, seccomp), that process uses seq_cst read-modify-writes on its
// frequent side instead, which is correct on its own.
inline bool asym_fence_available() {
  static const bool ok = [] {
    long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (q < 0 || !(q & MEMBARRIER_CMD_GLOBAL_EXPEDITED)) return false;
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
  }();
  return ok;
}
// The heavy side: returns false when the kernel refused (the caller then sleeps
// in short bounded slices, so a missed wake-up costs at most one slice).
inline bool asym_fence_heavy() { return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0; }
// The light side: orders the preceding store before the following load for the
// compiler; the CPU is ordered by the heavy side's membarrier.
inline void asym_fence_light() { std::atomic_signal_fence(std::memory_order_seq_cst); }

inline uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

// The one liveness test (for pids read from shared memory or a peer's record):
// a pidfd reports a process that exited, a zombie included, where kill(pid, 0)
// would call a zombie alive. A pid that cannot be opened for another reason
// (EPERM in a container) counts as alive: never reclaim on doubt.
inline bool process_alive(uint32_t pid) {
  if (pid == 0) return false;
  int fd = int(syscall(SYS_pidfd_open, pid_t(pid), 0));
  if (fd < 0) return errno != ESRCH;
  pollfd p{fd, POLLIN, 0};
  const bool live = poll(&p, 1, 0) == 0;
  close(fd);
  return live;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace shmbus::shm
