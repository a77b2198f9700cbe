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
inline bool asym_fence_heavy() {
  return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0;
}
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
