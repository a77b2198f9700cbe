//! The envelope: correlation and causation ids, a W3C trace context, a reply-to
//! topic, a content version and a reply status around a payload (docs/messaging.md,
//! "The envelope"), written and read by the library's C++ code through the C ABI.
use std::ffi::{c_char, CStr};

use shmbus_sys as sys;

use crate::bus::cstring;
use crate::error::{check, Error, Result};

/// The frame schema id that flags an envelope (the Cap'n Proto type id of
/// `lib/schema/envelope.capnp`'s `Envelope`).
pub const ENVELOPE_SCHEMA_ID: u64 = sys::SHMBUS_ENVELOPE_SCHEMA_ID;

/// A W3C Trace Context (`traceparent` version 00 and `tracestate`). The default is
/// "no trace".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// High 64 bits of the 128-bit trace id.
    pub trace_id_high: u64,
    /// Low 64 bits of the 128-bit trace id.
    pub trace_id_low: u64,
    /// The sender's span id.
    pub parent_id: u64,
    /// Trace flags (0x01: sampled).
    pub flags: u8,
    /// `tracestate`, verbatim (at most 512 bytes).
    pub state: String,
}

/// The envelope of a message (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Correlation id (requests and their replies).
    pub correlation_id: u64,
    /// The message id that caused this one.
    pub causation_id: u64,
    /// A topic to reply to (at most 255 bytes), or empty.
    pub reply_to: String,
    /// The trace context (the default: none).
    pub trace: TraceContext,
    /// The payload's content version.
    pub content_version: u32,
    /// Replies: the application's status (0: ok).
    pub status: u32,
    /// The payload's own Cap'n Proto type id (0: none).
    pub payload_schema_id: u64,
}

/// An enveloped message read from a view: its envelope and its payload, in place in
/// the frame (borrowed from the view).
#[derive(Debug, Clone)]
pub struct Enveloped<'a> {
    /// The envelope's fields, copied out and validated.
    pub envelope: Envelope,
    /// The payload bytes, in the ring (or the replay copy) inside the frame.
    pub payload: &'a [u8],
}

pub(crate) fn raw() -> sys::shmbus_envelope_t {
    let mut e = sys::shmbus_envelope_t::default();
    // SAFETY: e is a valid, writable envelope struct.
    unsafe { sys::shmbus_envelope_init(&mut e) };
    e
}

pub(crate) fn trace_to_raw(t: &TraceContext, e: &mut sys::shmbus_envelope_t) {
    e.trace_id_high = t.trace_id_high;
    e.trace_id_low = t.trace_id_low;
    e.trace_parent_id = t.parent_id;
    e.trace_flags = u32::from(t.flags);
}

