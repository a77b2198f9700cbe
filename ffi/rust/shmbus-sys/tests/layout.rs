//! Checks the hand-written bindings against the C header: struct sizes, alignments,
//! field offsets and sizes, and constant values, as reported by a C program compiled
//! against `shmbus.h` at build time (see build.rs and layout/probe.c).
use shmbus_sys::*;
use std::mem::{align_of, offset_of, size_of};

mod c {
    include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));
}

fn c_size(t: &str) -> (usize, usize) {
    let e = c::C_SIZES
        .iter()
        .find(|e| e.0 == t)
        .unwrap_or_else(|| panic!("{t} not probed"));
    (e.1, e.2)
}

fn c_off(t: &str, f: &str) -> (usize, usize) {
    let e = c::C_OFFSETS
        .iter()
        .find(|e| e.0 == t && e.1 == f)
        .unwrap_or_else(|| panic!("{t}.{f} not probed"));
    (e.2, e.3)
}

fn field_size<T, F>(_: impl Fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! check_struct {
    ($t:ident { $($f:ident),* $(,)? }) => {{
        assert_eq!((size_of::<$t>(), align_of::<$t>()), c_size(stringify!($t)),
                   "size/align of {}", stringify!($t));
        let mut n = 0;
        $(
            n += 1;
            assert_eq!((offset_of!($t, $f), field_size(|s: &$t| &s.$f)),
                       c_off(stringify!($t), stringify!($f)),
                       "offset/size of {}.{}", stringify!($t), stringify!($f));
        )*
        let probed = c::C_OFFSETS.iter().filter(|e| e.0 == stringify!($t)).count();
        assert_eq!(n, probed, "field count of {}", stringify!($t));
    }};
}

#[test]
fn struct_layouts_match_header() {
    check_struct!(shmbus_topic_config_t {
        size,
        partitions,
        capacity,
        max_payload,
        policy,
        multi_producer,
        slots,
        mode,
        schema_id
    });
    check_struct!(shmbus_publisher_options_t {
        size,
        partition,
        producer_id,
        wait,
        block_timeout_ns,
        open_timeout_ms,
        reserved
    });
    check_struct!(shmbus_claim_t {
        data,
        size,
        reserved,
        sequence
    });
    check_struct!(shmbus_publisher_stats_t {
        published,
        back_pressured,
        blocked_waits,
        builder_fallbacks,
        reclaimed_cursors
    });
    check_struct!(shmbus_subscriber_options_t {
        size,
        partition,
        tethered,
        wait,
        spin_ns,
        open_timeout_ms,
        start,
        start_value,
        name
    });
    check_struct!(shmbus_view_t {
        data,
        size,
        producer_id,
        sequence,
        timestamp_ns,
        message_id,
        schema_id,
        position,
        next_position
    });
    check_struct!(shmbus_subscriber_stats_t {
        received,
        waits,
        corrupt,
        position
    });
    check_struct!(shmbus_durable_config_t {
        size,
        durable,
        flush,
        flush_interval_ms,
        retention_bytes,
        retention_age_s,
        segment_bytes
    });
    check_struct!(shmbus_group_options_t {
        size,
        tethered,
        wait,
        open_timeout_ms,
        spin_ns,
        sync_interval_ns,
        idle_sync_ns
    });
    check_struct!(shmbus_group_view_t {
        view,
        partition,
        reserved
    });
    check_struct!(shmbus_group_stats_t {
        received,
        syncs,
        rebalances,
        taken,
        given_up,
        take_retries,
        rejoins,
        member_id,
        generation,
        assigned
    });
    check_struct!(shmbus_envelope_t {
        size,
        content_version,
        correlation_id,
        causation_id,
        payload_schema_id,
        trace_id_high,
        trace_id_low,
        trace_parent_id,
        trace_flags,
        status,
        reply_to,
        trace_state,
        reserved,
    });
    check_struct!(shmbus_dedup_stats_t {
        by_position,
        by_id,
        position,
        size
    });
    check_struct!(shmbus_requester_options_t {
        size,
        open_timeout_ms,
        reply_topic,
        capacity,
        max_payload,
        max_in_flight,
        block_timeout_ns
    });
    check_struct!(shmbus_reply_t {
        size,
        status,
        correlation_id,
        schema_id,
        message_id,
        producer_id,
        reserved,
        data,
        len,
        envelope
    });
    check_struct!(shmbus_requester_stats_t {
        sent,
        replies,
        timeouts,
        stale,
        forged,
        malformed,
        in_flight
    });
    check_struct!(shmbus_request_t {
        size,
        enveloped,
        token,
        message_id,
        producer_id,
        reserved,
        payload,
        envelope
    });
    check_struct!(shmbus_responder_stats_t {
        requests,
        replied,
        no_reply_to,
        undeliverable,
        refused,
        malformed,
        failed
    });
    assert_eq!(c::C_SIZES.len(), 18, "every probed struct is checked");
}

macro_rules! check_consts {
    ($($c:ident),* $(,)?) => {{
        let mut n = 0;
        $(
            n += 1;
            let c_val = c::C_CONSTS.iter().find(|e| e.0 == stringify!($c))
                .unwrap_or_else(|| panic!("{} not probed", stringify!($c))).1;
            assert_eq!($c as i64, c_val, "value of {}", stringify!($c));
        )*
        assert_eq!(n, c::C_CONSTS.len(), "every probed constant is checked");
    }};
}

#[test]
fn constants_match_header() {
    check_consts!(
        SHMBUS_ABI_VERSION,
        SHMBUS_OK,
        SHMBUS_E_EMPTY,
        SHMBUS_E_BACK_PRESSURED,
        SHMBUS_E_TIMED_OUT,
        SHMBUS_E_TOO_LARGE,
        SHMBUS_E_CORRUPT,
        SHMBUS_E_MALFORMED,
        SHMBUS_E_CLOSED,
        SHMBUS_E_INVALID_ARGUMENT,
        SHMBUS_E_NOT_FOUND,
        SHMBUS_E_ALREADY_EXISTS,
        SHMBUS_E_INCOMPATIBLE,
        SHMBUS_E_PERMISSION_DENIED,
        SHMBUS_E_NO_SLOT,
        SHMBUS_E_PROTOCOL,
        SHMBUS_E_NOT_CONNECTED,
        SHMBUS_E_INTERNAL,
        SHMBUS_E_UNSUPPORTED,
        SHMBUS_E_LAPPED,
        SHMBUS_POLICY_BLOCK,
        SHMBUS_POLICY_FAIL,
        SHMBUS_POLICY_SPILL,
        SHMBUS_WAIT_BUSY_SPIN,
        SHMBUS_WAIT_SPIN_YIELD,
        SHMBUS_WAIT_FUTEX,
        SHMBUS_WAIT_HYBRID,
        SHMBUS_START_LATEST,
        SHMBUS_START_EARLIEST,
        SHMBUS_START_SEQUENCE,
        SHMBUS_START_TIME,
        SHMBUS_FLUSH_NONE,
        SHMBUS_FLUSH_INTERVAL,
        SHMBUS_FLUSH_BATCH,
        SHMBUS_SCHEMA_BACKWARD,
        SHMBUS_SCHEMA_FORWARD,
        SHMBUS_SCHEMA_FULL,
        SHMBUS_SCHEMA_NONE,
        SHMBUS_ENVELOPE_SCHEMA_ID,
        SHMBUS_MAX_REPLY_TO,
        SHMBUS_MAX_TRACE_STATE,
        SHMBUS_TRACEPARENT_LEN,
        SHMBUS_REPLY_STATUS_FAILED,
    );
}

#[test]
fn library_abi_version_matches() {
    // SAFETY: shmbus_abi_version takes no arguments and only returns a constant.
    let v = unsafe { shmbus_abi_version() };
    assert_eq!(v, SHMBUS_ABI_VERSION);
}
