//! Request/response: C++'s `shmbus::Requester` and `shmbus::Responder` through the C
//! ABI (`shmbus_requester_*`, `shmbus_responder_*`), so one protocol and one behaviour
//! in every language (docs/messaging.md, "Request/response").
//!
//! ```no_run
//! use std::time::Duration;
//! # fn main() -> shmbus::Result<()> {
//! let bus = shmbus::Bus::connect(None)?;            // through shmbusd: ephemeral reply topics
//! let mut resp = bus.responder("pricing.quote", &Default::default())?;
//! let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
//! let s = stop.clone();
//! let server = std::thread::spawn(move || {
//!     resp.serve(|| s.load(std::sync::atomic::Ordering::Relaxed), |q| {
//!         if q.payload().is_empty() {
//!             return Err("no symbol");               // answered: status 500, "exception: no symbol"
//!         }
//!         Ok(shmbus::Response { payload: b"187.50".to_vec(), ..Default::default() })
//!     })
//! });
//! let mut req = bus.requester(&Default::default())?;
//! let r = req.request("pricing.quote", b"AAPL", Duration::from_millis(500))?;
//! assert_eq!((r.status, &r.payload[..]), (0, &b"187.50"[..]));
//! stop.store(true, std::sync::atomic::Ordering::Relaxed);
//! server.join().unwrap()?;
//! # Ok(()) }
//! ```
use std::ffi::{c_void, CStr, CString};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus_sys as sys;

use crate::bus::{cstring, timeout_ns, BusHandle};
use crate::envelope::{raw as raw_envelope, trace_to_raw, Envelope, TraceContext};
use crate::error::{check, Error, Result};
use crate::interrupt::Interrupter;
use crate::subscriber::{Start, SubscriberOptions};

/// The status of a reply whose handler failed (C++: it threw; Rust: `serve`'s function
/// returned `Err` or panicked); its payload is `exception: <reason>`.
pub const STATUS_FAILED: u32 = sys::SHMBUS_REPLY_STATUS_FAILED;

/// Options of a [`Requester`]. The default is the library's.
#[derive(Debug, Clone, Default)]
pub struct RequesterOptions {
    /// The reply topic's name (`None`: `reply.<pid>.<16 random hex digits>`).
    pub reply_topic: Option<String>,
    /// Reply ring bytes, a power of two >= 4096 (0: 1 MiB).
    pub capacity: u64,
    /// Largest reply payload (0: capacity / 4).
    pub max_payload: u64,
    /// Requests awaited at once (0: 4096).
    pub max_in_flight: u64,
    /// Sending into a full service topic (policy block): the longest wait (`None`: 1 s).
    pub block_timeout: Option<Duration>,
    /// A service topic being created: the longest wait for it (`None`: 5 s).
    pub open_timeout: Option<Duration>,
}

/// A reply taken by [`Requester::await_reply`] or [`Requester::request`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The request's correlation id.
    pub correlation_id: u64,
    /// The responder's status (0: ok; [`STATUS_FAILED`]: its handler failed).
    pub status: u32,
    /// The reply payload's schema id (0: opaque).
    pub schema_id: u64,
    /// The reply frame's message id.
    pub message_id: u64,
    /// The reply frame's producer id.
    pub producer_id: u32,
    /// The payload (a copy).
    pub payload: Vec<u8>,
    /// Every envelope field (`causation_id`: the request frame's message id).
    pub envelope: Envelope,
}

/// What a [`Requester`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequesterStats {
    /// Requests sent.
    pub sent: u64,
    /// Replies matched to a request in flight.
    pub replies: u64,
    /// Requests that got no reply in time.
    pub timeouts: u64,
    /// Replies to no request in flight: dropped.
    pub stale: u64,
    /// Replies with a request's correlation id but not its causation id: dropped.
    pub forged: u64,
    /// Frames on the reply topic that are no valid reply: dropped.
    pub malformed: u64,
    /// Requests awaited now.
    pub in_flight: u64,
}

/// Sends requests and takes their replies (see the module documentation). It owns a
/// reply topic; through shmbusd an ephemeral one the daemon removes when this
/// process's connection ends, however it ends. A reply is taken only with both random
/// ids of a request in flight (the correlation id and the request frame's message id);
/// anything else is dropped and counted, never returned.
///
/// `Send`, not `Sync` (one thread at a time); an [`Interrupter`] from
/// [`interrupter`](Requester::interrupter) ends a blocked wait from another thread.
pub struct Requester {
    raw: NonNull<sys::shmbus_requester_t>,
    _bus: Arc<BusHandle>,
    rep: Box<sys::shmbus_reply_t>,
    intr: Interrupter,
    reply_topic: String,
}

