// Structured logs: one JSON object per line through spdlog.
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <mutex>

#include "core.hpp"

namespace shmbus::daemon {

namespace {
std::string json_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += char(c);
        }
    }
  }
  return o;
}
}  // namespace

void log_init(const DaemonOptions& o, const std::string& instance) {
  if (spdlog::get(instance)) return;
  std::shared_ptr<spdlog::logger> lg;
  if (o.log_file.empty())
    lg = spdlog::stderr_logger_mt(instance);
  else
    lg = spdlog::basic_logger_mt(instance, o.log_file);
  lg->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","daemon":"%n",%v})");
  lg->set_level(spdlog::level::from_str(o.log_level));
  lg->flush_on(spdlog::level::info);
}

void log_event(const std::string& instance, int level, const char* event, const std::string& topic,
               int64_t pid, const std::string& reason) {
  auto lg = spdlog::get(instance);
  if (!lg) return;
  spdlog::level::level_enum lv = level == LOG_DEBUG  ? spdlog::level::debug
                                 : level == LOG_INFO ? spdlog::level::info
                                 : level == LOG_WARN ? spdlog::level::warn
                                                     : spdlog::level::err;
  if (!lg->should_log(lv)) return;
  std::string m = "\"event\":\"" + json_escape(event) + "\"";
  if (!topic.empty()) m += ",\"topic\":\"" + json_escape(topic) + "\"";
  if (pid) m += ",\"pid\":" + std::to_string(pid);
  if (!reason.empty()) m += ",\"reason\":\"" + json_escape(reason) + "\"";
  lg->log(lv, m);
}

// At most kPerSecond lines a second per event; the rest are counted and reported
// in the next line that gets through ("N similar lines suppressed"). A client that
// provokes a warning in a loop cannot fill the disk.
void log_limited(const std::string& instance, int level, const char* event, const std::string& topic,
                 int64_t pid, const std::string& reason) {
  constexpr uint32_t kPerSecond = 10;
  static std::mutex mu;
  static std::map<std::string, std::pair<uint64_t, std::pair<uint32_t, uint64_t>>> windows;
  const uint64_t sec = uint64_t(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
  uint64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> g(mu);
    auto& [win, cnt] = windows[instance + '\0' + event];
    if (win != sec) {
      suppressed = cnt.second;
      win = sec;
      cnt = {0, 0};
    }
    if (cnt.first >= kPerSecond) {
      ++cnt.second;
      return;
    }
    ++cnt.first;
  }
  log_event(instance, level, event, topic, pid,
            suppressed ? reason + " (" + std::to_string(suppressed) + " similar lines suppressed)" : reason);
}

}  // namespace shmbus::daemon
