//! The handler runner: a handler over one partition of a topic, with retries
//! (exponential backoff and jitter), a circuit breaker and dead letters — C++'s
//! `shmbus::HandlerRunner` (`lib/include/shmbus/handler.hpp`, docs/messaging.md,
//! "Handler runner (Rust)"), written natively over this crate's [`Subscriber`] and
//! [`Publisher`], with the same defaults, backoff formula, breaker transitions and
//! `DeadLetter` fields.
//!
//! ```no_run
//! use shmbus::handler::{HandlerOptions, HandlerRunner, Outcome};
//! use shmbus::{Bus, Message, SubscriberOptions};
//! # fn main() -> shmbus::Result<()> {
//! let bus = Bus::connect(None)?;
//! let o = HandlerOptions {
//!     name: "fulfilment".into(),
//!     // durable: a restart resumes at the first unfinished message
//!     subscriber: SubscriberOptions { name: Some("fulfilment".into()), ..Default::default() },
//!     ..Default::default()
//! };
//! let mut run = HandlerRunner::new(&bus, "orders.fulfillment.completed", |m: &Message<'_>| {
//!     if m.is_empty() {
//!         return Outcome::reject("empty order", 400);
//!     }
//!     Outcome::ack()
//! }, o)?;
//! let stopping = std::sync::atomic::AtomicBool::new(false);
//! run.run(&|| stopping.load(std::sync::atomic::Ordering::Relaxed))?;
//! # Ok(()) }
//! ```
//!
//! - **One partition, in order.** A runner handles its partition's messages one at a
//!   time. A message is released only when it is acked or dead-lettered: while it is
//!   retried (or the breaker is open) the ring holds it, and a tethered subscription
//!   back-pressures the producer; there is no queue to grow. [`WorkerPool`] runs one
//!   runner per partition, each on a thread of its own; [`AsyncHandlerRunner`] runs
//!   an `async` handler from any executor (tokio included) without a busy thread.
//! - **Outcomes**: [`Outcome::ack`], [`Outcome::retry`] (transient: tried again after
//!   the backoff, or the delay given), [`Outcome::reject`] (permanent: dead-lettered
//!   at once). A handler that panics is a retry whose reason is `panic: <message>`.
//! - **Backoff** before attempt *a* (2 = the first retry):
//!   `min(initial × multiplier^(a−2), max)` scaled by a uniform factor in
//!   `[1 − jitter, 1 + jitter]` ([`RetryPolicy::backoff_ns`], the C++ formula and
//!   generator: xorshift64* seeded by [`HandlerOptions::seed`]).
//! - **Circuit breaker** ([`CircuitBreaker`]): `failure_threshold` consecutive failed
//!   attempts open it; while open no attempt is made (the message waits, unreleased);
//!   after `open_ns` one trial runs (half-open): a failure re-opens it,
//!   `half_open_successes` successes close it.
//! - **Dead letters**: after `max_attempts` failed attempts, or a reject, a
//!   `DeadLetter` ([`crate::envelope_capnp::dead_letter`]) goes to `<topic>.dlq`
//!   with the original message id as the frame's message id and
//!   [`DEAD_LETTER_SCHEMA_ID`] as its schema id; then the message is released.
//! - **Per-attempt timeout** ([`HandlerOptions::attempt_timeout`], [`TimeoutLayer`]):
//!   cooperative for a blocking handler (it is not interrupted; an attempt that
//!   overran counts as failed, reason `timeout: ...`, whatever it returned unless it
//!   rejected); an async handler's future is dropped at the deadline.
//! - **Shutdown**: [`HandlerRunner::run`] and [`HandlerRunner::step`] check `stop()`
//!   between messages, between attempts and while waiting (every 10 ms at most); a
//!   message being retried when `stop()` turns true is not released: a durable
//!   subscriber name gets it again at restart.
//! - **Layers** ([`Layer`], [`HandlerBuilder`]): wrap a handler, in the spirit of
//!   tower's `ServiceBuilder`; [`RecoverLayer`], [`TimeoutLayer`], [`MetricsLayer`]
//!   ([`HandlerMetrics`]), [`TraceLayer`] (a span per attempt; [`json_lines`] logs it).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capnp::traits::HasTypeId;

use shmbus_sys as sys;

use crate::bus::{Bus, TopicConfig};
use crate::dedup::DedupWindow;
use crate::envelope::TraceContext;
use crate::envelope_capnp::dead_letter;
use crate::error::{Error, Result};
use crate::interrupt::Interrupter;
use crate::publisher::{Publisher, PublisherOptions};
use crate::subscriber::{Message, Subscriber, SubscriberOptions};

#[cfg(feature = "tokio")]
pub use crate::handler_async::{AsyncBridge, AsyncHandlerRunner, AsyncStopper};

/// The frame schema id of a dead letter: the Cap'n Proto type id of
/// `lib/schema/envelope.capnp`'s `DeadLetter`.
pub const DEAD_LETTER_SCHEMA_ID: u64 = <dead_letter::Reader<'static> as HasTypeId>::TYPE_ID;

/// What a handler says about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Done: the message is released.
    Ack,
    /// A transient failure: tried again per the retry policy.
    Retry,
    /// A permanent failure: dead-lettered now.
    Reject,
}

/// What a handler says about one message (C++ `shmbus::Outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Ack, retry or reject.
    pub kind: OutcomeKind,
    /// The application's error code (in the dead letter; 0: none).
    pub code: u32,
    /// The reason (in the dead letter).
    pub message: String,
    /// Retry: wait this long instead of the backoff (None: the backoff).
    pub retry_after: Option<Duration>,
}

impl Outcome {
    /// Done: release the message.
    pub fn ack() -> Outcome {
        Outcome {
            kind: OutcomeKind::Ack,
            code: 0,
            message: String::new(),
            retry_after: None,
        }
    }
    /// A transient failure: try again after the backoff, or after `after` when given.
    pub fn retry(why: impl Into<String>, code: u32, after: Option<Duration>) -> Outcome {
        Outcome {
            kind: OutcomeKind::Retry,
            code,
            message: why.into(),
            retry_after: after,
        }
    }
    /// A permanent failure: dead-letter the message now.
    pub fn reject(why: impl Into<String>, code: u32) -> Outcome {
        Outcome {
            kind: OutcomeKind::Reject,
            code,
            message: why.into(),
            retry_after: None,
        }
    }
    /// Whether this is an ack.
    pub fn is_ack(&self) -> bool {
        self.kind == OutcomeKind::Ack
    }
}

