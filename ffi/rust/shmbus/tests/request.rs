//! Request/response through the C ABI, through an embedded shmbusd (ephemeral reply
//! topics): a round trip checked field by field, two requests in flight awaited in
//! reverse order, a failing and a panicking handler answered 500, a request not
//! answered times out within its deadline, an interrupter ends a blocked await (the
//! request stays in flight), a reply bigger than the reply ring is refused, a forged
//! reply is dropped, a request dropped unanswered is skipped, a reply-to naming an
//! ordinary topic is refused.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::{
    Bus, Envelope, Error, PublisherOptions, RequesterOptions, Response, SubscriberOptions,
    TopicConfig, TraceContext, STATUS_FAILED,
};

// Fields drop in order: the bus (its embedded daemon), then the state directory.
struct Fixture {
    bus: Bus,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(topic: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("shmbus-rs-req-{}-{topic}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bus = Bus::open_embedded(Some(&dir)).expect("open_embedded");
    let cfg = TopicConfig {
        capacity: 1 << 16,
        multi_producer: true,
        ..TopicConfig::default()
    };
    bus.create_topic(topic, &cfg).unwrap();
    Fixture {
        bus,
        _dir: TempDir(dir),
    }
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn round_trip_field_by_field_and_failures_answered_500() {
    let f = fixture("rs.svc");
    let mut req = f.bus.requester(&RequesterOptions::default()).unwrap();
    let mut resp = f
        .bus
        .responder("rs.svc", &SubscriberOptions::default())
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let reply_topic = req.reply_topic().to_string();
    assert!(reply_topic.starts_with("reply."));
    let server = std::thread::spawn(move || {
        resp.serve(
            || s.load(Ordering::Relaxed),
            |q| {
                match q.payload() {
                    b"fail" => return Err("db down".to_string()),
                    b"panic" => panic!("oops"),
                    _ => {}
                }
                let e = q.envelope();
                if !q.is_enveloped()
                    || e.correlation_id == 0
                    || e.reply_to != reply_topic
                    || q.message_id() == 0
                {
                    return Err(format!("bad request envelope {e:?}"));
                }
                let mut out = b"re:".to_vec();
                out.extend_from_slice(q.payload());
                Ok(Response {
                    payload: out,
                    schema_id: q.schema_id() + 1,
                    status: 201,
                    no_reply: false,
                })
            },
        )?;
        Ok::<_, Error>(resp.stats())
    });
    let trace = TraceContext::parse(TP).unwrap();
    let corr = req.send("rs.svc", b"quote", 0x77, Some(&trace)).unwrap();
    let r = req.await_reply(corr, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        (&r.payload[..], r.status, r.schema_id, r.correlation_id),
        (&b"re:quote"[..], 201, 0x78, corr)
    );
    assert_eq!(r.envelope.correlation_id, corr);
    assert_ne!(r.envelope.causation_id, 0);
    assert_eq!(r.envelope.trace.trace_id_low, trace.trace_id_low);
    assert_ne!(r.envelope.trace.parent_id, trace.parent_id);
    // Two in flight, awaited in reverse order.
    let c1 = req.send("rs.svc", b"one", 0, None).unwrap();
    let c2 = req.send("rs.svc", b"two", 0, None).unwrap();
    let r2 = req.await_reply(c2, Some(Duration::from_secs(5))).unwrap();
    let r1 = req.await_reply(c1, Some(Duration::from_secs(5))).unwrap();
    assert_eq!((&r1.payload[..], r1.correlation_id), (&b"re:one"[..], c1));
    assert_eq!((&r2.payload[..], r2.correlation_id), (&b"re:two"[..], c2));
    assert!(matches!(
        req.await_reply(c1, Some(Duration::ZERO)),
        Err(Error::Closed(_))
    ));
    for (input, want) in [
        (&b"fail"[..], "exception: db down"),
        (&b"panic"[..], "exception: panic: oops"),
    ] {
        let r = req
            .request("rs.svc", input, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.payload).into_owned()),
            (STATUS_FAILED, want.to_string())
        );
    }
    stop.store(true, Ordering::Relaxed);
    let st = server.join().unwrap().unwrap();
    assert_eq!((st.requests, st.replied, st.failed), (5, 5, 2));
}

#[test]
fn a_request_not_answered_times_out_within_its_deadline() {
    let f = fixture("rs.skip");
    let mut req = f.bus.requester(&RequesterOptions::default()).unwrap();
    let mut resp = f
        .bus
        .responder("rs.skip", &SubscriberOptions::default())
        .unwrap();
    let corr = req.send("rs.skip", b"x", 0, None).unwrap();
    let q = resp
        .next(Some(Duration::from_secs(5)))
        .unwrap()
        .expect("a request");
    drop(q); // unanswered: skipped
    let t0 = Instant::now();
    let r = req.await_reply(corr, Some(Duration::from_millis(100)));
    let took = t0.elapsed();
    eprintln!("no reply: {r:?} after {took:?} (deadline 100 ms)");
    assert!(matches!(r, Err(Error::TimedOut)));
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(500),
        "{took:?}"
    );
    assert_eq!(req.stats().in_flight, 0);
    assert!(matches!(resp.next(Some(Duration::ZERO)), Ok(None)));
}

