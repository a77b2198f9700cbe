//! Consumer groups through a real daemon (embedded, with a state directory; a test
//! binary of its own): two members (this process and a child process, this test
//! binary run again) split a 4-partition topic; the child is SIGKILLed and this
//! member takes its partitions over, none of N sequenced messages lost; a blocked
//! `poll_wait` is ended at once by the member's `Interrupter`.
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::{Bus, Error, GroupOptions, GroupSubscriber, Publisher, PublisherOptions, TopicConfig};

const N: u64 = 4000;

fn opts(sync: Duration) -> GroupOptions {
    GroupOptions {
        sync_interval: sync,
        ..GroupOptions::default()
    }
}

fn parts(m: &GroupSubscriber) -> String {
    let v: Vec<String> = m
        .partitions()
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    v.join(",")
}

/// The member process: `members_split_and_one_takes_over_a_killed_one` run again
/// (this test binary, that test alone) with SHMBUS_RS_GROUP_SOCK set runs this
/// instead (so the member is not an ignored test every normal run would skip).
/// Prints "member: held p,p" when what it holds changes and "member: got <index>"
/// for every message before releasing it, until killed.
fn group_member_process(sock: String) -> ! {
    let bus = Bus::connect(Some(std::path::Path::new(&sock))).expect("connect");
    let topic = std::env::var("SHMBUS_RS_GROUP_TOPIC").unwrap();
    let mut m = bus
        .group_subscriber(&topic, "g", &opts(Duration::from_millis(2)))
        .expect("open");
    let mut shown = String::from("-");
    loop {
        let now = parts(&m);
        if now != shown {
            println!("member: held {now}");
            shown = now;
        }
        if let Some(v) = m.poll_wait(Some(Duration::from_millis(20))).expect("poll") {
            let idx = u64::from_le_bytes(v.data().try_into().expect("8 bytes"));
            println!("member: got {idx}");
            v.release().expect("release");
        }
    }
}

// Fields drop in order: the publishers, the bus (its embedded daemon), then the
// state directory.
struct Fixture {
    pubs: Vec<Publisher>,
    bus: Bus,
    sock: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(topic: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("shmbus-rs-group-{}-{topic}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bus = Bus::open_embedded(Some(&dir)).expect("open_embedded");
    let cfg = TopicConfig {
        partitions: 4,
        capacity: 1 << 20,
        ..TopicConfig::default()
    };
    bus.create_topic(topic, &cfg).unwrap();
    let pubs = (0..4)
        .map(|p| {
            bus.publisher(
                topic,
                &PublisherOptions {
                    partition: p,
                    ..PublisherOptions::default()
                },
            )
            .unwrap()
        })
        .collect();
    Fixture {
        sock: dir.join("shmbusd.sock").to_string_lossy().into_owned(),
        _dir: TempDir(dir),
        bus,
        pubs,
    }
}

fn publish(f: &mut Fixture, from: u64, to: u64) {
    for i in from..to {
        f.pubs[(i % 4) as usize]
            .offer(&i.to_le_bytes(), i, 0)
            .unwrap();
    }
}

/// Polls `m` once (at most 1 ms); records and releases what it got. Checks the
/// partition, the payload and per-partition order.
fn poll_once(m: &mut GroupSubscriber, seen: &mut HashSet<u64>, last: &mut [u64; 4]) {
    if let Some(v) = m.poll_wait(Some(Duration::from_millis(1))).unwrap() {
        let idx = u64::from_le_bytes(v.data().try_into().expect("8 bytes"));
        let p = v.partition();
        assert!(
            idx < N && idx % 4 == u64::from(p) && v.message_id() == idx,
            "index {idx} on partition {p}"
        );
        assert!(
            idx + 1 > last[p as usize],
            "index {idx} out of order on partition {p}"
        );
        last[p as usize] = idx + 1;
        seen.insert(idx);
        v.release().unwrap();
    }
}

struct Member {
    child: Child,
    held: Arc<Mutex<String>>,
    got: mpsc::Receiver<u64>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_member(sock: &str, topic: &str) -> Member {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "members_split_and_one_takes_over_a_killed_one",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHMBUS_RS_GROUP_SOCK", sock)
        .env("SHMBUS_RS_GROUP_TOPIC", topic)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the member process");
    let out = child.stdout.take().unwrap();
    let held = Arc::new(Mutex::new(String::from("-")));
    let (tx, got) = mpsc::channel();
    let h = held.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            // (the harness's "test members_split_... ... " has no newline)
            let line = line.find("member: ").map_or("", |at| &line[at..]);
            if let Some(p) = line.strip_prefix("member: held ") {
                *h.lock().unwrap() = p.to_string();
            } else if let Some(i) = line.strip_prefix("member: got ") {
                if let Ok(i) = i.parse() {
                    let _ = tx.send(i);
                }
            }
        }
    });
    Member { child, held, got }
}

