//! Raw bindings to the shmbus C ABI, written by hand from `ffi/include/shmbus.h`.
//!
//! Every item mirrors the header one to one (names, types, layouts). The layout test
//! (`tests/layout.rs`) compiles a C probe against the real header in `build.rs` and
//! checks every struct's size, alignment and field offsets, and every constant, so a
//! header change that is not carried over here fails `cargo test`.
//!
//! Linking: see `build.rs` (`SHMBUS_LIB_DIR` / `SHMBUS_LIB_NAME`, or pkg-config).
//! Use the safe `shmbus` crate unless you need the raw calls.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int};
use std::marker::{PhantomData, PhantomPinned};

pub const SHMBUS_ABI_VERSION: u32 = 1;

// ---- status codes --------------------------------------------------------
pub const SHMBUS_OK: c_int = 0;
pub const SHMBUS_E_EMPTY: c_int = -10001;
pub const SHMBUS_E_BACK_PRESSURED: c_int = -10002;
pub const SHMBUS_E_TIMED_OUT: c_int = -10003;
pub const SHMBUS_E_TOO_LARGE: c_int = -10004;
pub const SHMBUS_E_CORRUPT: c_int = -10005;
pub const SHMBUS_E_MALFORMED: c_int = -10006;
pub const SHMBUS_E_CLOSED: c_int = -10007;
pub const SHMBUS_E_INVALID_ARGUMENT: c_int = -10008;
pub const SHMBUS_E_NOT_FOUND: c_int = -10009;
pub const SHMBUS_E_ALREADY_EXISTS: c_int = -10010;
pub const SHMBUS_E_INCOMPATIBLE: c_int = -10011;
pub const SHMBUS_E_PERMISSION_DENIED: c_int = -10012;
pub const SHMBUS_E_NO_SLOT: c_int = -10013;
pub const SHMBUS_E_PROTOCOL: c_int = -10014;
pub const SHMBUS_E_NOT_CONNECTED: c_int = -10015;
pub const SHMBUS_E_INTERNAL: c_int = -10016;
pub const SHMBUS_E_UNSUPPORTED: c_int = -10017;
pub const SHMBUS_E_LAPPED: c_int = -10018;
pub const SHMBUS_E_INTERRUPTED: c_int = -10019;

// ---- enums (plain integers in structs) ------------------------------------
pub const SHMBUS_POLICY_BLOCK: u32 = 0;
pub const SHMBUS_POLICY_FAIL: u32 = 1;
pub const SHMBUS_POLICY_SPILL: u32 = 2;

pub const SHMBUS_WAIT_BUSY_SPIN: u32 = 0;
pub const SHMBUS_WAIT_SPIN_YIELD: u32 = 1;
pub const SHMBUS_WAIT_FUTEX: u32 = 2;
pub const SHMBUS_WAIT_HYBRID: u32 = 3;

pub const SHMBUS_START_LATEST: u32 = 0;
pub const SHMBUS_START_EARLIEST: u32 = 1;
pub const SHMBUS_START_SEQUENCE: u32 = 2;
pub const SHMBUS_START_TIME: u32 = 3;
pub const SHMBUS_FLUSH_NONE: u32 = 0;
pub const SHMBUS_FLUSH_INTERVAL: u32 = 1;
pub const SHMBUS_FLUSH_BATCH: u32 = 2;
/// `shmbus_register_schema` flag: check only, store nothing (SHMBUS_1.5).
pub const SHMBUS_SCHEMA_CHECK_ONLY: u32 = 1;
/// `shmbus_register_schema` flag: present as a subscriber (checked, never stored).
pub const SHMBUS_SCHEMA_SUBSCRIBER: u32 = 2;
/// `shmbus_set_schema_mode` mode: a new version reads what the latest stored wrote
/// (a topic's default; SHMBUS_1.7).
pub const SHMBUS_SCHEMA_BACKWARD: c_int = 0;
/// `shmbus_set_schema_mode` mode: the latest stored version reads what a new one writes.
pub const SHMBUS_SCHEMA_FORWARD: c_int = 1;
/// `shmbus_set_schema_mode` mode: both ways, against every stored version.
pub const SHMBUS_SCHEMA_FULL: c_int = 2;
/// `shmbus_set_schema_mode` mode: any well-formed schema is stored.
pub const SHMBUS_SCHEMA_NONE: c_int = 3;

