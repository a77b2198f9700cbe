//! Publishing: zero-copy claims, Cap'n Proto built in ring memory, copy paths.
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use capnp::message::{Allocator, HeapAllocator};
use capnp::traits::{FromPointerBuilder, FromPointerReader, HasTypeId, Owned, SetterInput};
use shmbus_sys as sys;

use crate::bus::{cstring, timeout_ns, BusHandle, WaitStrategy};
use crate::error::{check, Error, Result};
use crate::interrupt::Interrupter;

/// Options of [`crate::Bus::publisher`]; `Default` takes the library's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherOptions {
    /// The partition to publish into (0-based).
    pub partition: u32,
    /// 0: the pid.
    pub producer_id: u32,
    /// How to wait for space under policy `block`.
    pub wait: WaitStrategy,
    /// Longest wait for space under policy `block`.
    pub block_timeout: Duration,
    /// How long to wait for a topic that is being created.
    pub open_timeout: Duration,
    /// Presented to the daemon's schema registry before the partition is opened
    /// ([`crate::Bus::register_schema`]): a new compatible version is stored, an
    /// incompatible one makes the open fail with [`Error::Incompatible`] naming the
    /// type, the field and the rule. Build it with [`crate::Schema::of`].
    pub schema: Option<crate::Schema>,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        let mut raw = sys::shmbus_publisher_options_t::default();
        // SAFETY: raw is a valid, writable options struct.
        unsafe { sys::shmbus_publisher_options_init(&mut raw) };
        PublisherOptions {
            partition: raw.partition,
            producer_id: raw.producer_id,
            wait: WaitStrategy::from_raw(raw.wait),
            block_timeout: Duration::from_nanos(raw.block_timeout_ns.max(0) as u64),
            open_timeout: Duration::from_millis(raw.open_timeout_ms.max(0) as u64),
            schema: None,
        }
    }
}

impl PublisherOptions {
    fn to_raw(&self) -> sys::shmbus_publisher_options_t {
        let mut raw = sys::shmbus_publisher_options_t::default();
        // SAFETY: raw is a valid, writable options struct; init sets `size`.
        unsafe { sys::shmbus_publisher_options_init(&mut raw) };
        raw.partition = self.partition;
        raw.producer_id = self.producer_id;
        raw.wait = self.wait.to_raw();
        raw.block_timeout_ns = i64::try_from(self.block_timeout.as_nanos()).unwrap_or(i64::MAX);
        raw.open_timeout_ms = i32::try_from(self.open_timeout.as_millis()).unwrap_or(i32::MAX);
        raw
    }
}

/// Counters of one publisher. `builder_fallbacks` includes the Cap'n Proto messages
/// this crate had to copy because they outgrew their claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Messages published.
    pub published: u64,
    /// Claims that found the ring full (counted per bounded wait).
    pub back_pressured: u64,
    /// Times a claim waited for space under policy `block`.
    pub blocked_waits: u64,
    /// Messages copied because they outgrew their claim (Cap'n Proto builders included).
    pub builder_fallbacks: u64,
    /// Cursors of dead subscribers this publisher freed (direct mode).
    pub reclaimed_cursors: u64,
}

/// Writes messages into one partition ring.
///
/// `Send` (it may move to another thread) but not `Sync`: the C ABI allows a
/// publisher handle to be used by one thread at a time, and every call that touches
/// the ring takes `&mut self`.
pub struct Publisher {
    raw: NonNull<sys::shmbus_publisher_t>,
    _bus: Arc<BusHandle>,
    fallbacks: u64,
    intr: Interrupter,
    scratch: BatchScratch,
}

/// The vectors of the last [`ClaimBatch`], kept empty (with their capacity) for the
/// next one: a batch then allocates nothing of its own (a few KiB allocated per
/// batch made the allocator consolidate the small frees of the frames' builders).
#[derive(Default)]
struct BatchScratch {
    frames: Vec<sys::shmbus_claim_t>,
    uses: Vec<FrameUse>,
    words: Vec<u32>,
}

// SAFETY: between batches `frames` and `uses` are empty (a ClaimBatch takes them and
// gives them back cleared; a failed claim_n clears `frames` too) and `words` holds
// plain numbers, so a shared reference reaches no frame pointer and no builder. And
// none is ever shared: the scratch is private to a Publisher, which is not Sync. (This
// leaves the publisher handle the one reason Publisher is not Sync, the one
// tests/compile_fail/publisher_not_sync.rs names.)
unsafe impl Sync for BatchScratch {}

// SAFETY: the C ABI allows a publisher handle to be used from any thread, one thread
// at a time. Moving the owner to another thread keeps that: there is still exactly
// one owner. The batch scratch holds no builder and no claim then: a ClaimBatch
// borrows the publisher mutably and empties the vectors before giving them back. It
// is deliberately not Sync (NonNull already makes it !Sync).
unsafe impl Send for Publisher {}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.intr.retire();
        // SAFETY: raw came from a successful open and is closed exactly once, here
        // (no Interrupter can reach it any more: retired above).
        // No claim is open: a Claim borrows the publisher mutably, so it is gone.
        unsafe { sys::shmbus_publisher_close(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("handle", &self.raw)
            .finish()
    }
}

