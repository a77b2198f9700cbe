/*
 * shmbus.h — the stable C ABI of shmbus (the only C header).
 *
 * Conventions
 *  - Every call returns int: 0 (SHMBUS_OK) on success, -errno for an OS failure,
 *    or a SHMBUS_E_* code (all <= -10000). Nothing throws or aborts across this ABI.
 *  - shmbus_strerror(rc) gives static text for a code; shmbus_last_error() gives
 *    the detailed message of the last failing call on this thread, and
 *    shmbus_last_errno() the errno of the OS call behind it (0 when none). An
 *    OS failure of any kind returns -errno; a failure with its own code keeps
 *    that code and still records its errno (e.g. SHMBUS_E_NOT_CONNECTED with
 *    ENOENT for a missing socket, ECONNREFUSED, or EACCES for a directory that
 *    cannot be entered; ENAMETOOLONG for a socket path longer than sun_path).
 *  - Handles are opaque. Every _open has a matching _close; out-handles are set to
 *    NULL on failure. Closing NULL is a no-op.
 *  - Thread-safety: a bus handle may be used from any thread; a publisher or a
 *    subscriber handle from one thread at a time.
 *  - Memory: claim and view pointers point into shared memory owned by the library.
 *    A claim is writable until commit/abort. A view is valid until it is released
 *    (shmbus_subscriber_release* covering it) or its subscriber is closed; reading it
 *    after that reads bytes another producer may be overwriting.
 *  - Inline helpers have exported function twins, so Go and Rust can call everything.
 *
 * ABI versioning: SHMBUS_ABI_VERSION changes when a signature or struct layout
 * changes incompatibly; shmbus_abi_version() reports the library's. Structs that
 * may grow carry a leading `size` field set by the _init function.
 */
#ifndef SHMBUS_H
#define SHMBUS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SHMBUS_API __attribute__((visibility("default")))
#else
#define SHMBUS_API
#endif

#define SHMBUS_ABI_VERSION 1

/* ---- status codes ------------------------------------------------------- */
#define SHMBUS_OK 0
#define SHMBUS_E_EMPTY (-10001)             /* poll: nothing to read yet */
#define SHMBUS_E_BACK_PRESSURED (-10002)    /* ring full (policy fail, or block timed out) */
#define SHMBUS_E_TIMED_OUT (-10003)         /* a wait ran out */
#define SHMBUS_E_TOO_LARGE (-10004)         /* message can never fit this topic's frames */
#define SHMBUS_E_CORRUPT (-10005)           /* ring bytes are not a valid frame */
#define SHMBUS_E_MALFORMED (-10006)         /* payload is not a valid Cap'n Proto message */
#define SHMBUS_E_CLOSED (-10007)            /* handle closed, or no open claim */
#define SHMBUS_E_INVALID_ARGUMENT (-10008)  /* bad argument (NULL, bad name, bad config) */
#define SHMBUS_E_NOT_FOUND (-10009)         /* no such topic */
#define SHMBUS_E_ALREADY_EXISTS (-10010)    /* exists with other settings, or partition has a producer */
#define SHMBUS_E_INCOMPATIBLE (-10011)      /* other layout version / settings */
#define SHMBUS_E_PERMISSION_DENIED (-10012) /* access list or file permissions refuse it */
#define SHMBUS_E_NO_SLOT (-10013)           /* every subscriber slot is taken */
#define SHMBUS_E_PROTOCOL (-10014)          /* the daemon answered something unexpected */
#define SHMBUS_E_NOT_CONNECTED (-10015)     /* no daemon at the socket */
#define SHMBUS_E_INTERNAL (-10016)          /* a bug: please report with shmbus_last_error() */
#define SHMBUS_E_UNSUPPORTED (-10017)       /* not available in this build / mode */
#define SHMBUS_E_LAPPED (-10018)            /* untethered: overtaken by the producer; continues at its tail */
#define SHMBUS_E_INTERRUPTED (-10019)       /* a blocked wait or claim was ended by *_interrupt() */

/* ---- enums (plain integers in structs) ----------------------------------- */
#define SHMBUS_POLICY_BLOCK 0
#define SHMBUS_POLICY_FAIL 1
#define SHMBUS_POLICY_SPILL 2

#define SHMBUS_WAIT_BUSY_SPIN 0
#define SHMBUS_WAIT_SPIN_YIELD 1
#define SHMBUS_WAIT_FUTEX 2
#define SHMBUS_WAIT_HYBRID 3

typedef struct shmbus_bus shmbus_bus_t;
typedef struct shmbus_publisher shmbus_publisher_t;
typedef struct shmbus_subscriber shmbus_subscriber_t;

/* ---- library ------------------------------------------------------------ */
SHMBUS_API uint32_t shmbus_abi_version(void);
SHMBUS_API const char* shmbus_strerror(int rc); /* static text, never NULL */
SHMBUS_API const char* shmbus_last_error(void); /* this thread's last detail, never NULL */
/* The errno of the OS call behind this thread's last failing call, 0 when no OS call
 * failed (a hot-path status, a bad argument). Since ABI 1 (symbol version SHMBUS_1.1). */
SHMBUS_API int shmbus_last_errno(void);

/* ---- bus ---------------------------------------------------------------- */
/* A bus without a daemon: segments are created and mapped by this process under
 * /dev/shm, names prefixed with `shm_prefix` (NULL: "shmbus"). */
SHMBUS_API int shmbus_bus_open_direct(const char* shm_prefix, shmbus_bus_t** out);
/* Connects to shmbusd at `socket_path` (NULL: the per-user default).
 * SHMBUS_E_NOT_CONNECTED when no daemon answers. */
SHMBUS_API int shmbus_bus_connect(const char* socket_path, shmbus_bus_t** out);
/* Starts a daemon inside this process (a thread) with its state in `state_dir`
 * (NULL: a private temporary directory) and connects to it. */
SHMBUS_API int shmbus_bus_open_embedded(const char* state_dir, shmbus_bus_t** out);
SHMBUS_API void shmbus_bus_close(shmbus_bus_t* bus);

