#include "shmbus/bus.hpp"

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

Publisher Bus::publisher(const std::string& topic, const PublisherOptions& opts) {
  if (opts.schema) provider_->register_schema(topic, opts.schema, Role::publisher, false);
  return Publisher(provider_->open(topic, opts.partition, Role::publisher, opts.open_timeout_ms), opts);
}
Publisher Bus::publisher(const std::string& topic) { return publisher(topic, PublisherOptions{}); }

Subscriber Bus::subscriber(const std::string& topic, const SubscriberOptions& opts) {
  if (opts.schema) provider_->register_schema(topic, opts.schema, Role::subscriber, false);
  return Subscriber(provider_->open(topic, opts.partition, Role::subscriber, opts.open_timeout_ms), opts,
                    provider_);
}
Subscriber Bus::subscriber(const std::string& topic) { return subscriber(topic, SubscriberOptions{}); }

}  // namespace shmbus
