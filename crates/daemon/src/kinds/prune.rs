//! `type = "prune"`: apply keep rules (zrepl's grid, last_n, regex; see
//! fspl-prune) to directories fspl fills, every `interval` seconds: a
//! queue (its jobs below nextseq and `.out` files), `rejected/`,
//! `corrupt/`, an outbox's `sent/`, an uploader's `completed/` or
//! `failed/`. Other kinds prune for themselves with a `keep_*` key
//! (`keep_output` of a process job), through [`prune_logged`].

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use fspl_prune::{DirKind, Rule};
use tracing::{debug, info, info_span, warn};

use crate::config::{Bad, Checker, Keys, secs, strings};
use crate::state::JobStatus;
use crate::supervisor::{FailureClass, Kind, Outcome, RunContext, RunReport, WatchSpec};

/// The keys of a `type = "prune"` job of its own.
pub const KEYS: &[&str] = &["paths", "keep", "interval", "dry_run"];

/// The default `interval`: an hour.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// Keep rules as configured (compared by their text).
#[derive(Clone, Debug)]
pub struct KeepRules {
    pub texts: Vec<String>,
    pub rules: Vec<Rule>,
}

impl PartialEq for KeepRules {
    fn eq(&self, o: &KeepRules) -> bool {
        self.texts == o.texts
    }
}

/// A `keep` list: rule strings (`grid:SPEC[;regex=RE]`,
/// `last_n:COUNT[;regex=RE]`, `regex:RE`, `not_regex:RE`), at least one.
pub(crate) fn keep_rules(v: &toml::Spanned<toml::de::DeValue<'_>>) -> Result<KeepRules, Bad> {
    let texts = strings(
        v,
        "[\"grid:1x1h(keep=all) | 24x1h | 14x1d\", \"last_n:10\"]",
    )?;
    let rules = Rule::parse_all(&texts).map_err(|e| (v.span(), e.to_string()))?;
    Ok(KeepRules { texts, rules })
}

/// Prune `path` (of `kind`, else detected) by `rules`, logging a line per
/// file removed (debug: per file kept). Returns the files removed, or
/// why nothing could be judged.
pub fn prune_logged(
    path: &std::path::Path,
    kind: Option<DirKind>,
    rules: &[Rule],
) -> Result<usize, fspl_prune::PruneError> {
    let plan = match fspl_prune::plan(path, kind, rules) {
        Ok(p) => p,
        Err(e) => {
            warn!(path = %path.display(), "cannot prune: {}", fspl_queue::display_chain(&e));
            return Err(e);
        }
    };
    let failures = match plan.apply() {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), "prune: {}", fspl_queue::display_chain(&e));
            return Err(e);
        }
    };
    let mut removed = 0;
    for e in &plan.entries {
        let by: Vec<String> = e
            .kept_by
            .iter()
            .map(|r| format!("#{} {}", r + 1, rules[*r]))
            .collect();
        if e.removed {
            if failures.iter().any(|f| f.name == e.name) {
                continue;
            }
            removed += 1;
            info!(path = %plan.files_dir.display(), file = %e.name, "pruned");
        } else {
            debug!(path = %plan.files_dir.display(), file = %e.name, kept_by = %by.join(", "), "kept");
        }
    }
    for f in &failures {
        warn!(path = %plan.files_dir.display(), file = %f.name, "cannot remove: {}", f.error);
    }
    Ok(removed)
}

/// `type = "prune"`.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneJob {
    pub paths: Vec<PathBuf>,
    pub keep: Option<KeepRules>,
    pub interval: Duration,
    /// Only log what would be removed.
    pub dry_run: bool,
}

impl PruneJob {
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &Keys<'_, '_>,
        table: &Range<usize>,
        l: &str,
    ) -> PruneJob {
        c.require(
            k,
            table,
            l,
            "paths",
            "[\"/srv/fspl/backups\", \"/srv/fspl/backups/rejected\"]",
        );
        c.require(
            k,
            table,
            l,
            "keep",
            "[\"grid:1x1h(keep=all) | 24x1h | 14x1d\"]",
        );
        let paths = c
            .get(k, "paths", l, |v| {
                let p = strings(v, "[\"/srv/fspl/backups\"]")?;
                if p.is_empty() || p.iter().any(|p| p.is_empty()) {
                    return Err((
                        v.span(),
                        "must list at least one directory (none empty)".into(),
                    ));
                }
                Ok(p.into_iter().map(PathBuf::from).collect())
            })
            .unwrap_or_default();
        let keep = c.get(k, "keep", l, keep_rules);
        let interval = c
            .get(k, "interval", l, |v| secs(v, 1))
            .unwrap_or(DEFAULT_INTERVAL);
        let dry_run = c
            .get(k, "dry_run", l, crate::config::boolean)
            .unwrap_or(false);
        PruneJob {
            paths,
            keep,
            interval,
            dry_run,
        }
    }

    /// What keeps the job from running: a path that is not a directory
    /// fspl prunes.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        self.paths
            .iter()
            .filter_map(|p| fspl_prune::detect(p).err())
            .map(|e| ("paths", fspl_queue::display_chain(&e)))
            .collect()
    }
}

impl Kind for PruneJob {
    type Prepared = ();

