//! The C math functions that parts of `fspl` call (the daemon's metrics
//! summaries and histograms, the progress bar's rate estimate: `exp`,
//! `log`, `log1p`, `pow`), defined here from the `libm` crate (Rust ports
//! of musl's implementations) instead of taken from glibc's `libm.so`.
//!
//! Nothing else needs `libm.so`, so with these the linker (`--as-needed`)
//! leaves it out and no `fspl` process loads it: that saves about 0.07 ms
//! of a start-up of about 0.8 ms on our benchmark machine (opening and
//! mapping the library, relocating it, looking up its symbols), paid by
//! every `prepare` and `queue-write`. Definitions in the executable take
//! precedence over any shared library's, so every call lands here.

#[unsafe(no_mangle)]
pub extern "C" fn exp(x: f64) -> f64 {
    libm::exp(x)
}

#[unsafe(no_mangle)]
pub extern "C" fn log(x: f64) -> f64 {
    libm::log(x)
}

#[unsafe(no_mangle)]
pub extern "C" fn log1p(x: f64) -> f64 {
    libm::log1p(x)
}

#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    // Known values (f64::exp and friends would call these very shims).
    #[test]
    fn the_shims_give_the_known_values() {
        let close = |a: f64, b: f64| (a - b).abs() <= 2.0 * f64::EPSILON * b.abs().max(1.0);
        assert!(close(super::exp(1.0), std::f64::consts::E));
        assert!(close(super::exp(0.0), 1.0));
        assert!(close(super::exp(-2.0), 0.135_335_283_236_612_7));
        assert!(close(super::log(std::f64::consts::E), 1.0));
        assert!(close(super::log(10.0), std::f64::consts::LN_10));
        assert!(close(super::log1p(1.0), std::f64::consts::LN_2));
        assert!(close(super::log1p(1e-10), 9.999_999_999_5e-11));
        assert!(close(super::pow(2.0, 10.0), 1024.0));
        assert!(close(super::pow(2.0, 0.5), std::f64::consts::SQRT_2));
    }
}
