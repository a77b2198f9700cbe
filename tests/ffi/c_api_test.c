/* c_api_test: the whole C ABI from plain C11, including its error paths.
 * Built with -std=c11 -Wall -Wextra -pedantic -Werror. Exit 0 = pass, 1 = fail.
 * Segments use a per-process prefix and are removed at the end. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmbus.h"

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                                           \
  do {                                                                                        \
    ++g_checks;                                                                               \
    if (!(cond)) {                                                                            \
      ++g_failures;                                                                           \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
              shmbus_last_error());                                                           \
    }                                                                                         \
  } while (0)

#define CHECK_RC(call, want)                                                                              \
  do {                                                                                                    \
    int rc_ = (call);                                                                                     \
    ++g_checks;                                                                                           \
    if (rc_ != (want)) {                                                                                  \
      ++g_failures;                                                                                       \
      fprintf(stderr, "%s:%d: %s returned %d (%s), want %d; last error: %s\n", __FILE__, __LINE__, #call, \
              rc_, shmbus_strerror(rc_), (int)(want), shmbus_last_error());                               \
    }                                                                                                     \
  } while (0)

/* A real if tiny Cap'n Proto message: root pointer + a struct of one data word. */
static uint32_t build_message(uint8_t* seg, uint64_t value) {
  /* struct pointer: offset 0, data words 1, pointer words 0 */
  uint64_t ptr = ((uint64_t)1 << 32);
  memcpy(seg, &ptr, 8);
  memcpy(seg + 8, &value, 8);
  return 2;
}

static char g_prefix[64];

static void test_library(void) {
  static const int codes[] = {SHMBUS_OK,
                              SHMBUS_E_EMPTY,
                              SHMBUS_E_BACK_PRESSURED,
                              SHMBUS_E_TIMED_OUT,
                              SHMBUS_E_TOO_LARGE,
                              SHMBUS_E_CORRUPT,
                              SHMBUS_E_MALFORMED,
                              SHMBUS_E_CLOSED,
                              SHMBUS_E_INVALID_ARGUMENT,
                              SHMBUS_E_NOT_FOUND,
                              SHMBUS_E_ALREADY_EXISTS,
                              SHMBUS_E_INCOMPATIBLE,
                              SHMBUS_E_PERMISSION_DENIED,
                              SHMBUS_E_NO_SLOT,
                              SHMBUS_E_PROTOCOL,
                              SHMBUS_E_NOT_CONNECTED,
                              SHMBUS_E_INTERNAL,
                              SHMBUS_E_UNSUPPORTED,
                              -5,
                              -12,
                              12345};
  size_t i;
  CHECK(shmbus_abi_version() == SHMBUS_ABI_VERSION);
  for (i = 0; i < sizeof codes / sizeof codes[0]; ++i) {
    const char* s = shmbus_strerror(codes[i]);
    CHECK(s != NULL && s[0] != '\0');
  }
  CHECK(strcmp(shmbus_strerror(SHMBUS_E_EMPTY), shmbus_strerror(SHMBUS_E_CLOSED)) != 0);
  CHECK(shmbus_last_error() != NULL);
}