impl Publisher {
    pub(crate) fn open(bus: Arc<BusHandle>, topic: &str, opts: &PublisherOptions) -> Result<Self> {
        if let Some(schema) = &opts.schema {
            crate::schema::present(&bus, topic, schema, 0)?;
        }
        let t = cstring(topic)?;
        let raw_opts = opts.to_raw();
        let mut out: *mut sys::shmbus_publisher_t = ptr::null_mut();
        // SAFETY: the bus handle is live (we hold the Arc); t, raw_opts and out are
        // valid for the duration of the call.
        check(unsafe {
            sys::shmbus_publisher_open(bus.as_ptr(), t.as_ptr(), &raw_opts, &mut out)
        })?;
        let raw = NonNull::new(out)
            .ok_or_else(|| Error::Internal("publisher open returned OK and NULL".into()))?;
        Ok(Publisher {
            raw,
            _bus: bus,
            fallbacks: 0,
            intr: Interrupter::publisher(raw),
            scratch: BatchScratch::default(),
        })
    }

    /// A handle another thread can use to end a claim or offer blocked for space,
    /// or a [`Publisher::wait_durable`], at once ([`Error::Interrupted`]); see
    /// [`Interrupter`].
    pub fn interrupter(&self) -> Interrupter {
        self.intr.clone()
    }

    /// Durable topics: waits up to `timeout` (None: forever) until every message
    /// of this partition with sequence <= `seq` ([`Claim::sequence`]) is durable
    /// per the topic's flush policy. [`Error::TimedOut`] otherwise, or
    /// [`Error::Interrupted`] when its [`Publisher::interrupter`] fired.
    pub fn wait_durable(&mut self, seq: u64, timeout: Option<Duration>) -> Result<()> {
        // SAFETY: raw is live and used by this thread only (&mut self).
        check(unsafe {
            sys::shmbus_publisher_wait_durable(self.raw.as_ptr(), seq, timeout_ns(timeout))
        })
    }

    /// Durable topics: the highest sequence of this partition known durable (0 when
    /// no archiver ran), and the errno of the archiver's failing write or sync (0
    /// when healthy): why a durable topic back-pressures.
    pub fn durable_sequence(&self) -> Result<(u64, i32)> {
        let (mut seq, mut e) = (0u64, 0 as std::ffi::c_int);
        // SAFETY: raw is live; seq and e are writable for the call (a read-only query).
        check(unsafe {
            sys::shmbus_publisher_durable_sequence(self.raw.as_ptr(), &mut seq, &mut e)
        })?;
        Ok((seq, e))
    }

