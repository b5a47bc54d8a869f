//! Go's `time.ParseDuration` (remaphore's `allow_skew:` and `-t`), and its
//! `Duration.String` for what we print.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?} (Go syntax: e.g. 5s, 1h2m3s, 250ms, 1.5m)")]
pub struct DurationError(pub String);

/// Parse a Go duration. Negative durations are refused (remaphore has no
/// use for them: a negative skew or timeout would refuse everything).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    let mut rest = s;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if let Some(r) = rest.strip_prefix('-') {
        // "-0" is zero in Go; any other negative is refused here.
        rest = r;
        if !rest.is_empty() && parse(rest).map_err(|_| err())?.is_zero() {
            return Ok(Duration::ZERO);
        }
        return Err(err());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, r) = rest.split_at(int_end);
        rest = r;
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let fe = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            frac_part = &r[..fe];
            rest = &r[fe..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err());
        }
        let unit_end = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, r) = rest.split_at(unit_end);
        rest = r;
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err())?
        };
        let mut v = int.checked_mul(nanos_per).ok_or_else(err)?;
        if !frac_part.is_empty() {
            // Fraction digits beyond what a nanosecond can hold are dropped.
            let digits = &frac_part[..frac_part.len().min(18)];
            let f: u128 = digits.parse().map_err(|_| err())?;
            v += f * nanos_per / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(v).ok_or_else(err)?;
        if total > i64::MAX as u128 {
            return Err(err());
        }
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Go's `Duration.String` (non-negative durations).
pub fn format(d: Duration) -> String {
    let n = d.as_nanos();
    if n == 0 {
        return "0s".into();
    }
    if n < 1_000 {
        return format!("{n}ns");
    }
    if n < 1_000_000 {
        return frac(n, 1_000, "µs");
    }
    if n < 1_000_000_000 {
        return frac(n, 1_000_000, "ms");
    }
    let h = n / 3_600_000_000_000;
    let m = (n / 60_000_000_000) % 60;
    let s_n = n % 60_000_000_000;
    let s = frac(s_n, 1_000_000_000, "s");
    if h > 0 {
        format!("{h}h{m}m{s}")
    } else if m > 0 {
        format!("{m}m{s}")
    } else {
        s
    }
}

fn frac(n: u128, unit: u128, suffix: &str) -> String {
    let whole = n / unit;
    let rem = n % unit;
    if rem == 0 {
        return format!("{whole}{suffix}");
    }
    let width = (unit.ilog10()) as usize;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}{suffix}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        let ms = Duration::from_millis;
        assert_eq!(parse("5s"), Ok(ms(5000)));
        assert_eq!(parse("0"), Ok(ms(0)));
        assert_eq!(parse("1h2m3s4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse("1.5m"), Ok(ms(90_000)));
        assert_eq!(parse(".5s"), Ok(ms(500)));
        assert_eq!(parse("250ms"), Ok(ms(250)));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("10µs"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse("+3s"), Ok(ms(3000)));
        for bad in ["", "5", "s", "5x", "1.s.", "-5s", "5 s", "9999999999h", "."] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_string() {
        assert_eq!(format(Duration::from_secs(5)), "5s");
        assert_eq!(format(Duration::from_millis(3_723_004)), "1h2m3.004s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_secs(60)), "1m0s");
    }
}
