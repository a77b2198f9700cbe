//! Consumer groups: the members of a named group split a topic's partitions.
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use capnp::message::ReaderOptions;
use capnp::serialize::NoAllocSliceSegments;
use shmbus_sys as sys;

use crate::bus::{cstring, timeout_ns, BusHandle, WaitStrategy};
use crate::error::{check, Error, Result};
use crate::interrupt::Interrupter;
use crate::subscriber::{default_reader_options, MessageReader};

/// Options of [`crate::Bus::group_subscriber`]; `Default` takes the library's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOptions {
    /// `true` (default): the partitions the member holds hold producers back, and
    /// its views are never overwritten before they are released. (An untethered
    /// member may be lapped: `Err(Error::Lapped)` once, then the producer's tail.)
    pub tethered: bool,
    /// How `poll_wait` waits for a message.
    pub wait: WaitStrategy,
    /// Hybrid wait: spin this long before sleeping.
    pub spin: Duration,
    /// How long to wait for a topic that is being created.
    pub open_timeout: Duration,
    /// The longest between two syncs with the daemon (default 10 ms): how soon a
    /// member sees a join, a leave or a death.
    pub sync_interval: Duration,
    /// While an assigned partition is still held by its previous owner: a sync per
    /// empty poll, at most this often (default 1 ms).
    pub idle_sync: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        let mut raw = sys::shmbus_group_options_t::default();
        // SAFETY: raw is a valid, writable options struct.
        unsafe { sys::shmbus_group_options_init(&mut raw) };
        GroupOptions {
            tethered: raw.tethered != 0,
            wait: WaitStrategy::from_raw(raw.wait),
            spin: Duration::from_nanos(raw.spin_ns.max(0) as u64),
            open_timeout: Duration::from_millis(raw.open_timeout_ms.max(0) as u64),
            sync_interval: Duration::from_nanos(raw.sync_interval_ns.max(0) as u64),
            idle_sync: Duration::from_nanos(raw.idle_sync_ns.max(0) as u64),
        }
    }
}

/// A member's counters and its view of the group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Messages received.
    pub received: u64,
    /// Syncs with the daemon.
    pub syncs: u64,
    /// Assignments that changed what this member should hold.
    pub rebalances: u64,
    /// Partitions taken.
    pub taken: u64,
    /// Partitions parked for another member.
    pub given_up: u64,
    /// Takes refused while the previous holder had not let go yet.
    pub take_retries: u64,
    /// Joins again after the daemon forgot the member (a daemon restart).
    pub rejoins: u64,
    /// The member's id in the group.
    pub member_id: u64,
    /// The generation of the last assignment this member saw.
    pub generation: u32,
    /// Partitions the daemon assigned to this member (some may not be held yet).
    pub assigned: u32,
}

/// One member of a consumer group (needs a daemon bus: [`crate::Bus::connect`] or
/// [`crate::Bus::open_embedded`]).
///
/// The members of a group split the topic's partitions (the daemon assigns them,
/// an even and sticky share per member); a join, a leave or a death (the daemon
/// sees it at once) moves partitions between them. On each partition it holds a
/// member reads as the durable subscriber `group:<group>`: the group's committed
/// position there is the last release, and it survives member deaths and daemon
/// restarts. Delivery is at least once per group and in order per partition: what a
/// member polled and had not released when it died is read again by the
/// partition's next holder.
///
/// The member talks to the daemon inside [`poll`](Self::poll) and
/// [`poll_wait`](Self::poll_wait) (a sync every `sync_interval`), so poll it
/// regularly. `Send`, not `Sync`; a blocked `poll_wait` can be ended from another
/// thread through its [`Interrupter`].
///
/// ```no_run
/// # fn main() -> shmbus::Result<()> {
/// let bus = shmbus::Bus::connect(None)?;
/// let mut m = bus.group_subscriber("orders", "billing", &Default::default())?;
/// while let Some(v) = m.poll_wait(Some(std::time::Duration::from_millis(100)))? {
///     println!("partition {}: {} bytes", v.partition(), v.data().len());
///     v.release()?; // commits it for the group
/// }
/// # Ok(()) }
/// ```
pub struct GroupSubscriber {
    raw: NonNull<sys::shmbus_group_subscriber_t>,
    _bus: Arc<BusHandle>,
    intr: Interrupter,
}

// SAFETY: the C ABI allows a group handle to be used from any thread, one thread at a
// time; moving the single owner keeps that. Views borrow the member mutably.
unsafe impl Send for GroupSubscriber {}

