//! Errors: every C status code maps to one variant through [`check`].
use std::ffi::{c_int, CStr};
use std::fmt;
use std::ops::Deref;

use shmbus_sys as sys;

/// Result of every fallible shmbus call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A shmbus failure. The hot-path outcomes (`Empty`, `BackPressured`, `TimedOut`, `Lapped`, `Interrupted`)
/// carry nothing and cost no allocation; the others carry a [`Detail`]: the library's
/// detailed message (`shmbus_last_error()` of the failing call) and the errno of the OS
/// call behind it, if any (`shmbus_last_errno()`; see [`Error::raw_os_error`]).
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Error {
    /// Nothing to read yet (only from raw polls; `poll` returns `Ok(None)` instead).
    Empty,
    /// The ring is full (policy `fail`, or the `block` wait ran out).
    BackPressured,
    /// A wait ran out.
    TimedOut,
    /// An untethered subscriber was overtaken by the producer: from a poll, the
    /// messages it had not read were overwritten (it continues at the producer's
    /// tail; sequence numbers show the gap); from [`View::check`](crate::View::check),
    /// the bytes just read may have been overwritten meanwhile (discard them).
    Lapped,
    /// A blocked wait was ended by an [`Interrupter`](crate::Interrupter).
    Interrupted,
    /// The message can never fit in this topic's frames.
    TooLarge(Detail),
    /// The ring holds bytes that are not a valid frame.
    Corrupt(Detail),
    /// A payload is not a valid Cap'n Proto message.
    Malformed(Detail),
    /// The handle was closed, or there is no open claim.
    Closed(Detail),
    /// A bad argument (a NUL in a name, a bad configuration ...).
    InvalidArgument(Detail),
    /// No such topic.
    NotFound(Detail),
    /// The topic exists with other settings, or the partition already has a producer.
    AlreadyExists(Detail),
    /// Another layout version or incompatible settings.
    Incompatible(Detail),
    /// The access list or file permissions refuse it.
    PermissionDenied(Detail),
    /// Every subscriber slot is taken.
    NoSlot(Detail),
    /// The daemon answered something unexpected.
    Protocol(Detail),
    /// No daemon at the socket.
    NotConnected(Detail),
    /// A bug in the library.
    Internal(Detail),
    /// Not available in this build or mode.
    Unsupported(Detail),
    /// An operating-system failure (`errno`).
    Os {
        /// The errno of the failed OS call.
        errno: i32,
        /// The library's message.
        detail: String,
    },
    /// A status code this crate does not know (a newer library).
    Unknown {
        /// The C status code.
        code: i32,
        /// The library's message.
        detail: String,
    },
    /// A Cap'n Proto error while building or reading a message.
    Capnp(capnp::Error),
}

impl Error {
    /// Builds the error for a non-zero status code of the C ABI.
    pub fn from_code(rc: c_int) -> Error {
        match rc {
            sys::SHMBUS_E_EMPTY => return Error::Empty,
            sys::SHMBUS_E_BACK_PRESSURED => return Error::BackPressured,
            sys::SHMBUS_E_TIMED_OUT => return Error::TimedOut,
            sys::SHMBUS_E_LAPPED => return Error::Lapped,
            sys::SHMBUS_E_INTERRUPTED => return Error::Interrupted,
            _ => {}
        }
        let msg = last_error();
        // SAFETY: shmbus_last_errno takes no arguments and only reads a thread-local int.
        let errno = unsafe { sys::shmbus_last_errno() };
        let d = Detail { msg, errno };
        match rc {
            sys::SHMBUS_E_TOO_LARGE => Error::TooLarge(d),
            sys::SHMBUS_E_CORRUPT => Error::Corrupt(d),
            sys::SHMBUS_E_MALFORMED => Error::Malformed(d),
            sys::SHMBUS_E_CLOSED => Error::Closed(d),
            sys::SHMBUS_E_INVALID_ARGUMENT => Error::InvalidArgument(d),
            sys::SHMBUS_E_NOT_FOUND => Error::NotFound(d),
            sys::SHMBUS_E_ALREADY_EXISTS => Error::AlreadyExists(d),
            sys::SHMBUS_E_INCOMPATIBLE => Error::Incompatible(d),
            sys::SHMBUS_E_PERMISSION_DENIED => Error::PermissionDenied(d),
            sys::SHMBUS_E_NO_SLOT => Error::NoSlot(d),
            sys::SHMBUS_E_PROTOCOL => Error::Protocol(d),
            sys::SHMBUS_E_NOT_CONNECTED => Error::NotConnected(d),
            sys::SHMBUS_E_INTERNAL => Error::Internal(d),
            sys::SHMBUS_E_UNSUPPORTED => Error::Unsupported(d),
            rc if rc < 0 && rc > -10000 => Error::Os {
                errno: -rc,
                detail: d.msg,
            },
            code => Error::Unknown {
                code,
                detail: d.msg,
            },
        }
    }

