//! AFL++ target: one job file's bytes through every parser (the same
//! target `cargo test` replays the corpus with; see
//! crates/queue/tests/fuzz/target.rs).

#[path = "../../crates/queue/tests/fuzz/target.rs"]
mod target;

fn main() {
    let mut t = target::Target::new();
    // Signature checks are cheap in this optimised build.
    t.verify_every = 1;
    let t = std::panic::AssertUnwindSafe(t);
    afl::fuzz!(|data: &[u8]| {
        t.check(data);
    });
}