/* ---- topics ------------------------------------------------------------- */
typedef struct shmbus_topic_config {
  uint32_t size;           /* sizeof(shmbus_topic_config_t), set by _init */
  uint32_t partitions;     /* default 1 */
  uint64_t capacity;       /* ring bytes per partition, power of two >= 4096; default 16 MiB */
  uint64_t max_payload;    /* 0: capacity / 4 */
  uint32_t policy;         /* SHMBUS_POLICY_*; default BLOCK */
  uint32_t multi_producer; /* 0: one producer per partition (fast path) */
  uint32_t slots;          /* subscriber slots per partition; default 64 */
  uint32_t mode;           /* permission bits of the segments; default 0660 */
  uint64_t schema_id;      /* expected Cap'n Proto root type id, 0 = any */
} shmbus_topic_config_t;

SHMBUS_API void shmbus_topic_config_init(shmbus_topic_config_t* cfg);
/* Idempotent for the same settings; SHMBUS_E_ALREADY_EXISTS for other settings. */
SHMBUS_API int shmbus_topic_create(shmbus_bus_t* bus, const char* topic, const shmbus_topic_config_t* cfg);
SHMBUS_API int shmbus_topic_remove(shmbus_bus_t* bus, const char* topic);
/* Fills cfg with the settings of an existing topic (read from partition 0). */
SHMBUS_API int shmbus_topic_describe(shmbus_bus_t* bus, const char* topic, shmbus_topic_config_t* cfg);

/* ---- durable topics (symbol version SHMBUS_1.2) ------------------------------
 * A durable topic is archived by shmbusd to its spill log (docs/spill-log.md), so a
 * subscriber can replay it from the log (SHMBUS_START_EARLIEST, _SEQUENCE, _TIME) and
 * then continue live in the ring. Durable topics need a daemon: a bus from
 * shmbus_bus_connect, or shmbus_bus_open_embedded with a state_dir. Policy
 * SHMBUS_POLICY_SPILL implies durable.
 *
 * The struct is versioned by its leading `size`: pass sizeof(shmbus_durable_config_t)
 * to _init (and keep what it sets). The library reads and writes only the first
 * `size` bytes, so a caller built against an older, shorter struct keeps working
 * when fields are appended. */
#define SHMBUS_FLUSH_NONE 0     /* page cache only: durable once written (survives a daemon crash) */
#define SHMBUS_FLUSH_INTERVAL 1 /* fdatasync every flush_interval_ms (default) */
#define SHMBUS_FLUSH_BATCH 2    /* fdatasync after each batch the archiver writes */

typedef struct shmbus_durable_config {
  uint32_t size;              /* bytes of this struct the caller has; set by _init */
  uint32_t durable;           /* 1: archive the topic to the spill log */
  uint32_t flush;             /* SHMBUS_FLUSH_*; default INTERVAL */
  uint32_t flush_interval_ms; /* INTERVAL: fdatasync period; default 10 */
  uint64_t retention_bytes;   /* per partition, 0 = unlimited */
  uint64_t retention_age_s;   /* by a log segment's last write, 0 = unlimited */
  uint64_t segment_bytes;     /* log segment file size, 0 = 64 MiB */
} shmbus_durable_config_t;

/* Sets defaults (not durable, flush INTERVAL every 10 ms, unlimited retention) in the
 * first `size` bytes of *d and d->size = min(size, the library's size). */
SHMBUS_API void shmbus_durable_config_init(shmbus_durable_config_t* d, uint32_t size);
/* shmbus_topic_create with durable settings (`cfg` NULL: defaults; `dur` NULL: not
 * durable unless cfg->policy is SPILL). Idempotent for the same settings, durable
 * ones included; SHMBUS_E_ALREADY_EXISTS for other settings. SHMBUS_E_UNSUPPORTED
 * for a durable topic on a bus without a daemon; SHMBUS_E_INVALID_ARGUMENT for a bad
 * flush value or size. */
SHMBUS_API int shmbus_topic_create_durable(shmbus_bus_t* bus, const char* topic,
                                           const shmbus_topic_config_t* cfg,
                                           const shmbus_durable_config_t* dur);
/* The durable settings of an existing topic (the caller sets out->size, e.g. by
 * _init). On a bus without a daemon every topic reads as not durable. */
SHMBUS_API int shmbus_topic_describe_durable(shmbus_bus_t* bus, const char* topic,
                                             shmbus_durable_config_t* out);

/* ---- schema registry (symbol version SHMBUS_1.5) --------------------------------
 * Presents a compiled Cap'n Proto schema for `topic` to shmbusd (docs/messaging.md,
 * "Schema registry"): `nodes` is one serialized Cap'n Proto message (standard framing)
 * whose root is a schema.capnp CodeGeneratorRequest holding the node of the struct
 * `root_id` and of every struct and enum its fields use; what `capnp compile -o-`
 * writes, or Go's schemas.Find(id), is accepted (at most 128 KiB). As a publisher
 * (flags 0) a new compatible version is stored; as a subscriber
 * (SHMBUS_SCHEMA_SUBSCRIBER) it is checked and never stored; SHMBUS_SCHEMA_CHECK_ONLY
 * checks without storing. *version (may be NULL) is the version number the schema
 * is or would be. SHMBUS_E_INCOMPATIBLE when refused (shmbus_last_error() names the
 * type, the field and the rule), SHMBUS_E_INVALID_ARGUMENT for malformed nodes,
 * SHMBUS_E_NOT_FOUND for no such topic (or no access), SHMBUS_E_UNSUPPORTED on a bus
 * without a daemon. Bindings call it before opening a publisher or subscriber. */
#define SHMBUS_SCHEMA_CHECK_ONLY 1u
#define SHMBUS_SCHEMA_SUBSCRIBER 2u
SHMBUS_API int shmbus_register_schema(shmbus_bus_t* bus, const char* topic, uint64_t root_id,
                                      const void* nodes, size_t len, uint32_t flags, uint32_t* version);

