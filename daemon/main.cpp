// shmbusd: the shmbus daemon. See docs/operations.md.
#include <csignal>
#include <cstdio>
#include <iostream>
#include <sys/resource.h>
#include <algorithm>
#include <type_traits>

#include <CLI/CLI.hpp>
#if SHMBUS_HAVE_TOMLPP
#include <toml++/toml.h>
#endif
#if SHMBUS_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "shmbus/daemon.hpp"
#include "shmbus/daemon_client.hpp"

namespace {
shmbus::Daemon* g_daemon = nullptr;
void on_signal(int) {
  if (g_daemon) g_daemon->request_stop();  // async-signal-safe: an atomic store + eventfd write
}
}  // namespace

int main(int argc, char** argv) {
  shmbus::DaemonOptions o;
  std::string config;
  CLI::App app{"shmbusd: the shmbus daemon (segments, liveness, access)"};
  app.set_version_flag("--version", "shmbusd " SHMBUS_VERSION);
  app.add_option("--config", config, "TOML config file (keys as the long options, with _)");
  app.add_option("--socket", o.socket_path,
                 "control socket path (default " + shmbus::default_socket_path() + ")");
  app.add_option("--state-dir", o.state_dir, "registry state directory (default <socket dir>/state)");
  app.add_option("--shm-prefix", o.shm_prefix,
                 "segment name prefix (memfd names, seen in /proc/PID/fd; default shmbusd-<uid>)");
  app.add_option("--reclaim-interval-ms", o.reclaim_interval_ms,
                 "liveness scan period (pidfds react at once)");
  app.add_option("--durable-hold-ms", o.durable_hold_ms,
                 "how long a departed durable subscriber's slot keeps its place (and holds a tethered ring)");
  app.add_option("--max-clients", o.max_clients, "connections accepted at once");
  app.add_option("--max-topics", o.max_topics, "topics in all");
  app.add_option("--max-topic-bytes", o.max_topic_bytes,
                 "one topic's segment bytes (partitions x ring + control)");
  app.add_option("--uid-max-topics", o.uid_max_topics, "topics one (non-root) uid may own");
  app.add_option("--uid-max-partitions", o.uid_max_partitions,
                 "partitions of the topics one (non-root) uid may own (each costs the daemon an fd)");
  app.add_option("--uid-max-segment-bytes", o.uid_max_segment_bytes,
                 "segment bytes of the topics one (non-root) uid owns");
  app.add_option("--uid-max-connections", o.uid_max_connections, "connections one (non-root) uid may hold");
  app.add_option("--uid-max-grants", o.uid_max_grants, "live subscriber grants one (non-root) uid may hold");
  app.add_option("--uid-max-partition-grants", o.uid_max_partition_grants,
                 "live subscriber grants one (non-root) uid may hold in one partition (0: half its slots)");
  app.add_option(
      "--uid-max-durable-names", o.uid_max_durable_names,
      "durable subscriber names (x partitions) one (non-root) uid may make in a topic it does not own");
  app.add_option("--uid-max-producer-grants", o.uid_max_producer_grants,
                 "live producer grants (publishers) one (non-root) uid may hold in topics it does not own");
  app.add_option("--uid-max-restart-fds", o.uid_max_restart_fds,
                 "fd entries a restart walks over all processes of one (non-root) uid to take back its "
                 "grants (0: no bound)");
  app.add_option("--uid-max-partition-producer-grants", o.uid_max_partition_producer_grants,
                 "live producer grants one (non-root) uid may hold in one partition of a topic it does not "
                 "own (0: half its producer entries, at least 1)");
  app.add_option("--uid-max-schema-versions", o.uid_max_schema_versions,
                 "schema versions one (non-root) uid may add to one topic it does not own");
  app.add_option("--uid-max-schema-bytes", o.uid_max_schema_bytes,
                 "bytes of schema versions one (non-root) uid may have stored in all topics");
  app.add_option(
      "--uid-max-log-bytes", o.uid_max_log_bytes,
      "spill-log bytes of the durable topics one (non-root) uid owns (partitions x (retention + a segment))");
  app.add_option("--max-inflight-per-client", o.max_inflight_per_client,
                 "requests queued per connection before the daemon stops reading it");
  app.add_option("--shm-reserve-percent", o.shm_reserve_percent,
                 "a topic is refused unless this much of /dev/shm stays free");
  app.add_option(
      "--metrics-listen", o.metrics_listen,
      "serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9464; port 0: any free port, logged); "
      "off by default");
  app.add_flag("--metrics-allow-remote", o.metrics_allow_remote,
               "allow a --metrics-listen address that is not loopback (topic names and pids become visible "
               "to the network)");
  app.add_option("--log-level", o.log_level, "trace|debug|info|warn|error|off");
  app.add_option("--log-file", o.log_file, "write JSON logs here instead of stderr");
  CLI11_PARSE(app, argc, argv);
  if (!config.empty()) {
#if SHMBUS_HAVE_TOMLPP
    try {
      toml::table t = toml::parse_file(config);
      auto str = [&](const char* k, std::string& v) {
        if (auto x = t[k].value<std::string>(); x && v.empty()) v = *x;
      };
      str("socket", o.socket_path);
      str("state_dir", o.state_dir);
      str("shm_prefix", o.shm_prefix);
      str("log_file", o.log_file);
      str("metrics_listen", o.metrics_listen);
      if (auto x = t["metrics_allow_remote"].value<bool>(); x && !app.count("--metrics-allow-remote"))
        o.metrics_allow_remote = *x;
      if (auto x = t["log_level"].value<std::string>()) o.log_level = *x;
      if (auto x = t["reclaim_interval_ms"].value<int64_t>()) o.reclaim_interval_ms = *x;
      auto num = [&](const char* k, auto& v) {
        std::string opt = std::string("--") + k;
        for (auto& ch : opt) ch = ch == '_' ? '-' : ch;
        if (app.count(opt)) return;  // the command line wins
        if (auto x = t[k].value<int64_t>()) {
          if (*x < 0) throw std::runtime_error(std::string(k) + " must not be negative");
          v = std::remove_reference_t<decltype(v)>(*x);
        }
      };
      num("max_clients", o.max_clients);
      num("max_topics", o.max_topics);
      num("max_topic_bytes", o.max_topic_bytes);
      num("uid_max_topics", o.uid_max_topics);
      num("uid_max_partitions", o.uid_max_partitions);
      num("uid_max_segment_bytes", o.uid_max_segment_bytes);
      num("uid_max_connections", o.uid_max_connections);
      num("uid_max_grants", o.uid_max_grants);
      num("uid_max_partition_grants", o.uid_max_partition_grants);
      num("uid_max_log_bytes", o.uid_max_log_bytes);
      num("uid_max_durable_names", o.uid_max_durable_names);
      num("uid_max_producer_grants", o.uid_max_producer_grants);
      num("uid_max_partition_producer_grants", o.uid_max_partition_producer_grants);
      num("uid_max_restart_fds", o.uid_max_restart_fds);
      num("uid_max_schema_versions", o.uid_max_schema_versions);
      num("uid_max_schema_bytes", o.uid_max_schema_bytes);
      num("max_inflight_per_client", o.max_inflight_per_client);
      num("shm_reserve_percent", o.shm_reserve_percent);
      num("durable_hold_ms", o.durable_hold_ms);
    } catch (const std::exception& e) {
      std::cerr << "shmbusd: " << config << ": " << e.what() << "\n";
      return 2;
    }
#else
    std::cerr << "shmbusd: built without toml++, --config is not available\n";
    return 2;
#endif
  }
  // Connections cost an fd each, and every partition three (its data, control and
  // wake memfds; the segment keeper, which inherits the limit, holds two): raise the
  // soft limit to the hard one (EMFILE at accept is handled either way, see
  // ControlServer::accept_all). The hard limit is the operator's (LimitNOFILE=).
  {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
  }
  try {
    shmbus::Daemon d(o);
    g_daemon = &d;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
    d.start();
#if SHMBUS_HAVE_SYSTEMD
    sd_notify(0, "READY=1");
#endif
    d.wait();
#if SHMBUS_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    g_daemon = nullptr;
  } catch (const shmbus::Error& e) {
    std::fprintf(stderr, "{\"event\":\"start_failed\",\"reason\":\"%s\"}\n", e.what());
    return 1;
  }
  return 0;
}
