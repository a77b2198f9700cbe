// A claim's bytes cannot be written after commit.
fn f(p: &mut shmbus::Publisher) {
    let mut c = p.claim(8).unwrap();
    let bytes = c.bytes_mut();
    c.commit(0, 0, 0).unwrap();
    bytes[0] = 1;
}

fn main() {
    let _ = f;
}