/* ---- schema mode (symbol version SHMBUS_1.7) -------------------------------------
 * Sets `topic`'s schema compatibility mode, SHMBUS_SCHEMA_BACKWARD (a topic's default),
 * _FORWARD, _FULL or _NONE (docs/messaging.md, "Schema registry"): the stored versions
 * stay and the next schema presented is checked under the new mode; the mode is saved
 * with the topic's settings (a daemon restart keeps it). What `shmbus schema mode`
 * does. Only the topic's owner, root or the daemon's uid may change it:
 * SHMBUS_E_PERMISSION_DENIED for another uid, even one allowed to publish;
 * SHMBUS_E_NOT_FOUND for no such topic (or no access to it);
 * SHMBUS_E_INVALID_ARGUMENT for a mode that is none of these or an invalid topic name;
 * SHMBUS_E_UNSUPPORTED on a bus without a daemon. */
#define SHMBUS_SCHEMA_BACKWARD 0 /* a new version reads what the stored latest wrote */
#define SHMBUS_SCHEMA_FORWARD 1  /* the stored latest reads what a new version writes */
#define SHMBUS_SCHEMA_FULL 2     /* both ways, against every stored version */
#define SHMBUS_SCHEMA_NONE 3     /* any well-formed schema is stored */
SHMBUS_API int shmbus_set_schema_mode(shmbus_bus_t* bus, const char* topic, int mode);

/* ---- publisher ---------------------------------------------------------- */
typedef struct shmbus_publisher_options {
  uint32_t size;            /* set by _init */
  uint32_t partition;       /* default 0 */
  uint32_t producer_id;     /* 0: the pid */
  uint32_t wait;            /* SHMBUS_WAIT_*: how to wait for space under policy block */
  int64_t block_timeout_ns; /* longest wait for space; default 1 s */
  int32_t open_timeout_ms;  /* wait for a topic being created; default 5000 */
  uint32_t reserved;
} shmbus_publisher_options_t;

/* A claimed frame: `data` is zeroed, writable ring memory of `size` bytes,
 * 8-byte aligned, valid until commit or abort. */
typedef struct shmbus_claim {
  uint8_t* data;
  uint32_t size;
  uint32_t reserved;
  uint64_t sequence;
} shmbus_claim_t;

typedef struct shmbus_publisher_stats {
  uint64_t published;
  uint64_t back_pressured;
  uint64_t blocked_waits;
  uint64_t builder_fallbacks;
  uint64_t reclaimed_cursors;
} shmbus_publisher_stats_t;

SHMBUS_API void shmbus_publisher_options_init(shmbus_publisher_options_t* o);
SHMBUS_API int shmbus_publisher_open(shmbus_bus_t* bus, const char* topic,
                                     const shmbus_publisher_options_t* opts, /* NULL: defaults */
                                     shmbus_publisher_t** out);
SHMBUS_API void shmbus_publisher_close(shmbus_publisher_t* pub);
/* Claims room for max_bytes of payload; applies the topic policy when full. */
SHMBUS_API int shmbus_publisher_claim(shmbus_publisher_t* pub, uint32_t max_bytes, shmbus_claim_t* out);
/* Like claim, never waits. */
SHMBUS_API int shmbus_publisher_try_claim(shmbus_publisher_t* pub, uint32_t max_bytes, shmbus_claim_t* out);
/* Publishes the open claim with `used` payload bytes. */
SHMBUS_API int shmbus_publisher_commit(shmbus_publisher_t* pub, uint32_t used, uint64_t message_id,
                                       uint64_t schema_id);
/* Publishes a single-segment Cap'n Proto message built in place: the caller built
 * the segment at claim.data + 8 and it is `segment_words` words long. Writes the
 * 8-byte segment table at claim.data and commits 8 + 8*segment_words bytes. */
SHMBUS_API int shmbus_publisher_commit_message(shmbus_publisher_t* pub, uint32_t segment_words,
                                               uint64_t message_id, uint64_t schema_id);
/* commit_message, then claim again for next_max bytes: one call per message for
 * bindings that pay per foreign call (Go). On a claim failure the commit stands
 * and the claim's status is returned with next->data NULL. A failed commit returns
 * before claiming (CLOSED: no open claim; INVALID_ARGUMENT: segment_words 0;
 * TOO_LARGE: segment past the claim, which is aborted): a caller that checked
 * segment_words against its claim can read any failure as the claim's. */
SHMBUS_API int shmbus_publisher_commit_message_and_claim(shmbus_publisher_t* pub, uint32_t segment_words,
                                                         uint64_t message_id, uint64_t schema_id,
                                                         uint32_t next_max, shmbus_claim_t* next);
/* Aborts the open claim, or the open multi-frame claim (readers skip it). */
SHMBUS_API int shmbus_publisher_abort(shmbus_publisher_t* pub);
/* ---- multi-frame claims (symbol version SHMBUS_1.6) -----------------------------
 * n frames of max_bytes payload each, taken as ONE ring claim (one wait for space,
 * one multi-producer claim), built in place, then published together by one
 * commit: readers see none of the frames before it and all of them after. out[i]
 * (n entries) gets frame i: zeroed ring memory of out[i].size bytes, sequence
 * out[0].sequence + i. Same policy as claim. SHMBUS_E_TOO_LARGE when a frame
 * exceeds max_payload or the n frames could never fit the ring (n * (48 +
 * max_bytes rounded up to 8) more than about half the capacity); n 0 or above
 * 2^32-1 is INVALID_ARGUMENT. An open claim or batch is dropped first. */
SHMBUS_API int shmbus_publisher_claim_n(shmbus_publisher_t* pub, size_t n, uint32_t max_bytes,
                                        shmbus_claim_t* out);
/* Like claim_n, never waits. */
SHMBUS_API int shmbus_publisher_try_claim_n(shmbus_publisher_t* pub, size_t n, uint32_t max_bytes,
                                            shmbus_claim_t* out);
/* Publishes frames 0..k-1 of the open batch (k <= its n; 0 aborts it): frame i with
 * used[i] payload bytes and message id message_ids[i] (message_ids NULL: 0). The
 * frames after k are skipped by readers. One timestamp for the batch. A used[i]
 * past the frame's size aborts the batch (TOO_LARGE); no open batch: CLOSED. */
SHMBUS_API int shmbus_publisher_commit_n(shmbus_publisher_t* pub, size_t k, const uint32_t* used,
                                         const uint64_t* message_ids, uint64_t schema_id);