pub const SHMBUS_ENVELOPE_SCHEMA_ID: u64 = 0xe8ba_f312_b14f_45c0;
pub const SHMBUS_MAX_REPLY_TO: usize = 255;
pub const SHMBUS_MAX_TRACE_STATE: usize = 512;
pub const SHMBUS_TRACEPARENT_LEN: usize = 55;
pub const SHMBUS_REPLY_STATUS_FAILED: u32 = 500;

// ---- opaque handles ---------------------------------------------------------
macro_rules! opaque {
    ($name:ident, $alias:ident) => {
        /// Opaque handle (only ever used behind a pointer).
        #[repr(C)]
        pub struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
        pub type $alias = $name;
    };
}
opaque!(shmbus_bus, shmbus_bus_t);
opaque!(shmbus_publisher, shmbus_publisher_t);
opaque!(shmbus_subscriber, shmbus_subscriber_t);
opaque!(shmbus_group_subscriber, shmbus_group_subscriber_t);
opaque!(shmbus_dedup, shmbus_dedup_t);
opaque!(shmbus_requester, shmbus_requester_t);
opaque!(shmbus_responder, shmbus_responder_t);

// ---- structs ------------------------------------------------------------------
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_topic_config_t {
    pub size: u32,
    pub partitions: u32,
    pub capacity: u64,
    pub max_payload: u64,
    pub policy: u32,
    pub multi_producer: u32,
    pub slots: u32,
    pub mode: u32,
    pub schema_id: u64,
}

