//! Request/response through shmbusd (docs/xlang-scenario.md, "Request/response"), the
//! same exchange in every language:
//!
//! ```text
//! xlang respond --socket S --topic T --count N [--kill-self-before-reply K]
//! xlang request --socket S --topic T --count N [--from F] [--timeout-ms MS] [--expect-timeout-at K]
//! ```
use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shmbus::{Bus, Error, RequesterOptions, Response, SubscriberOptions, TopicConfig};

const REQ_SCHEMA0: u64 = 0x1000;
const REPLY_SCHEMA_DELTA: u64 = 0x10000;

fn request_payload(i: u64) -> Vec<u8> {
    (0..(i * 37) % 1500)
        .map(|j| ((i * 131 + j * 7 + 3) & 0xff) as u8)
        .collect()
}

fn reply_payload(req: &[u8], corr: u64) -> Vec<u8> {
    let mut p: Vec<u8> = req.iter().map(|b| b ^ 0xa5).collect();
    p.extend_from_slice(&corr.to_le_bytes());
    p
}

fn reply_status(i: u64) -> u32 {
    200 + (i % 100) as u32
}

struct Cfg {
    socket: String,
    topic: String,
    count: u64,
    from: u64,
    kill_before: u64,
    expect_timeout_at: u64,
    timeout: Duration,
}

fn parse(args: &[String]) -> Result<Cfg, String> {
    let mut c = Cfg {
        socket: String::new(),
        topic: String::new(),
        count: 0,
        from: 0,
        kill_before: 0,
        expect_timeout_at: u64::MAX,
        timeout: Duration::from_secs(10),
    };
    let mut it = args.iter();
    while let Some(f) = it.next() {
        let v = it.next().ok_or(format!("{f} needs a value"))?;
        let num = || v.parse::<u64>().map_err(|e| format!("{f}: {e}"));
        match f.as_str() {
            "--socket" => c.socket = v.clone(),
            "--topic" => c.topic = v.clone(),
            "--count" => c.count = num()?,
            "--from" => c.from = num()?,
            "--kill-self-before-reply" => c.kill_before = num()?,
            "--expect-timeout-at" => c.expect_timeout_at = num()?,
            "--timeout-ms" => c.timeout = Duration::from_millis(num()?),
            _ => return Err(format!("unknown flag {f}")),
        }
    }
    if c.socket.is_empty() || c.topic.is_empty() {
        return Err("need --socket and --topic".into());
    }
    Ok(c)
}

/// `respond` or `request`: the exit code.
pub fn main(cmd: &str, args: &[String]) -> ExitCode {
    let c = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let r = Bus::connect(Some(Path::new(&c.socket)))
        .map_err(|e| format!("connect: {e}"))
        .and_then(|bus| {
            if cmd == "respond" {
                respond(&bus, &c)
            } else {
                request(&bus, &c)
            }
        });
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            println!("FAIL {msg}");
            ExitCode::from(1)
        }
    }
}

fn respond(bus: &Bus, c: &Cfg) -> Result<String, String> {
    let cfg = TopicConfig {
        capacity: 1 << 20,
        multi_producer: true,
        ..TopicConfig::default()
    };
    match bus.create_topic(&c.topic, &cfg) {
        Ok(()) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(format!("create: {e}")),
    }
    let mut resp = bus
        .responder(&c.topic, &SubscriberOptions::default())
        .map_err(|e| format!("responder: {e}"))?;
    println!("READY");
    let (mut taken, mut answered) = (0u64, 0u64);
    let deadline = Instant::now() + c.timeout * 10;
    while answered < c.count {
        if Instant::now() > deadline {
            return Err(format!("only {answered} requests came"));
        }
        let Some(q) = resp
            .next(Some(Duration::from_millis(100)))
            .map_err(|e| format!("next: {e}"))?
        else {
            continue;
        };
        taken += 1;
        if taken == c.kill_before {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // SAFETY: raise(SIGKILL) takes no pointers; the process ends here, holding
            // the request before any reply, which is the point.
            unsafe { crate::raise(9) };
        }
        let s = q.schema_id();
        let i = s.wrapping_sub(REQ_SCHEMA0);
        let e = q.envelope().clone();
        if !q.is_enveloped()
            || e.correlation_id == 0
            || !e.reply_to.starts_with("reply.")
            || s < REQ_SCHEMA0
            || q.payload() != request_payload(i)
        {
            return Err(format!("request {i} is not what was specified"));
        }
        let out = Response {
            payload: reply_payload(q.payload(), e.correlation_id),
            schema_id: s + REPLY_SCHEMA_DELTA,
            status: reply_status(i),
            no_reply: false,
        };
        q.reply(&out).map_err(|e| format!("reply {i}: {e}"))?;
        answered += 1;
    }
    Ok(format!(
        "OK answered={answered} replied={}",
        resp.stats().replied
    ))
}

fn request(bus: &Bus, c: &Cfg) -> Result<String, String> {
    let mut req = bus
        .requester(&RequesterOptions::default())
        .map_err(|e| format!("requester: {e}"))?;
    let (mut replies, mut timeouts) = (0u64, 0u64);
    let stdin = std::io::stdin();
    for i in c.from..c.from + c.count {
        let p = request_payload(i);
        let t0 = Instant::now();
        let corr = req
            .send(&c.topic, &p, REQ_SCHEMA0 + i, None)
            .map_err(|e| format!("send {i}: {e}"))?;
        let r = req.await_reply(corr, Some(c.timeout));
        let took = t0.elapsed();
        if i == c.expect_timeout_at {
            if !matches!(r, Err(Error::TimedOut))
                || took < c.timeout
                || took > c.timeout + Duration::from_millis(300)
            {
                return Err(format!(
                    "request {i}: {r:?} after {took:?}, want a timeout after {:?} (+300 ms)",
                    c.timeout
                ));
            }
            timeouts += 1;
            println!("TIMED_OUT ms={}", took.as_millis());
            let mut line = String::new();
            if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
                return Err("no go-ahead after the timeout".into());
            }
            continue;
        }
        let r = r.map_err(|e| format!("request {i}: {e} after {took:?}"))?;
        if r.correlation_id != corr
            || r.envelope.correlation_id != corr
            || r.envelope.causation_id == 0
            || r.status != reply_status(i)
            || r.schema_id != REQ_SCHEMA0 + i + REPLY_SCHEMA_DELTA
            || r.payload != reply_payload(&p, corr)
        {
            return Err(format!(
                "reply {i} differs (status {}, schema {:x}, {} bytes)",
                r.status,
                r.schema_id,
                r.payload.len()
            ));
        }
        replies += 1;
    }
    Ok(format!("OK replies={replies} timeouts={timeouts}"))
}
