/* Layout probe: compiled against the real shmbus.h by build.rs, run at build time;
 * prints Rust tables of sizeof / _Alignof / offsetof and constant values that
 * tests/layout.rs compares with the Rust declarations. */
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>

#include "shmbus.h"

#define SIZE(T) printf("    (\"%s\", %zu, %zu),\n", #T, sizeof(T), alignof(T))
#define OFF(T, F) printf("    (\"%s\", \"%s\", %zu, %zu),\n", #T, #F, offsetof(T, F), sizeof(((T*)0)->F))
#define CONST(C) printf("    (\"%s\", %lld),\n", #C, (long long)(C))

int main(void) {
  printf("pub const C_SIZES: &[(&str, usize, usize)] = &[\n");
  SIZE(shmbus_topic_config_t);
  SIZE(shmbus_publisher_options_t);
  SIZE(shmbus_claim_t);
  SIZE(shmbus_publisher_stats_t);
  SIZE(shmbus_subscriber_options_t);
  SIZE(shmbus_view_t);
  SIZE(shmbus_subscriber_stats_t);
  SIZE(shmbus_durable_config_t);
  SIZE(shmbus_group_options_t);
  SIZE(shmbus_group_view_t);
  SIZE(shmbus_group_stats_t);
  SIZE(shmbus_envelope_t);
  SIZE(shmbus_dedup_stats_t);
  printf("];\n");

  printf("pub const C_OFFSETS: &[(&str, &str, usize, usize)] = &[\n");
  OFF(shmbus_topic_config_t, size);
  OFF(shmbus_topic_config_t, partitions);
  OFF(shmbus_topic_config_t, capacity);
  OFF(shmbus_topic_config_t, max_payload);
  OFF(shmbus_topic_config_t, policy);
  OFF(shmbus_topic_config_t, multi_producer);
  OFF(shmbus_topic_config_t, slots);
  OFF(shmbus_topic_config_t, mode);
  OFF(shmbus_topic_config_t, schema_id);
  OFF(shmbus_publisher_options_t, size);
  OFF(shmbus_publisher_options_t, partition);
  OFF(shmbus_publisher_options_t, producer_id);
  OFF(shmbus_publisher_options_t, wait);
  OFF(shmbus_publisher_options_t, block_timeout_ns);
  OFF(shmbus_publisher_options_t, open_timeout_ms);
  OFF(shmbus_publisher_options_t, reserved);
  OFF(shmbus_claim_t, data);
  OFF(shmbus_claim_t, size);
  OFF(shmbus_claim_t, reserved);
  OFF(shmbus_claim_t, sequence);
  OFF(shmbus_publisher_stats_t, published);
  OFF(shmbus_publisher_stats_t, back_pressured);
  OFF(shmbus_publisher_stats_t, blocked_waits);
  OFF(shmbus_publisher_stats_t, builder_fallbacks);
  OFF(shmbus_publisher_stats_t, reclaimed_cursors);
  OFF(shmbus_subscriber_options_t, size);
  OFF(shmbus_subscriber_options_t, partition);
  OFF(shmbus_subscriber_options_t, tethered);
  OFF(shmbus_subscriber_options_t, wait);
  OFF(shmbus_subscriber_options_t, spin_ns);
  OFF(shmbus_subscriber_options_t, open_timeout_ms);
  OFF(shmbus_subscriber_options_t, start);
  OFF(shmbus_subscriber_options_t, start_value);
  OFF(shmbus_subscriber_options_t, name);
  OFF(shmbus_view_t, data);
  OFF(shmbus_view_t, size);
  OFF(shmbus_view_t, producer_id);
  OFF(shmbus_view_t, sequence);
  OFF(shmbus_view_t, timestamp_ns);
  OFF(shmbus_view_t, message_id);
  OFF(shmbus_view_t, schema_id);
  OFF(shmbus_view_t, position);
  OFF(shmbus_view_t, next_position);
  OFF(shmbus_subscriber_stats_t, received);
  OFF(shmbus_subscriber_stats_t, waits);
  OFF(shmbus_subscriber_stats_t, corrupt);
  OFF(shmbus_subscriber_stats_t, position);
  OFF(shmbus_durable_config_t, size);
  OFF(shmbus_durable_config_t, durable);
  OFF(shmbus_durable_config_t, flush);
  OFF(shmbus_durable_config_t, flush_interval_ms);
  OFF(shmbus_durable_config_t, retention_bytes);
  OFF(shmbus_durable_config_t, retention_age_s);
  OFF(shmbus_durable_config_t, segment_bytes);
  OFF(shmbus_group_options_t, size);
  OFF(shmbus_group_options_t, tethered);
  OFF(shmbus_group_options_t, wait);
  OFF(shmbus_group_options_t, open_timeout_ms);
  OFF(shmbus_group_options_t, spin_ns);
  OFF(shmbus_group_options_t, sync_interval_ns);
  OFF(shmbus_group_options_t, idle_sync_ns);
  OFF(shmbus_group_view_t, view);
  OFF(shmbus_group_view_t, partition);
  OFF(shmbus_group_view_t, reserved);
  OFF(shmbus_group_stats_t, received);
  OFF(shmbus_group_stats_t, syncs);
  OFF(shmbus_group_stats_t, rebalances);
  OFF(shmbus_group_stats_t, taken);
  OFF(shmbus_group_stats_t, given_up);
  OFF(shmbus_group_stats_t, take_retries);
  OFF(shmbus_group_stats_t, rejoins);
  OFF(shmbus_group_stats_t, member_id);
  OFF(shmbus_group_stats_t, generation);
  OFF(shmbus_group_stats_t, assigned);
  OFF(shmbus_envelope_t, size);
  OFF(shmbus_envelope_t, content_version);
  OFF(shmbus_envelope_t, correlation_id);
  OFF(shmbus_envelope_t, causation_id);
  OFF(shmbus_envelope_t, payload_schema_id);
  OFF(shmbus_envelope_t, trace_id_high);
  OFF(shmbus_envelope_t, trace_id_low);
  OFF(shmbus_envelope_t, trace_parent_id);
  OFF(shmbus_envelope_t, trace_flags);
  OFF(shmbus_envelope_t, status);
  OFF(shmbus_envelope_t, reply_to);
  OFF(shmbus_envelope_t, trace_state);
  OFF(shmbus_envelope_t, reserved);
  OFF(shmbus_dedup_stats_t, by_position);
  OFF(shmbus_dedup_stats_t, by_id);
  OFF(shmbus_dedup_stats_t, position);
  OFF(shmbus_dedup_stats_t, size);
  printf("];\n");

  printf("pub const C_CONSTS: &[(&str, i64)] = &[\n");
  CONST(SHMBUS_ABI_VERSION);
  CONST(SHMBUS_OK);
  CONST(SHMBUS_E_EMPTY);
  CONST(SHMBUS_E_BACK_PRESSURED);
  CONST(SHMBUS_E_TIMED_OUT);
  CONST(SHMBUS_E_TOO_LARGE);
  CONST(SHMBUS_E_CORRUPT);
  CONST(SHMBUS_E_MALFORMED);
  CONST(SHMBUS_E_CLOSED);
  CONST(SHMBUS_E_INVALID_ARGUMENT);
  CONST(SHMBUS_E_NOT_FOUND);
  CONST(SHMBUS_E_ALREADY_EXISTS);
  CONST(SHMBUS_E_INCOMPATIBLE);
  CONST(SHMBUS_E_PERMISSION_DENIED);
  CONST(SHMBUS_E_NO_SLOT);
  CONST(SHMBUS_E_PROTOCOL);
  CONST(SHMBUS_E_NOT_CONNECTED);
  CONST(SHMBUS_E_INTERNAL);
  CONST(SHMBUS_E_UNSUPPORTED);
  CONST(SHMBUS_E_LAPPED);
  CONST(SHMBUS_POLICY_BLOCK);
  CONST(SHMBUS_POLICY_FAIL);
  CONST(SHMBUS_POLICY_SPILL);
  CONST(SHMBUS_WAIT_BUSY_SPIN);
  CONST(SHMBUS_WAIT_SPIN_YIELD);
  CONST(SHMBUS_WAIT_FUTEX);
  CONST(SHMBUS_WAIT_HYBRID);
  CONST(SHMBUS_START_LATEST);
  CONST(SHMBUS_START_EARLIEST);
  CONST(SHMBUS_START_SEQUENCE);
  CONST(SHMBUS_START_TIME);
  CONST(SHMBUS_FLUSH_NONE);
  CONST(SHMBUS_FLUSH_INTERVAL);
  CONST(SHMBUS_FLUSH_BATCH);
  CONST(SHMBUS_ENVELOPE_SCHEMA_ID);
  CONST(SHMBUS_MAX_REPLY_TO);
  CONST(SHMBUS_MAX_TRACE_STATE);
  CONST(SHMBUS_TRACEPARENT_LEN);
  printf("];\n");
  return 0;
}
