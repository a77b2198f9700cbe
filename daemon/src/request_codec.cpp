// Decoding and validating control requests. Bytes from a client are hostile:
// the frame is checked (control::decode_frame: size, magic, segment table, a full
// traversal under limits) and then every field the daemon will use is range
// checked here, before any other thread sees the request.
#include <kj/exception.h>

#include "core.hpp"

namespace shmbus::daemon {

std::vector<uint8_t> error_frame(uint64_t id, proto::ErrorCode code, const std::string& msg) {
  capnp::MallocMessageBuilder mb(256);
  auto r = mb.initRoot<proto::Response>();
  r.setId(id);
  auto e = r.initError();
  e.setCode(code);
  e.setMessage(msg.size() > 1000 ? msg.substr(0, 1000) : msg);
  return control::encode_frame(mb);
}

namespace {
bool pow2(uint64_t v) { return v && !(v & (v - 1)); }

bool read_list(capnp::List<uint32_t>::Reader l, std::vector<uint32_t>& out, std::string& err) {
  if (l.size() > 256) {
    err = "access list longer than 256 entries";
    return false;
  }
  for (uint32_t v : l) out.push_back(v);
  return true;
}
}  // namespace

bool spec_from_proto(proto::TopicSpec::Reader s, TopicSettings& t, std::string& err) {
  if (!s.hasName()) {
    err = "topic name missing";
    return false;
  }
  auto name = s.getName();
  t.name.assign(name.cStr(), name.size());
  if (!valid_topic_name(t.name) || t.name.find('\0') != std::string::npos) {
    err = "invalid topic name (1-200 chars of [A-Za-z0-9._-], not starting with '.')";
    return false;
  }
  t.partitions = s.getPartitions();
  t.capacity = s.getCapacity();
  t.max_payload = s.getMaxPayload();
  t.multi_producer = s.getMultiProducer();
  t.slots = s.getSlots();
  t.schema_id = s.getSchemaId();
  auto pol = s.getPolicy();
  if (pol != proto::Policy::BLOCK && pol != proto::Policy::FAIL && pol != proto::Policy::SPILL) {
    err = "policy must be block, fail or spill";
    return false;
  }
  t.policy = uint32_t(pol);
  // Durable topics. Fields an old client does not send read as their defaults
  // (not durable; interval 10 ms), so old requests mean what they meant.
  t.durable = s.getDurable() || pol == proto::Policy::SPILL;
  t.ephemeral = s.getEphemeral();
  if (uint16_t(s.getSchemaMode()) > uint16_t(proto::SchemaMode::NONE)) {
    err = "schemaMode must be backward, forward, full or none";
    return false;
  }
  t.schema_mode = uint32_t(s.getSchemaMode());
  if (t.ephemeral && t.durable) {
    err = "an ephemeral topic cannot be durable (it ends with its creator's connection)";
    return false;
  }
  auto fl = s.getFlush();
  if (fl != proto::FlushPolicy::NONE && fl != proto::FlushPolicy::INTERVAL &&
      fl != proto::FlushPolicy::BATCH) {
    err = "flush must be none, interval or batch";
    return false;
  }
  t.flush = uint32_t(fl);
  t.flush_interval_ms = s.getFlushIntervalMs();
  t.retention_bytes = s.getRetentionBytes();
  t.retention_age_s = s.getRetentionAgeS();
  t.segment_bytes = s.getSegmentBytes();
  if (t.durable) {
    if (t.flush == uint32_t(proto::FlushPolicy::INTERVAL) &&
        (t.flush_interval_ms == 0 || t.flush_interval_ms > 3'600'000)) {
      err = "flushIntervalMs must be 1..3600000";
      return false;
    }
    if (t.segment_bytes != 0 && (t.segment_bytes < 65536 || t.segment_bytes > (1ull << 32))) {
      err = "segmentBytes must be 0 (default) or 64 KiB..4 GiB";
      return false;
    }
    if (t.retention_age_s > (1ull << 40)) {
      err = "retentionAgeS out of range";
      return false;
    }
  } else {
    t.flush = uint32_t(proto::FlushPolicy::INTERVAL);
    t.flush_interval_ms = 10;
    t.retention_bytes = t.retention_age_s = t.segment_bytes = 0;
  }
  if (t.partitions == 0 || t.partitions > 1024) {
    err = "partitions must be 1..1024";
    return false;
  }
  if (!pow2(t.capacity) || t.capacity < 4096 || t.capacity > (1ull << 36)) {
    err = "capacity must be a power of two between 4 KiB and 64 GiB";
    return false;
  }
  if (t.max_payload > t.capacity / 4) {
    err = "max_payload must be at most capacity/4";
    return false;
  }
  if (t.slots == 0 || t.slots > shmbus::shm::kMaxSlots) {
    err = "slots must be 1..512";
    return false;
  }
  if (s.hasAccess()) {
    auto a = s.getAccess();
    if (!read_list(a.getPublishUids(), t.access.publish_uids, err) ||
        !read_list(a.getPublishGids(), t.access.publish_gids, err) ||
        !read_list(a.getSubscribeUids(), t.access.subscribe_uids, err) ||
        !read_list(a.getSubscribeGids(), t.access.subscribe_gids, err))
      return false;
  }
  return true;
}

void spec_to_proto(const TopicSettings& t, proto::TopicSpec::Builder s) {
  s.setName(t.name);
  s.setPartitions(t.partitions);
  s.setCapacity(t.capacity);
  s.setMaxPayload(t.max_payload ? t.max_payload : t.capacity / 4);
  s.setPolicy(proto::Policy(uint16_t(t.policy)));
  s.setMultiProducer(t.multi_producer);
  s.setSlots(t.slots);
  s.setSchemaId(t.schema_id);
  s.setDurable(t.is_durable());
  s.setFlush(proto::FlushPolicy(uint16_t(t.flush)));
  s.setFlushIntervalMs(t.flush_interval_ms);
  s.setRetentionBytes(t.retention_bytes);
  s.setRetentionAgeS(t.retention_age_s);
  s.setSegmentBytes(t.segment_bytes);
  s.setEphemeral(t.ephemeral);
  s.setSchemaMode(proto::SchemaMode(uint16_t(t.schema_mode)));
  auto a = s.initAccess();
  auto put = [](auto l, const std::vector<uint32_t>& v) {
    for (size_t i = 0; i < v.size(); ++i) l.set(uint32_t(i), v[i]);
  };
  put(a.initPublishUids(uint32_t(t.access.publish_uids.size())), t.access.publish_uids);
  put(a.initPublishGids(uint32_t(t.access.publish_gids.size())), t.access.publish_gids);
  put(a.initSubscribeUids(uint32_t(t.access.subscribe_uids.size())), t.access.subscribe_uids);
  put(a.initSubscribeGids(uint32_t(t.access.subscribe_gids.size())), t.access.subscribe_gids);
}

bool decode_request(std::span<const uint8_t> frame, DecodedRequest& out, proto::ErrorCode& code,
                    std::string& err, uint64_t& id) {
  id = 0;
  code = proto::ErrorCode::PROTOCOL;
  if (!control::decode_frame(frame, out.msg, err)) {
    if (frame.size() > control::kMaxFrame) code = proto::ErrorCode::TOO_LARGE;
    return false;
  }
  try {
    auto r = out.root();
    id = r.getId();
    if (r.getVersion() != proto::PROTOCOL_VERSION) {
      code = proto::ErrorCode::UNSUPPORTED_VERSION;
      err = "protocol version " + std::to_string(r.getVersion()) + " not supported (daemon speaks " +
            std::to_string(proto::PROTOCOL_VERSION) + ")";
      return false;
    }
    code = proto::ErrorCode::INVALID_ARGUMENT;
    auto text_ok = [&](capnp::Text::Reader t, const char* what) {
      if (t.size() > 256) {
        err = std::string(what) + " longer than 256 bytes";
        return false;
      }
      return true;
    };
    switch (r.which()) {
      case proto::Request::HELLO:
      case proto::Request::LIST_TOPICS:
      case proto::Request::HEALTH: break;
      case proto::Request::CREATE_TOPIC: {
        TopicSettings t;
        if (!spec_from_proto(r.getCreateTopic(), t, err)) return false;
        break;
      }
      case proto::Request::DESCRIBE_TOPIC:
        if (!text_ok(r.getDescribeTopic(), "topic")) return false;
        break;
      case proto::Request::DELETE_TOPIC:
        if (!text_ok(r.getDeleteTopic(), "topic")) return false;
        break;
      case proto::Request::STAT:
        if (!text_ok(r.getStat(), "topic")) return false;
        break;
      case proto::Request::OPEN: {
        auto o = r.getOpen();
        if (!text_ok(o.getTopic(), "topic") || !text_ok(o.getDurableName(), "durable name")) return false;
        auto role = o.getRole();
        if (role != proto::Role::PUBLISHER && role != proto::Role::SUBSCRIBER && role != proto::Role::ADMIN) {
          err = "unknown role";
          return false;
        }
        break;
      }
      case proto::Request::LIST_PAGE:
        if (!text_ok(r.getListPage().getAfter(), "page start")) return false;
        break;
      case proto::Request::STAT_PAGE:
        if (!text_ok(r.getStatPage().getAfter(), "page start")) return false;
        break;
      case proto::Request::SAVE_CURSOR:
        if (!text_ok(r.getSaveCursor().getName(), "durable name") ||
            !text_ok(r.getSaveCursor().getTopic(), "topic"))
          return false;
        break;
      case proto::Request::JOIN:
        if (!text_ok(r.getJoin().getTopic(), "topic") ||
            !text_ok(r.getJoin().getDurableName(), "durable name"))
          return false;
        break;
      case proto::Request::LEAVE:
        if (!text_ok(r.getLeave().getTopic(), "topic")) return false;
        break;
      case proto::Request::CURSOR_PAGE:
        if (!text_ok(r.getCursorPage().getTopic(), "topic")) return false;
        break;
      case proto::Request::REGISTER_SCHEMA: {
        auto s = r.getRegisterSchema();
        if (!text_ok(s.getTopic(), "topic")) return false;
        if (s.getNodes().size() > kMaxSchemaBytes) {
          err = "schema nodes larger than " + std::to_string(kMaxSchemaBytes) + " bytes";
          return false;
        }
        if (s.getRole() != proto::Role::PUBLISHER && s.getRole() != proto::Role::SUBSCRIBER) {
          err = "registerSchema: role must be publisher or subscriber";
          return false;
        }
        break;
      }
      case proto::Request::SCHEMA_HISTORY:
        if (!text_ok(r.getSchemaHistory().getTopic(), "topic")) return false;
        break;
      case proto::Request::SET_SCHEMA_MODE:
        if (!text_ok(r.getSetSchemaMode().getTopic(), "topic")) return false;
        if (uint16_t(r.getSetSchemaMode().getMode()) > uint16_t(proto::SchemaMode::NONE)) {
          err = "setSchemaMode: mode must be backward, forward, full or none";
          return false;
        }
        break;
      case proto::Request::PRODUCER:
        if (!text_ok(r.getProducer().getTopic(), "topic")) return false;
        break;
      case proto::Request::GROUP_JOIN:
      case proto::Request::GROUP_SYNC:
      case proto::Request::GROUP_LEAVE: {
        auto g = r.which() == proto::Request::GROUP_JOIN   ? r.getGroupJoin()
                 : r.which() == proto::Request::GROUP_SYNC ? r.getGroupSync()
                                                           : r.getGroupLeave();
        if (!text_ok(g.getTopic(), "topic") || !text_ok(g.getGroup(), "group")) return false;
        break;
      }
      default: err = "unknown request type"; return false;
    }
  } catch (const kj::Exception& e) {
    code = proto::ErrorCode::PROTOCOL;
    err = std::string("malformed request: ") + e.getDescription().cStr();
    return false;
  }
  return true;
}

}  // namespace shmbus::daemon
