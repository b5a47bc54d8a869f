//! The daemon's metrics as Prometheus sees them (issue 18): after jobs of
//! every kind (process, push, pull) have run, `/metrics` passes `promtool
//! check metrics` (help texts, `_total` counters, units in names) and has
//! no `job`/`instance` label of its own; a real Prometheus server scrapes
//! it, answers a query for a job counter with the number of jobs run, and
//! the example alerting rules (contrib/fspl-alerts.yml) load and fire on a
//! job in its error state. Every timing is a generous deadline.

use fspl_testkit::prometheus::{self, Prometheus, promtool};

use crate::helper::*;

/// Events only: the polling an hour away (the rescan is, in `config`).
const EVENTS_ONLY: &str = "poll_min = 3600\npoll_max = 3600";

/// The value of the series `series` (exact name and labels) in a scrape.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn contrib_rules() -> std::path::PathBuf {
    root().join("contrib/fspl-alerts.yml")
}

/// Before: no metric had a help text (`promtool check metrics`: "no help
/// text"), and every series carried a `job` label, which Prometheus
/// renames to `exported_job` when it scrapes (its own `job` label is the
/// scrape job's), so rules and queries on `job` found nothing.
#[test]
fn daemon_metrics_have_help_texts_and_no_job_label_so_prometheus_accepts_them() {
    let sb = Sandbox::new();
    let (outbox, inq, bad) = (sb.queue("outbox"), sb.queue("in"), sb.queue("bad"));
    let folder = sb.path("sync");
    std::fs::create_dir(&folder).unwrap();
    let log = sb.path("log");
    let port = free_port();
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            &format!("metrics = \"127.0.0.1:{port}\""),
            &[
                push_job("send", &outbox, &dir_url(&folder), EVENTS_ONLY),
                pull_job("take", &dir_url(&folder), &inq, EVENTS_ONLY),
                process_job("run", &inq, &recorder(&log, ""), EVENTS_ONLY),
                process_job("bad", &bad, &["/bin/false"], "max_failures = 1"),
                format!(
                    "[[job]]\nname = \"tidy\"\ntype = \"prune\"\npaths = [{}]\nkeep = [\"last_n:10\"]\ninterval = 1\n",
                    q(&inq)
                ),
            ],
        ),
        "logfmt",
    );
    for (seq, p) in [(1, "a"), (2, "b"), (3, "c")] {
        send(&outbox, seq, p, &[]);
    }
    send(&bad, 1, "", &[]);
    wait_soon("three jobs to run", || lines(&log).len() == 3);
    assert_eq!(lines(&log), ["1 a", "2 b", "3 c"]);
    let scrape = || {
        prometheus::http_get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let counted = [
        (
            "fspl_transport_jobs_total{fspl_job=\"send\",result=\"sent\"}",
            3.0,
        ),
        (
            "fspl_transport_jobs_total{fspl_job=\"take\",result=\"taken\"}",
            3.0,
        ),
        (
            "fspl_jobs_processed_total{fspl_job=\"run\",result=\"success\"}",
            3.0,
        ),
        ("fspl_queue_error{fspl_job=\"bad\"}", 1.0),
        ("fspl_pruned_files_total{fspl_job=\"tidy\"}", 0.0),
    ];
    wait_soon("every job counted in /metrics", || {
        let body = scrape();
        counted.iter().all(|(s, v)| sample(&body, s) == Some(*v))
    });
    let body = scrape();
    assert!(sample(&body, "fspl_transport_bytes_total{fspl_job=\"send\"}").unwrap() > 0.0);

    // promtool's lint: help texts, counter suffixes, units.
    let out = promtool(&["check", "metrics"], body.as_bytes());
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No label Prometheus sets itself on every scraped series.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        for reserved in ["job=", "instance="] {
            assert!(
                !labels.starts_with(reserved) && !labels.contains(&format!(",{reserved}")),
                "{line}"
            );
        }
    }

    // A real server scrapes it and evaluates the example rules.
    let rules = contrib_rules();
    let prom = Prometheus::start(
        &sb.path("prometheus"),
        &[("fspl", format!("127.0.0.1:{port}"))],
        &[&rules],
    );
    for (series, want) in counted {
        // The scrape job's label and ours, side by side.
        let expr = series.replacen('{', "{job=\"fspl\",", 1);
        wait_soon(&format!("{expr} == {want} in prometheus"), || {
            prom.value(&expr) == Some(want)
        });
    }
    wait_soon("the error-state alert for bad", || {
        prom.alerts().iter().any(|a| {
            a["labels"]["alertname"] == "FsplJobErrorState" && a["labels"]["fspl_job"] == "bad"
        })
    });
    let alerts = prom.alerts();
    assert!(
        alerts.iter().all(|a| a["labels"]["fspl_job"] == "bad"),
        "only bad is in trouble: {alerts:?}"
    );
    let targets = prom.targets();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0]["health"], "up", "{targets:?}");
    drop(prom);
    let (st, text) = d.stop();
    assert!(st.success(), "{text}");
}

/// The example alerting rules are valid (and name only metrics the
/// daemon exports: checked above, where they fire).
#[test]
fn example_alerting_rules_pass_promtool_check_rules() {
    let rules = contrib_rules();
    let out = promtool(&["check", "rules", rules.to_str().unwrap()], b"");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
}
