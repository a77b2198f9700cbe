/* The schema registry through the C ABI (shmbus_register_schema, SHMBUS_1.5), against
 * a real shmbusd child. Schema nodes are what `capnp compile -o-` writes for
 * lib/schema/market.capnp (v1), a compatible evolution (Quote gains a field) and a
 * broken one (Quote.bidPx changes type), same file id so the same type ids
 * (tests/ffi/schema/). v1 is stored, the evolution becomes version 2, the broken one
 * is refused naming the field and the rule (as publisher, as subscriber, check only),
 * v1 re-presented is still accepted, malformed nodes are INVALID_ARGUMENT with the
 * daemon serving on, bad arguments are refused, and a direct bus is UNSUPPORTED.
 * The schema mode (shmbus_set_schema_mode, SHMBUS_1.7): the owner changes backward to
 * none and the broken one backward refused is then stored; a mode outside
 * SHMBUS_SCHEMA_* is INVALID_ARGUMENT; another uid (65534, when run as root) is refused,
 * PERMISSION_DENIED on a topic it may publish to, NOT_FOUND on one it may not see, and
 * the mode stays. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shmbus.h"

#include "c_daemon.h"

static const uint64_t kQuote = 0xb38b6b0dfca24490ull; /* market.capnp Quote */
static const uint64_t kOrder = 0x99e31b00a10211feull; /* market.capnp Order */

