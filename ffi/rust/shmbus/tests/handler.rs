//! The handler runner (docs/messaging.md, "Handler runner (Rust)"): the C++
//! backoff formula (values pinned from the C++ library) and jitter bounds, the
//! breaker under an injected clock, order under retries, a poison message
//! dead-lettered while 100 000 others flow (the DeadLetter read back here and by the
//! C++ CLI, `shmbus tail`), panics, timeouts, layers, dedup across a runner restart,
//! stop mid-retry, the worker pool and the async runner under tokio.
//!
//! Tests that need a daemon (durable names, durable topics, the CLI) start a real
//! shmbusd each (`SHMBUSD`, default the build's; the CLI: `SHMBUS_CLI`).
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestBus;
use shmbus::envelope_capnp::dead_letter;
use shmbus::handler::{
    attempt_deadline, handler_fn, AsyncHandlerRunner, AttemptRecord, HandlerBuilder,
    HandlerMetrics, MetricsLayer, RecoverLayer, TimeoutLayer, TraceLayer, DEAD_LETTER_SCHEMA_ID,
};
use shmbus::{
    BreakerPolicy, BreakerState, Bus, CircuitBreaker, DedupWindow, DurableConfig, Envelope,
    HandlerOptions, HandlerRunner, Message, Outcome, OwnedMessage, Policy, PublisherOptions,
    RetryPolicy, Start, SubscriberOptions, TopicConfig, TraceContext, WorkerPool,
};

const T: Option<Duration> = Some(Duration::from_secs(10));

/// A real shmbusd (`SHMBUSD`, or the build's daemon/shmbusd) on a socket, state
/// directory and segment prefix of its own; SIGKILLed at the end.
struct Daemon {
    bus: std::mem::ManuallyDrop<Bus>,
    dir: PathBuf,
    child: std::process::Child,
}

fn build_tool(env: &str, rel: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../build")
            .join(rel),
    }
}

