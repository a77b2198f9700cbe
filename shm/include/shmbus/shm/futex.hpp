// Cross-process futex wait/wake on a 32-bit word in shared memory.
// Never FUTEX_PRIVATE_FLAG: the waiters and wakers live in different processes.
#pragma once

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <linux/futex.h>
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

inline uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace shmbus::shm
