// Client processes for the daemon tests (exec'd by daemon_mp_test). Each mode talks
// to shmbusd at argv[2] and reports progress as single characters on stdout (a pipe
// to the test), so the test can kill it at a chosen point.
//   pub SOCK TOPIC ID COUNT SEED [PROGRESS]  publish COUNT messages {id, counter} (0: forever);
//                                  'R' when ready. PROGRESS: a file of two u64, mapped shared:
//                                  [0] = messages handed to offer, [1] = offers returned ok
//                                  (read by the test after a SIGKILL: issue 10, exactness)
//   hang-claim SOCK TOPIC ID K     publish K messages, claim one more, scribble, 'C', hang
//   hang-claim-n SOCK TOPIC ID K N publish K messages, claim N frames at once (claim_n),
//                                  fill them, write the commit words of frames 1..N-1 as
//                                  commit_n would (frame 0's not: killed mid-commit), 'C', hang
//   sub-hold SOCK TOPIC            subscribe (tethered), poll without releasing, 'H', hang
//   connect-sub SOCK TOPIC         connect, subscribe, _exit(0) without closing
//   sub-durable SOCK TOPIC NAME K  durable subscriber: read and release K messages, 'K', hang
//   access SOCK TOPIC SHMNAME      try to subscribe and to shm_open the segment; prints
//                                  "open:<denied|notfound|ok|err>" and "shm:<denied|ok|err>"
//   write-ring SOCK TOPIC          subscribe, then write into the data ring (must fault)
//   write-ctl SOCK TOPIC           subscribe, then write the control segment's header (must fault)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shmbus/daemon_client.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;

