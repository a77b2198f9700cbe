//! An async subscriber for tokio (cargo feature `tokio`).
//!
//! A ring is read in place by one thread at a time, and its waits are futex waits,
//! which an async runtime cannot poll. So [`AsyncSubscriber`] moves the
//! [`Subscriber`] to a thread of its own that blocks in the library's wait (asleep:
//! not a busy thread), copies each message out (an [`OwnedMessage`]: the ring space
//! is released at once) and hands it to the task through a bounded
//! `tokio::sync::mpsc` channel. A full channel holds the thread back, and a
//! tethered subscriber's cursor then holds the producer back: back-pressure reaches
//! the producer as with a plain subscriber. Dropping the `AsyncSubscriber` stops the
//! thread at once (its wait is interrupted, see [`Interrupter`]) and closes the
//! subscriber.
//!
//! ```no_run
//! # async fn run() -> shmbus::Result<()> {
//! use shmbus::{market_capnp::quote, AsyncSubscriber, Bus};
//! let bus = Bus::connect(None)?;
//! let sub = bus.subscriber("md.quotes", &Default::default())?;
//! let mut sub = AsyncSubscriber::new(sub, 1024);
//! while let Some(m) = sub.recv().await {
//!     let m = m?;
//!     let r = m.reader()?;
//!     let q: quote::Reader = r.get_root()?;
//!     println!("{} {}", m.sequence(), q.get_seq());
//! }
//! # Ok(()) }
//! ```
use std::thread::JoinHandle;

use capnp::serialize::NoAllocSliceSegments;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::interrupt::Interrupter;
use crate::subscriber::{default_reader_options, MessageReader, Subscriber};

/// A message copied out of the ring, with its frame header fields.
#[derive(Debug, Clone)]
pub struct OwnedMessage {
    data: Vec<u8>,
    sequence: u64,
    message_id: u64,
    schema_id: u64,
    producer_id: u32,
    timestamp_ns: u64,
}

impl OwnedMessage {
    /// A copy of `m` (payload and header fields).
    pub(crate) fn copy_of(m: &crate::Message<'_>) -> OwnedMessage {
        OwnedMessage {
            data: m.data().to_vec(),
            sequence: m.sequence(),
            message_id: m.message_id(),
            schema_id: m.schema_id(),
            producer_id: m.producer_id(),
            timestamp_ns: m.timestamp_ns(),
        }
    }
    /// The payload bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// The payload, taken.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
    /// The frame's sequence number in its partition.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// The message id the producer gave at commit (0 when none).
    pub fn message_id(&self) -> u64 {
        self.message_id
    }
    /// The Cap'n Proto type id of the payload's root (0 when not given).
    pub fn schema_id(&self) -> u64 {
        self.schema_id
    }
    /// The producer id.
    pub fn producer_id(&self) -> u32 {
        self.producer_id
    }
    /// When the producer committed the frame (CLOCK_REALTIME, ns; 0 with stamping off).
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }
    /// A Cap'n Proto reader over the payload (no further copy), with the default
    /// limits ([`default_reader_options`]).
    pub fn reader(&self) -> Result<MessageReader<'_>> {
        let opts = default_reader_options(self.data.len());
        let mut slice = &self.data[..];
        let segs = NoAllocSliceSegments::from_slice(&mut slice, opts)
            .map_err(|e| Error::Malformed(e.to_string().into()))?;
        Ok(capnp::message::Reader::new(segs, opts))
    }
}

/// A [`Subscriber`] read from async code: see the [module docs](self).
pub struct AsyncSubscriber {
    rx: mpsc::Receiver<Result<OwnedMessage>>,
    stop: Interrupter,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AsyncSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSubscriber").finish_non_exhaustive()
    }
}

impl AsyncSubscriber {
    /// Moves `sub` to a reading thread; at most `capacity` messages (at least 1)
    /// wait in the channel for [`recv`](AsyncSubscriber::recv).
    pub fn new(sub: Subscriber, capacity: usize) -> AsyncSubscriber {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stop = sub.interrupter();
        let worker = std::thread::Builder::new()
            .name("shmbus-async-sub".into())
            .spawn(move || read_loop(sub, &tx))
            .expect("spawning the subscriber's reading thread");
        AsyncSubscriber {
            rx,
            stop,
            worker: Some(worker),
        }
    }

    /// The next message; `Some(Err(Error::Lapped))` once when an untethered subscriber
    /// was overtaken (it continues at the producer's tail); `Some(Err(e))` for any
    /// other failure, after which the stream ends (`None`).
    pub async fn recv(&mut self) -> Option<Result<OwnedMessage>> {
        self.rx.recv().await
    }
}

impl Drop for AsyncSubscriber {
    fn drop(&mut self) {
        // The thread is asleep in the ring's wait (interrupted) or blocked on a full
        // channel (closed): either way it returns, and drops the subscriber.
        self.rx.close();
        self.stop.interrupt();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

const BATCH: usize = 256;

fn read_loop(mut sub: Subscriber, tx: &mpsc::Sender<Result<OwnedMessage>>) {
    loop {
        if tx.is_closed() {
            return;
        }
        let batch = match sub.poll_batch(BATCH, None) {
            Ok(b) => b,
            Err(Error::Interrupted) => return, // the AsyncSubscriber was dropped
            Err(Error::Lapped) => {
                if tx.blocking_send(Err(Error::Lapped)).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut lapped = false;
        for m in &batch {
            out.push(OwnedMessage {
                data: m.data().to_vec(),
                sequence: m.sequence(),
                message_id: m.message_id(),
                schema_id: m.schema_id(),
                producer_id: m.producer_id(),
                timestamp_ns: m.timestamp_ns(),
            });
            // Untethered: what was copied may have been overwritten meanwhile.
            if m.check().is_err() {
                out.pop();
                lapped = true;
                break;
            }
        }
        // The copies are ours: the ring space goes back before the task sees them.
        drop(batch);
        for m in out {
            if tx.blocking_send(Ok(m)).is_err() {
                return;
            }
        }
        if lapped && tx.blocking_send(Err(Error::Lapped)).is_err() {
            return;
        }
    }
}
