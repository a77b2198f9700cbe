/* The dedup window through the C ABI (SHMBUS_1.4): duplicates by position (a consumer
 * restart) and by (producer, message id) (a producer's retry), the window's capacity,
 * the state persisted atomically with an application blob and loaded again, a
 * corrupted state file refused with its path, a commit that cannot be written. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmbus.h"

#include "c_check.h"

static int seen(shmbus_dedup_t* d, uint32_t p, uint64_t id, uint64_t seq) {
  int s = -1;
  CHECK_RC(shmbus_dedup_seen(d, p, id, seq, &s), SHMBUS_OK);
  return s;
}

int main(void) {
  char dir[] = "/tmp/shmbus-cdedup-XXXXXX";
  if (!mkdtemp(dir)) return 2;
  char path[128];
  snprintf(path, sizeof path, "%s/orders.dedup", dir);

  shmbus_dedup_t* d = NULL;
  CHECK_RC(shmbus_dedup_open(0, path, &d), SHMBUS_OK);
  if (!d) return 1;
  shmbus_dedup_stats_t st;
  CHECK_RC(shmbus_dedup_stats(d, &st), SHMBUS_OK);
  CHECK(st.position == 0 && st.size == 0 && st.by_position == 0 && st.by_id == 0);
  CHECK(seen(d, 1, 10, 1) == 0);
  CHECK_RC(shmbus_dedup_record(d, 1, 10, 1), SHMBUS_OK);
  CHECK(seen(d, 1, 10, 1) == 1); /* at or below the position: a consumer restart */
  CHECK(seen(d, 1, 10, 5) == 1); /* same producer and id, new sequence: a retry */
  CHECK(seen(d, 2, 10, 5) == 0); /* another producer's id 10 */
  CHECK(seen(d, 1, 0, 6) == 0);  /* message id 0: not checked */
  CHECK_RC(shmbus_dedup_record(d, 1, 11, 6), SHMBUS_OK);
  CHECK_RC(shmbus_dedup_stats(d, &st), SHMBUS_OK);
  CHECK(st.position == 6 && st.size == 2 && st.by_position == 1 && st.by_id == 1);
  CHECK_RC(shmbus_dedup_commit(d, "state-A", 7), SHMBUS_OK);
  shmbus_dedup_close(d);

  /* ---- loaded again (a restart) ---- */
  d = NULL;
  CHECK_RC(shmbus_dedup_open(0, path, &d), SHMBUS_OK);
  if (!d) return 1;
  const uint8_t* app = NULL;
  size_t len = 0;
  CHECK_RC(shmbus_dedup_app_state(d, &app, &len), SHMBUS_OK);
  CHECK(len == 7 && memcmp(app, "state-A", 7) == 0);
  CHECK_RC(shmbus_dedup_stats(d, &st), SHMBUS_OK);
  CHECK(st.position == 6 && st.size == 2);
  CHECK(seen(d, 1, 11, 7) == 1 && seen(d, 1, 10, 8) == 1 && seen(d, 1, 12, 7) == 0);
  CHECK_RC(shmbus_dedup_commit(d, NULL, 0), SHMBUS_OK); /* the state as it is */
  CHECK_RC(shmbus_dedup_commit(d, NULL, 3), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_dedup_close(d);

  /* ---- capacity: the oldest id leaves the window ---- */
  CHECK_RC(shmbus_dedup_open(2, NULL, &d), SHMBUS_OK);
  for (uint64_t i = 1; i <= 3; ++i) CHECK_RC(shmbus_dedup_record(d, 7, i, i), SHMBUS_OK);
  CHECK(seen(d, 7, 1, 10) == 0 && seen(d, 7, 2, 10) == 1 && seen(d, 7, 3, 10) == 1);
  shmbus_dedup_close(d);

  /* ---- a corrupted state is refused, naming the file ---- */
  FILE* f = fopen(path, "r+b");
  CHECK(f != NULL);
  if (f) {
    fseek(f, 20, SEEK_SET);
    int c = fgetc(f);
    fseek(f, 20, SEEK_SET);
    fputc(c ^ 0x40, f);
    fclose(f);
  }
  d = (shmbus_dedup_t*)&st;
  CHECK_RC(shmbus_dedup_open(0, path, &d), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(d == NULL && strstr(shmbus_last_error(), path) != NULL);

  /* ---- a commit that cannot be written ---- */
  char gone[160];
  snprintf(gone, sizeof gone, "%s/no/such/dir/x.dedup", dir);
  CHECK_RC(shmbus_dedup_open(0, gone, &d), SHMBUS_OK);
  if (d) {
    CHECK_RC(shmbus_dedup_record(d, 1, 1, 1), SHMBUS_OK);
    int rc = shmbus_dedup_commit(d, "x", 1);
    CHECK(rc < 0 && rc > -4096 && strlen(shmbus_last_error()) > 0);
    shmbus_dedup_close(d);
  }
  shmbus_dedup_close(NULL);

  unlink(path);
  rmdir(dir);
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
