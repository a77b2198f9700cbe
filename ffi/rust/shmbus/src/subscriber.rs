//! Subscribing: views into the ring, borrowed from the subscriber until released.
use std::ffi::CString;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use capnp::message::ReaderOptions;
use capnp::serialize::NoAllocSliceSegments;
use shmbus_sys as sys;

use crate::bus::{cstring, timeout_ns, BusHandle, WaitStrategy};
use crate::error::{check, Error, Result};
use crate::interrupt::Interrupter;

/// A zero-copy Cap'n Proto reader over ring memory.
pub type MessageReader<'a> = capnp::message::Reader<NoAllocSliceSegments<'a>>;

/// Where a new subscriber starts.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only messages published after it joins.
    Latest,
    /// Durable topics: the oldest retained message (replays the log, then goes on
    /// live; such a subscriber is untethered and has no name).
    Earliest,
    /// Durable topics: from the first message with sequence >= this.
    Sequence(u64),
    /// Durable topics: from this time (CLOCK_REALTIME ns since the epoch).
    Time(u64),
}

/// Options of [`crate::Bus::subscriber`]; `Default` takes the library's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberOptions {
    /// The partition to read (0-based).
    pub partition: u32,
    /// `true` (default): the subscriber holds producers back and its views are
    /// never overwritten before they are released.
    ///
    /// `false` (untethered): producers never wait for it, so a producer may lap
    /// it. A lapped subscriber gets `Err(Error::Lapped)` once from a poll (never
    /// the overwritten bytes), then continues at the producer's tail (sequence
    /// numbers show the gap). **A view of an untethered subscriber is ring memory
    /// the producer may overwrite while it is borrowed**: what is read from it may
    /// be torn. Cap'n Proto readers bound-check every access, so a torn message
    /// reads as wrong values or a decode error, never out of bounds; call
    /// [`Message::check`] / [`View::check`] after reading and discard what was
    /// read on `Err(Error::Lapped)`.
    pub tethered: bool,
    /// How `poll_wait`, `poll_batch` and `wait` wait for a message.
    pub wait: WaitStrategy,
    /// Hybrid wait: spin this long before sleeping.
    pub spin: Duration,
    /// How long to wait for a topic that is being created.
    pub open_timeout: Duration,
    /// Where to start: the newest message (`Latest`, the default) or, on durable topics, in the log.
    pub start: Start,
    /// Durable subscriber name.
    pub name: Option<String>,
    /// Checked by the daemon's schema registry against the topic's stored versions
    /// before the partition is opened (never stored): an incompatible one makes the
    /// open fail with [`Error::Incompatible`] naming the field. See
    /// [`crate::Schema::of`].
    pub schema: Option<crate::Schema>,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        let mut raw = sys::shmbus_subscriber_options_t::default();
        // SAFETY: raw is a valid, writable options struct.
        unsafe { sys::shmbus_subscriber_options_init(&mut raw) };
        SubscriberOptions {
            partition: raw.partition,
            tethered: raw.tethered != 0,
            wait: WaitStrategy::from_raw(raw.wait),
            spin: Duration::from_nanos(raw.spin_ns.max(0) as u64),
            open_timeout: Duration::from_millis(raw.open_timeout_ms.max(0) as u64),
            start: match raw.start {
                sys::SHMBUS_START_EARLIEST => Start::Earliest,
                sys::SHMBUS_START_SEQUENCE => Start::Sequence(raw.start_value),
                sys::SHMBUS_START_TIME => Start::Time(raw.start_value),
                _ => Start::Latest,
            },
            name: None,
            schema: None,
        }
    }
}

/// Counters of one subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Messages received.
    pub received: u64,
    /// Times a wait slept on the futex.
    pub waits: u64,
    /// Polls that found an invalid frame.
    pub corrupt: u64,
    /// The subscriber's read position (a byte offset in the ring's stream).
    pub position: u64,
}

/// Reads one partition ring in place.
///
/// `Send` but not `Sync`: the C ABI allows a subscriber handle to be used by one
/// thread at a time, and every call that moves the cursor takes `&mut self`.
pub struct Subscriber {
    raw: NonNull<sys::shmbus_subscriber_t>,
    _bus: Arc<BusHandle>,
    batch: Vec<sys::shmbus_view_t>,
    tethered: bool,
    intr: Interrupter,
}