impl Daemon {
    fn new(name: &str) -> Daemon {
        let dir =
            std::env::temp_dir().join(format!("shmbus-rs-handler-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bin = build_tool("SHMBUSD", "daemon/shmbusd");
        let sock = dir.join("shmbusd.sock");
        let mut child = std::process::Command::new(&bin)
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--shm-prefix")
            .arg(format!("rs-handler-{name}-{}", std::process::id()))
            .args(["--log-level", "warn"])
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} (SHMBUSD): {e}", bin.display()));
        // Ready when it accepts a connection (bounded: 10 s).
        let t0 = std::time::Instant::now();
        let bus = loop {
            match Bus::connect(Some(&sock)) {
                Ok(b) => break b,
                Err(e) => {
                    if let Some(st) = child.try_wait().unwrap() {
                        panic!("shmbusd exited: {st}");
                    }
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "shmbusd not up: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        Daemon {
            bus: std::mem::ManuallyDrop::new(bus),
            dir,
            child,
        }
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("shmbusd.sock")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: dropped once, here.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.bus) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fake clock that the injected sleep advances: no real waiting, exact figures.
#[derive(Clone, Default)]
struct FakeTime {
    now: Arc<AtomicI64>,
    sleeps: Arc<Mutex<Vec<i64>>>,
}

impl FakeTime {
    fn new() -> FakeTime {
        let t = FakeTime::default();
        t.now.store(1_000_000_000, Ordering::SeqCst);
        t
    }
    fn apply(&self, o: &mut HandlerOptions) {
        let n = self.now.clone();
        o.clock = Some(Arc::new(move || n.load(Ordering::SeqCst)));
        let n = self.now.clone();
        let s = self.sleeps.clone();
        o.sleep = Some(Arc::new(move |ns| {
            s.lock().unwrap().push(ns);
            n.fetch_add(ns, Ordering::SeqCst);
        }));
    }
    fn sleeps(&self) -> Vec<i64> {
        self.sleeps.lock().unwrap().clone()
    }
}

fn u64_of(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fn never() -> bool {
    false
}

// ---------------------------------------------------------------- backoff

/// (policy, attempt, rnd, C++ `RetryPolicy::backoff_ns`), printed by a program
/// linked against libshmbus: policy 0 the defaults, 1 {9, 3 ms, 200 ms, x3,
/// jitter 0.5}, 2 {3, 1 us, 5 us, x0.5 (taken as 1), jitter 2 (clamped to 1)};
/// attempts 1..8, five random words each.
const CXX_BACKOFF: &[(usize, u32, u64, i64)] = &include!("handler_backoff_cxx.in");

fn policies() -> [RetryPolicy; 3] {
    [
        RetryPolicy::default(),
        RetryPolicy {
            max_attempts: 9,
            initial_backoff_ns: 3_000_000,
            max_backoff_ns: 200_000_000,
            multiplier: 3.0,
            jitter: 0.5,
        },
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ns: 1000,
            max_backoff_ns: 5000,
            multiplier: 0.5,
            jitter: 2.0,
        },
    ]
}

#[test]
fn backoff_is_the_cxx_formula_with_jitter_in_bounds() {
    let d = RetryPolicy::default();
    assert_eq!(
        (
            d.max_attempts,
            d.initial_backoff_ns,
            d.max_backoff_ns,
            d.multiplier,
            d.jitter
        ),
        (5, 1_000_000, 1_000_000_000, 2.0, 0.2),
        "the C++ defaults"
    );
    let ps = policies();
    assert_eq!(CXX_BACKOFF.len(), 120);
    for &(p, a, rnd, want) in CXX_BACKOFF {
        assert_eq!(
            ps[p].backoff_ns(a, rnd),
            want,
            "policy {p} attempt {a} rnd {rnd:#x}"
        );
    }
    // Jitter bounds over many draws: within [base(1-j), base(1+j)], both ends reached.
    let mut x = 0x9e3779b97f4a7c15u64;
    for (p, pol) in ps.iter().enumerate() {
        let j = pol.jitter.clamp(0.0, 1.0);
        for a in 2..=12u32 {
            let m = pol.multiplier.max(1.0);
            let base = (pol.initial_backoff_ns as f64 * m.powi(a as i32 - 2))
                .min(pol.max_backoff_ns as f64);
            let (mut lo, mut hi) = (f64::MAX, 0f64);
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = pol.backoff_ns(a, x) as f64;
                assert!(
                    b >= (base * (1.0 - j)).floor() && b <= base * (1.0 + j),
                    "policy {p} attempt {a}: {b} vs base {base}"
                );
                lo = lo.min(b);
                hi = hi.max(b);
            }
            assert!(
                lo < base * (1.0 - j) + base * j * 0.01 + 1.0,
                "policy {p} attempt {a}: low end {lo} not reached (base {base})"
            );
            assert!(
                hi > base * (1.0 + j) - base * j * 0.01 - 1.0,
                "policy {p} attempt {a}: high end {hi} not reached"
            );
        }
    }
}

#[test]
fn the_runners_waits_are_the_cxx_runners_for_the_same_seed() {
    // The C++ HandlerRunner with seed 42, max_attempts 8, a handler that always
    // retries: the waits its injected sleep saw (attempts 2..8).
    const CXX_WAITS: [i64; 7] = [
        935634, 2225804, 4464219, 9420936, 17692119, 36297470, 56428024,
    ];
    let t = TestBus::new("hseed");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let ft = FakeTime::new();
    let mut o = HandlerOptions {
        seed: 42,
        retry: RetryPolicy {
            max_attempts: 8,
            ..Default::default()
        },
        breaker: BreakerPolicy {
            failure_threshold: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    ft.apply(&mut o);
    let mut r = HandlerRunner::new(
        &t.bus,
        &topic,
        |_m: &Message<'_>| Outcome::retry("no", 0, None),
        o,
    )
    .unwrap();
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    p.offer(b"x", 1, 7).unwrap();
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert_eq!(ft.sleeps(), CXX_WAITS);
    assert_eq!(r.stats().dead_lettered, 1);
}

// ---------------------------------------------------------------- breaker

#[test]
fn breaker_opens_after_n_failures_half_opens_and_closes() {
    let mut b = CircuitBreaker::new(BreakerPolicy {
        failure_threshold: 3,
        open_ns: 1000,
        half_open_successes: 2,
    });
    assert!(b.allow(0));
    b.on_failure(10);
    b.on_failure(20);
    b.on_success(); // resets the count
    b.on_failure(30);
    b.on_failure(40);
    assert_eq!(b.state(), BreakerState::Closed);
    b.on_failure(50);
    assert_eq!(
        (b.state(), b.open_until_ns(), b.times_opened()),
        (BreakerState::Open, 1050, 1)
    );
    assert!(!b.allow(1049));
    assert!(b.allow(1050));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.on_failure(1060); // a failed trial re-opens it at once
    assert_eq!(
        (b.state(), b.open_until_ns(), b.times_opened()),
        (BreakerState::Open, 2060, 2)
    );
    assert!(b.allow(2060));
    b.on_success();
    assert_eq!(b.state(), BreakerState::HalfOpen, "two successes needed");
    b.on_success();
    assert_eq!(b.state(), BreakerState::Closed);

    // Through a runner: threshold 2, open 1 s; the handler fails 3 times, then acks.
    // The fake clock shows the message waited for the breaker (unreleased), the
    // half-open trial failed and re-opened it, the next trial closed it.
    let t = TestBus::new("hbreaker");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let ft = FakeTime::new();
    let mut o = HandlerOptions {
        retry: RetryPolicy {
            max_attempts: 10,
            initial_backoff_ns: 100,
            max_backoff_ns: 100,
            multiplier: 1.0,
            jitter: 0.0,
        },
        breaker: BreakerPolicy {
            failure_threshold: 2,
            open_ns: 1_000_000_000,
            half_open_successes: 1,
        },
        ..Default::default()
    };
    ft.apply(&mut o);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (c, now) = (calls.clone(), ft.now.clone());
    let mut r = HandlerRunner::new(
        &t.bus,
        &topic,
        move |_m: &Message<'_>| {
            let mut c = c.lock().unwrap();
            c.push(now.load(Ordering::SeqCst));
            if c.len() <= 3 {
                Outcome::retry("down", 503, None)
            } else {
                Outcome::ack()
            }
        },
        o,
    )
    .unwrap();
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    p.offer(b"x", 1, 0).unwrap();
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    let t0 = 1_000_000_000i64;
    // attempt 1 at t0; backoff 100; attempt 2 at t0+100 fails: open until t0+100+1s;
    // backoff 100 then the breaker wait; trial at t0+100+1s fails: open again;
    // backoff 100, wait, trial at t0+100+2s acks and closes it.
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            t0,
            t0 + 100,
            t0 + 100 + 1_000_000_000,
            t0 + 100 + 2_000_000_000
        ]
    );
    assert_eq!(ft.sleeps(), vec![100, 100, 999_999_900, 100, 999_999_900]);
    assert_eq!(r.breaker().state(), BreakerState::Closed);
    assert_eq!(r.breaker().times_opened(), 2);
    assert_eq!(
        (r.stats().acked, r.stats().retries, r.stats().attempts),
        (1, 3, 4)
    );
}

// ---------------------------------------------------------------- order, panics, timeouts, layers

#[test]
fn a_flaky_handler_is_retried_in_order() {
    let t = TestBus::new("hflaky");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let ft = FakeTime::new();
    let mut o = HandlerOptions::default();
    ft.apply(&mut o);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fails: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let (s, f) = (seen.clone(), fails.clone());
    let mut r = HandlerRunner::new(
        &t.bus,
        &topic,
        move |m: &Message<'_>| {
            let i = u64_of(m.data());
            s.lock().unwrap().push(i);
            // every 7th message fails twice, then succeeds
            let mut f = f.lock().unwrap();
            let n = f.entry(i).or_default();
            if i % 7 == 0 && *n < 2 {
                *n += 1;
                return Outcome::retry(format!("flaky {i}"), 0, None);
            }
            Outcome::ack()
        },
        o,
    )
    .unwrap();
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    for i in 1..=100u64 {
        p.offer(&i.to_le_bytes(), i, 0).unwrap();
    }
    let mut done = 0;
    while done < 100 {
        assert!(
            r.step(Duration::from_secs(5), &never).unwrap(),
            "message {}",
            done + 1
        );
        done += 1;
    }
    let mut want = Vec::new();
    for i in 1..=100u64 {
        want.push(i);
        if i % 7 == 0 {
            want.push(i);
            want.push(i);
        }
    }
    assert_eq!(
        *seen.lock().unwrap(),
        want,
        "each message's attempts before the next message"
    );
    let s = r.stats();
    assert_eq!(
        (s.handled, s.acked, s.retries, s.dead_lettered),
        (100, 100, 28, 0)
    );
    // default backoff: 1 ms then 2 ms, jittered within 20 %
    for (k, w) in ft.sleeps().iter().enumerate() {
        let base = if k % 2 == 0 { 1_000_000 } else { 2_000_000 };
        assert!(*w >= base * 8 / 10 && *w <= base * 12 / 10, "wait {k}: {w}");
    }
}

#[test]
fn a_panic_is_a_retry_and_layers_compose() {
    let t = TestBus::new("hpanic");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let ft = FakeTime::new();
    let mut o = HandlerOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    ft.apply(&mut o);
    type Records = Arc<Mutex<Vec<(u64, Option<TraceContext>, Outcome)>>>;
    let records: Records = Arc::default();
    let rec = records.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // trace outermost, then recover: the hook sees the panic as an outcome
    let h = HandlerBuilder::new()
        .layer(TraceLayer::new(move |r: &AttemptRecord<'_>| {
            rec.lock()
                .unwrap()
                .push((r.sequence, r.trace.clone(), r.outcome.clone()))
        }))
        .layer(RecoverLayer)
        .layer(TimeoutLayer::new(Duration::from_secs(60)))
        .handler(handler_fn(move |m: &Message<'_>| {
            c.fetch_add(1, Ordering::SeqCst);
            let e = m.envelope().unwrap();
            match e.map_or(m.data(), |e| e.payload) {
                b"boom" => panic!("boom {}", m.sequence()),
                _ => Outcome::ack(),
            }
        }));
    let mut r = HandlerRunner::new(&t.bus, &topic, h, o).unwrap();
    let mut dlq = dlq_reader(&t, r.dlq_topic());
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    let trace = TraceContext::fresh();
    let env = Envelope {
        trace: trace.clone(),
        ..Default::default()
    };
    p.offer_enveloped(&env, b"boom", 5).unwrap();
    p.offer(b"fine", 6, 0).unwrap();
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    let recs = records.lock().unwrap().clone();
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert_eq!(recs[0].0, 1);
    assert_eq!(
        recs[0].1.as_ref(),
        Some(&trace),
        "the trace context of the envelope"
    );
    assert_eq!(recs[0].2, Outcome::retry("panic: boom 1", 0, None));
    assert_eq!(recs[1].2, Outcome::retry("panic: boom 1", 0, None));
    assert_eq!(
        (recs[2].0, recs[2].1.clone(), recs[2].2.clone()),
        (2, None, Outcome::ack())
    );
    assert_eq!((r.stats().dead_lettered, r.stats().acked), (1, 1));
    // the dead letter says why; and without the layer the runner itself recovers
    assert_eq!(next_letter(&mut dlq), ("panic: boom 1".to_string(), 2, 5));
    let mut bare = {
        let mut o = HandlerOptions {
            retry: RetryPolicy {
                max_attempts: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        FakeTime::new().apply(&mut o);
        let n = Arc::new(AtomicUsize::new(0));
        HandlerRunner::new(
            &t.bus,
            &topic,
            move |_m: &Message<'_>| {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::panic::panic_any(42u32); // not a string
                }
                Outcome::ack()
            },
            o,
        )
        .unwrap()
    };
    p.offer(b"again", 7, 0).unwrap();
    assert!(bare.step(Duration::from_secs(5), &never).unwrap());
    assert_eq!(
        (
            bare.stats().panics,
            bare.stats().retries,
            bare.stats().acked
        ),
        (1, 1, 1)
    );
}

