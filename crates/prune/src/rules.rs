//! The keep rules, with zrepl's semantics (its `internal/pruning` and
//! `retentiongrid` packages, and their tests): pure functions of a list of
//! entries (a name and a time), no filesystem.
//!
//! An entry is removed only if **no** rule keeps it; an empty rule list
//! keeps everything (the configuration refuses an empty list, so that a
//! typo never reads as "delete all").
//!
//! # `grid:SPEC`
//!
//! `SPEC` is intervals joined by `|`, each `NxDURATION` with an optional
//! `(keep=K)` or `(keep=all)` (K ≥ 1, default 1), e.g.
//! `1x1h(keep=all) | 24x1h | 14x1d`. Units: `s`, `m`, `h`, `d`, `w`, whole
//! numbers. Exactly as zrepl's `retentiongrid.Grid`:
//!
//! - *now* is the time of the youngest matching entry (not the clock);
//! - entries at or after *now* are kept (so the youngest always is);
//! - bucket 0 covers `[now − len₀, now)`, each next bucket the interval of
//!   its own length just older than the previous one: a bucket includes its
//!   older edge and excludes its younger edge, so an entry exactly on the
//!   edge between two buckets falls into the **younger** one (with a first
//!   interval of 10m, an entry at now − 10m is in the first bucket, as in
//!   zrepl's `retentiongrid` and its `IntervalBoundariesAndAlignment`
//!   test);
//! - each bucket keeps its K **oldest** entries (the youngest go first),
//!   `keep=all` keeps every one;
//! - entries older than the last bucket are not kept;
//! - lengths may not shrink from one interval to the next unless every
//!   earlier interval is `keep=all` (zrepl: "retention grid interval length
//!   must be monotonically increasing").
//!
//! Entries of equal time are ordered by name (the smaller name counts as
//! the older), so that the result never depends on directory order.
//!
//! # `last_n:COUNT`
//!
//! Keeps the COUNT youngest matching entries; of entries with equal times,
//! the greater name counts as the younger (zrepl's tie-break).
//!
//! # `regex:RE`, `not_regex:RE`
//!
//! Keeps the entries whose name RE matches anywhere (unanchored, as Go's
//! `FindStringIndex`), resp. those it does not match (zrepl's `negate`).
//!
//! `grid` and `last_n` take an optional `;regex=RE`: only matching entries
//! are considered (the others are not kept by that rule).

use std::fmt;

use regex::Regex;

/// One thing a rule looks at: a name and a time (nanoseconds since the
/// epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub time: i128,
}

/// How many entries a grid interval keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepCount {
    All,
    N(u64),
}

/// One interval of a grid (one repetition of `NxDURATION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    /// Its length, in seconds.
    pub secs: u64,
    pub keep: KeepCount,
}

#[derive(Clone, Debug)]
enum RuleKind {
    Grid(Vec<Interval>),
    LastN(u64),
    Regex { negate: bool },
}

/// A keep rule, parsed.
#[derive(Clone, Debug)]
pub struct Rule {
    kind: RuleKind,
    /// The filter of grid and last_n; the expression of regex.
    regex: Option<Regex>,
    /// The rule as written (for output).
    text: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a rule cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("keep rule {rule:?}: {why}")]
pub struct RuleError {
    pub rule: String,
    pub why: String,
}

/// The most intervals a grid may expand to (a bound on memory and work,
/// far above any real policy: `35x1d` is 35).
pub const MAX_INTERVALS: u64 = 100_000;

fn err(rule: &str, why: impl Into<String>) -> RuleError {
    RuleError {
        rule: rule.to_string(),
        why: why.into(),
    }
}

/// A duration `N{s,m,h,d,w}` in seconds (whole, positive).
fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = (&s[..split], s[split..].trim());
    if digits.is_empty() {
        return Err(format!(
            "duration {s:?} must be a whole number with a unit s, m, h, d or w (like 10m)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration {s:?} is too large"))?;
    let mult: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => return Err(format!("duration {s:?} has no unit (s, m, h, d or w)")),
        u => {
            return Err(format!(
                "duration {s:?} has an unknown unit {u:?} (s, m, h, d or w)"
            ));
        }
    };
    if n == 0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    n.checked_mul(mult)
        .filter(|v| *v <= i64::MAX as u64 / 1_000_000_000)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// A grid specification: `1x1h(keep=all) | 24x1h | 14x1d`.
