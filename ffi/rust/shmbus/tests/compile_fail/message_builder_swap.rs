// Two message claims' Cap'n Proto builders cannot be swapped: a MessageClaim hands
// out no `&mut capnp::message::Builder`. (With one, claim `ma` would hold the builder
// over `mb`'s ring memory and write into it after `mb` was aborted.)
use shmbus::market_capnp::quote;

fn f<'p>(a: &'p mut shmbus::Publisher, b: &'p mut shmbus::Publisher) {
    let mut ma = a.claim_message(64).unwrap();
    let mut mb = b.claim_message(64).unwrap();
    std::mem::swap(ma.builder(), mb.builder());
    mb.abort().unwrap();
    ma.init_root::<quote::Builder>().set_seq(1);
}

fn main() {
    let _ = f;
}
