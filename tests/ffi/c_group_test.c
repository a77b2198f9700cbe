/* Consumer groups through the C ABI (SHMBUS_1.4), against a real shmbusd child: a
 * member alone holds every partition; a second member (a child process, this program
 * re-executed) joins and they split a 4-partition topic; the child is SIGKILLed and
 * this member takes its partitions over at once; of N sequenced messages none is
 * lost (a message the child polled and had not released may come twice). Then:
 * poll_wait ended at once by shmbus_group_subscriber_interrupt from another thread,
 * with and without a partition held, and an interrupt raised before the wait; the
 * release token checked; the errors of open.
 * Usage: c_group_test <path to shmbusd>. No sleeps: waits end on events or deadlines. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include "shmbus.h"

#include "c_daemon.h"

static uint64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

#define MARK (1ull << 63) /* child record: "I hold these partitions" (a bit mask) */

static uint32_t held_mask(shmbus_group_subscriber_t* g) {
  uint32_t ps[16];
  size_t n = 0;
  if (shmbus_group_subscriber_partitions(g, ps, 16, &n) != SHMBUS_OK) return 0xffffffffu;
  uint32_t m = 0;
  for (size_t i = 0; i < n && i < 16; ++i) m |= 1u << ps[i];
  return m;
}

/* The child member: joins, reports what it holds (MARK|mask) on fd 3 whenever it
 * changes, and for every message writes its index there, then releases it. Runs
 * until killed. */
static int member_main(const char* sock, const char* topic, const char* group) {
  shmbus_bus_t* bus = NULL;
  if (shmbus_bus_connect(sock, &bus) != SHMBUS_OK) return 3;
  shmbus_group_options_t o;
  shmbus_group_options_init(&o);
  o.sync_interval_ns = 2000000;
  shmbus_group_subscriber_t* g = NULL;
  if (shmbus_group_subscriber_open(bus, topic, group, &o, &g) != SHMBUS_OK) {
    fprintf(stderr, "member: open: %s\n", shmbus_last_error());
    return 4;
  }
  uint32_t shown = 0xffffffffu;
  for (;;) {
    const uint32_t m = held_mask(g);
    if (m != shown) {
      shown = m;
      uint64_t rec = MARK | m;
      if (write(3, &rec, 8) != 8) return 5;
    }
    shmbus_group_view_t v;
    int rc = shmbus_group_subscriber_poll_wait(g, &v, 20000000);
    if (rc == SHMBUS_E_TIMED_OUT) continue;
    if (rc != SHMBUS_OK || v.view.size != 8) {
      fprintf(stderr, "member: poll: %s (%s)\n", shmbus_strerror(rc), shmbus_last_error());
      return 6;
    }
    uint64_t idx;
    memcpy(&idx, v.view.data, 8);
    if (write(3, &idx, 8) != 8) return 5;
    if (shmbus_group_subscriber_release(g, &v) != SHMBUS_OK) return 7;
  }
}

enum { N = 4000, P = 4 };
static unsigned char seen[N];
static uint64_t last_in[P]; /* this member: the last index read per partition, +1 */
static int order_errors = 0;

