// A consumer group member process for group_test:
//   group_helper SOCK TOPIC GROUP LOG
// Joins GROUP of TOPIC through shmbusd at SOCK and reads until SIGTERM, then closes
// (parks its partitions) and exits 0. For each message (payload: a u64 sequence) it
// appends "P <partition> <seq>\n" to LOG before releasing it and "C <partition> <seq>\n"
// after (one write(2) each, O_APPEND: a SIGKILL leaves whole lines). Whenever what it
// holds changes it prints "held <p,p,...>" on stdout. Errors: "FAIL <why>", exit 1.
//   group_helper --quota SOCK TOPIC
// Over one connection, joins group m of TOPIC until refused and prints "members
// <joined> <why>", then groups q0, q1, ... until refused: "groups <joined> <why>".
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "shmbus/daemon_client.hpp"
#include "shmbus/group.hpp"

using namespace shmbus;

namespace {
volatile sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

void put(int fd, const std::string& s) {
  if (write(fd, s.data(), s.size()) != ssize_t(s.size())) {
    std::printf("FAIL write: %s\n", strerror(errno));
    std::fflush(stdout);
    _exit(1);
  }
}
}  // namespace

int quota(const char* sock, const std::string& topic) {
  auto c = DaemonClient::connect({.socket_path = sock});
  auto join = [&](const std::string& group) {
    c->call([&](proto::Request::Builder r) {
      auto q = r.initGroupJoin();
      q.setTopic(topic);
      q.setGroup(group);
    });
  };
  for (const char* what : {"members", "groups"}) {
    int n = 0;
    std::string why = "never refused";
    try {
      for (; n < 10000; ++n) join(std::string(what) == "groups" ? "q" + std::to_string(n) : "m");
    } catch (const Error& e) {
      why = e.what();
    }
    std::printf("%s %d %s\n", what, n, why.c_str());
    std::fflush(stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--quota") return quota(argv[2], argv[3]);
  if (argc != 5) {
    std::fprintf(stderr, "usage: group_helper SOCK TOPIC GROUP LOG\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, nullptr);
  const int log = open(argv[4], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log < 0) {
    std::printf("FAIL open %s: %s\n", argv[4], strerror(errno));
    return 1;
  }
  try {
    Bus bus = Bus::connect(argv[1]);
    GroupSubscriber m = bus.group_subscriber(argv[2], argv[3], GroupOptions{});
    std::string shown = "-";
    while (!g_stop) {
      std::string now;
      for (uint32_t p : m.partitions()) now += (now.empty() ? "" : ",") + std::to_string(p);
      if (now != shown) {
        shown = now;
        std::printf("held %s\n", now.empty() ? "none" : now.c_str());
        std::fflush(stdout);
      }
      GroupView v;
      const Status s = m.poll_wait(v, 20'000'000);
      if (s == Status::timed_out || s == Status::interrupted) continue;
      if (s != Status::ok) {
        std::printf("FAIL poll: status %d\n", int(s));
        return 1;
      }
      uint64_t seq = 0;
      if (v.size() != sizeof seq) {
        std::printf("FAIL payload of %u bytes\n", v.size());
        return 1;
      }
      std::memcpy(&seq, v.data(), sizeof seq);
      const std::string rec = std::to_string(v.partition()) + " " + std::to_string(seq) + "\n";
      put(log, "P " + rec);
      m.release(v);
      put(log, "C " + rec);
    }
    m.close();
  } catch (const std::exception& e) {
    std::printf("FAIL %s\n", e.what());
    return 1;
  }
  return 0;
}
