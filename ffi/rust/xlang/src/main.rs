//! `xlang`: the Rust side of the cross-language scenario (docs/xlang-scenario.md).
//!
//! ```text
//! xlang consume --prefix P --topic T --count N --schema quote|order [--schema-version 1|2]
//!               [--timeout-ms 10000] [--start SEQ] [--allow-truncated]
//! xlang produce --prefix P --topic T --count N --schema quote|order [--schema-version 1|2]
//!               [--create] [--capacity BYTES] [--start SEQ] [--kill-self-after K]
//! xlang schema-open --socket S --topic T
//! ```
//! produce/consume take `--socket S` (through shmbusd instead of `--prefix`) and
//! `--present-schema` (present the compiled Quote/Order at open, for the schema registry).
//! `schema-open` opens a publisher and a subscriber presenting the compiled Quote and
//! prints `PUBLISHER ok|refused: <error>` and `SUBSCRIBER ok|refused: <error>`.
//! Durable topics: `consume --earliest` replays from the oldest message the log retains;
//! `produce --wait-durable` waits until the last message is durable.
//! Producers build every message in place (claim -> capnp builder on ring memory ->
//! commit_message); consumers read every message in place and check every field.
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use capnp::traits::HasTypeId;
use shmbus::market_capnp as v1;
use shmbus::{Bus, Error, Message, Policy, PublisherOptions, TopicConfig};

#[allow(clippy::all, clippy::pedantic, unused)]
mod market_v2_capnp {
    include!(concat!(env!("OUT_DIR"), "/market_v2_capnp.rs"));
}
use market_v2_capnp as v2;

const PX0: i64 = 10_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Schema {
    Quote,
    Order,
}

struct Args {
    cmd: String,
    prefix: String,
    topic: String,
    count: u64,
    schema: Schema,
    version: u32,
    timeout_ms: u64,
    create: bool,
    capacity: u64,
    start: u64,
    kill_self_after: Option<u64>,
    allow_truncated: bool,
    socket: String,
    present_schema: bool,
    earliest: bool,
    wait_durable: bool,
}

fn usage() -> String {
    "usage: xlang consume|produce --prefix P --topic T --count N --schema quote|order \
     [--schema-version 1|2] [--timeout-ms MS] [--create] [--capacity BYTES] [--start SEQ] \
     [--kill-self-after K] [--allow-truncated] [--socket S] [--present-schema] [--earliest] \
     [--wait-durable]\n\
     usage: xlang schema-open --socket S --topic T --schema quote"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or_else(usage)?;
    if cmd != "consume" && cmd != "produce" && cmd != "schema-open" {
        return Err(usage());
    }
    let mut a = Args {
        cmd,
        prefix: String::new(),
        topic: String::new(),
        count: 0,
        schema: Schema::Quote,
        version: 1,
        timeout_ms: 10_000,
        create: false,
        capacity: 4 << 20,
        start: 1,
        kill_self_after: None,
        allow_truncated: false,
        socket: String::new(),
        present_schema: false,
        earliest: false,
        wait_durable: false,
    };
    fn num(v: Option<String>, f: &str) -> Result<u64, String> {
        v.ok_or(format!("{f} needs a value"))?
            .parse()
            .map_err(|e| format!("{f}: {e}"))
    }
    while let Some(f) = it.next() {
        match f.as_str() {
            "--prefix" => a.prefix = it.next().ok_or("--prefix needs a value")?,
            "--topic" => a.topic = it.next().ok_or("--topic needs a value")?,
            "--count" => a.count = num(it.next(), &f)?,
            "--schema" => {
                a.schema = match it.next().as_deref() {
                    Some("quote") => Schema::Quote,
                    Some("order") => Schema::Order,
                    _ => return Err("--schema quote|order".into()),
                }
            }
            "--schema-version" => {
                a.version = num(it.next(), &f)? as u32;
                if a.version != 1 && a.version != 2 {
                    return Err("--schema-version 1|2".into());
                }
            }
            "--timeout-ms" => a.timeout_ms = num(it.next(), &f)?,
            "--create" => a.create = true,
            "--capacity" => a.capacity = num(it.next(), &f)?,
            "--start" => a.start = num(it.next(), &f)?,
            "--kill-self-after" => a.kill_self_after = Some(num(it.next(), &f)?),
            "--allow-truncated" => a.allow_truncated = true,
            "--socket" => a.socket = it.next().ok_or("--socket needs a value")?,
            "--present-schema" => a.present_schema = true,
            "--earliest" => a.earliest = true,
            "--wait-durable" => a.wait_durable = true,
            _ => return Err(format!("unknown flag {f}\n{}", usage())),
        }
    }
    if (a.prefix.is_empty() && a.socket.is_empty()) || a.topic.is_empty() {
        return Err(usage());
    }
    Ok(a)
}