// SAFETY: the C ABI allows a requester handle to be used from any thread, one at a
// time; moving the single owner keeps that. Deliberately not Sync.
unsafe impl Send for Requester {}

impl Drop for Requester {
    fn drop(&mut self) {
        self.intr.retire();
        // SAFETY: raw came from a successful open and is closed exactly once, here; no
        // Interrupter can reach it any more (retired above).
        unsafe { sys::shmbus_requester_close(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("reply_topic", &self.reply_topic)
            .finish()
    }
}

fn dur_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Requester {
    pub(crate) fn open(bus: Arc<BusHandle>, opts: &RequesterOptions) -> Result<Self> {
        let name: Option<CString> = opts.reply_topic.as_deref().map(cstring).transpose()?;
        let mut o = sys::shmbus_requester_options_t::default();
        // SAFETY: o is a valid, writable struct of the size passed.
        unsafe {
            sys::shmbus_requester_options_init(
                &mut o,
                std::mem::size_of::<sys::shmbus_requester_options_t>() as u32,
            )
        };
        o.reply_topic = name.as_ref().map_or(ptr::null(), |n| n.as_ptr());
        if opts.capacity > 0 {
            o.capacity = opts.capacity;
        }
        o.max_payload = opts.max_payload;
        if opts.max_in_flight > 0 {
            o.max_in_flight = opts.max_in_flight;
        }
        if let Some(d) = opts.block_timeout {
            o.block_timeout_ns = dur_ns(d);
        }
        if let Some(d) = opts.open_timeout {
            o.open_timeout_ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        }
        let mut out: *mut sys::shmbus_requester_t = ptr::null_mut();
        // SAFETY: the bus handle is live (Arc held); o (and the name it points to) and
        // out are valid for the call.
        check(unsafe { sys::shmbus_requester_open(bus.as_ptr(), &o, &mut out) })?;
        let raw = NonNull::new(out)
            .ok_or_else(|| Error::Internal("requester open returned OK and NULL".into()))?;
        // SAFETY: raw is live; the name is NUL-terminated and valid until close.
        let reply_topic =
            unsafe { CStr::from_ptr(sys::shmbus_requester_reply_topic(raw.as_ptr())) }
                .to_string_lossy()
                .into_owned();
        let mut rep = Box::<sys::shmbus_reply_t>::default();
        // SAFETY: rep is a valid, writable reply struct.
        unsafe { sys::shmbus_reply_init(&mut *rep) };
        Ok(Requester {
            raw,
            _bus: bus,
            rep,
            intr: Interrupter::requester(raw),
            reply_topic,
        })
    }

    /// The reply topic's name.
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// A handle another thread can use to end a blocked [`await_reply`](Self::await_reply)
    /// or [`request`](Self::request) at once (`Err(Error::Interrupted)`; the request
    /// stays in flight).
    pub fn interrupter(&self) -> Interrupter {
        self.intr.clone()
    }

    /// Publishes a request on `topic` (payload schema id `schema_id`, 0: opaque;
    /// `trace`: continue that trace with a child span, `None`: a fresh trace) and
    /// returns its correlation id. `Err(Error::BackPressured)` when the topic is full or
    /// `max_in_flight` requests wait; `Err(Error::NotFound)` for a missing topic.
    pub fn send(
        &mut self,
        topic: &str,
        payload: &[u8],
        schema_id: u64,
        trace: Option<&TraceContext>,
    ) -> Result<u64> {
        let t = cstring(topic)?;
        let tr = trace.map(|t| {
            let mut e = raw_envelope();
            trace_to_raw(t, &mut e);
            e
        });
        let mut corr = 0u64;
        // SAFETY: raw is live; t, payload, tr and corr are valid for the call.
        check(unsafe {
            sys::shmbus_requester_send(
                self.raw.as_ptr(),
                t.as_ptr(),
                payload.as_ptr().cast::<c_void>(),
                payload.len(),
                schema_id,
                tr.as_ref().map_or(ptr::null(), |e| e as *const _),
                &mut corr,
            )
        })?;
        Ok(corr)
    }

    /// Waits up to `timeout` (`None`: no limit) for the reply to `corr`.
    /// `Err(Error::TimedOut)`: none came in time and `corr` is forgotten (a late reply
    /// is dropped as stale). `Err(Error::Closed)`: `corr` is not in flight (never sent,
    /// answered, timed out, forgotten). `Err(Error::Interrupted)`: the
    /// [`Interrupter`] ended the wait; `corr` stays in flight. Replies to other
    /// requests in flight that come meanwhile are kept for them.
    pub fn await_reply(&mut self, corr: u64, timeout: Option<Duration>) -> Result<Reply> {
        // SAFETY: raw is live; rep is a valid reply struct owned by self.
        check(unsafe {
            sys::shmbus_requester_await(
                self.raw.as_ptr(),
                corr,
                timeout_ns(timeout),
                &mut *self.rep,
            )
        })?;
        let r = &*self.rep;
        let payload = if r.data.is_null() || r.len == 0 {
            Vec::new()
        } else {
            // SAFETY: on OK data points to len bytes owned by the requester, valid
            // until its next call (this copies them now).
            unsafe { std::slice::from_raw_parts(r.data, r.len as usize) }.to_vec()
        };
        Ok(Reply {
            correlation_id: r.correlation_id,
            status: r.status,
            schema_id: r.schema_id,
            message_id: r.message_id,
            producer_id: r.producer_id,
            payload,
            envelope: Envelope::from_raw(&r.envelope),
        })
    }

    /// [`send`](Self::send) (schema id 0, a fresh trace) then
    /// [`await_reply`](Self::await_reply) with `timeout`.
    pub fn request(&mut self, topic: &str, payload: &[u8], timeout: Duration) -> Result<Reply> {
        let corr = self.send(topic, payload, 0, None)?;
        self.await_reply(corr, Some(timeout))
    }

    /// Stops waiting for `corr`: its reply will be dropped as stale.
    pub fn forget(&mut self, corr: u64) {
        // SAFETY: raw is live.
        unsafe { sys::shmbus_requester_forget(self.raw.as_ptr(), corr) };
    }

    /// The requester's counters.
    pub fn stats(&self) -> RequesterStats {
        let mut s = sys::shmbus_requester_stats_t::default();
        // SAFETY: raw is live; s is writable.
        unsafe { sys::shmbus_requester_stats(self.raw.as_ptr(), &mut s) };
        RequesterStats {
            sent: s.sent,
            replies: s.replies,
            timeouts: s.timeouts,
            stale: s.stale,
            forged: s.forged,
            malformed: s.malformed,
            in_flight: s.in_flight,
        }
    }
}

/// What a responder answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The reply payload.
    pub payload: Vec<u8>,
    /// The reply payload's schema id.
    pub schema_id: u64,
    /// Application status (0: ok).
    pub status: u32,
    /// No reply at all (the requester times out).
    pub no_reply: bool,
}

/// What a [`Responder`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Requests taken.
    pub requests: u64,
    /// Replies published.
    pub replied: u64,
    /// Requests without reply-to: handled, not answered.
    pub no_reply_to: u64,
    /// Replies dropped: the reply topic gone or full, or the reply too large.
    pub undeliverable: u64,
    /// Through shmbusd: reply-to is not an ephemeral (reply) topic: refused.
    pub refused: u64,
    /// Frames that are no valid envelope: skipped.
    pub malformed: u64,
    /// Answered with [`STATUS_FAILED`].
    pub failed: u64,
}