#[test]
fn an_interrupter_ends_a_blocked_await_and_the_request_stays_in_flight() {
    let f = fixture("rs.intr");
    let mut req = f.bus.requester(&RequesterOptions::default()).unwrap();
    let mut resp = f
        .bus
        .responder("rs.intr", &SubscriberOptions::default())
        .unwrap();
    let corr = req.send("rs.intr", b"x", 0, None).unwrap();
    let intr = req.interrupter();
    let t0 = Instant::now();
    let waiter = std::thread::spawn(move || {
        let r = req.await_reply(corr, None).map(|_| ());
        (req, r)
    });
    // The request reached the responder; the waiter is (or soon is) blocked.
    let q = resp
        .next(Some(Duration::from_secs(5)))
        .unwrap()
        .expect("a request");
    intr.interrupt();
    let (mut req, r) = waiter.join().unwrap();
    assert!(
        matches!(r, Err(Error::Interrupted)),
        "{r:?} after {:?}",
        t0.elapsed()
    );
    q.reply(&Response {
        payload: b"late but wanted".to_vec(),
        ..Response::default()
    })
    .unwrap();
    let r = req.await_reply(corr, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(&r.payload[..], b"late but wanted");
}

#[test]
fn a_reply_bigger_than_the_reply_ring_is_refused_and_the_request_times_out() {
    let f = fixture("rs.big");
    let mut req = f
        .bus
        .requester(&RequesterOptions {
            capacity: 4096,
            ..RequesterOptions::default()
        })
        .unwrap();
    let mut resp = f
        .bus
        .responder("rs.big", &SubscriberOptions::default())
        .unwrap();
    let corr = req.send("rs.big", b"big?", 0, None).unwrap();
    let q = resp
        .next(Some(Duration::from_secs(5)))
        .unwrap()
        .expect("a request");
    let r = q.reply(&Response {
        payload: vec![7; 8192],
        ..Response::default()
    });
    assert!(matches!(r, Err(Error::TooLarge(_))), "{r:?}");
    assert!(matches!(
        req.await_reply(corr, Some(Duration::from_millis(50))),
        Err(Error::TimedOut)
    ));
    assert_eq!(resp.stats().undeliverable, 1);
}

#[test]
fn a_forged_reply_and_garbage_are_dropped_and_counted() {
    let f = fixture("rs.forge");
    let mut req = f.bus.requester(&RequesterOptions::default()).unwrap();
    let mut resp = f
        .bus
        .responder("rs.forge", &SubscriberOptions::default())
        .unwrap();
    let corr = req.send("rs.forge", b"real?", 0, None).unwrap();
    let q = resp
        .next(Some(Duration::from_secs(5)))
        .unwrap()
        .expect("a request");
    let mut forger = f
        .bus
        .publisher(req.reply_topic(), &PublisherOptions::default())
        .unwrap();
    let forged = Envelope {
        correlation_id: corr,
        causation_id: q.message_id() ^ 1,
        ..Envelope::default()
    };
    forger.offer_enveloped(&forged, b"forged", 0).unwrap();
    forger
        .offer(b"garbage!", 0, shmbus::ENVELOPE_SCHEMA_ID)
        .unwrap();
    let mid = q.message_id();
    q.reply(&Response {
        payload: b"real".to_vec(),
        ..Response::default()
    })
    .unwrap();
    let r = req.await_reply(corr, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        (&r.payload[..], r.envelope.causation_id),
        (&b"real"[..], mid)
    );
    let st = req.stats();
    assert_eq!((st.forged, st.malformed, st.replies), (1, 1, 1), "{st:?}");
}

#[test]
fn a_reply_to_naming_an_ordinary_topic_is_refused() {
    let f = fixture("rs.deputy");
    f.bus
        .create_topic(
            "rs.victim",
            &TopicConfig {
                capacity: 1 << 16,
                multi_producer: true,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let mut resp = f
        .bus
        .responder("rs.deputy", &SubscriberOptions::default())
        .unwrap();
    let mut victim = f
        .bus
        .subscriber("rs.victim", &SubscriberOptions::default())
        .unwrap();
    let mut p = f
        .bus
        .publisher("rs.deputy", &PublisherOptions::default())
        .unwrap();
    let env = Envelope {
        correlation_id: 5,
        reply_to: "rs.victim".into(),
        ..Envelope::default()
    };
    p.offer_enveloped(&env, b"x", 9).unwrap();
    let q = resp
        .next(Some(Duration::from_secs(5)))
        .unwrap()
        .expect("a request");
    let r = q.reply(&Response {
        payload: b"into the victim".to_vec(),
        ..Response::default()
    });
    assert!(matches!(r, Err(Error::PermissionDenied(_))), "{r:?}");
    assert!(victim.poll().unwrap().is_none());
    assert_eq!(resp.stats().refused, 1);
}