#[test]
fn members_split_and_one_takes_over_a_killed_one() {
    if let Ok(sock) = std::env::var("SHMBUS_RS_GROUP_SOCK") {
        group_member_process(sock);
    }
    const TOPIC: &str = "rs.group";
    let mut f = fixture(TOPIC);

    // Without a daemon: refused with the reason.
    let direct = Bus::open_direct(&format!("rs-group-{}", std::process::id())).unwrap();
    match direct.group_subscriber(TOPIC, "g", &GroupOptions::default()) {
        Err(Error::Unsupported(d)) => assert!(d.to_string().contains("shmbusd"), "{d}"),
        other => panic!("group on a direct bus: want Unsupported, got {other:?}"),
    }

    let mut m = f
        .bus
        .group_subscriber(TOPIC, "g", &opts(Duration::from_millis(2)))
        .unwrap();
    assert_eq!(parts(&m), "0,1,2,3", "alone: every partition");
    let mut seen = HashSet::new();
    let mut last = [0u64; 4];

    let child = start_member(&f.sock, TOPIC);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mine, theirs) = (parts(&m), child.held.lock().unwrap().clone());
        let (a, b): (HashSet<&str>, HashSet<&str>) =
            (mine.split(',').collect(), theirs.split(',').collect());
        if a.len() == 2 && b.len() == 2 && a.is_disjoint(&b) && theirs != "-" {
            eprintln!("split: this member holds {mine}, the other {theirs}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no split: {mine:?} and {theirs:?}"
        );
        poll_once(&mut m, &mut seen, &mut last); // drives the syncs
    }

    publish(&mut f, 0, N / 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (0..N / 2).any(|i| !seen.contains(&i)) && Instant::now() < deadline {
        poll_once(&mut m, &mut seen, &mut last);
        seen.extend(child.got.try_iter());
    }
    assert!(
        (0..N / 2).all(|i| seen.contains(&i)),
        "first half: {} seen",
        seen.len()
    );

    let t0 = Instant::now();
    let mut child = child;
    child.child.kill().unwrap(); // SIGKILL
    child.child.wait().unwrap();
    publish(&mut f, N / 2, N);
    let mut took = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < N as usize && Instant::now() < deadline {
        poll_once(&mut m, &mut seen, &mut last);
        seen.extend(child.got.try_iter());
        if took.is_none() && parts(&m) == "0,1,2,3" {
            took = Some(t0.elapsed());
        }
    }
    assert_eq!(seen.len(), N as usize, "messages seen");
    assert_eq!(parts(&m), "0,1,2,3", "after the kill: every partition");
    let st = m.stats().unwrap();
    assert!(
        st.assigned == 4 && st.given_up == 2 && st.taken == 6 && st.member_id != 0,
        "{st:?}"
    );
    eprintln!("partitions of the SIGKILLed member taken over in {took:?}; {N} messages, none lost");
}

#[test]
fn an_interrupter_ends_a_blocked_poll_wait_at_once() {
    const TOPIC: &str = "rs.group.intr";
    let f = fixture(TOPIC);
    // Syncs 10 s apart: a wait not ended by the interrupt itself lasts that long.
    let slow = GroupOptions {
        sync_interval: Duration::from_secs(10),
        idle_sync: Duration::from_secs(10),
        ..GroupOptions::default()
    };
    let holder = f.bus.group_subscriber(TOPIC, "g", &slow).unwrap();
    let idle = f.bus.group_subscriber(TOPIC, "g", &slow).unwrap();
    assert_eq!(parts(&holder), "0,1,2,3");
    assert_eq!(parts(&idle), "", "joined while the other holds everything");
    for (what, mut m) in [("holding partitions", holder), ("holding nothing", idle)] {
        let stop = m.interrupter();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            let r = m.poll_wait(None).map(|v| v.is_some());
            tx.send(Instant::now()).unwrap();
            (r, m)
        });
        // Poll blocks while nothing arrives.
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "{what}: returned early"
        );
        let t0 = Instant::now();
        stop.interrupt();
        let at = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("poll_wait did not end");
        let (r, m) = t.join().unwrap();
        assert!(matches!(r, Err(Error::Interrupted)), "{what}: {r:?}");
        let d = at.saturating_duration_since(t0);
        assert!(
            d < Duration::from_millis(500),
            "{what}: ended {d:?} after the interrupt"
        );
        eprintln!("{what}: poll_wait ended {d:?} after the interrupt");
        drop(m);
    }
}