/* In-place Cap'n Proto over a batch: frame i holds a single-segment message of
 * segment_words[i] words built at out[i].data + 8 (as commit_message); writes each
 * segment table and publishes frames 0..k-1 (segment_words[i] 0: INVALID_ARGUMENT,
 * the batch aborted). Then, when next_n > 0, claims the next batch of next_n frames
 * of next_max bytes into next[] in the same call (one foreign call per batch for
 * bindings that pay per call, Go); a failure of that claim leaves the commit
 * standing, returns the claim's status and next[0].data NULL. */
SHMBUS_API int shmbus_publisher_commit_messages_n(shmbus_publisher_t* pub, size_t k,
                                                  const uint32_t* segment_words, const uint64_t* message_ids,
                                                  uint64_t schema_id, size_t next_n, uint32_t next_max,
                                                  shmbus_claim_t* next);
/* wait_space for a claim_n of n frames of max_bytes (SHMBUS_1.6): OK,
 * SHMBUS_E_BACK_PRESSURED when the time ran out, SHMBUS_E_INTERRUPTED, or
 * SHMBUS_E_TOO_LARGE when such a batch can never fit. */
SHMBUS_API int shmbus_publisher_wait_space_n(shmbus_publisher_t* pub, size_t n, uint32_t max_bytes,
                                             int64_t timeout_ns);
/* Copy path. */
SHMBUS_API int shmbus_publisher_offer(shmbus_publisher_t* pub, const void* data, size_t len,
                                      uint64_t message_id, uint64_t schema_id);
/* Publishes `n` messages packed back to back in `buf` (message i is lens[i] bytes),
 * with one wake-up check at the end. *published (may be NULL) gets the count;
 * returns the status of the first failure, or OK. */
SHMBUS_API int shmbus_publisher_offer_packed(shmbus_publisher_t* pub, const void* buf, const uint32_t* lens,
                                             size_t n, size_t* published);
SHMBUS_API int shmbus_publisher_stats(shmbus_publisher_t* pub, shmbus_publisher_stats_t* out);
SHMBUS_API uint32_t shmbus_publisher_max_payload(shmbus_publisher_t* pub);
/* Durable topics (SHMBUS_1.2): waits up to timeout_ns (<0: forever) until every frame
 * of the publisher's partition with sequence <= seq is durable per the topic's flush
 * policy (claim sequences: shmbus_claim_t.sequence). OK or SHMBUS_E_TIMED_OUT (also
 * when the topic is not durable and nothing archives it); since 1.3 also
 * SHMBUS_E_INTERRUPTED (shmbus_publisher_interrupt). */
SHMBUS_API int shmbus_publisher_wait_durable(shmbus_publisher_t* pub, uint64_t seq, int64_t timeout_ns);
/* Highest sequence of the partition known durable (a racy snapshot; 0 when no
 * archiver ever ran), and the errno of the archiver's failing write or sync (0 when
 * healthy): why a durable topic back-pressures. */
SHMBUS_API int shmbus_publisher_durable_sequence(shmbus_publisher_t* pub, uint64_t* seq, int* archiver_errno);

/* ---- subscriber --------------------------------------------------------- */
#define SHMBUS_START_LATEST 0   /* only messages published after the subscriber joins */
#define SHMBUS_START_EARLIEST 1 /* durable topics: from the oldest retained message */
#define SHMBUS_START_SEQUENCE 2 /* durable topics: from start_value (a sequence) */
#define SHMBUS_START_TIME 3     /* durable topics: from start_value (CLOCK_REALTIME ns since the epoch) */

/* start other than LATEST (durable topics, SHMBUS_1.2): the subscriber replays from
 * the topic's spill log, then switches to the live ring at exactly the frame after
 * the last one it delivered, without a gap or duplicate. Such a subscriber is
 * always UNTETHERED (never holds the producer back; when lapped it continues from the
 * log) and anonymous (name must be NULL); its views point into private copies, so
 * shmbus_subscriber_check is always OK. It needs a daemon bus (see durable topics).
 * SHMBUS_E_INVALID_ARGUMENT when the topic is not durable. */
typedef struct shmbus_subscriber_options {
  uint32_t size; /* set by _init */
  uint32_t partition;
  uint32_t tethered;       /* 1 (default): holds producers back, never overwritten */
  uint32_t wait;           /* SHMBUS_WAIT_*; default HYBRID */
  int64_t spin_ns;         /* hybrid: spin this long before sleeping; default 20 us */
  int32_t open_timeout_ms; /* default 5000 */
  uint32_t start;          /* SHMBUS_START_*; default LATEST */
  uint64_t start_value;
  const char* name; /* durable subscriber name, or NULL */
} shmbus_subscriber_options_t;

/* One message in the ring. `data` points into read-only shared memory. */
typedef struct shmbus_view {
  const uint8_t* data;
  uint32_t size;
  uint32_t producer_id;
  uint64_t sequence;
  uint64_t timestamp_ns; /* CLOCK_MONOTONIC at commit */
  uint64_t message_id;
  uint64_t schema_id;
  uint64_t position;      /* ring position of the frame */
  uint64_t next_position; /* release token: releasing this view frees up to here */
} shmbus_view_t;

typedef struct shmbus_subscriber_stats {
  uint64_t received;
  uint64_t waits;
  uint64_t corrupt;
  uint64_t position;
} shmbus_subscriber_stats_t;

SHMBUS_API void shmbus_subscriber_options_init(shmbus_subscriber_options_t* o);
SHMBUS_API int shmbus_subscriber_open(shmbus_bus_t* bus, const char* topic,
                                      const shmbus_subscriber_options_t* opts, /* NULL: defaults */
                                      shmbus_subscriber_t** out);