#[test]
fn an_attempt_over_its_timeout_fails() {
    let t = TestBus::new("htimeout");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let ft = FakeTime::new();
    let mut o = HandlerOptions {
        attempt_timeout: Some(Duration::from_millis(5)),
        retry: RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    ft.apply(&mut o);
    let now = ft.now.clone();
    let once = Arc::new(AtomicBool::new(true));
    let mut r = HandlerRunner::new(
        &t.bus,
        &topic,
        move |m: &Message<'_>| {
            // "slow" takes 6 ms of the (fake) clock every time, "once" the first time
            if m.data() == b"slow" || (m.data() == b"once" && once.swap(false, Ordering::SeqCst)) {
                now.fetch_add(6_000_001, Ordering::SeqCst);
            }
            Outcome::ack()
        },
        o,
    )
    .unwrap();
    let mut dlq = dlq_reader(&t, r.dlq_topic());
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    p.offer(b"slow", 1, 0).unwrap();
    p.offer(b"once", 2, 0).unwrap();
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert_eq!(
        (r.stats().dead_lettered, r.stats().timeouts),
        (1, 2),
        "an overrun ack is a failure"
    );
    assert_eq!(
        next_letter(&mut dlq),
        (
            "timeout: the attempt took 6.000 ms, the limit is 5.000 ms".to_string(),
            2,
            1
        )
    );
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert_eq!(
        (r.stats().acked, r.stats().timeouts),
        (1, 3),
        "retried, then in time"
    );

    // The layer, on the real clock: the work itself takes 30 ms.
    let deadline_seen = Arc::new(Mutex::new(None));
    let dl = deadline_seen.clone();
    let before = std::time::Instant::now();
    let h = HandlerBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(10)))
        .handler(handler_fn(move |_m: &Message<'_>| {
            *dl.lock().unwrap() = attempt_deadline(); // what a cooperative handler reads
            std::thread::sleep(Duration::from_millis(30));
            Outcome::ack()
        }));
    let mut o = HandlerOptions {
        retry: RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    FakeTime::new().apply(&mut o);
    let mut r2 = HandlerRunner::new(&t.bus, &topic, h, o).unwrap();
    p.offer(b"slow", 3, 0).unwrap();
    assert!(r2.step(Duration::from_secs(5), &never).unwrap());
    assert_eq!((r2.stats().dead_lettered, r2.stats().acked), (1, 0));
    let (why, attempts, id) = next_letter(&mut dlq);
    assert!(
        why.starts_with("timeout: the attempt took ") && why.ends_with(", the limit is 10.000 ms"),
        "{why}"
    );
    assert_eq!((attempts, id), (1, 3));
    let d = deadline_seen
        .lock()
        .unwrap()
        .expect("a deadline inside the layer");
    assert!(
        d > before && d <= std::time::Instant::now(),
        "the attempt's deadline, 10 ms after it began"
    );
    assert_eq!(attempt_deadline(), None, "none outside an attempt");
}