    fn claim_raw(&mut self, max_bytes: u32, wait: bool) -> Result<Claim<'_>> {
        let mut c = sys::shmbus_claim_t::default();
        // SAFETY: raw is live and used by this thread only (&mut self); c is writable.
        let rc = unsafe {
            if wait {
                sys::shmbus_publisher_claim(self.raw.as_ptr(), max_bytes, &mut c)
            } else {
                sys::shmbus_publisher_try_claim(self.raw.as_ptr(), max_bytes, &mut c)
            }
        };
        check(rc)?;
        self.claim_from(c)
    }

    /// The claim the library handed out in `c` (its claim call returned OK). A claim
    /// without data is the library's error: it is aborted, so no claim stays open.
    fn claim_from(&mut self, c: sys::shmbus_claim_t) -> Result<Claim<'_>> {
        let Some(data) = NonNull::new(c.data) else {
            // SAFETY: raw is live and used by this thread only (&mut self); the claim
            // call returned OK, so a claim is open.
            unsafe { sys::shmbus_publisher_abort(self.raw.as_ptr()) };
            return Err(Error::Internal(
                "claim returned OK and NULL data (claim aborted)".into(),
            ));
        };
        Ok(Claim {
            publisher: self,
            data,
            size: c.size,
            sequence: c.sequence,
            done: false,
        })
    }

    /// Claims room for `max_bytes` of payload; applies the topic's policy when the
    /// ring is full (`block`: waits up to the block timeout, then
    /// [`Error::BackPressured`]). Write into [`Claim::bytes_mut`], then commit.
    pub fn claim(&mut self, max_bytes: u32) -> Result<Claim<'_>> {
        self.claim_raw(max_bytes, true)
    }

    /// Like [`claim`](Self::claim), never waits.
    pub fn try_claim(&mut self, max_bytes: u32) -> Result<Claim<'_>> {
        self.claim_raw(max_bytes, false)
    }

    fn claim_batch_raw(&mut self, n: usize, max_bytes: u32, wait: bool) -> Result<ClaimBatch<'_>> {
        if n == 0 {
            return Err(Error::InvalidArgument("claim_batch of 0 frames".into()));
        }
        let mut frames = std::mem::take(&mut self.scratch.frames);
        frames.clear();
        frames.resize(n, sys::shmbus_claim_t::default());
        // SAFETY: raw is live and used by this thread only (&mut self); frames has n
        // writable entries.
        let rc = unsafe {
            if wait {
                sys::shmbus_publisher_claim_n(self.raw.as_ptr(), n, max_bytes, frames.as_mut_ptr())
            } else {
                sys::shmbus_publisher_try_claim_n(
                    self.raw.as_ptr(),
                    n,
                    max_bytes,
                    frames.as_mut_ptr(),
                )
            }
        };
        if let Err(e) = check(rc) {
            // (The library has no batch open after a failed claim_n.)
            frames.clear();
            self.scratch.frames = frames;
            return Err(e);
        }
        self.batch_from(frames)
    }

    /// The batch the library handed out in `frames` (its claim_n call returned OK).
    /// A frame without data is the library's error: the batch is aborted (dropping the
    /// ClaimBatch does it, and gives the vectors back), so no claim stays open.
    fn batch_from(&mut self, frames: Vec<sys::shmbus_claim_t>) -> Result<ClaimBatch<'_>> {
        let uses = std::mem::take(&mut self.scratch.uses);
        debug_assert!(uses.is_empty());
        let batch = ClaimBatch {
            publisher: self,
            frames,
            uses,
            done: false,
        };
        if let Some(i) = batch.frames.iter().position(|c| c.data.is_null()) {
            return Err(Error::Internal(
                format!("claim_n returned OK and NULL data for frame {i} (batch aborted)").into(),
            ));
        }
        Ok(batch)
    }

    /// Claims `n` frames of `max_bytes` payload each as one ring claim (SHMBUS_1.6;
    /// docs/protocol.md "Multi-frame claims"); the topic's policy applies as for
    /// [`claim`](Self::claim). Write each frame through [`ClaimBatch::frame_mut`], then
    /// [`ClaimBatch::commit`] publishes them together: readers see none of them before
    /// and all of them after. [`Error::TooLarge`] when the frames could never fit the
    /// ring (about half its capacity).
    pub fn claim_batch(&mut self, n: usize, max_bytes: u32) -> Result<ClaimBatch<'_>> {
        self.claim_batch_raw(n, max_bytes, true)
    }

    /// Like [`claim_batch`](Self::claim_batch), never waits.
    pub fn try_claim_batch(&mut self, n: usize, max_bytes: u32) -> Result<ClaimBatch<'_>> {
        self.claim_batch_raw(n, max_bytes, false)
    }

    /// Claims `max_bytes` and returns a Cap'n Proto builder whose first segment is
    /// the claimed ring memory past the 8-byte segment table: the message is built in
    /// place, [`MessageClaim::commit`] publishes it without a copy.
    pub fn claim_message(&mut self, max_bytes: u32) -> Result<MessageClaim<'_>> {
        let claim = self.claim(max_bytes)?;
        MessageClaim::new(claim)
    }

    /// Like [`claim_message`](Self::claim_message), never waits.
    pub fn try_claim_message(&mut self, max_bytes: u32) -> Result<MessageClaim<'_>> {
        let claim = self.try_claim(max_bytes)?;
        MessageClaim::new(claim)
    }

    /// Copy path: publishes `data` (one copy into the ring).
    pub fn offer(&mut self, data: &[u8], message_id: u64, schema_id: u64) -> Result<()> {
        // SAFETY: raw is live and exclusively ours; data is valid for len bytes and
        // only read during the call.
        check(unsafe {
            sys::shmbus_publisher_offer(
                self.raw.as_ptr(),
                data.as_ptr().cast(),
                data.len(),
                message_id,
                schema_id,
            )
        })
    }

    /// Publishes a copy of `payload` inside `env` (docs/messaging.md, "The envelope"):
    /// the frame's schema id is [`crate::ENVELOPE_SCHEMA_ID`], its message id `message_id`.
    /// `Err(Error::InvalidArgument)` for a text too long or with a NUL byte, or a trace
    /// context with a zero id.
    pub fn offer_enveloped(
        &mut self,
        env: &crate::Envelope,
        payload: &[u8],
        message_id: u64,
    ) -> Result<()> {
        let e = env.to_raw()?;
        // SAFETY: raw is live and exclusively ours; e is an initialised envelope
        // struct and payload is valid for len bytes, both only read during the call.
        check(unsafe {
            sys::shmbus_publisher_offer_enveloped(
                self.raw.as_ptr(),
                &e,
                payload.as_ptr().cast(),
                payload.len(),
                message_id,
            )
        })
    }

    /// Publishes messages packed back to back in `buf` (message i is `lens[i]` bytes)
    /// with one wake-up check at the end. Returns how many were published and the
    /// status of the first failure.
    pub fn offer_packed(&mut self, buf: &[u8], lens: &[u32]) -> (usize, Result<()>) {
        let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
        if total > buf.len() as u64 {
            return (
                0,
                Err(Error::InvalidArgument(
                    "lens add up to more than buf".into(),
                )),
            );
        }
        let mut published = 0usize;
        // SAFETY: raw is live and exclusively ours; buf holds at least sum(lens)
        // bytes (checked above), lens holds lens.len() entries; both only read.
        let rc = unsafe {
            sys::shmbus_publisher_offer_packed(
                self.raw.as_ptr(),
                buf.as_ptr().cast(),
                lens.as_ptr(),
                lens.len(),
                &mut published,
            )
        };
        (published, check(rc))
    }

    /// Counters (the library's, plus this crate's Cap'n Proto fallbacks).
    pub fn stats(&self) -> Result<PublisherStats> {
        let mut s = sys::shmbus_publisher_stats_t::default();
        // SAFETY: raw is live; s is writable. &self is enough: Publisher is !Sync,
        // so no other thread uses the handle concurrently.
        check(unsafe { sys::shmbus_publisher_stats(self.raw.as_ptr(), &mut s) })?;
        Ok(PublisherStats {
            published: s.published,
            back_pressured: s.back_pressured,
            blocked_waits: s.blocked_waits,
            builder_fallbacks: s.builder_fallbacks + self.fallbacks,
            reclaimed_cursors: s.reclaimed_cursors,
        })
    }

    /// Largest payload a claim may ask for.
    pub fn max_payload(&self) -> u32 {
        // SAFETY: raw is live; the call only reads the handle's settings.
        unsafe { sys::shmbus_publisher_max_payload(self.raw.as_ptr()) }
    }
}

/// An open claim: zeroed, writable ring memory, published by [`commit`](Claim::commit).
/// Dropping it without committing aborts it (readers skip it).
pub struct Claim<'p> {
    publisher: &'p mut Publisher,
    data: NonNull<u8>,
    size: u32,
    sequence: u64,
    done: bool,
}

