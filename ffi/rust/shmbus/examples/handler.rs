//! The handler runner (docs/bindings-rust.md, "Handler runner"): a handler with
//! layers over a topic; a flaky message is retried, a poison one dead-lettered to
//! `orders.dlq`, then read back. Runs without a daemon (a direct bus):
//! `cargo run -p shmbus --example handler`.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shmbus::envelope_capnp::dead_letter;
use shmbus::handler::{
    handler_fn, AttemptRecord, HandlerBuilder, RecoverLayer, TimeoutLayer, TraceLayer,
};
use shmbus::{Bus, HandlerOptions, HandlerRunner, Message, Outcome, RetryPolicy, TopicConfig};

fn main() -> shmbus::Result<()> {
    let bus = Bus::open_direct(&format!("example-handler-{}", std::process::id()))?;
    bus.create_topic(
        "orders",
        &TopicConfig {
            capacity: 1 << 16,
            ..TopicConfig::default()
        },
    )?;
    let mut dlq_sub = {
        // created here so that we can subscribe before the first dead letter
        let o = HandlerOptions::default();
        bus.create_topic("orders.dlq", &o.dlq_config)?;
        bus.subscriber("orders.dlq", &Default::default())?
    };

    let tries = Mutex::new(HashMap::<u64, u32>::new());
    let handler = HandlerBuilder::new()
        .layer(TraceLayer::new(|r: &AttemptRecord<'_>| {
            println!(
                "attempt: seq {} {:?} {:?} in {:?}",
                r.sequence, r.outcome.kind, r.outcome.message, r.elapsed
            )
        }))
        .layer(RecoverLayer)
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .handler(handler_fn(move |m: &Message<'_>| {
            let n = {
                let mut t = tries.lock().unwrap();
                let n = t.entry(m.sequence()).or_default();
                *n += 1;
                *n
            };
            match m.data() {
                b"flaky" if n < 3 => Outcome::retry("database busy", 503, None),
                b"poison" => Outcome::reject("cannot parse the order", 422),
                _ => Outcome::ack(),
            }
        }));
    let opts = HandlerOptions {
        name: "example".into(),
        retry: RetryPolicy {
            initial_backoff_ns: 100_000,
            ..RetryPolicy::default()
        },
        ..HandlerOptions::default()
    };
    let mut runner = HandlerRunner::new(&bus, "orders", handler, opts)?;

    let mut p = bus.publisher("orders", &Default::default())?;
    for (i, m) in [&b"ok"[..], b"flaky", b"poison", b"ok again"]
        .iter()
        .enumerate()
    {
        p.offer(m, 100 + i as u64, 0)?;
    }
    let mut finished = 0;
    while finished < 4 {
        if runner.step(Duration::from_secs(1), &|| false)? {
            finished += 1;
        }
    }
    println!(
        "stats: {:?}, breaker {:?}",
        runner.stats(),
        runner.breaker().state()
    );

    let v = dlq_sub
        .poll_wait(Some(Duration::from_secs(1)))?
        .expect("the dead letter");
    let r = v.reader()?;
    let d: dead_letter::Reader = r.get_root()?;
    println!(
        "dead letter: message id {} reason {:?} code {} {:?} after {} attempt(s), payload {:?}",
        v.message_id(),
        d.get_reason().map_err(capnp::Error::from)?,
        d.get_code(),
        d.get_message()?.to_str().unwrap_or("?"),
        d.get_attempts(),
        String::from_utf8_lossy(d.get_payload()?)
    );
    drop(v);
    drop(dlq_sub);
    drop(runner);
    drop(p);
    bus.remove_topic("orders.dlq")?;
    bus.remove_topic("orders")?;
    Ok(())
}
