//! Bench modes of xlang, for the language-pair benchmark (bench/lang/run.sh); the
//! same flags and JSON output as bench/lang/lang_bench.cpp and the Go xlang:
//!
//! ```text
//! xlang bench-consume --prefix P --topic T --count N [--latency] [--lat-dump FILE] [--capacity BYTES]
//! xlang bench-produce --prefix P --topic T --count N [--rate R [--pauses FILE]] [--batch K | --inplace-batch K]
//! ```
//! --lat-dump and --pauses write the files of bench/lang/pauses.py (the format is in
//! lang_bench.cpp's header).
//! The consumer polls batches (one call per batch, one release per batch) and reads
//! every Quote in place; the producer builds every 64-byte Quote in its claim, or,
//! with --batch K, in one reused message in its own memory, copied into a packed
//! buffer published K messages per call (`offer_packed`), or, with --inplace-batch K,
//! in its frame of a K-frame claim (`claim_batch`, `ClaimBatch::init_root` per frame,
//! one `commit_messages` per K: no copy; paced runs: K = 1, each message at once).
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use shmbus::market_capnp::quote;
use shmbus::{Bus, Error, PublisherOptions, SubscriberOptions, TopicConfig, WaitStrategy};

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}
extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}
const CLOCK_MONOTONIC: i32 = 1;

/// CLOCK_MONOTONIC in ns: the clock of the frame timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec (x86_64/aarch64 Linux layout: two
    // 64-bit fields); CLOCK_MONOTONIC always exists.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Cfg {
    prefix: String,
    topic: String,
    count: u64,
    rate: u64,
    capacity: u64,
    latency: bool,
    lat_dump: Option<String>,
    pauses: Option<String>,
    batch: usize,
    inplace: usize,
}

fn parse(args: &[String]) -> Result<Cfg, String> {
    let mut c = Cfg {
        prefix: String::new(),
        topic: String::new(),
        count: 0,
        rate: 0,
        capacity: 1 << 20,
        latency: false,
        lat_dump: None,
        pauses: None,
        batch: 0,
        inplace: 0,
    };
    let mut it = args.iter();
    while let Some(f) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{f} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{f}: {e}"));
        match f.as_str() {
            "--prefix" => c.prefix = val()?,
            "--topic" => c.topic = val()?,
            "--count" => c.count = num(val()?)?,
            "--rate" => c.rate = num(val()?)?,
            "--capacity" => c.capacity = num(val()?)?,
            "--latency" => c.latency = true,
            "--lat-dump" => c.lat_dump = Some(val()?),
            "--pauses" => c.pauses = Some(val()?),
            "--batch" => c.batch = num(val()?)? as usize,
            "--inplace-batch" => c.inplace = num(val()?)? as usize,
            _ => return Err(format!("unknown flag {f}")),
        }
    }
    if c.prefix.is_empty() || c.topic.is_empty() || c.count == 0 {
        return Err(
            "usage: xlang bench-consume|bench-produce --prefix P --topic T --count N \
                    [--latency] [--lat-dump FILE] [--rate R] [--pauses FILE] [--capacity BYTES] \
                    [--batch K | --inplace-batch K]"
                .into(),
        );
    }
    Ok(c)
}

pub fn main(cmd: &str, args: &[String]) -> ExitCode {
    let c = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let r = if cmd == "bench-consume" {
        consume(&c)
    } else {
        produce(&c)
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{cmd}: {e}");
            ExitCode::from(1)
        }
    }
}