pub fn parse_grid(spec: &str) -> Result<Vec<Interval>, String> {
    let mut out: Vec<Interval> = Vec::new();
    let parts: Vec<&str> = spec.split('|').collect();
    for (i, part) in parts.iter().enumerate() {
        let at = |why: String| {
            format!(
                "interval {} of {} ({:?}): {why}",
                i + 1,
                parts.len(),
                part.trim()
            )
        };
        let p = part.trim();
        let (head, keep) = match p.find('(') {
            Some(open) => {
                let rest = p[open + 1..].trim_end();
                let Some(inner) = rest.strip_suffix(')') else {
                    return Err(at("an opening ( without a closing )".into()));
                };
                let inner = inner.trim();
                let Some(v) = inner.strip_prefix("keep=") else {
                    return Err(at(format!(
                        "unknown parameter {inner:?} (only keep=K or keep=all)"
                    )));
                };
                let keep = match v.trim() {
                    "all" => KeepCount::All,
                    k => match k.parse::<u64>() {
                        Ok(n) if n >= 1 => KeepCount::N(n),
                        _ => {
                            return Err(at(format!(
                                "keep={k} must be a whole number of at least 1, or all"
                            )));
                        }
                    },
                };
                (&p[..open], keep)
            }
            None => (p, KeepCount::N(1)),
        };
        let Some((n, dur)) = head.split_once('x') else {
            return Err(at(
                "must be NxDURATION, like 24x1h (the repetition N is required)".into(),
            ));
        };
        let n: u64 = match n.trim().parse() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(at(format!(
                    "the repetition {:?} must be a whole number of at least 1",
                    n.trim()
                )));
            }
        };
        let secs = parse_duration(dur).map_err(at)?;
        if (out.len() as u64).saturating_add(n) > MAX_INTERVALS {
            return Err(at(format!(
                "the grid has more than {MAX_INTERVALS} intervals"
            )));
        }
        out.extend(std::iter::repeat_n(Interval { secs, keep }, n as usize));
    }
    // zrepl: lengths must not shrink, unless every earlier interval keeps
    // all.
    let mut last = 0u64;
    for (i, iv) in out.iter().enumerate() {
        if iv.secs < last && !out[..i].iter().all(|p| p.keep == KeepCount::All) {
            return Err(format!(
                "interval lengths must not shrink (an interval of {}s follows one of {last}s) unless every earlier interval is keep=all",
                iv.secs
            ));
        }
        last = iv.secs;
    }
    Ok(out)
}

fn compile(rule: &str, re: &str) -> Result<Regex, RuleError> {
    if re.is_empty() {
        return Err(err(rule, "the regex is empty"));
    }
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| err(rule, format!("invalid regex: {e}")))
}

impl Rule {
    /// Parse `grid:SPEC[;regex=RE]`, `last_n:COUNT[;regex=RE]`,
    /// `regex:RE`, `not_regex:RE`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let Some((kind, rest)) = text.split_once(':') else {
            return Err(err(
                text,
                "must be grid:SPEC, last_n:COUNT or regex:RE (or not_regex:RE)",
            ));
        };
        let (arg, filter) = match kind.trim() {
            "grid" | "last_n" => match rest.split_once(";regex=") {
                Some((a, re)) => (a, Some(compile(text, re)?)),
                None => (rest, None),
            },
            _ => (rest, None),
        };
        let (kind, regex) = match kind.trim() {
            "grid" => (
                RuleKind::Grid(parse_grid(arg).map_err(|w| err(text, w))?),
                filter,
            ),
            "last_n" => match arg.trim().parse::<u64>() {
                Ok(n) if n >= 1 => (RuleKind::LastN(n), filter),
                _ => {
                    return Err(err(
                        text,
                        format!(
                            "the count {:?} must be a whole number of at least 1",
                            arg.trim()
                        ),
                    ));
                }
            },
            "regex" => (
                RuleKind::Regex { negate: false },
                Some(compile(text, rest)?),
            ),
            "not_regex" => (RuleKind::Regex { negate: true }, Some(compile(text, rest)?)),
            k => {
                return Err(err(
                    text,
                    format!("unknown rule {k:?} (the rules are grid, last_n, regex and not_regex)"),
                ));
            }
        };
        Ok(Rule {
            kind,
            regex,
            text: text.to_string(),
        })
    }

    /// Parse a list of rules; an empty list is an error (it is never
    /// "delete everything", and never "keep everything" by mistake).
    pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Rule>, RuleError> {
        if texts.is_empty() {
            return Err(err(
                "",
                "no keep rules given: give at least one (a list without rules would keep everything)",
            ));
        }
        texts.iter().map(|t| Rule::parse(t.as_ref())).collect()
    }

    fn considers(&self, e: &Entry) -> bool {
        match (&self.kind, &self.regex) {
            (RuleKind::Regex { .. }, _) | (_, None) => true,
            (_, Some(re)) => re.is_match(&e.name),
        }
    }

    /// Which of `entries` this rule keeps (`true` at the entry's index).
    pub fn kept(&self, entries: &[Entry]) -> Vec<bool> {
        let mut keep = vec![false; entries.len()];
        match &self.kind {
            RuleKind::Regex { negate } => {
                let re = self.regex.as_ref().expect("regex rules have one");
                for (k, e) in keep.iter_mut().zip(entries) {
                    *k = re.is_match(&e.name) != *negate;
                }
            }
            RuleKind::LastN(n) => {
                let mut m = youngest_first(entries, |e| self.considers(e));
                m.truncate(usize::try_from(*n).unwrap_or(usize::MAX));
                for i in m {
                    keep[i] = true;
                }
            }
            RuleKind::Grid(intervals) => {
                for i in fit_grid(intervals, entries, |e| self.considers(e)) {
                    keep[i] = true;
                }
            }
        }
        keep
    }
}

