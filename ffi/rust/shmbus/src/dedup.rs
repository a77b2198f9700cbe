//! The dedup window: a consumer drops what it handled already (docs/messaging.md,
//! "Dedup"), C++'s `shmbus::DedupWindow` through the C ABI.
use std::path::Path;
use std::ptr::{self, NonNull};

use shmbus_sys as sys;

use crate::error::{check, Error, Result};

/// A window's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// Duplicates caught by the sequence (a consumer restart).
    pub by_position: u64,
    /// Duplicates caught by (producer id, message id) (a producer's retry).
    pub by_id: u64,
    /// The last sequence recorded.
    pub position: u64,
    /// Ids in the window.
    pub size: u64,
}

/// Drops messages a consumer handled already: across its own restart, by the
/// partition sequence (a message at or below the last one recorded: a durable
/// subscriber gets again what it had not released), and across a producer's retry, by
/// (producer id, message id) among the last `capacity` recorded (message id 0 is not
/// checked; give the publisher a stable `producer_id`). [`commit`](Self::commit)
/// writes the window, the position and an application state to its file atomically:
/// a handler that keeps its side effects in that state is effectively-once.
///
/// ```no_run
/// # fn main() -> shmbus::Result<()> {
/// # let bus = shmbus::Bus::connect(None)?;
/// let mut w = shmbus::DedupWindow::open(4096, Some("/var/lib/app/orders.dedup".as_ref()))?;
/// let o = shmbus::SubscriberOptions { name: Some("orders".into()), ..Default::default() };
/// let mut sub = bus.subscriber("orders", &o)?;
/// while let Some(v) = sub.poll_wait(None)? {
///     if !w.seen(v.producer_id(), v.message_id(), v.sequence())? {
///         // apply v to the state ...
///         w.record(v.producer_id(), v.message_id(), v.sequence())?;
///         w.commit(Some(b"the state"))?; // one atomic write
///     }
///     v.release()?; // after the commit
/// }
/// # Ok(()) }
/// ```
pub struct DedupWindow {
    raw: NonNull<sys::shmbus_dedup_t>,
}

// SAFETY: the handle is used from one thread at a time (every call takes &mut self or
// &self on a !Sync type); moving the single owner keeps that.
unsafe impl Send for DedupWindow {}

impl Drop for DedupWindow {
    fn drop(&mut self) {
        // SAFETY: raw came from a successful open and is closed exactly once, here.
        unsafe { sys::shmbus_dedup_close(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for DedupWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupWindow")
            .field("stats", &self.stats())
            .finish()
    }
}

impl DedupWindow {
    /// Opens a window of `capacity` ids (0: 4096), persisted at `path` (None: in
    /// memory only) and loaded from it when it exists; a file that is not a valid
    /// state is `Err(Error::InvalidArgument)` naming it.
    pub fn open(capacity: usize, path: Option<&Path>) -> Result<DedupWindow> {
        let p = match path {
            Some(p) => {
                use std::os::unix::ffi::OsStrExt;
                Some(
                    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| {
                        Error::InvalidArgument(format!("NUL byte in {}", p.display()).into())
                    })?,
                )
            }
            None => None,
        };
        let mut out: *mut sys::shmbus_dedup_t = ptr::null_mut();
        // SAFETY: p (when given) is NUL-terminated; out is writable.
        check(unsafe {
            sys::shmbus_dedup_open(
                capacity,
                p.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
                &mut out,
            )
        })?;
        let raw = NonNull::new(out)
            .ok_or_else(|| Error::Internal("dedup open returned OK and NULL".into()))?;
        Ok(DedupWindow { raw })
    }

    /// Whether the message with these header fields was handled already (counted in
    /// the stats).
    pub fn seen(&mut self, producer_id: u32, message_id: u64, sequence: u64) -> Result<bool> {
        let mut s = 0;
        // SAFETY: raw is live and exclusively ours; s is writable.
        check(unsafe {
            sys::shmbus_dedup_seen(self.raw.as_ptr(), producer_id, message_id, sequence, &mut s)
        })?;
        Ok(s != 0)
    }

    /// Marks a message handled: the position becomes its sequence, its ids enter the
    /// window.
    pub fn record(&mut self, producer_id: u32, message_id: u64, sequence: u64) -> Result<()> {
        // SAFETY: raw is live and exclusively ours.
        check(unsafe {
            sys::shmbus_dedup_record(self.raw.as_ptr(), producer_id, message_id, sequence)
        })
    }

    /// Persists the window, the position and `state` (None: the state as it is)
    /// atomically; `Err(Error::Os)` when the file cannot be written.
    pub fn commit(&mut self, state: Option<&[u8]>) -> Result<()> {
        let (p, n) = state.map_or((ptr::null(), 0), |s| (s.as_ptr().cast(), s.len()));
        // SAFETY: raw is live and exclusively ours; state is valid for n bytes and
        // only read during the call.
        check(unsafe { sys::shmbus_dedup_commit(self.raw.as_ptr(), p, n) })
    }

    /// The application state, as loaded or last committed.
    pub fn app_state(&self) -> Vec<u8> {
        let mut d: *const u8 = ptr::null();
        let mut n = 0usize;
        // SAFETY: raw is live (DedupWindow is !Sync: no concurrent call); d and n are
        // writable; the bytes are copied before any other call.
        let rc = unsafe { sys::shmbus_dedup_app_state(self.raw.as_ptr(), &mut d, &mut n) };
        if rc != sys::SHMBUS_OK || d.is_null() || n == 0 {
            return Vec::new();
        }
        // SAFETY: the library hands out n readable bytes at d, valid until the next
        // commit or close (neither can happen during this borrow).
        unsafe { std::slice::from_raw_parts(d, n) }.to_vec()
    }

    /// Counters.
    pub fn stats(&self) -> DedupStats {
        let mut s = sys::shmbus_dedup_stats_t::default();
        // SAFETY: raw is live; s is writable.
        unsafe { sys::shmbus_dedup_stats(self.raw.as_ptr(), &mut s) };
        DedupStats {
            by_position: s.by_position,
            by_id: s.by_id,
            position: s.position,
            size: s.size,
        }
    }
}
