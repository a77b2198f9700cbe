//! The handler runner for `async` handlers (cargo feature `tokio`; any executor
//! drives it).
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as smpsc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::async_sub::OwnedMessage;
use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::handler::{
    panic_outcome, timeout_outcome, BreakerState, Handler, HandlerBuilder, HandlerOptions,
    HandlerRunner, HandlerStats, Identity, Layer, Outcome,
};
use crate::interrupt::Interrupter;
use crate::subscriber::Message;

/// Fired by the runner's thread when an attempt's time is over; the task then
/// drops the handler's future.
#[derive(Default)]
struct Deadline {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Deadline {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }
    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
    fn register(&self, w: &Waker) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
    }
}

/// One attempt handed to the task: the message (a copy), its deadline, where the
/// outcome goes.
struct Attempt {
    msg: OwnedMessage,
    deadline: Arc<Deadline>,
    limit: Option<Duration>,
    reply: smpsc::SyncSender<Outcome>,
}

#[derive(Default)]
struct Shared {
    stats: Mutex<HandlerStats>,
    breaker: Mutex<Option<BreakerState>>,
    timeouts: AtomicU64,
    panics: AtomicU64,
}

/// The handler an [`AsyncHandlerRunner`]'s layers wrap
/// ([`AsyncHandlerRunner::with_layers`]): on the runner's thread it hands each
/// attempt to the task that awaits [`AsyncHandlerRunner::run`] and waits (asleep)
/// for its outcome, firing the attempt's deadline when it is over.
pub struct AsyncBridge {
    tx: mpsc::Sender<Attempt>,
    limit: Option<Duration>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for AsyncBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncBridge")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl AsyncBridge {
    fn gone(&self) -> Outcome {
        // The task is gone (the run future dropped): stop, leave the message unreleased.
        self.stop.store(true, Ordering::Release);
        Outcome::retry("stopped: the async task is gone", 0, None)
    }
}

impl Handler for AsyncBridge {
    fn call(&self, m: &Message<'_>) -> Outcome {
        let deadline = Arc::new(Deadline::default());
        let (reply, rx) = smpsc::sync_channel(1);
        let a = Attempt {
            msg: OwnedMessage::copy_of(m),
            deadline: deadline.clone(),
            limit: self.limit,
            reply,
        };
        if self.tx.blocking_send(a).is_err() {
            return self.gone();
        }
        let got = match self.limit {
            Some(l) => match rx.recv_timeout(l) {
                Ok(o) => Ok(o),
                Err(smpsc::RecvTimeoutError::Timeout) => {
                    deadline.fire(); // the task drops the future and answers
                    rx.recv()
                }
                Err(smpsc::RecvTimeoutError::Disconnected) => Err(smpsc::RecvError),
            },
            None => rx.recv(),
        };
        got.unwrap_or_else(|_| self.gone())
    }
}

/// Stops an [`AsyncHandlerRunner`] from anywhere (`Clone + Send + Sync`).
#[derive(Debug, Clone)]
pub struct AsyncStopper {
    stop: Arc<AtomicBool>,
    intr: Interrupter,
}

impl AsyncStopper {
    /// Asks the runner to stop: checked between messages, between attempts and
    /// while waiting; the attempt running finishes (or times out) first; a message
    /// in retry stays unreleased. [`AsyncHandlerRunner::run`] then returns.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.intr.interrupt();
    }
}

