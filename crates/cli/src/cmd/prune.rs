//! `fspl prune` (fspl extension): zrepl's keep rules over the directories
//! fspl fills (fspl-prune). Exit status: 0 = done (or, with --dry-run,
//! judged), 1 = some file could not be removed, 2 = a bad rule or a
//! directory fspl does not prune.

use std::path::PathBuf;
use std::process::ExitCode;

use fspl_prune::{Rule, plan};

use crate::output::write_stdout;

pub fn prune(
    paths: &[PathBuf],
    keep: &[String],
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let rules = match Rule::parse_all(keep) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "fspl: error: {}",
                fspl_queue::escape_controls(&e.to_string())
            );
            return Ok(ExitCode::from(crate::EXIT_USAGE));
        }
    };
    // Every directory is judged before anything is removed: a bad path
    // removes nothing anywhere.
    let mut plans = Vec::new();
    for p in paths {
        match plan(p, None, &rules) {
            Ok(pl) => plans.push(pl),
            Err(e) => {
                eprintln!(
                    "fspl: error: {}",
                    fspl_queue::escape_controls(&fspl_queue::display_chain(&e))
                );
                return Ok(ExitCode::from(crate::EXIT_USAGE));
            }
        }
    }
    let mut failed = false;
    let mut out = String::new();
    let mut docs = Vec::new();
    for pl in &plans {
        if !dry_run {
            match pl.apply() {
                Ok(fails) => {
                    for f in fails {
                        failed = true;
                        eprintln!(
                            "fspl: error: {}: cannot remove: {}",
                            pl.files_dir.join(&f.name).display(),
                            f.error
                        );
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!("fspl: error: {}", fspl_queue::display_chain(&e));
                }
            }
        }
        if json {
            docs.push(pl.json(&rules, dry_run));
        } else {
            for l in pl.lines(&rules, dry_run) {
                out.push_str(&fspl_queue::escape_controls(&l));
                out.push('\n');
            }
        }
    }
    if json {
        let v = serde_json::json!({
            "dry_run": dry_run,
            "rules": keep,
            "paths": docs,
        });
        out = serde_json::to_string_pretty(&v)?;
        out.push('\n');
    }
    write_stdout(out.as_bytes())?;
    Ok(if failed {
        ExitCode::from(crate::EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}