SHMBUS_API void shmbus_subscriber_close(shmbus_subscriber_t* sub);
/* Next message or SHMBUS_E_EMPTY. Never blocks. */
SHMBUS_API int shmbus_subscriber_poll(shmbus_subscriber_t* sub, shmbus_view_t* out);
/* Next message, waiting up to timeout_ns (<0: forever); SHMBUS_E_TIMED_OUT. */
SHMBUS_API int shmbus_subscriber_poll_wait(shmbus_subscriber_t* sub, shmbus_view_t* out, int64_t timeout_ns);
/* Waits up to timeout_ns (0: no wait, <0: forever) for at least one message, then
 * fills up to `max` views without releasing them. *n gets the count (0 on timeout,
 * with SHMBUS_E_TIMED_OUT; or SHMBUS_E_EMPTY when timeout_ns is 0). */
SHMBUS_API int shmbus_subscriber_poll_batch(shmbus_subscriber_t* sub, shmbus_view_t* views, size_t max,
                                            int64_t timeout_ns, size_t* n);
/* Releases `v` and every view polled before it. */
SHMBUS_API int shmbus_subscriber_release(shmbus_subscriber_t* sub, const shmbus_view_t* v);
/* Untethered subscribers: after reading a view in place, OK if what was read is
 * intact, SHMBUS_E_LAPPED if the producer may have overwritten it meanwhile (discard
 * it). Always OK for a tethered subscriber. */
SHMBUS_API int shmbus_subscriber_check(const shmbus_subscriber_t* sub, const shmbus_view_t* v);
/* Releases every view polled so far. */
SHMBUS_API int shmbus_subscriber_release_all(shmbus_subscriber_t* sub);
/* Waits until a message may be available: OK, SHMBUS_E_TIMED_OUT or
 * SHMBUS_E_INTERRUPTED. */
SHMBUS_API int shmbus_subscriber_wait(shmbus_subscriber_t* sub, int64_t timeout_ns);
/* Interrupts (SHMBUS_1.3). Ends a poll_wait, poll_batch or wait blocked on `sub` in
 * another thread at once with SHMBUS_E_INTERRUPTED. Raised while nothing waits, it
 * ends the next wait at once, one time. The one call that may run concurrently with
 * another call on the same handle (never with its close); async-signal-safe. Go's
 * context cancellation and Rust's interrupt handle are built on it. */
SHMBUS_API int shmbus_subscriber_interrupt(shmbus_subscriber_t* sub);
/* The same for a claim/offer/publish blocked for space (policy block), or a
 * shmbus_publisher_wait_durable, on `pub`. A call that does not wait (it finds space,
 * the sequence is durable already) leaves a raised interrupt pending. */
SHMBUS_API int shmbus_publisher_interrupt(shmbus_publisher_t* pub);
/* Waits up to timeout_ns (<0: forever) until a claim of max_bytes would find space
 * (SHMBUS_1.3): OK, SHMBUS_E_BACK_PRESSURED when the time ran out, or
 * SHMBUS_E_INTERRUPTED. Another producer may take the space first: claim again. With
 * block_timeout_ns 0 and this, a binding waits for space interruptibly. */
SHMBUS_API int shmbus_publisher_wait_space(shmbus_publisher_t* pub, uint32_t max_bytes, int64_t timeout_ns);
SHMBUS_API int shmbus_subscriber_stats(shmbus_subscriber_t* sub, shmbus_subscriber_stats_t* out);

/* ---- consumer groups (symbol version SHMBUS_1.4) -----------------------------
 * One member of a consumer group (docs/messaging.md, "Consumer groups"); needs a
 * daemon bus. The members of a group split the topic's partitions (the daemon
 * assigns an even, sticky share per member; joins, leaves and deaths rebalance).
 * On each assigned partition a member reads as the durable subscriber
 * "group:<group>": the group's committed position on that partition is the last
 * release, and it survives member deaths and daemon restarts. Delivery is at least
 * once per group, in order per partition: what a member polled and did not release
 * before it died is read again by the partition's next holder.
 *
 * The slow path (a round trip to the daemon) runs inside poll/poll_wait, every
 * sync_interval_ns, and at most every idle_sync_ns while an assigned partition is
 * still held by its previous owner; it may fail like an open (access refused, the
 * topic went, no daemon): such a poll returns that code, the member stays usable.
 * A handle is used from one thread at a time (shmbus_group_subscriber_interrupt
 * excepted). A view is valid until released (or the handle is closed). */
typedef struct shmbus_group_subscriber shmbus_group_subscriber_t;

typedef struct shmbus_group_options {
  uint32_t size;            /* sizeof(shmbus_group_options_t), set by _init */
  uint32_t tethered;        /* 1 (default): held partitions hold producers back */
  uint32_t wait;            /* SHMBUS_WAIT_*; default HYBRID */
  int32_t open_timeout_ms;  /* default 5000 */
  int64_t spin_ns;          /* hybrid: spin this long before sleeping; default 20 us */
  int64_t sync_interval_ns; /* longest between two syncs with the daemon; default 10 ms */
  int64_t idle_sync_ns;     /* waiting to take a partition: at most this often; default 1 ms */
} shmbus_group_options_t;

/* A polled message and the partition it came from. */
typedef struct shmbus_group_view {
  shmbus_view_t view;
  uint32_t partition;
  uint32_t reserved;
} shmbus_group_view_t;

typedef struct shmbus_group_stats {
  uint64_t received;
  uint64_t syncs;
  uint64_t rebalances;   /* assignments that changed what this member should hold */
  uint64_t taken;        /* partitions taken */
  uint64_t given_up;     /* partitions parked for another member */
  uint64_t take_retries; /* takes refused while the previous holder had not let go */
  uint64_t rejoins;      /* joined again after the daemon forgot the member (a restart) */
  uint64_t member_id;
  uint32_t generation; /* of the group's last assignment this member saw */
  uint32_t assigned;   /* partitions the daemon assigned to this member */
} shmbus_group_stats_t;

SHMBUS_API void shmbus_group_options_init(shmbus_group_options_t* o);
/* Joins `group` on `topic` (opts NULL: defaults) and takes the partitions it is
 * assigned that are free. SHMBUS_E_UNSUPPORTED on a bus without a daemon. */
SHMBUS_API int shmbus_group_subscriber_open(shmbus_bus_t* bus, const char* topic, const char* group,
                                            const shmbus_group_options_t* opts,
                                            shmbus_group_subscriber_t** out);
