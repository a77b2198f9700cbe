//! The dedup window through a real daemon (embedded, with a state directory; a test
//! binary of its own): a durable consumer commits message 61 and "crashes" before
//! releasing it, the producer retries ids 55..70 (new sequences, same producer and
//! message ids); the restarted consumer (the window loaded from its file, the
//! subscriber by name) applies every id 1..100 exactly once. A corrupted state file
//! is refused, naming it.
use std::collections::HashMap;
use std::time::Duration;

use shmbus::{
    Bus, DedupWindow, Error, PublisherOptions, Subscriber, SubscriberOptions, TopicConfig,
};

const T: Option<Duration> = Some(Duration::from_secs(10));

fn handle(
    w: &mut DedupWindow,
    sub: &mut Subscriber,
    applied: &mut HashMap<u64, u32>,
    release: bool,
) {
    let v = sub.poll_wait(T).unwrap().expect("a message");
    if !w
        .seen(v.producer_id(), v.message_id(), v.sequence())
        .unwrap()
    {
        let id = u64::from_le_bytes(v.data().try_into().unwrap());
        *applied.entry(id).or_default() += 1;
        let mut st = w.app_state();
        st.resize(8, 0);
        let sum = u64::from_le_bytes(st.try_into().unwrap()) + id;
        w.record(v.producer_id(), v.message_id(), v.sequence())
            .unwrap();
        w.commit(Some(&sum.to_le_bytes())).unwrap();
    }
    if release {
        v.release().unwrap();
    } else {
        std::mem::forget(v); // the "crash": committed, never released
    }
}

#[test]
fn every_id_once_across_a_consumer_restart_and_a_producer_retry() {
    let dir = std::env::temp_dir().join(format!("shmbus-rs-dedup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("consumer.dedup");
    {
        let bus = Bus::open_embedded(Some(&dir.join("daemon"))).unwrap();
        bus.create_topic(
            "rs.dedup",
            &TopicConfig {
                capacity: 1 << 16,
                ..TopicConfig::default()
            },
        )
        .unwrap();
        let so = SubscriberOptions {
            name: Some("consumer".into()),
            ..SubscriberOptions::default()
        };
        let mut publisher = bus
            .publisher(
                "rs.dedup",
                &PublisherOptions {
                    producer_id: 77,
                    ..PublisherOptions::default()
                },
            )
            .unwrap();
        let mut publish = |from: u64, to: u64| {
            for id in from..=to {
                publisher.offer(&id.to_le_bytes(), id, 0).unwrap();
            }
        };
        let mut applied = HashMap::new();
        {
            let mut w = DedupWindow::open(64, Some(&state)).unwrap();
            let mut sub = bus.subscriber("rs.dedup", &so).unwrap();
            publish(1, 100);
            for i in 1..=61 {
                handle(&mut w, &mut sub, &mut applied, i < 61);
            }
        } // closed without releasing 61: the name resumes after 60
        publish(55, 70);
        let mut w = DedupWindow::open(64, Some(&state)).unwrap();
        let mut sub = bus.subscriber("rs.dedup", &so).unwrap();
        for _ in 0..(40 + 16) {
            handle(&mut w, &mut sub, &mut applied, true);
        }
        for id in 1..=100u64 {
            assert_eq!(applied.get(&id), Some(&1), "id {id}");
        }
        let st = w.stats();
        assert_eq!((st.by_position, st.by_id), (1, 16), "{st:?}");
        assert_eq!(w.app_state(), 5050u64.to_le_bytes());
    }
    let mut b = std::fs::read(&state).unwrap();
    b[20] ^= 0x40;
    std::fs::write(&state, b).unwrap();
    match DedupWindow::open(0, Some(&state)) {
        Err(Error::InvalidArgument(d)) => assert!(d.contains(&*state.to_string_lossy()), "{d}"),
        other => panic!("corrupted state: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