/// How a failed message is retried (C++ `shmbus::RetryPolicy`, same defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Handler calls per message, the first included (0 is taken as 1). Default 5.
    pub max_attempts: u32,
    /// The first retry's delay before jitter. Default 1 ms.
    pub initial_backoff_ns: i64,
    /// The longest delay before jitter. Default 1 s.
    pub max_backoff_ns: i64,
    /// Each retry's delay is the previous one's times this (below 1: 1). Default 2.
    pub multiplier: f64,
    /// Each delay is scaled by a uniform factor in `[1 - jitter, 1 + jitter]`
    /// (clamped to `[0, 1]`). Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff_ns: 1_000_000,
            max_backoff_ns: 1_000_000_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (2 = the first retry; 0 below 2):
    /// `min(initial * multiplier^(attempt - 2), max)`, scaled by
    /// `1 - j + 2 j u` where `j` is the jitter clamped to `[0, 1]` and `u` is `rnd`'s
    /// top 53 bits as a uniform `[0, 1)`. The C++ formula, operation for operation.
    pub fn backoff_ns(&self, attempt: u32, rnd: u64) -> i64 {
        if attempt < 2 {
            return 0;
        }
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let m = if self.multiplier < 1.0 {
            1.0
        } else {
            self.multiplier
        };
        let mut d = self.initial_backoff_ns as f64 * m.powf(f64::from(attempt - 2));
        let cap = self.max_backoff_ns as f64;
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(d <= cap) {
            d = cap; // also catches inf/nan
        }
        let j = self.jitter.clamp(0.0, 1.0);
        let u = (rnd >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        d *= 1.0 - j + 2.0 * j * u;
        if d < 0.0 {
            0
        } else {
            d as i64
        }
    }
}

/// When the circuit breaker opens and closes (C++ `shmbus::BreakerPolicy`, same
/// defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the breaker (0 is taken as 1). Default 5.
    pub failure_threshold: u32,
    /// How long it stays open before a trial (half-open). Default 1 s.
    pub open_ns: i64,
    /// Successful trials that close it again (0 is taken as 1). Default 1.
    pub half_open_successes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            open_ns: 1_000_000_000,
            half_open_successes: 1,
        }
    }
}

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts run.
    Closed,
    /// No attempt runs until the open time is over.
    Open,
    /// Trials run, one at a time: a failure re-opens it, enough successes close it.
    HalfOpen,
}

/// closed → (`failure_threshold` consecutive failures) → open → (`open_ns`) →
/// half-open: a failure re-opens it, `half_open_successes` successes close it.
/// Time is passed in (CLOCK_MONOTONIC ns), so it is testable. C++'s
/// `shmbus::CircuitBreaker`, transition for transition.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    p: BreakerPolicy,
    state: BreakerState,
    failures: u32,
    successes: u32,
    open_until: i64,
    opened: u64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(p: BreakerPolicy) -> CircuitBreaker {
        CircuitBreaker {
            p,
            state: BreakerState::Closed,
            failures: 0,
            successes: 0,
            open_until: 0,
            opened: 0,
        }
    }
    /// May an attempt start at `now_ns`? (An open breaker whose time is over turns
    /// half-open here.)
    pub fn allow(&mut self, now_ns: i64) -> bool {
        if self.state == BreakerState::Open {
            if now_ns < self.open_until {
                return false;
            }
            self.state = BreakerState::HalfOpen;
            self.successes = 0;
        }
        true
    }
    /// An attempt succeeded.
    pub fn on_success(&mut self) {
        self.failures = 0;
        if self.state == BreakerState::HalfOpen {
            self.successes += 1;
            if self.successes >= self.p.half_open_successes.max(1) {
                self.state = BreakerState::Closed;
            }
        }
    }
    /// An attempt failed at `now_ns`.
    pub fn on_failure(&mut self, now_ns: i64) {
        let open = self.state == BreakerState::HalfOpen || {
            self.failures += 1;
            self.failures >= self.p.failure_threshold.max(1)
        };
        if open {
            self.state = BreakerState::Open;
            self.open_until = now_ns.saturating_add(self.p.open_ns);
            self.failures = 0;
            self.opened += 1;
        }
    }
    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }
    /// Until when (CLOCK_MONOTONIC ns) an open breaker stays open.
    pub fn open_until_ns(&self) -> i64 {
        self.open_until
    }
    /// How many times it opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }
}

/// The runner's clock: CLOCK_MONOTONIC in ns (tests inject another).
pub type ClockFn = Arc<dyn Fn() -> i64 + Send + Sync>;
/// The runner's wait of `ns` ns between attempts (tests inject another).
pub type SleepFn = Arc<dyn Fn(i64) + Send + Sync>;