fn topic_config(a: &Args) -> TopicConfig {
    TopicConfig {
        capacity: a.capacity,
        policy: Policy::Block,
        multi_producer: false,
        partitions: 1,
        ..TopicConfig::default()
    }
}

fn create_topic(bus: &Bus, a: &Args) -> Result<(), Error> {
    match bus.create_topic(&a.topic, &topic_config(a)) {
        // Created by the other side with other settings (e.g. a capacity): use it.
        Ok(()) | Err(Error::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

mod bench;
mod rr;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(cmd @ ("bench-consume" | "bench-produce")) = argv.get(1).map(String::as_str) {
        return bench::main(cmd, &argv[2..]); // bench.rs: bench/lang/run.sh
    }
    if let Some(cmd @ ("respond" | "request")) = argv.get(1).map(String::as_str) {
        return rr::main(cmd, &argv[2..]); // rr.rs: request/response through shmbusd
    }
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let r = if a.cmd == "schema-open" {
        schema_open(&a)
    } else if a.cmd == "consume" {
        consume(&a)
    } else {
        produce(&a)
    };
    match r {
        Ok(code) => code,
        Err(msg) => {
            println!("FAIL {msg}");
            ExitCode::from(1)
        }
    }
}

/// The bus: through shmbusd with `--socket`, else direct on `--prefix`.
fn open_bus(a: &Args) -> Result<Bus, String> {
    if a.socket.is_empty() {
        Bus::open_direct(&a.prefix).map_err(|e| format!("open bus: {e}"))
    } else {
        Bus::connect(Some(std::path::Path::new(&a.socket))).map_err(|e| format!("connect: {e}"))
    }
}

/// The compiled schema of the message this run sends or reads (`--present-schema`).
fn own_schema(a: &Args) -> Result<Option<shmbus::Schema>, String> {
    if !a.present_schema && a.cmd != "schema-open" {
        return Ok(None);
    }
    let s = match (a.schema, a.version) {
        (Schema::Quote, 1) => shmbus::Schema::of::<v1::quote::Owned>(),
        (Schema::Quote, _) => shmbus::Schema::of::<v2::quote::Owned>(),
        (Schema::Order, 1) => shmbus::Schema::of::<v1::order::Owned>(),
        (Schema::Order, _) => shmbus::Schema::of::<v2::order::Owned>(),
    };
    s.map(Some).map_err(|e| format!("schema: {e}"))
}

/// Opens a publisher and a subscriber presenting the compiled schema; prints what each did.
fn schema_open(a: &Args) -> Result<ExitCode, String> {
    let bus = open_bus(a)?;
    let opts = PublisherOptions {
        schema: own_schema(a)?,
        ..Default::default()
    };
    match bus.publisher(&a.topic, &opts) {
        Ok(_) => println!("PUBLISHER ok"),
        Err(e) => println!("PUBLISHER refused: {e}"),
    }
    let sopts = shmbus::SubscriberOptions {
        schema: own_schema(a)?,
        ..Default::default()
    };
    match bus.subscriber(&a.topic, &sopts) {
        Ok(_) => println!("SUBSCRIBER ok"),
        Err(e) => println!("SUBSCRIBER refused: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

// ---- producer ----------------------------------------------------------------

extern "C" {
    fn raise(sig: std::ffi::c_int) -> std::ffi::c_int;
}

fn produce(a: &Args) -> Result<ExitCode, String> {
    let bus = open_bus(a)?;
    if a.create {
        create_topic(&bus, a).map_err(|e| format!("create topic: {e}"))?;
    }
    let mut publisher = bus
        .publisher(
            &a.topic,
            &PublisherOptions {
                schema: own_schema(a)?,
                ..Default::default()
            },
        )
        .map_err(|e| format!("open publisher: {e}"))?;
    let mut fallbacks = 0u64;
    for k in 0..a.count {
        let i = a.start + k;
        let mut tries = 0;
        let mut m = loop {
            match publisher.claim_message(256) {
                Ok(m) => break m,
                Err(Error::BackPressured) if tries < 30 => tries += 1,
                Err(e) => return Err(format!("claim seq {i}: {e}")),
            }
        };
        let schema_id = match (a.schema, a.version) {
            (Schema::Quote, 1) => {
                let mut q = m.init_root::<v1::quote::Builder>();
                q.set_instrument_id((i % 1000) as u32);
                q.set_bid_px(PX0.wrapping_add(i as i64));
                q.set_ask_px(PX0.wrapping_add(i as i64).wrapping_add(100));
                q.set_bid_qty((i % 500 + 1) as u32);
                q.set_ask_qty((i % 700 + 1) as u32);
                q.set_exchange_ts_ns(i.wrapping_mul(1000));
                q.set_seq(i);
                v1::quote::Reader::TYPE_ID
            }
            (Schema::Quote, _) => {
                let mut q = m.init_root::<v2::quote::Builder>();
                q.set_instrument_id((i % 1000) as u32);
                q.set_bid_px(PX0.wrapping_add(i as i64));
                q.set_ask_px(PX0.wrapping_add(i as i64).wrapping_add(100));
                q.set_bid_qty((i % 500 + 1) as u32);
                q.set_ask_qty((i % 700 + 1) as u32);
                q.set_exchange_ts_ns(i.wrapping_mul(1000));
                q.set_seq(i);
                q.set_venue(if i % 2 == 0 { "XNAS" } else { "XNYS" });
                q.set_mid_px(PX0.wrapping_add(i as i64).wrapping_add(50));
                v2::quote::Reader::TYPE_ID
            }
            (Schema::Order, 1) => {
                let mut o = m.init_root::<v1::order::Builder>();
                o.set_order_id(i);
                o.set_instrument_id((i % 1000) as u32);
                o.set_side(if i % 2 == 0 {
                    v1::Side::Buy
                } else {
                    v1::Side::Sell
                });
                o.set_px(PX0.wrapping_add(i as i64));
                o.set_qty((i % 100 + 1) as u32);
                o.set_quote_seq(i);
                o.set_quote_ts_ns(i.wrapping_mul(7));
                o.set_account(account(i).as_str());
                v1::order::Reader::TYPE_ID
            }
            (Schema::Order, _) => {
                let mut o = m.init_root::<v2::order::Builder>();
                o.set_order_id(i);
                o.set_instrument_id((i % 1000) as u32);
                o.set_side(if i % 2 == 0 {
                    v2::Side::Buy
                } else {
                    v2::Side::Sell
                });
                o.set_px(PX0.wrapping_add(i as i64));
                o.set_qty((i % 100 + 1) as u32);
                o.set_quote_seq(i);
                o.set_quote_ts_ns(i.wrapping_mul(7));
                o.set_account(account(i).as_str());
                o.set_client_tag((i % 65536) as u32);
                v2::order::Reader::TYPE_ID
            }
        };
        let c = m
            .commit(i, schema_id)
            .map_err(|e| format!("commit seq {i}: {e}"))?;
        fallbacks += u64::from(c.fell_back);
        if a.kill_self_after == Some(k + 1) {
            let _ = std::io::stdout().flush();
            // SAFETY: raise(SIGKILL) is async-signal-safe and takes no pointers; the
            // process ends here, which is the point (a producer dying mid-stream).
            unsafe { raise(9) };
        }
    }
    if a.wait_durable {
        // One producer on a fresh topic: the partition's sequence is the message number.
        let last = a.start + a.count - 1;
        publisher
            .wait_durable(last, Some(Duration::from_secs(60)))
            .map_err(|e| format!("wait durable {last}: {e}"))?;
    }
    println!("OK produced={} fallbacks={fallbacks}", a.count);
    Ok(ExitCode::SUCCESS)
}

/// "acct-" + decimal(i % 10), without allocating.
struct Account([u8; 6]);
impl Account {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}
fn account(i: u64) -> Account {
    Account([b'a', b'c', b'c', b't', b'-', b'0' + (i % 10) as u8])
}

// ---- consumer ------------------------------------------------------------------

fn consume(a: &Args) -> Result<ExitCode, String> {
    let bus = open_bus(a)?;
    create_topic(&bus, a).map_err(|e| format!("create topic: {e}"))?;
    let mut sub = bus
        .subscriber(
            &a.topic,
            &shmbus::SubscriberOptions {
                schema: own_schema(a)?,
                start: if a.earliest {
                    shmbus::Start::Earliest
                } else {
                    shmbus::SubscriberOptions::default().start
                },
                ..Default::default()
            },
        )
        .map_err(|e| format!("open subscriber: {e}"))?;
    println!("READY");
    let _ = std::io::stdout().flush();

    let timeout = Duration::from_millis(a.timeout_ms);
    let mut received = 0u64;
    while received < a.count {
        let batch = sub
            .poll_batch(1024, Some(timeout))
            .map_err(|e| format!("poll: {e}"))?;
        if batch.is_empty() {
            if a.allow_truncated {
                println!("OK received={received}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("FAIL timeout received={received}");
            return Ok(ExitCode::from(2));
        }
        for m in &batch {
            if received == a.count {
                return Err(format!(
                    "more than {} messages (message_id {})",
                    a.count,
                    m.message_id()
                ));
            }
            let i = a.start + received;
            check(a, m, i).map_err(|e| format!("seq {i}: {e}"))?;
            received += 1;
        }
    }
    // Exactly N: anything further that is already there is a duplicate or extra.
    if let Some(v) = sub.poll().map_err(|e| format!("poll: {e}"))? {
        return Err(format!(
            "more than {} messages (message_id {})",
            a.count,
            v.message_id()
        ));
    }
    println!("OK received={received}");
    Ok(ExitCode::SUCCESS)
}

fn eq<T: PartialEq + std::fmt::Debug>(field: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{field} = {got:?}, want {want:?}"))
    }
}

fn check(a: &Args, m: Message<'_>, i: u64) -> Result<(), String> {
    eq("message_id", m.message_id(), i)?;
    let r = m.reader().map_err(|e| e.to_string())?;
    let s = |e: capnp::Error| e.to_string();
    let iu = i as i64;
    match a.schema {
        Schema::Quote => {
            let sid = m.schema_id();
            let from_v2 = if sid == v2::quote::Reader::TYPE_ID {
                true
            } else if sid == v1::quote::Reader::TYPE_ID {
                false
            } else {
                return Err(format!("schema_id {sid:#x} is not a Quote"));
            };
            // The v1 fields read the same through either version's reader.
            macro_rules! common {
                ($q:expr) => {{
                    let q = $q;
                    eq("seq", q.get_seq(), i)?;
                    eq("instrumentId", q.get_instrument_id(), (i % 1000) as u32)?;
                    eq("bidPx", q.get_bid_px(), PX0.wrapping_add(iu))?;
                    eq(
                        "askPx",
                        q.get_ask_px(),
                        PX0.wrapping_add(iu).wrapping_add(100),
                    )?;
                    eq("bidQty", q.get_bid_qty(), (i % 500 + 1) as u32)?;
                    eq("askQty", q.get_ask_qty(), (i % 700 + 1) as u32)?;
                    eq("exchangeTsNs", q.get_exchange_ts_ns(), i.wrapping_mul(1000))?;
                }};
            }
            if a.version == 1 {
                common!(r.get_root::<v1::quote::Reader>().map_err(s)?);
            } else {
                let q = r.get_root::<v2::quote::Reader>().map_err(s)?;
                common!(q);
                let venue = q
                    .get_venue()
                    .map_err(s)?
                    .to_str()
                    .map_err(|e| e.to_string())?;
                if from_v2 {
                    eq("venue", venue, if i % 2 == 0 { "XNAS" } else { "XNYS" })?;
                    eq(
                        "midPx",
                        q.get_mid_px(),
                        PX0.wrapping_add(iu).wrapping_add(50),
                    )?;
                } else {
                    eq("venue (default)", venue, "")?;
                    eq("midPx (default)", q.get_mid_px(), 0)?;
                }
            }
        }
        Schema::Order => {
            let sid = m.schema_id();
            let from_v2 = if sid == v2::order::Reader::TYPE_ID {
                true
            } else if sid == v1::order::Reader::TYPE_ID {
                false
            } else {
                return Err(format!("schema_id {sid:#x} is not an Order"));
            };
            macro_rules! common {
                ($o:expr, $side:ty) => {{
                    let o = $o;
                    eq("orderId", o.get_order_id(), i)?;
                    eq("instrumentId", o.get_instrument_id(), (i % 1000) as u32)?;
                    let side = o.get_side().map_err(|e| format!("side: {e:?}"))?;
                    eq(
                        "side",
                        side,
                        if i % 2 == 0 {
                            <$side>::Buy
                        } else {
                            <$side>::Sell
                        },
                    )?;
                    eq("px", o.get_px(), PX0.wrapping_add(iu))?;
                    eq("qty", o.get_qty(), (i % 100 + 1) as u32)?;
                    eq("quoteSeq", o.get_quote_seq(), i)?;
                    eq("quoteTsNs", o.get_quote_ts_ns(), i.wrapping_mul(7))?;
                    let acct = o
                        .get_account()
                        .map_err(s)?
                        .to_str()
                        .map_err(|e| e.to_string())?;
                    eq("account", acct, account(i).as_str())?;
                    o
                }};
            }
            if a.version == 1 {
                common!(r.get_root::<v1::order::Reader>().map_err(s)?, v1::Side);
            } else {
                let o = common!(r.get_root::<v2::order::Reader>().map_err(s)?, v2::Side);
                let want = if from_v2 { (i % 65536) as u32 } else { 0 };
                eq("clientTag", o.get_client_tag(), want)?;
            }
        }
    }
    Ok(())
}