/* Parks every held partition (committed up to the last release) and leaves the group. */
SHMBUS_API void shmbus_group_subscriber_close(shmbus_group_subscriber_t* g);
/* The next message of any held partition (round robin), or SHMBUS_E_EMPTY. */
SHMBUS_API int shmbus_group_subscriber_poll(shmbus_group_subscriber_t* g, shmbus_group_view_t* out);
/* The same, waiting up to timeout_ns (<0: forever): SHMBUS_E_TIMED_OUT, or
 * SHMBUS_E_INTERRUPTED when shmbus_group_subscriber_interrupt ended the wait. */
SHMBUS_API int shmbus_group_subscriber_poll_wait(shmbus_group_subscriber_t* g, shmbus_group_view_t* out,
                                                 int64_t timeout_ns);
/* Releases (commits) `v` and every view polled before it on its partition.
 * SHMBUS_E_INVALID_ARGUMENT for a view this member did not poll or released already. */
SHMBUS_API int shmbus_group_subscriber_release(shmbus_group_subscriber_t* g, const shmbus_group_view_t* v);
/* Releases every view polled so far, on every partition. */
SHMBUS_API int shmbus_group_subscriber_release_all(shmbus_group_subscriber_t* g);
/* Runs the slow path now; *changed (may be NULL) = 1 when the held partitions changed. */
SHMBUS_API int shmbus_group_subscriber_sync(shmbus_group_subscriber_t* g, int* changed);
/* The partitions held (read) now, ascending: up to `max` into out; *n gets how many
 * there are (may exceed max). */
SHMBUS_API int shmbus_group_subscriber_partitions(shmbus_group_subscriber_t* g, uint32_t* out, size_t max,
                                                  size_t* n);
SHMBUS_API int shmbus_group_subscriber_stats(shmbus_group_subscriber_t* g, shmbus_group_stats_t* out);
/* Ends a poll_wait blocked on `g` in another thread at once (SHMBUS_E_INTERRUPTED);
 * raised while nothing waits, it ends the next poll_wait at once, one time. May run
 * concurrently with any call on `g` but close; async-signal-safe. */
SHMBUS_API int shmbus_group_subscriber_interrupt(shmbus_group_subscriber_t* g);

/* ---- envelope (symbol version SHMBUS_1.4) -------------------------------------
 * The messaging contract's envelope (docs/messaging.md, "The envelope"): correlation
 * and causation ids, a W3C trace context, a reply-to topic, a content version and a
 * reply status travel in a Cap'n Proto Envelope around the payload; the frame's
 * schema id is SHMBUS_ENVELOPE_SCHEMA_ID. The same code as C++'s publish_enveloped
 * and EnvelopedView. Texts are NUL-terminated in fixed arrays: the struct never
 * points into the ring. */
#define SHMBUS_ENVELOPE_SCHEMA_ID 0xe8baf312b14f45c0ULL
#define SHMBUS_MAX_REPLY_TO 255
#define SHMBUS_MAX_TRACE_STATE 512
#define SHMBUS_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */

typedef struct shmbus_envelope {
  uint32_t size; /* sizeof(shmbus_envelope_t), set by _init */
  uint32_t content_version;
  uint64_t correlation_id;
  uint64_t causation_id;      /* the message id that caused this one */
  uint64_t payload_schema_id; /* the payload's own Cap'n Proto type id (0: none) */
  uint64_t trace_id_high;     /* the 128-bit trace id; all three ids 0: no trace */
  uint64_t trace_id_low;
  uint64_t trace_parent_id;                     /* the sender's span id */
  uint32_t trace_flags;                         /* 0..255; 0x01: sampled */
  uint32_t status;                              /* replies: the application's status (0: ok) */
  char reply_to[SHMBUS_MAX_REPLY_TO + 1];       /* a topic name, or "" */
  char trace_state[SHMBUS_MAX_TRACE_STATE + 1]; /* W3C tracestate, or "" */
  uint8_t reserved[7];
} shmbus_envelope_t;

SHMBUS_API void shmbus_envelope_init(shmbus_envelope_t* e);
/* Publishes `payload` inside an envelope (one copy of the payload, as offer), frame
 * message id `message_id`. SHMBUS_E_INVALID_ARGUMENT for an unterminated text, flags
 * over 255, or a trace with a zero id (all three 0: no trace). */
SHMBUS_API int shmbus_publisher_offer_enveloped(shmbus_publisher_t* pub, const shmbus_envelope_t* e,
                                                const void* payload, size_t len, uint64_t message_id);
/* Reads a polled view's envelope, once, validated (ring bytes are untrusted).
 * *enveloped = 1: `e` holds its fields and `payload` is a view of the payload inside
 * the frame (schema_id the payload's; valid as long as `v`). *enveloped = 0: the frame
 * is not an envelope; `e` is cleared and `payload` is `v`. SHMBUS_E_MALFORMED for an
 * envelope's schema id over bytes that are not a valid Envelope (or over-long texts). */
SHMBUS_API int shmbus_view_open_envelope(const shmbus_view_t* v, shmbus_envelope_t* e, shmbus_view_t* payload,
                                         int* enveloped);
/* W3C traceparent version 00 <-> e's trace fields. _parse: SHMBUS_E_INVALID_ARGUMENT
 * when malformed or an id is 0 (e unchanged). _format: `buf` gets 55 characters and a
 * NUL (len >= 56); SHMBUS_E_INVALID_ARGUMENT without a valid trace. _fresh: a new trace
 * with random ids, sampled; _child: the same trace, a new random span id (what a
 * handler puts on what it sends). */
SHMBUS_API int shmbus_trace_parse(const char* traceparent, shmbus_envelope_t* e);
SHMBUS_API int shmbus_trace_format(const shmbus_envelope_t* e, char* buf, size_t len);
SHMBUS_API int shmbus_trace_fresh(shmbus_envelope_t* e);
SHMBUS_API int shmbus_trace_child(shmbus_envelope_t* e);