// ---------------------------------------------------------------- dead letters

/// Creates the dead-letter topic (as the runner would) and a reader of it.
fn dlq_reader(t: &TestBus, dlq: &str) -> shmbus::Subscriber {
    t.bus
        .create_topic(
            dlq,
            &TopicConfig {
                capacity: 1 << 20,
                multi_producer: true,
                ..Default::default()
            },
        )
        .unwrap();
    t.bus.subscriber(dlq, &Default::default()).unwrap()
}

/// The next dead letter's (message, attempts, frame message id).
fn next_letter(sub: &mut shmbus::Subscriber) -> (String, u32, u64) {
    let v = sub.poll_wait(T).unwrap().expect("a dead letter");
    assert_eq!(v.schema_id(), DEAD_LETTER_SCHEMA_ID);
    let rd = v.reader().unwrap();
    let d: dead_letter::Reader = rd.get_root().unwrap();
    (
        d.get_message().unwrap().to_string().unwrap(),
        d.get_attempts(),
        v.message_id(),
    )
}

fn cli() -> PathBuf {
    build_tool("SHMBUS_CLI", "tools/shmbus")
}

#[test]
fn a_poison_message_is_dead_lettered_while_100000_flow_and_the_cxx_cli_reads_it() {
    const N: u64 = 100_000;
    const POISON: u64 = 50_000;
    let d = Daemon::new("poison");
    let topic = "rs.orders";
    d.bus
        .create_topic(
            topic,
            &TopicConfig {
                capacity: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    // durable, so the CLI reads it from the log whenever it starts
    d.bus
        .create_durable_topic(
            "rs.orders.dlq",
            &TopicConfig {
                capacity: 1 << 20,
                multi_producer: true,
                ..Default::default()
            },
            &DurableConfig::default(),
        )
        .unwrap();
    let o = HandlerOptions {
        name: "fulfilment".into(),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff_ns: 1_000_000,
            max_backoff_ns: 4_000_000,
            multiplier: 2.0,
            jitter: 0.1,
        },
        breaker: BreakerPolicy {
            failure_threshold: 100,
            ..Default::default()
        },
        subscriber: SubscriberOptions {
            name: Some("fulfilment".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let acked = Arc::new(Mutex::new(Vec::with_capacity(N as usize)));
    let poison_frame = Arc::new(Mutex::new(None));
    let (a, pf) = (acked.clone(), poison_frame.clone());
    let mut r = HandlerRunner::new(
        &d.bus,
        topic,
        move |m: &Message<'_>| {
            let i = u64_of(m.data());
            if i == POISON {
                *pf.lock().unwrap() = Some((m.sequence(), m.timestamp_ns(), m.data().to_vec()));
                return Outcome::retry("cannot parse the order", 422, None);
            }
            a.lock().unwrap().push(i);
            Outcome::ack()
        },
        o,
    )
    .unwrap();
    let bus = d.bus.clone();
    let producer = std::thread::spawn(move || {
        let mut p = bus
            .publisher(
                topic,
                &PublisherOptions {
                    producer_id: 4242,
                    block_timeout: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .unwrap();
        for i in 1..=N + 1 {
            let mut b = i.to_le_bytes().to_vec();
            b.extend_from_slice(b"-order-payload");
            p.offer(&b, 0x1000 + i, 0xabcdef).unwrap();
        }
    });
    let t0 = std::time::Instant::now();
    let mut finished = 0;
    while finished < N + 1 {
        assert!(
            r.step(Duration::from_secs(10), &never).unwrap(),
            "stalled after {finished}"
        );
        finished += 1;
    }
    let took = t0.elapsed();
    producer.join().unwrap();
    eprintln!(
        "runner: {} messages in {took:?} ({} ns each, with the poison's 3 attempts)",
        N + 1,
        took.as_nanos() / u128::from(N + 1)
    );
    let want: Vec<u64> = (1..=N + 1).filter(|&i| i != POISON).collect();
    assert!(*acked.lock().unwrap() == want, "the others, in order");
    let s = *r.stats();
    assert_eq!(
        (s.handled, s.acked, s.dead_lettered, s.attempts, s.retries),
        (N + 1, N, 1, N + 3, 2)
    );
    let (seq, ts, payload) = poison_frame.lock().unwrap().clone().unwrap();

    // Read back here, with the generated schema.
    let mut sub = d
        .bus
        .subscriber(
            "rs.orders.dlq",
            &SubscriberOptions {
                start: Start::Earliest,
                ..Default::default()
            },
        )
        .unwrap();
    let v = sub.poll_wait(T).unwrap().expect("the dead letter");
    assert_eq!(
        (v.message_id(), v.schema_id()),
        (0x1000 + POISON, DEAD_LETTER_SCHEMA_ID)
    );
    let rd = v.reader().unwrap();
    let dl: dead_letter::Reader = rd.get_root().unwrap();
    assert_eq!(dl.get_code(), 422);
    assert_eq!(
        dl.get_message().unwrap().to_str().unwrap(),
        "cannot parse the order"
    );
    assert_eq!(dl.get_attempts(), 3);
    assert!(dl.get_first_failure_ns() > 0 && dl.get_first_failure_ns() < dl.get_last_failure_ns());
    assert_eq!(dl.get_handler().unwrap().to_str().unwrap(), "fulfilment");
    let rs = dl.get_retry().unwrap();
    assert_eq!(
        (
            rs.get_max_attempts(),
            rs.get_initial_backoff_ns(),
            rs.get_max_backoff_ns(),
            rs.get_multiplier(),
            rs.get_jitter()
        ),
        (3, 1_000_000, 4_000_000, 2.0, 0.1)
    );
    assert_eq!(dl.get_reason().unwrap(), dead_letter::Reason::Exhausted);
    assert_eq!(dl.get_original_topic().unwrap().to_str().unwrap(), topic);
    assert_eq!(
        (dl.get_partition(), dl.get_sequence(), dl.get_message_id()),
        (0, seq, 0x1000 + POISON)
    );
    assert_eq!(
        (
            dl.get_schema_id(),
            dl.get_producer_id(),
            dl.get_timestamp_ns()
        ),
        (0xabcdef, 4242, ts)
    );
    assert_eq!(dl.get_payload().unwrap(), &payload[..]);
    let (first, last) = (dl.get_first_failure_ns(), dl.get_last_failure_ns());
    drop(v);

    // And by the C++ CLI.
    let out = std::process::Command::new(cli())
        .arg("--socket")
        .arg(d.socket())
        .args([
            "tail",
            "rs.orders.dlq",
            "--from",
            "earliest",
            "--count",
            "1",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (SHMBUS_CLI, or build/tools/shmbus): {e}",
                cli().display()
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shmbus tail: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let j = |k: &str| {
        line.pointer(k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} in {text}"))
    };
    assert_eq!(
        j("/message_id"),
        format!("0x{:016x}", 0x1000 + POISON).as_str(),
        "{text}"
    );
    assert_eq!(
        j("/schema_id"),
        format!("0x{DEAD_LETTER_SCHEMA_ID:016x}").as_str(),
        "{text}"
    );
    let m = line
        .as_object()
        .unwrap()
        .values()
        .find(|v| v.get("originalTopic").is_some())
        .unwrap_or_else(|| panic!("no decoded DeadLetter in {text}"))
        .clone();
    let want = serde_json::json!({
        "code": 422,
        "message": "cannot parse the order",
        "attempts": 3,
        "firstFailureNs": first.to_string(),
        "lastFailureNs": last.to_string(),
        "handler": "fulfilment",
        "retry": {"maxAttempts": 3, "initialBackoffNs": "1000000", "maxBackoffNs": "4000000",
                  "multiplier": 2, "jitter": 0.1},
        "reason": "exhausted",
        "originalTopic": "rs.orders",
        "sequence": seq.to_string(),
        "messageId": (0x1000 + POISON).to_string(),
        "schemaId": 0xabcdefu64.to_string(),
        "producerId": 4242,
        "timestampNs": ts.to_string(),
        "payload": payload,
    });
    for (k, w) in want.as_object().unwrap() {
        assert_eq!(m.get(k), Some(w), "field {k}: {text}");
    }
    // partition 0 is the default: Cap'n Proto's JSON leaves it out or prints 0
    assert!(m.get("partition").map_or(true, |p| p == 0), "{text}");
}

// ---------------------------------------------------------------- restarts

#[test]
fn stop_mid_retry_leaves_the_message_for_a_restarted_runner() {
    let d = Daemon::new("stop");
    let topic = "rs.stop";
    d.bus
        .create_topic(
            topic,
            &TopicConfig {
                capacity: 1 << 16,
                ..Default::default()
            },
        )
        .unwrap();
    let opts = || HandlerOptions {
        retry: RetryPolicy {
            max_attempts: 1000,
            ..Default::default()
        },
        breaker: BreakerPolicy {
            failure_threshold: 1000,
            ..Default::default()
        },
        subscriber: SubscriberOptions {
            name: Some("stopper".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let mut r = HandlerRunner::new(
        &d.bus,
        topic,
        move |m: &Message<'_>| {
            let i = u64_of(m.data());
            let mut s = s.lock().unwrap();
            s.push(i);
            if i == 3 {
                if s.iter().filter(|&&x| x == 3).count() == 3 {
                    st.store(true, Ordering::SeqCst); // asked to stop while message 3 is in retry
                }
                return Outcome::retry("busy", 0, Some(Duration::from_millis(1)));
            }
            Outcome::ack()
        },
        opts(),
    )
    .unwrap();
    let mut p = d.bus.publisher(topic, &Default::default()).unwrap();
    for i in 1..=5u64 {
        p.offer(&i.to_le_bytes(), i, 0).unwrap();
    }
    let sf = stop.clone();
    r.run(&move || sf.load(Ordering::SeqCst)).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 3, 3]);
    assert_eq!((r.stats().handled, r.stats().dead_lettered), (2, 0));
    drop(r);
    let again = Arc::new(Mutex::new(Vec::new()));
    let a = again.clone();
    let mut r = HandlerRunner::new(
        &d.bus,
        topic,
        move |m: &Message<'_>| {
            a.lock().unwrap().push(u64_of(m.data()));
            Outcome::ack()
        },
        opts(),
    )
    .unwrap();
    for _ in 0..3 {
        assert!(r.step(Duration::from_secs(5), &never).unwrap());
    }
    assert_eq!(
        *again.lock().unwrap(),
        vec![3, 4, 5],
        "the restarted runner starts at the unreleased message"
    );
    assert!(
        matches!(
            d.bus.describe_topic("rs.stop.dlq"),
            Err(shmbus::Error::NotFound(_))
        ),
        "nothing dead-lettered"
    );
}

#[test]
fn a_stopped_runner_run_again_resumes_at_its_message() {
    // (C++'s runner polls on after a stop: run again in the same process, it would
    // skip the message in retry and release it with the next one.)
    let t = TestBus::new("hresume");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let mut o = HandlerOptions::default();
    FakeTime::new().apply(&mut o);
    let mut r = HandlerRunner::new(
        &t.bus,
        &topic,
        move |m: &Message<'_>| {
            let i = u64_of(m.data());
            let mut s = s.lock().unwrap();
            s.push(i);
            if i == 2 && s.len() == 2 {
                st.store(true, Ordering::SeqCst); // stop during message 2's first retry wait
                return Outcome::retry("busy", 0, None);
            }
            Outcome::ack()
        },
        o,
    )
    .unwrap();
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    for i in 1..=3u64 {
        p.offer(&i.to_le_bytes(), i, 0).unwrap();
    }
    let sf = stop.clone();
    r.run(&move || sf.load(Ordering::SeqCst)).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
    stop.store(false, Ordering::SeqCst);
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![1, 2, 2, 3],
        "message 2 again, then 3"
    );
    assert_eq!(r.stats().acked, 3);
}

#[test]
fn dedup_holds_across_a_runner_restart() {
    let d = Daemon::new("dedup");
    let topic = "rs.dedup";
    d.bus
        .create_topic(
            topic,
            &TopicConfig {
                capacity: 1 << 16,
                ..Default::default()
            },
        )
        .unwrap();
    let state_file = d.dir.join("handler.dedup");
    let applied: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut p = d
        .bus
        .publisher(
            topic,
            &PublisherOptions {
                producer_id: 77,
                ..Default::default()
            },
        )
        .unwrap();
    let mut publish = |from: u64, to: u64| {
        for id in from..=to {
            p.offer(&id.to_le_bytes(), id, 0).unwrap();
        }
    };
    let runner = |applied: Arc<Mutex<HashMap<u64, u32>>>| {
        let state = Arc::new(Mutex::new(Vec::new()));
        let w = DedupWindow::open(64, Some(&state_file)).unwrap();
        *state.lock().unwrap() = w.app_state();
        let st = state.clone();
        let o = HandlerOptions {
            subscriber: SubscriberOptions {
                name: Some("dd".into()),
                ..Default::default()
            },
            dedup: Some(w),
            dedup_state: Some(state),
            ..Default::default()
        };
        HandlerRunner::new(
            &d.bus,
            topic,
            move |m: &Message<'_>| {
                let id = u64_of(m.data());
                *applied.lock().unwrap().entry(id).or_default() += 1;
                let mut s = st.lock().unwrap();
                s.resize(8, 0);
                let sum = u64_of(&s) + id;
                *s = sum.to_le_bytes().to_vec();
                Outcome::ack()
            },
            o,
        )
        .unwrap()
    };
    {
        let mut r = runner(applied.clone()); // subscribed (by name) before anything is published
        publish(1, 20);
        for _ in 0..20 {
            assert!(r.step(Duration::from_secs(5), &never).unwrap());
        }
        assert_eq!(r.stats().duplicates, 0);
    } // the runner goes; the window's file stays
    publish(15, 30); // the producer retries 15..20 (same producer and message ids)
    let mut r = runner(applied.clone());
    for k in 0..16 {
        let ok = r.step(Duration::from_secs(5), &never).unwrap();
        let st = *r.stats();
        assert!(ok, "step {k}: {st:?} {:?}", r.dedup().map(|w| w.stats()));
    }
    assert_eq!(r.stats().duplicates, 6, "15..20 seen before the restart");
    for id in 1..=30u64 {
        assert_eq!(applied.lock().unwrap().get(&id), Some(&1), "id {id}");
    }
    assert_eq!(
        r.dedup().unwrap().app_state(),
        (1..=30u64).sum::<u64>().to_le_bytes(),
        "the state committed with each record"
    );
}

// ---------------------------------------------------------------- pool and async

#[test]
fn a_worker_pool_keeps_each_partitions_order() {
    let t = TestBus::new("hpool");
    let topic = "t";
    t.bus
        .create_topic(
            topic,
            &TopicConfig {
                partitions: 4,
                capacity: 1 << 16,
                ..Default::default()
            },
        )
        .unwrap();
    const PER: u64 = 2000;
    let seen: Arc<Mutex<HashMap<u32, Vec<u64>>>> = Arc::default();
    let total = Arc::new(AtomicU64::new(0));
    let want_calls = 4 * (PER + PER / 97);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let pool = WorkerPool::spawn(&t.bus, topic, |p| {
        let (s, tot, done) = (seen.clone(), total.clone(), done_tx.clone());
        let mut o = HandlerOptions::default();
        FakeTime::new().apply(&mut o);
        let h = move |m: &Message<'_>| {
            let i = u64_of(m.data()); // partition * 1 000 000 + index
            s.lock().unwrap().entry(p).or_default().push(i);
            if tot.fetch_add(1, Ordering::SeqCst) + 1 == want_calls {
                let _ = done.send(());
            }
            if i % 1_000_000 % 97 == 0
                && s.lock().unwrap()[&p].iter().filter(|&&x| x == i).count() == 1
            {
                return Outcome::retry("once", 0, None);
            }
            Outcome::ack()
        };
        (h, o)
    })
    .unwrap();
    let mut threads = Vec::new();
    for part in 0..4u32 {
        let bus = t.bus.clone();
        threads.push(std::thread::spawn(move || {
            let mut p = bus
                .publisher(
                    topic,
                    &PublisherOptions {
                        partition: part,
                        ..Default::default()
                    },
                )
                .unwrap();
            for i in 1..=PER {
                let v = u64::from(part) * 1_000_000 + i;
                p.offer(&v.to_le_bytes(), i, 0).unwrap();
            }
        }));
    }
    for th in threads {
        th.join().unwrap();
    }
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "{} of {want_calls} calls in 60 s",
                total.load(Ordering::SeqCst)
            )
        });
    let stats = pool.join();
    assert_eq!(stats.len(), 4);
    for (p, s) in stats {
        let s = s.unwrap();
        assert_eq!((s.acked, s.retries), (PER, PER / 97), "partition {p}");
        let mut want = Vec::new();
        for i in 1..=PER {
            let v = u64::from(p) * 1_000_000 + i;
            want.push(v);
            if i % 97 == 0 {
                want.push(v);
            }
        }
        assert!(
            seen.lock().unwrap()[&p] == want,
            "partition {p}: its own messages, in order"
        );
    }
}

