// Bytes of a view cannot be used after the view is released (dropped).
fn f(sub: &mut shmbus::Subscriber) {
    let data = {
        let v = sub.poll().unwrap().unwrap();
        v.data()
    };
    let _ = data.len();
}

fn main() {
    let _ = f;
}
