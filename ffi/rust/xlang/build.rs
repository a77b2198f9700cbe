//! Generates Rust code for the v2 schema (`tests/ffi/schema/market_v2.capnp`; v1
//! comes from the shmbus crate) and adds an rpath to the C ABI library so the binary
//! runs from `$XLANG_BIN_DIR` without LD_LIBRARY_PATH.
use std::env;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = manifest.join("../../../tests/ffi/schema");
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("market_v2.capnp").display()
    );
    capnpc::CompilerCommand::new()
        .src_prefix(&dir)
        .file(dir.join("market_v2.capnp"))
        .run()
        .expect("capnp compile of tests/ffi/schema/market_v2.capnp");
    if let Ok(d) = env::var("DEP_SHMBUS_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{d}");
    }
}