fn consume(c: &Cfg) -> Result<(), String> {
    let bus = Bus::open_direct(&c.prefix).map_err(|e| e.to_string())?;
    let cfg = TopicConfig {
        capacity: c.capacity,
        ..TopicConfig::default()
    };
    match bus.create_topic(&c.topic, &cfg) {
        Ok(()) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let opts = SubscriberOptions {
        wait: WaitStrategy::BusySpin,
        ..Default::default()
    };
    let mut sub = bus.subscriber(&c.topic, &opts).map_err(|e| e.to_string())?;
    println!("READY");
    let _ = std::io::stdout().flush();

    let mut lat: Vec<u64> = Vec::with_capacity(if c.latency { c.count as usize } else { 0 });
    // (commit, receive) of every message, for --lat-dump
    let mut dump: Vec<[u64; 2]> = Vec::with_capacity(if c.lat_dump.is_some() {
        c.count as usize
    } else {
        0
    });
    let (mut got, mut errors, mut bytes, mut t_first, mut t_last) =
        (0u64, 0u64, 0usize, 0u64, 0u64);
    while got < c.count {
        let batch = sub
            .poll_batch(256, Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Err(format!("nothing for 30 s after {got}"));
        }
        for m in &batch {
            let ok = m
                .reader()
                .ok()
                .and_then(|r| {
                    r.get_root::<quote::Reader>()
                        .ok()
                        .map(|q| q.get_seq() == got + 1)
                })
                .unwrap_or(false);
            errors += u64::from(!ok);
            got += 1;
            if c.latency || c.lat_dump.is_some() {
                let now = monotonic_ns();
                if c.latency {
                    lat.push(now.wrapping_sub(m.timestamp_ns()));
                }
                if c.lat_dump.is_some() {
                    dump.push([m.timestamp_ns(), now]);
                }
            }
            if got == 1 {
                bytes = m.len();
            }
        }
        drop(batch); // releases the whole batch
        let now = monotonic_ns();
        if t_first == 0 {
            t_first = now;
        }
        t_last = now;
    }
    let secs = (t_last - t_first) as f64 / 1e9;
    let mps = if secs > 0.0 {
        (got - 1) as f64 / secs
    } else {
        0.0
    };
    if let Some(path) = &c.lat_dump {
        write_pairs(path, &dump)?;
    }
    let (mut p50, mut p99, mut p999, mut mx) = (0, 0, 0, 0);
    if !lat.is_empty() {
        lat.sort_unstable();
        let at = |q: f64| lat[(q * (lat.len() - 1) as f64) as usize];
        (p50, p99, p999, mx) = (at(0.5), at(0.99), at(0.999), lat[lat.len() - 1]);
    }
    println!(
        "{{\"lang\":\"rust\",\"role\":\"consumer\",\"received\":{got},\"errors\":{errors},\"bytes\":{bytes},\
         \"mps\":{mps:.0},\"ns_per_msg\":{:.2},\"p50_ns\":{p50},\"p99_ns\":{p99},\"p999_ns\":{p999},\"max_ns\":{mx}}}",
        if mps > 0.0 { 1e9 / mps } else { 0.0 }
    );
    if errors != 0 {
        return Err(format!("{errors} bad messages"));
    }
    Ok(())
}

fn produce(c: &Cfg) -> Result<(), String> {
    let bus = Bus::open_direct(&c.prefix).map_err(|e| e.to_string())?;
    let opts = PublisherOptions {
        wait: WaitStrategy::BusySpin,
        block_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let mut publisher = bus.publisher(&c.topic, &opts).map_err(|e| e.to_string())?;
    let mut pace = Pacer::new(1_000_000_000u64.checked_div(c.rate).unwrap_or(0));
    if c.batch > 0 {
        produce_packed(c, &mut publisher, &mut pace)?;
    } else if c.inplace > 0 {
        produce_inplace_batch(c, &mut publisher, &mut pace)?;
    } else {
        produce_in_place(c, &mut publisher, &mut pace)?;
    }
    match &c.pauses {
        Some(path) => write_pairs(path, &pace.pauses),
        None => Ok(()),
    }
}

/// Waits for each message's send time (`gap` apart) and records, as (start, end),
/// every gap longer than `PAUSE_NS` between two of its consecutive clock reads:
/// time the producer's core did not run it (--pauses).
struct Pacer {
    gap: u64,
    next: u64,
    last: u64,
    pauses: Vec<[u64; 2]>,
}

const PAUSE_NS: u64 = 2000;

impl Pacer {
    fn new(gap: u64) -> Pacer {
        Pacer {
            gap,
            next: 0,
            last: 0,
            pauses: Vec::with_capacity(1 << 16),
        }
    }

    fn start(&mut self, t0: u64) {
        self.next = t0;
        self.last = t0;
    }

    /// Spins until the next send time, reading the clock at least once.
    fn wait(&mut self) {
        loop {
            let t = monotonic_ns();
            if t - self.last > PAUSE_NS {
                self.pauses.push([self.last, t]);
            }
            self.last = t;
            if t >= self.next {
                break;
            }
            std::hint::spin_loop();
        }
        self.next += self.gap;
    }
}

/// Writes (a, b) pairs as little-endian u64, the format of --lat-dump and --pauses.
fn write_pairs(path: &str, v: &[[u64; 2]]) -> Result<(), String> {
    let b: Vec<u8> = v
        .iter()
        .flat_map(|p| p[0].to_le_bytes().into_iter().chain(p[1].to_le_bytes()))
        .collect();
    std::fs::write(path, b).map_err(|e| format!("{path}: {e}"))
}

/// bench-produce without --batch or --inplace-batch: claim 64 B, build, commit.
fn produce_in_place(
    c: &Cfg,
    publisher: &mut shmbus::Publisher,
    pace: &mut Pacer,
) -> Result<(), String> {
    let t0 = monotonic_ns();
    pace.start(t0);
    let mut fallbacks = 0u64;
    for i in 1..=c.count {
        if pace.gap > 0 {
            pace.wait();
        }
        let mut m = publisher
            .claim_message(64)
            .map_err(|e| format!("claim {i}: {e}"))?;
        fill_quote(m.init_root::<quote::Builder>(), i);
        let done = m
            .commit_as::<quote::Reader>(i)
            .map_err(|e| format!("commit {i}: {e}"))?;
        fallbacks += u64::from(done.fell_back);
    }
    report_produced(c.count, t0, fallbacks);
    Ok(())
}

/// bench-produce --batch: one Quote message in the producer's own memory, reused
/// (its fields set for each message), copied in its flat form (segment table +
/// segment, what a committed claim holds) into a packed buffer of up to `c.batch`
/// messages, published with one `offer_packed` call.
fn produce_packed(
    c: &Cfg,
    publisher: &mut shmbus::Publisher,
    pace: &mut Pacer,
) -> Result<(), String> {
    let mut msg = capnp::message::Builder::new_default();
    msg.init_root::<quote::Builder>();
    let seg_len = msg.get_segments_for_output()[0].len();
    let size = 8 + seg_len;
    let mut buf = vec![0u8; size * c.batch];
    let lens = vec![size as u32; c.batch];
    for k in 0..c.batch {
        buf[k * size + 4..k * size + 8].copy_from_slice(&((seg_len / 8) as u32).to_le_bytes());
    }
    let t0 = monotonic_ns();
    pace.start(t0);
    let mut k = 0usize;
    for i in 1..=c.count {
        if pace.gap > 0 {
            pace.wait();
        }
        fill_quote(
            msg.get_root::<quote::Builder>()
                .map_err(|e| e.to_string())?,
            i,
        );
        let seg = &msg.get_segments_for_output()[0];
        buf[k * size + 8..(k + 1) * size].copy_from_slice(seg);
        k += 1;
        // Paced runs publish at once (the latency mode measures each message).
        if k == c.batch || i == c.count || pace.gap > 0 {
            // offer_packed waits for space (busy spin, 30 s bound) like a claim.
            let (_, r) = publisher.offer_packed(&buf[..k * size], &lens[..k]);
            r.map_err(|e| format!("offer up to {i}: {e}"))?;
            k = 0;
        }
    }
    report_produced(c.count, t0, 0);
    Ok(())
}

/// bench-produce --inplace-batch: `c.inplace` frames of 64 bytes claimed as one ring
/// claim (`claim_batch`), each Quote built in its frame's ring memory
/// (`ClaimBatch::init_root`), all of them published by one `commit_messages`.
fn produce_inplace_batch(
    c: &Cfg,
    publisher: &mut shmbus::Publisher,
    pace: &mut Pacer,
) -> Result<(), String> {
    // Paced runs publish at once (the latency mode measures each message).
    let n = if pace.gap > 0 { 1 } else { c.inplace };
    let mut ids = vec![0u64; n];
    let t0 = monotonic_ns();
    pace.start(t0);
    let mut i = 1u64;
    while i <= c.count {
        let k = n.min((c.count - i + 1) as usize);
        if pace.gap > 0 {
            pace.wait();
        }
        // claim_batch waits for space (busy spin, 30 s bound) like a claim.
        let mut b = publisher
            .claim_batch(k, 64)
            .map_err(|e| format!("claim batch at {i}: {e}"))?;
        for (f, id) in ids[..k].iter_mut().enumerate() {
            fill_quote(b.init_root::<quote::Builder>(f), i);
            *id = i;
            i += 1;
        }
        b.commit_messages_as::<quote::Reader>(k, Some(&ids[..k]))
            .map_err(|e| format!("commit up to {}: {e}", i - 1))?;
    }
    report_produced(c.count, t0, 0);
    Ok(())
}

/// The benchmark's Quote number `i` (every producer mode writes the same fields).
fn fill_quote(mut q: quote::Builder<'_>, i: u64) {
    q.set_instrument_id((i % 1000) as u32);
    q.set_bid_px(10_000_000_000 + i as i64);
    q.set_ask_px(10_000_000_100 + i as i64);
    q.set_bid_qty((i % 500 + 1) as u32);
    q.set_ask_qty((i % 700 + 1) as u32);
    q.set_exchange_ts_ns(i);
    q.set_seq(i);
}

/// The producer's result line (JSON, read by bench/lang/run.sh): `count` messages
/// published since `t0`, `fallbacks` of them copied after outgrowing their claim.
fn report_produced(count: u64, t0: u64, fallbacks: u64) {
    let secs = (monotonic_ns() - t0) as f64 / 1e9;
    println!(
        "{{\"lang\":\"rust\",\"role\":\"producer\",\"published\":{count},\"mps\":{:.0},\"fallbacks\":{fallbacks}}}",
        count as f64 / secs
    );
}