/// Answers the requests of a service topic (see the module documentation). Through
/// shmbusd it answers only on ephemeral (reply) topics. [`serve`](Responder::serve)
/// runs a function per request; [`next`](Responder::next) and the [`Request`]'s
/// `reply`/`fail`/`skip` are the same by hand.
///
/// `Send`, not `Sync`.
pub struct Responder {
    raw: NonNull<sys::shmbus_responder_t>,
    _bus: Arc<BusHandle>,
    req: Box<sys::shmbus_request_t>,
    intr: Interrupter,
}

// SAFETY: as for Requester: one thread at a time, the owner moves. Not Sync.
unsafe impl Send for Responder {}

impl Drop for Responder {
    fn drop(&mut self) {
        self.intr.retire();
        // SAFETY: raw came from a successful open and is closed exactly once, here; no
        // Request borrows the responder (they borrow it mutably), no Interrupter
        // reaches it any more.
        unsafe { sys::shmbus_responder_close(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("handle", &self.raw)
            .finish()
    }
}

/// A request taken by [`Responder::next`]: pending until [`reply`](Request::reply),
/// [`fail`](Request::fail) or [`skip`](Request::skip); dropping it unanswered skips it
/// (no reply). Its payload is read in place in the service ring (it borrows the
/// responder).
pub struct Request<'r> {
    resp: &'r mut Responder,
    payload: &'r [u8],
    envelope: Envelope,
    answered: bool,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("envelope", &self.envelope)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl Responder {
    pub(crate) fn open(bus: Arc<BusHandle>, topic: &str, opts: &SubscriberOptions) -> Result<Self> {
        let t = cstring(topic)?;
        let name: Option<CString> = opts.name.as_deref().map(cstring).transpose()?;
        let mut raw = sys::shmbus_subscriber_options_t::default();
        // SAFETY: raw is a valid, writable options struct; init sets `size`.
        unsafe { sys::shmbus_subscriber_options_init(&mut raw) };
        raw.partition = opts.partition;
        raw.tethered = u32::from(opts.tethered);
        raw.wait = opts.wait.to_raw();
        raw.spin_ns = dur_ns(opts.spin);
        raw.open_timeout_ms = i32::try_from(opts.open_timeout.as_millis()).unwrap_or(i32::MAX);
        if !matches!(opts.start, Start::Latest) {
            return Err(Error::InvalidArgument(
                "a responder starts at Start::Latest".into(),
            ));
        }
        raw.name = name.as_ref().map_or(ptr::null(), |n| n.as_ptr());
        let mut out: *mut sys::shmbus_responder_t = ptr::null_mut();
        // SAFETY: the bus handle is live (Arc held); t, raw (and the name it points
        // to) and out are valid for the call.
        check(unsafe { sys::shmbus_responder_open(bus.as_ptr(), t.as_ptr(), &raw, &mut out) })?;
        let h = NonNull::new(out)
            .ok_or_else(|| Error::Internal("responder open returned OK and NULL".into()))?;
        let mut req = Box::<sys::shmbus_request_t>::default();
        // SAFETY: req is a valid, writable request struct.
        unsafe { sys::shmbus_request_init(&mut *req) };
        Ok(Responder {
            raw: h,
            _bus: bus,
            req,
            intr: Interrupter::responder(h),
        })
    }

    /// A handle another thread can use to end a blocked [`next`](Self::next) or
    /// [`serve`](Self::serve) wait at once.
    pub fn interrupter(&self) -> Interrupter {
        self.intr.clone()
    }

    /// The next request, waiting up to `timeout` (`None`: no limit): `Ok(None)` when
    /// none came in time. `Err(Error::Interrupted)` when the [`Interrupter`] ended the
    /// wait. Frames that are no valid envelope are skipped and counted.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Request<'_>>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // SAFETY: raw is live; req is a valid request struct owned by self.
            let rc = unsafe {
                sys::shmbus_responder_next(self.raw.as_ptr(), timeout_ns(left), &mut *self.req)
            };
            match rc {
                sys::SHMBUS_OK => break,
                sys::SHMBUS_E_TIMED_OUT => return Ok(None),
                sys::SHMBUS_E_MALFORMED => continue,
                _ => return Err(Error::from_code(rc)),
            }
        }
        let q = &*self.req;
        let payload: &[u8] = if q.payload.data.is_null() || q.payload.size == 0 {
            &[]
        } else {
            // SAFETY: the payload lies in the service ring, valid while the request is
            // pending: until it is answered or the next `next`, both of which need the
            // `&mut self` this Request borrows.
            unsafe { std::slice::from_raw_parts(q.payload.data, q.payload.size as usize) }
        };
        let envelope = Envelope::from_raw(&q.envelope);
        Ok(Some(Request {
            resp: self,
            payload,
            envelope,
            answered: false,
        }))
    }