/// Options of a [`HandlerRunner`] (C++ `shmbus::HandlerOptions`, same defaults).
pub struct HandlerOptions {
    /// The runner's name, in dead letters. Default "handler".
    pub name: String,
    /// How failed messages are retried.
    pub retry: RetryPolicy,
    /// The circuit breaker.
    pub breaker: BreakerPolicy,
    /// The subscription: partition, durable name, tethered (default) ...
    pub subscriber: SubscriberOptions,
    /// The dead-letter topic (None: `<topic>.dlq`).
    pub dlq_topic: Option<String>,
    /// Used to create the dead-letter topic if it does not exist (default: 1 MiB,
    /// multi-producer: the runners of every partition share it); an existing one is
    /// used as it is. Create it durable on a daemon to keep dead letters nobody reads yet.
    pub dlq_config: TopicConfig,
    /// Seed of the jitter generator (0: from the clock).
    pub seed: u64,
    /// Dedup: a message the window has seen is released without calling the
    /// handler (`stats().duplicates`); every finished message (acked or
    /// dead-lettered) is recorded and committed before it is released. With a
    /// durable subscriber name this makes the handler's effects on the committed
    /// state effectively once across restarts and producer retries.
    pub dedup: Option<DedupWindow>,
    /// The application state committed with each record (C++'s
    /// `DedupWindow::set_app_state` from the handler): the handler writes it, the
    /// runner commits it atomically with the window. None: the state is kept as is.
    pub dedup_state: Option<Arc<Mutex<Vec<u8>>>>,
    /// Per-attempt limit (None: none). Cooperative: the handler is not interrupted;
    /// an attempt that took longer counts as failed (`timeout: ...`), unless it
    /// rejected.
    pub attempt_timeout: Option<Duration>,
    /// The clock (None: CLOCK_MONOTONIC).
    pub clock: Option<ClockFn>,
    /// The wait between attempts (None: a sleep in 10 ms slices that returns early
    /// when `stop()` turns true).
    pub sleep: Option<SleepFn>,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            name: "handler".into(),
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            subscriber: SubscriberOptions::default(),
            dlq_topic: None,
            dlq_config: TopicConfig {
                capacity: 1 << 20,
                multi_producer: true,
                ..TopicConfig::default()
            },
            seed: 0,
            dedup: None,
            dedup_state: None,
            attempt_timeout: None,
            clock: None,
            sleep: None,
        }
    }
}

impl std::fmt::Debug for HandlerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerOptions")
            .field("name", &self.name)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("subscriber", &self.subscriber)
            .field("dlq_topic", &self.dlq_topic)
            .field("seed", &self.seed)
            .field("dedup", &self.dedup.is_some())
            .field("attempt_timeout", &self.attempt_timeout)
            .finish_non_exhaustive()
    }
}

/// Counters of a runner (C++ `shmbus::HandlerStats`, plus `timeouts` and `panics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerStats {
    /// Messages finished (acked or dead-lettered).
    pub handled: u64,
    /// Messages acked.
    pub acked: u64,
    /// Handler calls.
    pub attempts: u64,
    /// Attempts after a failure.
    pub retries: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Untethered: messages lost to the producer overtaking.
    pub lapped: u64,
    /// Dedup: messages released without calling the handler.
    pub duplicates: u64,
    /// Attempts that overran the per-attempt timeout.
    pub timeouts: u64,
    /// Attempts that panicked.
    pub panics: u64,
}