impl Claim<'_> {
    /// The claimed bytes (zeroed by the library, 8-byte aligned).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the library hands out `size` writable bytes at `data`, valid until
        // commit/abort; both consume the claim, and the returned slice borrows it
        // mutably, so the slice cannot outlive the claim or alias another borrow.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.size as usize) }
    }

    /// Claimed size in bytes (may exceed what was asked for).
    pub fn len(&self) -> usize {
        self.size as usize
    }

    /// Whether the claim has no room at all.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The sequence number this message gets when committed.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Publishes the first `used` bytes.
    pub fn commit(mut self, used: u32, message_id: u64, schema_id: u64) -> Result<()> {
        self.done = true;
        // SAFETY: the publisher has this open claim; raw is live and exclusively ours.
        check(unsafe {
            sys::shmbus_publisher_commit(self.publisher.raw.as_ptr(), used, message_id, schema_id)
        })
    }

    /// Drops the claim (readers skip it).
    pub fn abort(mut self) -> Result<()> {
        self.done = true;
        // SAFETY: raw is live and exclusively ours; the claim is open.
        check(unsafe { sys::shmbus_publisher_abort(self.publisher.raw.as_ptr()) })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: raw is live and exclusively ours; the claim is still open.
            unsafe { sys::shmbus_publisher_abort(self.publisher.raw.as_ptr()) };
        }
    }
}

/// An open multi-frame claim ([`Publisher::claim_batch`]): `len()` frames of zeroed,
/// writable ring memory, published together. Either raw bytes per frame
/// ([`frame_mut`](ClaimBatch::frame_mut), then [`commit`](ClaimBatch::commit)) or a
/// Cap'n Proto message built in place per frame ([`init_root`](ClaimBatch::init_root),
/// then [`commit_messages`](ClaimBatch::commit_messages)):
///
/// ```no_run
/// use shmbus::market_capnp::quote;
/// # fn f(publisher: &mut shmbus::Publisher) -> shmbus::Result<()> {
/// let mut b = publisher.claim_batch(64, 64)?;     // 64 frames, one ring claim
/// let ids: Vec<u64> = (1..=64).collect();
/// for i in 0..b.len() {
///     let mut q = b.init_root::<quote::Builder>(i); // built in frame i's ring memory
///     q.set_seq(ids[i]);
/// }
/// b.commit_messages_as::<quote::Reader>(64, Some(&ids))?; // all 64 at once, no copy
/// # Ok(()) }
/// ```
///
/// Dropping it without committing aborts all of it (readers skip it). The builders
/// borrow the batch, so none can be used after the commit or abort.
pub struct ClaimBatch<'p> {
    publisher: &'p mut Publisher,
    frames: Vec<sys::shmbus_claim_t>,
    // Empty until a frame is handed out (frame_mut, init_root, get_root); then one
    // entry per frame.
    uses: Vec<FrameUse>,
    done: bool,
}