/* Polls this member once (at most `wait_ns`), records and releases what it got. */
static int poll_once(shmbus_group_subscriber_t* g, int64_t wait_ns) {
  shmbus_group_view_t v;
  int rc = shmbus_group_subscriber_poll_wait(g, &v, wait_ns);
  if (rc == SHMBUS_E_TIMED_OUT) return 0;
  if (rc != SHMBUS_OK) {
    fprintf(stderr, "poll: %s (%s)\n", shmbus_strerror(rc), shmbus_last_error());
    ++failures;
    return -1;
  }
  uint64_t idx = UINT64_MAX;
  if (v.view.size == 8) memcpy(&idx, v.view.data, 8);
  if (idx >= N || v.partition >= P || idx % P != v.partition || v.view.message_id != idx) {
    fprintf(stderr, "poll: index %llu on partition %u\n", (unsigned long long)idx, v.partition);
    ++failures;
    return -1;
  }
  if (idx + 1 <= last_in[v.partition]) ++order_errors; /* out of order on its partition */
  last_in[v.partition] = idx + 1;
  seen[idx] = 1;
  CHECK_RC(shmbus_group_subscriber_release(g, &v), SHMBUS_OK);
  /* Released already, or a token never polled: refused. */
  CHECK_RC(shmbus_group_subscriber_release(g, &v), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_group_view_t forged = v;
  forged.view.next_position += 1u << 20;
  CHECK_RC(shmbus_group_subscriber_release(g, &forged), SHMBUS_E_INVALID_ARGUMENT);
  forged = v;
  forged.partition = 99;
  CHECK_RC(shmbus_group_subscriber_release(g, &forged), SHMBUS_E_INVALID_ARGUMENT);
  return 1;
}

static uint32_t child_mask = 0;
static int child_fd = -1;
static void drain_child(void) {
  uint64_t buf[512];
  ssize_t r;
  while ((r = read(child_fd, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < r / 8; ++i) {
      if (buf[i] & MARK)
        child_mask = (uint32_t)buf[i];
      else if (buf[i] < N)
        seen[buf[i]] = 1;
    }
  }
}

static size_t count_seen(uint64_t upto) {
  size_t c = 0;
  for (uint64_t i = 0; i < upto; ++i) c += seen[i];
  return c;
}

static void publish(shmbus_publisher_t** pubs, uint64_t from, uint64_t to) {
  for (uint64_t i = from; i < to; ++i) REQUIRE_OK(shmbus_publisher_offer(pubs[i % P], &i, 8, i, 0));
}

struct waiter {
  shmbus_group_subscriber_t* g;
  int rc;
  uint64_t returned_ns;
  volatile int tid; /* set before the wait */
};
static void* wait_forever(void* arg) {
  struct waiter* w = arg;
  __atomic_store_n(&w->tid, (int)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
  shmbus_group_view_t v;
  w->rc = shmbus_group_subscriber_poll_wait(w->g, &v, -1);
  w->returned_ns = mono_ns();
  return NULL;
}

/* The scheduler state of thread `tid` of this process ('S': asleep), or 0. */
static char thread_state(int tid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
  FILE* f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char* e = strrchr(buf, ')'); /* "pid (comm) S ..." */
  return e && e[1] == ' ' ? e[2] : 0;
}

/* A thread blocked in poll_wait(forever) on g returns INTERRUPTED at once: the
 * interrupt comes once the thread is seen asleep in the kernel (its wait), so a
 * wait that the interrupt did not end itself would last until the next sync. */
static void check_interrupt(shmbus_group_subscriber_t* g, const char* what) {
  struct waiter w = {g, 12345, 0, 0};
  pthread_t t;
  if (pthread_create(&t, NULL, wait_forever, &w) != 0) {
    ++failures;
    return;
  }
  const uint64_t until = mono_ns() + 5000000000ull;
  while ((__atomic_load_n(&w.tid, __ATOMIC_SEQ_CST) == 0 || thread_state(w.tid) != 'S') &&
         mono_ns() < until) {
  }
  CHECK(thread_state(w.tid) == 'S');
  const uint64_t t0 = mono_ns();
  CHECK_RC(shmbus_group_subscriber_interrupt(g), SHMBUS_OK);
  pthread_join(t, NULL);
  CHECK_RC(w.rc, SHMBUS_E_INTERRUPTED);
  const double ms = (double)(w.returned_ns - t0) / 1e6;
  fprintf(stderr, "%s: poll_wait interrupted after %.3f ms\n", what, ms);
  CHECK(ms < 500.0);
}

int main(int argc, char** argv) {
  if (argc == 5 && strcmp(argv[1], "--member") == 0) return member_main(argv[2], argv[3], argv[4]);
  if (argc < 2) {
    fprintf(stderr, "usage: %s <shmbusd>\n", argv[0]);
    return 2;
  }
  daemon_bin = argv[1];
  snprintf(dir, sizeof dir, "/tmp/shmbus-cgrp-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  snprintf(sock_path, sizeof sock_path, "%s/shmbusd.sock", dir);
  snprintf(state_dir, sizeof state_dir, "%s/state", dir);
  snprintf(notify_path, sizeof notify_path, "%s/notify", dir);
  snprintf(prefix, sizeof prefix, "cgrp-%d", (int)getpid());

  /* ---- without a daemon, and bad arguments ---- */
  shmbus_group_options_t o;
  shmbus_group_options_init(&o);
  CHECK(o.size == sizeof o && o.tethered == 1 && o.wait == SHMBUS_WAIT_HYBRID &&
        o.sync_interval_ns == 10000000 && o.idle_sync_ns == 1000000 && o.open_timeout_ms == 5000);
  shmbus_bus_t* direct = NULL;
  char dprefix[80];
  snprintf(dprefix, sizeof dprefix, "%s-d", prefix);
  REQUIRE_OK(shmbus_bus_open_direct(dprefix, &direct));
  shmbus_group_subscriber_t* g = (shmbus_group_subscriber_t*)&o;
  CHECK_RC(shmbus_group_subscriber_open(direct, "c.grp", "g", NULL, &g), SHMBUS_E_UNSUPPORTED);
  CHECK(g == NULL && strstr(shmbus_last_error(), "shmbusd") != NULL);
  shmbus_bus_close(direct);

  if (start_daemon() != 0) {
    fprintf(stderr, "shmbusd did not start (log in %s)\n", dir);
    cleanup();
    return 1;
  }
  shmbus_bus_t* bus = NULL;
  REQUIRE_OK(shmbus_bus_connect(sock_path, &bus));
  o.size = 8;
  CHECK_RC(shmbus_group_subscriber_open(bus, "c.grp", "g", &o, &g), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_group_options_init(&o);
  o.sync_interval_ns = 0;
  CHECK_RC(shmbus_group_subscriber_open(bus, "c.grp", "g", &o, &g), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_group_subscriber_open(bus, "c.grp", NULL, NULL, &g), SHMBUS_E_INVALID_ARGUMENT);
  /* No such topic: the daemon's refusal, with its reason. */
  CHECK(shmbus_group_subscriber_open(bus, "c.none", "g", NULL, &g) != SHMBUS_OK && g == NULL);
  CHECK(strlen(shmbus_last_error()) > 0);

  shmbus_topic_config_t cfg;
  shmbus_topic_config_init(&cfg);
  cfg.partitions = P;
  cfg.capacity = 1 << 20;
  REQUIRE_OK(shmbus_topic_create(bus, "c.grp", &cfg));
  shmbus_publisher_t* pubs[P];
  for (uint32_t p = 0; p < P; ++p) {
    shmbus_publisher_options_t po;
    shmbus_publisher_options_init(&po);
    po.partition = p;
    REQUIRE_OK(shmbus_publisher_open(bus, "c.grp", &po, &pubs[p]));
  }

  /* ---- alone: every partition ---- */
  shmbus_group_options_init(&o);
  o.sync_interval_ns = 2000000;
  REQUIRE_OK(shmbus_group_subscriber_open(bus, "c.grp", "g", &o, &g));
  CHECK(held_mask(g) == 0xf);
  shmbus_group_stats_t st;
  REQUIRE_OK(shmbus_group_subscriber_stats(g, &st));
  CHECK(st.assigned == 4 && st.member_id != 0 && st.taken == 4);

  /* ---- a second member (another process) joins: 2 + 2 ---- */
  int pfd[2];
  if (pipe(pfd) != 0) return 2;
  fcntl(pfd[0], F_SETFL, O_NONBLOCK);
  child_fd = pfd[0];
  pid_t child = fork();
  if (child == 0) {
    dup2(pfd[1], 3);
    execl("/proc/self/exe", argv[0], "--member", sock_path, "c.grp", "g", (char*)NULL);
    _exit(127);
  }
  close(pfd[1]);
  uint64_t deadline = mono_ns() + 10000000000ull;
  while (!(held_mask(g) != 0xf && __builtin_popcount(held_mask(g)) == 2 && (child_mask & held_mask(g)) == 0 &&
           (child_mask | held_mask(g)) == 0xf)) {
    if (mono_ns() > deadline || waitpid(child, NULL, WNOHANG) == child) {
      fprintf(stderr, "no split: this member holds %x, the child %x\n", held_mask(g), child_mask);
      ++failures;
      break;
    }
    poll_once(g, 1000000); /* drives the syncs */
    drain_child();
  }
  fprintf(stderr, "split: this member holds %x, the child %x\n", held_mask(g), child_mask);

  /* ---- the first half, read by both ---- */
  publish(pubs, 0, N / 2);
  deadline = mono_ns() + 20000000000ull;
  while (count_seen(N / 2) < N / 2 && mono_ns() < deadline) {
    poll_once(g, 1000000);
    drain_child();
  }
  CHECK(count_seen(N / 2) == N / 2);
  const uint32_t mine_before = held_mask(g);

  /* ---- SIGKILL the child: its partitions come here at once ---- */
  const uint64_t t0 = mono_ns();
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  publish(pubs, N / 2, N);
  deadline = mono_ns() + 20000000000ull;
  uint64_t took = 0;
  while (count_seen(N) < N && mono_ns() < deadline) {
    poll_once(g, 1000000);
    if (!took && held_mask(g) == 0xf) took = mono_ns();
  }
  drain_child();
  CHECK(count_seen(N) == N);
  CHECK(held_mask(g) == 0xf);
  CHECK(order_errors == 0);
  fprintf(stderr, "takeover after SIGKILL: %.1f ms (held %x before); %zu of %d messages seen\n",
          took ? (double)(took - t0) / 1e6 : -1.0, mine_before, count_seen(N), N);
  REQUIRE_OK(shmbus_group_subscriber_stats(g, &st));
  CHECK(st.rebalances >= 2 && st.given_up == 2 && st.taken == 6);

  /* ---- interrupts ---- */
  /* Holding partitions (it waits on a ring). */
  check_interrupt(g, "holding 4 partitions");
  /* Raised while nothing waits: ends the next wait at once, one time. */
  shmbus_group_view_t v;
  CHECK_RC(shmbus_group_subscriber_interrupt(g), SHMBUS_OK);
  CHECK_RC(shmbus_group_subscriber_poll_wait(g, &v, -1), SHMBUS_E_INTERRUPTED);
  CHECK_RC(shmbus_group_subscriber_poll_wait(g, &v, 1000000), SHMBUS_E_TIMED_OUT);
  CHECK_RC(shmbus_group_subscriber_poll(g, &v), SHMBUS_E_EMPTY);
  /* Holding nothing (a one-partition topic another member holds). */
  cfg.partitions = 1;
  REQUIRE_OK(shmbus_topic_create(bus, "c.grp1", &cfg));
  /* Syncs 10 s apart: a wait not ended by the interrupt itself would last that long. */
  o.sync_interval_ns = 10000000000LL;
  o.idle_sync_ns = 10000000000LL;
  shmbus_group_subscriber_t *h1 = NULL, *h2 = NULL;
  REQUIRE_OK(shmbus_group_subscriber_open(bus, "c.grp1", "g", &o, &h1));
  REQUIRE_OK(shmbus_group_subscriber_open(bus, "c.grp1", "g", &o, &h2));
  /* Settle: one of them holds the partition, the other nothing. */
  int changed = 0;
  deadline = mono_ns() + 10000000000ull;
  while ((held_mask(h1) | held_mask(h2)) != 1 || (held_mask(h1) & held_mask(h2)) != 0) {
    REQUIRE_OK(shmbus_group_subscriber_sync(h1, &changed));
    REQUIRE_OK(shmbus_group_subscriber_sync(h2, &changed));
    if (mono_ns() > deadline) {
      fprintf(stderr, "one partition, two members: never settled (%x, %x)\n", held_mask(h1), held_mask(h2));
      ++failures;
      break;
    }
  }
  shmbus_group_subscriber_t* holder = held_mask(h1) ? h1 : h2;
  check_interrupt(holder == h1 ? h2 : h1, "holding nothing");
  check_interrupt(holder, "holding 1 partition");
  CHECK_RC(shmbus_group_subscriber_release_all(holder), SHMBUS_OK);
  /* The topic removed under its members: the slow path's refusal is the call's error,
   * with the daemon's reason. */
  REQUIRE_OK(shmbus_topic_remove(bus, "c.grp1"));
  int rc = shmbus_group_subscriber_sync(holder, &changed);
  fprintf(stderr, "sync after the topic's removal: %s (%s)\n", shmbus_strerror(rc), shmbus_last_error());
  CHECK(rc != SHMBUS_OK && strstr(shmbus_last_error(), "c.grp1") != NULL);
  CHECK(shmbus_group_subscriber_sync(holder == h1 ? h2 : h1, &changed) == SHMBUS_E_NOT_FOUND);
  shmbus_group_subscriber_close(h1);
  shmbus_group_subscriber_close(h2);

  /* A member polling (syncs 2 ms apart) when its topic goes: poll_wait returns the
   * daemon's refusal at its next sync, not a timeout. */
  for (uint32_t p = 0; p < P; ++p) shmbus_publisher_close(pubs[p]);
  REQUIRE_OK(shmbus_topic_remove(bus, "c.grp"));
  const uint64_t tr = mono_ns();
  rc = shmbus_group_subscriber_poll_wait(g, &v, 5000000000LL);
  fprintf(stderr, "poll_wait after the topic's removal: %s (%s) after %.1f ms\n", shmbus_strerror(rc),
          shmbus_last_error(), (double)(mono_ns() - tr) / 1e6);
  CHECK(rc == SHMBUS_E_NOT_FOUND && strstr(shmbus_last_error(), "c.grp") != NULL);
  shmbus_group_subscriber_close(g);
  shmbus_group_subscriber_close(NULL);
  shmbus_bus_close(bus);
  cleanup();
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
