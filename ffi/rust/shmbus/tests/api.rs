//! The safe API against the real C library: in-place build and read, fallbacks,
//! batches, copy paths, back-pressure, errors, threads.
mod common;

use std::time::Duration;

use capnp::message::ReaderSegments;
use common::TestBus;
use shmbus::market_capnp::{order, quote, Side};
use shmbus::{Error, Policy, PublisherOptions, SubscriberOptions};

const MIB: u64 = 1 << 20;

fn fill_quote(mut q: quote::Builder<'_>, i: u64) {
    q.set_instrument_id((i % 1000) as u32);
    q.set_bid_px(10_000_000_000 + i as i64);
    q.set_ask_px(10_000_000_100 + i as i64);
    q.set_bid_qty(7);
    q.set_ask_qty(9);
    q.set_exchange_ts_ns(i * 1000);
    q.set_seq(i);
}

#[test]
fn quote_round_trip_in_place_both_ways() {
    let t = TestBus::new("rt");
    let topic = t.topic("md.quotes", MIB, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();

    let mut m = publisher.claim_message(128).unwrap();
    let seq = m.sequence();
    fill_quote(m.init_root::<quote::Builder>(), 42);
    assert!(
        m.in_place(),
        "the builder's only segment is the claimed ring memory"
    );
    let c = m.commit_as::<quote::Reader>(42).unwrap();
    assert!(!c.fell_back);

    let v = sub.poll().unwrap().expect("a message");
    assert_eq!(v.message_id(), 42);
    assert_eq!(v.sequence(), seq);
    assert_eq!(
        v.schema_id(),
        <quote::Reader as capnp::traits::HasTypeId>::TYPE_ID
    );
    let data = v.data();
    assert_eq!(
        data.len(),
        8 + 8 * 7,
        "segment table + root pointer + 6 data words"
    );
    let r = v.reader().unwrap();
    let q: quote::Reader = r.get_root().unwrap();
    assert_eq!(q.get_seq(), 42);
    assert_eq!(q.get_bid_px(), 10_000_000_042);
    assert_eq!(q.get_exchange_ts_ns(), 42_000);
    // Zero copy: the reader's segment is the ring memory the view points at.
    let segs = r.into_segments();
    assert_eq!(segs.get_segment(0).unwrap().as_ptr(), data[8..].as_ptr());
    v.release().unwrap();
    assert!(sub.poll().unwrap().is_none());

    let st = publisher.stats().unwrap();
    assert_eq!(st.published, 1);
    assert_eq!(st.builder_fallbacks, 0);
    assert_eq!(sub.stats().unwrap().received, 1);
}

#[test]
fn a_message_claim_builds_through_roots_that_borrow_it() {
    let t = TestBus::new("roots");
    let topic = t.topic("md.quotes", MIB, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let relayed = t.topic("md.relayed", MIB, Policy::Block);
    let mut relay_sub = t
        .bus
        .subscriber(&relayed, &SubscriberOptions::default())
        .unwrap();
    let mut relay = t
        .bus
        .publisher(&relayed, &PublisherOptions::default())
        .unwrap();

    // get_root on a fresh claim makes the root; a second get_root comes back to it.
    let mut m = publisher.claim_message(128).unwrap();
    fill_quote(m.get_root::<quote::Builder>().unwrap(), 41);
    m.get_root::<quote::Builder>().unwrap().set_seq(5);
    let q: quote::Reader = m.get_root_as_reader().unwrap();
    assert_eq!((q.get_seq(), q.get_bid_px()), (5, 10_000_000_041));
    assert_eq!(m.size_in_words(), 7, "root pointer + 6 data words");
    assert!(m.in_place());
    assert!(!m.commit_as::<quote::Reader>(1).unwrap().fell_back);

    // set_root copies a received quote into another topic's claim, in place.
    let v = sub.poll().unwrap().expect("the quote");
    let r = v.reader().unwrap();
    let mut m = relay.claim_message(128).unwrap();
    m.set_root(r.get_root::<quote::Reader>().unwrap()).unwrap();
    assert!(m.in_place());
    assert!(!m.commit_as::<quote::Reader>(2).unwrap().fell_back);
    drop(v);
    let v = relay_sub.poll().unwrap().expect("the relayed quote");
    assert_eq!(v.message_id(), 2);
    assert_eq!(v.data().len(), 8 + 8 * 7);
    let r = v.reader().unwrap();
    let q: quote::Reader = r.get_root().unwrap();
    assert_eq!((q.get_seq(), q.get_bid_px()), (5, 10_000_000_041));
    drop(v);

    // initn_root: a blob root of 5 bytes, in place.
    let mut m = publisher.claim_message(64).unwrap();
    m.initn_root::<capnp::data::Builder>(5)
        .copy_from_slice(b"hello");
    assert!(m.in_place());
    assert!(!m.commit(3, 0).unwrap().fell_back);
    let v = sub.poll().unwrap().expect("the blob");
    let r = v.reader().unwrap();
    assert_eq!(r.get_root::<capnp::data::Reader>().unwrap(), b"hello");
}

#[test]
fn message_outgrowing_its_claim_falls_back_to_a_counted_copy() {
    let t = TestBus::new("fb");
    let topic = t.topic("orders", MIB, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let account = "x".repeat(3000);

    let mut m = publisher.claim_message(64).unwrap();
    {
        let mut o = m.init_root::<order::Builder>();
        o.set_order_id(7);
        o.set_side(Side::Sell);
        o.set_account(account.as_str());
    }
    assert!(!m.in_place());
    let c = m.commit_as::<order::Reader>(7).unwrap();
    assert!(c.fell_back);
    assert_eq!(publisher.stats().unwrap().builder_fallbacks, 1);

    let v = sub
        .poll_wait(Some(Duration::from_secs(5)))
        .unwrap()
        .expect("the copied message");
    assert_eq!(v.message_id(), 7);
    let r = v.reader().unwrap();
    let o: order::Reader = r.get_root().unwrap();
    assert_eq!(o.get_order_id(), 7);
    assert_eq!(o.get_side().unwrap(), Side::Sell);
    assert_eq!(o.get_account().unwrap().to_str().unwrap(), account);
}

#[test]
fn dropped_or_aborted_claims_are_skipped_by_readers() {
    let t = TestBus::new("ab");
    let topic = t.topic("t", MIB, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    {
        let mut m = publisher.claim_message(128).unwrap();
        fill_quote(m.init_root::<quote::Builder>(), 1);
        // dropped without commit: aborted
    }
    let mut m = publisher.claim_message(128).unwrap();
    fill_quote(m.init_root::<quote::Builder>(), 2);
    m.abort().unwrap();
    let mut c = publisher.claim(16).unwrap();
    c.bytes_mut()[..5].copy_from_slice(b"hello");
    c.commit(5, 3, 0).unwrap();

    let v = sub
        .poll_wait(Some(Duration::from_secs(5)))
        .unwrap()
        .expect("one message");
    assert_eq!(v.message_id(), 3);
    assert_eq!(v.data(), b"hello");
    drop(v);
    assert!(sub.poll().unwrap().is_none());
}

#[test]
fn batch_poll_iterates_in_order_and_releases_on_drop() {
    let t = TestBus::new("batch");
    let topic = t.topic("t", MIB, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    for i in 1..=100u64 {
        let mut m = publisher.claim_message(128).unwrap();
        fill_quote(m.init_root::<quote::Builder>(), i);
        m.commit_as::<quote::Reader>(i).unwrap();
    }
    let mut next = 1u64;
    let mut batches = 0;
    while next <= 100 {
        let batch = sub.poll_batch(32, Some(Duration::from_secs(5))).unwrap();
        assert!(!batch.is_empty(), "timed out at {next}");
        assert!(batch.len() <= 32);
        batches += 1;
        let held: Vec<_> = batch.iter().collect(); // messages live as long as the batch
        for m in held {
            assert_eq!(m.message_id(), next);
            let r = m.reader().unwrap();
            let q: quote::Reader = r.get_root().unwrap();
            assert_eq!(q.get_seq(), next);
            next += 1;
        }
        assert_eq!(
            batch.get(0).unwrap().message_id(),
            next - batch.len() as u64
        );
    }
    assert!(batches >= 4);
    let empty = sub.poll_batch(8, Some(Duration::ZERO)).unwrap();
    assert!(empty.is_empty());
    drop(empty);
    let timed_out = sub.poll_batch(8, Some(Duration::from_millis(20))).unwrap();
    assert!(timed_out.is_empty());
}

#[test]
fn copy_paths_offer_and_offer_packed() {
    let t = TestBus::new("copy");
    let topic = t.topic("t", MIB, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    publisher.offer(b"one", 1, 0).unwrap();
    let (n, r) = publisher.offer_packed(b"twothree", &[3, 5]);
    r.unwrap();
    assert_eq!(n, 2);
    let (n, r) = publisher.offer_packed(b"short", &[3, 5]);
    assert_eq!(n, 0);
    assert!(matches!(r, Err(Error::InvalidArgument(_))));

    let batch = sub.poll_batch(10, Some(Duration::from_secs(5))).unwrap();
    let got: Vec<&[u8]> = batch.iter().map(|m| m.data()).collect();
    assert_eq!(got, vec![&b"one"[..], b"two", b"three"]);
}

#[test]
fn malformed_payload_is_an_error_not_a_crash() {
    let t = TestBus::new("bad");
    let topic = t.topic("t", MIB, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    // segment table: 1 segment of 1000 words, but only 8 bytes follow.
    let mut bad = vec![0u8; 16];
    bad[4..8].copy_from_slice(&1000u32.to_le_bytes());
    publisher.offer(&bad, 1, 0).unwrap();
    // a far pointer into a segment that does not exist
    let mut far = vec![0u8; 16];
    far[4..8].copy_from_slice(&1u32.to_le_bytes());
    far[8..16].copy_from_slice(&(2u64 | (5u64 << 32)).to_le_bytes());
    publisher.offer(&far, 2, 0).unwrap();

    let v = sub
        .poll_wait(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert!(matches!(v.reader(), Err(Error::Malformed(_))));
    drop(v);
    let v = sub
        .poll_wait(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    let r = v.reader().unwrap();
    assert!(r.get_root::<quote::Reader>().is_err());
}

#[test]
fn back_pressure_under_policy_fail_until_the_subscriber_releases() {
    let t = TestBus::new("bp");
    let topic = t.topic("t", 4096, Policy::Fail);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let payload = [0u8; 200];
    let mut sent = 0u64;
    let err = loop {
        match publisher.offer(&payload, sent, 0) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 1000, "a 4 KiB ring never filled");
    };
    assert!(matches!(err, Error::BackPressured), "{err:?}");
    assert_eq!(err.code(), shmbus::sys::SHMBUS_E_BACK_PRESSURED);
    assert!(!err.to_string().is_empty());
    assert!(matches!(
        publisher.try_claim(200),
        Err(Error::BackPressured)
    ));
    assert!(publisher.stats().unwrap().back_pressured >= 1);

    let mut got = 0;
    loop {
        let batch = sub.poll_batch(64, Some(Duration::ZERO)).unwrap();
        if batch.is_empty() {
            break;
        }
        got += batch.len() as u64;
    }
    assert_eq!(got, sent);
    publisher.offer(&payload, sent, 0).unwrap();
}

#[test]
fn setup_errors_map_to_variants_with_details() {
    let t = TestBus::new("err");
    let opts = PublisherOptions {
        open_timeout: Duration::ZERO,
        ..Default::default()
    };
    let e = t.bus.publisher("no.such.topic", &opts).unwrap_err();
    assert!(matches!(e, Error::NotFound(_) | Error::TimedOut), "{e:?}");

    let topic = t.topic("t", MIB, Policy::Block);
    let other = shmbus::TopicConfig {
        capacity: 2 * MIB,
        ..Default::default()
    };
    let e = t.bus.create_topic(&topic, &other).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e:?}");
    assert!(
        e.to_string().len() > strerror_len(&e),
        "detail appended: {e}"
    );
    // idempotent for the same settings
    t.topic("t", MIB, Policy::Block);
    let d = t.bus.describe_topic(&topic).unwrap();
    assert_eq!(d.capacity, MIB);
    assert_eq!(d.policy, Policy::Block);

    let e = t.bus.create_topic("a\0b", &Default::default()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));

    let _p = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let e = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, Error::AlreadyExists(_)),
        "second producer on a single-producer partition: {e:?}"
    );

    fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    is_error(&e);
}

fn strerror_len(e: &Error) -> usize {
    shmbus::strerror(e.code()).len()
}

#[test]
fn publisher_and_subscriber_move_between_threads() {
    let t = TestBus::new("thr");
    let topic = t.topic("t", MIB, Policy::Block);
    let sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    const N: u64 = 20_000;
    let consumer = std::thread::spawn(move || {
        let mut sub = sub;
        let mut next = 1;
        while next <= N {
            let batch = sub.poll_batch(256, Some(Duration::from_secs(10))).unwrap();
            assert!(!batch.is_empty(), "timed out at {next}");
            for m in &batch {
                let r = m.reader().unwrap();
                assert_eq!(r.get_root::<quote::Reader>().unwrap().get_seq(), next);
                next += 1;
            }
        }
        sub
    });
    let producer = std::thread::spawn(move || {
        let mut publisher = publisher;
        for i in 1..=N {
            let mut m = publisher.claim_message(128).unwrap();
            fill_quote(m.init_root::<quote::Builder>(), i);
            m.commit_as::<quote::Reader>(i).unwrap();
        }
        publisher
    });
    let publisher = producer.join().unwrap();
    let sub = consumer.join().unwrap();
    assert_eq!(publisher.stats().unwrap().published, N);
    assert_eq!(sub.stats().unwrap().received, N);
}

#[test]
fn handles_outlive_the_bus_value() {
    let t = TestBus::new("life");
    let topic = t.topic("t", MIB, Policy::Block);
    let bus2 = t.bus.clone();
    let mut sub = bus2
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = bus2
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    drop(bus2);
    publisher.offer(b"x", 1, 0).unwrap();
    assert_eq!(
        sub.poll_wait(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap()
            .data(),
        b"x"
    );
}

#[test]
fn abi_version_and_strerror() {
    assert_eq!(shmbus::abi_version(), shmbus::sys::SHMBUS_ABI_VERSION);
    assert!(!shmbus::strerror(shmbus::sys::SHMBUS_E_CORRUPT).is_empty());
    let e = Error::from_code(-2);
    assert!(matches!(e, Error::Os { errno: 2, .. }));
    assert_eq!(e.code(), -2);
}

fn counter(m: &[u8]) -> u64 {
    u64::from_le_bytes(m[..8].try_into().unwrap())
}

/// An untethered subscriber that stops reading while the producer laps the ring:
/// `check` reports the view it holds as overwritten, the next poll reports the lap
/// once (`Error::Lapped`, never the overwritten bytes), then it reads on at the tail.
#[test]
fn untethered_subscriber_is_told_when_lapped() {
    let t = TestBus::new("lap");
    let topic = t.topic("lap", 8192, Policy::Fail);
    let opts = SubscriberOptions {
        tethered: false,
        ..Default::default()
    };
    let mut sub = t.bus.subscriber(&topic, &opts).unwrap();
    assert!(!sub.is_tethered());
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let mut buf = [0u8; 256];
    // Policy fail: an untethered subscriber never holds the producer back, so a
    // full ring would show up here as BackPressured.
    let mut put = |n: u64| {
        buf[..8].copy_from_slice(&n.to_le_bytes());
        publisher.offer(&buf, n, 0).expect("offer");
    };
    put(1);
    {
        let first = sub.poll().unwrap().expect("message 1");
        assert_eq!(counter(first.data()), 1);
        first.check().expect("intact before the lap");
        for n in 2..=100 {
            put(n); // ~3 laps of an 8 KiB ring
        }
        assert!(
            matches!(first.check(), Err(Error::Lapped)),
            "{:?}",
            first.check()
        );
    }
    assert!(matches!(sub.poll(), Err(Error::Lapped)));
    assert!(
        sub.poll().unwrap().is_none(),
        "continues at the producer's tail"
    );
    for n in 101..=200 {
        put(n);
    }
    match sub.poll_batch(8, Some(Duration::from_secs(5))) {
        Err(Error::Lapped) => {}
        Err(e) => panic!("poll_batch after a lap: {e}"),
        Ok(b) => panic!("poll_batch after a lap returned {} messages", b.len()),
    }
    put(201);
    let batch = sub.poll_batch(8, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(batch.len(), 1);
    let m = batch.get(0).unwrap();
    assert_eq!(counter(m.data()), 201);
    m.check().unwrap();
    assert_eq!(Error::Lapped.code(), shmbus_sys::SHMBUS_E_LAPPED);
    assert!(Error::Lapped.to_string().contains("lapped"));
}

/// The same traffic against a tethered subscriber fills the ring instead, and its
/// views always check intact.
#[test]
fn tethered_subscriber_holds_the_producer_back_and_is_never_lapped() {
    let t = TestBus::new("tether");
    let topic = t.topic("tether", 8192, Policy::Fail);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    assert!(sub.is_tethered());
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let buf = [0u8; 256];
    publisher.offer(&buf, 1, 0).unwrap();
    let v = sub.poll().unwrap().unwrap();
    let mut last = Ok(());
    for _ in 0..100 {
        last = publisher.offer(&buf, 2, 0);
        if last.is_err() {
            break;
        }
    }
    assert!(matches!(last, Err(Error::BackPressured)), "{last:?}");
    v.check().unwrap();
}

/// A named (durable) subscriber resumes after its last release when it reopens under
/// the same name (on the embedded daemon, which keeps the resume records).
#[test]
fn named_subscriber_resumes_after_its_last_release() {
    let dir = std::env::temp_dir().join(format!("shmbus-rs-named-{}", std::process::id()));
    let bus = match shmbus::Bus::open_embedded(Some(&dir)) {
        Ok(b) => b,
        Err(Error::Unsupported(_)) => return, // no embedded daemon in this build
        Err(e) => panic!("open_embedded: {e}"),
    };
    let cfg = shmbus::TopicConfig {
        capacity: 8192,
        ..Default::default()
    };
    bus.create_topic("rs.named", &cfg).unwrap();
    let opts = SubscriberOptions {
        name: Some("rs-durable".into()),
        ..Default::default()
    };
    let mut sub = bus.subscriber("rs.named", &opts).unwrap();
    let mut publisher = bus
        .publisher("rs.named", &PublisherOptions::default())
        .unwrap();
    for (i, s) in [&b"abc"[..], b"de", b"f"].iter().enumerate() {
        publisher.offer(s, i as u64 + 1, 0).unwrap();
    }
    let v = sub
        .poll_wait(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(v.data(), b"abc");
    v.release().unwrap();
    drop(sub); // parked under its name
    let mut sub = bus.subscriber("rs.named", &opts).unwrap();
    let v = sub
        .poll_wait(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (v.data(), v.message_id()),
        (&b"de"[..], 2),
        "resumed right after \"abc\""
    );
    drop(v);
    let other = SubscriberOptions {
        name: Some("rs-other".into()),
        ..Default::default()
    };
    let mut other = bus.subscriber("rs.named", &other).unwrap();
    assert!(
        other.poll().unwrap().is_none(),
        "a new name starts at the tail"
    );
    drop(other);
    drop(sub);
    drop(publisher);
    // Leave nothing behind in /dev/shm.
    bus.remove_topic("rs.named").unwrap();
    drop(bus);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An Interrupter ends a poll_wait(None) and a claim blocked for space from another
/// thread at once; the waits have no timeout of their own (a lost interrupt hangs,
/// and the 10 s checks below fail instead). Dropped owners make it a no-op.
#[test]
fn an_interrupter_ends_blocked_waits_from_another_thread() {
    use std::sync::mpsc;
    use std::time::Instant;
    let t = TestBus::new("intr");
    let topic = t.topic("t", 4096, Policy::Block);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(
            &topic,
            &PublisherOptions {
                block_timeout: Duration::from_secs(3600),
                ..Default::default()
            },
        )
        .unwrap();

    // A subscriber waiting forever on an empty ring.
    let stop = sub.interrupter();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(()).unwrap();
        let r = sub.poll_wait(None).map(|v| v.is_some());
        (sub, r)
    });
    rx.recv().unwrap();
    let t0 = Instant::now();
    stop.interrupt();
    let (mut sub, r) = waiter.join().unwrap();
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(Error::Interrupted.code(), shmbus::sys::SHMBUS_E_INTERRUPTED);
    // Taken once: the next wait runs its course.
    assert!(sub
        .poll_wait(Some(Duration::from_millis(1)))
        .unwrap()
        .is_none());

    // A publisher blocked for space on the full ring (the subscriber reads nothing).
    let payload = [0u8; 200];
    let mut sent = 0u64;
    while let Ok(c) = publisher.try_claim(200) {
        c.commit(200, sent, 0).unwrap();
        sent += 1;
        assert!(sent < 1000, "a 4 KiB ring never filled");
    }
    let stop = publisher.interrupter();
    let (tx, rx) = mpsc::channel();
    let blocked = std::thread::spawn(move || {
        tx.send(()).unwrap();
        let r = publisher.offer(&payload, 9999, 0);
        (publisher, r)
    });
    rx.recv().unwrap();
    let t0 = Instant::now();
    stop.interrupt();
    let (publisher, r) = blocked.join().unwrap();
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Nothing was published by the interrupted offer.
    let mut got = 0u64;
    loop {
        let batch = sub.poll_batch(64, Some(Duration::ZERO)).unwrap();
        if batch.is_empty() {
            break;
        }
        got += batch.len() as u64;
    }
    assert_eq!(got, sent);
    drop(publisher);
    stop.interrupt(); // the publisher is gone: nothing happens
    drop(sub);
}

#[test]
fn a_multi_frame_claim_is_published_together_in_order() {
    let t = TestBus::new("mclaim");
    let topic = t.topic("md.batch", MIB, Policy::Fail);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();

    let mut b = publisher.claim_batch(5, 40).unwrap();
    assert_eq!(b.len(), 5);
    assert!(b.frame_len() >= 40);
    let first = b.sequence(0);
    for i in 0..5 {
        assert_eq!(b.sequence(i), first + i as u64);
        let f = b.frame_mut(i);
        assert!(f.iter().all(|&x| x == 0), "zeroed ring memory");
        f[..10 + i].fill(0x30 + i as u8);
    }
    let used: Vec<u32> = (0..5).map(|i| 10 + i).collect();
    let ids: Vec<u64> = (0..5).map(|i| 700 + i).collect();
    b.commit(&used, Some(&ids), 0x55).unwrap();
    for i in 0..5u64 {
        let v = sub.poll().unwrap().expect("a frame of the batch");
        assert_eq!(v.sequence(), first + i);
        assert_eq!(v.message_id(), 700 + i);
        assert_eq!(v.schema_id(), 0x55);
        assert_eq!(v.data().len(), 10 + i as usize);
        assert!(v.data().iter().all(|&x| x == 0x30 + i as u8));
        v.release().unwrap();
    }
    assert!(sub.poll().unwrap().is_none());

    // Part of a batch; a dropped batch is aborted; nothing of either leaks.
    let mut b = publisher.claim_batch(4, 16).unwrap();
    b.frame_mut(0)[..16].fill(1);
    b.frame_mut(1)[..16].fill(2);
    b.frame_mut(3)[..16].fill(9);
    b.commit(&[16, 16], None, 0).unwrap();
    {
        let mut b = publisher.try_claim_batch(3, 16).unwrap();
        b.frame_mut(1)[..16].fill(7);
    }
    publisher.offer(&[5u8; 16], 1, 0).unwrap();
    for want in [1u8, 2, 5] {
        let v = sub.poll().unwrap().expect("a frame");
        assert_eq!(v.data(), &[want; 16][..]);
        v.release().unwrap();
    }
    assert!(sub.poll().unwrap().is_none());

    // Never fits: more than half the ring.
    assert!(matches!(
        publisher.claim_batch(10_000, 100),
        Err(Error::TooLarge(_))
    ));
    assert!(matches!(
        publisher.claim_batch(0, 100),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_multi_frame_claim_builds_capnp_messages_in_place() {
    let t = TestBus::new("mbuild");
    let topic = t.topic("md.quotes", MIB, Policy::Fail);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let quote_id = <quote::Reader as capnp::traits::HasTypeId>::TYPE_ID;

    // 8 frames of 64 bytes: a Quote (segment table + root pointer + 6 data words)
    // fills one exactly. Built out of order, one revisited after others were built,
    // one handed out as bytes (and scribbled on) before its message is built.
    const N: usize = 8;
    let mut b = publisher.claim_batch(N, 64).unwrap();
    let first = b.sequence(0);
    b.frame_mut(2).fill(0xff);
    for i in (0..N).rev() {
        assert!(!b.in_place(i), "no message in frame {i} yet");
        fill_quote(b.init_root::<quote::Builder>(i), 100 + i as u64);
        assert!(b.in_place(i), "frame {i}'s message is in its ring memory");
    }
    b.get_root::<quote::Builder>(5).unwrap().set_bid_qty(55);
    let ids: Vec<u64> = (0..N as u64).map(|i| 900 + i).collect();
    b.commit_messages_as::<quote::Reader>(N, Some(&ids))
        .unwrap();

    for i in 0..N as u64 {
        let v = sub.poll().unwrap().expect("a frame of the batch");
        assert_eq!(v.sequence(), first + i);
        assert_eq!(v.message_id(), 900 + i);
        assert_eq!(v.schema_id(), quote_id);
        let data = v.data();
        assert_eq!(
            data.len(),
            8 + 8 * 7,
            "committed length: segment table + the message's 7 words"
        );
        assert_eq!(
            &data[..8],
            &[0, 0, 0, 0, 7, 0, 0, 0],
            "one segment of 7 words"
        );
        let r = v.reader().unwrap();
        let q: quote::Reader = r.get_root().unwrap();
        let s = 100 + i;
        assert_eq!(q.get_instrument_id(), (s % 1000) as u32);
        assert_eq!(q.get_bid_px(), 10_000_000_000 + s as i64);
        assert_eq!(q.get_ask_px(), 10_000_000_100 + s as i64);
        assert_eq!(q.get_bid_qty(), if i == 5 { 55 } else { 7 });
        assert_eq!(q.get_ask_qty(), 9);
        assert_eq!(q.get_exchange_ts_ns(), s * 1000);
        assert_eq!(q.get_seq(), s);
        // Zero copy: the reader's segment is the ring memory the view points at.
        assert_eq!(
            r.into_segments().get_segment(0).unwrap().as_ptr(),
            data[8..].as_ptr()
        );
        v.release().unwrap();
    }
    assert!(sub.poll().unwrap().is_none());

    // Frames 0..k of a larger claim; the rest is skipped. Without message ids: 0.
    // Roomy frames: the committed length is what the message used, not the frame.
    let mut b = publisher.claim_batch(4, 256).unwrap();
    for i in 0..4 {
        fill_quote(b.init_root::<quote::Builder>(i), 200 + i as u64);
    }
    b.commit_messages(2, None, quote_id).unwrap();
    for i in 0..2u64 {
        let v = sub.poll().unwrap().expect("a frame");
        assert_eq!(v.message_id(), 0);
        assert_eq!(v.data().len(), 64);
        let r = v.reader().unwrap();
        let q: quote::Reader = r.get_root().unwrap();
        assert_eq!(q.get_seq(), 200 + i);
        v.release().unwrap();
    }
    assert!(sub.poll().unwrap().is_none());

    let st = publisher.stats().unwrap();
    assert_eq!(st.published, N as u64 + 2);
    assert_eq!(st.builder_fallbacks, 0);
}

#[test]
fn a_batch_message_that_outgrows_its_frame_is_refused_and_nothing_is_published() {
    let t = TestBus::new("mover");
    let topic = t.topic("orders", MIB, Policy::Fail);
    let mut sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = t
        .bus
        .publisher(&topic, &PublisherOptions::default())
        .unwrap();
    let account = "x".repeat(3000);

    let mut b = publisher.claim_batch(3, 64).unwrap();
    fill_quote(b.init_root::<quote::Builder>(0), 1);
    {
        let mut o = b.init_root::<order::Builder>(1);
        o.set_order_id(7);
        o.set_account(account.as_str());
    }
    fill_quote(b.init_root::<quote::Builder>(2), 3);
    assert!(b.in_place(0) && b.in_place(2));
    assert!(!b.in_place(1), "the order went on in heap memory");
    match b.commit_messages(3, None, 0) {
        Err(Error::TooLarge(d)) => assert!(d.contains("frame 1"), "{d}"),
        r => panic!("expected TooLarge, got {r:?}"),
    }
    assert!(
        sub.poll().unwrap().is_none(),
        "nothing of the batch published"
    );

    // A frame without a message, k past the batch, too few ids: refused, aborted.
    let mut b = publisher.claim_batch(2, 64).unwrap();
    fill_quote(b.init_root::<quote::Builder>(0), 1);
    b.frame_mut(1)[..8].fill(1);
    match b.commit_messages(2, None, 0) {
        Err(Error::InvalidArgument(d)) => assert!(d.contains("frame 1"), "{d}"),
        r => panic!("expected InvalidArgument, got {r:?}"),
    }
    let mut b = publisher.claim_batch(2, 64).unwrap();
    fill_quote(b.init_root::<quote::Builder>(0), 1);
    assert!(matches!(
        b.commit_messages(3, None, 0),
        Err(Error::InvalidArgument(_))
    ));
    let mut b = publisher.claim_batch(2, 64).unwrap();
    fill_quote(b.init_root::<quote::Builder>(0), 1);
    fill_quote(b.init_root::<quote::Builder>(1), 2);
    assert!(matches!(
        b.commit_messages(2, Some(&[1]), 0),
        Err(Error::InvalidArgument(_))
    ));
    // Frames too small for any message in place (8 bytes: no room past the table).
    let mut b = publisher.claim_batch(2, 8).unwrap();
    assert!(b.frame_len() < 16, "{}", b.frame_len());
    b.init_root::<quote::Builder>(0).set_seq(1);
    assert!(!b.in_place(0));
    assert!(matches!(
        b.commit_messages(1, None, 0),
        Err(Error::TooLarge(_))
    ));
    assert!(
        sub.poll().unwrap().is_none(),
        "every refused batch was aborted"
    );

    // The publisher goes on: the next batch is published.
    let mut b = publisher.claim_batch(2, 64).unwrap();
    fill_quote(b.init_root::<quote::Builder>(0), 41);
    fill_quote(b.init_root::<quote::Builder>(1), 42);
    b.commit_messages(2, Some(&[41, 42]), 0).unwrap();
    for want in [41u64, 42] {
        let v = sub.poll().unwrap().expect("a frame");
        assert_eq!(v.message_id(), want);
        let r = v.reader().unwrap();
        let q: quote::Reader = r.get_root().unwrap();
        assert_eq!(q.get_seq(), want);
        v.release().unwrap();
    }
    assert!(sub.poll().unwrap().is_none());
    assert_eq!(publisher.stats().unwrap().builder_fallbacks, 0);
}
