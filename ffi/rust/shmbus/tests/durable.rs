//! Durable topics through a real daemon (embedded, with a state directory; a test
//! binary of its own, so no other embedded daemon shares its /dev/shm prefix):
//! create with `DurableConfig`, publish, `wait_durable`, stop the daemon, start a
//! new one on the same state, replay from `Start::Earliest` (all of it in order,
//! most of it only in the log), then live messages through the same subscriber.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shmbus::{
    Bus, DurableConfig, Error, Flush, Policy, PublisherOptions, Start, Subscriber,
    SubscriberOptions, TopicConfig,
};

const N: usize = 2000;
const LIVE: usize = 200;
const T: Option<Duration> = Some(Duration::from_secs(10));

fn publish(bus: &Bus, seqs: &mut [u64], from: usize, to: usize) {
    let mut p = bus
        .publisher("rs.durable", &PublisherOptions::default())
        .unwrap();
    for (i, seq) in seqs.iter_mut().enumerate().take(to).skip(from) {
        let mut c = p.claim(8).unwrap();
        c.bytes_mut()[..8].copy_from_slice(&(i as u64).to_le_bytes());
        *seq = c.sequence();
        c.commit(8, i as u64, 0).unwrap();
    }
    p.wait_durable(seqs[to - 1], T).unwrap();
    let (durable, archiver_errno) = p.durable_sequence().unwrap();
    assert!(durable >= seqs[to - 1] && archiver_errno == 0);
    assert!(matches!(
        p.wait_durable(seqs[to - 1] + 1000, Some(Duration::from_millis(1))),
        Err(Error::TimedOut)
    ));
}

fn expect(sub: &mut Subscriber, seqs: &[u64], from: usize, count: usize, what: &str) {
    for (i, want_seq) in seqs.iter().enumerate().skip(from).take(count) {
        let v = loop {
            match sub.poll_wait(T) {
                Err(Error::Corrupt(_)) => continue, // a skipped corrupt log record
                r => break r,
            }
        };
        let v = v
            .unwrap_or_else(|e| panic!("{what}: message {i}: {e}"))
            .unwrap_or_else(|| panic!("{what}: message {i}: timed out"));
        let got = u64::from_le_bytes(v.data()[..8].try_into().unwrap());
        assert_eq!(
            (got, v.sequence(), v.message_id()),
            (i as u64, *want_seq, i as u64),
            "{what}"
        );
        v.check().unwrap();
        v.release().unwrap();
    }
}

fn replay(bus: &Bus, start: Start) -> Subscriber {
    let o = SubscriberOptions {
        start,
        ..Default::default()
    };
    bus.subscriber("rs.durable", &o).unwrap()
}

#[test]
fn durable_topic_replays_from_earliest_after_a_daemon_restart() {
    let dir = std::env::temp_dir().join(format!("shmbus-rs-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = TopicConfig {
        capacity: 8192,
        ..Default::default()
    };
    let dur = DurableConfig::default()
        .flush(Flush::Batch)
        .segment_bytes(1 << 20)
        .retention_age(Duration::from_secs(3600));

    // Without a daemon: refused, with the reason.
    let prefix = format!("rs-durable-{}", std::process::id());
    let direct = Bus::open_direct(&prefix).unwrap();
    match direct.create_durable_topic("rs.durable", &cfg, &dur) {
        Err(Error::Unsupported(d)) => assert!(d.to_string().contains("daemon"), "{d}"),
        r => panic!("direct bus: want Unsupported, got {r:?}"),
    }
    drop(direct);

    let mut seqs = vec![0u64; N + LIVE];
    {
        let bus = Bus::open_embedded(Some(&dir)).unwrap();
        bus.create_durable_topic("rs.durable", &cfg, &dur).unwrap();
        bus.create_durable_topic("rs.durable", &cfg, &dur)
            .expect("idempotent");
        let other = dur.clone().flush(Flush::None);
        assert!(matches!(
            bus.create_durable_topic("rs.durable", &cfg, &other),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(
            bus.describe_durable("rs.durable").unwrap(),
            Some(dur.clone())
        );
        let spill = TopicConfig {
            policy: Policy::Spill,
            ..cfg.clone()
        };
        bus.create_topic("rs.spill", &spill).unwrap();
        assert_eq!(
            bus.describe_topic("rs.spill").unwrap().policy,
            Policy::Spill
        );
        assert!(bus.describe_durable("rs.spill").unwrap().is_some());
        bus.create_topic("rs.plain", &cfg).unwrap();
        assert_eq!(bus.describe_durable("rs.plain").unwrap(), None);
        let o = SubscriberOptions {
            start: Start::Earliest,
            ..Default::default()
        };
        assert!(matches!(
            bus.subscriber("rs.plain", &o),
            Err(Error::InvalidArgument(_))
        ));
        publish(&bus, &mut seqs, 0, N);
    } // the daemon stops; a new one starts on the same state

    let bus = Bus::open_embedded(Some(&dir)).unwrap();
    let mut sub = replay(&bus, Start::Earliest);
    expect(&mut sub, &seqs, 0, N, "replay from earliest");
    assert!(sub.poll().unwrap().is_none());
    publish(&bus, &mut seqs, N, N + LIVE);
    expect(&mut sub, &seqs, N, LIVE, "live after the replay");
    assert_eq!(sub.stats().unwrap().received, (N + LIVE) as u64);

    let mut mid = replay(&bus, Start::Sequence(seqs[N / 2]));
    expect(&mut mid, &seqs, N / 2, N / 2 + LIVE, "start at a sequence");
    let hour_ago =
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - Duration::from_secs(3600);
    let mut old = replay(&bus, Start::Time(hour_ago.as_nanos() as u64));
    expect(&mut old, &seqs, 0, 10, "start an hour ago");

    drop((sub, mid, old));
    for t in ["rs.durable", "rs.spill", "rs.plain"] {
        bus.remove_topic(t).unwrap();
    }
    drop(bus);
    let _ = std::fs::remove_dir_all(&dir);
}
