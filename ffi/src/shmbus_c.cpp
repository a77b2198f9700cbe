// The C ABI (ffi/include/shmbus.h) over libshmbus.
//
// Rules every shim here follows:
//  * nothing escapes: each entry point catches everything and maps it to a code;
//  * out-handles and out-structs are cleared first, so they read NULL/0 on failure;
//  * an OS failure returns -errno of the failed call (shmbus::Error::sys_errno(); -EIO
//    only when the library did not record one), and every failing call records the
//    errno behind it, or 0, for shmbus_last_errno();
//  * a failing call leaves a message for shmbus_last_error() on this thread. The
//    hot path (claim, commit, poll, release) stores a pointer to static text only
//    (no allocation); set-up calls copy the detailed message of the exception.
//
// The library is built as libshmbus_c.so: the C++ objects of libshmbus linked in,
// and only shmbus_* exported (ffi/shmbus.map, -fvisibility=hidden).
#include "shmbus.h"

#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <memory>

#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <kj/exception.h>

#include "shmbus/bus.hpp"
#include "shmbus/daemon.hpp"
#include "shmbus/daemon_client.hpp"
#include "shmbus/dedup.hpp"
#include "shmbus/envelope.hpp"
#include "shmbus/error.hpp"
#include "shmbus/group.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/replay.hpp"
#include "shmbus/request.hpp"
#include "shmbus/subscriber.hpp"

// Layout checks: the Go and Rust bindings mirror these structs.
static_assert(sizeof(shmbus_topic_config_t) == 48, "ABI: shmbus_topic_config_t");
static_assert(sizeof(shmbus_publisher_options_t) == 32, "ABI: shmbus_publisher_options_t");
static_assert(sizeof(shmbus_claim_t) == 24, "ABI: shmbus_claim_t");
static_assert(sizeof(shmbus_publisher_stats_t) == 40, "ABI: shmbus_publisher_stats_t");
static_assert(sizeof(shmbus_subscriber_options_t) == 48, "ABI: shmbus_subscriber_options_t");
static_assert(sizeof(shmbus_view_t) == 64, "ABI: shmbus_view_t");
static_assert(offsetof(shmbus_view_t, next_position) == 56, "ABI: shmbus_view_t");
static_assert(sizeof(shmbus_subscriber_stats_t) == 32, "ABI: shmbus_subscriber_stats_t");
static_assert(sizeof(shmbus_durable_config_t) == 40, "ABI: shmbus_durable_config_t");
static_assert(sizeof(shmbus_group_options_t) == 40, "ABI: shmbus_group_options_t");
static_assert(sizeof(shmbus_group_view_t) == 72 && offsetof(shmbus_group_view_t, partition) == 64,
              "ABI: shmbus_group_view_t");
static_assert(sizeof(shmbus_group_stats_t) == 72, "ABI: shmbus_group_stats_t");
static_assert(sizeof(shmbus_envelope_t) == 840 && offsetof(shmbus_envelope_t, reply_to) == 64 &&
                  offsetof(shmbus_envelope_t, trace_state) == 320,
              "ABI: shmbus_envelope_t");
static_assert(sizeof(shmbus_dedup_stats_t) == 32, "ABI: shmbus_dedup_stats_t");
static_assert(sizeof(shmbus_requester_options_t) == 48 &&
                  offsetof(shmbus_requester_options_t, reply_topic) == 8,
              "ABI: shmbus_requester_options_t");
static_assert(sizeof(shmbus_reply_t) == 896 && offsetof(shmbus_reply_t, data) == 40 &&
                  offsetof(shmbus_reply_t, envelope) == 56,
              "ABI: shmbus_reply_t");
static_assert(sizeof(shmbus_requester_stats_t) == 56, "ABI: shmbus_requester_stats_t");
static_assert(sizeof(shmbus_request_t) == 936 && offsetof(shmbus_request_t, payload) == 32 &&
                  offsetof(shmbus_request_t, envelope) == 96,
              "ABI: shmbus_request_t");
static_assert(sizeof(shmbus_responder_stats_t) == 56, "ABI: shmbus_responder_stats_t");
static_assert(SHMBUS_REPLY_STATUS_FAILED == shmbus::kStatusFailed);
static_assert(SHMBUS_MAX_REPLY_TO == shmbus::kMaxReplyTo && SHMBUS_MAX_TRACE_STATE == shmbus::kMaxTraceState);
static_assert(SHMBUS_FLUSH_NONE == int(shmbus::TopicConfig::Flush::none) &&
              SHMBUS_FLUSH_INTERVAL == int(shmbus::TopicConfig::Flush::interval) &&
              SHMBUS_FLUSH_BATCH == int(shmbus::TopicConfig::Flush::batch));
static_assert(SHMBUS_POLICY_BLOCK == shmbus::shm::kPolicyBlock &&
              SHMBUS_POLICY_FAIL == shmbus::shm::kPolicyFail &&
              SHMBUS_POLICY_SPILL == shmbus::shm::kPolicySpill);
static_assert(SHMBUS_WAIT_BUSY_SPIN == int(shmbus::WaitStrategy::busy_spin) &&
              SHMBUS_WAIT_SPIN_YIELD == int(shmbus::WaitStrategy::spin_yield) &&
              SHMBUS_WAIT_FUTEX == int(shmbus::WaitStrategy::futex) &&
              SHMBUS_WAIT_HYBRID == int(shmbus::WaitStrategy::hybrid));

struct shmbus_bus {
  shmbus::Bus bus;
  std::string prefix;  // direct mode: for describe's file mode
  // Daemon mode: a control connection for what the Bus does not say (durable
  // settings, the log directory). NULL: a direct bus, or embedded without a state_dir.
  std::shared_ptr<shmbus::DaemonClient> client{};
  bool daemon = false;  // connected to a daemon (connect or embedded)
};

struct shmbus_publisher {
  shmbus::Publisher pub;
  uint8_t* claim_data = nullptr;  // the open claim, or NULL
  uint32_t claim_size = 0;
};

struct shmbus_subscriber {
  std::optional<shmbus::Subscriber> sub;  // empty for a replaying subscriber
  uint64_t released = 0;                  // lowest position a release may name
  // start other than LATEST: the replaying subscriber (sub is then empty).
  std::unique_ptr<shmbus::ReplaySubscriber> replay{};
  uint64_t released_seq = 0;  // replay: highest sequence released
};

struct shmbus_group_subscriber {
  shmbus::GroupSubscriber g;
  // Per partition ever held: what a release may name (a view's next position lies
  // in (released, polled]); the token in a view comes from the caller: checked.
  struct Range {
    uint32_t partition;
    uint64_t released;
    uint64_t polled;
  };
  std::vector<Range> ranges{};
  uint64_t given_up = 0;  // GroupStats::given_up when ranges were last pruned
  Range* range(uint32_t p) {
    for (auto& r : ranges)
      if (r.partition == p) return &r;
    return nullptr;
  }
};

struct shmbus_dedup {
  shmbus::DedupWindow w;
};

struct shmbus_requester {
  shmbus::Requester r;
  shmbus::Reply last{};  // the reply handed out last (its payload: valid until the next call)
};

struct shmbus_responder {
  shmbus::Responder r;
  // The request taken by next(), as the library read it: a reply uses this, never the
  // caller's copy (whose reply-to a caller could have changed). token 0: none.
  shmbus::PendingRequest pending{};
};

namespace {

// ---- last error -------------------------------------------------------------
struct LastError {
  const char* text = "";
  std::string buf;
  int sys_errno = 0;  // the errno behind the last failure, 0 when none
};
thread_local LastError t_err;

void set_static(const char* s) noexcept {
  t_err.text = s;
  t_err.sys_errno = 0;
}

void set_detail(const char* prefix, const char* what) noexcept {
  t_err.sys_errno = 0;
  try {
    t_err.buf.assign(prefix);
    t_err.buf.append(what);
    t_err.text = t_err.buf.c_str();
  } catch (...) {
    t_err.text = "out of memory while formatting an error";
  }
}

int fail(int rc, const char* fn, const char* what) noexcept {
  set_detail(fn, what);
  return rc;
}

int invalid(const char* fn, const char* what) noexcept { return fail(SHMBUS_E_INVALID_ARGUMENT, fn, what); }

// ---- code mapping --------------------------------------------------------------
int code_of(shmbus::Status s) noexcept {
  switch (s) {
    case shmbus::Status::ok: return SHMBUS_OK;
    case shmbus::Status::empty: return SHMBUS_E_EMPTY;
    case shmbus::Status::back_pressured: return SHMBUS_E_BACK_PRESSURED;
    case shmbus::Status::timed_out: return SHMBUS_E_TIMED_OUT;
    case shmbus::Status::too_large: return SHMBUS_E_TOO_LARGE;
    case shmbus::Status::corrupt: return SHMBUS_E_CORRUPT;
    case shmbus::Status::malformed: return SHMBUS_E_MALFORMED;
    case shmbus::Status::closed: return SHMBUS_E_CLOSED;
    case shmbus::Status::lapped: return SHMBUS_E_LAPPED;
    case shmbus::Status::interrupted: return SHMBUS_E_INTERRUPTED;
  }
  return SHMBUS_E_INTERNAL;
}

int code_of(shmbus::ErrorCode c) noexcept {
  switch (c) {
    case shmbus::ErrorCode::invalid_argument: return SHMBUS_E_INVALID_ARGUMENT;
    case shmbus::ErrorCode::not_found: return SHMBUS_E_NOT_FOUND;
    case shmbus::ErrorCode::already_exists: return SHMBUS_E_ALREADY_EXISTS;
    case shmbus::ErrorCode::incompatible: return SHMBUS_E_INCOMPATIBLE;
    case shmbus::ErrorCode::permission_denied: return SHMBUS_E_PERMISSION_DENIED;
    case shmbus::ErrorCode::no_slot: return SHMBUS_E_NO_SLOT;
    // An OS failure without a recorded errno (see code_of(const Error&)).
    case shmbus::ErrorCode::system: return -EIO;
    case shmbus::ErrorCode::timed_out: return SHMBUS_E_TIMED_OUT;
    case shmbus::ErrorCode::protocol: return SHMBUS_E_PROTOCOL;
    case shmbus::ErrorCode::not_connected: return SHMBUS_E_NOT_CONNECTED;
  }
  return SHMBUS_E_INTERNAL;
}

// ErrorCode::system is -errno of the failed call; every other code keeps its
// SHMBUS_E_* code (the errno, if any, is for shmbus_last_errno()).
int code_of(const shmbus::Error& e) noexcept {
  const int err = e.sys_errno();
  if (e.code() == shmbus::ErrorCode::system && err > 0 && err < 4096) return -err;
  return code_of(e.code());
}

// Hot-path status: no allocation, static text.
inline int status(shmbus::Status s) noexcept {
  if (s == shmbus::Status::ok) return SHMBUS_OK;
  set_static(shmbus_strerror(code_of(s)));
  return code_of(s);
}

// Maps the exception being handled. Call only inside a catch block.
int current_exception(const char* fn) noexcept {
  try {
    throw;
  } catch (const shmbus::Error& e) {
    const int rc = fail(code_of(e), fn, e.what());
    t_err.sys_errno = e.sys_errno();
    return rc;
  } catch (const std::bad_alloc&) {
    const int rc = fail(-ENOMEM, fn, "out of memory");
    t_err.sys_errno = ENOMEM;
    return rc;
  } catch (const kj::Exception& e) {
    return fail(SHMBUS_E_MALFORMED, fn, e.getDescription().cStr());
  } catch (const std::exception& e) {
    return fail(SHMBUS_E_INTERNAL, fn, e.what());
  } catch (...) {
    return fail(SHMBUS_E_INTERNAL, fn, "unknown exception");
  }
}

#define SHIM_BEGIN try {
#define SHIM_END(fn)                   \
  }                                    \
  catch (...) {                        \
    return current_exception(fn ": "); \
  }

