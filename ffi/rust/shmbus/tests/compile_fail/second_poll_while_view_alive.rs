// A second poll while a view is alive is refused (the view holds the subscriber).
fn f(sub: &mut shmbus::Subscriber) {
    let a = sub.poll().unwrap();
    let b = sub.poll().unwrap();
    drop((a, b));
}

fn main() {
    let _ = f;
}
