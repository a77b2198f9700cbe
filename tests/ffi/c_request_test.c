/* Request/response through the C ABI (SHMBUS_1.5), through a real shmbusd (ephemeral
 * reply topics, the responder's confused-deputy check): a round trip checked field by
 * field (payload, schema ids, status, correlation and causation ids, reply-to, trace);
 * two requests in flight awaited in reverse order; a handler failure (500); a skipped
 * request times out within its deadline; hostile inputs: NULLs and bad struct sizes
 * everywhere, a reply given twice or with a stale token, a reply larger than the reply
 * ring can hold, a reply after its requester closed, a reply-to naming an ordinary
 * topic, a garbage frame under the envelope's schema id, a forged reply (the right
 * correlation id, a guessed causation id), an unknown correlation id, max_in_flight,
 * and an interrupt. */
#define _GNU_SOURCE
#include <time.h>

#include "c_daemon.h"

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s <shmbusd>\n", argv[0]);
    return 2;
  }
  daemon_bin = argv[1];
  snprintf(dir, sizeof dir, "/tmp/shmbus-creq-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  snprintf(sock_path, sizeof sock_path, "%s/shmbusd.sock", dir);
  snprintf(state_dir, sizeof state_dir, "%s/state", dir);
  snprintf(notify_path, sizeof notify_path, "%s/notify", dir);
  snprintf(prefix, sizeof prefix, "creq-%d", (int)getpid());
  if (start_daemon() != 0) {
    fprintf(stderr, "shmbusd did not start (log in %s)\n", dir);
    cleanup();
    return 1;
  }
  shmbus_bus_t* bus = NULL;
  REQUIRE_OK(shmbus_bus_connect(sock_path, &bus));
  shmbus_topic_config_t tc;
  shmbus_topic_config_init(&tc);
  tc.capacity = 1 << 16;
  tc.multi_producer = 1;
  REQUIRE_OK(shmbus_topic_create(bus, "c.svc", &tc));
  REQUIRE_OK(shmbus_topic_create(bus, "c.plain", &tc));

  /* ---- NULLs and bad sizes ---- */
  shmbus_requester_options_t ro;
  memset(&ro, 0xff, sizeof ro);
  shmbus_requester_options_init(&ro, sizeof ro);
  CHECK(ro.size == sizeof ro && ro.reply_topic == NULL && ro.capacity == (1u << 20) &&
        ro.max_in_flight == 4096 && ro.max_payload == 0 && ro.block_timeout_ns > 0 &&
        ro.open_timeout_ms == 5000);
  shmbus_requester_t* rq = (shmbus_requester_t*)&ro;
  CHECK_RC(shmbus_requester_open(NULL, NULL, &rq), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(rq == NULL);
  CHECK_RC(shmbus_requester_open(bus, NULL, NULL), SHMBUS_E_INVALID_ARGUMENT);
  ro.size = 8;
  CHECK_RC(shmbus_requester_open(bus, &ro, &rq), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_requester_options_init(&ro, sizeof ro);
  ro.max_in_flight = 0;
  CHECK_RC(shmbus_requester_open(bus, &ro, &rq), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_responder_t* rs = (shmbus_responder_t*)&ro;
  CHECK_RC(shmbus_responder_open(bus, NULL, NULL, &rs), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(rs == NULL);
  shmbus_subscriber_options_t so;
  shmbus_subscriber_options_init(&so);
  so.open_timeout_ms = 0;
  CHECK_RC(shmbus_responder_open(bus, "c.missing", &so, &rs), SHMBUS_E_NOT_FOUND);
  so.start = SHMBUS_START_EARLIEST;
  CHECK_RC(shmbus_responder_open(bus, "c.svc", &so, &rs), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_reply_t rep;
  shmbus_reply_init(&rep);
  shmbus_request_t q;
  shmbus_request_init(&q);
  uint64_t corr = 7;
  CHECK_RC(shmbus_requester_send(NULL, "c.svc", "x", 1, 0, NULL, &corr), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(corr == 0);
  CHECK_RC(shmbus_requester_await(NULL, 1, 0, &rep), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_requester_request(NULL, "c.svc", "x", 1, 0, 0, &rep, NULL), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_requester_forget(NULL, 1), SHMBUS_E_INVALID_ARGUMENT);
  CHECK(shmbus_requester_reply_topic(NULL) == NULL);
  CHECK_RC(shmbus_requester_stats(NULL, NULL), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_requester_interrupt(NULL), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_responder_next(NULL, 0, &q), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_responder_reply(NULL, &q, "x", 1, 0, 0), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_responder_fail(NULL, &q, "x"), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_responder_skip(NULL, NULL), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_responder_stats(NULL, NULL), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_responder_interrupt(NULL), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_requester_close(NULL);
  shmbus_responder_close(NULL);

  /* ---- a round trip, field by field ---- */
  REQUIRE_OK(shmbus_requester_open(bus, NULL, &rq));
  REQUIRE_OK(shmbus_responder_open(bus, "c.svc", NULL, &rs));
  const char* reply_topic = shmbus_requester_reply_topic(rq);
  CHECK(reply_topic && strncmp(reply_topic, "reply.", 6) == 0);
  CHECK_RC(shmbus_requester_send(rq, NULL, "x", 1, 0, NULL, &corr), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_requester_send(rq, "c.svc", NULL, 1, 0, NULL, &corr), SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_requester_send(rq, "c.svc", "x", 1, 0, NULL, NULL), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_envelope_t tr;
  shmbus_envelope_init(&tr);
  CHECK_RC(shmbus_requester_send(rq, "c.svc", "x", 1, 0, &tr, &corr),
           SHMBUS_E_INVALID_ARGUMENT); /* no trace */
  REQUIRE_OK(shmbus_trace_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &tr));
  const char req_bytes[] = "quote AAPL";
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", req_bytes, sizeof req_bytes, 0x1234, &tr, &corr));
  CHECK(corr != 0);
  q.size = 4;
  CHECK_RC(shmbus_responder_next(rs, 0, &q), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_request_init(&q);
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  CHECK(q.enveloped == 1 && q.token != 0 && q.message_id != 0);
  CHECK(q.payload.size == sizeof req_bytes && memcmp(q.payload.data, req_bytes, sizeof req_bytes) == 0);
  CHECK(q.payload.schema_id == 0x1234 && q.envelope.payload_schema_id == 0x1234);
  CHECK(q.envelope.correlation_id == corr && strcmp(q.envelope.reply_to, reply_topic) == 0);
  CHECK(q.envelope.trace_id_high == tr.trace_id_high && q.envelope.trace_id_low == tr.trace_id_low &&
        q.envelope.trace_parent_id != tr.trace_parent_id && q.envelope.trace_parent_id != 0);
  shmbus_request_t forged_q = q;
  forged_q.token += 1;
  CHECK_RC(shmbus_responder_reply(rs, &forged_q, "x", 1, 0, 0), SHMBUS_E_INVALID_ARGUMENT);
  /* A caller that edits its copy cannot redirect the reply: the library's copy is used. */
  strcpy(q.envelope.reply_to, "c.plain");
  const char rep_bytes[] = "price 187.5";
  CHECK_RC(shmbus_responder_reply(rs, &q, NULL, 3, 0, 0), SHMBUS_E_INVALID_ARGUMENT);
  REQUIRE_OK(shmbus_responder_reply(rs, &q, rep_bytes, sizeof rep_bytes, 0x5678, 201));
  CHECK_RC(shmbus_responder_reply(rs, &q, rep_bytes, sizeof rep_bytes, 0x5678, 201),
           SHMBUS_E_INVALID_ARGUMENT);
  CHECK_RC(shmbus_responder_skip(rs, &q), SHMBUS_E_INVALID_ARGUMENT);
  rep.size = 0;
  CHECK_RC(shmbus_requester_await(rq, corr, 0, &rep), SHMBUS_E_INVALID_ARGUMENT);
  shmbus_reply_init(&rep);
  REQUIRE_OK(shmbus_requester_await(rq, corr, 1000000000LL, &rep));
  CHECK(rep.status == 201 && rep.correlation_id == corr && rep.schema_id == 0x5678);
  CHECK(rep.len == sizeof rep_bytes && rep.data && memcmp(rep.data, rep_bytes, sizeof rep_bytes) == 0);
  CHECK(rep.envelope.causation_id == q.message_id && rep.envelope.status == 201 &&
        rep.envelope.correlation_id == corr && rep.envelope.trace_id_low == tr.trace_id_low &&
        rep.envelope.trace_parent_id != q.envelope.trace_parent_id);
  CHECK_RC(shmbus_requester_await(rq, corr, 0, &rep), SHMBUS_E_CLOSED);  /* answered already */
  CHECK_RC(shmbus_requester_await(rq, 12345, 0, &rep), SHMBUS_E_CLOSED); /* never sent */
  shmbus_subscriber_t* plain = NULL;
  REQUIRE_OK(shmbus_subscriber_open(bus, "c.plain", NULL, &plain));

  /* ---- two in flight, awaited in reverse order; a failure (500); request() ---- */
  uint64_t c1 = 0, c2 = 0;
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "one", 3, 0, NULL, &c1));
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "two", 3, 0, NULL, &c2));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  REQUIRE_OK(shmbus_responder_reply(rs, &q, "ONE", 3, 0, 0));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  REQUIRE_OK(shmbus_responder_fail(rs, &q, "boom"));
  REQUIRE_OK(shmbus_requester_await(rq, c2, 1000000000LL, &rep));
  CHECK(rep.status == SHMBUS_REPLY_STATUS_FAILED && rep.len == 15 &&
        memcmp(rep.data, "exception: boom", 15) == 0);
  REQUIRE_OK(shmbus_requester_await(rq, c1, 1000000000LL, &rep));
  CHECK(rep.status == 0 && rep.len == 3 && memcmp(rep.data, "ONE", 3) == 0 && rep.correlation_id == c1);

  /* ---- a skipped request times out within its deadline ---- */
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "skip me", 7, 0, NULL, &c1));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  REQUIRE_OK(shmbus_responder_skip(rs, &q));
  int64_t t0 = mono_ns();
  CHECK_RC(shmbus_requester_await(rq, c1, 50000000LL, &rep), SHMBUS_E_TIMED_OUT);
  int64_t took = mono_ns() - t0;
  fprintf(stderr, "skipped request: timed out after %.1f ms (deadline 50 ms)\n", (double)took / 1e6);
  CHECK(took >= 50000000LL && took < 550000000LL);
  CHECK_RC(shmbus_requester_await(rq, c1, 0, &rep), SHMBUS_E_CLOSED); /* forgotten */

  /* ---- a pending request left unanswered is skipped by the next next() ---- */
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "a", 1, 0, NULL, &c1));
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "b", 1, 0, NULL, &c2));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  shmbus_request_t first = q;
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  CHECK_RC(shmbus_responder_reply(rs, &first, "A", 1, 0, 0), SHMBUS_E_INVALID_ARGUMENT);
  REQUIRE_OK(shmbus_responder_reply(rs, &q, "B", 1, 0, 0));
  REQUIRE_OK(shmbus_requester_await(rq, c2, 1000000000LL, &rep));
  CHECK(rep.len == 1 && rep.data[0] == 'B');
  REQUIRE_OK(shmbus_requester_forget(rq, c1));
  CHECK_RC(shmbus_requester_await(rq, c1, 0, &rep), SHMBUS_E_CLOSED);

  /* ---- interrupt: the await returns at once, the request stays in flight ---- */
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "int", 3, 0, NULL, &c1));
  REQUIRE_OK(shmbus_requester_interrupt(rq));
  t0 = mono_ns();
  CHECK_RC(shmbus_requester_await(rq, c1, 5000000000LL, &rep), SHMBUS_E_INTERRUPTED);
  CHECK(mono_ns() - t0 < 1000000000LL);
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  REQUIRE_OK(shmbus_responder_reply(rs, &q, "ok", 2, 0, 0));
  REQUIRE_OK(shmbus_requester_await(rq, c1, 1000000000LL, &rep));
  CHECK(rep.len == 2 && memcmp(rep.data, "ok", 2) == 0);
  REQUIRE_OK(shmbus_responder_interrupt(rs));
  CHECK_RC(shmbus_responder_next(rs, 5000000000LL, &q), SHMBUS_E_INTERRUPTED);
  CHECK_RC(shmbus_responder_next(rs, 0, &q), SHMBUS_E_TIMED_OUT);

  /* ---- a forged reply: the right correlation id, a guessed causation id ---- */
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "f", 1, 0, NULL, &c1));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  shmbus_publisher_t* forger = NULL;
  REQUIRE_OK(shmbus_publisher_open(bus, reply_topic, NULL, &forger));
  shmbus_envelope_t fe;
  shmbus_envelope_init(&fe);
  fe.correlation_id = c1;
  fe.causation_id = q.message_id ^ 1;
  REQUIRE_OK(shmbus_publisher_offer_enveloped(forger, &fe, "forged", 6, 0));
  REQUIRE_OK(shmbus_publisher_offer(forger, "garbage!", 8, 0, SHMBUS_ENVELOPE_SCHEMA_ID));
  shmbus_publisher_close(forger);
  CHECK_RC(shmbus_requester_await(rq, c1, 50000000LL, &rep), SHMBUS_E_TIMED_OUT);
  shmbus_requester_stats_t qs;
  REQUIRE_OK(shmbus_requester_stats(rq, &qs));
  CHECK(qs.forged == 1 && qs.malformed == 1 && qs.in_flight == 0);
  REQUIRE_OK(shmbus_responder_reply(rs, &q, "late", 4, 0, 0)); /* published, then dropped as stale */
  REQUIRE_OK(shmbus_requester_send(rq, "c.svc", "g", 1, 0, NULL, &c2));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  REQUIRE_OK(shmbus_responder_reply(rs, &q, "G", 1, 0, 0));
  REQUIRE_OK(shmbus_requester_await(rq, c2, 1000000000LL, &rep));
  CHECK(rep.len == 1 && rep.data[0] == 'G');
  REQUIRE_OK(shmbus_requester_stats(rq, &qs));
  CHECK(qs.stale == 1 && qs.timeouts == 2);

  /* ---- a plain frame, a garbage envelope, a reply-to that is no reply topic ---- */
  shmbus_publisher_t* svc = NULL;
  REQUIRE_OK(shmbus_publisher_open(bus, "c.svc", NULL, &svc));
  REQUIRE_OK(shmbus_publisher_offer(svc, "plain", 5, 9, 0));
  REQUIRE_OK(shmbus_publisher_offer(svc, "garbage!", 8, 0, SHMBUS_ENVELOPE_SCHEMA_ID));
  shmbus_envelope_t dep;
  shmbus_envelope_init(&dep);
  dep.correlation_id = 99;
  strcpy(dep.reply_to, "c.plain");
  REQUIRE_OK(shmbus_publisher_offer_enveloped(svc, &dep, "deputy", 6, 5));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  CHECK(q.enveloped == 0 && q.payload.size == 5 && q.message_id == 9);
  CHECK_RC(shmbus_responder_reply(rs, &q, "x", 1, 0, 0), SHMBUS_E_NOT_FOUND);
  CHECK_RC(shmbus_responder_next(rs, 1000000000LL, &q), SHMBUS_E_MALFORMED);
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  CHECK_RC(shmbus_responder_reply(rs, &q, "x", 1, 0, 0), SHMBUS_E_PERMISSION_DENIED);
  shmbus_view_t pv;
  CHECK_RC(shmbus_subscriber_poll(plain, &pv), SHMBUS_E_EMPTY); /* nothing landed there */
  shmbus_publisher_close(svc);

  /* ---- a reply too big for the reply ring; max_in_flight ---- */
  shmbus_requester_t* small = NULL;
  shmbus_requester_options_init(&ro, sizeof ro);
  ro.capacity = 4096;
  ro.max_in_flight = 1;
  ro.open_timeout_ms = 0;
  REQUIRE_OK(shmbus_requester_open(bus, &ro, &small));
  CHECK_RC(shmbus_requester_send(small, "c.nope", "x", 1, 0, NULL, &corr), SHMBUS_E_NOT_FOUND);
  REQUIRE_OK(shmbus_requester_send(small, "c.svc", "big?", 4, 0, NULL, &c1));
  CHECK_RC(shmbus_requester_send(small, "c.svc", "2nd", 3, 0, NULL, &corr), SHMBUS_E_BACK_PRESSURED);
  static char big[8192];
  memset(big, 'b', sizeof big);
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  CHECK_RC(shmbus_responder_reply(rs, &q, big, sizeof big, 0, 0), SHMBUS_E_TOO_LARGE);
  t0 = mono_ns();
  CHECK_RC(shmbus_requester_await(small, c1, 50000000LL, &rep), SHMBUS_E_TIMED_OUT);
  CHECK(mono_ns() - t0 < 550000000LL);
  shmbus_requester_close(small);

  /* ---- a reply after its requester closed (its reply topic is gone) ---- */
  shmbus_requester_t* gone = NULL;
  REQUIRE_OK(shmbus_requester_open(bus, NULL, &gone));
  REQUIRE_OK(shmbus_requester_send(gone, "c.svc", "gone?", 5, 0, NULL, &c2));
  REQUIRE_OK(shmbus_responder_next(rs, 1000000000LL, &q));
  shmbus_requester_close(gone);
  CHECK_RC(shmbus_responder_reply(rs, &q, "late", 4, 0, 0), SHMBUS_E_CLOSED);
  shmbus_responder_stats_t ss;
  REQUIRE_OK(shmbus_responder_stats(rs, &ss));
  fprintf(
      stderr,
      "responder: requests %llu replied %llu no_reply_to %llu undeliverable %llu refused %llu malformed %llu "
      "failed %llu\n",
      (unsigned long long)ss.requests, (unsigned long long)ss.replied, (unsigned long long)ss.no_reply_to,
      (unsigned long long)ss.undeliverable, (unsigned long long)ss.refused, (unsigned long long)ss.malformed,
      (unsigned long long)ss.failed);
  CHECK(ss.failed == 1 && ss.refused == 1 && ss.no_reply_to == 1 && ss.malformed == 1 &&
        ss.undeliverable == 2);

  shmbus_subscriber_close(plain);
  shmbus_responder_close(rs);
  shmbus_requester_close(rq);
  shmbus_bus_close(bus);
  cleanup();
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
