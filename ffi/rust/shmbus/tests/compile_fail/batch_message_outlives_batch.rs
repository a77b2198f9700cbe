// A message of a batch cannot outlive the batch.
fn f(sub: &mut shmbus::Subscriber) {
    let m = {
        let b = sub.poll_batch(8, None).unwrap();
        b.get(0).unwrap()
    };
    let _ = m.data();
}

fn main() {
    let _ = f;
}