namespace {
void say(char c) {
  ssize_t r = write(1, &c, 1);
  (void)r;
}
[[noreturn]] void hang() {
  for (;;) pause();
}
struct Msg {
  uint32_t id;
  uint32_t pad;
  uint64_t counter;
};
}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  const std::string mode = argv[1], sock = argv[2], topic = argv[3];
  try {
    if (mode == "pub") {
      Bus bus = Bus::connect(sock);
      PublisherOptions po;
      po.block_timeout_ns = 5'000'000'000;
      po.reclaim_after_ns = 60'000'000'000;  // measure the daemon, not the fallback
      Publisher pub = bus.publisher(topic, po);
      uint32_t id = uint32_t(atoi(argv[4]));
      uint64_t count = strtoull(argv[5], nullptr, 10);
      uint64_t seed = strtoull(argv[6], nullptr, 10) | 1;
      uint64_t* progress = nullptr;
      if (argc > 7) {
        int fd = open(argv[7], O_RDWR);
        if (fd < 0) return 5;
        void* p = mmap(nullptr, 16, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) return 5;
        progress = static_cast<uint64_t*>(p);
      }
      say('R');
      char buf[2048] = {};
      for (uint64_t i = 0; count == 0 || i < count; ++i) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        size_t len = sizeof(Msg) + seed % 1000;
        Msg m{id, 0, i};
        std::memcpy(buf, &m, sizeof m);
        if (progress) __atomic_store_n(&progress[0], i + 1, __ATOMIC_RELEASE);
        Status s = pub.offer(buf, len, i);
        if (progress && s == Status::ok) __atomic_store_n(&progress[1], i + 1, __ATOMIC_RELEASE);
        if (s != Status::ok) {
          std::fprintf(stderr, "helper pub: offer %llu: %s\n", (unsigned long long)i, to_string(s));
          return 3;
        }
      }
      say('D');
      return 0;
    }
    if (mode == "hang-claim") {
      Bus bus = Bus::connect(sock);
      PublisherOptions po;
      po.reclaim_after_ns = 60'000'000'000;
      Publisher pub = bus.publisher(topic, po);
      uint32_t id = uint32_t(atoi(argv[4]));
      uint64_t k = strtoull(argv[5], nullptr, 10);
      for (uint64_t i = 0; i < k; ++i) {
        Msg m{id, 0, i};
        if (pub.offer(&m, sizeof m, i) != Status::ok) return 3;
      }
      ClaimView c;
      if (pub.claim(200, c) != Status::ok) return 4;
      std::memset(c.data, 0xAB, 100);  // a half-built message
      say('C');
      hang();
    }
    if (mode == "hang-claim-n") {
      Bus bus = Bus::connect(sock);
      PublisherOptions po;
      po.reclaim_after_ns = 60'000'000'000;
      Publisher pub = bus.publisher(topic, po);
      uint32_t id = uint32_t(atoi(argv[4]));
      uint64_t k = strtoull(argv[5], nullptr, 10);
      uint32_t n = uint32_t(atoi(argv[6]));
      for (uint64_t i = 0; i < k; ++i) {
        Msg m{id, 0, i};
        if (pub.offer(&m, sizeof m, i) != Status::ok) return 3;
      }
      BatchView b;
      if (pub.claim_n(n, 200, b) != Status::ok) return 4;
      for (uint32_t i = 0; i < n; ++i) {
        Msg m{id, 0, k + i};  // would be the next messages, if they were ever published
        std::memcpy(b.data(i), &m, sizeof m);
        if (i == 0) continue;
        auto* h = reinterpret_cast<shm::FrameHeader*>(b.data(i) - shm::kFrameHeaderSize);
        h->payload_len = sizeof m;
        h->sequence = b.sequence + i;
        shm::aref(h->commit).store(shm::make_commit(b.stride, shm::kFrameData), std::memory_order_release);
      }
      say('C');
      hang();
    }
    if (mode == "sub-hold") {
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      View v;
      while (sub.poll(v) == Status::ok) {
      }
      say('H');
      hang();
    }
    if (mode == "sub-durable") {
      // sub-durable SOCK TOPIC NAME K: durable subscriber NAME reads and releases K
      // messages, says 'K', hangs (the test kills it).
      Bus bus = Bus::connect(sock);
      SubscriberOptions so;
      so.name = argv[4];
      Subscriber sub = bus.subscriber(topic, so);
      uint64_t k = strtoull(argv[5], nullptr, 10);
      View v;
      for (uint64_t i = 0; i < k; ++i) {
        if (sub.poll_wait(v, 10'000'000'000) != Status::ok) return 3;
        sub.release(v);
      }
      say('K');
      hang();
    }
    if (mode == "connect-sub") {
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      View v;
      (void)sub.poll(v);
      // Leave without closing: no destructor runs, so the cursor slot stays held
      // and only the daemon's reaper can free it.
      std::fflush(nullptr);
      _exit(0);
    }
    if (mode == "access") {
      const char* shm = argv[4];
      const char* open_r = "ok";
      try {
        Bus bus = Bus::connect(sock);
        Subscriber sub = bus.subscriber(topic, {.open_timeout_ms = 200});
      } catch (const Error& e) {
        // No rights at all: the daemon answers as for a missing topic (not_found).
        open_r = e.code() == ErrorCode::permission_denied ? "denied"
                 : e.code() == ErrorCode::not_found       ? "notfound"
                                                          : "err";
        if (open_r[0] == 'e') std::fprintf(stderr, "access: %s\n", e.what());
      }
      const char* shm_r = "ok";
      int fd = shm_open(shm, O_RDONLY, 0);
      if (fd < 0)
        shm_r = errno == EACCES ? "denied" : errno == ENOENT ? "none" : "err";
      else
        close(fd);
      std::printf("open:%s shm:%s\n", open_r, shm_r);
      return 0;
    }
    if (mode == "write-ctl") {
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      say('S');
      shm::ControlHeader* c = sub.refs().ctl;  // layout 3: the daemon's alone
      *reinterpret_cast<volatile uint64_t*>(&c->magic) = 0x4141414141414141ull;  // must fault
      say('W');
      return 0;
    }
    if (mode == "write-ring") {
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      say('S');
      auto* ring = const_cast<std::byte*>(sub.refs().ring);
      *reinterpret_cast<volatile uint64_t*>(ring) = 42;  // must fault: mapped read-only
      say('W');
      return 0;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "helper %s: %s\n", mode.c_str(), e.what());
    return 5;
  }
  return 2;
}