impl Drop for GroupSubscriber {
    fn drop(&mut self) {
        self.intr.retire();
        // SAFETY: raw came from a successful open and is closed exactly once, here; no
        // view is alive (views borrow the member) and no Interrupter can reach it.
        unsafe { sys::shmbus_group_subscriber_close(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for GroupSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSubscriber")
            .field("handle", &self.raw)
            .finish()
    }
}

impl GroupSubscriber {
    pub(crate) fn open(
        bus: Arc<BusHandle>,
        topic: &str,
        group: &str,
        opts: &GroupOptions,
    ) -> Result<Self> {
        let t = cstring(topic)?;
        let g = cstring(group)?;
        let mut raw = sys::shmbus_group_options_t::default();
        // SAFETY: raw is a valid, writable options struct; init sets `size`.
        unsafe { sys::shmbus_group_options_init(&mut raw) };
        raw.tethered = u32::from(opts.tethered);
        raw.wait = opts.wait.to_raw();
        raw.spin_ns = i64::try_from(opts.spin.as_nanos()).unwrap_or(i64::MAX);
        raw.open_timeout_ms = i32::try_from(opts.open_timeout.as_millis()).unwrap_or(i32::MAX);
        raw.sync_interval_ns = i64::try_from(opts.sync_interval.as_nanos()).unwrap_or(i64::MAX);
        raw.idle_sync_ns = i64::try_from(opts.idle_sync.as_nanos()).unwrap_or(i64::MAX);
        let mut out: *mut sys::shmbus_group_subscriber_t = ptr::null_mut();
        // SAFETY: the bus handle is live (Arc held); t, g, raw and out are valid for
        // the duration of the call.
        check(unsafe {
            sys::shmbus_group_subscriber_open(bus.as_ptr(), t.as_ptr(), g.as_ptr(), &raw, &mut out)
        })?;
        let raw = NonNull::new(out)
            .ok_or_else(|| Error::Internal("group subscriber open returned OK and NULL".into()))?;
        Ok(GroupSubscriber {
            raw,
            _bus: bus,
            intr: Interrupter::group(raw),
        })
    }

    /// A handle another thread can use to end this member's blocked `poll_wait` at
    /// once ([`Error::Interrupted`]); see [`Interrupter`].
    pub fn interrupter(&self) -> Interrupter {
        self.intr.clone()
    }

    fn view(
        &mut self,
        rc: std::ffi::c_int,
        v: sys::shmbus_group_view_t,
    ) -> Result<Option<GroupView<'_>>> {
        match rc {
            sys::SHMBUS_OK => Ok(Some(GroupView {
                g: self,
                raw: v,
                released: false,
            })),
            sys::SHMBUS_E_EMPTY | sys::SHMBUS_E_TIMED_OUT => Ok(None),
            rc => Err(Error::from_code(rc)),
        }
    }

    /// The next message of any held partition (round robin), or `None` when there is
    /// none yet. Never blocks long (a sync with the daemon is one round trip). The
    /// view borrows the member until it is released.
    pub fn poll(&mut self) -> Result<Option<GroupView<'_>>> {
        let mut v = sys::shmbus_group_view_t::default();
        // SAFETY: raw is live and exclusively ours (&mut self); v is writable.
        let rc = unsafe { sys::shmbus_group_subscriber_poll(self.raw.as_ptr(), &mut v) };
        self.view(rc, v)
    }