/* ---- dedup window (symbol version SHMBUS_1.4) ---------------------------------
 * C++'s shmbus::DedupWindow (docs/messaging.md, "Dedup"): a consumer drops what it
 * handled already, across its own restart (by the partition sequence: a message at or
 * below the last one recorded) and a producer's retry (by (producer id, message id)
 * among the last `capacity` recorded; message id 0 is not checked). _commit writes the
 * window, the position and an application state blob to `path` atomically (temporary
 * file, fsync, rename): a handler that keeps its side effects in that state is
 * effectively-once. A handle is used from one thread at a time. */
typedef struct shmbus_dedup shmbus_dedup_t;

typedef struct shmbus_dedup_stats {
  uint64_t by_position; /* duplicates caught by the sequence (a consumer restart) */
  uint64_t by_id;       /* duplicates caught by (producer, message id) (a retry) */
  uint64_t position;    /* the last sequence recorded */
  uint64_t size;        /* ids in the window */
} shmbus_dedup_stats_t;

/* capacity 0: 4096. path NULL or "": in memory only. Loads `path` when it exists; a
 * file that is not a valid state is SHMBUS_E_INVALID_ARGUMENT naming it (never
 * half-used). */
SHMBUS_API int shmbus_dedup_open(size_t capacity, const char* path, shmbus_dedup_t** out);
SHMBUS_API void shmbus_dedup_close(shmbus_dedup_t* d);
/* *seen = 1 when the message was handled already (counted in the stats), else 0. */
SHMBUS_API int shmbus_dedup_seen(shmbus_dedup_t* d, uint32_t producer_id, uint64_t message_id,
                                 uint64_t sequence, int* seen);
/* Marks a message handled: position = its sequence, its ids enter the window. */
SHMBUS_API int shmbus_dedup_record(shmbus_dedup_t* d, uint32_t producer_id, uint64_t message_id,
                                   uint64_t sequence);
/* Persists the window, the position and `len` bytes of `state` (NULL: the state as
 * it is) atomically; -errno when the file cannot be written. */
SHMBUS_API int shmbus_dedup_commit(shmbus_dedup_t* d, const void* state, size_t len);
/* The application state (as loaded or last committed): valid until the next commit
 * or close. */
SHMBUS_API int shmbus_dedup_app_state(shmbus_dedup_t* d, const uint8_t** data, size_t* len);
SHMBUS_API int shmbus_dedup_stats(shmbus_dedup_t* d, shmbus_dedup_stats_t* out);

/* ---- request/response (symbol version SHMBUS_1.5) -----------------------------
 * C++'s shmbus::Requester and shmbus::Responder (docs/messaging.md,
 * "Request/response"): the same code, so one behaviour in every language.
 *
 * A requester owns a reply topic (through shmbusd an ephemeral one: the daemon
 * removes it when this process's connection ends, however it ends). A request is an
 * enveloped message on the service topic with a fresh random correlation id, a fresh
 * random frame message id (the causation id its reply must carry back) and the reply
 * topic as reply-to. A reply is taken only with both ids of a request in flight;
 * others are dropped and counted (stale, forged, malformed), never returned.
 *
 * A responder reads a service topic; each request is taken with _next and answered
 * with _reply, _fail (status 500, "exception: <why>", as C++ does for a function that
 * throws) or _skip (no reply: the requester times out). Through shmbusd it answers
 * only on ephemeral topics (SHMBUS_E_PERMISSION_DENIED otherwise: the confused
 * deputy).
 *
 * A handle is used from one thread at a time; _interrupt may run concurrently with
 * any call on its handle but _close (async-signal-safe). */
typedef struct shmbus_requester shmbus_requester_t;
typedef struct shmbus_responder shmbus_responder_t;

#define SHMBUS_REPLY_STATUS_FAILED 500 /* what a failed handler answers */

/* Versioned by `size` (set by _init): the library reads only what the caller has. */
typedef struct shmbus_requester_options {
  uint32_t size;            /* sizeof(shmbus_requester_options_t), set by _init */
  int32_t open_timeout_ms;  /* a service topic being created: wait this long; default 5000 */
  const char* reply_topic;  /* NULL or "": "reply.<pid>.<16 random hex digits>" */
  uint64_t capacity;        /* reply ring bytes, power of two >= 4096; default 1 MiB */
  uint64_t max_payload;     /* largest reply payload (frame); 0: capacity / 4 */
  uint64_t max_in_flight;   /* requests awaited at once; default 4096 */
  int64_t block_timeout_ns; /* sending into a full service topic (policy block); default 1 s */
} shmbus_requester_options_t;

/* A reply taken by _await/_request. `data` points into the requester's own memory,
 * valid until the next call on that requester or its close. */
typedef struct shmbus_reply {
  uint32_t size;   /* sizeof(shmbus_reply_t), set by _init */
  uint32_t status; /* the responder's status (0: ok; 500: its handler failed) */
  uint64_t correlation_id;
  uint64_t schema_id;   /* the reply payload's schema id (0: opaque) */
  uint64_t message_id;  /* the reply frame's */
  uint32_t producer_id; /* the reply frame's */
  uint32_t reserved;
  const uint8_t* data; /* the payload */
  uint64_t len;
  shmbus_envelope_t envelope; /* every envelope field of the reply (trace: a child span) */
} shmbus_reply_t;

typedef struct shmbus_requester_stats {
  uint64_t sent;
  uint64_t replies; /* replies matched to a request in flight */
  uint64_t timeouts;
  uint64_t stale;     /* replies to no request in flight: dropped */
  uint64_t forged;    /* a request's correlation id without its causation id: dropped */
  uint64_t malformed; /* frames on the reply topic that are no valid reply: dropped */
  uint64_t in_flight;
} shmbus_requester_stats_t;

SHMBUS_API void shmbus_requester_options_init(shmbus_requester_options_t* o, uint32_t size);
SHMBUS_API void shmbus_reply_init(shmbus_reply_t* r);
/* Creates the reply topic and subscribes to it (opts NULL: defaults). */
SHMBUS_API int shmbus_requester_open(shmbus_bus_t* bus, const shmbus_requester_options_t* opts,
                                     shmbus_requester_t** out);