// SAFETY: the C ABI allows a subscriber handle to be used from any thread, one thread
// at a time; moving the single owner keeps that. Views borrow the subscriber, so none
// can be left behind on the old thread. Deliberately not Sync.
unsafe impl Send for Subscriber {}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.intr.retire();
        // SAFETY: raw came from a successful open and is closed exactly once, here;
        // no view is alive (views and batches borrow the subscriber), and no
        // Interrupter can reach it any more (retired above).
        unsafe { sys::shmbus_subscriber_close(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("handle", &self.raw)
            .finish()
    }
}

impl Subscriber {
    pub(crate) fn open(bus: Arc<BusHandle>, topic: &str, opts: &SubscriberOptions) -> Result<Self> {
        if let Some(schema) = &opts.schema {
            crate::schema::present(&bus, topic, schema, sys::SHMBUS_SCHEMA_SUBSCRIBER)?;
        }
        let t = cstring(topic)?;
        let name: Option<CString> = opts.name.as_deref().map(cstring).transpose()?;
        let mut raw = sys::shmbus_subscriber_options_t::default();
        // SAFETY: raw is a valid, writable options struct; init sets `size`.
        unsafe { sys::shmbus_subscriber_options_init(&mut raw) };
        raw.partition = opts.partition;
        raw.tethered = u32::from(opts.tethered);
        raw.wait = opts.wait.to_raw();
        raw.spin_ns = i64::try_from(opts.spin.as_nanos()).unwrap_or(i64::MAX);
        raw.open_timeout_ms = i32::try_from(opts.open_timeout.as_millis()).unwrap_or(i32::MAX);
        (raw.start, raw.start_value) = match opts.start {
            Start::Latest => (sys::SHMBUS_START_LATEST, 0),
            Start::Earliest => (sys::SHMBUS_START_EARLIEST, 0),
            Start::Sequence(s) => (sys::SHMBUS_START_SEQUENCE, s),
            Start::Time(t) => (sys::SHMBUS_START_TIME, t),
        };
        raw.name = name.as_ref().map_or(ptr::null(), |n| n.as_ptr());
        let mut out: *mut sys::shmbus_subscriber_t = ptr::null_mut();
        // SAFETY: the bus handle is live (Arc held); t, raw (and the name it points
        // to) and out are valid for the duration of the call.
        check(unsafe { sys::shmbus_subscriber_open(bus.as_ptr(), t.as_ptr(), &raw, &mut out) })?;
        let raw = NonNull::new(out)
            .ok_or_else(|| Error::Internal("subscriber open returned OK and NULL".into()))?;
        Ok(Subscriber {
            raw,
            _bus: bus,
            batch: Vec::new(),
            tethered: opts.tethered,
            intr: Interrupter::subscriber(raw),
        })
    }

    /// A handle another thread can use to end this subscriber's blocked waits at
    /// once ([`Error::Interrupted`]); see [`Interrupter`].
    pub fn interrupter(&self) -> Interrupter {
        self.intr.clone()
    }

    /// Whether the subscriber holds producers back (see [`SubscriberOptions::tethered`]).
    pub fn is_tethered(&self) -> bool {
        self.tethered
    }

