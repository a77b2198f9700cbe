//! The handler runner's metrics and trace layers against C++'s and Go's
//! (docs/messaging.md, "Handler runner (Rust)"): the JSON line of an attempt key for
//! key (C++ `layers::json_lines`, Go `JSONLines`), the span of an attempt's own under
//! the envelope's trace context, and the metrics counts and log2 duration histogram
//! under an injected clock.
mod common;

use std::io::Write;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestBus;
use shmbus::handler::{
    handler_fn, json_lines, AttemptRecord, ClockFn, HandlerBuilder, HandlerMetrics, MetricsLayer,
    TraceLayer,
};
use shmbus::{
    BreakerPolicy, Envelope, HandlerOptions, HandlerRunner, Message, Outcome, Policy, RetryPolicy,
    TraceContext,
};

fn never() -> bool {
    false
}

/// A writer into a shared buffer (what `json_lines` writes is read back).
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .split_inclusive('\n')
            .map(str::to_string)
            .collect()
    }
}

/// The runner's clock and sleep, injected (a sleep advances the clock).
fn fake_time(o: &mut HandlerOptions) {
    let now = Arc::new(AtomicI64::new(1_000_000_000));
    let n = now.clone();
    o.clock = Some(Arc::new(move || n.load(Ordering::SeqCst)));
    o.sleep = Some(Arc::new(move |ns| {
        now.fetch_add(ns, Ordering::SeqCst);
    }));
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[test]
fn json_line_of_a_record_is_the_cxx_line() {
    // The example line of docs/messaging.md "Trace and logs", field for field.
    let parent =
        TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    let mut span = parent.clone();
    span.parent_id = 0x75de_cb0c_9b8e_9d69;
    let ack = Outcome::ack();
    let mut r = AttemptRecord {
        handler: "billing",
        sequence: 1,
        message_id: 0x1111,
        producer_id: 26135,
        correlation_id: 0xabcd_ef01_2345_6789,
        causation_id: 0x42,
        trace: Some(parent),
        span,
        outcome: &ack,
        duration_ns: 2034,
        elapsed: Duration::from_nanos(2034),
    };
    assert_eq!(
        r.json_line(),
        concat!(
            r#"{"event":"attempt","handler":"billing","message_id":"0000000000001111","sequence":1,"#,
            r#""producer_id":26135,"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"75decb0c9b8e9d69","#,
            r#""parent_span_id":"b7ad6b7169203331","correlation_id":"abcdef0123456789","#,
            r#""causation_id":"0000000000000042","outcome":"ack","code":0,"duration_ns":2034}"#,
            "\n"
        )
    );
    // no parent, no correlation or causation: the keys are left out; a reject's code;
    // the name's quote and backslash escaped, its control characters dropped
    let rej = Outcome::reject("no", 422);
    r.trace = None;
    r.correlation_id = 0;
    r.causation_id = 0;
    r.outcome = &rej;
    r.handler = "a\"b\\c\n\td\u{7}é";
    r.message_id = u64::MAX;
    r.sequence = u64::MAX;
    r.producer_id = u32::MAX;
    r.duration_ns = 0;
    assert_eq!(
        r.json_line(),
        concat!(
            r#"{"event":"attempt","handler":"a\"b\\cdé","message_id":"ffffffffffffffff","#,
            r#""sequence":18446744073709551615,"producer_id":4294967295,"#,
            r#""trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"75decb0c9b8e9d69","#,
            r#""outcome":"reject","code":422,"duration_ns":0}"#,
            "\n"
        )
    );
    let retry = Outcome::retry("busy", 503, None);
    r.outcome = &retry;
    assert!(r.json_line().contains(r#""outcome":"retry","code":503,"#));
    let line = r.json_line();
    let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    assert_eq!(v["handler"], "a\"b\\cdé");
}

#[test]
fn trace_layer_logs_each_attempt_with_a_span_of_its_own() {
    let t = TestBus::new("hlayers-trace");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let mut o = HandlerOptions {
        name: "billing".into(),
        ..Default::default()
    };
    fake_time(&mut o);
    let out = Buf::default();
    // The layer's clock: each reading 2034 ns after the previous one, so an attempt
    // (two readings) takes 2034 ns.
    let tick = Arc::new(AtomicI64::new(0));
    let clock: ClockFn = Arc::new(move || tick.fetch_add(2034, Ordering::SeqCst));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let h = HandlerBuilder::new()
        .layer(TraceLayer::named("billing", json_lines(out.clone())).with_clock(clock))
        .handler(handler_fn(move |_m: &Message<'_>| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Outcome::retry("busy", 503, None)
            } else {
                Outcome::ack()
            }
        }));
    let mut r = HandlerRunner::new(&t.bus, &topic, h, o).unwrap();
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    let parent =
        TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    let env = Envelope {
        correlation_id: 0xabcd_ef01_2345_6789,
        causation_id: 0x42,
        trace: parent.clone(),
        ..Default::default()
    };
    p.offer_enveloped(&env, b"order", 0x1111).unwrap();
    p.offer(b"plain", 0x2222, 0).unwrap();
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let lines = out.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let field = |l: &str, k: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(l).expect("valid JSON");
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {l}"))
            .to_string()
    };
    // the producer id is the bus's; the span ids are random: read, checked, put in
    let pid = {
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        v["producer_id"].as_u64().unwrap()
    };
    assert_ne!(pid, 0);
    let mut spans = Vec::new();
    for l in &lines {
        let s = field(l, "span_id");
        assert!(is_hex(&s, 16) && s != "0000000000000000", "span id {s}");
        assert_ne!(
            s, "b7ad6b7169203331",
            "the attempt's own span, not the parent's"
        );
        spans.push(s);
    }
    assert_ne!(spans[0], spans[1], "a span per attempt");
    for (k, outcome, code) in [(0, "retry", 503), (1, "ack", 0)] {
        assert_eq!(
            lines[k],
            format!(
                concat!(
                    r#"{{"event":"attempt","handler":"billing","message_id":"0000000000001111","sequence":1,"#,
                    r#""producer_id":{},"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"{}","#,
                    r#""parent_span_id":"b7ad6b7169203331","correlation_id":"abcdef0123456789","#,
                    r#""causation_id":"0000000000000042","outcome":"{}","code":{},"duration_ns":2034}}"#,
                    "\n"
                ),
                pid, spans[k], outcome, code
            ),
            "attempt {k}"
        );
    }
    // no envelope: a fresh trace, no parent, no correlation
    let trace_id = field(&lines[2], "trace_id");
    assert!(is_hex(&trace_id, 32) && trace_id != "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        lines[2],
        format!(
            concat!(
                r#"{{"event":"attempt","handler":"billing","message_id":"0000000000002222","sequence":2,"#,
                r#""producer_id":{},"trace_id":"{}","span_id":"{}","#,
                r#""outcome":"ack","code":0,"duration_ns":2034}}"#,
                "\n"
            ),
            pid, trace_id, spans[2]
        )
    );
}

