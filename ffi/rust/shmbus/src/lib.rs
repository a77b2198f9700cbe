//! Safe Rust API of shmbus: same-host publish/subscribe over shared-memory rings,
//! with Cap'n Proto messages built and read in place (no copy).
//!
//! ```no_run
//! use shmbus::{market_capnp::quote, Bus, TopicConfig};
//! # fn main() -> shmbus::Result<()> {
//! let bus = Bus::open_direct("example")?;
//! bus.create_topic("md.quotes", &TopicConfig::default())?;
//! let mut sub = bus.subscriber("md.quotes", &Default::default())?;
//! let mut publisher = bus.publisher("md.quotes", &Default::default())?;
//!
//! let mut m = publisher.claim_message(128)?;        // builder over ring memory
//! let mut q = m.init_root::<quote::Builder>();
//! q.set_seq(1);
//! m.commit_as::<quote::Reader>(1)?;                   // no copy
//!
//! if let Some(v) = sub.poll()? {                     // a view into the ring
//!     let r = v.reader()?;                           // no copy either
//!     let q: quote::Reader = r.get_root()?;
//!     assert_eq!(q.get_seq(), 1);
//! }                                                  // dropping the view releases it
//! # Ok(()) }
//! ```
//!
//! Lifetimes: a [`View`] or [`Batch`] borrows its [`Subscriber`] mutably, and every
//! byte slice or Cap'n Proto reader borrows the view, so nothing read from the ring
//! can be used after the view is released or the subscriber closed. A [`Claim`],
//! [`MessageClaim`] or [`ClaimBatch`] borrows its [`Publisher`] the same way, and
//! the Cap'n Proto builders built in its ring memory borrow the claim.
//!
//! Threads: [`Bus`] is `Send + Sync`; [`Publisher`] and [`Subscriber`] are `Send`
//! but not `Sync` (one thread at a time, as the C ABI requires).
//!
//! See `docs/bindings-rust.md` in the repository for the full guide.

// Every public item is documented (the compiler enforces it; tools/test also runs
// rustdoc with warnings as errors, for broken intra-doc links).
#![deny(missing_docs)]

#[cfg(feature = "tokio")]
pub mod async_sub;
mod bus;
mod dedup;
mod envelope;
mod error;
mod group;
pub mod handler;
#[cfg(feature = "tokio")]
mod handler_async;
mod interrupt;
mod publisher;
mod request;
mod schema;
mod subscriber;

#[cfg(feature = "tokio")]
pub use async_sub::{AsyncSubscriber, OwnedMessage};
pub use bus::{Bus, DurableConfig, Flush, Policy, TopicConfig, WaitStrategy};
pub use dedup::{DedupStats, DedupWindow};
pub use envelope::{Envelope, Enveloped, TraceContext, ENVELOPE_SCHEMA_ID};
pub use error::{check, last_error, strerror, Detail, Error, Result};
pub use group::{GroupOptions, GroupStats, GroupSubscriber, GroupView};
pub use handler::{
    BreakerPolicy, BreakerState, CircuitBreaker, HandlerBuilder, HandlerOptions, HandlerRunner,
    HandlerStats, Layer, Outcome, RetryPolicy, WorkerPool,
};
pub use interrupt::Interrupter;
pub use publisher::{
    Claim, ClaimBatch, Committed, MessageClaim, Publisher, PublisherOptions, PublisherStats,
    RingAllocator,
};
pub use request::{
    Reply, Request, Requester, RequesterOptions, RequesterStats, Responder, ResponderStats,
    Response, STATUS_FAILED,
};
pub use schema::{Schema, SchemaMode};
pub use subscriber::{
    default_reader_options, Batch, BatchIter, Message, MessageReader, Start, Subscriber,
    SubscriberOptions, SubscriberStats, View,
};

/// The raw bindings, for what the safe API does not cover.
pub use shmbus_sys as sys;

/// Version of the C ABI the linked library implements.
pub fn abi_version() -> u32 {
    // SAFETY: takes no arguments, returns a constant.
    unsafe { sys::shmbus_abi_version() }
}

/// Generated from `lib/schema/market.capnp` (Quote, Order, Side).
#[allow(clippy::all, clippy::pedantic, missing_docs, unused, unsafe_code)]
pub mod market_capnp {
    include!(concat!(env!("OUT_DIR"), "/market_capnp.rs"));
}

/// Generated from `lib/schema/envelope.capnp` (`DeadLetter`, `RetrySpec`,
/// `Envelope`, `TraceContext`): what the handler runner writes to `<topic>.dlq`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused, unsafe_code)]
pub mod envelope_capnp {
    include!(concat!(env!("OUT_DIR"), "/envelope_capnp.rs"));
}

/// Compile-time guarantees, checked by `cargo test` (doctests).
///
/// Send and Sync where true:
/// ```no_run
/// fn is_send<T: Send>() {}
/// fn is_sync<T: Sync>() {}
/// is_send::<shmbus::Bus>();
/// is_sync::<shmbus::Bus>();
/// is_send::<shmbus::Publisher>();
/// is_send::<shmbus::Subscriber>();
/// ```
/// What must *not* compile (a publisher or subscriber shared between threads, a view's
/// bytes used after its release, a second poll while a view is alive, a claim written
/// after commit, ...) is checked by `tests/compile_fail.rs` with `trybuild`: each
/// program must fail with exactly the error recorded beside it. (`compile_fail`
/// doctests would pass on any compile error, typos included: stable rustdoc does not
/// check their error codes.)
#[cfg(doctest)]
pub struct CompileChecks;
