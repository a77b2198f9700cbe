//! Test helpers: a bus with a prefix of its own, its segments removed afterwards.
#![allow(dead_code)]
use std::sync::atomic::{AtomicU32, Ordering};

use shmbus::{Bus, Policy, TopicConfig};

static N: AtomicU32 = AtomicU32::new(0);

pub struct TestBus {
    pub bus: Bus,
    pub prefix: String,
}

impl TestBus {
    pub fn new(name: &str) -> TestBus {
        let prefix = format!(
            "rs-{}-{}-{}",
            name,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let bus = Bus::open_direct(&prefix).expect("open_direct");
        TestBus { bus, prefix }
    }

    pub fn topic(&self, name: &str, capacity: u64, policy: Policy) -> String {
        let cfg = TopicConfig {
            capacity,
            policy,
            ..TopicConfig::default()
        };
        self.bus.create_topic(name, &cfg).expect("create_topic");
        name.to_string()
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir("/dev/shm") {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}.", self.prefix))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}
