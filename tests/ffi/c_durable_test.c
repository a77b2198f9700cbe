/* Durable topics through the C ABI (SHMBUS_1.2), against a real shmbusd child:
 * create with durable settings (and the errors around them), publish,
 * wait_durable, SIGKILL the daemon, restart it, replay from the earliest message
 * (every message in order, no duplicate), then live messages through the same
 * subscriber; start at a sequence and at a time; describe_durable.
 * Usage: c_durable_test <path to shmbusd>. Readiness: sd_notify on a private
 * NOTIFY_SOCKET, no sleeps. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmbus.h"

#include "c_daemon.h"

static uint64_t realtime_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

enum { N = 3000, LIVE = 500 };
static uint64_t seqs[N + LIVE];

/* Publishes indices [from, to) as 8-byte payloads; returns the last claim sequence. */
static uint64_t publish(shmbus_publisher_t* pub, uint64_t from, uint64_t to) {
  uint64_t last = 0;
  for (uint64_t i = from; i < to; ++i) {
    shmbus_claim_t c;
    REQUIRE_OK(shmbus_publisher_claim(pub, 64, &c));
    memcpy(c.data, &i, 8);
    REQUIRE_OK(shmbus_publisher_commit(pub, 8, i, 0));
    seqs[i] = c.sequence;
    last = c.sequence;
  }
  return last;
}