static unsigned char* slurp(const char* path, size_t* len) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(2);
  }
  unsigned char* b = malloc(1 << 20);
  *len = fread(b, 1, 1 << 20, f);
  fclose(f);
  return b;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s <shmbusd> <v1.cgr> <evolved.cgr> <broken.cgr>\n", argv[0]);
    return 2;
  }
  daemon_bin = argv[1];
  size_t n1, n2, nb;
  unsigned char* v1 = slurp(argv[2], &n1);
  unsigned char* v2 = slurp(argv[3], &n2);
  unsigned char* br = slurp(argv[4], &nb);
  snprintf(dir, sizeof dir, "/tmp/shmbus-cschema-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  snprintf(sock_path, sizeof sock_path, "%s/shmbusd.sock", dir);
  snprintf(state_dir, sizeof state_dir, "%s/state", dir);
  snprintf(notify_path, sizeof notify_path, "%s/notify", dir);
  snprintf(prefix, sizeof prefix, "cschema-%d", (int)getpid());

  /* ---- a direct bus has no registry ---- */
  shmbus_bus_t* direct = NULL;
  REQUIRE_OK(shmbus_bus_open_direct(prefix, &direct));
  CHECK_RC(shmbus_register_schema(direct, "q", kQuote, v1, n1, 0, NULL), SHMBUS_E_UNSUPPORTED);
  CHECK_RC(shmbus_set_schema_mode(direct, "q", SHMBUS_SCHEMA_NONE), SHMBUS_E_UNSUPPORTED);
  shmbus_bus_close(direct);

  if (start_daemon() != 0) {
    cleanup();
    return 1;
  }
  shmbus_bus_t* bus = NULL;
  REQUIRE_OK(shmbus_bus_connect(sock_path, &bus));
  shmbus_topic_config_t cfg;
  shmbus_topic_config_init(&cfg);
  cfg.capacity = 1 << 16;
  cfg.schema_id = kQuote;
  REQUIRE_OK(shmbus_topic_create(bus, "mkt.quotes", &cfg));

  /* ---- bad arguments ---- */
  uint32_t ver = 99;
  CHECK_RC(shmbus_register_schema(NULL, "mkt.quotes", kQuote, v1, n1, 0, &ver), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, NULL, kQuote, v1, n1, 0, &ver), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, NULL, n1, 0, &ver), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v1, 0, 0, &ver), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", 0, v1, n1, 0, &ver), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v1, n1, 4, &ver), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v1, 200 * 1024, 0, &ver),
           SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, "bad name!", kQuote, v1, n1, 0, &ver), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_register_schema(bus, "mkt.none", kQuote, v1, n1, 0, &ver), SHMBUS_E_NOT_FOUND);
  CHECK(ver == 99);

  /* ---- v1 stored, the evolution is version 2, v1 again is version 1 ---- */
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v1, n1, 0, &ver), SHMBUS_OK);
  CHECK(ver == 1);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v2, n2, SHMBUS_SCHEMA_CHECK_ONLY, &ver),
           SHMBUS_OK);
  CHECK(ver == 2);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v2, n2, 0, &ver), SHMBUS_OK);
  CHECK(ver == 2);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v1, n1, SHMBUS_SCHEMA_SUBSCRIBER, &ver),
           SHMBUS_OK);
  CHECK(ver == 1);

  /* ---- the broken one: refused with the field and the rule, every way ---- */
  const uint32_t ways[3] = {0, SHMBUS_SCHEMA_SUBSCRIBER, SHMBUS_SCHEMA_CHECK_ONLY};
  for (int w = 0; w < 3; ++w) {
    CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, br, nb, ways[w], &ver), SHMBUS_E_INCOMPATIBLE);
    CHECK(strstr(shmbus_last_error(), "field 'bidPx' @1 changed type Int64 -> Text") != NULL);
  }
  /* another root than the topic's declared one */
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kOrder, v1, n1, 0, &ver), SHMBUS_E_INCOMPATIBLE);

  /* ---- malformed nodes: refused, and the daemon serves on ---- */
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v1, n1 / 2, 0, &ver), SHMBUS_E_INVALID_ARGUMENT);
  unsigned char junk[512];
  for (size_t i = 0; i < sizeof junk; ++i) junk[i] = (unsigned char)(i * 131 + 7);
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, junk, sizeof junk, 0, &ver),
           SHMBUS_E_INVALID_ARGUMENT);
  for (int k = 0; k < 200; ++k) { /* flipped bits: refused or accepted, never a dead daemon */
    unsigned char* m = malloc(n1);
    memcpy(m, v1, n1);
    m[(size_t)(k * 7919) % n1] ^= (unsigned char)(1u << (k % 8));
    int rc = shmbus_register_schema(bus, "mkt.quotes", kQuote, m, n1, SHMBUS_SCHEMA_CHECK_ONLY, &ver);
    CHECK(rc == SHMBUS_OK || rc == SHMBUS_E_INVALID_ARGUMENT || rc == SHMBUS_E_INCOMPATIBLE);
    free(m);
  }
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, v2, n2, SHMBUS_SCHEMA_CHECK_ONLY, &ver),
           SHMBUS_OK);
  CHECK(ver == 2);

  /* ---- the schema mode: backward -> none, and the broken one is stored ---- */
  CHECK_RC(shmbus_set_schema_mode(NULL, "mkt.quotes", SHMBUS_SCHEMA_NONE), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_set_schema_mode(bus, NULL, SHMBUS_SCHEMA_NONE), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_set_schema_mode(bus, "mkt.quotes", 4), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(strstr(shmbus_last_error(), "mode 4 is not a SHMBUS_SCHEMA_*") != NULL);
  CHECK_RC(shmbus_set_schema_mode(bus, "mkt.quotes", -1), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_set_schema_mode(bus, "bad name!", SHMBUS_SCHEMA_NONE), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_set_schema_mode(bus, "mkt.none", SHMBUS_SCHEMA_NONE), SHMBUS_E_NOT_FOUND);
  /* the refused calls changed nothing: still backward */
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, br, nb, SHMBUS_SCHEMA_CHECK_ONLY, &ver),
           SHMBUS_E_INCOMPATIBLE);
  CHECK_RC(shmbus_set_schema_mode(bus, "mkt.quotes", SHMBUS_SCHEMA_NONE), SHMBUS_OK);
  CHECK_RC(shmbus_set_schema_mode(bus, "mkt.quotes", SHMBUS_SCHEMA_NONE), SHMBUS_OK); /* idempotent */
  CHECK_RC(shmbus_register_schema(bus, "mkt.quotes", kQuote, br, nb, 0, &ver), SHMBUS_OK);
  CHECK(ver == 3);
  CHECK_RC(shmbus_set_schema_mode(bus, "mkt.quotes", SHMBUS_SCHEMA_BACKWARD), SHMBUS_OK);

  /* ---- another uid may not change it ---- */
  shmbus_topic_config_t open_cfg = cfg;
  open_cfg.mode = 0666; /* anyone may publish and subscribe */
  REQUIRE_OK(shmbus_topic_create(bus, "mkt.open", &open_cfg));
  REQUIRE_OK(shmbus_register_schema(bus, "mkt.open", kQuote, v1, n1, 0, &ver));
  if (geteuid() != 0) {
    fprintf(stderr, "c_schema_test: not root: the second-uid part is skipped\n");
  } else {
    /* uid 65534 reaches the socket through the test's directory (no more) */
    CHECK(chmod(dir, 0711) == 0);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
      failures = 0; /* this process's own checks */
      if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(100);
      shmbus_bus_t* other = NULL;
      int rc = shmbus_bus_connect(sock_path, &other);
      if (rc != SHMBUS_OK) {
        fprintf(stderr, "uid 65534: connect: %d %s\n", rc, shmbus_last_error());
        _exit(101);
      }
      CHECK_RC(shmbus_set_schema_mode(other, "mkt.open", SHMBUS_SCHEMA_NONE), SHMBUS_E_PERMISSION_DENIED);
      CHECK(strstr(shmbus_last_error(), "only the topic's owner or root may change the schema mode") != NULL);
      CHECK_RC(shmbus_set_schema_mode(other, "mkt.quotes", SHMBUS_SCHEMA_NONE), SHMBUS_E_NOT_FOUND);
      shmbus_bus_close(other);
      fflush(stderr);
      _exit(failures ? 1 : 0);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  /* still backward: the broken one is refused on mkt.open */
  CHECK_RC(shmbus_register_schema(bus, "mkt.open", kQuote, br, nb, 0, &ver), SHMBUS_E_INCOMPATIBLE);

  shmbus_bus_close(bus);
  free(v1);
  free(v2);
  free(br);
  cleanup();
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
