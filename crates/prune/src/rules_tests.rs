//! Worked cases: zrepl's own tests (internal/pruning/retentiongrid/
//! retentiongrid_test.go, keep_last_n_test.go, keep_regex_test.go,
//! pruning_test.go) transcribed, then cases of our own from its
//! documentation, then properties.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

const S: i128 = 1_000_000_000;
const M: i128 = 60 * S;
const H: i128 = 60 * M;

fn e(name: &str, time: i128) -> Entry {
    Entry {
        name: name.into(),
        time,
    }
}

/// The names a grid keeps (with *now* given, as zrepl's
/// `fitEntriesWithNow`, or the youngest entry's time).
fn grid_keeps(spec: &str, entries: &[Entry], now: Option<i128>) -> BTreeSet<String> {
    let g = parse_grid(spec).unwrap();
    fit_grid_with_now(&g, entries, |_| true, now)
        .into_iter()
        .map(|i| entries[i].name.clone())
        .collect()
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The names removed by `rules` (zrepl's `PruneSnapshots`).
fn removed(entries: &[Entry], rules: &[&str]) -> BTreeSet<String> {
    let rules: Vec<Rule> = rules.iter().map(|r| Rule::parse(r).unwrap()).collect();
    evaluate(entries, &rules)
        .iter()
        .zip(entries)
        .filter(|(v, _)| v.removed)
        .map(|(_, e)| e.name.clone())
        .collect()
}

#[test]
fn zrepl_empty_input() {
    assert!(grid_keeps("1x10m|1x10m|1x10m|1x1h", &[], None).is_empty());
}

/// zrepl TestIntervalBoundariesAndAlignment: grid 10m|10m|10m, now = 0.
/// An interval is [older edge, younger edge): an entry on the edge
/// between two intervals is in the younger one; at −30m (the last
/// interval's older edge) it is still in the grid; entries at or after
/// now are kept.
#[test]
fn zrepl_interval_boundaries_and_alignment() {
    let snaps = [
        e("0", M),       // after now: kept unconditionally
        e("1", 0),       // at now: kept unconditionally
        e("2", -10 * M), // 1st interval's older edge: inclusive
        e("3", -20 * M), // 2nd
        e("4", -30 * M), // 3rd
        e("5", -40 * M), // after the last interval: removed
    ];
    assert_eq!(
        grid_keeps("1x10m|1x10m|1x10m", &snaps, Some(0)),
        names(&["0", "1", "2", "3", "4"])
    );
    // Without the entry after now, now is entry 1's time: the same.
    assert_eq!(
        grid_keeps("1x10m|1x10m|1x10m", &snaps[1..], None),
        names(&["1", "2", "3", "4"])
    );
}

/// zrepl TestKeepsOldestSnapsInABucket: `1m,2` keeps the 2 oldest of
/// five entries one second apart, with now just after them.
#[test]
fn zrepl_keeps_oldest_snaps_in_a_bucket() {
    let snaps: Vec<Entry> = (1..=5).map(|i| e(&i.to_string(), i * S)).collect();
    assert_eq!(
        grid_keeps("1x1m(keep=2)", &snaps, Some(6 * S)),
        names(&["1", "2"])
    );
}

/// With now the youngest entry (as `grid:` rules have it), that entry is
/// at now and kept besides the bucket's 2 oldest.
#[test]
fn grid_youngest_entry_at_now_was_not_kept() {
    let snaps: Vec<Entry> = (1..=5).map(|i| e(&i.to_string(), i * S)).collect();
    assert_eq!(
        grid_keeps("1x1m(keep=2)", &snaps, None),
        names(&["1", "2", "5"])
    );
}

/// zrepl TestRespectsKeepCountAll: `1m,-1|1m,1` (keep=all, then 1).
#[test]
fn zrepl_respects_keep_count_all() {
    let snaps = [
        e("a", 0),
        e("b", -S),
        e("c", -2 * S),
        e("d", -60 * S),
        e("e", -61 * S),
    ];
    assert_eq!(
        grid_keeps("1x1m(keep=all)|1x1m", &snaps, None),
        names(&["a", "b", "c", "d", "e"])
    );
}

/// Every interval's edges: an entry on the edge between two intervals is
/// in the younger one, the last interval includes its older edge, and
/// each interval keeps its oldest entry (so the entry on its older edge,
/// not the one just younger than it).
#[test]
fn grid_entry_on_an_interval_boundary_was_put_in_the_older_interval() {
    let snaps = [
        e("now", 0),
        e("in1", -10 * M + S),
        e("edge1", -10 * M), // 1st interval's older edge
        e("in2", -20 * M + S),
        e("edge2", -20 * M), // 2nd's
        e("in3", -30 * M + S),
        e("edge3", -30 * M), // 3rd (last) interval's older edge
        e("out", -30 * M - S),
    ];
    assert_eq!(
        grid_keeps("1x10m | 1x10m | 1x10m", &snaps, None),
        names(&["now", "edge1", "edge2", "edge3"])
    );
    // The same through the rule and evaluate (as `fspl prune` runs it).
    assert_eq!(
        removed(&snaps, &["grid:1x10m | 1x10m | 1x10m"]),
        names(&["in1", "in2", "in3", "out"])
    );
}

/// keep=all keeps the entry on its interval's older edge (it is that
/// interval's, not the next one's, where keep=1 would drop one of two).
#[test]
fn grid_keep_all_interval_lost_the_entry_on_its_older_edge() {
    let snaps = [
        e("a", 0),
        e("b", -30 * S),
        e("edge", -60 * S),
        e("c", -90 * S),
        e("d", -100 * S),
    ];
    assert_eq!(
        grid_keeps("1x1m(keep=all) | 1x1m", &snaps, None),
        names(&["a", "b", "edge", "d"])
    );
}

/// keep=K keeps the K oldest of an interval, counting the entry on its
/// older edge, and the last interval's older edge is inside the grid.
#[test]
fn grid_k_oldest_counted_the_boundary_entry_in_the_wrong_interval() {
    let snaps = [
        e("now", 0),
        e("a", -10 * S),
        e("b", -30 * S),
        e("edge1", -60 * S),
        e("c", -70 * S),
        e("d", -90 * S),
        e("edge2", -120 * S),
        e("out", -121 * S),
    ];
    assert_eq!(
        grid_keeps("1x1m(keep=2) | 1x1m(keep=2)", &snaps, None),
        names(&["now", "b", "edge1", "d", "edge2"])
    );
}

/// zrepl TestComplex: `10m,-1|10m|10m,2|1h`, now = 0.
#[test]
fn zrepl_complex() {
    let snaps = [
        e("1", 3 * M),
        e("b1", -6 * M),
        e("b3", -8 * M),
        e("b2", -9 * M),
        e("a", -11 * M),
        e("c", -19 * M),
        e("foo", -25 * M),
        e("bar", -26 * M),
        e("border", -30 * M),
        e("d", -H - 15 * M),
        e("q", -H - 30 * M),
        e("e", -H - 31 * M),
        e("f", -2 * H),
    ];
    // Intervals [−10m, 0) keep all, [−20m, −10m) 1, [−30m, −20m) 2,
    // [−90m, −30m) 1: "border" (−30m) is the third's, with foo and bar
    // (the 2 oldest: border, bar); q (−90m) the fourth's, with d.
    let spec = "1x10m(keep=all)|1x10m|1x10m(keep=2)|1x1h";
    assert_eq!(
        grid_keeps(spec, &snaps, Some(0)),
        names(&["1", "b1", "b3", "b2", "c", "bar", "border", "q"])
    );
}

/// zrepl's documentation example: `1x1h(keep=all) | 2x2h | 1x3h` with
/// snapshots a..D spread over 9 hours keeps a, b, c and the oldest of each
/// later bucket (i, p, z).
#[test]
fn zrepl_documentation_example() {
    // 30 entries every 18 minutes from 0 back to 8h42m: a..z, A..D.
    let letters: Vec<String> = ('a'..='z')
        .chain('A'..='D')
        .map(|c| c.to_string())
        .collect();
    let snaps: Vec<Entry> = letters
        .iter()
        .enumerate()
        .map(|(i, n)| e(n, -(i as i128) * 18 * M))
        .collect();
    // Buckets: [−1h, 0), [−3h, −1h), [−5h, −3h), [−8h, −5h).
    let kept = grid_keeps("1x1h(keep=all) | 2x2h | 1x3h", &snaps, None);
    // a is now; b,c,d are within the first hour (d at −54m); the oldest
    // entry of [−3h,−1h) is k, exactly at −180m (its older edge), of
    // [−5h,−3h) at −288m (q), of [−8h,−5h) at −468m (A); older ones (from
    // −486m on) are outside.
    assert_eq!(kept, names(&["a", "b", "c", "d", "k", "q", "A"]));
}

/// zrepl's config parser errors, and our stricter ones.
#[test]
fn grid_spec_errors() {
    for (spec, why) in [
        ("", "NxDURATION"),
        ("1h", "NxDURATION"),
        ("0x1h", "at least 1"),
        ("1x0h", "positive"),
        ("1x1", "no unit"),
        ("1x1y", "unknown unit"),
        ("1x1h(keep=0)", "at least 1"),
        ("1x1h(keep=-1)", "at least 1"),
        ("1x1h(foo=1)", "unknown parameter"),
        ("1x1h(keep=2", "closing"),
        ("1x1h | 1x10m", "must not shrink"),
        ("1x1h(keep=all) | 1x1h | 1x10m", "must not shrink"),
        ("200000x1s", "more than"),
        ("1x99999999999999999999w", "too large"),
        ("1x9999999999999w", "too large"),
    ] {
        let e = parse_grid(spec).unwrap_err();
        assert!(e.contains(why), "{spec:?}: {e}");
    }
    // Shrinking after keep=all only is fine (zrepl's exception).
    assert_eq!(
        parse_grid("1x1h(keep=all) | 2x10m").unwrap(),
        vec![
            Interval {
                secs: 3600,
                keep: KeepCount::All
            },
            Interval {
                secs: 600,
                keep: KeepCount::N(1)
            },
            Interval {
                secs: 600,
                keep: KeepCount::N(1)
            }
        ]
    );
    assert_eq!(parse_grid(" 24 x 1h ").unwrap().len(), 24);
}

/// zrepl TestKeepLastN.
#[test]
fn zrepl_keep_last_n() {
    let o = |min: i128| 123 * S + min * M;
    let s1 = [
        e("1", o(10)),
        e("2", o(20)),
        e("3", o(15)),
        e("4", o(30)),
        e("5", o(30)),
    ];
    assert_eq!(removed(&s1, &["last_n:2"]), names(&["1", "2", "3"]));
    // keep1OfTwoWithSameTime: the greater name is the younger.
    assert_eq!(removed(&s1, &["last_n:1"]), names(&["1", "2", "3", "4"]));
    assert!(removed(&s1, &["last_n:100"]).is_empty());
    assert!(removed(&[], &["last_n:100"]).is_empty());
    assert_eq!(removed(&s1, &["last_n:4"]), names(&["1"]));
    let m = [
        e("a1", o(10)),
        e("b1", o(11)),
        e("a2", o(20)),
        e("b2", o(21)),
        e("a3", o(30)),
        e("b3", o(31)),
    ];
    assert_eq!(
        removed(&m, &["last_n:2;regex=^a", "last_n:2;regex=^b"]),
        names(&["a1", "b1"])
    );
    let k = [e("a1", o(10)), e("b1", o(11)), e("a2", o(12))];
    assert_eq!(removed(&k, &["last_n:4;regex=a"]), names(&["b1"]));
    for bad in ["last_n:0", "last_n:-5", "last_n:x", "last_n:"] {
        assert!(Rule::parse(bad).is_err(), "{bad}");
    }
}

/// zrepl TestKeepRegexNegation.
#[test]
fn zrepl_keep_regex_negation() {
    let s = [e("zrepl_foobar", 0), e("zrepl", 0), e("barfoo", 0)];
    assert_eq!(removed(&s, &["regex:^zrepl_"]), names(&["zrepl", "barfoo"]));
    assert_eq!(
        removed(&s, &["not_regex:^zrepl_"]),
        names(&["zrepl_foobar"])
    );
}

/// zrepl TestPruneSnapshots.
#[test]
fn zrepl_prune_snapshots() {
    let s1 = [e("foo_123", 0), e("foo_456", 0), e("bar_123", 0)];
    assert_eq!(removed(&s1, &["regex:foo_"]), names(&["bar_123"]));
    assert!(removed(&s1, &["regex:foo_", "regex:bar_"]).is_empty());
    assert_eq!(
        removed(&s1, &["regex:notInS1", "regex:bar_"]),
        names(&["foo_123", "foo_456"])
    );
    assert!(removed(&s1, &[]).is_empty(), "no rules keep all");
    assert!(removed(&[], &["regex:foo_"]).is_empty());
    let t = |s: i128| s * S;
    let g = [
        e("p1_a", t(4)),
        e("p2_a", t(5)),
        e("p1_b", t(14)),
        e("p2_b", t(15)),
        e("p1_c", t(29)),
        e("p2_c", t(30)),
    ];
    assert_eq!(
        removed(
            &g,
            &[
                "grid:1x10s | 1x10s;regex=^p1_",
                "grid:1x10s | 1x10s;regex=^p2_"
            ]
        ),
        names(&["p1_a", "p2_a"])
    );
}

/// Which rule kept each entry is reported, in rule order.
#[test]
fn verdicts_name_every_rule_that_keeps() {
    let s = [e("a.out", 10 * S), e("b.out", 5 * S), e("c", 0)];
    let rules = Rule::parse_all(&["last_n:1", "regex:\\.out$"]).unwrap();
    let v = evaluate(&s, &rules);
    assert_eq!(v[0].kept_by, vec![0, 1]);
    assert_eq!(v[1].kept_by, vec![1]);
    assert!(v[2].removed && v[2].kept_by.is_empty());
    assert!(Rule::parse_all::<&str>(&[]).is_err());
    for bad in ["grid", "foo:1", "regex:", "regex:(", "grid:1x1h;regex=("] {
        assert!(Rule::parse(bad).is_err(), "{bad}");
    }
}

/// A brute-force grid: every bucket [older, younger) from its edges, every
/// entry tested against every bucket (zrepl's algorithm as written).
fn brute_grid(iv: &[Interval], entries: &[Entry]) -> BTreeSet<usize> {
    let Some(now) = entries.iter().map(|e| e.time).max() else {
        return BTreeSet::new();
    };
    // At (or after) now: kept.
    let mut kept: BTreeSet<usize> = (0..entries.len())
        .filter(|i| entries[*i].time >= now)
        .collect();
    let mut young = now;
    for b in iv {
        let old = young - b.secs as i128 * S;
        let mut members: Vec<usize> = (0..entries.len())
            .filter(|i| entries[*i].time < young && entries[*i].time >= old)
            .collect();
        // oldest first (ties: smaller name first)
        members.sort_by(|a, b| {
            (entries[*a].time, &entries[*a].name).cmp(&(entries[*b].time, &entries[*b].name))
        });
        let k = match b.keep {
            KeepCount::All => members.len(),
            KeepCount::N(k) => (k as usize).min(members.len()),
        };
        kept.extend(&members[..k]);
        young = old;
    }
    kept
}

fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(("[a-d]{1,3}(\\.out)?", -4000i128..4000), 0..40).prop_map(|v| {
        // Distinct names (a directory has each once).
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .map(|(n, t)| Entry {
                name: n,
                time: t * S,
            })
            .collect()
    })
}

/// A valid grid spec (lengths never shrink; some keep=K, some keep=all).
fn arb_grid_spec() -> impl Strategy<Value = String> {
    prop::collection::vec((1u64..4, 0u64..6, prop::option::of(0u64..3)), 1..4).prop_map(|parts| {
        let mut len = 0;
        let spec: Vec<String> = parts
            .into_iter()
            .map(|(n, l, k)| {
                len += l * 60 + 1;
                let keep = match k {
                    None => String::new(),
                    Some(0) => "(keep=all)".into(),
                    Some(k) => format!("(keep={k})"),
                };
                format!("{n}x{len}s{keep}")
            })
            .collect();
        spec.join(" | ")
    })
}

fn arb_rule() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u64..6).prop_map(|n| format!("last_n:{n}")),
        (1u64..4).prop_map(|n| format!("last_n:{n};regex=^a")),
        Just("regex:\\.out$".to_string()),
        Just("not_regex:^b".to_string()),
        (arb_grid_spec(), any::<bool>()).prop_map(|(spec, filtered)| {
            let f = if filtered { ";regex=c" } else { "" };
            format!("grid:{spec}{f}")
        }),
    ]
}

