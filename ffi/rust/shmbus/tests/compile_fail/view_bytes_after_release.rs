// ... nor after an explicit release.
fn f(sub: &mut shmbus::Subscriber) {
    let v = sub.poll().unwrap().unwrap();
    let data = v.data();
    v.release().unwrap();
    let _ = data.len();
}

fn main() {
    let _ = f;
}
