//! Adds an rpath to the C ABI library so the strategy runs without LD_LIBRARY_PATH
//! (the library directory comes from shmbus-sys, see its build script).
fn main() {
    if let Ok(d) = std::env::var("DEP_SHMBUS_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{d}");
    }
}
