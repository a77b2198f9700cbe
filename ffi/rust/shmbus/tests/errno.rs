//! The C ABI reports the errno of the OS call that failed: a failure with its own code
//! (`NotConnected`) still carries it (`raw_os_error`), and an OS failure is `Error::Os`.
use std::path::PathBuf;

use shmbus::{Bus, Error};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("shmbus-errno-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn failure<T>(r: Result<T, Error>) -> Error {
    match r {
        Ok(_) => panic!("the call succeeded"),
        Err(e) => e,
    }
}

#[test]
fn connect_to_a_missing_socket_is_not_connected_with_enoent() {
    let d = TempDir::new("enoent");
    let e = failure(Bus::connect(Some(&d.0.join("missing.sock"))));
    assert!(matches!(e, Error::NotConnected(_)), "{e:?}");
    assert_eq!(e.raw_os_error(), Some(libc_errno::ENOENT), "{e}");
}

#[test]
fn connect_to_a_path_longer_than_sun_path_is_enametoolong() {
    let d = TempDir::new("long");
    let e = failure(Bus::connect(Some(&d.0.join("s".repeat(150)))));
    assert!(matches!(e, Error::NotConnected(_)), "{e:?}");
    assert_eq!(e.raw_os_error(), Some(libc_errno::ENAMETOOLONG), "{e}");
}

#[test]
fn an_os_failure_is_minus_errno() {
    let d = TempDir::new("os");
    let e = failure(Bus::open_embedded(Some(&d.0.join("d".repeat(300)))));
    match &e {
        Error::Os { errno, .. } => assert_eq!(*errno, libc_errno::ENAMETOOLONG, "{e}"),
        _ => panic!("want Error::Os, got {e:?}"),
    }
    assert_eq!(e.code(), -libc_errno::ENAMETOOLONG);
    assert_eq!(e.raw_os_error(), Some(libc_errno::ENAMETOOLONG));
}

#[test]
fn a_bad_argument_carries_no_errno() {
    let e = failure(Bus::open_direct("bad/prefix"));
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert_eq!(e.raw_os_error(), None);
}

/// The Linux errno values used here (the crate does not depend on libc).
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ENAMETOOLONG: i32 = 36;
}
