//! `completions` and `man`: documentation generated from the command-line
//! definitions, so it always matches the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// Print the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "fspl", &mut script);
    crate::output::write_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Write `fspl.1` and one `fspl-COMMAND.1` per command into `out`; print
/// the paths written.
pub fn man(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create directory {}", out.display()))?;
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let mut written = vec![write_page(&top, out, None)?];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(write_page(sub, out, Some("fspl"))?);
    }
    let mut list = String::new();
    for p in written {
        list.push_str(&format!("{}\n", p.display()));
    }
    crate::output::write_stdout(list.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Render one page: clap_mangen's sections, then EXAMPLES (from the
/// command's `after_help`) and SEE ALSO.
fn write_page(cmd: &clap::Command, dir: &Path, parent: Option<&str>) -> anyhow::Result<PathBuf> {
    use roff::{Roff, roman};
    let version = env!("CARGO_PKG_VERSION");
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("fspl {version}"))
        .manual("fspl manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    let mut extra = Roff::new();
    let examples = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let lines: Vec<&str> = examples
        .lines()
        .filter(|l| !l.trim().is_empty() && l.trim() != "Examples:")
        .collect();
    if !lines.is_empty() {
        extra.control("SH", ["EXAMPLES"]);
        for line in lines {
            extra
                .control("PP", [])
                .control("RS", ["4"])
                .control("nf", [])
                .text([roman(line.trim())])
                .control("fi", [])
                .control("RE", []);
        }
    }
    extra.control("SH", ["SEE ALSO"]);
    match parent {
        Some(p) => extra.text([roman(format!("{p}(1)"))]),
        None => extra.text([roman(
            "The fspl documentation: README.md and docs/ (cli.md, security.md, daemon.md) in the source distribution.",
        )]),
    };
    extra.to_writer(&mut page)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut page)?;
    }
    let path = dir.join(man.get_filename());
    std::fs::write(&path, &page).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