/// What a frame of a [`ClaimBatch`] has been used for.
enum FrameUse {
    /// Untouched: zeroed ring memory, as the library handed it out.
    Fresh,
    /// Handed out as bytes ([`ClaimBatch::frame_mut`]): may hold anything.
    Raw,
    /// A Cap'n Proto message built in place: the builder's first segment is the
    /// frame past its 8-byte segment table. (The allocator's lifetime is a marker
    /// only; the batch never hands the builder out, and drops it before the batch
    /// ends.)
    Message(capnp::message::Builder<RingAllocator<'static>>),
}

/// The words of `b`'s message when it is one segment at `c.data + 8` (so inside the
/// frame: the allocator hands out no more of the frame than it has); None otherwise.
fn frame_segment_words(
    b: &capnp::message::Builder<RingAllocator<'_>>,
    c: &sys::shmbus_claim_t,
) -> Option<u32> {
    let segs = b.get_segments_for_output();
    if segs.len() == 1 && !segs[0].is_empty() && ptr::eq(segs[0].as_ptr(), c.data.wrapping_add(8)) {
        u32::try_from(segs[0].len() / 8).ok()
    } else {
        None
    }
}

impl ClaimBatch<'_> {
    /// Number of frames claimed.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Always false: a batch has at least one frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frame i's bytes (zeroed by the library, 8-byte aligned). Panics when i is out
    /// of range. A message built in frame i ([`init_root`](Self::init_root)) is
    /// dropped: the frame holds bytes now (a later `init_root` starts over on a
    /// zeroed frame).
    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        let c = self.frames[i];
        *self.use_mut(i) = FrameUse::Raw;
        // SAFETY: the library hands out c.size writable bytes at c.data for each
        // frame, disjoint from the other frames, valid until commit/abort; both
        // consume the batch, and the slice borrows it mutably, so it can neither
        // outlive the batch nor alias another frame's slice or a builder's use of
        // the frame (a builder is only reachable through &mut self as well, and
        // frame i's builder is gone: dropped above, which never touches the frame).
        unsafe { std::slice::from_raw_parts_mut(c.data, c.size as usize) }
    }

    fn use_mut(&mut self, i: usize) -> &mut FrameUse {
        if self.uses.is_empty() {
            self.uses.resize_with(self.frames.len(), || FrameUse::Fresh);
        }
        &mut self.uses[i]
    }

    /// Frame i's builder, made on first use over the frame (zeroed first when it
    /// was handed out as bytes).
    fn message_mut(&mut self, i: usize) -> &mut capnp::message::Builder<RingAllocator<'static>> {
        let c = self.frames[i];
        let u = self.use_mut(i);
        if !matches!(u, FrameUse::Message(_)) {
            if matches!(u, FrameUse::Raw) {
                // SAFETY: c.data has c.size writable bytes of this open batch (see
                // frame_mut); no slice of them is alive (frame_mut's borrows
                // &mut self, as this call does). Zeroing restores what the library
                // handed out: the allocator's contract (zeroed segments) and the
                // clean commit's (nothing past the message written) both need it.
                unsafe { ptr::write_bytes(c.data, 0, c.size as usize) };
            }
            *u = FrameUse::Message(capnp::message::Builder::new(RingAllocator::over(
                c.data, c.size,
            )));
        }
        match u {
            FrameUse::Message(b) => b,
            _ => unreachable!("frame {i} holds a builder"),
        }
    }

    /// Initializes frame i's message with a root of type `T` (e.g.
    /// `market_capnp::quote::Builder`), built in place: the builder's first segment
    /// is the frame's ring memory past the 8-byte segment table, the rules of
    /// [`Publisher::claim_message`]. Calling it again for frame i starts a new root
    /// in the same message; building another frame meanwhile is fine (each frame
    /// keeps its message until the commit). Panics when i is out of range.
    ///
    /// A message that outgrows its frame goes on in heap memory; unlike a single
    /// [`MessageClaim`] it cannot be copied instead (the frames are one claim), so
    /// [`commit_messages`](Self::commit_messages) refuses it: check
    /// [`in_place`](Self::in_place), and size the frames for the largest message.
    pub fn init_root<'a, T: FromPointerBuilder<'a>>(&'a mut self, i: usize) -> T {
        self.message_mut(i).init_root()
    }

    /// Frame i's root as `T`: the one [`init_root`](Self::init_root) made, or a new
    /// one (of default values) when the frame has none yet. Panics when i is out of
    /// range.
    pub fn get_root<'a, T: FromPointerBuilder<'a>>(&'a mut self, i: usize) -> Result<T> {
        Ok(self.message_mut(i).get_root()?)
    }

    /// Whether frame i holds a message built so far as one segment inside the frame
    /// (what [`commit_messages`](Self::commit_messages) can publish). False for a
    /// frame without a message. Panics when i is out of range.
    pub fn in_place(&self, i: usize) -> bool {
        let c = &self.frames[i];
        match self.uses.get(i) {
            Some(FrameUse::Message(b)) => frame_segment_words(b, c).is_some(),
            _ => false,
        }
    }

    /// Room of each frame in bytes (may exceed what was asked for).
    pub fn frame_len(&self) -> usize {
        self.frames[0].size as usize
    }

    /// The sequence frame i gets when committed.
    pub fn sequence(&self, i: usize) -> u64 {
        self.frames[i].sequence
    }

    /// Publishes frames `0..used.len()` (frame i with `used[i]` bytes and message id
    /// `message_ids[i]`, or 0 when `message_ids` is `None`) together, with one
    /// timestamp; frames after them are skipped by readers. `used` longer than the
    /// batch, or a `used[i]` past a frame, aborts the batch. The raw-bytes commit:
    /// frames built with [`init_root`](Self::init_root) are published by
    /// [`commit_messages`](Self::commit_messages), which writes their segment tables.
    pub fn commit(
        mut self,
        used: &[u32],
        message_ids: Option<&[u64]>,
        schema_id: u64,
    ) -> Result<()> {
        self.done = true;
        if message_ids.is_some_and(|ids| ids.len() < used.len()) {
            // SAFETY: raw is live and exclusively ours; the batch is open.
            unsafe { sys::shmbus_publisher_abort(self.publisher.raw.as_ptr()) };
            return Err(Error::InvalidArgument(
                "commit: fewer message ids than frames".into(),
            ));
        }
        let ids = message_ids.map_or(ptr::null(), |ids| ids.as_ptr());
        // SAFETY: the publisher has this open batch; raw is live and exclusively ours;
        // used has used.len() entries and ids (when not null) at least as many; the
        // library reads them during the call only.
        check(unsafe {
            sys::shmbus_publisher_commit_n(
                self.publisher.raw.as_ptr(),
                used.len(),
                used.as_ptr(),
                ids,
                schema_id,
            )
        })
    }

    /// Publishes the Cap'n Proto messages of frames `0..k` together, in place (no
    /// copy), with one timestamp: frame i's committed length is its segment table
    /// (8 bytes) plus the words its message used, its message id `message_ids[i]`
    /// (0 when `None`). Frames `k..` are skipped by readers; `k` 0 aborts the batch.
    ///
    /// Every frame `0..k` must hold a message ([`init_root`](Self::init_root)) that
    /// stayed inside its frame ([`in_place`](Self::in_place)); otherwise nothing is
    /// published, the batch is aborted and the error names the first such frame:
    /// [`Error::TooLarge`] for a message that outgrew its frame,
    /// [`Error::InvalidArgument`] for a frame without a message, `k` past the batch
    /// or fewer message ids than `k`.
    pub fn commit_messages(
        mut self,
        k: usize,
        message_ids: Option<&[u64]>,
        schema_id: u64,
    ) -> Result<()> {
        self.done = true;
        let mut words = std::mem::take(&mut self.publisher.scratch.words);
        words.clear();
        let bad = if k > self.frames.len() {
            Some(Error::InvalidArgument(
                format!(
                    "commit_messages: k {k} is more than the {} frames claimed",
                    self.frames.len()
                )
                .into(),
            ))
        } else if message_ids.is_some_and(|ids| ids.len() < k) {
            Some(Error::InvalidArgument(
                "commit_messages: fewer message ids than frames".into(),
            ))
        } else {
            (0..k).find_map(|i| {
                let c = &self.frames[i];
                let b = match self.uses.get(i) {
                    Some(FrameUse::Message(b)) => b,
                    _ => {
                        return Some(Error::InvalidArgument(
                            format!("commit_messages: frame {i} holds no message (init_root)")
                                .into(),
                        ))
                    }
                };
                match frame_segment_words(b, c) {
                    Some(w) => {
                        words.push(w);
                        None
                    }
                    None => Some(Error::TooLarge(
                        format!(
                            "commit_messages: frame {i}'s message ({} words) outgrew its \
                             frame of {} bytes (8 of them the segment table)",
                            b.size_in_words(),
                            c.size
                        )
                        .into(),
                    )),
                }
            })
        };
        // The builders go first: after the commit their segments belong to readers.
        // (Dropping one never touches its ring segment, see RingAllocator; this only
        // keeps them from outliving the claim at all.)
        self.uses.clear();
        if let Some(e) = bad {
            self.publisher.scratch.words = words;
            // SAFETY: raw is live and exclusively ours; the batch is open.
            unsafe { sys::shmbus_publisher_abort(self.publisher.raw.as_ptr()) };
            return Err(e);
        }
        let ids = message_ids.map_or(ptr::null(), |ids| ids.as_ptr());
        // SAFETY: the publisher has this open batch; raw is live and exclusively ours.
        // Frame i's message was built at frames[i].data + 8 and is words[i] words long,
        // inside the frame (frame_segment_words); the library writes each segment
        // table and publishes 8 + 8 * words[i] bytes. words has k entries, ids (when
        // not null) at least k; both are read during the call only. next_n 0: no
        // claim after the commit, so next may be null.
        let rc = unsafe {
            sys::shmbus_publisher_commit_messages_n(
                self.publisher.raw.as_ptr(),
                k,
                words.as_ptr(),
                ids,
                schema_id,
                0,
                0,
                ptr::null_mut(),
            )
        };
        self.publisher.scratch.words = words;
        check(rc)
    }

    /// [`commit_messages`](Self::commit_messages) with `schema_id` = `T`'s Cap'n
    /// Proto type id.
    pub fn commit_messages_as<T: HasTypeId>(
        self,
        k: usize,
        message_ids: Option<&[u64]>,
    ) -> Result<()> {
        self.commit_messages(k, message_ids, T::TYPE_ID)
    }

    /// Drops the batch (readers skip all of it).
    pub fn abort(mut self) -> Result<()> {
        self.done = true;
        self.uses.clear();
        // SAFETY: raw is live and exclusively ours; the batch is open.
        check(unsafe { sys::shmbus_publisher_abort(self.publisher.raw.as_ptr()) })
    }
}