    /// The next message, or `None` when there is none yet. Never blocks. The view
    /// borrows the subscriber: no other poll can happen until it is released
    /// (dropped, or [`View::release`]).
    pub fn poll(&mut self) -> Result<Option<View<'_>>> {
        let mut v = sys::shmbus_view_t::default();
        // SAFETY: raw is live and exclusively ours (&mut self); v is writable.
        let rc = unsafe { sys::shmbus_subscriber_poll(self.raw.as_ptr(), &mut v) };
        match rc {
            sys::SHMBUS_OK => Ok(Some(View {
                sub: self,
                raw: v,
                released: false,
            })),
            sys::SHMBUS_E_EMPTY => Ok(None),
            rc => Err(Error::from_code(rc)),
        }
    }

    /// The next message, waiting up to `timeout` (None: forever); `None` on timeout.
    pub fn poll_wait(&mut self, timeout: Option<Duration>) -> Result<Option<View<'_>>> {
        let mut v = sys::shmbus_view_t::default();
        // SAFETY: raw is live and exclusively ours; v is writable.
        let rc = unsafe {
            sys::shmbus_subscriber_poll_wait(self.raw.as_ptr(), &mut v, timeout_ns(timeout))
        };
        match rc {
            sys::SHMBUS_OK => Ok(Some(View {
                sub: self,
                raw: v,
                released: false,
            })),
            sys::SHMBUS_E_TIMED_OUT | sys::SHMBUS_E_EMPTY => Ok(None),
            rc => Err(Error::from_code(rc)),
        }
    }

    /// Waits up to `timeout` (None: forever, zero: no wait) for at least one message,
    /// then takes up to `max` messages in one call. The batch is empty on timeout.
    /// Every message of the batch stays valid until the batch is dropped (or
    /// [`Batch::release`]d), which releases them all with one cursor store.
    pub fn poll_batch(&mut self, max: usize, timeout: Option<Duration>) -> Result<Batch<'_>> {
        let max = max.max(1);
        if self.batch.len() < max {
            self.batch.resize(max, sys::shmbus_view_t::default());
        }
        let mut n = 0usize;
        // SAFETY: raw is live and exclusively ours; self.batch holds at least `max`
        // writable views; n is writable.
        let rc = unsafe {
            sys::shmbus_subscriber_poll_batch(
                self.raw.as_ptr(),
                self.batch.as_mut_ptr(),
                max,
                timeout_ns(timeout),
                &mut n,
            )
        };
        match rc {
            sys::SHMBUS_OK => {}
            sys::SHMBUS_E_TIMED_OUT | sys::SHMBUS_E_EMPTY => n = 0,
            rc => return Err(Error::from_code(rc)),
        }
        Ok(Batch {
            n: n.min(max),
            sub: self,
            released: false,
        })
    }

    /// Waits until a message may be available: `true`, or `false` on timeout.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool> {
        // SAFETY: raw is live and exclusively ours.
        let rc = unsafe { sys::shmbus_subscriber_wait(self.raw.as_ptr(), timeout_ns(timeout)) };
        match rc {
            sys::SHMBUS_OK => Ok(true),
            sys::SHMBUS_E_TIMED_OUT => Ok(false),
            rc => Err(Error::from_code(rc)),
        }
    }

    /// Counters.
    pub fn stats(&self) -> Result<SubscriberStats> {
        let mut s = sys::shmbus_subscriber_stats_t::default();
        // SAFETY: raw is live; s is writable; Subscriber is !Sync so no concurrent use.
        check(unsafe { sys::shmbus_subscriber_stats(self.raw.as_ptr(), &mut s) })?;
        Ok(SubscriberStats {
            received: s.received,
            waits: s.waits,
            corrupt: s.corrupt,
            position: s.position,
        })
    }

    /// The next message as the raw view, waiting up to `timeout`; the caller
    /// releases it with `release_raw` (the handler runner: it holds a message across
    /// retries and may leave it unreleased).
    pub(crate) fn poll_wait_raw(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<sys::shmbus_view_t>> {
        let mut v = sys::shmbus_view_t::default();
        // SAFETY: raw is live and exclusively ours; v is writable.
        let rc = unsafe {
            sys::shmbus_subscriber_poll_wait(self.raw.as_ptr(), &mut v, timeout_ns(timeout))
        };
        match rc {
            sys::SHMBUS_OK => Ok(Some(v)),
            sys::SHMBUS_E_TIMED_OUT | sys::SHMBUS_E_EMPTY => Ok(None),
            rc => Err(Error::from_code(rc)),
        }
    }

    /// The raw handle (for a [`Message`] over a view from `poll_wait_raw`).
    pub(crate) fn raw_handle(&self) -> NonNull<sys::shmbus_subscriber_t> {
        self.raw
    }

    pub(crate) fn release_raw(&mut self, v: &sys::shmbus_view_t) -> Result<()> {
        // SAFETY: raw is live and exclusively ours; v is a view it handed out.
        check(unsafe { sys::shmbus_subscriber_release(self.raw.as_ptr(), v) })
    }

    fn release_all_raw(&mut self) -> Result<()> {
        // SAFETY: raw is live and exclusively ours.
        check(unsafe { sys::shmbus_subscriber_release_all(self.raw.as_ptr()) })
    }
}

