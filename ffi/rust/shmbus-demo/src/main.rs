//! `shmbus-demo-strategy`: the Rust strategy of the demo pipeline (tools/demo).
//!
//! ```text
//! shmbus-demo-strategy (--socket PATH | --prefix P) --quotes N [--in md.quotes] [--out orders.new]
//! ```
//! Reads Quote messages in place from the ring (a batch per call, no copy), and on
//! every quote whose book is imbalanced (bidQty >= 4 x askQty) buys at the ask: an
//! Order built in place on `orders.new`, carrying the quote's publish time (its
//! frame's commit timestamp) in `quoteTsNs` so that the gateway can measure the
//! pipeline end to end. Prints READY once subscribed and able to publish.
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use shmbus::market_capnp::{order, quote, Side};
use shmbus::{Bus, PublisherOptions, SubscriberOptions};

struct Args {
    socket: Option<String>,
    prefix: Option<String>,
    quotes: u64,
    topic_in: String,
    topic_out: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        socket: None,
        prefix: None,
        quotes: 0,
        topic_in: "md.quotes".into(),
        topic_out: "orders.new".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let mut val = || it.next().ok_or(format!("{f} needs a value"));
        match f.as_str() {
            "--socket" => a.socket = Some(val()?),
            "--prefix" => a.prefix = Some(val()?),
            "--quotes" => a.quotes = val()?.parse().map_err(|e| format!("--quotes: {e}"))?,
            "--in" => a.topic_in = val()?,
            "--out" => a.topic_out = val()?,
            _ => return Err(format!("unknown flag {f}")),
        }
    }
    if a.socket.is_some() == a.prefix.is_some() || a.quotes == 0 {
        return Err(
            "usage: shmbus-demo-strategy (--socket PATH | --prefix P) --quotes N \
                    [--in md.quotes] [--out orders.new]"
                .into(),
        );
    }
    Ok(a)
}

fn run(a: &Args) -> Result<(u64, u64), String> {
    let bus = match (&a.socket, &a.prefix) {
        (Some(s), _) => Bus::connect(Some(Path::new(s))),
        (_, Some(p)) => Bus::open_direct(p),
        _ => unreachable!(),
    }
    .map_err(|e| format!("bus: {e}"))?;
    let mut sub = bus
        .subscriber(
            &a.topic_in,
            &SubscriberOptions {
                spin: Duration::from_micros(50),
                ..Default::default()
            },
        )
        .map_err(|e| format!("subscriber: {e}"))?;
    let mut orders_pub = bus
        .publisher(
            &a.topic_out,
            &PublisherOptions {
                block_timeout: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .map_err(|e| format!("publisher: {e}"))?;
    println!("READY");
    let _ = std::io::stdout().flush();

    let (mut seen, mut orders) = (0u64, 0u64);
    while seen < a.quotes {
        let batch = sub
            .poll_batch(256, Some(Duration::from_secs(20)))
            .map_err(|e| format!("poll: {e}"))?;
        if batch.is_empty() {
            return Err(format!("no quote for 20 s after {seen}"));
        }
        for m in &batch {
            seen += 1;
            // In place: the reader's segment is the ring memory of the view.
            let r = m.reader().map_err(|e| format!("quote {seen}: {e}"))?;
            let q: quote::Reader = r.get_root().map_err(|e| format!("quote {seen}: {e}"))?;
            if q.get_seq() != seen {
                return Err(format!("quote seq {} where {seen} was due", q.get_seq()));
            }
            if q.get_bid_qty() < 4 * q.get_ask_qty() {
                continue;
            }
            orders += 1;
            let mut c = orders_pub
                .claim_message(128)
                .map_err(|e| format!("claim: {e}"))?;
            let mut o = c.init_root::<order::Builder>();
            o.set_order_id(orders);
            o.set_instrument_id(q.get_instrument_id());
            o.set_side(Side::Buy);
            o.set_px(q.get_ask_px());
            o.set_qty(q.get_ask_qty());
            o.set_quote_seq(q.get_seq());
            o.set_quote_ts_ns(m.timestamp_ns());
            o.set_account("demo-strategy");
            c.commit_as::<order::Reader>(orders)
                .map_err(|e| format!("commit: {e}"))?;
        }
        // Dropping the batch releases every quote in it with one cursor store.
    }
    Ok((seen, orders))
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    match run(&a) {
        Ok((seen, orders)) => {
            println!("read {seen} quotes in place, sent {orders} orders");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strategy: {e}");
            ExitCode::from(1)
        }
    }
}