/* Polls `count` messages expecting payload indices from `first` on, in order. */
static void expect(shmbus_subscriber_t* sub, uint64_t first, uint64_t count, const char* what) {
  for (uint64_t k = 0; k < count; ++k) {
    shmbus_view_t v;
    int rc = shmbus_subscriber_poll_wait(sub, &v, 5000000000LL);
    while (rc == SHMBUS_E_CORRUPT) rc = shmbus_subscriber_poll_wait(sub, &v, 5000000000LL);
    if (rc != SHMBUS_OK) {
      fprintf(stderr, "%s: message %llu: %s (%s)\n", what, (unsigned long long)(first + k),
              shmbus_strerror(rc), shmbus_last_error());
      ++failures;
      return;
    }
    uint64_t idx = UINT64_MAX;
    if (v.size == 8) memcpy(&idx, v.data, 8);
    if (idx != first + k || v.message_id != first + k || v.sequence != seqs[first + k]) {
      fprintf(stderr, "%s: got index %llu (seq %llu), want %llu (seq %llu)\n", what, (unsigned long long)idx,
              (unsigned long long)v.sequence, (unsigned long long)(first + k),
              (unsigned long long)seqs[first + k]);
      ++failures;
      return;
    }
    CHECK_RC(shmbus_subscriber_check(sub, &v), SHMBUS_OK);
    CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);
    /* Released already: a second release of it is refused. */
    if (k == 0) CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_E_INVALID_ARGUMENT);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s <shmbusd>\n", argv[0]);
    return 2;
  }
  daemon_bin = argv[1];
  snprintf(dir, sizeof dir, "/tmp/shmbus-cdur-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  snprintf(sock_path, sizeof sock_path, "%s/shmbusd.sock", dir);
  snprintf(state_dir, sizeof state_dir, "%s/state", dir);
  snprintf(notify_path, sizeof notify_path, "%s/notify", dir);
  snprintf(prefix, sizeof prefix, "cdur-%d", (int)getpid());

  /* ---- settings and their errors, no daemon needed ---- */
  shmbus_durable_config_t d;
  memset(&d, 0xff, sizeof d);
  shmbus_durable_config_init(&d, sizeof d);
  CHECK(d.size == sizeof d && d.durable == 0 && d.flush == SHMBUS_FLUSH_INTERVAL &&
        d.flush_interval_ms == 10 && d.retention_bytes == 0 && d.segment_bytes == 0);
  {
    /* A caller with a shorter (older) struct: only its bytes are written. */
    unsigned char buf[sizeof d + 8];
    memset(buf, 0xab, sizeof buf);
    shmbus_durable_config_init((shmbus_durable_config_t*)(void*)buf, 8);
    CHECK(buf[8] == 0xab && buf[sizeof buf - 1] == 0xab);
  }
  shmbus_bus_t* direct = NULL;
  char dprefix[80];
  snprintf(dprefix, sizeof dprefix, "%s-d", prefix); /* removed by cleanup() too */
  REQUIRE_OK(shmbus_bus_open_direct(dprefix, &direct));
  d.durable = 1;
  CHECK_RC(shmbus_topic_create_durable(direct, "c.dur", NULL, &d), SHMBUS_E_UNSUPPORTED);
  CHECK(strstr(shmbus_last_error(), "daemon") != NULL);
  shmbus_topic_config_t cfg;
  shmbus_topic_config_init(&cfg);
  cfg.capacity = 1 << 16;
  cfg.policy = SHMBUS_POLICY_SPILL;
  CHECK_RC(shmbus_topic_create(direct, "c.dur", &cfg), SHMBUS_E_UNSUPPORTED);
  cfg.policy = SHMBUS_POLICY_BLOCK;
  REQUIRE_OK(shmbus_topic_create(direct, "c.plain", &cfg));
  shmbus_subscriber_options_t so;
  shmbus_subscriber_options_init(&so);
  so.start = SHMBUS_START_EARLIEST;
  shmbus_subscriber_t* sub = (shmbus_subscriber_t*)&so;
  CHECK_RC(shmbus_subscriber_open(direct, "c.plain", &so, &sub), SHMBUS_E_UNSUPPORTED);
  CHECK(sub == NULL);
  shmbus_durable_config_t dd;
  shmbus_durable_config_init(&dd, sizeof dd);
  REQUIRE_OK(shmbus_topic_describe_durable(direct, "c.plain", &dd));
  CHECK(dd.durable == 0);
  CHECK_RC(shmbus_topic_remove(direct, "c.plain"), SHMBUS_OK);
  shmbus_bus_close(direct);

  /* ---- through the daemon ---- */
  if (start_daemon() != 0) {
    fprintf(stderr, "shmbusd did not start (log in %s)\n", dir);
    cleanup();
    return 1;
  }
  shmbus_bus_t* bus = NULL;
  REQUIRE_OK(shmbus_bus_connect(sock_path, &bus));
  d.flush = 7;
  CHECK_RC(shmbus_topic_create_durable(bus, "c.dur", &cfg, &d), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(strstr(shmbus_last_error(), "flush") != NULL);
  d.flush = SHMBUS_FLUSH_BATCH;
  d.size = 4;
  CHECK_RC(shmbus_topic_create_durable(bus, "c.dur", &cfg, &d), SHMBUS_E_INVALID_ARGUMENT);
  d.size = sizeof d;
  d.segment_bytes = 1 << 20;
  d.retention_age_s = 3600;
  REQUIRE_OK(shmbus_topic_create_durable(bus, "c.dur", &cfg, &d));
  REQUIRE_OK(shmbus_topic_create_durable(bus, "c.dur", &cfg, &d)); /* idempotent */
  d.flush = SHMBUS_FLUSH_NONE;
  CHECK_RC(shmbus_topic_create_durable(bus, "c.dur", &cfg, &d), SHMBUS_E_ALREADY_EXISTS);
  d.flush = SHMBUS_FLUSH_BATCH;
  shmbus_durable_config_init(&dd, sizeof dd);
  REQUIRE_OK(shmbus_topic_describe_durable(bus, "c.dur", &dd));
  CHECK(dd.durable == 1 && dd.flush == SHMBUS_FLUSH_BATCH && dd.segment_bytes == (1u << 20) &&
        dd.retention_age_s == 3600 && dd.retention_bytes == 0);
  /* A plain topic: replay is refused with the reason. */
  REQUIRE_OK(shmbus_topic_create(bus, "c.plain", &cfg));
  CHECK_RC(shmbus_subscriber_open(bus, "c.plain", &so, &sub), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(strstr(shmbus_last_error(), "not durable") != NULL);
  so.name = "reader";
  CHECK_RC(shmbus_subscriber_open(bus, "c.dur", &so, &sub), SHMBUS_E_INVALID_ARGUMENT);
  so.name = NULL;
  shmbus_topic_config_t spill = cfg;
  spill.policy = SHMBUS_POLICY_SPILL;
  REQUIRE_OK(shmbus_topic_create(bus, "c.spill", &spill));
  shmbus_topic_config_t got;
  REQUIRE_OK(shmbus_topic_describe(bus, "c.spill", &got));
  CHECK(got.policy == SHMBUS_POLICY_SPILL);
  REQUIRE_OK(shmbus_topic_describe_durable(bus, "c.spill", &dd));
  CHECK(dd.durable == 1);

  /* Publish N (the ring holds far fewer: most of the history is only in the log). */
  shmbus_publisher_t* pub = NULL;
  REQUIRE_OK(shmbus_publisher_open(bus, "c.dur", NULL, &pub));
  const uint64_t last = publish(pub, 0, N);
  REQUIRE_OK(shmbus_publisher_wait_durable(pub, last, 10000000000LL));
  uint64_t dseq = 0;
  int aerr = -1;
  REQUIRE_OK(shmbus_publisher_durable_sequence(pub, &dseq, &aerr));
  CHECK(dseq >= last && aerr == 0);
  CHECK_RC(shmbus_publisher_wait_durable(pub, last + 1000, 1000000), SHMBUS_E_TIMED_OUT);
  shmbus_publisher_close(pub);
  shmbus_bus_close(bus);

  /* The daemon dies without a chance to flush anything more; a new one starts. */
  kill_daemon();
  if (start_daemon() != 0) {
    fprintf(stderr, "shmbusd did not restart (log in %s)\n", dir);
    cleanup();
    return 1;
  }
  REQUIRE_OK(shmbus_bus_connect(sock_path, &bus));
  REQUIRE_OK(shmbus_topic_describe_durable(bus, "c.dur", &dd));
  CHECK(dd.durable == 1 && dd.flush == SHMBUS_FLUSH_BATCH);

  so.start = SHMBUS_START_EARLIEST;
  REQUIRE_OK(shmbus_subscriber_open(bus, "c.dur", &so, &sub));
  expect(sub, 0, N, "replay from earliest");
  shmbus_view_t v;
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  /* Live: a new publisher after the restart; the same subscriber goes on. */
  REQUIRE_OK(shmbus_publisher_open(bus, "c.dur", NULL, &pub));
  publish(pub, N, N + LIVE);
  expect(sub, N, LIVE, "live after the replay");
  shmbus_subscriber_stats_t st;
  REQUIRE_OK(shmbus_subscriber_stats(sub, &st));
  CHECK(st.received == N + LIVE);
  shmbus_subscriber_close(sub);

  /* Start at a sequence: the first frame with sequence >= it. */
  so.start = SHMBUS_START_SEQUENCE;
  so.start_value = seqs[N / 2];
  REQUIRE_OK(shmbus_subscriber_open(bus, "c.dur", &so, &sub));
  expect(sub, N / 2, N / 2 + LIVE, "start at a sequence");
  shmbus_subscriber_close(sub);

  /* Start at a time: an hour ago is everything; an hour ahead is nothing yet. */
  so.start = SHMBUS_START_TIME;
  so.start_value = realtime_ns() - 3600000000000ull;
  REQUIRE_OK(shmbus_subscriber_open(bus, "c.dur", &so, &sub));
  expect(sub, 0, 10, "start an hour ago");
  shmbus_subscriber_close(sub);
  so.start_value = realtime_ns() + 3600000000000ull;
  REQUIRE_OK(shmbus_subscriber_open(bus, "c.dur", &so, &sub));
  CHECK_RC(shmbus_subscriber_poll_wait(sub, &v, 20000000), SHMBUS_E_TIMED_OUT);
  shmbus_subscriber_close(sub);

  shmbus_publisher_close(pub);

  /* Policy spill: a plain LATEST subscriber never holds the producer back. It reads
   * nothing while N messages (many laps of the 64 KiB ring) are published, with a
   * publisher that would give up after 3 s of waiting for it; then it reads them
   * all in order (from the log, then the ring) and goes on live. */
  so.start = SHMBUS_START_LATEST;
  REQUIRE_OK(shmbus_subscriber_open(bus, "c.spill", &so, &sub));
  shmbus_publisher_options_t po;
  shmbus_publisher_options_init(&po);
  po.block_timeout_ns = 3000000000LL;
  REQUIRE_OK(shmbus_publisher_open(bus, "c.spill", &po, &pub));
  for (int lap = 0; lap < 8; ++lap) publish(pub, 0, N); /* 8 x 3000 x ~48 B frames */
  /* Every lap in order: index 0..N-1 each time, sequences consecutive. */
  uint64_t prev_seq = 0;
  for (int lap = 0; lap < 8; ++lap) {
    for (uint64_t k = 0; k < N; ++k) {
      shmbus_view_t w;
      memset(&w, 0, sizeof w);
      int rc = shmbus_subscriber_poll_wait(sub, &w, 5000000000LL);
      uint64_t idx = UINT64_MAX;
      if (rc == SHMBUS_OK && w.size == 8) memcpy(&idx, w.data, 8);
      if (rc != SHMBUS_OK || idx != k || (prev_seq && w.sequence != prev_seq + 1)) {
        fprintf(stderr, "spill lap %d message %llu: %s (%s), index %llu, sequence %llu after %llu\n", lap,
                (unsigned long long)k, shmbus_strerror(rc), rc == SHMBUS_OK ? "" : shmbus_last_error(),
                (unsigned long long)idx, (unsigned long long)w.sequence, (unsigned long long)prev_seq);
        ++failures;
        lap = 8;
        break;
      }
      prev_seq = w.sequence;
      CHECK_RC(shmbus_subscriber_release(sub, &w), SHMBUS_OK);
    }
  }
  publish(pub, N, N + LIVE);
  expect(sub, N, LIVE, "plain subscriber of a spill topic, live");
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  shmbus_subscriber_close(sub);
  shmbus_publisher_close(pub);
  shmbus_bus_close(bus);
  cleanup();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("c_durable_test: ok (%d replayed after SIGKILL, %d live)\n", N, LIVE);
  return 0;
}