/// The default reader limits for a payload of `len` bytes: traversal bounded by a
/// small multiple of the message size (no amplification), nesting 64.
pub fn default_reader_options(len: usize) -> ReaderOptions {
    let mut o = ReaderOptions::new();
    o.traversal_limit_in_words(Some((len / 8).saturating_mul(8).saturating_add(1024)))
        .nesting_limit(64);
    o
}

/// One message in the ring, read-only, borrowed for `'a` (at most as long as the
/// [`View`] or [`Batch`] it came from). `Copy`.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    raw: &'a sys::shmbus_view_t,
    sub: NonNull<sys::shmbus_subscriber_t>,
}

impl<'a> Message<'a> {
    /// A message over `raw`, a view polled from `sub` and not released while `'a`
    /// lasts (or a copy of one: then `data` points into the copy).
    pub(crate) fn from_raw(
        raw: &'a sys::shmbus_view_t,
        sub: NonNull<sys::shmbus_subscriber_t>,
    ) -> Message<'a> {
        Message { raw, sub }
    }

    /// The payload bytes, in place in the ring.
    pub fn data(&self) -> &'a [u8] {
        if self.raw.data.is_null() || self.raw.size == 0 {
            return &[];
        }
        // SAFETY: the library hands out `size` readable bytes at `data`, valid until
        // the view is released or the subscriber closed. 'a is at most the borrow of
        // the View/Batch that owns this view; releasing consumes or drops that owner,
        // and closing needs the subscriber, which it borrows mutably. A tethered
        // subscriber's bytes are never overwritten meanwhile; an untethered one's may
        // be (documented on SubscriberOptions::tethered: readers must check()).
        unsafe { std::slice::from_raw_parts(self.raw.data, self.raw.size as usize) }
    }
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.raw.size as usize
    }
    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.size == 0
    }
    /// The frame's sequence number in its partition (1, 2, ... per partition).
    pub fn sequence(&self) -> u64 {
        self.raw.sequence
    }
    /// The message id the producer gave at commit (0 when none).
    pub fn message_id(&self) -> u64 {
        self.raw.message_id
    }
    /// The Cap'n Proto type id of the payload's root (0 when not given).
    pub fn schema_id(&self) -> u64 {
        self.raw.schema_id
    }
    /// The producer id (the pid unless the publisher chose one).
    pub fn producer_id(&self) -> u32 {
        self.raw.producer_id
    }
    /// CLOCK_MONOTONIC at commit.
    pub fn timestamp_ns(&self) -> u64 {
        self.raw.timestamp_ns
    }
    /// Ring position of the frame.
    pub fn position(&self) -> u64 {
        self.raw.position
    }

    /// After reading this message in place: `Ok(())` if what was read is intact,
    /// `Err(Error::Lapped)` if the producer may have overwritten it meanwhile
    /// (untethered subscribers only: discard what was read). Always `Ok(())` for a
    /// tethered subscriber.
    pub fn check(&self) -> Result<()> {
        // SAFETY: sub is the live subscriber this message was polled from ('a is at
        // most the borrow of the View/Batch that borrows it); check only reads the
        // ring's cursors and the view, which is a valid view struct.
        check(unsafe { sys::shmbus_subscriber_check(self.sub.as_ptr(), self.raw) })
    }

    /// The message's envelope, read once and validated, and its payload in place
    /// (docs/messaging.md, "The envelope"); `Ok(None)` for a message that is not
    /// enveloped; `Err(Error::Malformed)` for an envelope's schema id over bytes that
    /// are not a valid envelope.
    pub fn envelope(&self) -> Result<Option<crate::Enveloped<'a>>> {
        crate::envelope::open(self.raw)
    }

    /// A Cap'n Proto reader over the payload, without copying, with the default
    /// limits ([`default_reader_options`]).
    pub fn reader(&self) -> Result<MessageReader<'a>> {
        self.reader_with(default_reader_options(self.len()))
    }

    /// Same with explicit traversal/nesting limits.
    pub fn reader_with(&self, opts: ReaderOptions) -> Result<MessageReader<'a>> {
        let mut slice = self.data();
        let segs = NoAllocSliceSegments::from_slice(&mut slice, opts)
            .map_err(|e| Error::Malformed(e.to_string().into()))?;
        Ok(capnp::message::Reader::new(segs, opts))
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("sequence", &self.raw.sequence)
            .field("message_id", &self.raw.message_id)
            .field("schema_id", &self.raw.schema_id)
            .field("len", &self.raw.size)
            .finish()
    }
}