/// A [`HandlerRunner`] whose handler is `async`: `Fn(OwnedMessage) -> impl
/// Future<Output = Outcome>`.
///
/// The ring cannot be polled by an executor (its waits are futex waits), so the
/// runner's subscription, retries, backoff, breaker and dead letters run on a
/// thread of its own that sleeps in the library's wait (as
/// [`AsyncSubscriber`](crate::AsyncSubscriber)'s does: not a busy thread); each
/// attempt is handed to the task that awaits [`run`](Self::run), which calls the
/// handler and awaits its future there, on the executor. One attempt is in flight
/// at a time and the message stays unreleased in the ring until it is acked or
/// dead-lettered: the same order and back-pressure as the blocking runner.
///
/// [`HandlerOptions::attempt_timeout`]: at the deadline the future is dropped (at
/// its next await point: a future that blocks its thread cannot be cancelled) and
/// the attempt is a failure, `timeout: ...`. A future (or the handler call) that
/// panics is a retry, `panic: ...`. No timer of an executor is used: the runner's
/// thread fires the deadline, so any executor drives it.
///
/// ```no_run
/// # async fn f() -> shmbus::Result<()> {
/// use shmbus::handler::{AsyncHandlerRunner, HandlerOptions, Outcome};
/// let bus = shmbus::Bus::connect(None)?;
/// let runner = AsyncHandlerRunner::new(&bus, "orders", |m: shmbus::OwnedMessage| async move {
///     if m.data().is_empty() { Outcome::reject("empty", 400) } else { Outcome::ack() }
/// }, HandlerOptions::default())?;
/// let stop = runner.stopper();              // stop.stop() from anywhere ends run()
/// # stop.stop();
/// let stats = runner.run().await?;
/// # let _ = stats; Ok(()) }
/// ```
pub struct AsyncHandlerRunner<F> {
    handler: F,
    rx: Option<mpsc::Receiver<Attempt>>,
    done: Option<oneshot::Receiver<Result<HandlerStats>>>,
    stopper: AsyncStopper,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl<F> std::fmt::Debug for AsyncHandlerRunner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncHandlerRunner")
            .field(
                "stats",
                &*self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .finish_non_exhaustive()
    }
}

