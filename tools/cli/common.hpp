// What the `shmbus` command's files share (tools/shmbus_cli.cpp and tools/cli/*.cpp):
// JSON and number formatting, the schemas compiled into the tool, .capnp parsing,
// the topic's registered schema, the stop flag, and the entry points of the commands
// that live in tools/cli/ (pub, record, play, bench, group).
#pragma once

#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include <capnp/schema.h>

#include "shmbus/daemon_client.hpp"
#include "shmbus/schema_nodes.hpp"

namespace shmbus::cli {

// A JSON string literal (quotes, backslashes and control characters escaped).
std::string jstr(const std::string& s);
// "0x%016x": every id (schema, root type, message, member) in JSON and text.
std::string hex64(uint64_t v);
std::string human_bytes(double b);
double mono_s();

// The message schemas compiled into this tool, by Cap'n Proto type id.
std::vector<capnp::StructSchema> known_schemas();
bool find_schema(uint64_t id, capnp::StructSchema& out);

// FILE.capnp:Type (Type may be dotted: Outer.Inner), parsed with capnp::SchemaParser;
// imports resolve in import_path, then /usr/include and /usr/local/include. Throws
// Error(invalid_argument / not_found) naming the file and type.
SchemaNodes parse_schema_file(const std::string& spec, const std::vector<std::string>& import_path);

// The latest version registered for `topic` in shmbusd's schema registry; empty
// (root_id 0) when none is. Throws for anything but "no registered schema".
SchemaNodes registered_schema(DaemonClient& c, const std::string& topic);

// Set by SIGINT / SIGTERM (on_sigint): long-running commands stop cleanly.
extern volatile std::sig_atomic_t g_stop;
void on_sigint(int);
void stop_on_signals();

// ---- commands in tools/cli/

struct PubArgs {
  std::string topic, json_text, json_file, schema;
  std::vector<std::string> import_path;
  uint64_t count = 0;  // 0: each input once
  double rate = 0;     // messages per second, 0: as fast as possible
  int64_t partition = -1;
  std::string key;
  uint64_t message_id = 0;
  // The envelope (docs/messaging.md): sent when any of these is given, or `envelope`.
  bool envelope = false;
  uint64_t correlation_id = 0, causation_id = 0;
  std::string reply_to, traceparent;
  uint32_t content_version = 0;
};
int run_pub(DaemonClient& c, const std::string& socket, const PubArgs& a, bool json);

struct RecordArgs {
  std::vector<std::string> topics;
  std::string out;
  double duration = 0;  // seconds, 0: no limit
  uint64_t count = 0;   // messages, 0: no limit
  bool tethered = false;
};
int run_record(DaemonClient& c, const std::string& socket, const RecordArgs& a, bool json);

struct PlayArgs {
  std::string file;
  double speed = 1.0;                  // 0: as fast as possible
  std::vector<std::string> topic_map;  // "recorded=target"
  bool check = false;                  // validate and describe, publish nothing
};
int run_play(const std::string& socket, const PlayArgs& a, bool json);

struct BenchArgs {
  std::string topic;
  uint32_t size = 128;
  uint64_t count = 100000;  // per publisher
  uint32_t pubs = 1, subs = 1;
  uint64_t capacity = 4u << 20;
  double rate = 0;  // messages per second per publisher, 0: as fast as possible
};
int run_bench(DaemonClient& c, const std::string& socket, const BenchArgs& a, bool json);

int run_group(DaemonClient& c, const std::string& topic, bool json);

}  // namespace shmbus::cli
