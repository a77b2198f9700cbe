// Power-loss model for the spill log (LD_PRELOAD shim; tests/spill/power_loss_test.cpp).
//
// Records, per file, the length made durable by a *completed* sync, from the calls the
// process actually made, not from the archiver's own bookkeeping:
//   - fdatasync / fsync (libc): the file's size before the call, once the call returned 0;
//   - io_uring IORING_OP_FSYNC: io_uring_submit is wrapped; each FSYNC SQE in the
//     submission is noted with its file (fixed-file slots resolved through the wrapped
//     io_uring_register_files_update) and the length it will cover: the file's size at
//     submission, or the end of a WRITE on the same file earlier in the same submission
//     (the archiver links write -> fsync). It counts only once its CQE is seen with
//     res >= 0: powerloss_scan() reads the completion ring between the application's
//     head and the kernel's tail, so it must be called before the application consumes a
//     completion (the test calls it from the archiver's per-completion hook).
// powerloss_power_off() freezes the table ("the power went off"); powerloss_apply(dir,
// mode, stale_from) then cuts every regular file under dir to its synced length, or keeps
// its length with the unsynced tail zeroed, garbled or replaced by stale bytes of the
// same file (its records from stale_from on, replayed),
// and removes a file that was never synced, as a crash of the machine could leave the
// disk.
// Limits: the length covered by an FSYNC is exact when no other write to that file is
// in flight across it (true under `batch` flush: one batch per partition in flight).
// Under `interval` flush writes are in flight across the FSYNC: it is credited with the
// file's size at submission (what completed writes reached) plus the writes linked
// before it; a write completing later is not credited (conservative: the real fsync
// may cover it), but a hole left by writes completing out of order below that size
// is (the model cuts only at the end of a file; the archiver acknowledges only the
// in-order completed prefix). Directory entries are treated as durable once the
// file's data was synced.
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILES 4096
#define MAX_PENDING 1024
#define MAX_SLOTS 1024

struct synced {
  char path[PATH_MAX];
  uint64_t len;
};
struct pending {
  uint64_t user_data;
  char path[PATH_MAX];
  uint64_t len;
  int used;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct synced files[MAX_FILES];
static int nfiles;
static struct pending pend[MAX_PENDING];
static int slot_fd[MAX_SLOTS];
static int slots_known;
static struct io_uring* last_ring;
static int powered_off;
static uint64_t n_libc_syncs, n_uring_syncs, n_dropped;

static int fd_path(int fd, char* out) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, out, PATH_MAX - 1);
  if (n <= 0) return -1;
  out[n] = 0;
  return 0;
}

static uint64_t fd_size(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
}

static void record(const char* path, uint64_t len) {  // with mu held
  if (powered_off) return;
  for (int i = 0; i < nfiles; ++i)
    if (strcmp(files[i].path, path) == 0) {
      if (len > files[i].len) files[i].len = len;
      return;
    }
  if (nfiles == MAX_FILES) {
    ++n_dropped;
    return;
  }
  snprintf(files[nfiles].path, PATH_MAX, "%s", path);
  files[nfiles++].len = len;
}

static int sync_common(int fd, int (*real)(int)) {
  char path[PATH_MAX];
  struct stat st;
  int have = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && fd_path(fd, path) == 0;
  uint64_t len = have ? (uint64_t)st.st_size : 0;
  int rc = real(fd);
  if (rc == 0 && have) {
    pthread_mutex_lock(&mu);
    record(path, len);
    ++n_libc_syncs;
    pthread_mutex_unlock(&mu);
  }
  return rc;
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  return sync_common(fd, real);
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  return sync_common(fd, real);
}

int io_uring_register_files_update(struct io_uring* ring, unsigned off, const int* fds, unsigned nr) {
  static int (*real)(struct io_uring*, unsigned, const int*, unsigned);
  if (!real)
    real = (int (*)(struct io_uring*, unsigned, const int*, unsigned))dlsym(RTLD_NEXT,
                                                                            "io_uring_register_files_update");
  int rc = real(ring, off, fds, nr);
  if (rc > 0) {
    pthread_mutex_lock(&mu);
    if (!slots_known) {
      for (int i = 0; i < MAX_SLOTS; ++i) slot_fd[i] = -1;
      slots_known = 1;
    }
    for (unsigned i = 0; i < (unsigned)rc && off + i < MAX_SLOTS; ++i) slot_fd[off + i] = fds[i];
    pthread_mutex_unlock(&mu);
  }
  return rc;
}

static int sqe_fd(const struct io_uring_sqe* s) {
  if (!(s->flags & IOSQE_FIXED_FILE)) return s->fd;
  if (!slots_known || s->fd < 0 || s->fd >= MAX_SLOTS) return -1;
  return slot_fd[s->fd];
}

int io_uring_submit(struct io_uring* ring) {
  static int (*real)(struct io_uring*);
  if (!real) real = (int (*)(struct io_uring*))dlsym(RTLD_NEXT, "io_uring_submit");
  pthread_mutex_lock(&mu);
  last_ring = ring;
  const unsigned mask = ring->sq.ring_mask;
  for (unsigned i = ring->sq.sqe_head; i != ring->sq.sqe_tail; ++i) {
    const struct io_uring_sqe* s = &ring->sq.sqes[i & mask];
    if (s->opcode != IORING_OP_FSYNC) continue;
    int fd = sqe_fd(s);
    char path[PATH_MAX];
    if (fd < 0 || fd_path(fd, path) != 0) continue;
    uint64_t len = fd_size(fd);
    // A write on the same file linked before the fsync in this submission (the chain
    // of IOSQE_IO_LINK SQEs that ends at it): the fsync runs only after it completed.
    // An unlinked write (interval flush) may complete after the fsync: not covered.
    for (unsigned j = i; j != ring->sq.sqe_head;) {
      const struct io_uring_sqe* w = &ring->sq.sqes[--j & mask];
      if (!(w->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK))) break;
      if ((w->opcode == IORING_OP_WRITE || w->opcode == IORING_OP_WRITE_FIXED) && sqe_fd(w) == fd &&
          w->off + w->len > len)
        len = w->off + w->len;
    }
    int k = 0;
    while (k < MAX_PENDING && pend[k].used) ++k;
    if (k == MAX_PENDING) {
      ++n_dropped;
      continue;
    }
    pend[k].used = 1;
    pend[k].user_data = s->user_data;
    pend[k].len = len;
    snprintf(pend[k].path, PATH_MAX, "%s", path);
  }
  pthread_mutex_unlock(&mu);
  return real(ring);
}