static void test_bus_errors(void) {
  shmbus_bus_t* bus = (shmbus_bus_t*)&g_checks; /* must be overwritten with NULL */
  CHECK_RC(shmbus_bus_open_direct("bad/prefix", &bus), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(bus == NULL);
  CHECK(strstr(shmbus_last_error(), "prefix") != NULL);
  CHECK_RC(shmbus_bus_open_direct("x", NULL), SHMBUS_E_INVALID_ARGUMENT);
  bus = (shmbus_bus_t*)&g_checks;
  CHECK_RC(shmbus_bus_connect("/nonexistent/shmbus.sock", &bus), SHMBUS_E_NOT_CONNECTED);
  CHECK(bus == NULL);
  {
    /* An embedded daemon: the same calls, through a daemon thread in this process. */
    CHECK_RC(shmbus_bus_open_embedded(NULL, &bus), SHMBUS_OK);
    CHECK(bus != NULL);
    if (bus) {
      shmbus_topic_config_t cfg;
      shmbus_topic_config_init(&cfg);
      cfg.capacity = 8192;
      CHECK_RC(shmbus_topic_create(bus, "emb.c", &cfg), SHMBUS_OK);
      shmbus_publisher_t* pub = NULL;
      shmbus_subscriber_t* sub = NULL;
      shmbus_subscriber_options_t so;
      shmbus_subscriber_options_init(&so);
      so.name = "c-durable";
      CHECK_RC(shmbus_publisher_open(bus, "emb.c", NULL, &pub), SHMBUS_OK);
      CHECK_RC(shmbus_subscriber_open(bus, "emb.c", &so, &sub), SHMBUS_OK);
      if (pub && sub) {
        shmbus_view_t v;
        CHECK_RC(shmbus_publisher_offer(pub, "abc", 3, 7, 0), SHMBUS_OK);
        CHECK_RC(shmbus_publisher_offer(pub, "de", 2, 8, 0), SHMBUS_OK);
        CHECK_RC(shmbus_subscriber_poll_wait(sub, &v, 1000000000), SHMBUS_OK);
        CHECK(v.size == 3 && memcmp(v.data, "abc", 3) == 0);
        CHECK_RC(shmbus_subscriber_check(sub, &v), SHMBUS_OK);
        CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);
        shmbus_subscriber_close(sub); /* parked under its name */
        sub = NULL;
        CHECK_RC(shmbus_subscriber_open(bus, "emb.c", &so, &sub), SHMBUS_OK);
        CHECK_RC(shmbus_subscriber_poll_wait(sub, &v, 1000000000), SHMBUS_OK);
        CHECK(v.size == 2 && v.message_id == 8); /* resumed right after "abc" */
      }
      shmbus_subscriber_close(sub);
      shmbus_publisher_close(pub);
    }
    shmbus_bus_close(bus);
    bus = NULL;
  }
  shmbus_bus_close(NULL); /* no-op */
  shmbus_publisher_close(NULL);
  shmbus_subscriber_close(NULL);
}

