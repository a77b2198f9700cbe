//! Adds an rpath to the C ABI library so the strategy runs without LD_LIBRARY_PATH:
//! the line docs/bindings-rust.md gives every crate that depends on `shmbus` (the
//! directory comes from shmbus's build script as DEP_SHMBUS_RS_LIB_DIR).
fn main() {
    if let Ok(d) = std::env::var("DEP_SHMBUS_RS_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{d}");
    }
}