// Counts the FSYNC completions not yet consumed by the application.
void powerloss_scan(void) {
  pthread_mutex_lock(&mu);
  struct io_uring* ring = last_ring;
  if (ring) {
    unsigned head = __atomic_load_n(ring->cq.khead, __ATOMIC_ACQUIRE);
    unsigned tail = __atomic_load_n(ring->cq.ktail, __ATOMIC_ACQUIRE);
    for (unsigned i = head; i != tail; ++i) {
      const struct io_uring_cqe* c = &ring->cq.cqes[i & ring->cq.ring_mask];
      for (int k = 0; k < MAX_PENDING; ++k) {
        if (!pend[k].used || pend[k].user_data != c->user_data) continue;
        if (c->res >= 0) {
          record(pend[k].path, pend[k].len);
          ++n_uring_syncs;
        }
        pend[k].used = 0;
        break;
      }
    }
  }
  pthread_mutex_unlock(&mu);
}

// Power back on with an empty table (a new round; the files of the last one are gone).
void powerloss_reset(void) {
  pthread_mutex_lock(&mu);
  powered_off = 0;
  nfiles = 0;
  memset(pend, 0, sizeof pend);
  n_libc_syncs = n_uring_syncs = n_dropped = 0;
  pthread_mutex_unlock(&mu);
}

void powerloss_power_off(void) {
  pthread_mutex_lock(&mu);
  powered_off = 1;
  pthread_mutex_unlock(&mu);
}

// Counters for the test's report: libc syncs, io_uring syncs, records dropped (full table).
void powerloss_stats(uint64_t* libc_syncs, uint64_t* uring_syncs, uint64_t* dropped) {
  pthread_mutex_lock(&mu);
  *libc_syncs = n_libc_syncs;
  *uring_syncs = n_uring_syncs;
  *dropped = n_dropped;
  pthread_mutex_unlock(&mu);
}

// What the unsynced tail of a file (past its synced length) becomes at power-off.
enum { TAIL_CUT = 0, TAIL_ZEROS = 1, TAIL_GARBAGE = 2, TAIL_STALE = 3 };

// Overwrites [keep, size) of the open file: zeros, pseudo-random bytes, or (stale) the
// file's own bytes from offset `from` on, again and again: for a log segment with
// `from` its first record, well-formed records with old sequences, starting exactly at
// the synced end. Returns 0, or -1 on an error.
static int spoil_tail(int fd, uint64_t keep, uint64_t size, int mode, uint64_t from) {
  unsigned char buf[4096];
  uint64_t x = 0x9e3779b97f4a7c15ull ^ size;
  for (uint64_t o = keep; o < size;) {
    size_t n = size - o < sizeof buf ? (size_t)(size - o) : sizeof buf;
    if (mode == TAIL_ZEROS || (mode == TAIL_STALE && keep <= from)) {
      memset(buf, 0, n);
    } else if (mode == TAIL_GARBAGE) {
      for (size_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
      }
    } else {
      uint64_t src = from + (o - keep) % (keep - from);
      size_t m = keep - src < n ? (size_t)(keep - src) : n;
      if (pread(fd, buf, m, (off_t)src) != (ssize_t)m) return -1;
      n = m;
    }
    if (pwrite(fd, buf, n, (off_t)o) != (ssize_t)n) return -1;
    o += n;
  }
  return 0;
}

// Cuts (TAIL_CUT) every regular file under dir back to what was synced before the
// power went off, or keeps its length with the unsynced tail spoiled (the other modes);
// a file never synced is removed. stale_from: where TAIL_STALE copies from. Returns the
// number of bytes lost, or -1 on an error.
long long powerloss_apply(const char* dir, int mode, uint64_t stale_from) {
  DIR* d = opendir(dir);
  if (!d) return -1;
  long long lost = 0;
  struct dirent* e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      long long l = powerloss_apply(p, mode, stale_from);
      if (l < 0) {
        closedir(d);
        return -1;
      }
      lost += l;
      continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    char real_p[PATH_MAX];
    if (!realpath(p, real_p)) continue;
    long long keep = -1;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < nfiles; ++i)
      if (strcmp(files[i].path, real_p) == 0) keep = (long long)files[i].len;
    pthread_mutex_unlock(&mu);
    int rc = 0;
    if (keep < 0) {
      lost += st.st_size;
      rc = unlink(p);
    } else if (st.st_size > keep) {
      lost += st.st_size - keep;
      if (mode == TAIL_CUT) {
        rc = truncate(p, keep);
      } else {
        int fd = open(p, O_RDWR | O_CLOEXEC);
        rc = fd < 0 ? -1 : spoil_tail(fd, (uint64_t)keep, (uint64_t)st.st_size, mode, stale_from);
        if (fd >= 0) close(fd);
      }
    }
    if (rc != 0) {
      closedir(d);
      return -1;
    }
  }
  closedir(d);
  return lost;
}