#[test]
fn trace_layer_reports_a_panic_as_a_retry() {
    let t = TestBus::new("hlayers-panic");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let mut o = HandlerOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    fake_time(&mut o);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let metrics = Arc::new(HandlerMetrics::default());
    let h = HandlerBuilder::new()
        .layer(TraceLayer::new(move |r: &AttemptRecord<'_>| {
            s.lock()
                .unwrap()
                .push((r.handler.to_string(), r.outcome.clone()))
        }))
        .layer(MetricsLayer::new(metrics.clone()))
        .handler(handler_fn(|_m: &Message<'_>| panic!("boom")));
    let mut r = HandlerRunner::new(&t.bus, &topic, h, o).unwrap();
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    p.offer(b"x", 9, 0).unwrap();
    assert!(r.step(Duration::from_secs(5), &never).unwrap());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                "handler".to_string(),
                Outcome::retry("panic: boom", 0, None)
            ),
            (
                "handler".to_string(),
                Outcome::retry("panic: boom", 0, None)
            ),
        ]
    );
    // the panic went on to the runner: it counted it and dead-lettered the message
    assert_eq!((r.stats().panics, r.stats().dead_lettered), (2, 1));
    assert_eq!(metrics.attempts.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.retries.load(Ordering::Relaxed), 2);
}