static void test_topics(shmbus_bus_t* bus) {
  shmbus_topic_config_t cfg, got;
  shmbus_topic_config_init(&cfg);
  CHECK(cfg.size == sizeof cfg);
  CHECK(cfg.partitions == 1);
  CHECK(cfg.capacity == 16u << 20);
  CHECK(cfg.policy == SHMBUS_POLICY_BLOCK);
  CHECK(cfg.slots == 64);
  CHECK(cfg.mode == 0660);

  cfg.capacity = 1 << 16;
  cfg.partitions = 2;
  CHECK_RC(shmbus_topic_create(NULL, "t.a", &cfg), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_topic_create(bus, NULL, &cfg), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_topic_create(bus, ".bad", &cfg), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_topic_create(bus, "bad name", &cfg), SHMBUS_E_INVALID_ARGUMENT);
  cfg.capacity = 5000; /* not a power of two */
  CHECK_RC(shmbus_topic_create(bus, "t.a", &cfg), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(strstr(shmbus_last_error(), "capacity") != NULL);
  cfg.capacity = 1 << 16;
  cfg.size = 7; /* not initialised by _init */
  CHECK_RC(shmbus_topic_create(bus, "t.a", &cfg), SHMBUS_E_INVALID_ARGUMENT);
  cfg.size = sizeof cfg;
  cfg.policy = 9;
  CHECK_RC(shmbus_topic_create(bus, "t.a", &cfg), SHMBUS_E_INVALID_ARGUMENT);
  cfg.policy = SHMBUS_POLICY_SPILL;
  CHECK_RC(shmbus_topic_create(bus, "t.a", &cfg), SHMBUS_E_UNSUPPORTED);
  cfg.policy = SHMBUS_POLICY_FAIL;
  cfg.schema_id = 0x1234;

  CHECK_RC(shmbus_topic_create(bus, "t.a", &cfg), SHMBUS_OK);
  CHECK_RC(shmbus_topic_create(bus, "t.a", &cfg), SHMBUS_OK); /* idempotent */
  cfg.capacity = 1 << 17;
  CHECK_RC(shmbus_topic_create(bus, "t.a", &cfg), SHMBUS_E_ALREADY_EXISTS);
  cfg.capacity = 1 << 16;

  memset(&got, 0xab, sizeof got);
  CHECK_RC(shmbus_topic_describe(bus, "t.a", &got), SHMBUS_OK);
  CHECK(got.size == sizeof got);
  CHECK(got.partitions == 2);
  CHECK(got.capacity == 1 << 16);
  CHECK(got.max_payload == (1 << 16) / 4);
  CHECK(got.policy == SHMBUS_POLICY_FAIL);
  CHECK(got.multi_producer == 0);
  CHECK(got.slots == 64);
  CHECK(got.schema_id == 0x1234);
  CHECK(got.mode == 0660);
  CHECK_RC(shmbus_topic_describe(bus, "t.missing", &got), SHMBUS_E_NOT_FOUND);
  CHECK_RC(shmbus_topic_describe(bus, "t.a", NULL), SHMBUS_E_INVALID_ARGUMENT);

  CHECK_RC(shmbus_topic_create(bus, "t.defaults", NULL), SHMBUS_OK);
  CHECK_RC(shmbus_topic_describe(bus, "t.defaults", &got), SHMBUS_OK);
  CHECK(got.capacity == 16u << 20 && got.partitions == 1 && got.policy == SHMBUS_POLICY_BLOCK);
  CHECK_RC(shmbus_topic_remove(bus, "t.defaults"), SHMBUS_OK);
  CHECK_RC(shmbus_topic_describe(bus, "t.defaults", &got), SHMBUS_E_NOT_FOUND);
  CHECK_RC(shmbus_topic_remove(bus, NULL), SHMBUS_E_INVALID_ARGUMENT);
}

static void test_open_errors(shmbus_bus_t* bus) {
  shmbus_publisher_options_t po;
  shmbus_subscriber_options_t so;
  shmbus_publisher_t* pub = (shmbus_publisher_t*)&g_checks;
  shmbus_subscriber_t* sub = (shmbus_subscriber_t*)&g_checks;

  shmbus_publisher_options_init(&po);
  CHECK(po.size == sizeof po && po.wait == SHMBUS_WAIT_HYBRID && po.open_timeout_ms == 5000);
  CHECK(po.block_timeout_ns == 1000000000);
  po.open_timeout_ms = 0;
  CHECK_RC(shmbus_publisher_open(bus, "t.missing", &po, &pub), SHMBUS_E_NOT_FOUND);
  CHECK(pub == NULL);
  po.wait = 17;
  pub = (shmbus_publisher_t*)&g_checks;
  CHECK_RC(shmbus_publisher_open(bus, "t.a", &po, &pub), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(pub == NULL);
  CHECK_RC(shmbus_publisher_open(bus, "t.a", NULL, NULL), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_publisher_open(NULL, "t.a", NULL, &pub), SHMBUS_E_INVALID_ARGUMENT);

  shmbus_subscriber_options_init(&so);
  CHECK(so.size == sizeof so && so.tethered == 1 && so.wait == SHMBUS_WAIT_HYBRID);
  CHECK(so.start == SHMBUS_START_LATEST && so.name == NULL);
  so.open_timeout_ms = 0;
  CHECK_RC(shmbus_subscriber_open(bus, "t.missing", &so, &sub), SHMBUS_E_NOT_FOUND);
  CHECK(sub == NULL);
  so.start = SHMBUS_START_EARLIEST;
  sub = (shmbus_subscriber_t*)&g_checks;
  CHECK_RC(shmbus_subscriber_open(bus, "t.a", &so, &sub), SHMBUS_E_UNSUPPORTED);
  CHECK(sub == NULL);
  so.start = 42;
  CHECK_RC(shmbus_subscriber_open(bus, "t.a", &so, &sub), SHMBUS_E_INVALID_ARGUMENT);
  so.start = SHMBUS_START_LATEST;
  so.name = "durable"; /* untethered: its parked slot (after close) holds nothing */
  so.tethered = 0;
  CHECK_RC(shmbus_subscriber_open(bus, "t.a", &so, &sub), SHMBUS_OK);
  shmbus_subscriber_close(sub);
  sub = NULL;
  so.tethered = 1;
  so.name = NULL;
  so.size = 3;
  CHECK_RC(shmbus_subscriber_open(bus, "t.a", &so, &sub), SHMBUS_E_INVALID_ARGUMENT);
}

static void test_data_path(shmbus_bus_t* bus) {
  shmbus_publisher_t* pub = NULL;
  shmbus_publisher_t* pub2 = NULL;
  shmbus_subscriber_t* sub = NULL;
  shmbus_claim_t c;
  shmbus_view_t v, views[8];
  shmbus_publisher_stats_t ps;
  shmbus_subscriber_stats_t ss;
  const uint8_t* seg0 = NULL;
  uint32_t words = 0, nseg = 0, i;
  size_t n = 0, published = 0;
  uint64_t value = 0;
  const char hello[] = "hello";
  char packed[64];
  uint32_t lens[10];

  CHECK_RC(shmbus_subscriber_open(bus, "t.a", NULL, &sub), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_open(bus, "t.a", NULL, &pub), SHMBUS_OK);
  CHECK(pub != NULL && sub != NULL);
  /* single-producer topic: a second publisher is refused */
  CHECK_RC(shmbus_publisher_open(bus, "t.a", NULL, &pub2), SHMBUS_E_ALREADY_EXISTS);
  CHECK(pub2 == NULL);
  CHECK(shmbus_publisher_max_payload(pub) == (1 << 16) / 4);
  CHECK(shmbus_publisher_max_payload(NULL) == 0);

  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  CHECK_RC(shmbus_subscriber_poll(sub, NULL), SHMBUS_E_INVALID_ARGUMENT);

  /* claim / commit */
  CHECK_RC(shmbus_publisher_claim(pub, 64, &c), SHMBUS_OK);
  CHECK(c.data != NULL && c.size >= 64 && ((uintptr_t)c.data & 7) == 0);
  CHECK(c.sequence == 1);
  for (i = 0; i < c.size; ++i)
    if (c.data[i] != 0) break;
  CHECK(i == c.size); /* zeroed */
  memcpy(c.data, hello, sizeof hello);
  CHECK_RC(shmbus_publisher_commit(pub, sizeof hello, 77, 0x1234), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_commit(pub, 1, 0, 0), SHMBUS_E_CLOSED); /* no open claim */
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK(v.size == sizeof hello && memcmp(v.data, hello, sizeof hello) == 0);
  CHECK(v.sequence == 1 && v.message_id == 77 && v.schema_id == 0x1234);
  CHECK(v.producer_id == (uint32_t)getpid());
  CHECK(v.timestamp_ns != 0 && v.next_position > v.position);
  CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK); /* same token again: harmless */
  {
    shmbus_view_t bogus = v;
    bogus.next_position = v.next_position + 4096; /* never polled */
    CHECK_RC(shmbus_subscriber_release(sub, &bogus), SHMBUS_E_INVALID_ARGUMENT);
    bogus.data = NULL;
    CHECK_RC(shmbus_subscriber_release(sub, &bogus), SHMBUS_E_INVALID_ARGUMENT);
  }

  /* commit more than claimed: too large, and the claim is gone */
  CHECK_RC(shmbus_publisher_claim(pub, 16, &c), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_commit(pub, c.size + 1, 0, 0), SHMBUS_E_TOO_LARGE);
  CHECK_RC(shmbus_publisher_abort(pub), SHMBUS_E_CLOSED);

  /* claim / abort: readers skip it */
  CHECK_RC(shmbus_publisher_try_claim(pub, 32, &c), SHMBUS_OK);
  memset(c.data, 0x5a, 32);
  CHECK_RC(shmbus_publisher_abort(pub), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);

  /* too large: never fits */
  CHECK_RC(shmbus_publisher_claim(pub, shmbus_publisher_max_payload(pub) + 1, &c), SHMBUS_E_TOO_LARGE);
  CHECK(c.data == NULL && c.size == 0);
  CHECK_RC(shmbus_publisher_claim(NULL, 8, &c), SHMBUS_E_INVALID_ARGUMENT);

  /* Cap'n Proto in place: commit_message writes the segment table */
  CHECK_RC(shmbus_publisher_claim(pub, 64, &c), SHMBUS_OK);
  words = build_message(c.data + 8, 4242);
  CHECK_RC(shmbus_publisher_commit_message(pub, words, 5, 6), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll_wait(sub, &v, -1), SHMBUS_OK);
  CHECK(v.size == 8 + 8 * words && v.message_id == 5 && v.schema_id == 6);
  CHECK_RC(shmbus_view_segments(&v, &seg0, &words, &nseg), SHMBUS_OK);
  CHECK(seg0 == v.data + 8 && words == 2 && nseg == 1);
  memcpy(&value, seg0 + 8, 8);
  CHECK(value == 4242);
  CHECK_RC(shmbus_view_segments(&v, &seg0, &words, NULL), SHMBUS_OK);
  CHECK_RC(shmbus_view_segments(&v, NULL, &words, NULL), SHMBUS_E_INVALID_ARGUMENT);
  {
    uint8_t bad[16] = {0};
    shmbus_view_t bv = v;
    uint32_t hdr[2] = {0xffffffffu, 1};
    memcpy(bad, hdr, 8);
    bv.data = bad;
    bv.size = 16;
    CHECK_RC(shmbus_view_segments(&bv, &seg0, &words, &nseg), SHMBUS_E_MALFORMED);
    CHECK(seg0 == NULL && words == 0);
    hdr[0] = 0;
    hdr[1] = 2; /* claims 16 bytes of segment, has 8 */
    memcpy(bad, hdr, 8);
    CHECK_RC(shmbus_view_segments(&bv, &seg0, &words, &nseg), SHMBUS_E_MALFORMED);
    bv.size = 12;
    CHECK_RC(shmbus_view_segments(&bv, &seg0, &words, &nseg), SHMBUS_E_MALFORMED);
  }
  CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);

  /* commit_message without a claim, with a segment larger than the claim */
  CHECK_RC(shmbus_publisher_commit_message(pub, 2, 0, 0), SHMBUS_E_CLOSED);
  CHECK_RC(shmbus_publisher_claim(pub, 16, &c), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_commit_message(pub, 1000, 0, 0), SHMBUS_E_TOO_LARGE);
  CHECK_RC(shmbus_publisher_commit_message(pub, 2, 0, 0), SHMBUS_E_CLOSED);

  /* commit_message_and_claim: one call per message */
  CHECK_RC(shmbus_publisher_claim(pub, 32, &c), SHMBUS_OK);
  for (i = 0; i < 5; ++i) {
    words = build_message(c.data + 8, 100 + i);
    CHECK_RC(shmbus_publisher_commit_message_and_claim(pub, words, i, 0, 32, &c), SHMBUS_OK);
    CHECK(c.data != NULL);
  }
  CHECK_RC(shmbus_publisher_abort(pub), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_claim(pub, 32, &c), SHMBUS_OK);
  words = build_message(c.data + 8, 1);
  CHECK_RC(shmbus_publisher_commit_message_and_claim(pub, words, 0, 0, 1u << 30, &c),
           SHMBUS_E_TOO_LARGE); /* the commit stands, the claim fails */
  CHECK(c.data == NULL);
  for (i = 0; i < 6; ++i) {
    CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
    CHECK_RC(shmbus_view_segments(&v, &seg0, &words, NULL), SHMBUS_OK);
    memcpy(&value, seg0 + 8, 8);
    CHECK(value == (i < 5 ? 100 + i : 1));
  }
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);

  /* copy paths: offer, offer_packed, poll_batch */
  CHECK_RC(shmbus_publisher_offer(pub, hello, sizeof hello, 1, 2), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_offer(pub, NULL, 3, 1, 2), SHMBUS_E_INVALID_ARGUMENT);
  for (i = 0; i < 10; ++i) {
    lens[i] = 1 + i % 5;
    memset(packed + i * 5, 'a' + (int)i, 5);
  }
  {
    /* pack back to back */
    char buf[64];
    size_t off = 0;
    for (i = 0; i < 10; ++i) {
      memcpy(buf + off, packed + i * 5, lens[i]);
      off += lens[i];
    }
    CHECK_RC(shmbus_publisher_offer_packed(pub, buf, lens, 10, &published), SHMBUS_OK);
    CHECK(published == 10);
  }
  CHECK_RC(shmbus_publisher_offer_packed(pub, NULL, lens, 3, &published), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(published == 0);
  CHECK_RC(shmbus_subscriber_poll_batch(sub, views, 8, 0, &n), SHMBUS_OK);
  CHECK(n == 8);
  CHECK(views[0].size == sizeof hello && memcmp(views[0].data, hello, sizeof hello) == 0);
  for (i = 1; i < n; ++i) {
    CHECK(views[i].size == lens[i - 1] && views[i].data[0] == 'a' + (int)(i - 1));
    CHECK(views[i].sequence == views[i - 1].sequence + 1);
  }
  CHECK_RC(shmbus_subscriber_release(sub, &views[3]), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_release(sub, &views[1]), SHMBUS_E_INVALID_ARGUMENT); /* already */
  CHECK_RC(shmbus_subscriber_poll_batch(sub, views, 8, 1000000, &n), SHMBUS_OK);
  CHECK(n == 3 && views[2].data[0] == 'j');
  CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll_batch(sub, views, 8, 0, &n), SHMBUS_E_EMPTY);
  CHECK(n == 0);
  CHECK_RC(shmbus_subscriber_poll_batch(sub, views, 8, 1000000, &n), SHMBUS_E_TIMED_OUT);
  CHECK(n == 0);
  CHECK_RC(shmbus_subscriber_poll_batch(sub, NULL, 8, 0, &n), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_subscriber_poll_wait(sub, &v, 1000000), SHMBUS_E_TIMED_OUT);
  CHECK_RC(shmbus_subscriber_wait(sub, 1000000), SHMBUS_E_TIMED_OUT);
  CHECK_RC(shmbus_publisher_offer(pub, hello, 1, 0, 0), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_wait(sub, -1), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);

  /* back-pressure (policy fail): the subscriber holds everything */
  {
    static uint8_t big[8192];
    int rc = SHMBUS_OK;
    int sent = 0;
    while ((rc = shmbus_publisher_offer(pub, big, sizeof big, 0, 0)) == SHMBUS_OK && sent < 100) ++sent;
    CHECK(rc == SHMBUS_E_BACK_PRESSURED);
    CHECK(sent >= 5 && sent < 100);
    CHECK_RC(shmbus_publisher_try_claim(pub, 8192, &c), SHMBUS_E_BACK_PRESSURED);
    CHECK(c.data == NULL);
    /* offer_packed stops at the first failure and says how many went in */
    while (shmbus_subscriber_poll(sub, &v) == SHMBUS_OK) {
    }
    CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);
    lens[0] = lens[1] = lens[2] = 8192;
    {
      static uint8_t pk[3 * 8192];
      size_t k = 0;
      int total = 0;
      for (;;) {
        rc = shmbus_publisher_offer_packed(pub, pk, lens, 3, &k);
        total += (int)k;
        if (rc != SHMBUS_OK) break;
      }
      CHECK(rc == SHMBUS_E_BACK_PRESSURED);
      CHECK(k < 3);
      CHECK(total >= 5);
    }
    CHECK_RC(shmbus_publisher_stats(pub, &ps), SHMBUS_OK);
    CHECK(ps.back_pressured >= 2);
    CHECK(ps.published >= 20);
    CHECK(ps.builder_fallbacks == 0);
    CHECK_RC(shmbus_publisher_stats(pub, NULL), SHMBUS_E_INVALID_ARGUMENT);
    /* drain */
    while (shmbus_subscriber_poll(sub, &v) == SHMBUS_OK) {
    }
    CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);
    CHECK_RC(shmbus_publisher_offer(pub, big, sizeof big, 0, 0), SHMBUS_OK);
  }

  CHECK_RC(shmbus_subscriber_stats(sub, &ss), SHMBUS_OK);
  CHECK(ss.received >= 10 && ss.corrupt == 0 && ss.position > 0);
  CHECK_RC(shmbus_subscriber_stats(NULL, &ss), SHMBUS_E_INVALID_ARGUMENT);

  /* closing a publisher with an open claim aborts it */
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_claim(pub, 16, &c), SHMBUS_OK);
  shmbus_publisher_close(pub);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  /* and the partition is free for a new producer */
  CHECK_RC(shmbus_publisher_open(bus, "t.a", NULL, &pub), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_offer(pub, hello, sizeof hello, 9, 0), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK(v.message_id == 9);
  shmbus_publisher_close(pub);
  shmbus_subscriber_close(sub);
}

