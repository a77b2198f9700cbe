//! Ending a wait blocked on a [`Subscriber`](crate::Subscriber) or
//! [`Publisher`](crate::Publisher) from another thread.
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use shmbus_sys as sys;

#[derive(Clone, Copy)]
enum Target {
    Sub(NonNull<sys::shmbus_subscriber_t>),
    Pub(NonNull<sys::shmbus_publisher_t>),
    Group(NonNull<sys::shmbus_group_subscriber_t>),
    Requester(NonNull<sys::shmbus_requester_t>),
    Responder(NonNull<sys::shmbus_responder_t>),
}

// SAFETY: the C ABI allows `shmbus_*_interrupt` from any thread, concurrently with
// any other call on the same handle except its close. The handle is only used under
// the mutex, and the owner takes it out (under the mutex) before closing it.
unsafe impl Send for Target {}

/// Ends a wait blocked on its subscriber, publisher or group member, from any thread.
///
/// Get one with [`Subscriber::interrupter`](crate::Subscriber::interrupter) or
/// [`Publisher::interrupter`](crate::Publisher::interrupter) before handing the
/// subscriber or publisher to the thread that waits. It is `Clone + Send + Sync`
/// and outlives its subscriber or publisher safely: once that is dropped,
/// [`interrupt`](Interrupter::interrupt) does nothing.
///
/// ```no_run
/// # fn main() -> shmbus::Result<()> {
/// # let bus = shmbus::Bus::open_direct("example")?;
/// let mut sub = bus.subscriber("md.quotes", &Default::default())?;
/// let stop = sub.interrupter();
/// let reader = std::thread::spawn(move || loop {
///     match sub.poll_wait(None) {
///         Ok(Some(v)) => drop(v),                       // handle the message
///         Ok(None) => {}
///         Err(shmbus::Error::Interrupted) => return,    // asked to stop
///         Err(e) => panic!("{e}"),
///     }
/// });
/// stop.interrupt();                                    // the wait ends at once
/// reader.join().unwrap();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Interrupter(Arc<Mutex<Option<Target>>>);

impl std::fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupter")
            .field("live", &self.lock().is_some())
            .finish()
    }
}

impl Interrupter {
    pub(crate) fn subscriber(raw: NonNull<sys::shmbus_subscriber_t>) -> Interrupter {
        Interrupter(Arc::new(Mutex::new(Some(Target::Sub(raw)))))
    }

    pub(crate) fn publisher(raw: NonNull<sys::shmbus_publisher_t>) -> Interrupter {
        Interrupter(Arc::new(Mutex::new(Some(Target::Pub(raw)))))
    }

    pub(crate) fn group(raw: NonNull<sys::shmbus_group_subscriber_t>) -> Interrupter {
        Interrupter(Arc::new(Mutex::new(Some(Target::Group(raw)))))
    }

    pub(crate) fn requester(raw: NonNull<sys::shmbus_requester_t>) -> Interrupter {
        Interrupter(Arc::new(Mutex::new(Some(Target::Requester(raw)))))
    }

    pub(crate) fn responder(raw: NonNull<sys::shmbus_responder_t>) -> Interrupter {
        Interrupter(Arc::new(Mutex::new(Some(Target::Responder(raw)))))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Target>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the wait blocked on the subscriber (`poll_wait`, `poll_batch`, `wait`)
    /// or publisher (a `claim`/`offer` waiting for space, a `wait_durable`) or group
    /// member (`poll_wait`) or requester (`await_reply`, `request`) or responder
    /// (`next`, `serve`) at once: it returns
    /// [`Error::Interrupted`](crate::Error::Interrupted). Called while nothing
    /// waits, it ends the next wait at once, one time. After the subscriber or
    /// publisher is dropped it does nothing.
    pub fn interrupt(&self) {
        let g = self.lock();
        // SAFETY: the handle is live while it is in the mutex (see `retire`), and the
        // C ABI allows interrupt concurrently with the owner's calls.
        match *g {
            Some(Target::Sub(h)) => unsafe {
                sys::shmbus_subscriber_interrupt(h.as_ptr());
            },
            Some(Target::Pub(h)) => unsafe {
                sys::shmbus_publisher_interrupt(h.as_ptr());
            },
            Some(Target::Group(h)) => unsafe {
                sys::shmbus_group_subscriber_interrupt(h.as_ptr());
            },
            Some(Target::Requester(h)) => unsafe {
                sys::shmbus_requester_interrupt(h.as_ptr());
            },
            Some(Target::Responder(h)) => unsafe {
                sys::shmbus_responder_interrupt(h.as_ptr());
            },
            None => {}
        }
    }

    /// Called by the owner before it closes the handle: later interrupts do nothing,
    /// and one running now finishes first (it holds the mutex).
    pub(crate) fn retire(&self) {
        *self.lock() = None;
    }
}
