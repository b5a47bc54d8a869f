//! Link GCC's unwinder statically, so that `fspl` does not load
//! `libgcc_s.so` at every start.
//!
//! Rust's standard library needs an unwinder (`_Unwind_*`: backtraces, and
//! panics in test builds). On GNU/Linux it names the shared `libgcc_s`,
//! whose loading and CPU-feature constructor (`__cpu_indicator_init`, a
//! series of `cpuid` instructions, each a trap to the hypervisor in a
//! virtual machine) cost about 0.2 ms per process on our benchmark machine,
//! a sixth of a small `prepare`. The same unwinder from `libgcc_eh.a`,
//! linked in whole, defines those symbols first, so the linker
//! (`--as-needed`) no longer records `libgcc_s` as needed.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // `-bundle`: the library (shared by both binaries) only names it;
        // each executable links it in at its final link.
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