/// One polled message. Borrows the subscriber mutably, so it cannot outlive its
/// release: dropping it releases it (and frees its ring space), or call
/// [`release`](View::release) to see the status.
pub struct View<'s> {
    sub: &'s mut Subscriber,
    raw: sys::shmbus_view_t,
    released: bool,
}

impl View<'_> {
    /// The message, borrowed from this view.
    pub fn message(&self) -> Message<'_> {
        Message {
            raw: &self.raw,
            sub: self.sub.raw,
        }
    }
    /// See [`Message::check`]: `Err(Error::Lapped)` if an untethered subscriber's
    /// view may have been overwritten while it was read.
    pub fn check(&self) -> Result<()> {
        self.message().check()
    }
    /// The payload bytes (see [`Message::data`]).
    pub fn data(&self) -> &[u8] {
        self.message().data()
    }
    /// The frame's sequence number in its partition.
    pub fn sequence(&self) -> u64 {
        self.raw.sequence
    }
    /// The message id the producer gave at commit.
    pub fn message_id(&self) -> u64 {
        self.raw.message_id
    }
    /// The Cap'n Proto type id of the payload's root (0 when not given).
    pub fn schema_id(&self) -> u64 {
        self.raw.schema_id
    }
    /// The producer id.
    pub fn producer_id(&self) -> u32 {
        self.raw.producer_id
    }
    /// When the producer committed the frame (CLOCK_REALTIME, ns; 0 with stamping off).
    pub fn timestamp_ns(&self) -> u64 {
        self.raw.timestamp_ns
    }
    /// A zero-copy Cap'n Proto reader borrowed from this view.
    pub fn reader(&self) -> Result<MessageReader<'_>> {
        self.message().reader()
    }
    /// See [`Message::envelope`].
    pub fn envelope(&self) -> Result<Option<crate::Enveloped<'_>>> {
        crate::envelope::open(&self.raw)
    }
    /// Releases the view (and everything polled before it).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        let raw = self.raw;
        self.sub.release_raw(&raw)
    }
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        if !self.released {
            let raw = self.raw;
            let _ = self.sub.release_raw(&raw);
        }
    }
}

impl std::fmt::Debug for View<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.message().fmt(f)
    }
}

/// Messages taken by one [`Subscriber::poll_batch`]. Borrows the subscriber; all
/// of them are released together when the batch is dropped.
pub struct Batch<'s> {
    sub: &'s mut Subscriber,
    n: usize,
    released: bool,
}

impl Batch<'_> {
    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.n
    }
    /// True when the batch holds none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Message `i`, borrowed from the batch.
    pub fn get(&self, i: usize) -> Option<Message<'_>> {
        let sub = self.sub.raw;
        self.sub.batch[..self.n]
            .get(i)
            .map(|raw| Message { raw, sub })
    }
    /// The messages in order.
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            inner: self.sub.batch[..self.n].iter(),
            sub: self.sub.raw,
        }
    }
    /// Releases every message of the batch.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        if self.n == 0 {
            return Ok(());
        }
        self.sub.release_all_raw()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.released && self.n > 0 {
            let _ = self.sub.release_all_raw();
        }
    }
}

/// Iterator over a [`Batch`].
pub struct BatchIter<'b> {
    inner: std::slice::Iter<'b, sys::shmbus_view_t>,
    sub: NonNull<sys::shmbus_subscriber_t>,
}

impl<'b> Iterator for BatchIter<'b> {
    type Item = Message<'b>;
    fn next(&mut self) -> Option<Message<'b>> {
        let sub = self.sub;
        self.inner.next().map(|raw| Message { raw, sub })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

impl<'b> IntoIterator for &'b Batch<'_> {
    type Item = Message<'b>;
    type IntoIter = BatchIter<'b>;
    fn into_iter(self) -> BatchIter<'b> {
        self.iter()
    }
}
