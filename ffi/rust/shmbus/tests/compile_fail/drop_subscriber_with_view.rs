// A subscriber cannot be closed (dropped) while a view is alive.
fn f(mut sub: shmbus::Subscriber) {
    let v = sub.poll().unwrap().unwrap();
    drop(sub);
    let _ = v.data();
}

fn main() {
    let _ = f;
}