    /// Answers requests with `f` until `stop()` is true (checked at least every 10 ms
    /// and after each request) or the [`Interrupter`] is raised (then `Ok(())`). An
    /// `Err` from `f`, or a panic, is answered with [`STATUS_FAILED`] and
    /// `exception: <error>` as payload, at once, as C++ answers a function that throws.
    /// A reply that cannot be delivered is counted ([`stats`](Self::stats)), not
    /// returned.
    pub fn serve<E, F>(&mut self, stop: impl Fn() -> bool, mut f: F) -> Result<()>
    where
        E: std::fmt::Display,
        F: FnMut(&Request<'_>) -> std::result::Result<Response, E>,
    {
        while !stop() {
            let q = match self.next(Some(Duration::from_millis(10))) {
                Ok(Some(q)) => q,
                Ok(None) => continue,
                Err(Error::Interrupted) => return Ok(()),
                Err(e) => return Err(e),
            };
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&q)));
            // Undeliverable replies are counted in the stats; serving goes on.
            let _ = match out {
                Ok(Ok(r)) => q.reply(&r),
                Ok(Err(e)) => q.fail(&e.to_string()),
                Err(p) => {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string payload".into());
                    q.fail(&format!("panic: {why}"))
                }
            };
        }
        Ok(())
    }

    /// The responder's counters.
    pub fn stats(&self) -> ResponderStats {
        let mut s = sys::shmbus_responder_stats_t::default();
        // SAFETY: raw is live; s is writable.
        unsafe { sys::shmbus_responder_stats(self.raw.as_ptr(), &mut s) };
        ResponderStats {
            requests: s.requests,
            replied: s.replied,
            no_reply_to: s.no_reply_to,
            undeliverable: s.undeliverable,
            refused: s.refused,
            malformed: s.malformed,
            failed: s.failed,
        }
    }
}

