// shmbus.h compiled as C++ with -Werror (-Wall -Wextra -pedantic): the header must
// stay valid, warning-free C++ and keep its layout (the Go and Rust bindings mirror
// these structs byte for byte).
#include "shmbus.h"

#include <cstddef>
#include <cstdio>

static_assert(sizeof(shmbus_topic_config_t) == 48);
static_assert(offsetof(shmbus_topic_config_t, capacity) == 8);
static_assert(offsetof(shmbus_topic_config_t, schema_id) == 40);
static_assert(sizeof(shmbus_publisher_options_t) == 32);
static_assert(offsetof(shmbus_publisher_options_t, block_timeout_ns) == 16);
static_assert(sizeof(shmbus_claim_t) == 24);
static_assert(offsetof(shmbus_claim_t, sequence) == 16);
static_assert(sizeof(shmbus_publisher_stats_t) == 40);
static_assert(sizeof(shmbus_subscriber_options_t) == 48);
static_assert(offsetof(shmbus_subscriber_options_t, spin_ns) == 16);
static_assert(offsetof(shmbus_subscriber_options_t, start_value) == 32);
static_assert(offsetof(shmbus_subscriber_options_t, name) == 40);
static_assert(sizeof(shmbus_view_t) == 64);
static_assert(offsetof(shmbus_view_t, sequence) == 16);
static_assert(offsetof(shmbus_view_t, next_position) == 56);
static_assert(sizeof(shmbus_subscriber_stats_t) == 32);
// ABI 1.2: appended fields only from here on (the struct is versioned by its size).
static_assert(sizeof(shmbus_durable_config_t) == 40);
static_assert(offsetof(shmbus_durable_config_t, flush_interval_ms) == 12);
static_assert(offsetof(shmbus_durable_config_t, retention_bytes) == 16);
static_assert(offsetof(shmbus_durable_config_t, segment_bytes) == 32);
// ABI 1.4: consumer groups.
static_assert(sizeof(shmbus_group_options_t) == 40);
static_assert(offsetof(shmbus_group_options_t, spin_ns) == 16);
static_assert(offsetof(shmbus_group_options_t, idle_sync_ns) == 32);
static_assert(sizeof(shmbus_group_view_t) == 72);
static_assert(offsetof(shmbus_group_view_t, partition) == 64);
static_assert(sizeof(shmbus_group_stats_t) == 72);
static_assert(offsetof(shmbus_group_stats_t, member_id) == 56);
static_assert(offsetof(shmbus_group_stats_t, assigned) == 68);
static_assert(SHMBUS_FLUSH_NONE == 0 && SHMBUS_FLUSH_INTERVAL == 1 && SHMBUS_FLUSH_BATCH == 2);
// ABI 1.7: schema modes (the values of the protocol's SchemaMode).
static_assert(SHMBUS_SCHEMA_BACKWARD == 0 && SHMBUS_SCHEMA_FORWARD == 1 && SHMBUS_SCHEMA_FULL == 2 &&
              SHMBUS_SCHEMA_NONE == 3);
static_assert(SHMBUS_E_EMPTY <= -10000 && SHMBUS_E_UNSUPPORTED <= -10000);

int main() {
  if (shmbus_abi_version() != SHMBUS_ABI_VERSION) {
    std::fprintf(stderr, "ABI version mismatch: library %u, header %d\n", shmbus_abi_version(),
                 SHMBUS_ABI_VERSION);
    return 1;
  }
  shmbus_bus_t* bus = nullptr;
  if (shmbus_bus_open_direct("bad/prefix", &bus) != SHMBUS_E_INVALID_ARGUMENT || bus) return 1;
  std::printf("header_cxx_test: ok\n");
  return 0;
}
