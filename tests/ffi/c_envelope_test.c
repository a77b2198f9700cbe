/* The envelope through the C ABI (SHMBUS_1.4), on a direct bus: W3C traceparent
 * parse/format/fresh/child; every field and the payload round-trip through a ring
 * (payload read in place, its own schema id); a plain frame opens as itself; a frame
 * flagged as an envelope over garbage is MALFORMED; bad structs are refused.
 * Segments use a per-process prefix and are removed at the end. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmbus.h"

#include "c_check.h"

static const char* kTp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

int main(void) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "cenv-%d", (int)getpid());

  /* ---- trace context ---- */
  shmbus_envelope_t e;
  memset(&e, 0xff, sizeof e);
  shmbus_envelope_init(&e);
  CHECK(e.size == sizeof e && e.correlation_id == 0 && e.reply_to[0] == 0 && e.trace_parent_id == 0);
  CHECK_RC(shmbus_trace_parse(kTp, &e), SHMBUS_OK);
  CHECK(e.trace_id_high == 0x4bf92f3577b34da6ull && e.trace_id_low == 0xa3ce929d0e0e4736ull &&
        e.trace_parent_id == 0x00f067aa0ba902b7ull && e.trace_flags == 1);
  char tp[SHMBUS_TRACEPARENT_LEN + 1];
  CHECK_RC(shmbus_trace_format(&e, tp, sizeof tp), SHMBUS_OK);
  CHECK(strcmp(tp, kTp) == 0);
  CHECK_RC(shmbus_trace_format(&e, tp, sizeof tp - 1), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_envelope_t bad;
  shmbus_envelope_init(&bad);
  CHECK_RC(shmbus_trace_parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", &bad),
           SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_trace_parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", &bad),
           SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_trace_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", &bad),
           SHMBUS_E_INVALID_ARGUMENT);
  CHECK(bad.trace_parent_id == 0);
  CHECK_RC(shmbus_trace_format(&bad, tp, sizeof tp), SHMBUS_E_INVALID_ARGUMENT); /* no trace */
  CHECK_RC(shmbus_trace_child(&bad), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_envelope_t f1, f2;
  shmbus_envelope_init(&f1);
  shmbus_envelope_init(&f2);
  CHECK_RC(shmbus_trace_fresh(&f1), SHMBUS_OK);
  CHECK_RC(shmbus_trace_fresh(&f2), SHMBUS_OK);
  CHECK((f1.trace_id_high | f1.trace_id_low) != 0 && f1.trace_parent_id != 0 && f1.trace_flags == 1);
  CHECK(f1.trace_id_high != f2.trace_id_high || f1.trace_id_low != f2.trace_id_low);
  shmbus_envelope_t child = e;
  CHECK_RC(shmbus_trace_child(&child), SHMBUS_OK);
  CHECK(child.trace_id_high == e.trace_id_high && child.trace_id_low == e.trace_id_low &&
        child.trace_parent_id != e.trace_parent_id && child.trace_parent_id != 0);

  /* ---- through a ring ---- */
  shmbus_bus_t* bus = NULL;
  CHECK_RC(shmbus_bus_open_direct(prefix, &bus), SHMBUS_OK);
  if (!bus) return 1;
  shmbus_topic_config_t cfg;
  shmbus_topic_config_init(&cfg);
  cfg.capacity = 1 << 16;
  CHECK_RC(shmbus_topic_create(bus, "c.env", &cfg), SHMBUS_OK);
  shmbus_publisher_t* pub = NULL;
  shmbus_subscriber_t* sub = NULL;
  CHECK_RC(shmbus_subscriber_open(bus, "c.env", NULL, &sub), SHMBUS_OK);
  CHECK_RC(shmbus_publisher_open(bus, "c.env", NULL, &pub), SHMBUS_OK);
  if (!pub || !sub) return 1;

  e.correlation_id = 42;
  e.causation_id = 41;
  e.content_version = 3;
  e.status = 404;
  e.payload_schema_id = 0x1234abcdull;
  strcpy(e.reply_to, "orders.reply");
  strcpy(e.trace_state, "congo=t61rcWkgMzE");
  const char payload[] = "an order, 24 bytes long!";
  CHECK_RC(shmbus_publisher_offer_enveloped(pub, &e, payload, 24, 7), SHMBUS_OK);
  shmbus_view_t v, p;
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK(v.schema_id == SHMBUS_ENVELOPE_SCHEMA_ID && v.message_id == 7 && v.size > 24);
  shmbus_envelope_t got;
  memset(&got, 0xee, sizeof got);
  got.size = sizeof got;
  int env = -1;
  CHECK_RC(shmbus_view_open_envelope(&v, &got, &p, &env), SHMBUS_OK);
  CHECK(env == 1);
  CHECK(got.correlation_id == 42 && got.causation_id == 41 && got.content_version == 3 && got.status == 404 &&
        got.payload_schema_id == 0x1234abcdull);
  CHECK(strcmp(got.reply_to, "orders.reply") == 0 && strcmp(got.trace_state, "congo=t61rcWkgMzE") == 0);
  CHECK(got.trace_id_high == e.trace_id_high && got.trace_id_low == e.trace_id_low &&
        got.trace_parent_id == e.trace_parent_id && got.trace_flags == 1);
  CHECK(p.size == 24 && memcmp(p.data, payload, 24) == 0);
  CHECK(p.data >= v.data && p.data + p.size <= v.data + v.size); /* in place, inside the frame */
  CHECK(p.schema_id == 0x1234abcdull && p.message_id == 7 && p.sequence == v.sequence);
  CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);

  /* No fields, no trace: still an envelope. */
  shmbus_envelope_t plain;
  shmbus_envelope_init(&plain);
  CHECK_RC(shmbus_publisher_offer_enveloped(pub, &plain, payload, 5, 8), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_view_open_envelope(&v, &got, &p, &env), SHMBUS_OK);
  CHECK(env == 1 && got.correlation_id == 0 && got.reply_to[0] == 0 && got.trace_parent_id == 0 &&
        p.size == 5);
  CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);

  /* A frame that is not an envelope opens as itself. */
  CHECK_RC(shmbus_publisher_offer(pub, payload, 16, 9, 77), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_view_open_envelope(&v, &got, &p, &env), SHMBUS_OK);
  CHECK(env == 0 && p.data == v.data && p.size == 16 && p.schema_id == 77 && got.correlation_id == 0);
  CHECK_RC(shmbus_subscriber_release(sub, &v), SHMBUS_OK);

  /* Hostile: the envelope's schema id over bytes that are no Envelope. */
  uint64_t garbage[4] = {0x00000005ffffffffull, 0x7fffffff00000000ull, ~0ull, 0};
  CHECK_RC(shmbus_publisher_offer(pub, garbage, sizeof garbage, 10, SHMBUS_ENVELOPE_SCHEMA_ID), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_view_open_envelope(&v, &got, &p, &env), SHMBUS_E_MALFORMED);
  CHECK(env == 0 && p.data == NULL);
  CHECK_RC(shmbus_publisher_offer(pub, garbage, 3, 11, SHMBUS_ENVELOPE_SCHEMA_ID), SHMBUS_OK);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_OK);
  CHECK_RC(shmbus_view_open_envelope(&v, &got, &p, &env), SHMBUS_E_MALFORMED);
  CHECK_RC(shmbus_subscriber_release_all(sub), SHMBUS_OK);

  /* Bad structs are refused, nothing published. */
  shmbus_envelope_t b = e;
  memset(b.reply_to, 'a', sizeof b.reply_to); /* no NUL */
  CHECK_RC(shmbus_publisher_offer_enveloped(pub, &b, payload, 5, 1), SHMBUS_E_INVALID_ARGUMENT);
  b = e;
  b.trace_flags = 256;
  CHECK_RC(shmbus_publisher_offer_enveloped(pub, &b, payload, 5, 1), SHMBUS_E_INVALID_ARGUMENT);
  b = e;
  b.trace_parent_id = 0;
  CHECK_RC(shmbus_publisher_offer_enveloped(pub, &b, payload, 5, 1), SHMBUS_E_INVALID_ARGUMENT);
  b = e;
  b.size = 64;
  CHECK_RC(shmbus_publisher_offer_enveloped(pub, &b, payload, 5, 1), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(strstr(shmbus_last_error(), "shmbus_envelope_init") != NULL);
  CHECK_RC(shmbus_subscriber_poll(sub, &v), SHMBUS_E_EMPTY);

  shmbus_subscriber_close(sub);
  shmbus_publisher_close(pub);
  CHECK_RC(shmbus_topic_remove(bus, "c.env"), SHMBUS_OK);
  shmbus_bus_close(bus);
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
