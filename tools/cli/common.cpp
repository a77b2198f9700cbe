// Helpers shared by the `shmbus` command's files (common.hpp).
#include "cli/common.hpp"

#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <ctime>

#include <capnp/schema-parser.h>
#include <kj/filesystem.h>

#include "envelope.capnp.h"
#include "market.capnp.h"
#include "testmsg.capnp.h"

namespace shmbus::cli {

volatile std::sig_atomic_t g_stop = 0;
void on_sigint(int) { g_stop = 1; }
void stop_on_signals() {
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
}

std::string jstr(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\')
      o += '\\', o += char(c);
    else if (c < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else
      o += char(c);
  }
  return o + "\"";
}

std::vector<capnp::StructSchema> known_schemas() {
  return {capnp::Schema::from<shmbus::schema::Quote>(), capnp::Schema::from<shmbus::schema::Order>(),
          capnp::Schema::from<shmbus::schema::Blob>(), capnp::Schema::from<shmbus::schema::DeadLetter>()};
}

bool find_schema(uint64_t id, capnp::StructSchema& out) {
  for (auto& s : known_schemas())
    if (s.getProto().getId() == id) {
      out = s;
      return true;
    }
  return false;
}

std::string hex64(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%016" PRIx64, v);
  return b;
}

std::string human_bytes(double b) {
  char buf[32];
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) b /= 1024, ++i;
  std::snprintf(buf, sizeof buf, i ? "%.1f %s" : "%.0f %s", b, u[i]);
  return buf;
}

double mono_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

// FILE.capnp:Type (common.hpp).
SchemaNodes parse_schema_file(const std::string& spec, const std::vector<std::string>& import_path) {
  auto colon = spec.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size())
    throw Error(ErrorCode::invalid_argument, "expected FILE.capnp:Type, got '" + spec + "'");
  const std::string file = spec.substr(0, colon), type = spec.substr(colon + 1);
  // kj's disk filesystem takes $PWD when it names the working directory, and warns
  // on stderr when it does not (a shell's PWD after a chdir by a parent, meson's
  // test runner): give it the real one.
  if (char cwd[4096]; getcwd(cwd, sizeof cwd)) setenv("PWD", cwd, 1);
  static auto fs = kj::newDiskFilesystem();
  static capnp::SchemaParser parser;
  static std::vector<kj::Own<const kj::ReadableDirectory>> dirs;
  static std::vector<const kj::ReadableDirectory*> imports;
  try {
    std::vector<std::string> paths = import_path;
    for (const char* d : {"/usr/local/include", "/usr/include"})
      if (access(d, R_OK) == 0) paths.push_back(d);
    for (auto& d : paths) {
      dirs.push_back(fs->getRoot().openSubdir(fs->getCurrentPath().eval(d)));
      imports.push_back(dirs.back().get());
    }
    const kj::Path p = fs->getCurrentPath().eval(file);
    capnp::ParsedSchema s =
        parser.parseFromDirectory(fs->getRoot(), p.clone(), kj::arrayPtr(imports.data(), imports.size()));
    size_t from = 0;
    while (from <= type.size()) {
      const size_t dot = std::min(type.find('.', from), type.size());
      const std::string part = type.substr(from, dot - from);
      KJ_IF_MAYBE (n, s.findNested(part)) {
        s = *n;
      } else {
        throw Error(ErrorCode::not_found, file + " has no type '" + type + "'");
      }
      from = dot + 1;
    }
    if (!s.getProto().isStruct()) throw Error(ErrorCode::invalid_argument, spec + " is not a struct");
    return schema_nodes(s.asStruct());
  } catch (const kj::Exception& e) {
    throw Error(ErrorCode::invalid_argument, file + ": " + e.getDescription().cStr());
  }
}

SchemaNodes registered_schema(DaemonClient& c, const std::string& topic) {
  SchemaNodes n;
  try {
    auto h = c.call([&](proto::Request::Builder r) { r.initSchemaHistory().setTopic(topic); });
    for (auto v : h.get().getSchemaHistory().getVersions())
      if (v.hasNodes()) {
        // Validated here (hostile bytes from a socket): parse() throws on anything wrong.
        auto nodes = v.getNodes();
        SchemaBundle::parse({nodes.begin(), nodes.size()}, v.getRootId());
        n.root_id = v.getRootId();
        n.bytes.assign(nodes.begin(), nodes.end());
      }
  } catch (const Error& e) {
    if (std::string(e.what()).find("has no registered schema") == std::string::npos) throw;
  }
  return n;
}

}  // namespace shmbus::cli
