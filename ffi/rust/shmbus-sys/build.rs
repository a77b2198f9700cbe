//! Build script of shmbus-sys.
//!
//! 1. Layout probe: compiles `layout/probe.c` against the real `shmbus.h` with the
//!    system C compiler (`$CC`, default `cc`), runs it, and writes the sizes, offsets
//!    and constants it reports to `$OUT_DIR/c_layout.rs` for `tests/layout.rs`.
//!    Header directory: `$SHMBUS_INCLUDE_DIR`, else pkg-config's, else the repository's
//!    `ffi/include`.
//! 2. Linking the C ABI library, in this order:
//!    - `SHMBUS_LIB_DIR=/path/with/the/library` (e.g. `<meson build dir>/ffi`), library
//!      name `$SHMBUS_LIB_NAME` (default `shmbus_c`, i.e. `libshmbus_c.so`);
//!    - else `pkg-config --libs $SHMBUS_PKG_CONFIG_NAME` (default `shmbus_c`; set
//!      `PKG_CONFIG_PATH=<build dir>/meson-uninstalled` to use an uninstalled build).
//!
//! The directory is exported to dependents as `DEP_SHMBUS_LIB_DIR` so that their
//! build scripts can add an rpath (the `shmbus` crate does, for its tests/examples).
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_LIB: &str = "shmbus_c";
const DEFAULT_PKG: &str = "shmbus_c";

fn pkg_config(args: &[&str], pkg: &str) -> Option<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg(pkg)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    for v in [
        "SHMBUS_LIB_DIR",
        "SHMBUS_LIB_NAME",
        "SHMBUS_INCLUDE_DIR",
        "SHMBUS_PKG_CONFIG_NAME",
        "PKG_CONFIG_PATH",
        "CC",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=layout/probe.c");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let pkg = env::var("SHMBUS_PKG_CONFIG_NAME").unwrap_or_else(|_| DEFAULT_PKG.into());

    // ---- header -------------------------------------------------------------
    let include_dir = env::var("SHMBUS_INCLUDE_DIR")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            let flags = pkg_config(&["--cflags-only-I"], &pkg)?;
            flags
                .split_whitespace()
                .filter_map(|f| f.strip_prefix("-I"))
                .map(PathBuf::from)
                .find(|d| d.join("shmbus.h").exists())
        });
    let include_dir = include_dir.unwrap_or_else(|| manifest.join("../../include"));
    let header = include_dir.join("shmbus.h");
    assert!(
        header.exists(),
        "shmbus.h not found in {}",
        include_dir.display()
    );
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:include={}", include_dir.display());

    // ---- layout probe -----------------------------------------------------------
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let probe = out_dir.join("layout_probe");
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&probe)
        .arg("-I")
        .arg(&include_dir)
        .arg(manifest.join("layout/probe.c"))
        .status()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(status.success(), "compiling layout/probe.c failed");
    let out = Command::new(&probe)
        .output()
        .expect("running the layout probe");
    assert!(out.status.success(), "layout probe failed");
    std::fs::write(out_dir.join("c_layout.rs"), &out.stdout).unwrap();

    // ---- link -----------------------------------------------------------------------
    if let Ok(dir) = env::var("SHMBUS_LIB_DIR") {
        let name = env::var("SHMBUS_LIB_NAME").unwrap_or_else(|_| DEFAULT_LIB.into());
        link(Path::new(&dir), &name);
        return;
    }
    if let Some(libs) = pkg_config(&["--libs"], &pkg) {
        let mut dir = None;
        let mut name = None;
        for f in libs.split_whitespace() {
            if let Some(d) = f.strip_prefix("-L") {
                dir.get_or_insert_with(|| d.to_string());
            } else if let Some(l) = f.strip_prefix("-l") {
                name.get_or_insert_with(|| l.to_string());
            }
        }
        if let Some(name) = name {
            match dir {
                Some(d) => link(Path::new(&d), &name),
                None => println!("cargo:rustc-link-lib=dylib={name}"),
            }
            return;
        }
    }
    println!(
        "cargo:warning=shmbus-sys: neither SHMBUS_LIB_DIR nor pkg-config {pkg} found; \
         linking -l{DEFAULT_LIB} from the default search path"
    );
    println!("cargo:rustc-link-lib=dylib={DEFAULT_LIB}");
}

fn link(dir: &Path, name: &str) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib={name}");
    println!("cargo:lib_dir={}", dir.display());
    // rpath for this crate's own tests; dependents add theirs from DEP_SHMBUS_LIB_DIR.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}