impl Drop for ClaimBatch<'_> {
    fn drop(&mut self) {
        // No builder outlives the batch (nor goes back to the publisher).
        self.uses.clear();
        if !self.done {
            // SAFETY: raw is live and exclusively ours; the batch is still open.
            unsafe { sys::shmbus_publisher_abort(self.publisher.raw.as_ptr()) };
        }
        // The vectors go back, empty, for the next batch.
        let s = &mut self.publisher.scratch;
        s.uses = std::mem::take(&mut self.uses);
        s.frames = std::mem::take(&mut self.frames);
        s.frames.clear();
    }
}

/// A Cap'n Proto segment allocator whose first segment is claimed ring memory and
/// whose further segments (only when a message outgrows its claim) come from the
/// heap. The ring segment is never written by the allocator (the library zeroed it)
/// and never touched again once handed back: after commit it belongs to readers.
///
/// Only a [`MessageClaim`] or a [`ClaimBatch`] makes one, and neither hands out the
/// message builder that owns it, only roots that borrow the claim.
pub struct RingAllocator<'c> {
    ring: *mut u8,
    ring_words: u32,
    first_done: bool,
    heap: HeapAllocator,
    _claim: PhantomData<&'c mut [u8]>,
}

impl RingAllocator<'_> {
    /// The allocator over a claimed payload of `size` bytes at `data` (zeroed,
    /// exclusively ours until commit/abort): the ring segment is `data + 8` (past the
    /// segment table the commit writes). A payload under 16 bytes or misaligned has
    /// no ring segment (every segment comes from the heap, and the message cannot be
    /// committed in place).
    fn over(data: *mut u8, size: u32) -> Self {
        let usable = size >= 16 && data as usize % 8 == 0;
        RingAllocator {
            // (A payload of at least 16 bytes here; wrapping_add needs no unsafe.)
            ring: if usable {
                data.wrapping_add(8)
            } else {
                ptr::null_mut()
            },
            ring_words: if usable { (size - 8) / 8 } else { 0 },
            first_done: false,
            heap: HeapAllocator::new(),
            _claim: PhantomData,
        }
    }
}

// SAFETY: allocate_segment returns either (a) the claimed ring memory: `ring_words`
// words, 8-byte aligned and zeroed (library contract of shmbus_publisher_claim and
// claim_n; a ClaimBatch frame handed out as bytes is zeroed again before a builder is
// made over it), exclusively writable by this claim until commit/abort, which cannot
// happen before the builder that owns this allocator is done building (MessageClaim
// owns both, and commits only after building; a ClaimBatch owns its frames' builders,
// hands out only roots that borrow it, and drops the builders before its commit or
// abort); or (b) what capnp's HeapAllocator returns, which upholds the contract
// itself. deallocate_segment passes heap segments back to the HeapAllocator and
// leaves the ring segment alone.
unsafe impl Allocator for RingAllocator<'_> {
    fn allocate_segment(&mut self, minimum_size: u32) -> (NonNull<u8>, u32) {
        let first = !self.first_done;
        self.first_done = true;
        if first && minimum_size <= self.ring_words {
            if let Some(p) = NonNull::new(self.ring) {
                return (p, self.ring_words);
            }
        }
        self.heap.allocate_segment(minimum_size)
    }

    unsafe fn deallocate_segment(&mut self, ptr: NonNull<u8>, word_size: u32, words_used: u32) {
        if ptr.as_ptr() == self.ring {
            return;
        }
        // SAFETY: ptr is not the ring segment, so it came from self.heap's
        // allocate_segment with this word_size; the caller guarantees it is
        // deallocated once and words_used <= word_size.
        unsafe { self.heap.deallocate_segment(ptr, word_size, words_used) }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// True when the message outgrew its claim and was copied (counted in
    /// [`PublisherStats::builder_fallbacks`]).
    pub fell_back: bool,
}

