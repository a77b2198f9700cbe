//! Generates Rust code for `lib/schema/market.capnp` and `lib/schema/envelope.capnp`
//! (the handler runner's `DeadLetter`; capnpc runs the `capnp` tool,
//! installed by tools/setup) and adds an rpath to the C ABI library for this crate's
//! tests, examples and binaries (see shmbus-sys/build.rs for how it is found).
use std::env;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let schema_dir = manifest.join("../../../lib/schema");
    for f in ["market.capnp", "envelope.capnp"] {
        println!("cargo:rerun-if-changed={}", schema_dir.join(f).display());
    }
    capnpc::CompilerCommand::new()
        .src_prefix(&schema_dir)
        .file(schema_dir.join("market.capnp"))
        .file(schema_dir.join("envelope.capnp"))
        .run()
        .expect(
            "capnp compile of lib/schema/{market,envelope}.capnp (is the capnp tool installed? tools/setup)",
        );
    if let Ok(dir) = env::var("DEP_SHMBUS_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Link arguments are not inherited by dependent crates; this metadata is
        // (DEP_SHMBUS_RS_LIB_DIR in their build scripts), so one line there gives
        // their binaries the same rpath.
        println!("cargo:lib_dir={dir}");
    }
}