    /// The C ABI status code of this error (`-errno` for OS errors; Cap'n Proto
    /// errors report `SHMBUS_E_MALFORMED`).
    pub fn code(&self) -> i32 {
        match self {
            Error::Empty => sys::SHMBUS_E_EMPTY,
            Error::BackPressured => sys::SHMBUS_E_BACK_PRESSURED,
            Error::TimedOut => sys::SHMBUS_E_TIMED_OUT,
            Error::Lapped => sys::SHMBUS_E_LAPPED,
            Error::Interrupted => sys::SHMBUS_E_INTERRUPTED,
            Error::TooLarge(_) => sys::SHMBUS_E_TOO_LARGE,
            Error::Corrupt(_) => sys::SHMBUS_E_CORRUPT,
            Error::Malformed(_) | Error::Capnp(_) => sys::SHMBUS_E_MALFORMED,
            Error::Closed(_) => sys::SHMBUS_E_CLOSED,
            Error::InvalidArgument(_) => sys::SHMBUS_E_INVALID_ARGUMENT,
            Error::NotFound(_) => sys::SHMBUS_E_NOT_FOUND,
            Error::AlreadyExists(_) => sys::SHMBUS_E_ALREADY_EXISTS,
            Error::Incompatible(_) => sys::SHMBUS_E_INCOMPATIBLE,
            Error::PermissionDenied(_) => sys::SHMBUS_E_PERMISSION_DENIED,
            Error::NoSlot(_) => sys::SHMBUS_E_NO_SLOT,
            Error::Protocol(_) => sys::SHMBUS_E_PROTOCOL,
            Error::NotConnected(_) => sys::SHMBUS_E_NOT_CONNECTED,
            Error::Internal(_) => sys::SHMBUS_E_INTERNAL,
            Error::Unsupported(_) => sys::SHMBUS_E_UNSUPPORTED,
            Error::Os { errno, .. } => -errno,
            Error::Unknown { code, .. } => *code,
        }
    }

    /// The errno of the OS call behind this error, like
    /// [`std::io::Error::raw_os_error`]: for [`Error::Os`] its errno, for the others the
    /// one the library recorded (e.g. `ENOENT` or `ECONNREFUSED` behind
    /// [`Error::NotConnected`]); `None` when no OS call failed.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            _ => self.detail_ref().and_then(Detail::raw_os_error),
        }
    }

    fn detail_ref(&self) -> Option<&Detail> {
        match self {
            Error::TooLarge(d)
            | Error::Corrupt(d)
            | Error::Malformed(d)
            | Error::Closed(d)
            | Error::InvalidArgument(d)
            | Error::NotFound(d)
            | Error::AlreadyExists(d)
            | Error::Incompatible(d)
            | Error::PermissionDenied(d)
            | Error::NoSlot(d)
            | Error::Protocol(d)
            | Error::NotConnected(d)
            | Error::Internal(d)
            | Error::Unsupported(d) => Some(d),
            _ => None,
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Error::Empty
            | Error::BackPressured
            | Error::TimedOut
            | Error::Lapped
            | Error::Interrupted
            | Error::Capnp(_) => None,
            Error::Os { detail: d, .. } | Error::Unknown { detail: d, .. } => Some(d),
            _ => self.detail_ref().map(|d| d.message()),
        }
    }
}

/// The detail of an [`Error`]: the library's message, and the errno of the OS call
/// behind it (0 when none). Reads as the message (`Deref<Target = str>`, `Display`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detail {
    msg: String,
    errno: i32,
}

impl Detail {
    /// A detail with no OS call behind it.
    pub fn new(msg: impl Into<String>) -> Detail {
        Detail {
            msg: msg.into(),
            errno: 0,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// The errno of the OS call behind the error, `None` when there was none.
    pub fn raw_os_error(&self) -> Option<i32> {
        (self.errno != 0).then_some(self.errno)
    }
}

impl Deref for Detail {
    type Target = str;
    fn deref(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<String> for Detail {
    fn from(msg: String) -> Detail {
        Detail::new(msg)
    }
}

impl From<&str> for Detail {
    fn from(msg: &str) -> Detail {
        Detail::new(msg)
    }
}

/// Turns a C status code into a `Result`: the one place where codes become errors.
#[inline]
pub fn check(rc: c_int) -> Result<()> {
    if rc == sys::SHMBUS_OK {
        Ok(())
    } else {
        Err(Error::from_code(rc))
    }
}

/// Static text of a status code (`shmbus_strerror`).
pub fn strerror(rc: c_int) -> &'static str {
    // SAFETY: shmbus_strerror accepts any code and returns a pointer to static,
    // NUL-terminated text, never NULL (header contract).
    let p = unsafe { sys::shmbus_strerror(rc) };
    if p.is_null() {
        return "unknown shmbus status";
    }
    // SAFETY: p is non-NULL, NUL-terminated and lives for the whole program.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .unwrap_or("non-UTF-8 shmbus status text")
}

/// The detailed message of this thread's last failing call (`shmbus_last_error`).
pub fn last_error() -> String {
    // SAFETY: shmbus_last_error returns a pointer to this thread's NUL-terminated
    // message, never NULL; it stays valid until the next failing call on this thread,
    // and we copy it before making another call.
    let p = unsafe { sys::shmbus_last_error() };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: see above: non-NULL and NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Error::Capnp(e) = self {
            return write!(f, "Cap'n Proto: {e}");
        }
        f.write_str(strerror(self.code()))?;
        match self.detail() {
            Some(d) if !d.is_empty() => write!(f, ": {d}"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Capnp(e) => Some(e),
            _ => None,
        }
    }
}

impl From<capnp::Error> for Error {
    fn from(e: capnp::Error) -> Self {
        Error::Capnp(e)
    }
}