impl<F, Fut> AsyncHandlerRunner<F>
where
    F: Fn(OwnedMessage) -> Fut,
    Fut: Future<Output = Outcome>,
{
    /// Subscribes to `topic` (as [`HandlerRunner::new`]) and starts the runner's
    /// thread; nothing is handled until [`run`](Self::run) is awaited.
    pub fn new(
        bus: &Bus,
        topic: &str,
        handler: F,
        opts: HandlerOptions,
    ) -> Result<AsyncHandlerRunner<F>> {
        Self::with_layers(bus, topic, handler, HandlerBuilder::<Identity>::new(), opts)
    }

    /// As [`new`](Self::new), with `layers` ([`HandlerBuilder`]: `TraceLayer`,
    /// `MetricsLayer`, `TimeoutLayer`, `RecoverLayer` or your own) around each
    /// attempt: they run on the runner's thread around the hand-over to the task,
    /// see the message in the ring with its envelope, and the attempt's outcome as the
    /// runner gets it (a timeout or a panic of the future included), exactly as around
    /// a blocking [`HandlerRunner`]'s handler.
    ///
    /// ```no_run
    /// # async fn f() -> shmbus::Result<()> {
    /// use std::sync::Arc;
    /// use shmbus::handler::{AsyncHandlerRunner, HandlerBuilder, HandlerMetrics, HandlerOptions,
    ///                       MetricsLayer, Outcome};
    /// let bus = shmbus::Bus::connect(None)?;
    /// let metrics = Arc::new(HandlerMetrics::default());
    /// let layers = HandlerBuilder::new().layer(MetricsLayer::new(metrics.clone()));
    /// let runner = AsyncHandlerRunner::with_layers(&bus, "orders",
    ///     |_m: shmbus::OwnedMessage| async move { Outcome::ack() }, layers, HandlerOptions::default())?;
    /// # let _ = runner; Ok(()) }
    /// ```
    pub fn with_layers<L>(
        bus: &Bus,
        topic: &str,
        handler: F,
        layers: HandlerBuilder<L>,
        mut opts: HandlerOptions,
    ) -> Result<AsyncHandlerRunner<F>>
    where
        L: Layer<AsyncBridge>,
        L::Handler: Handler + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(1);
        let limit = opts.attempt_timeout.take(); // the bridge enforces it (drops the future)
        let bridge = AsyncBridge {
            tx,
            limit,
            stop: stop.clone(),
        };
        let mut runner = HandlerRunner::new(bus, topic, layers.handler(bridge), opts)?;
        let stopper = AsyncStopper {
            stop: stop.clone(),
            intr: runner.interrupter(),
        };
        let shared = Arc::new(Shared::default());
        let (done_tx, done) = oneshot::channel();
        let sh = shared.clone();
        let worker = std::thread::Builder::new()
            .name("shmbus-async-handler".into())
            .spawn(move || {
                let publish = |r: &HandlerRunner<L::Handler>| {
                    let mut s = *r.stats();
                    s.timeouts += sh.timeouts.load(Ordering::Relaxed);
                    s.panics += sh.panics.load(Ordering::Relaxed);
                    *sh.stats.lock().unwrap_or_else(|e| e.into_inner()) = s;
                    *sh.breaker.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(r.breaker().state());
                    s
                };
                let mut res = Ok(());
                while !stop.load(Ordering::Acquire) {
                    if let Err(e) =
                        runner.step(Duration::from_millis(10), &|| stop.load(Ordering::Acquire))
                    {
                        res = Err(e);
                        break;
                    }
                    publish(&runner);
                }
                let s = publish(&runner);
                let _ = done_tx.send(res.map(|_| s));
                drop(runner); // closes the channel: run() returns
            })
            .map_err(|e| Error::Internal(format!("spawning the runner's thread: {e}").into()))?;
        Ok(AsyncHandlerRunner {
            handler,
            rx: Some(rx),
            done: Some(done),
            stopper,
            shared,
            worker: Some(worker),
        })
    }

    /// A handle that stops the runner.
    pub fn stopper(&self) -> AsyncStopper {
        self.stopper.clone()
    }

    /// The counters so far (updated after each message).
    pub fn stats(&self) -> HandlerStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The circuit breaker's state after the last message.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(BreakerState::Closed)
    }

    /// Handles messages (calls the handler and awaits its futures on this task)
    /// until the runner is stopped ([`AsyncStopper::stop`]) or fails; the final
    /// counters, or the error that ended it (the message then unreleased).
    /// Dropping this future stops the runner too (the message being handled stays
    /// unreleased).
    pub async fn run(mut self) -> Result<HandlerStats> {
        // (rx stays in self: dropping this future drops it first, in Drop, which
        // unblocks a thread waiting for the reply of an attempt still in the channel)
        while let Some(a) = {
            let rx = self.rx.as_mut().expect("the receiver is kept until drop");
            rx.recv().await
        } {
            let o = self.attempt(a.msg, &a.deadline, a.limit).await;
            let _ = a.reply.send(o);
        }
        match self.done.take().expect("run once").await {
            Ok(r) => r,
            Err(_) => Err(Error::Internal(
                "the runner's thread ended without a result".into(),
            )),
        }
    }

    async fn attempt(
        &self,
        msg: OwnedMessage,
        deadline: &Deadline,
        limit: Option<Duration>,
    ) -> Outcome {
        let fut = match catch_unwind(AssertUnwindSafe(|| (self.handler)(msg))) {
            Ok(f) => f,
            Err(p) => {
                self.shared.panics.fetch_add(1, Ordering::Relaxed);
                return panic_outcome(p.as_ref());
            }
        };
        let mut fut = pin!(fut);
        let timed_out = || {
            self.shared.timeouts.fetch_add(1, Ordering::Relaxed);
            let l = limit.unwrap_or_default();
            timeout_outcome(l, l)
        };
        // The future is dropped when this returns: at the deadline, at a panic, or done.
        poll_fn(|cx| {
            if deadline.fired() {
                return Poll::Ready(timed_out());
            }
            deadline.register(cx.waker());
            if deadline.fired() {
                return Poll::Ready(timed_out());
            }
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                Ok(p) => p,
                Err(p) => {
                    self.shared.panics.fetch_add(1, Ordering::Relaxed);
                    Poll::Ready(panic_outcome(p.as_ref()))
                }
            }
        })
        .await
    }
}

impl<F> Drop for AsyncHandlerRunner<F> {
    fn drop(&mut self) {
        // Unblocks the thread wherever it waits: the ring (interrupted), the channel
        // or an attempt's reply (dropped with the receiver), a backoff (stop flag).
        self.stopper.stop();
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
