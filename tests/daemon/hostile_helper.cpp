// What a hostile second local user does (exec'd by hostile_user_test through
// setpriv as that user). Each mode prints one line "<what>:<result>" on stdout.
//   create SOCK TOPIC MODE         create TOPIC (mode bits as the ACL) -> create:<ok|denied|exists|refused|err>
//   read SOCK TOPIC                subscribe, read one message within 2 s -> read:<text|none|denied|err>
//   publish SOCK TOPIC TEXT        publish TEXT -> publish:<ok|denied|err>
//   delete SOCK TOPIC              delete TOPIC -> delete:<ok|denied|err>
//   save-cursor SOCK TOPIC NAME    saveCursor NAME at position 0 -> save:<ok|denied|err>
//   huge SOCK TOPIC PARTS CAP      create PARTS x CAP bytes -> huge:<ok|refused|err>
//   topics SOCK PREFIX N           create up to N topics -> topics:<how many were created>
//   conns SOCK N                   open up to N connections, print conns:<accepted>, hang
//   list SOCK                      list topics -> list:<names, comma separated>
//   health SOCK                    -> health:<ok|err>
//   durable SOCK TOPIC RETENTION   create a durable TOPIC with that retentionBytes -> durable:<ok|refused|...>
//   flood SOCK TOPIC               8 connections, each keeping 64 saveCursor requests in flight;
//                                  prints "flooding" once replies flow, runs until killed
//   direct PREFIX TOPIC MODE       direct mode: create TOPIC (mode octal), publish "bait" -> direct:<ok|...>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "shmbus/daemon_client.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

using namespace shmbus;

namespace {
const char* code(const Error& e) {
  switch (e.code()) {
    case ErrorCode::permission_denied: return "denied";
    case ErrorCode::already_exists: return "exists";
    case ErrorCode::not_found: return "notfound";
    case ErrorCode::invalid_argument:
    case ErrorCode::no_slot: return "refused";
    default: return "err";
  }
}
void out(const std::string& what, const std::string& r) {
  std::printf("%s:%s\n", what.c_str(), r.c_str());
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string mode = argv[1], sock = argv[2];
  const std::string topic = argc > 3 ? argv[3] : "";
  std::string what = mode == "save-cursor" ? "save" : mode;
  try {
    DaemonClient::Options o;
    o.socket_path = sock;
    o.reconnect_ms = 0;
    if (mode == "create") {
      TopicConfig cfg;
      cfg.capacity = 8192;
      cfg.mode = uint32_t(strtoul(argv[4], nullptr, 8));
      DaemonClient::connect(o)->create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "read") {
      Bus bus = Bus::connect(sock);
      Subscriber sub = bus.subscriber(topic);
      View v;
      if (sub.poll_wait(v, 2'000'000'000) == Status::ok) {
        out(what, std::string(reinterpret_cast<const char*>(v.data()), v.size()));
        sub.release(v);
      } else {
        out(what, "none");
      }
    } else if (mode == "publish") {
      Bus bus = Bus::connect(sock);
      Publisher pub = bus.publisher(topic);
      std::string text = argv[4];
      out(what, pub.offer(text.data(), text.size()) == Status::ok ? "ok" : "err");
    } else if (mode == "delete") {
      DaemonClient::connect(o)->delete_topic(topic);
      out(what, "ok");
    } else if (mode == "save-cursor") {
      DaemonClient::connect(o)->call([&](proto::Request::Builder r) {
        auto d = r.initSaveCursor();
        d.setTopic(topic);
        d.setName(argv[4]);
        d.setPartition(0);
        d.setPosition(0);
      });
      out(what, "ok");
    } else if (mode == "huge") {
      TopicConfig cfg;
      cfg.partitions = uint32_t(atoi(argv[4]));
      cfg.capacity = strtoull(argv[5], nullptr, 0);
      cfg.mode = 0600;
      DaemonClient::connect(o)->create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "topics") {
      auto c = DaemonClient::connect(o);
      int n = atoi(argv[4]), made = 0;
      for (int i = 0; i < n; ++i) {
        try {
          c->create_topic(topic + "." + std::to_string(i), {.capacity = 4096, .mode = 0600});
          ++made;
        } catch (const Error&) {
          break;
        }
      }
      out(what, std::to_string(made));
    } else if (mode == "conns") {
      int n = atoi(argv[3]), ok = 0;
      std::vector<std::shared_ptr<DaemonClient>> v;
      for (int i = 0; i < n; ++i) {
        try {
          v.push_back(DaemonClient::connect(o));
          ++ok;
        } catch (const Error&) {
          break;
        }
      }
      out(what, std::to_string(ok));
      for (;;) pause();
    } else if (mode == "list") {
      auto rep = DaemonClient::connect(o)->call([](proto::Request::Builder r) { r.setListTopics(); });
      std::string names;
      for (auto t : rep.get().getTopics()) names += std::string(t.getSpec().getName().cStr()) + ",";
      out(what, names);
    } else if (mode == "durable") {
      TopicConfig cfg;
      cfg.capacity = 8192;
      cfg.mode = 0600;
      cfg.durable = true;
      cfg.retention_bytes = strtoull(argv[4], nullptr, 0);
      DaemonClient::connect(o)->create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "flood") {
      std::vector<int> fds;
      for (int i = 0; i < 8; ++i) {
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
        if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) fds.push_back(fd);
        else close(fd);
      }
      uint64_t id = 0;
      auto request = [&](int fd) {
        capnp::MallocMessageBuilder mb;
        auto r = mb.initRoot<proto::Request>();
        r.setVersion(proto::PROTOCOL_VERSION);
        r.setId(++id);
        auto d = r.initSaveCursor();
        d.setTopic(topic);
        d.setName("flood-" + std::to_string(id % 1000));
        d.setPartition(0);
        d.setPosition(id);
        return control::send_packet(fd, control::encode_frame(mb)) == 0;
      };
      for (int fd : fds)
        for (int k = 0; k < 64; ++k) request(fd);
      std::vector<pollfd> pf;
      for (int fd : fds) pf.push_back({fd, POLLIN, 0});
      uint64_t replies = 0;
      for (;;) {
        if (poll(pf.data(), pf.size(), 5000) <= 0) break;
        for (auto& p : pf) {
          if (!(p.revents & POLLIN)) continue;
          std::vector<uint8_t> buf;
          if (control::recv_packet(p.fd, buf, nullptr, 0) <= 0) continue;
          if (++replies == 1000) out(what, "flooding");
          request(p.fd);
        }
      }
      out(what, "stopped");
    } else if (mode == "direct") {
      Bus::Options bo;
      bo.shm_prefix = sock;
      Bus bus = Bus::direct(bo);
      TopicConfig cfg;
      cfg.capacity = 8192;
      cfg.mode = uint32_t(strtoul(argv[4], nullptr, 8));
      bus.create_topic(topic, cfg);
      out(what, "ok");
    } else if (mode == "health") {
      DaemonClient::connect(o)->call([](proto::Request::Builder r) { r.setHealth(); });
      out(what, "ok");
    } else {
      return 2;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "hostile_helper %s: %s\n", mode.c_str(), e.what());
    out(what, code(e));
  }
  return 0;
}