bool valid_wait(uint32_t w) { return w <= SHMBUS_WAIT_HYBRID; }

void fill_view(shmbus_view_t* out, const shmbus::View& v) noexcept {
  out->data = reinterpret_cast<const uint8_t*>(v.data());
  out->size = v.size();
  out->producer_id = v.producer_id();
  out->sequence = v.sequence();
  out->timestamp_ns = v.timestamp_ns();
  out->message_id = v.message_id();
  out->schema_id = v.schema_id();
  out->position = v.position();
  out->next_position = v.next_position();
}

void clear_claim(shmbus_claim_t* c) noexcept {
  if (c) *c = shmbus_claim_t{nullptr, 0, 0, 0};
}

}  // namespace

extern "C" {

// ---- library -------------------------------------------------------------------
uint32_t shmbus_abi_version(void) { return SHMBUS_ABI_VERSION; }

const char* shmbus_strerror(int rc) {
  switch (rc) {
    case SHMBUS_OK: return "ok";
    case SHMBUS_E_EMPTY: return "empty: nothing to read yet";
    case SHMBUS_E_BACK_PRESSURED: return "back-pressured: the ring is full";
    case SHMBUS_E_TIMED_OUT: return "timed out";
    case SHMBUS_E_TOO_LARGE: return "too large: the message can never fit this topic's frames";
    case SHMBUS_E_CORRUPT: return "corrupt: ring bytes are not a valid frame";
    case SHMBUS_E_MALFORMED: return "malformed: not a valid Cap'n Proto message";
    case SHMBUS_E_CLOSED: return "closed, or no open claim";
    case SHMBUS_E_INVALID_ARGUMENT: return "invalid argument";
    case SHMBUS_E_NOT_FOUND: return "not found";
    case SHMBUS_E_ALREADY_EXISTS: return "already exists";
    case SHMBUS_E_INCOMPATIBLE: return "incompatible";
    case SHMBUS_E_PERMISSION_DENIED: return "permission denied";
    case SHMBUS_E_NO_SLOT: return "no free subscriber slot";
    case SHMBUS_E_PROTOCOL: return "protocol error: unexpected answer from the daemon";
    case SHMBUS_E_NOT_CONNECTED: return "not connected: no daemon at the socket";
    case SHMBUS_E_INTERNAL: return "internal error (a bug: please report with shmbus_last_error())";
    case SHMBUS_E_UNSUPPORTED: return "unsupported in this build or mode";
    case SHMBUS_E_LAPPED: return "lapped: the producer overwrote unread messages (continuing at its tail)";
    case SHMBUS_E_INTERRUPTED: return "interrupted: the wait was ended by an interrupt from another thread";
    default: break;
  }
  if (rc < 0 && rc > -4096) {
    // strerror() is not thread-safe and strerror_r's flavour varies: name the common ones.
    switch (-rc) {
      case EIO: return "I/O error (OS)";
      case ENOMEM: return "out of memory (OS)";
      case EACCES: return "permission denied (OS)";
      case ENOENT: return "no such file (OS)";
      case ENOSPC: return "no space left on device (OS)";
      case ENAMETOOLONG: return "file name too long (OS)";
      case ENOTDIR: return "not a directory (OS)";
      case EPERM: return "operation not permitted (OS)";
      case ECONNREFUSED: return "connection refused (OS)";
      default: return "OS error (-errno)";
    }
  }
  return "unknown status code";
}

const char* shmbus_last_error(void) { return t_err.text ? t_err.text : ""; }

int shmbus_last_errno(void) { return t_err.sys_errno; }

// ---- bus -------------------------------------------------------------------------
int shmbus_bus_open_direct(const char* shm_prefix, shmbus_bus_t** out) {
  if (!out) return invalid("shmbus_bus_open_direct: ", "out is NULL");
  *out = nullptr;
  SHIM_BEGIN
  std::string prefix = shm_prefix ? shm_prefix : "shmbus";
  if (!shmbus::valid_topic_name(prefix))
    return invalid("shmbus_bus_open_direct: ",
                   ("shm_prefix '" + prefix + "' must be 1-200 chars of [A-Za-z0-9._-]").c_str());
  shmbus::Bus::Options o;
  o.shm_prefix = prefix;
  *out = new shmbus_bus{shmbus::Bus::direct(o), prefix};
  return SHMBUS_OK;
  SHIM_END("shmbus_bus_open_direct")
}

int shmbus_bus_connect(const char* socket_path, shmbus_bus_t** out) {
  if (!out) return invalid("shmbus_bus_connect: ", "out is NULL");
  *out = nullptr;
  SHIM_BEGIN
  shmbus::DaemonClient::Options o;
  o.socket_path = socket_path ? socket_path : "";
  auto client = shmbus::DaemonClient::connect(o);
  *out = new shmbus_bus{shmbus::Bus(shmbus::make_daemon_provider(client)), "", client, true};
  return SHMBUS_OK;
  SHIM_END("shmbus_bus_connect")
}

int shmbus_bus_open_embedded(const char* state_dir, shmbus_bus_t** out) {
  if (!out) return invalid("shmbus_bus_open_embedded: ", "out is NULL");
  *out = nullptr;
  SHIM_BEGIN
  shmbus::DaemonOptions o;
  if (state_dir) o.state_dir = state_dir;
  o.log_level = "warn";
  shmbus::Bus b = shmbus::open_embedded(o);
  std::shared_ptr<shmbus::DaemonClient> client;
  if (state_dir) {  // open_embedded's socket (daemon.hpp): <state_dir>/shmbusd.sock
    shmbus::DaemonClient::Options co;
    co.socket_path = std::string(state_dir) + "/shmbusd.sock";
    client = shmbus::DaemonClient::connect(co);
  }
  *out = new shmbus_bus{std::move(b), "", client, true};
  return SHMBUS_OK;
  SHIM_END("shmbus_bus_open_embedded")
}

void shmbus_bus_close(shmbus_bus_t* bus) { delete bus; }

// ---- topics ------------------------------------------------------------------------
void shmbus_topic_config_init(shmbus_topic_config_t* cfg) {
  if (!cfg) return;
  shmbus::TopicConfig d;
  std::memset(cfg, 0, sizeof *cfg);
  cfg->size = sizeof *cfg;
  cfg->partitions = d.partitions;
  cfg->capacity = d.capacity;
  cfg->max_payload = d.max_payload;
  cfg->policy = uint32_t(d.policy);
  cfg->multi_producer = d.multi_producer ? 1 : 0;
  cfg->slots = d.slots;
  cfg->mode = d.mode;
  cfg->schema_id = d.schema_id;
}

namespace {
// The durable fields present in a caller's struct of `size` bytes.
constexpr uint32_t kDurableMinSize = offsetof(shmbus_durable_config_t, segment_bytes) + 8;

int create_topic(shmbus_bus_t* bus, const char* topic, const shmbus_topic_config_t* cfg,
                 const shmbus_durable_config_t* dur, const char* fn) {
  if (!bus || !topic) return invalid(fn, "bus or topic is NULL");
  SHIM_BEGIN
  shmbus::TopicConfig c;
  if (dur) {
    if (dur->size < kDurableMinSize)
      return invalid(fn, "dur->size is too small: call shmbus_durable_config_init(&d, sizeof d) first");
    if (dur->flush > SHMBUS_FLUSH_BATCH)
      return invalid(fn, ("dur->flush " + std::to_string(dur->flush) +
                          " is not a SHMBUS_FLUSH_* (NONE 0, INTERVAL 1, BATCH 2)")
                             .c_str());
    if (dur->durable > 1) return invalid(fn, "dur->durable must be 0 or 1");
    if (dur->flush == SHMBUS_FLUSH_INTERVAL && dur->flush_interval_ms == 0)
      return invalid(fn, "dur->flush_interval_ms must be > 0 with SHMBUS_FLUSH_INTERVAL");
    c.durable = dur->durable != 0;
    c.flush = shmbus::TopicConfig::Flush(dur->flush);
    c.flush_interval_ms = dur->flush_interval_ms;
    c.retention_bytes = dur->retention_bytes;
    c.retention_age_s = dur->retention_age_s;
    c.segment_bytes = dur->segment_bytes;
  }
  if (cfg) {
    if (cfg->size != sizeof *cfg)
      return invalid(fn, "cfg->size does not match this library: call shmbus_topic_config_init first");
    if (cfg->policy > SHMBUS_POLICY_SPILL) return invalid(fn, "cfg->policy is not a SHMBUS_POLICY_*");
    if (cfg->mode > 07777) return invalid(fn, "cfg->mode is not permission bits");
    c.partitions = cfg->partitions;
    c.capacity = cfg->capacity;
    c.max_payload = cfg->max_payload;
    c.policy = shmbus::Policy(cfg->policy);
    c.multi_producer = cfg->multi_producer != 0;
    c.slots = cfg->slots;
    c.mode = cfg->mode;
    c.schema_id = cfg->schema_id;
  }
  if ((c.durable || c.policy == shmbus::Policy::spill) && !bus->daemon)
    return fail(SHMBUS_E_UNSUPPORTED, fn,
                c.durable ? "a durable topic needs shmbusd's archiver: this bus has no daemon "
                            "(use shmbus_bus_connect, or shmbus_bus_open_embedded with a state_dir)"
                          : "policy spill makes the topic durable, which needs shmbusd's archiver: "
                            "this bus has no daemon (use shmbus_bus_connect, or "
                            "shmbus_bus_open_embedded with a state_dir)");
  try {
    bus->bus.create_topic(topic, c);
  } catch (const shmbus::Error& e) {
    // The contract: an existing topic with other settings is "already exists".
    if (e.code() == shmbus::ErrorCode::incompatible) return fail(SHMBUS_E_ALREADY_EXISTS, fn, e.what());
    throw;
  }
  return SHMBUS_OK;
  SHIM_END("topic create")
}

// Daemon mode: the topic's description (spec, log dir). Throws like the client.
shmbus::DaemonClient::Reply describe(shmbus_bus_t* bus, const std::string& topic) {
  return bus->client->call([&](shmbus::proto::Request::Builder r) { r.setDescribeTopic(topic); });
}
}  // namespace

int shmbus_topic_create(shmbus_bus_t* bus, const char* topic, const shmbus_topic_config_t* cfg) {
  return create_topic(bus, topic, cfg, nullptr, "shmbus_topic_create: ");
}

void shmbus_durable_config_init(shmbus_durable_config_t* d, uint32_t size) {
  if (!d || size < sizeof(uint32_t)) return;
  shmbus::TopicConfig t;
  shmbus_durable_config_t v;
  std::memset(&v, 0, sizeof v);
  v.size = std::min<uint32_t>(size, sizeof v);
  v.durable = t.durable ? 1 : 0;
  v.flush = uint32_t(t.flush);
  v.flush_interval_ms = t.flush_interval_ms;
  v.retention_bytes = t.retention_bytes;
  v.retention_age_s = t.retention_age_s;
  v.segment_bytes = t.segment_bytes;
  std::memcpy(d, &v, v.size);
}

int shmbus_topic_create_durable(shmbus_bus_t* bus, const char* topic, const shmbus_topic_config_t* cfg,
                                const shmbus_durable_config_t* dur) {
  return create_topic(bus, topic, cfg, dur, "shmbus_topic_create_durable: ");
}

int shmbus_topic_describe_durable(shmbus_bus_t* bus, const char* topic, shmbus_durable_config_t* out) {
  if (!bus || !topic || !out) return invalid("shmbus_topic_describe_durable: ", "bus, topic or out is NULL");
  if (out->size < kDurableMinSize)
    return invalid("shmbus_topic_describe_durable: ",
                   "out->size is too small: call shmbus_durable_config_init(&d, sizeof d) first");
  SHIM_BEGIN
  const uint32_t size = out->size;
  std::string t = topic;
  if (!shmbus::valid_topic_name(t))
    return invalid("shmbus_topic_describe_durable: ", ("invalid topic name '" + t + "'").c_str());
  shmbus_durable_config_t v;
  shmbus_durable_config_init(&v, sizeof v);
  if (!bus->daemon) {
    if (bus->bus.partitions(t) == 0)
      return fail(SHMBUS_E_NOT_FOUND, "shmbus_topic_describe_durable: ", ("no topic '" + t + "'").c_str());
  } else if (!bus->client) {
    return fail(SHMBUS_E_UNSUPPORTED, "shmbus_topic_describe_durable: ",
                "an embedded bus opened without a state_dir has no control connection; "
                "pass a state_dir to shmbus_bus_open_embedded");
  } else {
    auto rep = describe(bus, t);
    auto spec = rep.get().getTopic().getSpec();
    v.durable = spec.getDurable() || spec.getPolicy() == shmbus::proto::Policy::SPILL;
    const auto f = spec.getFlush();
    v.flush = f == shmbus::proto::FlushPolicy::NONE    ? SHMBUS_FLUSH_NONE
              : f == shmbus::proto::FlushPolicy::BATCH ? SHMBUS_FLUSH_BATCH
                                                       : SHMBUS_FLUSH_INTERVAL;
    v.flush_interval_ms = spec.getFlushIntervalMs();
    v.retention_bytes = spec.getRetentionBytes();
    v.retention_age_s = spec.getRetentionAgeS();
    v.segment_bytes = spec.getSegmentBytes();
  }
  v.size = std::min<uint32_t>(size, sizeof v);
  std::memcpy(out, &v, v.size);
  return SHMBUS_OK;
  SHIM_END("shmbus_topic_describe_durable")
}

int shmbus_register_schema(shmbus_bus_t* bus, const char* topic, uint64_t root_id, const void* nodes,
                           size_t len, uint32_t flags, uint32_t* version) {
  if (!bus || !topic || (!nodes && len))
    return invalid("shmbus_register_schema: ", "bus, topic or nodes is NULL");
  if (flags & ~uint32_t(SHMBUS_SCHEMA_CHECK_ONLY | SHMBUS_SCHEMA_SUBSCRIBER))
    return invalid("shmbus_register_schema: ", "unknown flags");
  if (root_id == 0) return invalid("shmbus_register_schema: ", "root_id is 0");
  if (len == 0) return invalid("shmbus_register_schema: ", "no schema nodes (len 0)");
  if (len > shmbus::kMaxSchemaBytes)
    return invalid("shmbus_register_schema: ", ("schema nodes of " + std::to_string(len) +
                                                " bytes: at most " + std::to_string(shmbus::kMaxSchemaBytes))
                                                   .c_str());
  SHIM_BEGIN
  const std::string t = topic;
  if (!shmbus::valid_topic_name(t))
    return invalid("shmbus_register_schema: ", ("invalid topic name '" + t + "'").c_str());
  if (!bus->daemon)
    return fail(SHMBUS_E_UNSUPPORTED, "shmbus_register_schema: ",
                "the schema registry is shmbusd's: connect (shmbus_bus_connect) or open an embedded daemon");
  shmbus::SchemaNodes n;
  n.root_id = root_id;
  n.bytes.assign(static_cast<const uint8_t*>(nodes), static_cast<const uint8_t*>(nodes) + len);  // one copy
  const uint32_t v = bus->bus.provider().register_schema(
      t, n, (flags & SHMBUS_SCHEMA_SUBSCRIBER) ? shmbus::Role::subscriber : shmbus::Role::publisher,
      (flags & SHMBUS_SCHEMA_CHECK_ONLY) != 0);
  if (version) *version = v;
  return SHMBUS_OK;
  SHIM_END("shmbus_register_schema")
}

int shmbus_set_schema_mode(shmbus_bus_t* bus, const char* topic, int mode) {
  static_assert(SHMBUS_SCHEMA_BACKWARD == int(shmbus::TopicConfig::SchemaMode::backward) &&
                SHMBUS_SCHEMA_FORWARD == int(shmbus::TopicConfig::SchemaMode::forward) &&
                SHMBUS_SCHEMA_FULL == int(shmbus::TopicConfig::SchemaMode::full) &&
                SHMBUS_SCHEMA_NONE == int(shmbus::TopicConfig::SchemaMode::none));
  if (!bus || !topic) return invalid("shmbus_set_schema_mode: ", "bus or topic is NULL");
  if (mode < SHMBUS_SCHEMA_BACKWARD || mode > SHMBUS_SCHEMA_NONE)
    return invalid(
        "shmbus_set_schema_mode: ",
        ("mode " + std::to_string(mode) + " is not a SHMBUS_SCHEMA_* (BACKWARD 0, FORWARD 1, FULL 2, NONE 3)")
            .c_str());
  SHIM_BEGIN
  const std::string t = topic;
  if (!shmbus::valid_topic_name(t))
    return invalid("shmbus_set_schema_mode: ", ("invalid topic name '" + t + "'").c_str());
  if (!bus->daemon)
    return fail(SHMBUS_E_UNSUPPORTED, "shmbus_set_schema_mode: ",
                "the schema registry is shmbusd's: connect (shmbus_bus_connect) or open an embedded daemon");
  bus->bus.set_schema_mode(t, shmbus::TopicConfig::SchemaMode(mode));
  return SHMBUS_OK;
  SHIM_END("shmbus_set_schema_mode")
}

int shmbus_topic_remove(shmbus_bus_t* bus, const char* topic) {
  if (!bus || !topic) return invalid("shmbus_topic_remove: ", "bus or topic is NULL");
  SHIM_BEGIN
  bus->bus.remove_topic(topic);
  return SHMBUS_OK;
  SHIM_END("shmbus_topic_remove")
}

int shmbus_topic_describe(shmbus_bus_t* bus, const char* topic, shmbus_topic_config_t* cfg) {
  if (!bus || !topic || !cfg) return invalid("shmbus_topic_describe: ", "bus, topic or cfg is NULL");
  SHIM_BEGIN
  std::string t = topic;
  if (!shmbus::valid_topic_name(t))
    return invalid("shmbus_topic_describe: ", ("invalid topic name '" + t + "'").c_str());
  uint32_t parts = bus->bus.partitions(t);
  if (parts == 0)
    return fail(SHMBUS_E_NOT_FOUND, "shmbus_topic_describe: ", ("no topic '" + t + "'").c_str());
  auto m = bus->bus.provider().open(t, 0, shmbus::Role::subscriber, 0);
  const auto& r = m->refs();
  shmbus_topic_config_init(cfg);
  cfg->partitions = parts;
  cfg->capacity = r.capacity;
  cfg->max_payload = r.data->max_payload;
  cfg->policy = r.data->policy;
  cfg->multi_producer = (r.data->flags & shmbus::shm::kFlagMultiProducer) ? 1 : 0;
  cfg->slots = r.slot_count;
  cfg->schema_id = r.data->schema_id;
  struct stat st;
  std::string path = "/dev/shm/" + shmbus::segment_name(bus->prefix, t, 0, true);
  cfg->mode = ::stat(path.c_str(), &st) == 0 ? uint32_t(st.st_mode & 07777) : 0;
  return SHMBUS_OK;
  SHIM_END("shmbus_topic_describe")
}

// ---- publisher -----------------------------------------------------------------------
void shmbus_publisher_options_init(shmbus_publisher_options_t* o) {
  if (!o) return;
  shmbus::PublisherOptions d;
  std::memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->partition = d.partition;
  o->producer_id = d.producer_id;
  o->wait = uint32_t(d.wait);
  o->block_timeout_ns = d.block_timeout_ns;
  o->open_timeout_ms = d.open_timeout_ms;
}

int shmbus_publisher_open(shmbus_bus_t* bus, const char* topic, const shmbus_publisher_options_t* opts,
                          shmbus_publisher_t** out) {
  if (!out) return invalid("shmbus_publisher_open: ", "out is NULL");
  *out = nullptr;
  if (!bus || !topic) return invalid("shmbus_publisher_open: ", "bus or topic is NULL");
  SHIM_BEGIN
  shmbus::PublisherOptions o;
  if (opts) {
    if (opts->size != sizeof *opts)
      return invalid("shmbus_publisher_open: ",
                     "opts->size does not match this library: call shmbus_publisher_options_init first");
    if (!valid_wait(opts->wait))
      return invalid("shmbus_publisher_open: ", "opts->wait is not a SHMBUS_WAIT_*");
    if (opts->block_timeout_ns < 0 || opts->open_timeout_ms < 0)
      return invalid("shmbus_publisher_open: ", "negative timeout");
    o.partition = opts->partition;
    o.producer_id = opts->producer_id;
    o.wait = shmbus::WaitStrategy(opts->wait);
    o.block_timeout_ns = opts->block_timeout_ns;
    o.open_timeout_ms = opts->open_timeout_ms;
  }
  *out = new shmbus_publisher{bus->bus.publisher(topic, o)};
  return SHMBUS_OK;
  SHIM_END("shmbus_publisher_open")
}

void shmbus_publisher_close(shmbus_publisher_t* pub) {
  try {
    delete pub;  // aborts an open claim
  } catch (...) {
  }
}

}  // extern "C"