#[test]
fn metrics_bucket_is_floor_log2() {
    let b = HandlerMetrics::bucket;
    assert_eq!(HandlerMetrics::BUCKETS, 40);
    let cases = [
        (i64::MIN, 0),
        (-5, 0),
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 1),
        (4, 2),
        (1023, 9),
        (1024, 10),
        ((1 << 39) - 1, 38),
        (1 << 39, 39),
        (1 << 40, 39),
        (i64::MAX, 39),
    ];
    for (ns, want) in cases {
        assert_eq!(b(ns), want, "bucket of {ns}");
    }
}

#[test]
fn metrics_layer_counts_outcomes_and_durations() {
    let t = TestBus::new("hlayers-metrics");
    let topic = t.topic("t", 1 << 16, Policy::Block);
    let mut o = HandlerOptions {
        retry: RetryPolicy {
            max_attempts: 10,
            ..Default::default()
        },
        breaker: BreakerPolicy {
            failure_threshold: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    fake_time(&mut o);
    // The layer's clock is advanced by the handler: an attempt takes what it says.
    let now = Arc::new(AtomicI64::new(5_000));
    let n = now.clone();
    let clock: ClockFn = Arc::new(move || n.load(Ordering::SeqCst));
    // (duration, what the attempt says), call by call: messages 1 (retry, retry,
    // ack), 2 (reject), 3 (panic, ack), 4 (ack).
    #[derive(Clone, Copy)]
    enum Say {
        Ack,
        Retry,
        Reject,
        Panic,
    }
    let script: Vec<(i64, Say)> = vec![
        (0, Say::Retry),
        (1, Say::Retry),
        (2, Say::Ack),
        (3, Say::Reject),
        (1023, Say::Panic),
        (1024, Say::Ack),
        (1 << 45, Say::Ack),
    ];
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let sc = script.clone();
    let metrics = Arc::new(HandlerMetrics::default());
    let h = HandlerBuilder::new()
        .layer(MetricsLayer::new(metrics.clone()).with_clock(clock))
        .handler(handler_fn(move |_m: &Message<'_>| {
            let (d, say) = sc[c.fetch_add(1, Ordering::SeqCst)];
            now.fetch_add(d, Ordering::SeqCst);
            match say {
                Say::Ack => Outcome::ack(),
                Say::Retry => Outcome::retry("busy", 503, None),
                Say::Reject => Outcome::reject("bad", 400),
                Say::Panic => panic!("boom"),
            }
        }));
    let mut r = HandlerRunner::new(&t.bus, &topic, h, o).unwrap();
    let mut p = t.bus.publisher(&topic, &Default::default()).unwrap();
    for id in 1..=4u64 {
        p.offer(b"m", id, 0).unwrap();
    }
    for _ in 0..4 {
        assert!(r.step(Duration::from_secs(5), &never).unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), script.len());
    let m = &metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(
        (
            get(&m.attempts),
            get(&m.acks),
            get(&m.retries),
            get(&m.rejects)
        ),
        (7, 3, 3, 1),
        "attempts, acks, retries (the panic one), rejects"
    );
    assert_eq!(r.stats().attempts, 7);
    let mut want = [0u64; HandlerMetrics::BUCKETS];
    want[0] = 2; // 0 and 1 ns
    want[1] = 2; // 2 and 3 ns
    want[9] = 1; // 1023
    want[10] = 1; // 1024
    want[39] = 1; // 2^45: the last bucket
    let got: Vec<u64> = m.duration_log2_ns.iter().map(get).collect();
    assert_eq!(got, want.to_vec());
    assert_eq!(
        get(&m.duration_sum_ns),
        (1 + 2 + 3 + 1023 + 1024 + (1i64 << 45)) as u64
    );
}
