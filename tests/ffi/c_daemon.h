/* A real shmbusd child for the C ABI tests: started on a private socket, state dir
 * and shm prefix under `dir` (set by the test), ready when it says READY=1 on a
 * private NOTIFY_SOCKET (no sleeps); SIGKILLed by kill_daemon; cleanup() kills it
 * and removes its files. REQUIRE_OK: a failed call ends the test (after cleanup). */
#pragma once
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "c_check.h"

static void cleanup(void);
#define REQUIRE_OK(call)                                                                       \
  do {                                                                                         \
    int rc_ = (call);                                                                          \
    if (rc_ != SHMBUS_OK) {                                                                    \
      fprintf(stderr, "%s:%d: %s = %d (%s); last error: %s\n", __FILE__, __LINE__, #call, rc_, \
              shmbus_strerror(rc_), shmbus_last_error());                                      \
      cleanup();                                                                               \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

static char dir[64], sock_path[128], state_dir[128], notify_path[128], prefix[64];
static const char* daemon_bin;
static pid_t daemon_pid = -1;
static int notify_fd = -1;

static void kill_daemon(void) {
  if (daemon_pid > 0) {
    kill(daemon_pid, SIGKILL);
    waitpid(daemon_pid, NULL, 0);
    daemon_pid = -1;
  }
}

static void cleanup(void) {
  kill_daemon();
  if (notify_fd >= 0) close(notify_fd);
  notify_fd = -1;
  DIR* d = opendir("/dev/shm");
  if (d) {
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
      if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
        char p[512];
        snprintf(p, sizeof p, "/dev/shm/%s", e->d_name);
        unlink(p);
      }
    }
    closedir(d);
  }
  if (dir[0]) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  }
}

/* Starts shmbusd and waits for READY=1 (or its exit). */
static int start_daemon(void) {
  if (notify_fd < 0) {
    struct sockaddr_un a;
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    if (strlen(notify_path) >= sizeof a.sun_path) return -1;
    memcpy(a.sun_path, notify_path, strlen(notify_path) + 1);
    if (notify_fd < 0 || bind(notify_fd, (struct sockaddr*)&a, sizeof a) != 0) return -1;
  }
  daemon_pid = fork();
  if (daemon_pid == 0) {
    char env[200];
    snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", notify_path);
    putenv(env);
    char log[160];
    snprintf(log, sizeof log, "%s/shmbusd.log", dir);
    if (!freopen(log, "a", stderr)) _exit(126);
    execl(daemon_bin, daemon_bin, "--socket", sock_path, "--state-dir", state_dir, "--shm-prefix", prefix,
          "--log-level", "warn", (char*)NULL);
    _exit(127);
  }
  for (;;) {
    struct pollfd p = {notify_fd, POLLIN, 0};
    int n = poll(&p, 1, 10000);
    if (n <= 0) return -1;
    char buf[256];
    ssize_t r = recv(notify_fd, buf, sizeof buf - 1, 0);
    if (r > 0) {
      buf[r] = 0;
      if (strstr(buf, "READY=1")) return 0;
    }
    if (waitpid(daemon_pid, NULL, WNOHANG) == daemon_pid) {
      daemon_pid = -1;
      return -1;
    }
  }
}