/// A claim with a Cap'n Proto builder over it. Build with
/// [`init_root`](Self::init_root) (or [`get_root`](Self::get_root),
/// [`set_root`](Self::set_root)), then [`commit`](Self::commit). Dropping it
/// without committing aborts the claim.
///
/// The builder itself is never handed out: what these methods return borrows the
/// claim, so nothing built in the claim's ring memory can be written after the
/// commit or abort.
pub struct MessageClaim<'p> {
    // Field order matters only for clarity: the builder never touches ring memory
    // when dropped (see RingAllocator), so it may go before or after the claim.
    builder: capnp::message::Builder<RingAllocator<'p>>,
    claim: Claim<'p>,
}

impl<'p> MessageClaim<'p> {
    fn new(claim: Claim<'p>) -> Result<Self> {
        if claim.size < 16 || claim.data.as_ptr() as usize % 8 != 0 {
            return Err(Error::Internal(
                "claim too small or misaligned for a message".into(),
            ));
        }
        let alloc = RingAllocator::over(claim.data.as_ptr(), claim.size);
        Ok(MessageClaim {
            builder: capnp::message::Builder::new(alloc),
            claim,
        })
    }

    // The claim never hands out its `capnp::message::Builder` (by `&mut`): two claims'
    // builders could then be swapped (`std::mem::swap`), and one claim would build in
    // the other's ring memory after that one was committed or aborted. What it hands
    // out borrows the claim (`&mut self`), so it is gone before the claim ends
    // (tests/compile_fail/message_builder_swap.rs, message_root_swap_after_abort.rs).

    /// Initializes the root as `T` (e.g. `market_capnp::quote::Builder`), built in the
    /// claimed ring memory. The root borrows the claim: it cannot be used after
    /// [`commit`](Self::commit) or [`abort`](Self::abort).
    pub fn init_root<'a, T: FromPointerBuilder<'a>>(&'a mut self) -> T {
        self.builder.init_root()
    }

    /// Initializes the root as a list or blob `T` of `length` elements (e.g.
    /// `capnp::data::Builder`); otherwise as [`init_root`](Self::init_root).
    pub fn initn_root<'a, T: FromPointerBuilder<'a>>(&'a mut self, length: u32) -> T {
        self.builder.initn_root(length)
    }

    /// The root as `T`: the one [`init_root`](Self::init_root) or
    /// [`set_root`](Self::set_root) made, or a new one (of default values) when there
    /// is none yet. Borrows the claim, as `init_root`.
    pub fn get_root<'a, T: FromPointerBuilder<'a>>(&'a mut self) -> Result<T> {
        Ok(self.builder.get_root()?)
    }

    /// The root as a reader `T` (e.g. `market_capnp::quote::Reader`) of what was built
    /// so far; borrows the claim.
    pub fn get_root_as_reader<'a, T: FromPointerReader<'a>>(&'a self) -> Result<T> {
        Ok(self.builder.get_root_as_reader()?)
    }

    /// Sets the root to a copy of `value` (e.g. a `market_capnp::quote::Reader` of
    /// another message), copied into the claimed ring memory while it fits.
    pub fn set_root<T: Owned>(&mut self, value: impl SetterInput<T>) -> Result<()> {
        Ok(self.builder.set_root(value)?)
    }

    /// Words of the message built so far (all segments; without the segment table).
    pub fn size_in_words(&self) -> usize {
        self.builder.size_in_words()
    }

    /// The sequence number this message gets.
    pub fn sequence(&self) -> u64 {
        self.claim.sequence
    }

    /// Whether the message built so far is one segment inside the claim.
    pub fn in_place(&self) -> bool {
        let segs = self.builder.get_segments_for_output();
        segs.len() == 1 && ptr::eq(segs[0].as_ptr(), self.ring_segment())
    }

    fn ring_segment(&self) -> *const u8 {
        // SAFETY: the claim is at least 16 bytes (checked in new).
        unsafe { self.claim.data.as_ptr().add(8) }
    }

    /// Publishes the message: in place when it fitted the claim (one call, no copy);
    /// otherwise the claim is aborted and the message copied (a counted fallback).
    pub fn commit(mut self, message_id: u64, schema_id: u64) -> Result<Committed> {
        let segs = self.builder.get_segments_for_output();
        if segs.is_empty() {
            return Err(Error::InvalidArgument(
                "commit of a message without a root".into(),
            ));
        }
        if segs.len() == 1 && ptr::eq(segs[0].as_ptr(), self.ring_segment()) {
            let words = (segs[0].len() / 8) as u32;
            self.claim.done = true;
            // SAFETY: the publisher holds this open claim; the segment was built at
            // claim.data + 8 and is `words` words long, inside the claim. The builder
            // is not used after this (we own it and drop it untouched).
            return check(unsafe {
                sys::shmbus_publisher_commit_message(
                    self.claim.publisher.raw.as_ptr(),
                    words,
                    message_id,
                    schema_id,
                )
            })
            .map(|()| Committed { fell_back: false });
        }
        let flat = capnp::serialize::write_message_to_words(&self.builder);
        self.claim.done = true;
        let p = &mut *self.claim.publisher;
        // SAFETY: the claim is open and ours; aborting it leaves padding readers skip.
        check(unsafe { sys::shmbus_publisher_abort(p.raw.as_ptr()) })?;
        p.fallbacks += 1;
        p.offer(&flat, message_id, schema_id)?;
        Ok(Committed { fell_back: true })
    }