namespace {
template <bool Wait>
inline int do_claim(shmbus_publisher_t* pub, uint32_t max_bytes, shmbus_claim_t* out) noexcept {
  clear_claim(out);
  if (!pub || !out) {
    set_static("claim: pub or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  pub->claim_data = nullptr;
  pub->claim_size = 0;
  shmbus::ClaimView c;
  shmbus::Status s = Wait ? pub->pub.claim(max_bytes, c) : pub->pub.try_claim(max_bytes, c);
  if (s != shmbus::Status::ok) return status(s);
  pub->claim_data = reinterpret_cast<uint8_t*>(c.data);
  pub->claim_size = c.size;
  out->data = pub->claim_data;
  out->size = c.size;
  out->sequence = c.sequence;
  return SHMBUS_OK;
}

inline int do_commit_message(shmbus_publisher_t* pub, uint32_t segment_words, uint64_t message_id,
                             uint64_t schema_id) noexcept {
  if (!pub) {
    set_static("commit_message: pub is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (!pub->claim_data || !pub->pub.has_claim()) {
    set_static("commit_message: no open claim");
    return SHMBUS_E_CLOSED;
  }
  const uint64_t used = 8 + uint64_t(segment_words) * 8;
  if (segment_words == 0 || used > pub->claim_size) {
    pub->pub.abort();
    pub->claim_data = nullptr;
    set_static(segment_words == 0 ? "commit_message: segment_words is 0 (claim aborted)"
                                  : "commit_message: segment larger than the claim (claim aborted)");
    return segment_words == 0 ? SHMBUS_E_INVALID_ARGUMENT : SHMBUS_E_TOO_LARGE;
  }
  // The flat form's segment table for one segment: {count - 1 = 0, words}.
  const uint32_t table[2] = {0, segment_words};
  std::memcpy(pub->claim_data, table, sizeof table);
  pub->claim_data = nullptr;
  // The in-place builder never writes past its segment: the tail is still zero.
  return status(pub->pub.commit_clean(uint32_t(used), message_id, schema_id));
}
}  // namespace

extern "C" {

int shmbus_publisher_claim(shmbus_publisher_t* pub, uint32_t max_bytes, shmbus_claim_t* out) {
  return do_claim<true>(pub, max_bytes, out);
}

int shmbus_publisher_try_claim(shmbus_publisher_t* pub, uint32_t max_bytes, shmbus_claim_t* out) {
  return do_claim<false>(pub, max_bytes, out);
}

int shmbus_publisher_commit(shmbus_publisher_t* pub, uint32_t used, uint64_t message_id, uint64_t schema_id) {
  if (!pub) {
    set_static("commit: pub is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  pub->claim_data = nullptr;
  return status(pub->pub.commit(used, message_id, schema_id));
}

int shmbus_publisher_commit_message(shmbus_publisher_t* pub, uint32_t segment_words, uint64_t message_id,
                                    uint64_t schema_id) {
  return do_commit_message(pub, segment_words, message_id, schema_id);
}

int shmbus_publisher_commit_message_and_claim(shmbus_publisher_t* pub, uint32_t segment_words,
                                              uint64_t message_id, uint64_t schema_id, uint32_t next_max,
                                              shmbus_claim_t* next) {
  clear_claim(next);
  if (!next) {
    set_static("commit_message_and_claim: next is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  int rc = do_commit_message(pub, segment_words, message_id, schema_id);
  if (rc != SHMBUS_OK) return rc;
  return do_claim<true>(pub, next_max, next);
}

}  // extern "C"

namespace {
template <bool Wait>
inline int do_claim_n(shmbus_publisher_t* pub, size_t n, uint32_t max_bytes, shmbus_claim_t* out) noexcept {
  if (!pub || !out || n == 0 || n > UINT32_MAX) {
    if (out && n && n <= UINT32_MAX)
      for (size_t i = 0; i < n; ++i) clear_claim(&out[i]);
    set_static(!pub || !out ? "claim_n: pub or out is NULL" : "claim_n: n is 0 or above 2^32-1");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  pub->claim_data = nullptr;
  pub->claim_size = 0;
  shmbus::BatchView b;
  shmbus::Status s =
      Wait ? pub->pub.claim_n(uint32_t(n), max_bytes, b) : pub->pub.try_claim_n(uint32_t(n), max_bytes, b);
  if (s != shmbus::Status::ok) {
    for (size_t i = 0; i < n; ++i) clear_claim(&out[i]);
    return status(s);
  }
  for (uint32_t i = 0; i < b.count; ++i)
    out[i] = shmbus_claim_t{reinterpret_cast<uint8_t*>(b.data(i)), b.size, 0, b.sequence + i};
  return SHMBUS_OK;
}

// Segment tables per frame (no allocation): the frames of the open batch are at
// fixed offsets from the first, as claim_n handed them out.
constexpr size_t kCommitChunk = 256;
}  // namespace

extern "C" {

int shmbus_publisher_claim_n(shmbus_publisher_t* pub, size_t n, uint32_t max_bytes, shmbus_claim_t* out) {
  return do_claim_n<true>(pub, n, max_bytes, out);
}

int shmbus_publisher_try_claim_n(shmbus_publisher_t* pub, size_t n, uint32_t max_bytes, shmbus_claim_t* out) {
  return do_claim_n<false>(pub, n, max_bytes, out);
}

int shmbus_publisher_commit_n(shmbus_publisher_t* pub, size_t k, const uint32_t* used,
                              const uint64_t* message_ids, uint64_t schema_id) {
  if (!pub || (k && !used)) {
    set_static("commit_n: pub or used is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (!pub->pub.has_batch()) {
    set_static("commit_n: no open multi-frame claim");
    return SHMBUS_E_CLOSED;
  }
  if (k > pub->pub.batch_count()) {
    pub->pub.abort();
    set_static("commit_n: k is more than the frames claimed (batch aborted)");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  return status(pub->pub.commit_n(uint32_t(k), used, message_ids, schema_id, false));
}

int shmbus_publisher_commit_messages_n(shmbus_publisher_t* pub, size_t k, const uint32_t* segment_words,
                                       const uint64_t* message_ids, uint64_t schema_id, size_t next_n,
                                       uint32_t next_max, shmbus_claim_t* next) {
  if (next_n && next) clear_claim(next);
  if (!pub || (k && !segment_words) || (next_n && !next)) {
    set_static("commit_messages_n: pub, segment_words or next is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (!pub->pub.has_batch()) {
    set_static("commit_messages_n: no open multi-frame claim");
    return SHMBUS_E_CLOSED;
  }
  const shmbus::BatchView b = pub->pub.batch_view();
  if (k > b.count) {
    pub->pub.abort();
    set_static("commit_messages_n: k is more than the frames claimed (batch aborted)");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  uint32_t used[kCommitChunk];
  uint32_t* u = k <= kCommitChunk ? used : new (std::nothrow) uint32_t[k];
  if (!u) {
    pub->pub.abort();
    set_static("commit_messages_n: out of memory (batch aborted)");
    return SHMBUS_E_INTERNAL;
  }
  int rc = SHMBUS_OK;
  for (size_t i = 0; i < k && rc == SHMBUS_OK; ++i) {
    const uint64_t len = 8 + uint64_t(segment_words[i]) * 8;
    if (segment_words[i] == 0 || len > b.size) {
      set_static(segment_words[i] == 0
                     ? "commit_messages_n: a segment_words is 0 (batch aborted)"
                     : "commit_messages_n: a segment larger than its frame (batch aborted)");
      rc = segment_words[i] == 0 ? SHMBUS_E_INVALID_ARGUMENT : SHMBUS_E_TOO_LARGE;
      break;
    }
    // The flat form's segment table for one segment: {count - 1 = 0, words}.
    const uint32_t table[2] = {0, segment_words[i]};
    std::memcpy(b.data(uint32_t(i)), table, sizeof table);
    u[i] = uint32_t(len);
  }
  if (rc != SHMBUS_OK) {
    pub->pub.abort();
  } else {
    // The in-place builder never writes past its segment: each frame's tail is still zero.
    rc = status(pub->pub.commit_n(uint32_t(k), u, message_ids, schema_id, true));
  }
  if (u != used) delete[] u;
  if (rc != SHMBUS_OK || next_n == 0) return rc;
  return do_claim_n<true>(pub, next_n, next_max, next);
}

int shmbus_publisher_wait_space_n(shmbus_publisher_t* pub, size_t n, uint32_t max_bytes, int64_t timeout_ns) {
  if (!pub || n == 0 || n > UINT32_MAX) {
    set_static(!pub ? "wait_space_n: pub is NULL" : "wait_space_n: n is 0 or above 2^32-1");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  return status(pub->pub.wait_space(max_bytes, timeout_ns, uint32_t(n)));
}

int shmbus_publisher_abort(shmbus_publisher_t* pub) {
  if (!pub) {
    set_static("abort: pub is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  pub->claim_data = nullptr;
  if (!pub->pub.has_claim()) {
    set_static("abort: no open claim");
    return SHMBUS_E_CLOSED;
  }
  pub->pub.abort();
  return SHMBUS_OK;
}

int shmbus_publisher_offer(shmbus_publisher_t* pub, const void* data, size_t len, uint64_t message_id,
                           uint64_t schema_id) {
  if (!pub || (!data && len)) {
    set_static("offer: pub or data is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  pub->claim_data = nullptr;  // offer drops an open claim
  return status(pub->pub.offer(data, len, message_id, schema_id));
}

int shmbus_publisher_offer_packed(shmbus_publisher_t* pub, const void* buf, const uint32_t* lens, size_t n,
                                  size_t* published) {
  if (published) *published = 0;
  if (!pub || (n && (!buf || !lens))) {
    set_static("offer_packed: pub, buf or lens is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  pub->claim_data = nullptr;
  // Chunks of spans on the stack: no allocation; one wake-up check per chunk.
  constexpr size_t kChunk = 64;
  std::span<const std::byte> spans[kChunk];
  const std::byte* p = static_cast<const std::byte*>(buf);
  size_t done = 0;
  while (done < n) {
    size_t k = n - done < kChunk ? n - done : kChunk;
    for (size_t i = 0; i < k; ++i) {
      spans[i] = {p, lens[done + i]};
      p += lens[done + i];
    }
    shmbus::Status last = shmbus::Status::ok;
    size_t got = pub->pub.offer_batch(std::span<const std::span<const std::byte>>(spans, k), &last);
    done += got;
    if (published) *published = done;
    if (got < k) return status(last == shmbus::Status::ok ? shmbus::Status::back_pressured : last);
  }
  return SHMBUS_OK;
}

int shmbus_publisher_stats(shmbus_publisher_t* pub, shmbus_publisher_stats_t* out) {
  if (!pub || !out) {
    set_static("publisher_stats: pub or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  const shmbus::PublishStats& s = pub->pub.stats();
  out->published = s.published;
  out->back_pressured = s.back_pressured;
  out->blocked_waits = s.blocked_waits;
  out->builder_fallbacks = s.builder_fallbacks;
  out->reclaimed_cursors = s.reclaimed_cursors;
  return SHMBUS_OK;
}

uint32_t shmbus_publisher_max_payload(shmbus_publisher_t* pub) { return pub ? pub->pub.max_payload() : 0; }

int shmbus_publisher_wait_durable(shmbus_publisher_t* pub, uint64_t seq, int64_t timeout_ns) {
  if (!pub) {
    set_static("wait_durable: pub is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  return status(pub->pub.wait_durable(seq, timeout_ns));
}

int shmbus_publisher_durable_sequence(shmbus_publisher_t* pub, uint64_t* seq, int* archiver_errno) {
  if (seq) *seq = 0;
  if (archiver_errno) *archiver_errno = 0;
  if (!pub || !seq) {
    set_static("durable_sequence: pub or seq is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (!pub->pub.refs().data) {
    set_static(shmbus_strerror(SHMBUS_E_CLOSED));
    return SHMBUS_E_CLOSED;
  }
  *seq = shmbus::durable_sequence_approx(pub->pub);
  if (archiver_errno) *archiver_errno = shmbus::archiver_error(pub->pub);
  return SHMBUS_OK;
}

// ---- subscriber -------------------------------------------------------------------------
namespace {
// CLOCK_REALTIME ns -> CLOCK_MONOTONIC ns (what frames are stamped with).
uint64_t realtime_to_monotonic(uint64_t t) {
  timespec r{}, m{};
  clock_gettime(CLOCK_REALTIME, &r);
  clock_gettime(CLOCK_MONOTONIC, &m);
  const int64_t rn = int64_t(r.tv_sec) * 1'000'000'000 + r.tv_nsec;
  const int64_t mn = int64_t(m.tv_sec) * 1'000'000'000 + m.tv_nsec;
  const int64_t off = rn - mn;  // realtime = monotonic + off
  if (t > uint64_t(INT64_MAX)) return UINT64_MAX;
  const int64_t v = int64_t(t) - off;
  return v < 0 ? 0 : uint64_t(v);
}

// A subscriber that starts before LATEST: a ReplaySubscriber over the topic's log.
int open_replay(shmbus_bus_t* bus, const char* topic, const shmbus_subscriber_options_t& o,
                shmbus_subscriber_t** out) {
  const char* fn = "shmbus_subscriber_open: ";
  if (o.name)
    return invalid(fn, "a named subscriber resumes where it left off: its start must be SHMBUS_START_LATEST");
  if (!bus->daemon)
    return fail(SHMBUS_E_UNSUPPORTED, fn,
                "start positions other than LATEST replay a durable topic's log, which needs "
                "shmbusd: this bus has no daemon (use shmbus_bus_connect, or "
                "shmbus_bus_open_embedded with a state_dir)");
  if (!bus->client)
    return fail(SHMBUS_E_UNSUPPORTED, fn,
                "an embedded bus opened without a state_dir cannot replay: pass a state_dir to "
                "shmbus_bus_open_embedded");
  std::string t = topic;
  if (!shmbus::valid_topic_name(t)) return invalid(fn, ("invalid topic name '" + t + "'").c_str());
  shmbus::ReplayOptions ro;
  {
    auto rep = describe(bus, t);
    auto info = rep.get().getTopic();
    auto spec = info.getSpec();
    if (!spec.getDurable() && spec.getPolicy() != shmbus::proto::Policy::SPILL)
      return invalid(fn, ("topic '" + t +
                          "' is not durable: only SHMBUS_START_LATEST is possible "
                          "(create it with shmbus_topic_create_durable)")
                             .c_str());
    if (o.partition >= spec.getPartitions())
      return invalid(fn, ("topic '" + t + "' has no partition " + std::to_string(o.partition)).c_str());
    ro.state_dir = info.getLogDir().cStr();
  }
  if (ro.state_dir.empty()) {  // older daemons: the log is <state-dir>/log
    auto h = bus->client->call([](shmbus::proto::Request::Builder r) { r.setHealth(); });
    ro.state_dir = std::string(h.get().getHealth().getStateDir().cStr()) + "/log";
  }
  ro.partition = o.partition;
  ro.wait = shmbus::WaitStrategy(o.wait);
  ro.spin_ns = o.spin_ns;
  ro.open_timeout_ms = o.open_timeout_ms;
  switch (o.start) {
    case SHMBUS_START_EARLIEST: ro.start = shmbus::StartAt::earliest(); break;
    case SHMBUS_START_SEQUENCE: ro.start = shmbus::StartAt::sequence(o.start_value); break;
    default: ro.start = shmbus::StartAt::time(realtime_to_monotonic(o.start_value)); break;
  }
  auto r = std::make_unique<shmbus::ReplaySubscriber>(shmbus::replay_subscriber(bus->bus, t, ro));
  auto* s = new shmbus_subscriber{std::nullopt, 0, std::move(r), 0};
  *out = s;
  return SHMBUS_OK;
}
}  // namespace

void shmbus_subscriber_options_init(shmbus_subscriber_options_t* o) {
  if (!o) return;
  shmbus::SubscriberOptions d;
  std::memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->partition = d.partition;
  o->tethered = d.tethered ? 1 : 0;
  o->wait = uint32_t(d.wait);
  o->spin_ns = d.spin_ns;
  o->open_timeout_ms = d.open_timeout_ms;
  o->start = SHMBUS_START_LATEST;
  o->start_value = 0;
  o->name = nullptr;
}

int shmbus_subscriber_open(shmbus_bus_t* bus, const char* topic, const shmbus_subscriber_options_t* opts,
                           shmbus_subscriber_t** out) {
  if (!out) return invalid("shmbus_subscriber_open: ", "out is NULL");
  *out = nullptr;
  if (!bus || !topic) return invalid("shmbus_subscriber_open: ", "bus or topic is NULL");
  SHIM_BEGIN
  shmbus::SubscriberOptions o;
  if (opts) {
    if (opts->size != sizeof *opts)
      return invalid("shmbus_subscriber_open: ",
                     "opts->size does not match this library: call shmbus_subscriber_options_init first");
    if (!valid_wait(opts->wait))
      return invalid("shmbus_subscriber_open: ", "opts->wait is not a SHMBUS_WAIT_*");
    if (opts->start > SHMBUS_START_TIME)
      return invalid("shmbus_subscriber_open: ", "opts->start is not a SHMBUS_START_*");
    if (opts->spin_ns < 0 || opts->open_timeout_ms < 0)
      return invalid("shmbus_subscriber_open: ", "negative spin_ns or timeout");
    if (opts->start != SHMBUS_START_LATEST) return open_replay(bus, topic, *opts, out);
    o.partition = opts->partition;
    o.tethered = opts->tethered != 0;
    o.wait = shmbus::WaitStrategy(opts->wait);
    o.spin_ns = opts->spin_ns;
    o.open_timeout_ms = opts->open_timeout_ms;
    if (opts->name) o.name = opts->name;
  }
  // Policy `spill`: an anonymous tethered subscriber reads from the tail through a
  // ReplaySubscriber (untethered, the log when overtaken), as Bus::subscriber does
  // in C++ (SubscriberOptions::log_fallback); here it is this shim's replay path.
  if (o.tethered && o.name.empty()) {
    if (std::string dir = bus->bus.provider().spill_log_dir(topic); !dir.empty()) {
      shmbus::ReplayOptions ro;
      ro.partition = o.partition;
      ro.start = shmbus::StartAt::latest();
      ro.state_dir = std::move(dir);
      ro.wait = o.wait;
      ro.spin_ns = o.spin_ns;
      ro.open_timeout_ms = o.open_timeout_ms;
      auto r = std::make_unique<shmbus::ReplaySubscriber>(shmbus::replay_subscriber(bus->bus, topic, ro));
      *out = new shmbus_subscriber{std::nullopt, 0, std::move(r), 0};
      return SHMBUS_OK;
    }
  }
  o.log_fallback = false;
  shmbus::Subscriber s = bus->bus.subscriber(topic, o);
  uint64_t pos = s.position();
  *out = new shmbus_subscriber{std::move(s), pos};
  return SHMBUS_OK;
  SHIM_END("shmbus_subscriber_open")
}

void shmbus_subscriber_close(shmbus_subscriber_t* sub) {
  try {
    delete sub;
  } catch (...) {
  }
}

int shmbus_subscriber_poll(shmbus_subscriber_t* sub, shmbus_view_t* out) {
  if (!sub || !out) {
    set_static("poll: sub or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  shmbus::View v;
  shmbus::Status s = sub->replay ? sub->replay->poll(v) : sub->sub->poll(v);
  if (s != shmbus::Status::ok) {
    std::memset(out, 0, sizeof *out);
    return s == shmbus::Status::empty ? SHMBUS_E_EMPTY : status(s);
  }
  fill_view(out, v);
  return SHMBUS_OK;
}

int shmbus_subscriber_poll_wait(shmbus_subscriber_t* sub, shmbus_view_t* out, int64_t timeout_ns) {
  if (!sub || !out) {
    set_static("poll_wait: sub or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  shmbus::View v;
  shmbus::Status s = sub->replay ? sub->replay->poll_wait(v, timeout_ns) : sub->sub->poll_wait(v, timeout_ns);
  if (s != shmbus::Status::ok) {
    std::memset(out, 0, sizeof *out);
    return status(s);
  }
  fill_view(out, v);
  return SHMBUS_OK;
}

int shmbus_subscriber_poll_batch(shmbus_subscriber_t* sub, shmbus_view_t* views, size_t max,
                                 int64_t timeout_ns, size_t* n) {
  if (n) *n = 0;
  if (!sub || !n || (max && !views)) {
    set_static("poll_batch: sub, views or n is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (max == 0) return SHMBUS_OK;
  shmbus::View v;
  auto poll = [&](int64_t t) {
    if (sub->replay) return t == 0 ? sub->replay->poll(v) : sub->replay->poll_wait(v, t);
    return t == 0 ? sub->sub->poll(v) : sub->sub->poll_wait(v, t);
  };
  shmbus::Status s = poll(timeout_ns);
  if (s != shmbus::Status::ok) return s == shmbus::Status::empty ? SHMBUS_E_EMPTY : status(s);
  fill_view(&views[0], v);
  size_t k = 1;
  while (k < max && poll(0) == shmbus::Status::ok) fill_view(&views[k++], v);
  // A corrupt frame after good ones is reported by the next poll.
  *n = k;
  return SHMBUS_OK;
}

int shmbus_subscriber_check(const shmbus_subscriber_t* sub, const shmbus_view_t* v) {
  if (!sub || !v || !v->data) {
    set_static("check: sub, v or v->data is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (sub->replay) return SHMBUS_OK;  // views are private copies, validated after the copy
  shmbus::shm::FrameView f;
  f.hdr = reinterpret_cast<const shmbus::shm::FrameHeader*>(v->data - shmbus::shm::kFrameHeaderSize);
  f.payload = reinterpret_cast<const std::byte*>(v->data);
  f.pos = v->position;
  f.next = v->next_position;
  return status(sub->sub->check(shmbus::View(f)));
}

int shmbus_subscriber_release(shmbus_subscriber_t* sub, const shmbus_view_t* v) {
  if (!sub || !v || !v->data) {
    set_static("release: sub, v or v->data is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (sub->replay) {
    // Untrusted token: its sequence must lie between what was released and polled.
    const uint64_t seq = v->sequence;
    if (seq <= sub->released_seq || seq > sub->replay->last_sequence()) {
      set_static("release: the view was not polled from this subscriber, or is already released");
      return SHMBUS_E_INVALID_ARGUMENT;
    }
    shmbus::shm::FrameHeader h{};
    h.sequence = seq;
    shmbus::shm::FrameView f;
    f.hdr = &h;
    f.pos = v->position;
    f.next = v->next_position;
    sub->replay->release(shmbus::View(f));
    sub->released_seq = seq;
    return SHMBUS_OK;
  }
  // Untrusted token: it must lie between what was released and what was polled.
  const uint64_t next = v->next_position;
  if (next < sub->released || next > sub->sub->position()) {
    set_static("release: the view was not polled from this subscriber, or is already released");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  shmbus::shm::FrameView f;
  f.hdr = reinterpret_cast<const shmbus::shm::FrameHeader*>(v->data - shmbus::shm::kFrameHeaderSize);
  f.pos = v->position;
  f.next = next;
  sub->sub->release(shmbus::View(f));
  sub->released = next;
  return SHMBUS_OK;
}

int shmbus_subscriber_release_all(shmbus_subscriber_t* sub) {
  if (!sub) {
    set_static("release_all: sub is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (sub->replay) {
    sub->replay->release_all();
    sub->released_seq = sub->replay->last_sequence();
    return SHMBUS_OK;
  }
  sub->sub->release_all();
  sub->released = sub->sub->position();
  return SHMBUS_OK;
}

int shmbus_subscriber_wait(shmbus_subscriber_t* sub, int64_t timeout_ns) {
  if (!sub) {
    set_static("wait: sub is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  const shmbus::Status s = sub->replay ? sub->replay->wait_for(timeout_ns) : sub->sub->wait_for(timeout_ns);
  if (s == shmbus::Status::ok) return SHMBUS_OK;
  const int rc = s == shmbus::Status::interrupted ? SHMBUS_E_INTERRUPTED : SHMBUS_E_TIMED_OUT;
  set_static(shmbus_strerror(rc));
  return rc;
}

// No error text is set: the other thread's call may be reading it (thread-local,
// but keep this async-signal-safe: no allocation, no locale).
int shmbus_subscriber_interrupt(shmbus_subscriber_t* sub) {
  if (!sub) return SHMBUS_E_INVALID_ARGUMENT;
  if (sub->replay)
    sub->replay->interrupt();
  else if (sub->sub)
    sub->sub->interrupt();
  else
    return SHMBUS_E_CLOSED;
  return SHMBUS_OK;
}

int shmbus_publisher_wait_space(shmbus_publisher_t* pub, uint32_t max_bytes, int64_t timeout_ns) {
  if (!pub) {
    set_static("wait_space: pub is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  return status(pub->pub.wait_space(max_bytes, timeout_ns));
}

int shmbus_publisher_interrupt(shmbus_publisher_t* pub) {
  if (!pub) return SHMBUS_E_INVALID_ARGUMENT;
  pub->pub.interrupt();
  return SHMBUS_OK;
}

int shmbus_subscriber_stats(shmbus_subscriber_t* sub, shmbus_subscriber_stats_t* out) {
  if (!sub || !out) {
    set_static("subscriber_stats: sub or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (sub->replay) {
    const shmbus::ReplayStats& r = sub->replay->stats();
    out->received = r.received;
    out->waits = 0;
    out->corrupt = r.corrupt;
    out->position = sub->replay->last_sequence();  // replay: the last sequence delivered
    return SHMBUS_OK;
  }
  const shmbus::SubscribeStats& s = sub->sub->stats();
  out->received = s.received;
  out->waits = s.waits;
  out->corrupt = s.corrupt;
  out->position = sub->sub->position();
  return SHMBUS_OK;
}

// ---- consumer groups --------------------------------------------------------------
namespace {
int group_status(shmbus_group_subscriber_t* g, shmbus::Status s, const shmbus::GroupView& v,
                 shmbus_group_view_t* out) {
  if (s != shmbus::Status::ok) {
    std::memset(out, 0, sizeof *out);
    return s == shmbus::Status::empty ? SHMBUS_E_EMPTY : status(s);
  }
  fill_view(&out->view, v);
  out->partition = v.partition();
  out->reserved = 0;
  // A partition given up forgets its range: taken again, it starts at its first view.
  if (g->g.stats().given_up != g->given_up) {
    g->given_up = g->g.stats().given_up;
    const auto held = g->g.partitions();
    std::erase_if(g->ranges, [&](const auto& r) {
      return r.partition != v.partition() && std::find(held.begin(), held.end(), r.partition) == held.end();
    });
  }
  if (auto* r = g->range(v.partition())) {
    if (v.position() < r->released) r->released = v.position();  // never past the read position
    r->polled = v.next_position();
  } else {
    g->ranges.push_back({v.partition(), v.position(), v.next_position()});
  }
  return SHMBUS_OK;
}
}  // namespace

void shmbus_group_options_init(shmbus_group_options_t* o) {
  if (!o) return;
  shmbus::GroupOptions d;
  std::memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->tethered = d.tethered ? 1 : 0;
  o->wait = uint32_t(d.wait);
  o->open_timeout_ms = d.open_timeout_ms;
  o->spin_ns = d.spin_ns;
  o->sync_interval_ns = d.sync_interval_ns;
  o->idle_sync_ns = d.idle_sync_ns;
}

int shmbus_group_subscriber_open(shmbus_bus_t* bus, const char* topic, const char* group,
                                 const shmbus_group_options_t* opts, shmbus_group_subscriber_t** out) {
  const char* fn = "shmbus_group_subscriber_open: ";
  if (!out) return invalid(fn, "out is NULL");
  *out = nullptr;
  if (!bus || !topic || !group) return invalid(fn, "bus, topic or group is NULL");
  SHIM_BEGIN
  shmbus::GroupOptions o;
  if (opts) {
    if (opts->size != sizeof *opts)
      return invalid(fn, "opts->size does not match this library: call shmbus_group_options_init first");
    if (!valid_wait(opts->wait)) return invalid(fn, "opts->wait is not a SHMBUS_WAIT_*");
    if (opts->spin_ns < 0 || opts->open_timeout_ms < 0) return invalid(fn, "negative spin_ns or timeout");
    if (opts->sync_interval_ns <= 0 || opts->idle_sync_ns <= 0)
      return invalid(fn, "sync_interval_ns and idle_sync_ns must be positive");
    o.tethered = opts->tethered != 0;
    o.wait = shmbus::WaitStrategy(opts->wait);
    o.spin_ns = opts->spin_ns;
    o.open_timeout_ms = opts->open_timeout_ms;
    o.sync_interval_ns = opts->sync_interval_ns;
    o.idle_sync_ns = opts->idle_sync_ns;
  }
  if (!bus->daemon)
    return fail(SHMBUS_E_UNSUPPORTED, fn,
                "consumer groups need shmbusd: this bus has no daemon (use shmbus_bus_connect or "
                "shmbus_bus_open_embedded)");
  *out = new shmbus_group_subscriber{bus->bus.group_subscriber(topic, group, o)};
  return SHMBUS_OK;
  SHIM_END("shmbus_group_subscriber_open")
}

void shmbus_group_subscriber_close(shmbus_group_subscriber_t* g) {
  try {
    delete g;
  } catch (...) {
  }
}

int shmbus_group_subscriber_poll(shmbus_group_subscriber_t* g, shmbus_group_view_t* out) {
  if (!g || !out) {
    set_static("group poll: g or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  SHIM_BEGIN
  shmbus::GroupView v;
  const shmbus::Status s = g->g.poll(v);
  return group_status(g, s, v, out);
}
catch (...) {
  std::memset(out, 0, sizeof *out);
  return current_exception("shmbus_group_subscriber_poll: ");
}
}

int shmbus_group_subscriber_poll_wait(shmbus_group_subscriber_t* g, shmbus_group_view_t* out,
                                      int64_t timeout_ns) {
  if (!g || !out) {
    set_static("group poll_wait: g or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  SHIM_BEGIN
  shmbus::GroupView v;
  const shmbus::Status s = g->g.poll_wait(v, timeout_ns);
  return group_status(g, s, v, out);
}
catch (...) {
  std::memset(out, 0, sizeof *out);
  return current_exception("shmbus_group_subscriber_poll_wait: ");
}
}

int shmbus_group_subscriber_release(shmbus_group_subscriber_t* g, const shmbus_group_view_t* v) {
  if (!g || !v || !v->view.data) {
    set_static("group release: g, v or v->view.data is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  // Untrusted token: its partition must have been polled, its next position must lie
  // between what was released and what was polled there.
  auto* r = g->range(v->partition);
  const uint64_t next = v->view.next_position;
  if (!r || next <= r->released || next > r->polled) {
    set_static("group release: the view was not polled from this member, or is already released");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  shmbus::shm::FrameView f;
  f.hdr = reinterpret_cast<const shmbus::shm::FrameHeader*>(v->view.data - shmbus::shm::kFrameHeaderSize);
  f.pos = v->view.position;
  f.next = next;
  g->g.release(shmbus::GroupView(shmbus::View(f), v->partition));
  r->released = next;
  return SHMBUS_OK;
}

int shmbus_group_subscriber_release_all(shmbus_group_subscriber_t* g) {
  if (!g) {
    set_static("group release_all: g is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  g->g.release_all();
  for (auto& r : g->ranges) r.released = r.polled;
  return SHMBUS_OK;
}

int shmbus_group_subscriber_sync(shmbus_group_subscriber_t* g, int* changed) {
  if (changed) *changed = 0;
  if (!g) return invalid("shmbus_group_subscriber_sync: ", "g is NULL");
  SHIM_BEGIN
  const bool c = g->g.sync();
  if (changed) *changed = c ? 1 : 0;
  return SHMBUS_OK;
  SHIM_END("shmbus_group_subscriber_sync")
}

int shmbus_group_subscriber_partitions(shmbus_group_subscriber_t* g, uint32_t* out, size_t max, size_t* n) {
  if (n) *n = 0;
  if (!g || !n || (max && !out))
    return invalid("shmbus_group_subscriber_partitions: ", "g, out or n is NULL");
  SHIM_BEGIN
  const auto ps = g->g.partitions();
  for (size_t i = 0; i < ps.size() && i < max; ++i) out[i] = ps[i];
  *n = ps.size();
  return SHMBUS_OK;
  SHIM_END("shmbus_group_subscriber_partitions")
}

int shmbus_group_subscriber_stats(shmbus_group_subscriber_t* g, shmbus_group_stats_t* out) {
  if (out) std::memset(out, 0, sizeof *out);
  if (!g || !out) {
    set_static("group stats: g or out is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  const shmbus::GroupStats& s = g->g.stats();
  out->received = s.received;
  out->syncs = s.syncs;
  out->rebalances = s.rebalances;
  out->taken = s.taken;
  out->given_up = s.given_up;
  out->take_retries = s.take_retries;
  out->rejoins = s.rejoins;
  out->member_id = g->g.member_id();
  out->generation = g->g.generation();
  out->assigned = uint32_t(g->g.assigned().size());
  return SHMBUS_OK;
}

// No error text (see shmbus_subscriber_interrupt): async-signal-safe.
int shmbus_group_subscriber_interrupt(shmbus_group_subscriber_t* g) {
  if (!g) return SHMBUS_E_INVALID_ARGUMENT;
  g->g.interrupt();
  return SHMBUS_OK;
}

// ---- envelope -----------------------------------------------------------------------
namespace {
bool envelope_ok(const shmbus_envelope_t* e, const char* fn) {
  if (!e) return invalid(fn, "e is NULL"), false;
  if (e->size != sizeof *e)
    return invalid(fn, "e->size does not match this library: call shmbus_envelope_init first"), false;
  return true;
}

// The caller's struct -> Envelope: every text must end inside its array.
int to_envelope(const shmbus_envelope_t* c, shmbus::Envelope& e, const char* fn) {
  if (!envelope_ok(c, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  if (!std::memchr(c->reply_to, 0, sizeof c->reply_to) ||
      !std::memchr(c->trace_state, 0, sizeof c->trace_state))
    return invalid(fn, "reply_to or trace_state is not NUL-terminated inside its array");
  if (c->trace_flags > 255) return invalid(fn, "trace_flags is over 255");
  const bool any = (c->trace_id_high | c->trace_id_low | c->trace_parent_id) != 0;
  if (any && ((c->trace_id_high | c->trace_id_low) == 0 || c->trace_parent_id == 0))
    return invalid(fn, "a trace context needs a non-zero trace id and a non-zero parent id");
  if (!any && c->trace_state[0]) return invalid(fn, "trace_state without a trace context");
  e.correlation_id = c->correlation_id;
  e.causation_id = c->causation_id;
  e.reply_to = c->reply_to;
  e.trace.trace_hi = c->trace_id_high;
  e.trace.trace_lo = c->trace_id_low;
  e.trace.parent_id = c->trace_parent_id;
  e.trace.flags = uint8_t(c->trace_flags);
  e.trace.state = c->trace_state;
  e.content_version = c->content_version;
  e.status = c->status;
  return SHMBUS_OK;
}

void set_trace(shmbus_envelope_t* c, const shmbus::TraceContext& t) {
  c->trace_id_high = t.trace_hi;
  c->trace_id_low = t.trace_lo;
  c->trace_parent_id = t.parent_id;
  c->trace_flags = t.flags;
}

shmbus::TraceContext get_trace(const shmbus_envelope_t* c) {
  shmbus::TraceContext t;
  t.trace_hi = c->trace_id_high;
  t.trace_lo = c->trace_id_low;
  t.parent_id = c->trace_parent_id;
  t.flags = uint8_t(c->trace_flags);
  return t;
}
}  // namespace

void shmbus_envelope_init(shmbus_envelope_t* e) {
  if (!e) return;
  std::memset(e, 0, sizeof *e);
  e->size = sizeof *e;
}

int shmbus_publisher_offer_enveloped(shmbus_publisher_t* pub, const shmbus_envelope_t* e, const void* payload,
                                     size_t len, uint64_t message_id) {
  const char* fn = "shmbus_publisher_offer_enveloped: ";
  if (!pub || (!payload && len)) return invalid(fn, "pub or payload is NULL");
  if (len > UINT32_MAX) return fail(SHMBUS_E_TOO_LARGE, fn, "payload over 4 GiB");
  SHIM_BEGIN
  shmbus::Envelope env;
  if (const int rc = to_envelope(e, env, fn); rc != SHMBUS_OK) return rc;
  pub->claim_data = nullptr;  // as offer: drops an open claim
  return status(shmbus::publish_enveloped(
      pub->pub, env, std::span<const std::byte>(static_cast<const std::byte*>(payload), len), message_id,
      e->payload_schema_id));
  SHIM_END("shmbus_publisher_offer_enveloped")
}

int shmbus_view_open_envelope(const shmbus_view_t* v, shmbus_envelope_t* e, shmbus_view_t* payload,
                              int* enveloped) {
  const char* fn = "shmbus_view_open_envelope: ";
  if (enveloped) *enveloped = 0;
  if (payload) std::memset(payload, 0, sizeof *payload);
  if (!v || !payload || !enveloped || !v->data)
    return invalid(fn, "v, v->data, payload or enveloped is NULL");
  if (!envelope_ok(e, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  shmbus_envelope_init(e);
  SHIM_BEGIN
  // The header from the view's own fields (what this library filled at poll): never
  // the bytes before data, which a replaying subscriber's private copy does not have.
  shmbus::shm::FrameHeader h{};
  h.payload_len = v->size;
  h.producer_id = v->producer_id;
  h.sequence = v->sequence;
  h.timestamp_ns = v->timestamp_ns;
  h.message_id = v->message_id;
  h.schema_id = v->schema_id;
  shmbus::shm::FrameView f;
  f.hdr = &h;
  f.payload = reinterpret_cast<const std::byte*>(v->data);
  f.payload_len = v->size;
  f.pos = v->position;
  f.next = v->next_position;
  shmbus::EnvelopedView ev;
  if (ev.open(shmbus::View(f)) != shmbus::Status::ok)
    return fail(SHMBUS_E_MALFORMED, fn, "the frame is flagged as an envelope but is not a valid one");
  if (!ev.enveloped()) {
    *payload = *v;
    return SHMBUS_OK;
  }
  const shmbus::Envelope& x = ev.envelope();
  e->correlation_id = x.correlation_id;
  e->causation_id = x.causation_id;
  e->content_version = x.content_version;
  e->status = x.status;
  e->payload_schema_id = ev.payload().schema_id();
  set_trace(e, x.trace);
  // Lengths were checked by EnvelopedView (<= the arrays' capacity, no NUL in reply_to).
  std::memcpy(e->reply_to, x.reply_to.data(), std::min(x.reply_to.size(), sizeof e->reply_to - 1));
  std::memcpy(e->trace_state, x.trace.state.data(),
              std::min(x.trace.state.size(), sizeof e->trace_state - 1));
  fill_view(payload, ev.payload());
  *enveloped = 1;
  return SHMBUS_OK;
  SHIM_END("shmbus_view_open_envelope")
}

int shmbus_trace_parse(const char* traceparent, shmbus_envelope_t* e) {
  const char* fn = "shmbus_trace_parse: ";
  if (!traceparent) return invalid(fn, "traceparent is NULL");
  if (!envelope_ok(e, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  SHIM_BEGIN
  auto t = shmbus::TraceContext::parse(traceparent);
  if (!t) return invalid(fn, "not a W3C traceparent (version 00, lower-case hex, non-zero ids)");
  set_trace(e, *t);
  return SHMBUS_OK;
  SHIM_END("shmbus_trace_parse")
}

int shmbus_trace_format(const shmbus_envelope_t* e, char* buf, size_t len) {
  const char* fn = "shmbus_trace_format: ";
  if (buf && len) buf[0] = 0;
  if (!buf || len < SHMBUS_TRACEPARENT_LEN + 1) return invalid(fn, "buf is NULL or shorter than 56 bytes");
  if (!envelope_ok(e, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  if (e->trace_flags > 255) return invalid(fn, "trace_flags is over 255");
  SHIM_BEGIN
  const shmbus::TraceContext t = get_trace(e);
  if (!t.valid()) return invalid(fn, "no valid trace context (a zero trace id or parent id)");
  const std::string s = t.traceparent();
  if (s.size() != SHMBUS_TRACEPARENT_LEN)
    return fail(SHMBUS_E_INTERNAL, fn, "traceparent of an unexpected length");
  std::memcpy(buf, s.c_str(), s.size() + 1);
  return SHMBUS_OK;
  SHIM_END("shmbus_trace_format")
}

int shmbus_trace_fresh(shmbus_envelope_t* e) {
  if (!envelope_ok(e, "shmbus_trace_fresh: ")) return SHMBUS_E_INVALID_ARGUMENT;
  SHIM_BEGIN
  set_trace(e, shmbus::TraceContext::fresh());
  return SHMBUS_OK;
  SHIM_END("shmbus_trace_fresh")
}

int shmbus_trace_child(shmbus_envelope_t* e) {
  const char* fn = "shmbus_trace_child: ";
  if (!envelope_ok(e, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  SHIM_BEGIN
  const shmbus::TraceContext t = get_trace(e);
  if (!t.valid()) return invalid(fn, "no valid trace context to continue");
  set_trace(e, t.child());
  return SHMBUS_OK;
  SHIM_END("shmbus_trace_child")
}

// ---- dedup window ---------------------------------------------------------------------
int shmbus_dedup_open(size_t capacity, const char* path, shmbus_dedup_t** out) {
  const char* fn = "shmbus_dedup_open: ";
  if (!out) return invalid(fn, "out is NULL");
  *out = nullptr;
  SHIM_BEGIN
  shmbus::DedupOptions o;
  if (capacity) o.capacity = capacity;
  if (path) o.path = path;
  *out = new shmbus_dedup{shmbus::DedupWindow(o)};
  return SHMBUS_OK;
  SHIM_END("shmbus_dedup_open")
}

void shmbus_dedup_close(shmbus_dedup_t* d) {
  try {
    delete d;
  } catch (...) {
  }
}

int shmbus_dedup_seen(shmbus_dedup_t* d, uint32_t producer_id, uint64_t message_id, uint64_t sequence,
                      int* seen) {
  if (seen) *seen = 0;
  if (!d || !seen) return invalid("shmbus_dedup_seen: ", "d or seen is NULL");
  SHIM_BEGIN
  *seen = d->w.seen(producer_id, message_id, sequence) ? 1 : 0;
  return SHMBUS_OK;
  SHIM_END("shmbus_dedup_seen")
}

int shmbus_dedup_record(shmbus_dedup_t* d, uint32_t producer_id, uint64_t message_id, uint64_t sequence) {
  if (!d) return invalid("shmbus_dedup_record: ", "d is NULL");
  SHIM_BEGIN
  d->w.record(producer_id, message_id, sequence);
  return SHMBUS_OK;
  SHIM_END("shmbus_dedup_record")
}

int shmbus_dedup_commit(shmbus_dedup_t* d, const void* state, size_t len) {
  if (!d || (!state && len))
    return invalid("shmbus_dedup_commit: ", "d is NULL, or state NULL with a length");
  SHIM_BEGIN
  if (state)
    d->w.commit(std::string_view(static_cast<const char*>(state), len));
  else
    d->w.commit();
  return SHMBUS_OK;
  SHIM_END("shmbus_dedup_commit")
}

int shmbus_dedup_app_state(shmbus_dedup_t* d, const uint8_t** data, size_t* len) {
  if (data) *data = nullptr;
  if (len) *len = 0;
  if (!d || !data || !len) return invalid("shmbus_dedup_app_state: ", "d, data or len is NULL");
  *data = reinterpret_cast<const uint8_t*>(d->w.app_state().data());
  *len = d->w.app_state().size();
  return SHMBUS_OK;
}

int shmbus_dedup_stats(shmbus_dedup_t* d, shmbus_dedup_stats_t* out) {
  if (out) std::memset(out, 0, sizeof *out);
  if (!d || !out) return invalid("shmbus_dedup_stats: ", "d or out is NULL");
  out->by_position = d->w.stats().by_position;
  out->by_id = d->w.stats().by_id;
  out->position = d->w.position();
  out->size = d->w.size();
  return SHMBUS_OK;
}

// ---- request/response ------------------------------------------------------------------
namespace {
// Envelope -> the caller's struct (texts were bounded by EnvelopedView).
void fill_envelope(shmbus_envelope_t* c, const shmbus::Envelope& x, uint64_t payload_schema_id) {
  shmbus_envelope_init(c);
  c->correlation_id = x.correlation_id;
  c->causation_id = x.causation_id;
  c->content_version = x.content_version;
  c->status = x.status;
  c->payload_schema_id = payload_schema_id;
  set_trace(c, x.trace);
  std::memcpy(c->reply_to, x.reply_to.data(), std::min(x.reply_to.size(), sizeof c->reply_to - 1));
  std::memcpy(c->trace_state, x.trace.state.data(),
              std::min(x.trace.state.size(), sizeof c->trace_state - 1));
}

bool reply_ok(shmbus_reply_t* r, const char* fn) {
  if (!r) return invalid(fn, "out is NULL"), false;
  if (r->size != sizeof *r)
    return invalid(fn, "out->size does not match this library: call shmbus_reply_init first"), false;
  return true;
}

void clear_reply(shmbus_reply_t* r) {
  if (r && r->size == sizeof *r) shmbus_reply_init(r);
}

int await_into(shmbus_requester_t* q, uint64_t corr, int64_t timeout_ns, shmbus_reply_t* out) {
  const shmbus::Status s = q->r.await(corr, timeout_ns, q->last);
  if (s != shmbus::Status::ok) {
    if (s == shmbus::Status::closed) {
      set_static(
          "requester await: the correlation id is not in flight (never sent, answered, timed out or "
          "forgotten)");
      return SHMBUS_E_CLOSED;
    }
    return status(s);
  }
  const shmbus::Reply& x = q->last;
  out->status = x.envelope.status;
  out->correlation_id = x.envelope.correlation_id;
  out->schema_id = x.payload_schema_id;
  out->message_id = x.message_id;
  out->producer_id = x.producer_id;
  out->data = reinterpret_cast<const uint8_t*>(x.payload.data());
  out->len = x.payload.size();
  fill_envelope(&out->envelope, x.envelope, x.payload_schema_id);
  return SHMBUS_OK;
}

int outcome_code(shmbus::ReplyOutcome o, const char* fn) {
  switch (o) {
    case shmbus::ReplyOutcome::replied:
    case shmbus::ReplyOutcome::not_wanted: return SHMBUS_OK;
    case shmbus::ReplyOutcome::no_reply_to:
      return fail(SHMBUS_E_NOT_FOUND, fn, "the request has no reply-to (or no envelope): not answered");
    case shmbus::ReplyOutcome::refused:
      return fail(SHMBUS_E_PERMISSION_DENIED, fn,
                  "the request's reply-to is not an ephemeral reply topic: refused (confused deputy)");
    case shmbus::ReplyOutcome::undeliverable:
      return fail(SHMBUS_E_CLOSED, fn, "the reply topic is gone or full: reply dropped");
    case shmbus::ReplyOutcome::too_large:
      return fail(SHMBUS_E_TOO_LARGE, fn, "the reply can never fit the reply topic's frames: dropped");
    case shmbus::ReplyOutcome::not_pending: break;
  }
  return invalid(fn, "the request is not the one pending (answered, skipped, or not from this responder)");
}

bool pending_ok(shmbus_responder_t* r, const shmbus_request_t* q, const char* fn) {
  if (!r || !q) return invalid(fn, "r or q is NULL"), false;
  if (q->size != sizeof *q)
    return invalid(fn, "q->size does not match this library: call shmbus_request_init first"), false;
  if (q->token == 0 || q->token != r->pending.token)
    return invalid(fn, "the request is not the one pending (answered, skipped, or not from this responder)"),
           false;
  return true;
}
}  // namespace

void shmbus_requester_options_init(shmbus_requester_options_t* o, uint32_t size) {
  if (!o || size < sizeof(uint32_t)) return;
  shmbus_requester_options_t d{};
  shmbus::RequesterOptions cpp;
  d.size = uint32_t(std::min<size_t>(size, sizeof d));
  d.reply_topic = nullptr;
  d.capacity = cpp.reply_config.capacity;
  d.max_payload = cpp.reply_config.max_payload;
  d.max_in_flight = cpp.max_in_flight;
  d.block_timeout_ns = cpp.publisher.block_timeout_ns;
  d.open_timeout_ms = cpp.publisher.open_timeout_ms;
  std::memcpy(o, &d, d.size);
}

void shmbus_reply_init(shmbus_reply_t* r) {
  if (!r) return;
  std::memset(r, 0, sizeof *r);
  r->size = sizeof *r;
  shmbus_envelope_init(&r->envelope);
}

int shmbus_requester_open(shmbus_bus_t* bus, const shmbus_requester_options_t* opts,
                          shmbus_requester_t** out) {
  const char* fn = "shmbus_requester_open: ";
  if (!out) return invalid(fn, "out is NULL");
  *out = nullptr;
  if (!bus) return invalid(fn, "bus is NULL");
  SHIM_BEGIN
  shmbus::RequesterOptions o;
  if (opts) {
    // The fields present in the caller's struct (older, shorter structs keep working).
    constexpr uint32_t kMin = offsetof(shmbus_requester_options_t, block_timeout_ns) + 8;
    if (opts->size < kMin || opts->size > sizeof *opts)
      return invalid(fn, "opts->size is wrong: call shmbus_requester_options_init(&o, sizeof o) first");
    if (opts->reply_topic) o.reply_topic = opts->reply_topic;
    if (opts->capacity) o.reply_config.capacity = opts->capacity;
    o.reply_config.max_payload = opts->max_payload;
    if (opts->max_in_flight == 0) return invalid(fn, "opts->max_in_flight is 0");
    o.max_in_flight = opts->max_in_flight;
    if (opts->block_timeout_ns < 0) return invalid(fn, "opts->block_timeout_ns is negative");
    o.publisher.block_timeout_ns = opts->block_timeout_ns;
    if (opts->open_timeout_ms < 0) return invalid(fn, "opts->open_timeout_ms is negative");
    o.publisher.open_timeout_ms = opts->open_timeout_ms;
  }
  *out = new shmbus_requester{shmbus::Requester(bus->bus, std::move(o))};
  return SHMBUS_OK;
  SHIM_END("shmbus_requester_open")
}

void shmbus_requester_close(shmbus_requester_t* r) {
  try {
    delete r;
  } catch (...) {
  }
}

int shmbus_requester_send(shmbus_requester_t* r, const char* topic, const void* payload, size_t len,
                          uint64_t schema_id, const shmbus_envelope_t* trace, uint64_t* corr) {
  const char* fn = "shmbus_requester_send: ";
  if (corr) *corr = 0;
  if (!r || !topic || !corr || (!payload && len)) return invalid(fn, "r, topic, corr or payload is NULL");
  if (len > UINT32_MAX) return fail(SHMBUS_E_TOO_LARGE, fn, "payload over 4 GiB");
  SHIM_BEGIN
  std::optional<shmbus::TraceContext> t;
  if (trace) {
    if (!envelope_ok(trace, fn)) return SHMBUS_E_INVALID_ARGUMENT;
    if (trace->trace_flags > 255) return invalid(fn, "trace_flags is over 255");
    t = get_trace(trace);
    if (!t->valid()) return invalid(fn, "trace: no valid trace context (a zero trace id or parent id)");
  }
  const shmbus::Status s =
      r->r.send(topic, std::span<const std::byte>(static_cast<const std::byte*>(payload), len), *corr,
                schema_id, t ? &*t : nullptr);
  if (s == shmbus::Status::back_pressured)
    return fail(SHMBUS_E_BACK_PRESSURED, fn,
                "the service topic is full, or max_in_flight requests are waiting");
  return status(s);
  SHIM_END("shmbus_requester_send")
}

int shmbus_requester_await(shmbus_requester_t* r, uint64_t corr, int64_t timeout_ns, shmbus_reply_t* out) {
  const char* fn = "shmbus_requester_await: ";
  if (!r) {
    clear_reply(out);
    return invalid(fn, "r is NULL");
  }
  if (!reply_ok(out, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  shmbus_reply_init(out);
  SHIM_BEGIN
  return await_into(r, corr, timeout_ns, out);
  SHIM_END("shmbus_requester_await")
}

int shmbus_requester_request(shmbus_requester_t* r, const char* topic, const void* payload, size_t len,
                             uint64_t schema_id, int64_t timeout_ns, shmbus_reply_t* out, uint64_t* corr) {
  const char* fn = "shmbus_requester_request: ";
  if (corr) *corr = 0;
  if (!reply_ok(out, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  shmbus_reply_init(out);
  uint64_t c = 0;
  const int rc = shmbus_requester_send(r, topic, payload, len, schema_id, nullptr, &c);
  if (rc != SHMBUS_OK) return rc;
  if (corr) *corr = c;
  SHIM_BEGIN
  return await_into(r, c, timeout_ns, out);
  SHIM_END("shmbus_requester_request")
}

int shmbus_requester_forget(shmbus_requester_t* r, uint64_t corr) {
  if (!r) return invalid("shmbus_requester_forget: ", "r is NULL");
  r->r.forget(corr);
  return SHMBUS_OK;
}

const char* shmbus_requester_reply_topic(shmbus_requester_t* r) {
  return r ? r->r.reply_topic().c_str() : nullptr;
}

int shmbus_requester_stats(shmbus_requester_t* r, shmbus_requester_stats_t* out) {
  if (!r || !out) return invalid("shmbus_requester_stats: ", "r or out is NULL");
  const shmbus::RequesterStats& s = r->r.stats();
  *out = shmbus_requester_stats_t{s.sent,   s.replies,   s.timeouts,      s.stale,
                                  s.forged, s.malformed, r->r.in_flight()};
  return SHMBUS_OK;
}

int shmbus_requester_interrupt(shmbus_requester_t* r) {
  if (!r) return SHMBUS_E_INVALID_ARGUMENT;
  r->r.interrupt();
  return SHMBUS_OK;
}

void shmbus_request_init(shmbus_request_t* q) {
  if (!q) return;
  std::memset(q, 0, sizeof *q);
  q->size = sizeof *q;
  shmbus_envelope_init(&q->envelope);
}

int shmbus_responder_open(shmbus_bus_t* bus, const char* topic, const shmbus_subscriber_options_t* opts,
                          shmbus_responder_t** out) {
  const char* fn = "shmbus_responder_open: ";
  if (!out) return invalid(fn, "out is NULL");
  *out = nullptr;
  if (!bus || !topic) return invalid(fn, "bus or topic is NULL");
  SHIM_BEGIN
  shmbus::SubscriberOptions o;
  if (opts) {
    if (opts->size != sizeof *opts)
      return invalid(fn, "opts->size does not match this library: call shmbus_subscriber_options_init first");
    if (!valid_wait(opts->wait)) return invalid(fn, "opts->wait is not a SHMBUS_WAIT_*");
    if (opts->start != SHMBUS_START_LATEST) return invalid(fn, "a responder starts at SHMBUS_START_LATEST");
    if (opts->spin_ns < 0 || opts->open_timeout_ms < 0) return invalid(fn, "negative spin_ns or timeout");
    o.partition = opts->partition;
    o.tethered = opts->tethered != 0;
    o.wait = shmbus::WaitStrategy(opts->wait);
    o.spin_ns = opts->spin_ns;
    o.open_timeout_ms = opts->open_timeout_ms;
    if (opts->name) o.name = opts->name;
  }
  *out = new shmbus_responder{shmbus::Responder(bus->bus, topic, nullptr, o)};
  return SHMBUS_OK;
  SHIM_END("shmbus_responder_open")
}

void shmbus_responder_close(shmbus_responder_t* r) {
  try {
    delete r;
  } catch (...) {
  }
}

int shmbus_responder_next(shmbus_responder_t* r, int64_t timeout_ns, shmbus_request_t* out) {
  const char* fn = "shmbus_responder_next: ";
  if (!r || !out) return invalid(fn, "r or out is NULL");
  if (out->size != sizeof *out)
    return invalid(fn, "out->size does not match this library: call shmbus_request_init first");
  shmbus_request_init(out);
  SHIM_BEGIN
  r->pending = shmbus::PendingRequest{};
  shmbus::PendingRequest p;
  const shmbus::Status s = r->r.next(timeout_ns, p);
  if (s != shmbus::Status::ok) {
    if (s == shmbus::Status::malformed)
      return fail(SHMBUS_E_MALFORMED, fn, "a frame that is no valid envelope was skipped (counted)");
    return status(s);
  }
  r->pending = p;
  out->enveloped = p.enveloped ? 1 : 0;
  out->token = p.token;
  out->message_id = p.frame.message_id();
  out->producer_id = p.frame.producer_id();
  fill_view(&out->payload, p.payload);
  if (p.enveloped) fill_envelope(&out->envelope, p.envelope, p.payload.schema_id());
  return SHMBUS_OK;
  SHIM_END("shmbus_responder_next")
}

int shmbus_responder_reply(shmbus_responder_t* r, const shmbus_request_t* q, const void* payload, size_t len,
                           uint64_t schema_id, uint32_t status_) {
  const char* fn = "shmbus_responder_reply: ";
  if (!pending_ok(r, q, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  if (!payload && len) return invalid(fn, "payload is NULL");
  SHIM_BEGIN
  shmbus::Response resp;
  const auto* b = static_cast<const std::byte*>(payload);
  resp.payload.assign(b, b + len);
  resp.schema_id = schema_id;
  resp.status = status_;
  const shmbus::PendingRequest p = std::move(r->pending);
  r->pending = shmbus::PendingRequest{};
  return outcome_code(r->r.reply(p, resp), fn);
  SHIM_END("shmbus_responder_reply")
}

int shmbus_responder_fail(shmbus_responder_t* r, const shmbus_request_t* q, const char* why) {
  const char* fn = "shmbus_responder_fail: ";
  if (!pending_ok(r, q, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  SHIM_BEGIN
  const shmbus::PendingRequest p = std::move(r->pending);
  r->pending = shmbus::PendingRequest{};
  return outcome_code(r->r.fail(p, why ? why : ""), fn);
  SHIM_END("shmbus_responder_fail")
}

int shmbus_responder_skip(shmbus_responder_t* r, const shmbus_request_t* q) {
  const char* fn = "shmbus_responder_skip: ";
  if (!pending_ok(r, q, fn)) return SHMBUS_E_INVALID_ARGUMENT;
  SHIM_BEGIN
  const shmbus::PendingRequest p = std::move(r->pending);
  r->pending = shmbus::PendingRequest{};
  return outcome_code(r->r.skip(p), fn);
  SHIM_END("shmbus_responder_skip")
}

int shmbus_responder_stats(shmbus_responder_t* r, shmbus_responder_stats_t* out) {
  if (!r || !out) return invalid("shmbus_responder_stats: ", "r or out is NULL");
  const shmbus::ResponderStats& s = r->r.stats();
  *out = shmbus_responder_stats_t{s.requests, s.replied,   s.no_reply_to, s.undeliverable,
                                  s.refused,  s.malformed, s.failed};
  return SHMBUS_OK;
}

int shmbus_responder_interrupt(shmbus_responder_t* r) {
  if (!r) return SHMBUS_E_INVALID_ARGUMENT;
  r->r.interrupt();
  return SHMBUS_OK;
}

// ---- Cap'n Proto helpers ------------------------------------------------------------------
int shmbus_view_segments(const shmbus_view_t* v, const uint8_t** seg0, uint32_t* seg0_words,
                         uint32_t* segment_count) {
  if (seg0) *seg0 = nullptr;
  if (seg0_words) *seg0_words = 0;
  if (segment_count) *segment_count = 0;
  if (!v || !seg0 || !seg0_words) {
    set_static("view_segments: v, seg0 or seg0_words is NULL");
    return SHMBUS_E_INVALID_ARGUMENT;
  }
  if (!v->data || v->size < 8 || (v->size & 7)) {
    set_static("view_segments: payload is not a whole number of words");
    return SHMBUS_E_MALFORMED;
  }
  // The bytes come from another process: bound everything by the view's size.
  uint32_t first[2];
  std::memcpy(first, v->data, 8);
  const uint64_t count = uint64_t(first[0]) + 1;
  const uint64_t table_bytes = ((count + 1) * 4 + 7) & ~uint64_t(7);
  if (table_bytes > v->size) {
    set_static("view_segments: segment table larger than the payload");
    return SHMBUS_E_MALFORMED;
  }
  uint64_t total = table_bytes;
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t w;
    std::memcpy(&w, v->data + 4 + 4 * i, 4);
    total += uint64_t(w) * 8;
    if (total > v->size) {
      set_static("view_segments: segments extend past the payload");
      return SHMBUS_E_MALFORMED;
    }
  }
  *seg0 = v->data + table_bytes;
  *seg0_words = first[1];
  if (segment_count) *segment_count = uint32_t(count);
  return SHMBUS_OK;
}

}  // extern "C"
