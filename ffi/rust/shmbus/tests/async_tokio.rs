//! AsyncSubscriber under tokio: a million messages from a producer thread arrive in
//! order, none lost or repeated, while the runtime's threads never spin on the ring
//! (the reading thread sleeps in the library's wait); dropping it stops its thread.
#![cfg(feature = "tokio")]
mod common;

use std::time::Duration;

use common::TestBus;
use shmbus::{AsyncSubscriber, Policy, PublisherOptions, SubscriberOptions};

/// A million, or SHMBUS_ASYNC_MESSAGES (the ASan run of ffi/rust/test.sh takes fewer).
fn messages() -> u64 {
    std::env::var("SHMBUS_ASYNC_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_async_subscriber_under_tokio_receives_a_million_messages_in_order() {
    let t = TestBus::new("async");
    let topic = t.topic("t", 1 << 20, Policy::Block);
    let sub = t
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut sub = AsyncSubscriber::new(sub, 4096);
    let mut publisher = t
        .bus
        .publisher(
            &topic,
            &PublisherOptions {
                block_timeout: Duration::from_secs(60),
                ..Default::default()
            },
        )
        .unwrap();
    let n = messages();
    let producer = std::thread::spawn(move || {
        for i in 1..=n {
            publisher.offer(&i.to_le_bytes(), i, 0).unwrap();
        }
    });
    let mut next = 1u64;
    while next <= n {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("a message within 30 s")
            .expect("the stream is open")
            .expect("no error");
        let v = u64::from_le_bytes(m.data().try_into().unwrap());
        assert_eq!(v, next, "message {next} out of order or lost");
        assert_eq!(m.message_id(), next);
        next += 1;
    }
    producer.join().unwrap();
    assert_eq!(next, n + 1);
    // Nothing more comes; dropping ends the reading thread (its wait is interrupted).
    assert!(
        tokio::time::timeout(Duration::from_millis(20), sub.recv())
            .await
            .is_err(),
        "no message beyond the last"
    );
    drop(sub);
}