    /// Publishes with `schema_id` = `T`'s Cap'n Proto type id.
    pub fn commit_as<T: HasTypeId>(self, message_id: u64) -> Result<Committed> {
        self.commit(message_id, T::TYPE_ID)
    }

    /// Drops the claim (readers skip it).
    pub fn abort(self) -> Result<()> {
        let MessageClaim { builder, claim } = self;
        drop(builder);
        claim.abort()
    }
}

#[cfg(test)]
mod tests {
    //! Error paths of the claim calls that the library cannot be made to take: a claim
    //! call that returns OK with a frame without data. The claim the library really
    //! opened is handed to the code that turns it into a `Claim`/`ClaimBatch`, with
    //! its data pointer cleared.
    use super::*;
    use crate::{Bus, SubscriberOptions, TopicConfig};

    /// A bus of its own whose segments are removed afterwards.
    struct TestBus {
        bus: Bus,
        prefix: String,
    }

    impl TestBus {
        fn new(name: &str) -> TestBus {
            let prefix = format!("rs-unit-{name}-{}", std::process::id());
            let bus = Bus::open_direct(&prefix).expect("open_direct");
            bus.create_topic("t", &TopicConfig::default())
                .expect("create_topic");
            TestBus { bus, prefix }
        }
    }

    impl Drop for TestBus {
        fn drop(&mut self) {
            let mine = format!("{}.", self.prefix);
            for e in std::fs::read_dir("/dev/shm")
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with(&mine) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Whether the library has a claim or batch open on `p`: aborting finds one.
    /// (It aborts it.)
    fn claim_open(p: &mut Publisher) -> bool {
        // SAFETY: raw is live and used by this thread only; no Claim or ClaimBatch
        // of p is alive (&mut p).
        let rc = unsafe { sys::shmbus_publisher_abort(p.raw.as_ptr()) };
        assert!(
            rc == sys::SHMBUS_OK || rc == sys::SHMBUS_E_CLOSED,
            "abort returned {rc}"
        );
        rc == sys::SHMBUS_OK
    }

    /// The next message `sub` holds: its message id.
    fn next_id(sub: &mut crate::Subscriber) -> Option<u64> {
        sub.poll().expect("poll").map(|v| v.message_id())
    }

    #[test]
    fn a_claim_returned_without_data_is_aborted() {
        let t = TestBus::new("claim-null");
        let mut sub = t
            .bus
            .subscriber("t", &SubscriberOptions::default())
            .unwrap();
        let mut p = t.bus.publisher("t", &PublisherOptions::default()).unwrap();
        let mut c = sys::shmbus_claim_t::default();
        // SAFETY: raw is live and used by this thread only; c is writable.
        let rc = unsafe { sys::shmbus_publisher_try_claim(p.raw.as_ptr(), 64, &mut c) };
        assert_eq!(rc, sys::SHMBUS_OK);
        c.data = ptr::null_mut();
        match p.claim_from(c) {
            Err(Error::Internal(d)) => assert!(d.contains("aborted"), "{d}"),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("a claim without data"),
        }
        assert!(!claim_open(&mut p), "the claim is left open");
        // The publisher goes on: the aborted claim is skipped by readers.
        p.offer(b"next", 7, 0).unwrap();
        assert_eq!(next_id(&mut sub), Some(7));
        assert_eq!(next_id(&mut sub), None);
    }

    #[test]
    fn a_batch_returned_with_a_frame_without_data_is_aborted() {
        let t = TestBus::new("batch-null");
        let mut sub = t
            .bus
            .subscriber("t", &SubscriberOptions::default())
            .unwrap();
        let mut p = t.bus.publisher("t", &PublisherOptions::default()).unwrap();
        let mut frames = vec![sys::shmbus_claim_t::default(); 4];
        // SAFETY: raw is live and used by this thread only; frames has 4 writable
        // entries.
        let rc = unsafe {
            sys::shmbus_publisher_try_claim_n(p.raw.as_ptr(), 4, 64, frames.as_mut_ptr())
        };
        assert_eq!(rc, sys::SHMBUS_OK);
        frames[2].data = ptr::null_mut();
        match p.batch_from(frames) {
            Err(Error::Internal(d)) => assert!(d.contains("frame 2"), "{d}"),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("a batch with a frame without data"),
        }
        assert!(!claim_open(&mut p), "the batch is left open");
        // The batch's vectors went back to the publisher for the next batch.
        assert!(p.scratch.frames.capacity() >= 4);
        assert!(p.scratch.frames.is_empty() && p.scratch.uses.is_empty());
        // The publisher goes on: the aborted frames are skipped by readers.
        let mut b = p.try_claim_batch(2, 64).unwrap();
        b.frame_mut(0)[0] = 1;
        b.frame_mut(1)[0] = 2;
        b.commit(&[1, 1], Some(&[8, 9]), 0).unwrap();
        assert_eq!(next_id(&mut sub), Some(8));
        assert_eq!(next_id(&mut sub), Some(9));
        assert_eq!(next_id(&mut sub), None);
    }
}