/// Durable settings (ABI 1.2), versioned by `size`: pass `size_of` to
/// [`shmbus_durable_config_init`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_durable_config_t {
    pub size: u32,
    pub durable: u32,
    pub flush: u32,
    pub flush_interval_ms: u32,
    pub retention_bytes: u64,
    pub retention_age_s: u64,
    pub segment_bytes: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_publisher_options_t {
    pub size: u32,
    pub partition: u32,
    pub producer_id: u32,
    pub wait: u32,
    pub block_timeout_ns: i64,
    pub open_timeout_ms: i32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmbus_claim_t {
    pub data: *mut u8,
    pub size: u32,
    pub reserved: u32,
    pub sequence: u64,
}

impl Default for shmbus_claim_t {
    fn default() -> Self {
        Self {
            data: std::ptr::null_mut(),
            size: 0,
            reserved: 0,
            sequence: 0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_publisher_stats_t {
    pub published: u64,
    pub back_pressured: u64,
    pub blocked_waits: u64,
    pub builder_fallbacks: u64,
    pub reclaimed_cursors: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmbus_subscriber_options_t {
    pub size: u32,
    pub partition: u32,
    pub tethered: u32,
    pub wait: u32,
    pub spin_ns: i64,
    pub open_timeout_ms: i32,
    pub start: u32,
    pub start_value: u64,
    pub name: *const c_char,
}

impl Default for shmbus_subscriber_options_t {
    fn default() -> Self {
        Self {
            size: 0,
            partition: 0,
            tethered: 0,
            wait: 0,
            spin_ns: 0,
            open_timeout_ms: 0,
            start: 0,
            start_value: 0,
            name: std::ptr::null(),
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmbus_view_t {
    pub data: *const u8,
    pub size: u32,
    pub producer_id: u32,
    pub sequence: u64,
    pub timestamp_ns: u64,
    pub message_id: u64,
    pub schema_id: u64,
    pub position: u64,
    pub next_position: u64,
}

impl Default for shmbus_view_t {
    fn default() -> Self {
        Self {
            data: std::ptr::null(),
            size: 0,
            producer_id: 0,
            sequence: 0,
            timestamp_ns: 0,
            message_id: 0,
            schema_id: 0,
            position: 0,
            next_position: 0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_subscriber_stats_t {
    pub received: u64,
    pub waits: u64,
    pub corrupt: u64,
    pub position: u64,
}

// ---- consumer groups (SHMBUS_1.4) ----------------------------------------------
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_group_options_t {
    pub size: u32,
    pub tethered: u32,
    pub wait: u32,
    pub open_timeout_ms: i32,
    pub spin_ns: i64,
    pub sync_interval_ns: i64,
    pub idle_sync_ns: i64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct shmbus_group_view_t {
    pub view: shmbus_view_t,
    pub partition: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_group_stats_t {
    pub received: u64,
    pub syncs: u64,
    pub rebalances: u64,
    pub taken: u64,
    pub given_up: u64,
    pub take_retries: u64,
    pub rejoins: u64,
    pub member_id: u64,
    pub generation: u32,
    pub assigned: u32,
}

// ---- envelope (SHMBUS_1.4) ----------------------------------------------------
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmbus_envelope_t {
    pub size: u32,
    pub content_version: u32,
    pub correlation_id: u64,
    pub causation_id: u64,
    pub payload_schema_id: u64,
    pub trace_id_high: u64,
    pub trace_id_low: u64,
    pub trace_parent_id: u64,
    pub trace_flags: u32,
    pub status: u32,
    pub reply_to: [c_char; SHMBUS_MAX_REPLY_TO + 1],
    pub trace_state: [c_char; SHMBUS_MAX_TRACE_STATE + 1],
    pub reserved: [u8; 7],
}

impl Default for shmbus_envelope_t {
    fn default() -> Self {
        Self {
            size: 0,
            content_version: 0,
            correlation_id: 0,
            causation_id: 0,
            payload_schema_id: 0,
            trace_id_high: 0,
            trace_id_low: 0,
            trace_parent_id: 0,
            trace_flags: 0,
            status: 0,
            reply_to: [0; SHMBUS_MAX_REPLY_TO + 1],
            trace_state: [0; SHMBUS_MAX_TRACE_STATE + 1],
            reserved: [0; 7],
        }
    }
}

// ---- dedup window (SHMBUS_1.4) ----------------------------------------------------
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_dedup_stats_t {
    pub by_position: u64,
    pub by_id: u64,
    pub position: u64,
    pub size: u64,
}

// ---- request/response (SHMBUS_1.5) --------------------------------------------------
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmbus_requester_options_t {
    pub size: u32,
    pub open_timeout_ms: i32,
    pub reply_topic: *const c_char,
    pub capacity: u64,
    pub max_payload: u64,
    pub max_in_flight: u64,
    pub block_timeout_ns: i64,
}

impl Default for shmbus_requester_options_t {
    fn default() -> Self {
        Self {
            size: 0,
            open_timeout_ms: 0,
            reply_topic: std::ptr::null(),
            capacity: 0,
            max_payload: 0,
            max_in_flight: 0,
            block_timeout_ns: 0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmbus_reply_t {
    pub size: u32,
    pub status: u32,
    pub correlation_id: u64,
    pub schema_id: u64,
    pub message_id: u64,
    pub producer_id: u32,
    pub reserved: u32,
    pub data: *const u8,
    pub len: u64,
    pub envelope: shmbus_envelope_t,
}

impl Default for shmbus_reply_t {
    fn default() -> Self {
        Self {
            size: 0,
            status: 0,
            correlation_id: 0,
            schema_id: 0,
            message_id: 0,
            producer_id: 0,
            reserved: 0,
            data: std::ptr::null(),
            len: 0,
            envelope: shmbus_envelope_t::default(),
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_requester_stats_t {
    pub sent: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub stale: u64,
    pub forged: u64,
    pub malformed: u64,
    pub in_flight: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct shmbus_request_t {
    pub size: u32,
    pub enveloped: u32,
    pub token: u64,
    pub message_id: u64,
    pub producer_id: u32,
    pub reserved: u32,
    pub payload: shmbus_view_t,
    pub envelope: shmbus_envelope_t,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shmbus_responder_stats_t {
    pub requests: u64,
    pub replied: u64,
    pub no_reply_to: u64,
    pub undeliverable: u64,
    pub refused: u64,
    pub malformed: u64,
    pub failed: u64,
}

extern "C" {
    // ---- library ----
    pub fn shmbus_abi_version() -> u32;
    pub fn shmbus_strerror(rc: c_int) -> *const c_char;
    pub fn shmbus_last_error() -> *const c_char;
    pub fn shmbus_last_errno() -> c_int;

    // ---- bus ----
    pub fn shmbus_bus_open_direct(shm_prefix: *const c_char, out: *mut *mut shmbus_bus_t) -> c_int;
    pub fn shmbus_bus_connect(socket_path: *const c_char, out: *mut *mut shmbus_bus_t) -> c_int;
    pub fn shmbus_bus_open_embedded(state_dir: *const c_char, out: *mut *mut shmbus_bus_t)
        -> c_int;
    pub fn shmbus_bus_close(bus: *mut shmbus_bus_t);

    // ---- topics ----
    pub fn shmbus_topic_config_init(cfg: *mut shmbus_topic_config_t);
    pub fn shmbus_topic_create(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        cfg: *const shmbus_topic_config_t,
    ) -> c_int;
    pub fn shmbus_topic_remove(bus: *mut shmbus_bus_t, topic: *const c_char) -> c_int;
    pub fn shmbus_topic_describe(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        cfg: *mut shmbus_topic_config_t,
    ) -> c_int;

    // ---- publisher ----
    pub fn shmbus_publisher_options_init(o: *mut shmbus_publisher_options_t);
    pub fn shmbus_publisher_open(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        opts: *const shmbus_publisher_options_t,
        out: *mut *mut shmbus_publisher_t,
    ) -> c_int;
    pub fn shmbus_publisher_close(publisher: *mut shmbus_publisher_t);
    pub fn shmbus_publisher_claim(
        publisher: *mut shmbus_publisher_t,
        max_bytes: u32,
        out: *mut shmbus_claim_t,
    ) -> c_int;
    pub fn shmbus_publisher_try_claim(
        publisher: *mut shmbus_publisher_t,
        max_bytes: u32,
        out: *mut shmbus_claim_t,
    ) -> c_int;
    pub fn shmbus_publisher_commit(
        publisher: *mut shmbus_publisher_t,
        used: u32,
        message_id: u64,
        schema_id: u64,
    ) -> c_int;
    pub fn shmbus_publisher_commit_message(
        publisher: *mut shmbus_publisher_t,
        segment_words: u32,
        message_id: u64,
        schema_id: u64,
    ) -> c_int;
    pub fn shmbus_publisher_commit_message_and_claim(
        publisher: *mut shmbus_publisher_t,
        segment_words: u32,
        message_id: u64,
        schema_id: u64,
        next_max: u32,
        next: *mut shmbus_claim_t,
    ) -> c_int;
    pub fn shmbus_publisher_abort(publisher: *mut shmbus_publisher_t) -> c_int;
    // ---- multi-frame claims (SHMBUS_1.6) ----
    pub fn shmbus_publisher_claim_n(
        publisher: *mut shmbus_publisher_t,
        n: usize,
        max_bytes: u32,
        out: *mut shmbus_claim_t,
    ) -> c_int;
    pub fn shmbus_publisher_try_claim_n(
        publisher: *mut shmbus_publisher_t,
        n: usize,
        max_bytes: u32,
        out: *mut shmbus_claim_t,
    ) -> c_int;
    pub fn shmbus_publisher_commit_n(
        publisher: *mut shmbus_publisher_t,
        k: usize,
        used: *const u32,
        message_ids: *const u64,
        schema_id: u64,
    ) -> c_int;
    pub fn shmbus_publisher_commit_messages_n(
        publisher: *mut shmbus_publisher_t,
        k: usize,
        segment_words: *const u32,
        message_ids: *const u64,
        schema_id: u64,
        next_n: usize,
        next_max: u32,
        next: *mut shmbus_claim_t,
    ) -> c_int;
    pub fn shmbus_publisher_wait_space_n(
        publisher: *mut shmbus_publisher_t,
        n: usize,
        max_bytes: u32,
        timeout_ns: i64,
    ) -> c_int;
    pub fn shmbus_publisher_offer(
        publisher: *mut shmbus_publisher_t,
        data: *const std::ffi::c_void,
        len: usize,
        message_id: u64,
        schema_id: u64,
    ) -> c_int;
    pub fn shmbus_publisher_offer_packed(
        publisher: *mut shmbus_publisher_t,
        buf: *const std::ffi::c_void,
        lens: *const u32,
        n: usize,
        published: *mut usize,
    ) -> c_int;
    pub fn shmbus_publisher_stats(
        publisher: *mut shmbus_publisher_t,
        out: *mut shmbus_publisher_stats_t,
    ) -> c_int;
    pub fn shmbus_publisher_max_payload(publisher: *mut shmbus_publisher_t) -> u32;

    // ---- durable topics (SHMBUS_1.2) ----
    pub fn shmbus_durable_config_init(d: *mut shmbus_durable_config_t, size: u32);
    pub fn shmbus_topic_create_durable(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        cfg: *const shmbus_topic_config_t,
        dur: *const shmbus_durable_config_t,
    ) -> c_int;
    pub fn shmbus_topic_describe_durable(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        out: *mut shmbus_durable_config_t,
    ) -> c_int;
    // ---- schema registry (SHMBUS_1.5) ----
    pub fn shmbus_register_schema(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        root_id: u64,
        nodes: *const std::ffi::c_void,
        len: usize,
        flags: u32,
        version: *mut u32,
    ) -> c_int;
    // ---- schema mode (SHMBUS_1.7) ----
    pub fn shmbus_set_schema_mode(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        mode: c_int,
    ) -> c_int;
    pub fn shmbus_publisher_wait_durable(
        publisher: *mut shmbus_publisher_t,
        seq: u64,
        timeout_ns: i64,
    ) -> c_int;
    pub fn shmbus_publisher_durable_sequence(
        publisher: *mut shmbus_publisher_t,
        seq: *mut u64,
        archiver_errno: *mut c_int,
    ) -> c_int;

    // ---- subscriber ----
    pub fn shmbus_subscriber_options_init(o: *mut shmbus_subscriber_options_t);
    pub fn shmbus_subscriber_open(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        opts: *const shmbus_subscriber_options_t,
        out: *mut *mut shmbus_subscriber_t,
    ) -> c_int;
    pub fn shmbus_subscriber_close(sub: *mut shmbus_subscriber_t);
    pub fn shmbus_subscriber_poll(sub: *mut shmbus_subscriber_t, out: *mut shmbus_view_t) -> c_int;
    pub fn shmbus_subscriber_poll_wait(
        sub: *mut shmbus_subscriber_t,
        out: *mut shmbus_view_t,
        timeout_ns: i64,
    ) -> c_int;
    pub fn shmbus_subscriber_poll_batch(
        sub: *mut shmbus_subscriber_t,
        views: *mut shmbus_view_t,
        max: usize,
        timeout_ns: i64,
        n: *mut usize,
    ) -> c_int;
    pub fn shmbus_subscriber_release(
        sub: *mut shmbus_subscriber_t,
        v: *const shmbus_view_t,
    ) -> c_int;
    pub fn shmbus_subscriber_check(
        sub: *const shmbus_subscriber_t,
        v: *const shmbus_view_t,
    ) -> c_int;
    pub fn shmbus_subscriber_release_all(sub: *mut shmbus_subscriber_t) -> c_int;
    pub fn shmbus_subscriber_wait(sub: *mut shmbus_subscriber_t, timeout_ns: i64) -> c_int;
    // SHMBUS_1.3
    pub fn shmbus_subscriber_interrupt(sub: *mut shmbus_subscriber_t) -> c_int;
    pub fn shmbus_publisher_interrupt(publisher: *mut shmbus_publisher_t) -> c_int;
    pub fn shmbus_publisher_wait_space(
        publisher: *mut shmbus_publisher_t,
        max_bytes: u32,
        timeout_ns: i64,
    ) -> c_int;
    pub fn shmbus_subscriber_stats(
        sub: *mut shmbus_subscriber_t,
        out: *mut shmbus_subscriber_stats_t,
    ) -> c_int;

    // ---- consumer groups (SHMBUS_1.4) ----
    pub fn shmbus_group_options_init(o: *mut shmbus_group_options_t);
    pub fn shmbus_group_subscriber_open(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        group: *const c_char,
        opts: *const shmbus_group_options_t,
        out: *mut *mut shmbus_group_subscriber_t,
    ) -> c_int;
    pub fn shmbus_group_subscriber_close(g: *mut shmbus_group_subscriber_t);
    pub fn shmbus_group_subscriber_poll(
        g: *mut shmbus_group_subscriber_t,
        out: *mut shmbus_group_view_t,
    ) -> c_int;
    pub fn shmbus_group_subscriber_poll_wait(
        g: *mut shmbus_group_subscriber_t,
        out: *mut shmbus_group_view_t,
        timeout_ns: i64,
    ) -> c_int;
    pub fn shmbus_group_subscriber_release(
        g: *mut shmbus_group_subscriber_t,
        v: *const shmbus_group_view_t,
    ) -> c_int;
    pub fn shmbus_group_subscriber_release_all(g: *mut shmbus_group_subscriber_t) -> c_int;
    pub fn shmbus_group_subscriber_sync(
        g: *mut shmbus_group_subscriber_t,
        changed: *mut c_int,
    ) -> c_int;
    pub fn shmbus_group_subscriber_partitions(
        g: *mut shmbus_group_subscriber_t,
        out: *mut u32,
        max: usize,
        n: *mut usize,
    ) -> c_int;
    pub fn shmbus_group_subscriber_stats(
        g: *mut shmbus_group_subscriber_t,
        out: *mut shmbus_group_stats_t,
    ) -> c_int;
    pub fn shmbus_group_subscriber_interrupt(g: *mut shmbus_group_subscriber_t) -> c_int;

    // ---- envelope (SHMBUS_1.4) ----
    pub fn shmbus_envelope_init(e: *mut shmbus_envelope_t);
    pub fn shmbus_publisher_offer_enveloped(
        publisher: *mut shmbus_publisher_t,
        e: *const shmbus_envelope_t,
        payload: *const std::ffi::c_void,
        len: usize,
        message_id: u64,
    ) -> c_int;
    pub fn shmbus_view_open_envelope(
        v: *const shmbus_view_t,
        e: *mut shmbus_envelope_t,
        payload: *mut shmbus_view_t,
        enveloped: *mut c_int,
    ) -> c_int;
    pub fn shmbus_trace_parse(traceparent: *const c_char, e: *mut shmbus_envelope_t) -> c_int;
    pub fn shmbus_trace_format(e: *const shmbus_envelope_t, buf: *mut c_char, len: usize) -> c_int;
    pub fn shmbus_trace_fresh(e: *mut shmbus_envelope_t) -> c_int;
    pub fn shmbus_trace_child(e: *mut shmbus_envelope_t) -> c_int;

    // ---- dedup window (SHMBUS_1.4) ----
    pub fn shmbus_dedup_open(
        capacity: usize,
        path: *const c_char,
        out: *mut *mut shmbus_dedup_t,
    ) -> c_int;
    pub fn shmbus_dedup_close(d: *mut shmbus_dedup_t);
    pub fn shmbus_dedup_seen(
        d: *mut shmbus_dedup_t,
        producer_id: u32,
        message_id: u64,
        sequence: u64,
        seen: *mut c_int,
    ) -> c_int;
    pub fn shmbus_dedup_record(
        d: *mut shmbus_dedup_t,
        producer_id: u32,
        message_id: u64,
        sequence: u64,
    ) -> c_int;
    pub fn shmbus_dedup_commit(
        d: *mut shmbus_dedup_t,
        state: *const std::ffi::c_void,
        len: usize,
    ) -> c_int;
    pub fn shmbus_dedup_app_state(
        d: *mut shmbus_dedup_t,
        data: *mut *const u8,
        len: *mut usize,
    ) -> c_int;
    pub fn shmbus_dedup_stats(d: *mut shmbus_dedup_t, out: *mut shmbus_dedup_stats_t) -> c_int;

    // ---- request/response (SHMBUS_1.5) ----
    pub fn shmbus_requester_options_init(o: *mut shmbus_requester_options_t, size: u32);
    pub fn shmbus_reply_init(r: *mut shmbus_reply_t);
    pub fn shmbus_requester_open(
        bus: *mut shmbus_bus_t,
        opts: *const shmbus_requester_options_t,
        out: *mut *mut shmbus_requester_t,
    ) -> c_int;
    pub fn shmbus_requester_close(r: *mut shmbus_requester_t);
    pub fn shmbus_requester_send(
        r: *mut shmbus_requester_t,
        topic: *const c_char,
        payload: *const std::ffi::c_void,
        len: usize,
        schema_id: u64,
        trace: *const shmbus_envelope_t,
        corr: *mut u64,
    ) -> c_int;
    pub fn shmbus_requester_await(
        r: *mut shmbus_requester_t,
        corr: u64,
        timeout_ns: i64,
        out: *mut shmbus_reply_t,
    ) -> c_int;
    pub fn shmbus_requester_request(
        r: *mut shmbus_requester_t,
        topic: *const c_char,
        payload: *const std::ffi::c_void,
        len: usize,
        schema_id: u64,
        timeout_ns: i64,
        out: *mut shmbus_reply_t,
        corr: *mut u64,
    ) -> c_int;
    pub fn shmbus_requester_forget(r: *mut shmbus_requester_t, corr: u64) -> c_int;
    pub fn shmbus_requester_reply_topic(r: *mut shmbus_requester_t) -> *const c_char;
    pub fn shmbus_requester_stats(
        r: *mut shmbus_requester_t,
        out: *mut shmbus_requester_stats_t,
    ) -> c_int;
    pub fn shmbus_requester_interrupt(r: *mut shmbus_requester_t) -> c_int;
    pub fn shmbus_request_init(q: *mut shmbus_request_t);
    pub fn shmbus_responder_open(
        bus: *mut shmbus_bus_t,
        topic: *const c_char,
        opts: *const shmbus_subscriber_options_t,
        out: *mut *mut shmbus_responder_t,
    ) -> c_int;
    pub fn shmbus_responder_close(r: *mut shmbus_responder_t);
    pub fn shmbus_responder_next(
        r: *mut shmbus_responder_t,
        timeout_ns: i64,
        out: *mut shmbus_request_t,
    ) -> c_int;
    pub fn shmbus_responder_reply(
        r: *mut shmbus_responder_t,
        q: *const shmbus_request_t,
        payload: *const std::ffi::c_void,
        len: usize,
        schema_id: u64,
        status: u32,
    ) -> c_int;
    pub fn shmbus_responder_fail(
        r: *mut shmbus_responder_t,
        q: *const shmbus_request_t,
        why: *const c_char,
    ) -> c_int;
    pub fn shmbus_responder_skip(r: *mut shmbus_responder_t, q: *const shmbus_request_t) -> c_int;
    pub fn shmbus_responder_stats(
        r: *mut shmbus_responder_t,
        out: *mut shmbus_responder_stats_t,
    ) -> c_int;
    pub fn shmbus_responder_interrupt(r: *mut shmbus_responder_t) -> c_int;

    // ---- Cap'n Proto helpers ----
    pub fn shmbus_view_segments(
        v: *const shmbus_view_t,
        seg0: *mut *const u8,
        seg0_words: *mut u32,
        segment_count: *mut u32,
    ) -> c_int;
}