/* Removes the reply topic. */
SHMBUS_API void shmbus_requester_close(shmbus_requester_t* r);
/* Publishes a request on `topic`: *corr gets its correlation id. `trace` (may be
 * NULL): a request continues its trace (a child span), otherwise a fresh trace.
 * SHMBUS_E_BACK_PRESSURED when the topic is full or max_in_flight requests wait;
 * errors of a publisher open (NOT_FOUND, PERMISSION_DENIED) the first time a topic
 * is used. */
SHMBUS_API int shmbus_requester_send(shmbus_requester_t* r, const char* topic, const void* payload,
                                     size_t len, uint64_t schema_id, const shmbus_envelope_t* trace,
                                     uint64_t* corr);
/* Waits up to timeout_ns (<0: no limit) for the reply to `corr`. OK: *out is it.
 * SHMBUS_E_TIMED_OUT: none came in time, `corr` is forgotten (a late reply is stale).
 * SHMBUS_E_CLOSED: `corr` is not in flight (never sent, answered, timed out,
 * forgotten). SHMBUS_E_INTERRUPTED: _interrupt ended the wait, `corr` stays in
 * flight. Replies to other requests in flight that come meanwhile are kept. */
SHMBUS_API int shmbus_requester_await(shmbus_requester_t* r, uint64_t corr, int64_t timeout_ns,
                                      shmbus_reply_t* out);
/* _send then _await; *corr (may be NULL) gets the correlation id. */
SHMBUS_API int shmbus_requester_request(shmbus_requester_t* r, const char* topic, const void* payload,
                                        size_t len, uint64_t schema_id, int64_t timeout_ns,
                                        shmbus_reply_t* out, uint64_t* corr);
/* Stops waiting for `corr`: its reply will be dropped as stale. */
SHMBUS_API int shmbus_requester_forget(shmbus_requester_t* r, uint64_t corr);
/* The reply topic's name, NUL-terminated, valid until close. */
SHMBUS_API const char* shmbus_requester_reply_topic(shmbus_requester_t* r);
SHMBUS_API int shmbus_requester_stats(shmbus_requester_t* r, shmbus_requester_stats_t* out);
SHMBUS_API int shmbus_requester_interrupt(shmbus_requester_t* r);

/* A request taken by shmbus_responder_next. `payload` points into the service ring,
 * valid until it is answered (_reply, _fail, _skip), the next _next, or close. */
typedef struct shmbus_request {
  uint32_t size;       /* sizeof(shmbus_request_t), set by _init */
  uint32_t enveloped;  /* 0: a plain frame (no envelope: it cannot be answered) */
  uint64_t token;      /* which request: _reply/_fail/_skip check it */
  uint64_t message_id; /* the request frame's (the causation id of its reply) */
  uint32_t producer_id;
  uint32_t reserved;
  shmbus_view_t payload;      /* the request payload (schema_id: the payload's) */
  shmbus_envelope_t envelope; /* correlation id, reply-to, trace ... */
} shmbus_request_t;

typedef struct shmbus_responder_stats {
  uint64_t requests;
  uint64_t replied;
  uint64_t no_reply_to;   /* requests without reply-to: handled, not answered */
  uint64_t undeliverable; /* the reply topic gone or full, or the reply too large */
  uint64_t refused;       /* through shmbusd: reply-to not an ephemeral topic */
  uint64_t malformed;     /* frames that are no valid envelope: skipped */
  uint64_t failed;        /* answered with status 500 (_fail) */
} shmbus_responder_stats_t;

SHMBUS_API void shmbus_request_init(shmbus_request_t* q);
/* Subscribes to `topic` (opts: as shmbus_subscriber_open, start LATEST only; NULL:
 * defaults). */
SHMBUS_API int shmbus_responder_open(shmbus_bus_t* bus, const char* topic,
                                     const shmbus_subscriber_options_t* opts, shmbus_responder_t** out);
SHMBUS_API void shmbus_responder_close(shmbus_responder_t* r);
/* The next request, waiting up to timeout_ns (<0: no limit). OK: *out is it, pending
 * until answered (a request still pending is skipped by the next _next).
 * SHMBUS_E_TIMED_OUT, SHMBUS_E_INTERRUPTED, or SHMBUS_E_MALFORMED: a frame that is no
 * valid envelope was skipped and counted (call again). */
SHMBUS_API int shmbus_responder_next(shmbus_responder_t* r, int64_t timeout_ns, shmbus_request_t* out);
/* Answers the pending request `q` with `len` bytes of payload (schema id, status) and
 * releases it. OK: published. Otherwise the request is released all the same and the
 * code says why nothing was published: SHMBUS_E_NOT_FOUND (no reply-to),
 * SHMBUS_E_PERMISSION_DENIED (refused: not a reply topic), SHMBUS_E_CLOSED (the reply
 * topic is gone or full), SHMBUS_E_TOO_LARGE (can never fit the reply topic).
 * SHMBUS_E_INVALID_ARGUMENT when `q` is not the request pending (answered already,
 * skipped, or not from this responder): nothing is done. */
SHMBUS_API int shmbus_responder_reply(shmbus_responder_t* r, const shmbus_request_t* q, const void* payload,
                                      size_t len, uint64_t schema_id, uint32_t status);
/* Answers as a failed handler: status 500, payload "exception: <why>" (counted failed). */
SHMBUS_API int shmbus_responder_fail(shmbus_responder_t* r, const shmbus_request_t* q, const char* why);
/* Releases the pending request without a reply. */
SHMBUS_API int shmbus_responder_skip(shmbus_responder_t* r, const shmbus_request_t* q);
SHMBUS_API int shmbus_responder_stats(shmbus_responder_t* r, shmbus_responder_stats_t* out);
SHMBUS_API int shmbus_responder_interrupt(shmbus_responder_t* r);

/* ---- Cap'n Proto helpers -------------------------------------------------- */
/* Checks that a view holds a well-formed flat Cap'n Proto message (segment table
 * within bounds) and returns its first segment: *seg0 and *seg0_words. For
 * readers that parse segments themselves. SHMBUS_E_MALFORMED otherwise. */
SHMBUS_API int shmbus_view_segments(const shmbus_view_t* v, const uint8_t** seg0, uint32_t* seg0_words,
                                    uint32_t* segment_count);

#ifdef __cplusplus
}
#endif
#endif /* SHMBUS_H */
