// The roots two message claims hand out can be swapped, but neither can be written
// after either claim ends: both borrow their claims.
use shmbus::market_capnp::quote;

fn f<'p>(a: &'p mut shmbus::Publisher, b: &'p mut shmbus::Publisher) {
    let mut ma = a.claim_message(64).unwrap();
    let mut mb = b.claim_message(64).unwrap();
    let mut qa = ma.init_root::<quote::Builder>();
    let mut qb = mb.init_root::<quote::Builder>();
    std::mem::swap(&mut qa, &mut qb);
    mb.abort().unwrap();
    qa.set_seq(1);
}

fn main() {
    let _ = f;
}
