/* c_errno_test: the C ABI reports the errno of the OS call that failed, not a
 * generic -EIO. Each case provokes a real errno with real files and sockets:
 *  - EACCES: a directory this process cannot enter (0700 and owned by root, as uid
 *    65534 in a forked child when run as root; mode 0 when run as its owner);
 *  - ENOENT: a socket path that does not exist;
 *  - ECONNREFUSED: a bound socket nobody listens on;
 *  - ENAMETOOLONG: a socket path longer than sun_path, a path component > NAME_MAX.
 * An OS failure returns -errno (shmbus_bus_open_embedded); a failure with its own code
 * (SHMBUS_E_NOT_CONNECTED) keeps it and reports the errno in shmbus_last_errno().
 * Built with -std=c11 -Wall -Wextra -pedantic -Werror. Exit 0 = pass, 1 = fail. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shmbus.h"

static int g_failures = 0;

/* Checks rc and shmbus_last_errno() of the call just made. */
static void expect(const char* what, int rc, int want_rc, int want_errno) {
  int got_errno = shmbus_last_errno();
  if (rc != want_rc || got_errno != want_errno) {
    ++g_failures;
    fprintf(stderr, "FAIL %s: rc %d (%s), errno %d (%s); want rc %d, errno %d (%s); last error: %s\n", what,
            rc, shmbus_strerror(rc), got_errno, strerror(got_errno), want_rc, want_errno,
            strerror(want_errno), shmbus_last_error());
  } else {
    printf("ok   %s: rc %d, errno %d (%s)\n", what, rc, got_errno, strerror(got_errno));
  }
}

static char g_dir[64];

/* Runs as a user that may not enter g_dir. Exit status = number of failures. */
static int eacces_cases(void) {
  char path[256];
  shmbus_bus_t* bus = NULL;
  int rc;
  snprintf(path, sizeof path, "%s/shmbusd.sock", g_dir);
  rc = shmbus_bus_connect(path, &bus);
  expect("connect through a directory we may not enter", rc, SHMBUS_E_NOT_CONNECTED, EACCES);
  if (bus) shmbus_bus_close(bus);
  bus = NULL;
  snprintf(path, sizeof path, "%s/state", g_dir);
  rc = shmbus_bus_open_embedded(path, &bus);
  expect("embedded daemon with its state dir in a directory we may not enter", rc, -EACCES, EACCES);
  if (bus) shmbus_bus_close(bus);
  return g_failures;
}

static void test_eacces(void) {
  pid_t pid;
  int st = 0;
  if (geteuid() != 0 && chmod(g_dir, 0) != 0) {
    perror("chmod");
    ++g_failures;
    return;
  }
  fflush(stdout);
  pid = fork();
  if (pid < 0) {
    perror("fork");
    ++g_failures;
    return;
  }
  if (pid == 0) {
    if (geteuid() == 0 && (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)) {
      perror("dropping to uid 65534");
      _exit(100);
    }
    {
      int failures = eacces_cases();
      fflush(stdout);
      fflush(stderr);
      _exit(failures);
    }
  }
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    ++g_failures;
    fprintf(stderr, "FAIL: the EACCES child (uid %d) ended with status 0x%x\n",
            geteuid() == 0 ? 65534 : (int)geteuid(), st);
  }
  if (geteuid() != 0) chmod(g_dir, 0700);
}

static void test_enoent(void) {
  char path[256];
  shmbus_bus_t* bus = NULL;
  int rc;
  snprintf(path, sizeof path, "%s/no-such.sock", g_dir);
  rc = shmbus_bus_connect(path, &bus);
  expect("connect to a socket path that does not exist", rc, SHMBUS_E_NOT_CONNECTED, ENOENT);
  if (bus) shmbus_bus_close(bus);
}

static void test_econnrefused(void) {
  struct sockaddr_un a;
  shmbus_bus_t* bus = NULL;
  int fd, rc;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "%s/deaf.sock", g_dir);
  fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  if (fd < 0 || bind(fd, (struct sockaddr*)&a, sizeof a) != 0) { /* bound, never listening */
    perror("socket/bind");
    ++g_failures;
    return;
  }
  rc = shmbus_bus_connect(a.sun_path, &bus);
  expect("connect to a socket nobody listens on", rc, SHMBUS_E_NOT_CONNECTED, ECONNREFUSED);
  if (bus) shmbus_bus_close(bus);
  close(fd);
  unlink(a.sun_path);
}

static void test_enametoolong(void) {
  char path[600];
  shmbus_bus_t* bus = NULL;
  int rc, n;
  /* longer than sun_path (108 bytes) */
  n = snprintf(path, sizeof path, "%s/", g_dir);
  memset(path + n, 's', 150);
  path[n + 150] = '\0';
  rc = shmbus_bus_connect(path, &bus);
  expect("connect to a socket path longer than sun_path", rc, SHMBUS_E_NOT_CONNECTED, ENAMETOOLONG);
  if (bus) shmbus_bus_close(bus);
  bus = NULL;
  /* a component longer than NAME_MAX (255): mkdir and open fail with ENAMETOOLONG */
  memset(path + n, 'd', 300);
  path[n + 300] = '\0';
  rc = shmbus_bus_open_embedded(path, &bus);
  expect("embedded daemon whose state dir has a 300-byte component", rc, -ENAMETOOLONG, ENAMETOOLONG);
  if (bus) shmbus_bus_close(bus);
}

static void test_cleared(void) {
  /* A later failure with no OS call behind it clears the errno. */
  shmbus_bus_t* bus = NULL;
  int rc = shmbus_bus_open_direct("bad/prefix", &bus);
  expect("bad argument after OS failures (no errno)", rc, SHMBUS_E_INVALID_ARGUMENT, 0);
  if (bus) shmbus_bus_close(bus);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/shmbus-errno-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_eacces(); /* first: it forks, before any thread of the library exists */
  test_enoent();
  test_econnrefused();
  test_enametoolong();
  test_cleared();
  rmdir(g_dir);
  if (g_failures) {
    fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  printf("all errno checks passed\n");
  return 0;
}