    /// The next message, waiting up to `timeout` (None: forever); `None` on timeout,
    /// `Err(Error::Interrupted)` when its [`Interrupter`] ended the wait.
    pub fn poll_wait(&mut self, timeout: Option<Duration>) -> Result<Option<GroupView<'_>>> {
        let mut v = sys::shmbus_group_view_t::default();
        // SAFETY: raw is live and exclusively ours; v is writable.
        let rc = unsafe {
            sys::shmbus_group_subscriber_poll_wait(self.raw.as_ptr(), &mut v, timeout_ns(timeout))
        };
        self.view(rc, v)
    }

    /// Talks to the daemon now; `true` when the partitions held changed.
    pub fn sync(&mut self) -> Result<bool> {
        let mut changed = 0;
        // SAFETY: raw is live and exclusively ours; changed is writable.
        check(unsafe { sys::shmbus_group_subscriber_sync(self.raw.as_ptr(), &mut changed) })?;
        Ok(changed != 0)
    }

    /// The partitions this member holds (reads) now, ascending.
    pub fn partitions(&self) -> Result<Vec<u32>> {
        let mut buf = vec![0u32; 64];
        loop {
            let mut n = 0usize;
            // SAFETY: raw is live (GroupSubscriber is !Sync: no concurrent call);
            // buf has buf.len() writable entries; n is writable.
            check(unsafe {
                sys::shmbus_group_subscriber_partitions(
                    self.raw.as_ptr(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut n,
                )
            })?;
            if n <= buf.len() {
                buf.truncate(n);
                return Ok(buf);
            }
            buf.resize(n, 0);
        }
    }

    /// Counters.
    pub fn stats(&self) -> Result<GroupStats> {
        let mut s = sys::shmbus_group_stats_t::default();
        // SAFETY: raw is live; s is writable; !Sync, so no concurrent use.
        check(unsafe { sys::shmbus_group_subscriber_stats(self.raw.as_ptr(), &mut s) })?;
        Ok(GroupStats {
            received: s.received,
            syncs: s.syncs,
            rebalances: s.rebalances,
            taken: s.taken,
            given_up: s.given_up,
            take_retries: s.take_retries,
            rejoins: s.rejoins,
            member_id: s.member_id,
            generation: s.generation,
            assigned: s.assigned,
        })
    }

    fn release_raw(&mut self, v: &sys::shmbus_group_view_t) -> Result<()> {
        // SAFETY: raw is live and exclusively ours; v is a view it handed out.
        check(unsafe { sys::shmbus_group_subscriber_release(self.raw.as_ptr(), v) })
    }
}

/// One message polled by a group member, and its partition. Borrows the member
/// mutably: dropping the view releases it (commits it for the group), or call
/// [`release`](GroupView::release) to see the status.
pub struct GroupView<'g> {
    g: &'g mut GroupSubscriber,
    raw: sys::shmbus_group_view_t,
    released: bool,
}

impl GroupView<'_> {
    /// The partition the message came from.
    pub fn partition(&self) -> u32 {
        self.raw.partition
    }
    /// The payload bytes, in place in the ring.
    pub fn data(&self) -> &[u8] {
        let v = &self.raw.view;
        if v.data.is_null() || v.size == 0 {
            return &[];
        }
        // SAFETY: the library hands out `size` readable bytes at `data`, valid until
        // the view is released or the member closed; the returned slice borrows this
        // view, which borrows the member mutably, so neither can happen meanwhile.
        unsafe { std::slice::from_raw_parts(v.data, v.size as usize) }
    }
    /// The frame's sequence number in its partition.
    pub fn sequence(&self) -> u64 {
        self.raw.view.sequence
    }
    /// The message id the producer gave at commit (0 when none).
    pub fn message_id(&self) -> u64 {
        self.raw.view.message_id
    }
    /// The Cap'n Proto type id of the payload's root (0 when not given).
    pub fn schema_id(&self) -> u64 {
        self.raw.view.schema_id
    }
    /// The producer id.
    pub fn producer_id(&self) -> u32 {
        self.raw.view.producer_id
    }
    /// CLOCK_MONOTONIC at commit.
    pub fn timestamp_ns(&self) -> u64 {
        self.raw.view.timestamp_ns
    }
    /// A zero-copy Cap'n Proto reader borrowed from this view, with the default
    /// limits ([`default_reader_options`]).
    pub fn reader(&self) -> Result<MessageReader<'_>> {
        self.reader_with(default_reader_options(self.data().len()))
    }
    /// Same with explicit traversal/nesting limits.
    pub fn reader_with(&self, opts: ReaderOptions) -> Result<MessageReader<'_>> {
        let mut slice = self.data();
        let segs = NoAllocSliceSegments::from_slice(&mut slice, opts)
            .map_err(|e| Error::Malformed(e.to_string().into()))?;
        Ok(capnp::message::Reader::new(segs, opts))
    }
    /// The message's envelope and its payload in place (see
    /// [`Message::envelope`](crate::Message::envelope)).
    pub fn envelope(&self) -> Result<Option<crate::Enveloped<'_>>> {
        crate::envelope::open(&self.raw.view)
    }
    /// Releases (commits) the view and everything polled before it on its partition.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        let raw = self.raw;
        self.g.release_raw(&raw)
    }
}

impl Drop for GroupView<'_> {
    fn drop(&mut self) {
        if !self.released {
            let raw = self.raw;
            let _ = self.g.release_raw(&raw);
        }
    }
}

impl std::fmt::Debug for GroupView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupView")
            .field("partition", &self.raw.partition)
            .field("sequence", &self.raw.view.sequence)
            .field("message_id", &self.raw.view.message_id)
            .field("len", &self.raw.view.size)
            .finish()
    }
}
