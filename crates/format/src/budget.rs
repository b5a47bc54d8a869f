//! The decode budget: how much memory decoding one header may allocate.
//!
//! serde gives a `Deserialize` impl no context, so the budget of the decode
//! in progress lives in a thread-local that `parse_metadata_ext` sets for
//! exactly the duration of one decode (a guard restores the previous state).
//! Every allocation the decoded header keeps (param and env byte strings,
//! the vectors holding them, extension fields) is charged here *before* it
//! is made; when the budget would be exceeded, decoding stops with an error
//! instead of allocating. Outside a decode nothing is limited.

use std::cell::Cell;

use serde::de;

#[derive(Clone, Copy, Debug)]
struct State {
    left: usize,
    exceeded: bool,
}

thread_local! {
    static BUDGET: Cell<Option<State>> = const { Cell::new(None) };
}

/// A decode in progress on this thread; ends (restoring whatever was
/// there before) when dropped.
pub(crate) struct Guard {
    prev: Option<State>,
}

/// Start charging allocations to a budget of `limit` bytes.
pub(crate) fn enter(limit: usize) -> Guard {
    let prev = BUDGET.with(|b| {
        b.replace(Some(State {
            left: limit,
            exceeded: false,
        }))
    });
    Guard { prev }
}

impl Guard {
    /// Whether some allocation was refused because the budget ran out.
    pub(crate) fn exceeded(&self) -> bool {
        BUDGET.with(|b| b.get().is_some_and(|s| s.exceeded))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        BUDGET.with(|b| b.set(self.prev));
    }
}

/// Charge `bytes` bytes; an error (and the budget marked exceeded) when
/// fewer are left.
pub(crate) fn charge_bytes<E: de::Error>(bytes: usize) -> Result<(), E> {
    BUDGET.with(|b| match b.get() {
        None => Ok(()),
        Some(mut s) => {
            if bytes > s.left {
                s.exceeded = true;
                s.left = 0;
                b.set(Some(s));
                Err(E::custom("decoded metadata exceeds the memory limit"))
            } else {
                s.left -= bytes;
                b.set(Some(s));
                Ok(())
            }
        }
    })
}

/// What a heap block costs beyond the bytes asked for, at most: glibc
/// rounds a request up to 16 bytes with 8 of its own, 32 at the least.
/// Counted once per block, so a million one-byte strings are charged what
/// they really take (56 bytes each with their 24-byte vector entries,
/// not 25).
pub(crate) const BLOCK_OVERHEAD: usize = 32;

/// Charge a new block of `bytes` bytes (nothing for none).
pub(crate) fn charge_block<E: de::Error>(bytes: usize) -> Result<(), E> {
    if bytes == 0 {
        return Ok(());
    }
    charge_bytes(bytes.saturating_add(BLOCK_OVERHEAD))
}

/// Charge room for `count` more values of `T` in a vector holding
/// `capacity` now (a new block when that is 0).
pub(crate) fn charge_growth<T, E: de::Error>(capacity: usize, count: usize) -> Result<(), E> {
    let bytes = count.saturating_mul(std::mem::size_of::<T>());
    if capacity == 0 {
        charge_block(bytes)
    } else {
        charge_bytes(bytes)
    }
}
