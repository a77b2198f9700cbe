// A message built in a frame of a multi-frame claim cannot be written after commit.
use shmbus::market_capnp::quote;

fn f(p: &mut shmbus::Publisher) {
    let mut b = p.claim_batch(2, 64).unwrap();
    let mut q = b.init_root::<quote::Builder>(0);
    b.commit_messages(1, None, 0).unwrap();
    q.set_seq(1);
}

fn main() {
    let _ = f;
}