/// The indices of the entries `pick` takes, youngest first (ties: the
/// greater name first).
fn youngest_first(entries: &[Entry], pick: impl Fn(&Entry) -> bool) -> Vec<usize> {
    let mut m: Vec<usize> = (0..entries.len()).filter(|i| pick(&entries[*i])).collect();
    m.sort_unstable_by(|a, b| {
        let (a, b) = (&entries[*a], &entries[*b]);
        b.time.cmp(&a.time).then_with(|| b.name.cmp(&a.name))
    });
    m
}

/// The indices of the entries a grid keeps (zrepl's
/// `retentiongrid.FitEntries`). One sort, then one pass over entries and
/// buckets together.
fn fit_grid(
    intervals: &[Interval],
    entries: &[Entry],
    pick: impl Fn(&Entry) -> bool,
) -> Vec<usize> {
    fit_grid_with_now(intervals, entries, pick, None)
}

/// [`fit_grid`] with *now* given (zrepl's `fitEntriesWithNow`, for its
/// tests): entries at or after *now* are kept unconditionally. Without
/// it, *now* is the youngest entry's time (which is therefore kept).
fn fit_grid_with_now(
    intervals: &[Interval],
    entries: &[Entry],
    pick: impl Fn(&Entry) -> bool,
    now: Option<i128>,
) -> Vec<usize> {
    let mut order = youngest_first(entries, pick);
    let Some(first) = order.first() else {
        return Vec::new();
    };
    let now = now.unwrap_or(entries[*first].time);
    let mut kept: Vec<usize> = Vec::new();
    let future = order
        .iter()
        .take_while(|i| entries[**i].time >= now)
        .count();
    kept.extend(order.drain(..future));
    let mut bucket = 0usize;
    // The current bucket's older edge (inclusive); its younger edge
    // (exclusive) is the previous bucket's older edge, or now.
    let mut older = now - intervals[0].secs as i128 * 1_000_000_000;
    // Entries of the current bucket, youngest first.
    let mut members: Vec<usize> = Vec::new();
    let flush = |members: &mut Vec<usize>, keep: KeepCount, kept: &mut Vec<usize>| {
        match keep {
            KeepCount::All => kept.append(members),
            // The K oldest: the last K, youngest first.
            KeepCount::N(k) => {
                let k = usize::try_from(k).unwrap_or(usize::MAX).min(members.len());
                kept.extend_from_slice(&members[members.len() - k..]);
                members.clear();
            }
        }
    };
    for i in order {
        let t = entries[i].time;
        // Move to the bucket that holds t: younger > t >= older.
        while t < older {
            flush(&mut members, intervals[bucket].keep, &mut kept);
            bucket += 1;
            if bucket == intervals.len() {
                // Older than the last bucket: this and every later entry
                // are not kept.
                return kept;
            }
            older -= intervals[bucket].secs as i128 * 1_000_000_000;
        }
        members.push(i);
    }
    flush(&mut members, intervals[bucket].keep, &mut kept);
    kept
}

/// What the rules decide about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The indices (in the rule list) of the rules that keep it.
    pub kept_by: Vec<usize>,
    /// No rule keeps it (and there are rules).
    pub removed: bool,
}

/// Every entry's verdict under `rules`: kept by the rules that keep it,
/// removed when none does. No rules: everything is kept (zrepl's
/// `noRulesKeepsAll`).
pub fn evaluate(entries: &[Entry], rules: &[Rule]) -> Vec<Verdict> {
    let mut v = vec![
        Verdict {
            kept_by: Vec::new(),
            removed: false,
        };
        entries.len()
    ];
    for (r, rule) in rules.iter().enumerate() {
        for (i, k) in rule.kept(entries).into_iter().enumerate() {
            if k {
                v[i].kept_by.push(r);
            }
        }
    }
    if !rules.is_empty() {
        for x in &mut v {
            x.removed = x.kept_by.is_empty();
        }
    }
    v
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
