//! A complete program: one thread publishes Cap'n Proto quotes built in ring memory,
//! the main thread reads them in place, in batches.
//!
//!   cd ffi/rust && SHMBUS_LIB_DIR=../../build/ffi cargo run --example quickstart
use std::time::Duration;

use shmbus::market_capnp::quote;
use shmbus::{Bus, Policy, TopicConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A bus without a daemon; segments live in /dev/shm under this prefix.
    let bus = Bus::open_direct(&format!("quickstart-{}", std::process::id()))?;
    let cfg = TopicConfig {
        capacity: 1 << 20,
        policy: Policy::Block,
        ..TopicConfig::default()
    };
    bus.create_topic("md.quotes", &cfg)?;

    // Subscribe first: a subscriber starts at the latest message by default.
    let mut sub = bus.subscriber("md.quotes", &Default::default())?;
    let mut publisher = bus.publisher("md.quotes", &Default::default())?;

    const N: u64 = 10_000;
    // Publisher is Send: it moves into the producing thread.
    let producer = std::thread::spawn(move || -> shmbus::Result<()> {
        for i in 1..=N {
            // The builder's first segment is the claimed ring memory.
            let mut m = publisher.claim_message(128)?;
            let mut q = m.init_root::<quote::Builder>();
            q.set_instrument_id((i % 1000) as u32);
            q.set_bid_px(10_000_000_000 + i as i64);
            q.set_ask_px(10_000_000_100 + i as i64);
            q.set_seq(i);
            // Writes the segment table and publishes: no copy.
            m.commit_as::<quote::Reader>(i)?;
        }
        Ok(())
    });

    let mut next = 1;
    let mut spread_sum = 0i64;
    while next <= N {
        // One call takes up to 256 messages; all stay valid until `batch` is dropped.
        let batch = sub.poll_batch(256, Some(Duration::from_secs(5)))?;
        if batch.is_empty() {
            return Err("timed out".into());
        }
        for msg in &batch {
            let reader = msg.reader()?; // zero copy: reads the ring bytes in place
            let q: quote::Reader = reader.get_root()?;
            assert_eq!(q.get_seq(), next);
            spread_sum += q.get_ask_px() - q.get_bid_px();
            next += 1;
        }
    } // dropping the batch released it
    producer.join().expect("producer thread")?;
    println!("received {N} quotes, mean spread {}", spread_sum / N as i64);
    bus.remove_topic("md.quotes")?;
    Ok(())
}