/// A message handler: called once per attempt with the message (in the ring, or the
/// runner's copy of it for an untethered subscription). Closures
/// `Fn(&Message<'_>) -> Outcome` are handlers (annotate the argument's type, or use
/// [`handler_fn`]).
pub trait Handler {
    /// One attempt.
    fn call(&self, m: &Message<'_>) -> Outcome;
}

impl<F> Handler for F
where
    F: Fn(&Message<'_>) -> Outcome,
{
    fn call(&self, m: &Message<'_>) -> Outcome {
        self(m)
    }
}

/// Makes a closure a [`Handler`] (type inference for its argument).
pub fn handler_fn<F>(f: F) -> F
where
    F: Fn(&Message<'_>) -> Outcome,
{
    f
}

/// Wraps a handler in another (tower's `Layer`, for [`Handler`]s).
pub trait Layer<H> {
    /// The wrapped handler.
    type Handler;
    /// Wraps `inner`.
    fn layer(&self, inner: H) -> Self::Handler;
}

/// The layer that wraps nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<H> Layer<H> for Identity {
    type Handler = H;
    fn layer(&self, inner: H) -> H {
        inner
    }
}

/// Two layers: `outer` around `inner` around the handler.
#[derive(Debug, Clone)]
pub struct Stack<Inner, Outer> {
    inner: Inner,
    outer: Outer,
}

impl<H, Inner, Outer> Layer<H> for Stack<Inner, Outer>
where
    Inner: Layer<H>,
    Outer: Layer<Inner::Handler>,
{
    type Handler = Outer::Handler;
    fn layer(&self, h: H) -> Self::Handler {
        self.outer.layer(self.inner.layer(h))
    }
}

/// Composes layers (tower's `ServiceBuilder`): the first `.layer(..)` is the
/// outermost, the handler innermost.
///
/// ```
/// use std::time::Duration;
/// use shmbus::handler::{HandlerBuilder, Handler, Outcome, RecoverLayer, TimeoutLayer, TraceLayer};
/// let h = HandlerBuilder::new()
///     .layer(TraceLayer::new(|r: &shmbus::handler::AttemptRecord<'_>| {
///         eprintln!("seq {} {:?} in {:?}", r.sequence, r.outcome.kind, r.elapsed)
///     }))
///     .layer(RecoverLayer)
///     .layer(TimeoutLayer::new(Duration::from_millis(50)))
///     .handler(|_m: &shmbus::Message<'_>| Outcome::ack());
/// # let _ = &h;
/// ```
#[derive(Debug, Clone, Default)]
pub struct HandlerBuilder<L> {
    layer: L,
}

impl HandlerBuilder<Identity> {
    /// No layer yet.
    pub fn new() -> Self {
        HandlerBuilder { layer: Identity }
    }
}

impl<L> HandlerBuilder<L> {
    /// Adds `layer` inside the layers added so far.
    pub fn layer<T>(self, layer: T) -> HandlerBuilder<Stack<T, L>> {
        HandlerBuilder {
            layer: Stack {
                inner: layer,
                outer: self.layer,
            },
        }
    }
    /// The handler wrapped in every layer.
    pub fn handler<H>(self, h: H) -> L::Handler
    where
        L: Layer<H>,
    {
        self.layer.layer(h)
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".into()
    }
}

/// The outcome of a panic: a retry whose reason is `panic: <message>`.
pub(crate) fn panic_outcome(p: &(dyn std::any::Any + Send)) -> Outcome {
    Outcome::retry(format!("panic: {}", panic_text(p)), 0, None)
}

/// A panicking handler's attempt becomes `Outcome::retry("panic: <message>")`
/// (the runner does this outermost anyway; inside other layers, they see it as an
/// outcome).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoverLayer;

/// The handler of [`RecoverLayer`].
#[derive(Debug, Clone)]
pub struct Recover<H>(H);

impl<H> Layer<H> for RecoverLayer {
    type Handler = Recover<H>;
    fn layer(&self, inner: H) -> Recover<H> {
        Recover(inner)
    }
}

impl<H: Handler> Handler for Recover<H> {
    fn call(&self, m: &Message<'_>) -> Outcome {
        match catch_unwind(AssertUnwindSafe(|| self.0.call(m))) {
            Ok(o) => o,
            Err(p) => panic_outcome(p.as_ref()),
        }
    }
}

/// The outcome code of an attempt that overran its timeout (C++ `kTimeoutCode`).
pub const TIMEOUT_CODE: u32 = 408;

fn ms_text(d: Duration) -> String {
    format!("{:.3} ms", d.as_nanos() as f64 / 1e6)
}

/// `retry("timeout: the attempt took X ms, the limit is Y ms", 408)`, C++'s text.
pub(crate) fn timeout_outcome(took: Duration, limit: Duration) -> Outcome {
    Outcome::retry(
        format!(
            "timeout: the attempt took {}, the limit is {}",
            ms_text(took),
            ms_text(limit)
        ),
        TIMEOUT_CODE,
        None,
    )
}

thread_local! {
    static ATTEMPT_DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The deadline of the attempt running on this thread (the innermost
/// [`TimeoutLayer`]'s, or [`HandlerOptions::attempt_timeout`]'s), None outside one.
/// A blocking handler cannot be pre-empted: one that may take long reads this and
/// gives up early (cooperative; C++ `attempt_deadline_ns()`).
pub fn attempt_deadline() -> Option<Instant> {
    ATTEMPT_DEADLINE.with(|d| d.get())
}

/// Sets this thread's attempt deadline (the earlier of `limit` from now and the one
/// already set) until dropped, then restores it (also when the handler panics).
struct DeadlineScope(Option<Instant>);

impl DeadlineScope {
    fn enter(limit: Duration) -> DeadlineScope {
        let saved = attempt_deadline();
        let mine = Instant::now().checked_add(limit);
        let d = match (saved, mine) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ATTEMPT_DEADLINE.with(|c| c.set(d));
        DeadlineScope(saved)
    }
}

impl Drop for DeadlineScope {
    fn drop(&mut self) {
        ATTEMPT_DEADLINE.with(|c| c.set(self.0));
    }
}

/// An attempt that takes longer than the limit counts as failed: its outcome
/// becomes `retry("timeout: ...", 408)` unless it rejected. Cooperative: the handler
/// is not interrupted (a blocking call cannot be; it may read [`attempt_deadline`]
/// and give up early); its effects, if any, stand.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Attempts of at most `limit`.
    pub fn new(limit: Duration) -> TimeoutLayer {
        TimeoutLayer { limit }
    }
}

/// The handler of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<H> {
    inner: H,
    limit: Duration,
}

impl<H> Layer<H> for TimeoutLayer {
    type Handler = Timeout<H>;
    fn layer(&self, inner: H) -> Timeout<H> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

impl<H: Handler> Handler for Timeout<H> {
    fn call(&self, m: &Message<'_>) -> Outcome {
        let t0 = Instant::now();
        let o = {
            let _d = DeadlineScope::enter(self.limit);
            self.inner.call(m)
        };
        let took = t0.elapsed();
        if took > self.limit && o.kind != OutcomeKind::Reject {
            return timeout_outcome(took, self.limit);
        }
        o
    }
}

/// One attempt, as [`TraceLayer`] reports it (C++ `shmbus::TraceRecord`, Go
/// `TraceRecord`: the same fields, plus the whole [`Outcome`] and the duration as a
/// [`Duration`]). The ids are the ones structured logs print in every language
/// (docs/messaging.md "Trace and logs"); [`AttemptRecord::json_line`] writes them.
#[derive(Debug)]
pub struct AttemptRecord<'a> {
    /// The handler's name, as given to [`TraceLayer::named`] ("handler" with
    /// [`TraceLayer::new`]).
    pub handler: &'a str,
    /// The frame's sequence.
    pub sequence: u64,
    /// The frame's message id.
    pub message_id: u64,
    /// The frame's producer id.
    pub producer_id: u32,
    /// The envelope's correlation id (0: none, or not enveloped).
    pub correlation_id: u64,
    /// The envelope's causation id (0: none, or not enveloped).
    pub causation_id: u64,
    /// The trace context of the message's envelope: the parent of [`Self::span`]
    /// (C++ `TraceRecord::parent`; None: not enveloped, no trace, or a malformed
    /// envelope).
    pub trace: Option<TraceContext>,
    /// This attempt's own span: `trace.child()`, or a fresh trace when the message
    /// has none.
    pub span: TraceContext,
    /// What the inner handler said.
    pub outcome: &'a Outcome,
    /// How long the attempt took, on the layer's clock (ns; C++ `duration_ns`).
    pub duration_ns: i64,
    /// The same, as a [`Duration`] (0 if the clock went backwards).
    pub elapsed: Duration,
}

/// C++'s and Go's name of the record a [`TraceLayer`] reports.
pub type TraceRecord<'a> = AttemptRecord<'a>;

fn hex16(l: &mut String, v: u64) {
    use std::fmt::Write;
    let _ = write!(l, "{v:016x}");
}

fn outcome_name(k: OutcomeKind) -> &'static str {
    match k {
        OutcomeKind::Ack => "ack",
        OutcomeKind::Retry => "retry",
        OutcomeKind::Reject => "reject",
    }
}

impl AttemptRecord<'_> {
    /// The record as one JSON object and a newline, the structured log line of every
    /// language (C++ `layers::json_lines`, Go `JSONLines`), key for key:
    ///
    /// `{"event":"attempt","handler":"billing","message_id":"<16 hex>","sequence":N,`
    /// `"producer_id":N,"trace_id":"<32 hex>","span_id":"<16 hex>",`
    /// `"parent_span_id":"<16 hex>","correlation_id":"<16 hex>","causation_id":"<16 hex>",`
    /// `"outcome":"ack|retry|reject","code":N,"duration_ns":N}`
    ///
    /// Ids are lower-case hex; the trace and span ids are the attempt's own span's.
    /// `parent_span_id` is left out when the message had no trace context,
    /// `correlation_id` and `causation_id` when zero. In the handler name `"` and `\`
    /// are escaped and control characters dropped.
    pub fn json_line(&self) -> String {
        let mut l = String::with_capacity(320);
        l.push_str("{\"event\":\"attempt\",\"handler\":\"");
        for c in self.handler.chars() {
            if c == '"' || c == '\\' {
                l.push('\\');
                l.push(c);
            } else if (c as u32) >= 0x20 {
                l.push(c);
            }
        }
        l.push_str("\",\"message_id\":\"");
        hex16(&mut l, self.message_id);
        l.push_str(&format!(
            "\",\"sequence\":{},\"producer_id\":{},\"trace_id\":\"",
            self.sequence, self.producer_id
        ));
        hex16(&mut l, self.span.trace_id_high);
        hex16(&mut l, self.span.trace_id_low);
        l.push_str("\",\"span_id\":\"");
        hex16(&mut l, self.span.parent_id);
        l.push('"');
        if let Some(p) = &self.trace {
            l.push_str(",\"parent_span_id\":\"");
            hex16(&mut l, p.parent_id);
            l.push('"');
        }
        if self.correlation_id != 0 {
            l.push_str(",\"correlation_id\":\"");
            hex16(&mut l, self.correlation_id);
            l.push('"');
        }
        if self.causation_id != 0 {
            l.push_str(",\"causation_id\":\"");
            hex16(&mut l, self.causation_id);
            l.push('"');
        }
        l.push_str(&format!(
            ",\"outcome\":\"{}\",\"code\":{},\"duration_ns\":{}}}\n",
            outcome_name(self.outcome.kind),
            self.outcome.code,
            self.duration_ns
        ));
        l
    }
}