    fn name(&self) -> &'static str {
        "prune"
    }

    fn watched_noun(&self) -> &'static str {
        "directory"
    }

    fn activity(&self) -> &'static str {
        "pruning"
    }

    fn status(&self, name: &str) -> JobStatus {
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        JobStatus::idle(name, "prune", paths.join(", "))
    }

    fn span(&self, name: &str) -> tracing::Span {
        info_span!("job", job = %name, kind = "prune")
    }

    fn init_metrics(&self, name: &str) {
        metrics::counter!("fspl_pruned_files_total", "fspl_job" => name.to_string()).increment(0);
    }

    fn watch(&self) -> Option<WatchSpec> {
        None
    }

    fn prepare(&self) -> Result<(), String> {
        if self.keep.is_none() {
            return Err("no keep rules".into());
        }
        Ok(())
    }

    fn run(&self, _: &(), ctx: &RunContext) -> RunReport {
        let span = self.span(&ctx.name);
        let _e = span.enter();
        let rules = &self.keep.as_ref().expect("prepared").rules;
        let mut removed = 0usize;
        let mut failure: Option<(String, FailureClass)> = None;
        for p in &self.paths {
            if self.dry_run {
                match fspl_prune::plan(p, None, rules) {
                    Ok(plan) => {
                        for l in plan.lines(rules, true) {
                            info!("{l}");
                        }
                    }
                    Err(e) => {
                        failure.get_or_insert((
                            fspl_queue::display_chain(&e),
                            FailureClass::Permanent,
                        ));
                    }
                }
                continue;
            }
            match prune_logged(p, None, rules) {
                Ok(n) => removed += n,
                Err(e) => {
                    let class = match e {
                        fspl_prune::PruneError::NotManaged { .. } => FailureClass::Permanent,
                        _ => FailureClass::Transient,
                    };
                    failure.get_or_insert((fspl_queue::display_chain(&e), class));
                }
            }
        }
        metrics::counter!("fspl_pruned_files_total", "fspl_job" => ctx.name.clone())
            .increment(removed as u64);
        if removed > 0 {
            let now = crate::state::now_rfc3339();
            ctx.update(|s| {
                s.jobs_succeeded += removed as u64;
                s.last_success = Some(now);
                s.lag.last_success_unix = Some(crate::supervisor::unix_now());
            });
        }
        let outcome = match failure {
            Some((message, class)) => Outcome::Failed { message, class },
            None => Outcome::Done {
                worked: removed > 0,
                waiting: None,
            },
        };
        RunReport {
            outcome,
            next_seq: None,
            queued: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, JobKind};

    fn problems(t: &str) -> Vec<String> {
        Config::parse_all(Path::new("d.toml"), t)
            .1
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const HEAD: &str = "[daemon]\nsocket = \"/tmp/x.sock\"\n";

    #[test]
    fn prune_jobs_hooks_and_stale_after_parse() {
        let c = Config::parse(
            Path::new("d.toml"),
            &format!(
                "{HEAD}[[job]]\nname = \"tidy\"\ntype = \"prune\"\npaths = [\"/q/rejected\"]\nkeep = [\"grid:1x1h(keep=all) | 24x1h\", \"last_n:3;regex=^fspl-\"]\ninterval = 60\non_error_state = [\"mail\", \"-s\", \"fspl\"]\nhook_timeout = 5\nstale_after = 600\n"
            ),
        )
        .unwrap();
        let j = &c.jobs[0];
        let JobKind::Prune(p) = &j.kind else {
            panic!("{:?}", j.kind)
        };
        assert_eq!(p.interval.as_secs(), 60);
        assert_eq!(p.keep.as_ref().unwrap().rules.len(), 2);
        assert_eq!(j.supervision.stale_after.unwrap().as_secs(), 600);
        assert_eq!(
            j.supervision.hooks.on_error_state.as_deref().unwrap(),
            ["mail", "-s", "fspl"]
        );
        assert_eq!(j.supervision.hooks.timeout.as_secs(), 5);
    }

    #[test]
    fn bad_keep_rules_and_hooks_are_config_errors() {
        let p = problems(&format!(
            "{HEAD}[[job]]\nname = \"tidy\"\ntype = \"prune\"\npaths = [\"/q/rejected\"]\nkeep = []\n"
        ));
        assert!(p.iter().any(|m| m.contains("no keep rules given")), "{p:?}");
        let p = problems(&format!(
            "{HEAD}[[job]]\nname = \"tidy\"\ntype = \"prune\"\npaths = [\"/q/rejected\"]\nkeep = [\"grid:1x1h | 1x1m\"]\n"
        ));
        assert!(p.iter().any(|m| m.contains("must not shrink")), "{p:?}");
        let p = problems(&format!(
            "{HEAD}[[job]]\nname = \"tidy\"\ntype = \"prune\"\nkeep = [\"last_n:1\"]\n"
        ));
        assert!(p.iter().any(|m| m.contains("missing paths")), "{p:?}");
        let p = problems(&format!(
            "{HEAD}[[job]]\nname = \"r\"\nqueue = \"/q\"\ncommand = [\"cat\"]\nkeep_output = [\"last_n:1\"]\non_success = [\"bin/x\"]\n"
        ));
        assert!(
            p.iter()
                .any(|m| m.contains("keep_output: only with output_to")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("on_success") && m.contains("relative path")),
            "{p:?}"
        );
    }
}