fn text(a: &[c_char]) -> String {
    // The C side NUL-terminates inside the array (a zeroed array at worst).
    let bytes: Vec<u8> = a
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn trace_from_raw(e: &sys::shmbus_envelope_t) -> TraceContext {
    TraceContext {
        trace_id_high: e.trace_id_high,
        trace_id_low: e.trace_id_low,
        parent_id: e.trace_parent_id,
        flags: e.trace_flags as u8,
        state: text(&e.trace_state),
    }
}

fn put_text(dst: &mut [c_char], s: &str, what: &str) -> Result<()> {
    if s.len() >= dst.len() || s.as_bytes().contains(&0) {
        return Err(Error::InvalidArgument(
            format!(
                "envelope: {what} is longer than {} bytes or has a NUL byte",
                dst.len() - 1
            )
            .into(),
        ));
    }
    for (d, &b) in dst.iter_mut().zip(s.as_bytes()) {
        *d = b as c_char;
    }
    Ok(())
}

impl Envelope {
    pub(crate) fn from_raw(e: &sys::shmbus_envelope_t) -> Envelope {
        Envelope {
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            reply_to: text(&e.reply_to),
            trace: trace_from_raw(e),
            content_version: e.content_version,
            status: e.status,
            payload_schema_id: e.payload_schema_id,
        }
    }

    pub(crate) fn to_raw(&self) -> Result<sys::shmbus_envelope_t> {
        let mut e = raw();
        e.correlation_id = self.correlation_id;
        e.causation_id = self.causation_id;
        e.content_version = self.content_version;
        e.status = self.status;
        e.payload_schema_id = self.payload_schema_id;
        trace_to_raw(&self.trace, &mut e);
        put_text(&mut e.reply_to, &self.reply_to, "reply_to")?;
        put_text(&mut e.trace_state, &self.trace.state, "trace state")?;
        Ok(e)
    }
}

impl TraceContext {
    /// Both ids non-zero (the W3C rule).
    pub fn is_valid(&self) -> bool {
        (self.trace_id_high | self.trace_id_low) != 0 && self.parent_id != 0
    }

    /// Reads a W3C `traceparent` ("00-<32 hex>-<16 hex>-<2 hex>", lower-case):
    /// `Err(Error::InvalidArgument)` when malformed or an id is zero.
    pub fn parse(traceparent: &str) -> Result<TraceContext> {
        let s = cstring(traceparent)?;
        let mut e = raw();
        // SAFETY: s is NUL-terminated; e is a valid, initialised envelope struct.
        check(unsafe { sys::shmbus_trace_parse(s.as_ptr(), &mut e) })?;
        Ok(trace_from_raw(&e))
    }

    /// The W3C `traceparent` header, or `None` when the context is not valid.
    pub fn traceparent(&self) -> Option<String> {
        let mut e = raw();
        trace_to_raw(self, &mut e);
        let mut buf = [0 as c_char; sys::SHMBUS_TRACEPARENT_LEN + 1];
        // SAFETY: e is a valid envelope struct; buf has buf.len() writable bytes.
        let rc = unsafe { sys::shmbus_trace_format(&e, buf.as_mut_ptr(), buf.len()) };
        if rc != sys::SHMBUS_OK {
            return None;
        }
        // SAFETY: on OK the library wrote a NUL-terminated string into buf.
        Some(
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// A new trace with random ids, sampled.
    pub fn fresh() -> TraceContext {
        let mut e = raw();
        // SAFETY: e is a valid, initialised envelope struct.
        unsafe { sys::shmbus_trace_fresh(&mut e) };
        trace_from_raw(&e)
    }

    /// The same trace with a new random span id (what a handler puts on what it
    /// sends), the trace state kept; `None` when this context is not valid.
    pub fn child(&self) -> Option<TraceContext> {
        let mut e = raw();
        trace_to_raw(self, &mut e);
        // SAFETY: e is a valid, initialised envelope struct.
        if unsafe { sys::shmbus_trace_child(&mut e) } != sys::SHMBUS_OK {
            return None;
        }
        let mut t = trace_from_raw(&e);
        t.state = self.state.clone();
        Some(t)
    }
}

/// Opens the envelope of a polled view (see `shmbus_view_open_envelope`): `None` for a
/// frame that is not an envelope.
pub(crate) fn open<'a>(v: &'a sys::shmbus_view_t) -> Result<Option<Enveloped<'a>>> {
    if v.schema_id != ENVELOPE_SCHEMA_ID || v.data.is_null() {
        return Ok(None);
    }
    let mut e = raw();
    let mut p = sys::shmbus_view_t::default();
    let mut flag = 0;
    // SAFETY: v is a view the library handed out (its bytes live for 'a); e, p and
    // flag are writable for the call.
    check(unsafe { sys::shmbus_view_open_envelope(v, &mut e, &mut p, &mut flag) })?;
    if flag == 0 {
        return Ok(None);
    }
    let payload: &'a [u8] = if p.data.is_null() || p.size == 0 {
        &[]
    } else {
        // SAFETY: the library checked that the payload lies inside the frame of `v`,
        // whose bytes are valid for 'a.
        unsafe { std::slice::from_raw_parts(p.data, p.size as usize) }
    };
    Ok(Some(Enveloped {
        envelope: Envelope {
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            reply_to: text(&e.reply_to),
            trace: trace_from_raw(&e),
            content_version: e.content_version,
            status: e.status,
            payload_schema_id: e.payload_schema_id,
        },
        payload,
    }))
}