static void test_block_policy(shmbus_bus_t* bus) {
  shmbus_topic_config_t cfg;
  shmbus_publisher_options_t po;
  shmbus_publisher_t* pub = NULL;
  shmbus_subscriber_t* sub = NULL;
  shmbus_publisher_stats_t ps;
  static uint8_t big[1024];
  int rc, sent = 0;

  shmbus_topic_config_init(&cfg);
  cfg.capacity = 4096;
  CHECK_RC(shmbus_topic_create(bus, "t.block", &cfg), SHMBUS_OK);
  shmbus_publisher_options_init(&po);
  po.block_timeout_ns = 2000000; /* 2 ms */
  po.wait = SHMBUS_WAIT_FUTEX;
  CHECK_RC(shmbus_subscriber_open(bus, "t.block", NULL, &sub), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_open(bus, "t.block", &po, &pub), SHMBUS_OK);
  while ((rc = shmbus_publisher_offer(pub, big, sizeof big, 0, 0)) == SHMBUS_OK && sent < 100) ++sent;
  CHECK(rc == SHMBUS_E_BACK_PRESSURED); /* the block timed out */
  CHECK_RC(shmbus_publisher_stats(pub, &ps), SHMBUS_OK);
  CHECK(ps.blocked_waits >= 1 && ps.back_pressured >= 1);
  shmbus_subscriber_close(sub); /* frees the producer */
  CHECK_RC(shmbus_publisher_offer(pub, big, sizeof big, 0, 0), SHMBUS_OK);
  shmbus_publisher_close(pub);
  CHECK_RC(shmbus_topic_remove(bus, "t.block"), SHMBUS_OK);
}

