/* CHECK and CHECK_RC for the C ABI tests: a failed check is printed with the
 * library's last error and counted in `failures`; main returns non-zero when any
 * failed. (One header included by one test file each: static definitions.) */
#pragma once
#include <stdio.h>

#include "shmbus.h"

static int failures = 0;
#define CHECK(c)                                                                           \
  do {                                                                                     \
    if (!(c)) {                                                                            \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #c, \
              shmbus_last_error());                                                        \
      ++failures;                                                                          \
    }                                                                                      \
  } while (0)
#define CHECK_RC(call, want)                                                                            \
  do {                                                                                                  \
    int rc_ = (call);                                                                                   \
    if (rc_ != (want)) {                                                                                \
      fprintf(stderr, "%s:%d: %s = %d (%s), want %d; last error: %s\n", __FILE__, __LINE__, #call, rc_, \
              shmbus_strerror(rc_), (int)(want), shmbus_last_error());                                  \
      ++failures;                                                                                       \
    }                                                                                                   \
  } while (0)
