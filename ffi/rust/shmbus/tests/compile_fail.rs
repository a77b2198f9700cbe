//! Compile-time guarantees of the safe API, checked by a real compile-fail harness:
//! each program in tests/compile_fail/ must fail to compile with exactly the error in
//! its .stderr file (error code and the borrow or bound it names), so a program that
//! fails for another reason (a typo, a renamed method) fails this test. On a new
//! compiler whose wording changed: `TRYBUILD=overwrite cargo test --test compile_fail`,
//! then review the diff.
#[test]
fn compile_fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