/* The last error is per thread. */
static void* other_thread(void* arg) {
  shmbus_bus_t* b = NULL;
  (void)arg;
  if (shmbus_bus_open_direct("other/thread", &b) != SHMBUS_E_INVALID_ARGUMENT) return (void*)1;
  return strstr(shmbus_last_error(), "other/thread") ? NULL : (void*)2;
}

static void test_thread_local_error(void) {
  pthread_t t;
  void* res = (void*)3;
  shmbus_bus_t* b = NULL;
  CHECK_RC(shmbus_bus_connect("/nonexistent/shmbus.sock", &b), SHMBUS_E_NOT_CONNECTED);
  CHECK(pthread_create(&t, NULL, other_thread, NULL) == 0);
  CHECK(pthread_join(t, &res) == 0);
  CHECK(res == NULL);
  CHECK(strstr(shmbus_last_error(), "connect") != NULL);
  CHECK(strstr(shmbus_last_error(), "other/thread") == NULL);
}

/* Multi-frame claims (SHMBUS_1.6): n frames in one claim, one commit, visible together. */
static void test_multi_claim(shmbus_bus_t* bus, const char* topic) {
  shmbus_publisher_t* pub = NULL;
  shmbus_subscriber_t* sub = NULL;
  shmbus_claim_t cl[8], c;
  shmbus_view_t v;
  const uint8_t* seg0 = NULL;
  uint32_t used[8], words[8], nw = 0, i;
  uint64_t ids[8], value = 0, first = 0;

  CHECK_RC(shmbus_subscriber_open(bus, topic, NULL, &sub), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_open(bus, topic, NULL, &pub), SHMBUS_OK);
  if (!pub || !sub) return;
  CHECK_RC(shmbus_publisher_claim_n(pub, 0, 8, cl), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_publisher_claim_n(NULL, 2, 8, cl), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_publisher_claim_n(pub, 2, shmbus_publisher_max_payload(pub) + 1, cl), SHMBUS_E_TOO_LARGE);
  CHECK(cl[0].data == NULL && cl[1].data == NULL);
  /* more frames than half the ring (64 KiB) could ever hold */
  CHECK_RC(shmbus_publisher_claim_n(pub, 8, 8000, cl), SHMBUS_E_TOO_LARGE);
  CHECK_RC(shmbus_publisher_commit_n(pub, 1, used, NULL, 0), SHMBUS_E_CLOSED); /* no open batch */

  /* copy-style commit_n: 5 frames, readers see nothing until the commit */
  CHECK_RC(shmbus_publisher_claim_n(pub, 5, 100, cl), SHMBUS_OK);
  first = cl[0].sequence;
  for (i = 0; i < 5; ++i) {
    CHECK(cl[i].data != NULL && cl[i].size >= 100 && ((uintptr_t)cl[i].data & 7) == 0);
    CHECK(cl[i].sequence == first + i);
    memset(cl[i].data, 0x30 + (int)i, 100);
    used[i] = 10 + i;
    ids[i] = 500 + i;
  }
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  CHECK_RC(shmbus_publisher_commit_n(pub, 5, used, ids, 0x77), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_commit_n(pub, 5, used, ids, 0x77), SHMBUS_E_CLOSED);
  for (i = 0; i < 5; ++i) {
    CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
    CHECK(v.sequence == first + i && v.size == 10 + i && v.message_id == 500 + i && v.schema_id == 0x77);
    CHECK(v.data[0] == 0x30 + i && v.data[v.size - 1] == 0x30 + i);
  }
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);

  /* in place: commit_messages_n, then the next batch in the same call */
  CHECK_RC(shmbus_publisher_try_claim_n(pub, 4, 32, cl), SHMBUS_OK);
  first = cl[0].sequence;
  for (i = 0; i < 4; ++i) words[i] = build_message(cl[i].data + 8, 1000 + i);
  CHECK_RC(shmbus_publisher_commit_messages_n(pub, 4, words, NULL, 9, 3, 32, cl), SHMBUS_OK);
  CHECK(cl[0].data != NULL && cl[2].data != NULL);
  for (i = 0; i < 2; ++i) words[i] = build_message(cl[i].data + 8, 2000 + i);
  /* two of the three frames; the third is skipped */
  CHECK_RC(shmbus_publisher_commit_messages_n(pub, 2, words, NULL, 9, 0, 0, NULL), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_claim(pub, 24, &c), SHMBUS_OK);
  nw = build_message(c.data + 8, 3000);
  CHECK_RC(shmbus_publisher_commit_message(pub, nw, 0, 9), SHMBUS_OK);
  for (i = 0; i < 7; ++i) {
    CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
    CHECK_RC(shmbus_view_segments(&v, &seg0, &nw, NULL), SHMBUS_OK);
    memcpy(&value, seg0 + 8, 8);
    CHECK(value == (i < 4 ? 1000 + i : i < 6 ? 2000 + i - 4 : 3000));
    if (i < 6) CHECK(v.sequence == first + i);
  }
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);

  /* errors abort the batch: a segment past its frame, k past n; abort */
  CHECK_RC(shmbus_publisher_claim_n(pub, 2, 16, cl), SHMBUS_OK);
  words[0] = 1;
  words[1] = 1000;
  CHECK_RC(shmbus_publisher_commit_messages_n(pub, 2, words, NULL, 0, 0, 0, NULL), SHMBUS_E_TOO_LARGE);
  CHECK_RC(shmbus_publisher_abort(pub), SHMBUS_E_CLOSED);
  CHECK_RC(shmbus_publisher_claim_n(pub, 2, 16, cl), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_commit_n(pub, 3, used, NULL, 0), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_publisher_claim_n(pub, 3, 16, cl), SHMBUS_OK);
  memset(cl[1].data, 0x55, 16);
  CHECK_RC(shmbus_publisher_abort(pub), SHMBUS_OK);
  used[0] = 16;
  CHECK_RC(shmbus_publisher_claim_n(pub, 1, 16, cl), SHMBUS_OK);
  memset(cl[0].data, 0x66, 16);
  CHECK_RC(shmbus_publisher_commit_n(pub, 1, used, NULL, 0), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK(v.size == 16 && v.data[15] == 0x66);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);
  shmbus_subscriber_close(sub);
  shmbus_publisher_close(pub);
}

int main(void) {
  shmbus_bus_t* bus = NULL;
  snprintf(g_prefix, sizeof g_prefix, "shmbus-ctest-%ld", (long)getpid());

  test_library();
  test_bus_errors();
  CHECK_RC(shmbus_bus_open_direct(g_prefix, &bus), SHMBUS_OK);
  if (!bus) {
    fprintf(stderr, "cannot open a bus: %s\n", shmbus_last_error());
    return 1;
  }
  test_topics(bus);
  test_open_errors(bus);
  test_data_path(bus);
  {
    shmbus_topic_config_t mc;
    shmbus_topic_config_init(&mc);
    mc.capacity = 1 << 16;
    mc.multi_producer = 1;
    CHECK_RC(shmbus_topic_create(bus, "t.mclaim", &mc), SHMBUS_OK);
    test_multi_claim(bus, "t.a");
    test_multi_claim(bus, "t.mclaim");
    CHECK_RC(shmbus_topic_remove(bus, "t.mclaim"), SHMBUS_OK);
  }
  test_block_policy(bus);
  test_thread_local_error();
  CHECK_RC(shmbus_topic_remove(bus, "t.a"), SHMBUS_OK);
  shmbus_bus_close(bus);

  printf("c_api_test: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
