#include "shmbus/bus.hpp"
#include "shmbus/replay.hpp"

#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"

namespace shmbus {

Bus Bus::direct(const Options& opts) { return Bus(make_direct_provider(opts.shm_prefix)); }

void Bus::create_topic(const std::string& topic, const TopicConfig& cfg) {
  provider_->create_topic(topic, cfg);
}

void Bus::remove_topic(const std::string& topic) { provider_->remove_topic(topic); }

uint32_t Bus::partitions(const std::string& topic) { return provider_->partitions(topic); }

uint32_t Bus::register_schema(const std::string& topic, const SchemaNodes& nodes, bool check_only) {
  return provider_->register_schema(topic, nodes, Role::publisher, check_only);
}

void Bus::set_schema_mode(const std::string& topic, TopicConfig::SchemaMode mode) {
  provider_->set_schema_mode(topic, mode);
}

Publisher Bus::publisher(const std::string& topic, const PublisherOptions& opts) {
  if (opts.schema) provider_->register_schema(topic, opts.schema, Role::publisher, false);
  return Publisher(provider_->open(topic, opts.partition, Role::publisher, opts.open_timeout_ms), opts);
}
Publisher Bus::publisher(const std::string& topic) { return publisher(topic, PublisherOptions{}); }

Subscriber Bus::subscriber(const std::string& topic, const SubscriberOptions& opts) {
  if (opts.schema) provider_->register_schema(topic, opts.schema, Role::subscriber, false);
  // Policy `spill`: an anonymous tethered subscriber would hold the producer back;
  // it reads untethered from the tail instead and falls back to the log when
  // overtaken (ReplaySubscriber). A named one keeps its exact saved position in a
  // tethered slot (docs/spill-log.md).
  if (opts.log_fallback && opts.tethered && opts.name.empty()) {
    if (std::string dir = provider_->spill_log_dir(topic); !dir.empty()) {
      ReplayOptions ro;
      ro.partition = opts.partition;
      ro.start = StartAt::latest();
      ro.state_dir = std::move(dir);
      ro.wait = opts.wait;
      ro.spin_ns = opts.spin_ns;
      ro.open_timeout_ms = opts.open_timeout_ms;
      return Subscriber(std::make_unique<ReplaySubscriber>(replay_subscriber(*this, topic, ro)), opts);
    }
  }
  return Subscriber(provider_->open(topic, opts.partition, Role::subscriber, opts.open_timeout_ms), opts,
                    provider_);
}
Subscriber Bus::subscriber(const std::string& topic) { return subscriber(topic, SubscriberOptions{}); }

}  // namespace shmbus