/// A [`TraceLayer`] hook writing one JSON object per line to `out` (a structured
/// log: [`AttemptRecord::json_line`]; C++ `layers::json_lines`, Go `JSONLines`).
/// Each line is one `write_all` under a lock, so the runners of a [`WorkerPool`]
/// may share it; a write error is ignored (the log must not fail the handler).
pub fn json_lines<W: std::io::Write + Send>(out: W) -> impl Fn(&AttemptRecord<'_>) + Send + Sync {
    let out = Mutex::new(out);
    move |r: &AttemptRecord<'_>| {
        let l = r.json_line();
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.write_all(l.as_bytes());
    }
}

/// Calls a hook after every attempt with its [`AttemptRecord`] (the message's ids,
/// the envelope's trace context as parent and a span of the attempt's own, the
/// outcome, the time): the place for spans and structured logs ([`json_lines`]).
/// C++ `layers::trace`, Go `Trace`.
#[derive(Clone)]
pub struct TraceLayer<F> {
    hook: Arc<F>,
    name: Arc<str>,
    clock: ClockFn,
}

impl<F> std::fmt::Debug for TraceLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLayer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<F> TraceLayer<F>
where
    F: Fn(&AttemptRecord<'_>),
{
    /// A layer calling `hook` after every attempt, with the handler name "handler".
    pub fn new(hook: F) -> TraceLayer<F> {
        TraceLayer::named("handler", hook)
    }
    /// A layer calling `hook` after every attempt, the records naming the handler
    /// `name` (C++ `layers::trace(name, sink)`, Go `Trace(name, sink)`).
    pub fn named(name: impl Into<String>, hook: F) -> TraceLayer<F> {
        TraceLayer {
            hook: Arc::new(hook),
            name: Arc::from(name.into()),
            clock: Arc::new(mono_ns),
        }
    }
    /// Times attempts with `clock` (ns) instead of CLOCK_MONOTONIC (tests).
    pub fn with_clock(mut self, clock: ClockFn) -> TraceLayer<F> {
        self.clock = clock;
        self
    }
}

/// The handler of [`TraceLayer`].
pub struct Trace<H, F> {
    inner: H,
    hook: Arc<F>,
    name: Arc<str>,
    clock: ClockFn,
}

impl<H, F> std::fmt::Debug for Trace<H, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<H, F> Layer<H> for TraceLayer<F> {
    type Handler = Trace<H, F>;
    fn layer(&self, inner: H) -> Trace<H, F> {
        Trace {
            inner,
            hook: self.hook.clone(),
            name: self.name.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<H: Handler, F: Fn(&AttemptRecord<'_>)> Handler for Trace<H, F> {
    fn call(&self, m: &Message<'_>) -> Outcome {
        // A frame that is no envelope, or a malformed one, has no parent trace.
        let (trace, correlation_id, causation_id) = match m.envelope() {
            Ok(Some(e)) => (
                Some(e.envelope.trace).filter(|t| t.is_valid()),
                e.envelope.correlation_id,
                e.envelope.causation_id,
            ),
            _ => (None, 0, 0),
        };
        let span = trace
            .as_ref()
            .and_then(|t| t.child())
            .unwrap_or_else(TraceContext::fresh);
        let t0 = (self.clock)();
        // A panic is reported as a retry (as the runner treats it), then goes on.
        let r = catch_unwind(AssertUnwindSafe(|| self.inner.call(m)));
        let d = (self.clock)().saturating_sub(t0);
        let report = move |o: &Outcome| {
            (self.hook)(&AttemptRecord {
                handler: &self.name,
                sequence: m.sequence(),
                message_id: m.message_id(),
                producer_id: m.producer_id(),
                correlation_id,
                causation_id,
                trace,
                span,
                outcome: o,
                duration_ns: d,
                elapsed: Duration::from_nanos(d.max(0) as u64),
            })
        };
        match r {
            Ok(o) => {
                report(&o);
                o
            }
            Err(p) => {
                report(&panic_outcome(p.as_ref()));
                std::panic::resume_unwind(p)
            }
        }
    }
}

/// Counters a [`MetricsLayer`] keeps (C++ `shmbus::HandlerMetrics`, Go
/// `HandlerMetrics`): atomics, so the runners of a [`WorkerPool`] may share one.
/// Relaxed: read them after the runners stopped, or as approximate live figures.
#[derive(Debug)]
pub struct HandlerMetrics {
    /// Handler calls.
    pub attempts: AtomicU64,
    /// Attempts that acked.
    pub acks: AtomicU64,
    /// Attempts that asked for a retry (a panic counts here, as the runner treats it).
    pub retries: AtomicU64,
    /// Attempts that rejected.
    pub rejects: AtomicU64,
    /// Attempt duration histogram: bucket `i` counts attempts of `[2^i, 2^(i+1))` ns
    /// (bucket 0 also 0 ns, the last one everything longer); see
    /// [`HandlerMetrics::bucket`].
    pub duration_log2_ns: [AtomicU64; HandlerMetrics::BUCKETS],
    /// The attempts' durations added up (ns).
    pub duration_sum_ns: AtomicU64,
}

impl Default for HandlerMetrics {
    fn default() -> Self {
        HandlerMetrics {
            attempts: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            duration_log2_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_sum_ns: AtomicU64::new(0),
        }
    }
}

impl HandlerMetrics {
    /// Buckets of the duration histogram (C++ `kBuckets`, Go `MetricsBuckets`).
    pub const BUCKETS: usize = 40;

    /// The histogram bucket of an attempt that took `ns` ns: `floor(log2(ns))`,
    /// 0 for 0 (or a negative duration), at most `BUCKETS - 1`.
    pub fn bucket(ns: i64) -> usize {
        if ns <= 0 {
            return 0;
        }
        ((63 - (ns as u64).leading_zeros()) as usize).min(Self::BUCKETS - 1)
    }

    fn observe(&self, kind: OutcomeKind, ns: i64) {
        let ns = ns.max(0);
        match kind {
            OutcomeKind::Ack => &self.acks,
            OutcomeKind::Retry => &self.retries,
            OutcomeKind::Reject => &self.rejects,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.duration_sum_ns.fetch_add(ns as u64, Ordering::Relaxed);
        self.duration_log2_ns[Self::bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts attempts, outcomes and attempt durations into a shared
/// [`HandlerMetrics`] (C++ `layers::metrics`, Go `Metrics`). A panicking handler's
/// attempt counts as a retry; the panic goes on.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<HandlerMetrics>,
    clock: ClockFn,
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl MetricsLayer {
    /// A layer counting into `metrics` (keep a clone of the `Arc` to read them).
    pub fn new(metrics: Arc<HandlerMetrics>) -> MetricsLayer {
        MetricsLayer {
            metrics,
            clock: Arc::new(mono_ns),
        }
    }
    /// Times attempts with `clock` (ns) instead of CLOCK_MONOTONIC (tests).
    pub fn with_clock(mut self, clock: ClockFn) -> MetricsLayer {
        self.clock = clock;
        self
    }
}

/// The handler of [`MetricsLayer`].
pub struct Metrics<H> {
    inner: H,
    metrics: Arc<HandlerMetrics>,
    clock: ClockFn,
}

impl<H> std::fmt::Debug for Metrics<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl<H> Layer<H> for MetricsLayer {
    type Handler = Metrics<H>;
    fn layer(&self, inner: H) -> Metrics<H> {
        Metrics {
            inner,
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<H: Handler> Handler for Metrics<H> {
    fn call(&self, m: &Message<'_>) -> Outcome {
        self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
        let t0 = (self.clock)();
        let r = catch_unwind(AssertUnwindSafe(|| self.inner.call(m)));
        let d = (self.clock)().saturating_sub(t0);
        match r {
            Ok(o) => {
                self.metrics.observe(o.kind, d);
                o
            }
            Err(p) => {
                self.metrics.observe(OutcomeKind::Retry, d);
                std::panic::resume_unwind(p)
            }
        }
    }
}

fn mono_ns() -> i64 {
    let mut ts = sys_timespec();
    // SAFETY: ts is a valid, writable timespec.
    unsafe {
        clock_gettime(1 /* CLOCK_MONOTONIC */, &mut ts)
    };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

fn sys_timespec() -> Timespec {
    Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }
}

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}

/// What happened to the message a step polled.
enum Handled {
    /// Acked, dead-lettered or a duplicate: release it.
    Finished,
    /// Stop was asked for: leave it unreleased.
    Stopped,
}

/// A handler over one partition of a topic: see the [module docs](self).
pub struct HandlerRunner<H> {
    bus: Bus,
    topic: String,
    handler: H,
    opts: HandlerOptions,
    clock: ClockFn,
    sub: Subscriber,
    dlq: Option<Publisher>,
    dlq_topic: String,
    breaker: CircuitBreaker,
    stats: HandlerStats,
    rng: u64,
    copy: Vec<u8>,
    pending: Option<PendingView>,
}

/// A view polled and not released (a stop or an error in its handling).
struct PendingView(sys::shmbus_view_t);

// SAFETY: the view points into the ring of the subscriber that the same runner owns;
// it is only used with that subscriber, which is Send (one thread at a time), and
// it moves with it.
unsafe impl Send for PendingView {}

impl<H> std::fmt::Debug for HandlerRunner<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerRunner")
            .field("topic", &self.topic)
            .field("partition", &self.opts.subscriber.partition)
            .field("stats", &self.stats)
            .field("breaker", &self.breaker.state)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> HandlerRunner<H> {
    /// Subscribes to `topic` (partition and name from `opts.subscriber`).
    pub fn new(
        bus: &Bus,
        topic: &str,
        handler: H,
        mut opts: HandlerOptions,
    ) -> Result<HandlerRunner<H>> {
        let sub = bus.subscriber(topic, &opts.subscriber)?;
        opts.retry.max_attempts = opts.retry.max_attempts.max(1);
        let clock: ClockFn = opts.clock.clone().unwrap_or_else(|| Arc::new(mono_ns));
        let dlq_topic = opts
            .dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{topic}.dlq"));
        let rng = if opts.seed != 0 {
            opts.seed
        } else {
            (mono_ns() as u64) | 1
        };
        Ok(HandlerRunner {
            bus: bus.clone(),
            topic: topic.to_string(),
            handler,
            breaker: CircuitBreaker::new(opts.breaker),
            opts,
            clock,
            sub,
            dlq: None,
            dlq_topic,
            stats: HandlerStats::default(),
            rng,
            copy: Vec::new(),
            pending: None,
        })
    }

    /// Handles messages until `stop()` is true (checked between messages, between
    /// attempts and while waiting, every 10 ms at most). A message in retry when
    /// `stop()` turns true is not released. An error (the dead letter could not be
    /// published, the subscription failed) returns at once, the message unreleased.
    /// Either way the next `run` or `step` of this runner starts with that message
    /// again (a new runner with the same durable name gets it too).
    pub fn run(&mut self, stop: &dyn Fn() -> bool) -> Result<()> {
        while !stop() {
            self.step(Duration::from_millis(10), stop)?;
        }
        Ok(())
    }

    /// Handles at most one message, waiting up to `wait` for one. `Ok(true)` if a
    /// message was finished (acked, dead-lettered, or released as a duplicate).
    pub fn step(&mut self, wait: Duration, stop: &dyn Fn() -> bool) -> Result<bool> {
        // A message left unfinished by a stop or an error is handled again first:
        // polling on would skip it (a later release releases everything before it).
        let (raw, resumed) = match self.pending.take() {
            Some(PendingView(r)) => (r, true),
            None => match self.sub.poll_wait_raw(Some(wait)) {
                Ok(Some(v)) => (v, false),
                Ok(None) | Err(Error::Interrupted) => return Ok(false),
                Err(Error::Lapped) => {
                    self.stats.lapped += 1;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            },
        };
        let subh = self.sub.raw_handle();
        let mut copy = std::mem::take(&mut self.copy);
        let r = if self.sub.is_tethered() {
            self.handle_one(&Message::from_raw(&raw, subh), stop)
        } else {
            // The producer may overwrite an untethered view while the handler
            // retries: copy it, check the copy is intact, hand the handler the copy
            // (a resumed message: the copy made when it was polled).
            let m = Message::from_raw(&raw, subh);
            if !resumed {
                copy.clear();
                copy.extend_from_slice(m.data());
                if m.check().is_err() {
                    self.stats.lapped += 1;
                    self.copy = copy;
                    self.sub.release_raw(&raw)?;
                    return Ok(false);
                }
            }
            let mut c = raw;
            c.data = if copy.is_empty() {
                std::ptr::null()
            } else {
                copy.as_ptr()
            };
            self.handle_one(&Message::from_raw(&c, subh), stop)
        };
        self.copy = copy;
        match r {
            Ok(Handled::Finished) => {
                self.sub.release_raw(&raw)?;
                Ok(true)
            }
            Ok(Handled::Stopped) => {
                self.pending = Some(PendingView(raw));
                Ok(false)
            }
            Err(e) => {
                self.pending = Some(PendingView(raw));
                Err(e)
            }
        }
    }

    fn handle_one(&mut self, m: &Message<'_>, stop: &dyn Fn() -> bool) -> Result<Handled> {
        if let Some(w) = self.opts.dedup.as_mut() {
            if w.seen(m.producer_id(), m.message_id(), m.sequence())? {
                self.stats.duplicates += 1;
                return Ok(Handled::Finished);
            }
        }
        if !self.handle(m, stop)? {
            return Ok(Handled::Stopped);
        }
        if let Some(w) = self.opts.dedup.as_mut() {
            // Recorded and committed before the release: a restart finds it seen.
            w.record(m.producer_id(), m.message_id(), m.sequence())?;
            match &self.opts.dedup_state {
                Some(st) => {
                    let st = st.lock().unwrap_or_else(|e| e.into_inner());
                    w.commit(Some(&st))?;
                }
                None => w.commit(None)?,
            }
        }
        Ok(Handled::Finished)
    }

    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng; // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn wait_ns(&self, ns: i64, stop: &dyn Fn() -> bool) {
        if ns <= 0 {
            return;
        }
        if let Some(s) = &self.opts.sleep {
            return s(ns);
        }
        // In slices, so that stop() is seen within 10 ms.
        let end = (self.clock)().saturating_add(ns);
        let mut now = (self.clock)();
        while now < end {
            if stop() {
                return;
            }
            std::thread::sleep(Duration::from_nanos((end - now).min(10_000_000) as u64));
            now = (self.clock)();
        }
    }

    /// Runs the handler on one message until it is acked or dead-lettered
    /// (`Ok(true)`), or stop() is asked for first (`Ok(false)`: left unreleased).
    fn handle(&mut self, m: &Message<'_>, stop: &dyn Fn() -> bool) -> Result<bool> {
        let mut attempt: u32 = 1;
        let mut first_fail = 0i64;
        loop {
            // An open breaker: no attempt until its open time is over.
            while !self.breaker.allow((self.clock)()) {
                if stop() {
                    return Ok(false);
                }
                self.wait_ns(self.breaker.open_until_ns() - (self.clock)(), stop);
            }
            self.stats.attempts += 1;
            let t0 = (self.clock)();
            let scope = self.opts.attempt_timeout.map(DeadlineScope::enter);
            let r = catch_unwind(AssertUnwindSafe(|| self.handler.call(m)));
            drop(scope);
            let mut o = match r {
                Ok(o) => o,
                Err(p) => {
                    self.stats.panics += 1;
                    panic_outcome(p.as_ref())
                }
            };
            let now = (self.clock)();
            if let Some(limit) = self.opts.attempt_timeout {
                let took = Duration::from_nanos((now - t0).max(0) as u64);
                if took > limit && o.kind != OutcomeKind::Reject {
                    self.stats.timeouts += 1;
                    o = timeout_outcome(took, limit);
                }
            }
            if o.kind == OutcomeKind::Ack {
                self.breaker.on_success();
                self.stats.acked += 1;
                self.stats.handled += 1;
                return Ok(true);
            }
            self.breaker.on_failure(now);
            if first_fail == 0 {
                first_fail = now;
            }
            if o.kind == OutcomeKind::Reject || attempt >= self.opts.retry.max_attempts {
                self.dead_letter(m, &o, attempt, first_fail, now)?;
                self.stats.dead_lettered += 1;
                self.stats.handled += 1;
                return Ok(true);
            }
            attempt += 1;
            self.stats.retries += 1;
            let d = match o.retry_after {
                Some(a) => i64::try_from(a.as_nanos()).unwrap_or(i64::MAX),
                None => {
                    let r = self.next_rand();
                    self.opts.retry.backoff_ns(attempt, r)
                }
            };
            self.wait_ns(d, stop);
            if stop() {
                return Ok(false);
            }
        }
    }

    fn dead_letter(
        &mut self,
        m: &Message<'_>,
        last: &Outcome,
        attempts: u32,
        first_ns: i64,
        last_ns: i64,
    ) -> Result<()> {
        if self.dlq.is_none() {
            // An existing dead-letter topic is used as it is (whatever its settings).
            match self.bus.describe_topic(&self.dlq_topic) {
                Ok(_) => {}
                Err(Error::NotFound(_)) => {
                    match self
                        .bus
                        .create_topic(&self.dlq_topic, &self.opts.dlq_config)
                    {
                        Ok(()) | Err(Error::AlreadyExists(_)) => {} // made meanwhile by another runner
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            self.dlq = Some(
                self.bus
                    .publisher(&self.dlq_topic, &PublisherOptions::default())?,
            );
        }
        let mut mb = capnp::message::Builder::new_default();
        {
            let mut d = mb.init_root::<dead_letter::Builder>();
            d.set_code(last.code);
            d.set_message(last.message.as_str());
            d.set_attempts(attempts);
            d.set_first_failure_ns(first_ns as u64);
            d.set_last_failure_ns(last_ns as u64);
            d.set_handler(self.opts.name.as_str());
            {
                let p = &self.opts.retry;
                let mut r = d.reborrow().init_retry();
                r.set_max_attempts(p.max_attempts);
                r.set_initial_backoff_ns(p.initial_backoff_ns as u64);
                r.set_max_backoff_ns(p.max_backoff_ns as u64);
                r.set_multiplier(p.multiplier);
                r.set_jitter(p.jitter);
            }
            d.set_reason(if last.kind == OutcomeKind::Reject {
                dead_letter::Reason::Rejected
            } else {
                dead_letter::Reason::Exhausted
            });
            d.set_original_topic(self.topic.as_str());
            d.set_partition(self.opts.subscriber.partition);
            d.set_sequence(m.sequence());
            d.set_message_id(m.message_id());
            d.set_schema_id(m.schema_id());
            d.set_producer_id(m.producer_id());
            d.set_timestamp_ns(m.timestamp_ns());
            d.set_payload(m.data());
        }
        let bytes = capnp::serialize::write_message_to_words(&mb);
        let dlq = self.dlq.as_mut().expect("opened above");
        dlq.offer(&bytes, m.message_id(), DEAD_LETTER_SCHEMA_ID)
            .map_err(|e| {
                Error::Internal(
                    format!(
                        "dead letter of {} sequence {} not published to {}: {e}",
                        self.topic,
                        m.sequence(),
                        self.dlq_topic
                    )
                    .into(),
                )
            })
    }

    /// Counters.
    pub fn stats(&self) -> &HandlerStats {
        &self.stats
    }
    /// The circuit breaker (its state, when it opens again, how often it opened).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
    /// The subscription.
    pub fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.sub
    }
    /// A handle that ends the runner's wait for a message at once (the next
    /// `stop()` check then decides).
    pub fn interrupter(&self) -> Interrupter {
        self.sub.interrupter()
    }
    /// The dead-letter topic.
    pub fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }
    /// The dedup window, if any.
    pub fn dedup(&mut self) -> Option<&mut DedupWindow> {
        self.opts.dedup.as_mut()
    }
    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

/// One runner per partition of a topic, each on a thread of its own (per-partition
/// order kept; in flight at most one message per partition: nothing is queued
/// between the ring and the handler, so retries back-pressure the ring).
pub struct WorkerPool {
    stop: Arc<AtomicBool>,
    intr: Vec<Interrupter>,
    workers: Vec<(u32, JoinHandle<Result<HandlerStats>>)>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("partitions", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl WorkerPool {
    /// Starts a runner for every partition of `topic`: `make(p)` gives partition
    /// `p`'s handler and options (its `subscriber.partition` is set to `p`). Every
    /// runner is opened before any thread starts; an error opens none.
    pub fn spawn<H, F>(bus: &Bus, topic: &str, mut make: F) -> Result<WorkerPool>
    where
        H: Handler + Send + 'static,
        F: FnMut(u32) -> (H, HandlerOptions),
    {
        let parts = bus.describe_topic(topic)?.partitions.max(1);
        let mut runners = Vec::with_capacity(parts as usize);
        for p in 0..parts {
            let (h, mut o) = make(p);
            o.subscriber.partition = p;
            runners.push(HandlerRunner::new(bus, topic, h, o)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let intr = runners.iter().map(|r| r.interrupter()).collect();
        let mut workers = Vec::with_capacity(runners.len());
        for (p, mut r) in runners.into_iter().enumerate() {
            let s = stop.clone();
            let w = std::thread::Builder::new()
                .name(format!("shmbus-handler-{p}"))
                .spawn(move || {
                    r.run(&|| s.load(Ordering::Acquire))?;
                    Ok(*r.stats())
                })
                .map_err(|e| Error::Internal(format!("spawning a handler thread: {e}").into()))?;
            workers.push((p as u32, w));
        }
        Ok(WorkerPool {
            stop,
            intr,
            workers,
        })
    }

    /// Asks every runner to stop (a message in retry stays unreleased).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for i in &self.intr {
            i.interrupt();
        }
    }

    /// Stops and waits for every runner: each partition's final counters, or the
    /// error that ended it.
    pub fn join(mut self) -> Vec<(u32, Result<HandlerStats>)> {
        self.stop();
        std::mem::take(&mut self.workers)
            .into_iter()
            .map(|(p, w)| {
                (
                    p,
                    w.join().unwrap_or_else(|_| {
                        Err(Error::Internal("a handler thread panicked".into()))
                    }),
                )
            })
            .collect()
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop();
        for (_, w) in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