fn async_messages() -> u64 {
    std::env::var("SHMBUS_HANDLER_ASYNC_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_async_runner_under_tokio_handles_100000_messages() {
    let n = async_messages();
    let t = TestBus::new("hasync");
    let topic = t.topic("t", 1 << 20, Policy::Block);
    let next = Arc::new(AtomicU64::new(1));
    let retried = Arc::new(AtomicU64::new(0));
    let stop_cell: Arc<Mutex<Option<shmbus::handler::AsyncStopper>>> = Arc::default();
    let (nx, rt, sc) = (next.clone(), retried.clone(), stop_cell.clone());
    let mut o = HandlerOptions::default();
    o.retry.initial_backoff_ns = 1000;
    let runner = AsyncHandlerRunner::new(
        &t.bus,
        &topic,
        move |m: OwnedMessage| {
            let (nx, rt, sc) = (nx.clone(), rt.clone(), sc.clone());
            async move {
                let i = u64_of(m.data());
                assert_eq!(i, nx.load(Ordering::SeqCst), "in order");
                tokio::task::yield_now().await; // a real await point
                if i % 1000 == 0 && rt.load(Ordering::SeqCst) < i / 1000 {
                    rt.fetch_add(1, Ordering::SeqCst);
                    return Outcome::retry("once", 0, None);
                }
                nx.fetch_add(1, Ordering::SeqCst);
                if i == n {
                    sc.lock().unwrap().as_ref().unwrap().stop();
                }
                Outcome::ack()
            }
        },
        o,
    )
    .unwrap();
    *stop_cell.lock().unwrap() = Some(runner.stopper());
    let bus = t.bus.clone();
    let producer = std::thread::spawn(move || {
        let mut p = bus
            .publisher(
                "t",
                &PublisherOptions {
                    block_timeout: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .unwrap();
        for i in 1..=n {
            p.offer(&i.to_le_bytes(), i, 0).unwrap();
        }
    });
    let t0 = std::time::Instant::now();
    let stats = tokio::time::timeout(Duration::from_secs(120), runner.run())
        .await
        .expect("done within 120 s")
        .unwrap();
    let took = t0.elapsed();
    eprintln!(
        "async runner: {n} messages in {took:?} ({} ns each)",
        took.as_nanos() / u128::from(n)
    );
    producer.join().unwrap();
    assert_eq!(next.load(Ordering::SeqCst), n + 1);
    assert_eq!(
        (stats.acked, stats.retries, stats.dead_lettered),
        (n, n / 1000, 0)
    );
}

struct DropGuard(Arc<AtomicUsize>);
impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_async_attempt_is_dropped_at_its_deadline_and_a_panic_is_a_retry() {
    let t = TestBus::new("hasyncto");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let o = HandlerOptions {
        // (long enough that a loaded machine runs the other attempts in time)
        attempt_timeout: Some(Duration::from_millis(500)),
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff_ns: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let stop_cell: Arc<Mutex<Option<shmbus::handler::AsyncStopper>>> = Arc::default();
    let sc = stop_cell.clone();
    let runner = AsyncHandlerRunner::new(
        &t.bus,
        &topic,
        move |m: OwnedMessage| {
            let (d, sc) = (d.clone(), sc.clone());
            async move {
                match m.data() {
                    b"hang" => {
                        let _g = DropGuard(d);
                        std::future::pending::<()>().await; // never finishes by itself
                        unreachable!()
                    }
                    b"panic" => panic!("async boom"),
                    _ => {
                        sc.lock().unwrap().as_ref().unwrap().stop();
                        Outcome::ack()
                    }
                }
            }
        },
        o,
    )
    .unwrap();
    *stop_cell.lock().unwrap() = Some(runner.stopper());
    let mut dlq = dlq_reader(&t, &format!("{topic}.dlq"));
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    p.offer(b"hang", 1, 0).unwrap();
    p.offer(b"panic", 2, 0).unwrap();
    p.offer(b"last", 3, 0).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(30), runner.run())
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "each hanging attempt's future dropped at its deadline"
    );
    assert_eq!(
        (
            stats.timeouts,
            stats.panics,
            stats.dead_lettered,
            stats.acked
        ),
        (2, 2, 2, 1)
    );
    assert_eq!(
        next_letter(&mut dlq),
        (
            "timeout: the attempt took 500.000 ms, the limit is 500.000 ms".to_string(),
            2,
            1
        )
    );
    assert_eq!(
        next_letter(&mut dlq),
        ("panic: async boom".to_string(), 2, 2)
    );
}

// The async runner with layers (C++/Go/Rust parity: the blocking runner's layers):
// a trace layer and a metrics layer see every attempt of the async handler, with
// the message's sequence and the outcome the runner got, a retry and a timed-out
// future included, in order.
#[tokio::test(flavor = "current_thread")]
async fn an_async_runner_runs_its_layers_around_every_attempt() {
    let t = TestBus::new("hasynclayers");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let s = seen.clone();
    let metrics = Arc::new(HandlerMetrics::default());
    let layers = HandlerBuilder::new()
        .layer(TraceLayer::named("async", move |r: &AttemptRecord<'_>| {
            s.lock()
                .unwrap()
                .push((r.sequence, format!("{:?} {}", r.outcome.kind, r.handler)))
        }))
        .layer(MetricsLayer::new(metrics.clone()));
    let tries = Arc::new(AtomicU64::new(0));
    let stop_cell: Arc<Mutex<Option<shmbus::handler::AsyncStopper>>> = Arc::default();
    let (tr, sc) = (tries.clone(), stop_cell.clone());
    let o = HandlerOptions {
        attempt_timeout: Some(Duration::from_millis(300)),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff_ns: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let runner = AsyncHandlerRunner::with_layers(
        &t.bus,
        &topic,
        move |m: OwnedMessage| {
            let (tr, sc) = (tr.clone(), sc.clone());
            async move {
                let i = u64_of(m.data());
                let n = tr.fetch_add(1, Ordering::SeqCst);
                if i == 2 && n == 1 {
                    return Outcome::retry("once", 0, None);
                }
                if i == 3 && n == 3 {
                    // never ready: dropped at the attempt's deadline
                    std::future::pending::<()>().await;
                }
                if i == 3 {
                    sc.lock().unwrap().as_ref().unwrap().stop();
                }
                Outcome::ack()
            }
        },
        layers,
        o,
    )
    .unwrap();
    *stop_cell.lock().unwrap() = Some(runner.stopper());
    // (after the runner subscribed: it starts at the tail)
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    for i in 1..=3u64 {
        p.offer(&i.to_le_bytes(), i, 0).unwrap();
    }
    let stats = match tokio::time::timeout(Duration::from_secs(60), runner.run()).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!(
            "not done within 60 s: tries {} seen {:?}",
            tries.load(Ordering::SeqCst),
            seen.lock().unwrap()
        ),
    };
    assert_eq!((stats.acked, stats.retries, stats.timeouts), (3, 2, 1));
    let seen = seen.lock().unwrap().clone();
    let seqs: Vec<u64> = seen.iter().map(|(q, _)| *q).collect();
    assert_eq!(seqs, vec![1, 2, 2, 3, 3], "{seen:?}");
    assert!(seen.iter().all(|(_, w)| w.ends_with(" async")), "{seen:?}");
    assert!(seen[1].1.starts_with("Retry"), "{seen:?}");
    assert!(
        seen[3].1.starts_with("Retry"),
        "the timed-out attempt: {seen:?}"
    );
    assert_eq!(metrics.attempts.load(Ordering::Relaxed), 5);
    assert_eq!(metrics.retries.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.acks.load(Ordering::Relaxed), 3);
}