impl Request<'_> {
    /// The request payload, in place in the service ring.
    pub fn payload(&self) -> &[u8] {
        self.payload
    }

    /// The request's envelope (correlation id, reply-to, trace ...); empty for a plain
    /// frame.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The payload's schema id.
    pub fn schema_id(&self) -> u64 {
        self.resp.req.payload.schema_id
    }

    /// Whether the frame was an envelope (a plain frame cannot be answered).
    pub fn is_enveloped(&self) -> bool {
        self.resp.req.enveloped != 0
    }

    /// The request frame's message id (the causation id of its reply).
    pub fn message_id(&self) -> u64 {
        self.resp.req.message_id
    }

    /// The request frame's producer id.
    pub fn producer_id(&self) -> u32 {
        self.resp.req.producer_id
    }

    fn answer(
        mut self,
        f: impl FnOnce(*mut sys::shmbus_responder_t, *const sys::shmbus_request_t) -> i32,
    ) -> Result<()> {
        self.answered = true;
        let r = f(self.resp.raw.as_ptr(), &*self.resp.req);
        check(r)
    }

    /// Answers with `r` (`r.no_reply`: no reply) and releases the request. `Ok`:
    /// published. Otherwise nothing was published and the error says why:
    /// `NotFound` (no reply-to), `PermissionDenied` (reply-to is no reply topic),
    /// `Closed` (the reply topic is gone or full), `TooLarge` (can never fit it).
    pub fn reply(self, r: &Response) -> Result<()> {
        if r.no_reply {
            return self.skip();
        }
        self.answer(|h, q| {
            // SAFETY: h is live (the Request borrows its responder); q is the pending
            // request the library filled; the payload is valid for the call.
            unsafe {
                sys::shmbus_responder_reply(
                    h,
                    q,
                    r.payload.as_ptr().cast::<c_void>(),
                    r.payload.len(),
                    r.schema_id,
                    r.status,
                )
            }
        })
    }

    /// Answers as a failed handler: status [`STATUS_FAILED`], payload
    /// `exception: <why>`.
    pub fn fail(self, why: &str) -> Result<()> {
        let w = CString::new(why.replace('\0', " ")).unwrap_or_default();
        // SAFETY: as in reply; w is NUL-terminated.
        self.answer(|h, q| unsafe { sys::shmbus_responder_fail(h, q, w.as_ptr()) })
    }

    /// Releases the request without a reply (its requester times out).
    pub fn skip(self) -> Result<()> {
        // SAFETY: as in reply.
        self.answer(|h, q| unsafe { sys::shmbus_responder_skip(h, q) })
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if !self.answered {
            // SAFETY: the responder is live (borrowed) and this is its pending request.
            unsafe { sys::shmbus_responder_skip(self.resp.raw.as_ptr(), &*self.resp.req) };
        }
    }
}