proptest! {
    /// The kept set is exactly the union of what each rule keeps, and
    /// each verdict names exactly the rules that keep the entry.
    #[test]
    fn kept_set_is_the_union_of_each_rules_kept_set(
        entries in arb_entries(),
        texts in prop::collection::vec(arb_rule(), 1..4),
    ) {
        let rules = Rule::parse_all(&texts).unwrap();
        let v = evaluate(&entries, &rules);
        let mut union = BTreeSet::new();
        for r in &rules {
            for (i, k) in r.kept(&entries).into_iter().enumerate() {
                if k { union.insert(i); }
            }
        }
        let kept: BTreeSet<usize> = (0..entries.len()).filter(|i| !v[*i].removed).collect();
        prop_assert_eq!(kept, union);
        for (i, verdict) in v.iter().enumerate() {
            for (r, rule) in rules.iter().enumerate() {
                prop_assert_eq!(verdict.kept_by.contains(&r), rule.kept(&entries)[i]);
            }
        }
    }

    /// The one-pass grid agrees with the brute-force one, and does not
    /// depend on the order of its input.
    #[test]
    fn grid_agrees_with_brute_force(entries in arb_entries(), spec in arb_grid_spec(), rot in 0usize..40) {
        let iv = parse_grid(&spec).unwrap();
        let fast: BTreeSet<usize> = fit_grid(&iv, &entries, |_| true).into_iter().collect();
        prop_assert_eq!(&fast, &brute_grid(&iv, &entries));
        let mut rotated = entries.clone();
        if !rotated.is_empty() { let n = rot % rotated.len(); rotated.rotate_left(n); }
        let a: BTreeSet<String> = fast.iter().map(|i| entries[*i].name.clone()).collect();
        let b: BTreeSet<String> = fit_grid(&iv, &rotated, |_| true).into_iter().map(|i| rotated[i].name.clone()).collect();
        prop_assert_eq!(a, b);
    }
}
