//! A newcomer's first hour (issue 12): the README's install steps, its
//! tutorial and the worked example of docs/security.md run word for word;
//! completions and man pages; the small surprises of the first commands
//! (error wording, hints, help text, a job on a terminal, a forgotten -i);
//! progress from the build scripts.
//!
//! The documentation runner: [`sh_blocks`] takes the fenced blocks of one
//! section of a Markdown file. Blocks marked ```` ```sh ```` are commands
//! and run; every other block (```` ```text ````, ```` ```toml ````, ...) is
//! shown output or file contents and does not. In a command block,
//! `# prints: TEXT` after a command promises that line on stdout, and
//! `# exit status N` that the command fails with status N; any other
//! failing command is an error.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::helper::*;

// ---------------------------------------------------------------------------
// Markdown: sections and fenced blocks.

/// A fenced block of a Markdown section.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// The info string: `sh` blocks run, all others do not.
    pub(crate) lang: String,
    pub(crate) body: String,
    /// The first word of the last paragraph before the block that starts
    /// with bold text (`**Server, once.**` gives `server`), if any.
    label: Option<String>,
    /// Line number of the opening fence (1-based), for messages.
    line: usize,
}

impl Block {
    pub(crate) fn runs(&self) -> bool {
        self.lang == "sh"
    }
}

/// The fenced blocks under the heading `heading` (e.g. `## Tutorial`), up
/// to the next heading of the same or a higher level.
pub(crate) fn blocks(md: &str, heading: &str) -> Vec<Block> {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let mut out = Vec::new();
    let mut inside = false;
    let mut fence: Option<(String, usize, Vec<&str>)> = None;
    let mut label = None;
    for (i, line) in md.lines().enumerate() {
        if let Some((lang, start, body)) = &mut fence {
            if line.trim_end() == "```" {
                out.push(Block {
                    lang: lang.clone(),
                    body: body.join("\n") + "\n",
                    label: label.clone(),
                    line: *start,
                });
                fence = None;
            } else {
                body.push(line);
            }
            continue;
        }
        if line.starts_with('#') {
            let l = line.chars().take_while(|&c| c == '#').count();
            if line.trim_end() == heading {
                inside = true;
                continue;
            }
            if inside && l <= level {
                break;
            }
        }
        if !inside {
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            fence = Some((lang.trim().to_string(), i + 1, Vec::new()));
        } else if let Some(bold) = line.strip_prefix("**") {
            let word: String = bold
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect::<String>()
                .to_lowercase();
            label = Some(word);
        }
    }
    assert!(fence.is_none(), "unterminated fenced block under {heading}");
    assert!(!out.is_empty(), "no fenced blocks under {heading:?}");
    out
}

/// What a command block promises: `# prints: TEXT` lines (in order) and
/// commands that fail (`# exit status N`, as (command text, N)).
fn promises(body: &str) -> (Vec<String>, Vec<(String, i32)>) {
    let mut prints = Vec::new();
    let mut fails = Vec::new();
    for line in body.lines() {
        let Some((cmd, comment)) = line.split_once(" # ") else {
            continue;
        };
        let comment = comment.trim();
        assert!(
            comment.starts_with("prints: ") || !comment.starts_with("print"),
            "a promise the runner cannot read (write `# prints: TEXT`): {line}"
        );
        if let Some(text) = comment.strip_prefix("prints: ") {
            prints.push(text.to_string());
        } else if let Some(rest) = comment.strip_prefix("exit status ") {
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            fails.push((cmd.trim().to_string(), n.parse().unwrap()));
        }
    }
    (prints, fails)
}

// ---------------------------------------------------------------------------
// Running blocks in one bash.

/// One simulated machine: a home directory and a working directory.
pub(crate) struct Host {
    pub(crate) home: PathBuf,
    pub(crate) cwd: PathBuf,
}

/// What one block did.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) block: Block,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// The exit status of its last command.
    status: i32,
    /// Every command that failed, as bash's ERR trap saw it: "CMD (exit N)".
    failed: Vec<String>,
}

/// A directory holding only a `fspl` link to our binary: with /usr/bin and
/// /bin after it, the whole PATH of the documentation runs.
pub(crate) fn path_with_only_fspl(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(fspl_bin(), bin.join("fspl")).unwrap();
    format!("{}:/usr/bin:/bin", bin.display())
}

/// Run `blocks` (all of them command blocks) in order in one bash, each on
/// the host its label names (or `default`), with nothing in the environment
/// but HOME, PATH, LANG and TZ. Each block's stdout and stderr are captured
/// separately; shell state carries over from block to block.
pub(crate) fn run_blocks(
    blocks: &[Block],
    hosts: &BTreeMap<&str, Host>,
    default: &str,
    path: &str,
    scratch: &Path,
) -> Vec<Ran> {
    let out = scratch.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The ERR trap records every failing command while a block runs
    // (`__in` set), not the block's own exit as a whole.
    let mut script = String::from(
        "trap '__e=$?; if [ -n \"$__in\" ]; then printf \"%s (exit %d)\\n\" \"$BASH_COMMAND\" $__e >> \"$__out/$__n.failed\"; fi' ERR\n",
    );
    for (n, b) in blocks.iter().enumerate() {
        assert!(b.runs());
        let name = b.label.as_deref().filter(|l| hosts.contains_key(l));
        let host = &hosts[name.unwrap_or(default)];
        script.push_str(&format!(
            "__n={n}; export HOME='{}'; cd '{}'\n{{\n__in=1\n{}__st=$?; __in=; (exit $__st)\n}} > \"$__out/{n}.out\" 2> \"$__out/{n}.err\"\necho $? > \"$__out/{n}.status\"\n",
            host.home.display(),
            host.cwd.display(),
            b.body
        ));
    }
    let file = scratch.join("doc.sh");
    std::fs::write(&file, &script).unwrap();
    let o = Command::new("/bin/bash")
        .arg(&file)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &hosts[default].home)
        .env("LANG", "C.UTF-8")
        .env("TZ", "UTC")
        .env("__out", &out)
        .current_dir(&hosts[default].cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the documentation script itself failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let read = |n: usize, ext: &str| std::fs::read_to_string(out.join(format!("{n}.{ext}")));
    blocks
        .iter()
        .enumerate()
        .map(|(n, b)| Ran {
            block: b.clone(),
            stdout: read(n, "out").unwrap_or_default(),
            stderr: read(n, "err").unwrap_or_default(),
            status: read(n, "status")
                .unwrap_or_else(|_| panic!("block at line {} did not finish", b.line))
                .trim()
                .parse()
                .unwrap(),
            failed: read(n, "failed")
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect(),
        })
        .collect()
}

/// Check what every block promised (`# prints:`, `# exit status`) and that
/// nothing else failed. Blocks listed in `may_warn` (by index) may write to
/// stderr; all others must not.
pub(crate) fn check_promises(doc: &str, ran: &[Ran], may_warn: &[usize]) {
    for (n, r) in ran.iter().enumerate() {
        let at = format!(
            "{doc}, block at line {} (#{n}):\n{}\nstdout: {:?}\nstderr: {:?}",
            r.block.line, r.block.body, r.stdout, r.stderr
        );
        let (prints, fails) = promises(&r.block.body);
        let mut lines = r.stdout.lines();
        for p in &prints {
            assert!(
                lines.any(|l| l == p),
                "{at}\npromised line {p:?} is not on stdout (in order)"
            );
        }
        let mut expected_failures: Vec<String> = fails
            .iter()
            .map(|(cmd, code)| format!("{cmd} (exit {code})"))
            .collect();
        expected_failures.sort();
        let mut failed = r.failed.clone();
        failed.sort();
        // bash shows the command with ~ unexpanded, as written.
        assert_eq!(failed, expected_failures, "{at}\nfailing commands");
        let last_fails = fails.last().map(|f| f.1);
        if r.block
            .body
            .lines()
            .last()
            .is_some_and(|l| l.contains(" # exit status "))
        {
            assert_eq!(Some(r.status), last_fails, "{at}");
        } else {
            assert_eq!(r.status, 0, "{at}\nthe block's last command failed");
        }
        if !may_warn.contains(&n) {
            assert_eq!(r.stderr, "", "{at}\nunexpected stderr");
        }
    }
}

pub(crate) fn read_doc(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

pub(crate) fn host(base: &Path, name: &str) -> Host {
    let h = Host {
        home: base.join(name).join("home"),
        cwd: base.join(name).join("work"),
    };
    std::fs::create_dir_all(&h.home).unwrap();
    std::fs::create_dir_all(&h.cwd).unwrap();
    h
}

/// The `text` block right after command block `ran[n]` in `all`.
pub(crate) fn shown_after<'a>(all: &'a [Block], ran: &Ran) -> &'a str {
    let i = all
        .iter()
        .position(|b| b.line == ran.block.line)
        .expect("block");
    let next = &all[i + 1];
    assert_eq!(
        next.lang, "text",
        "no output shown after line {}",
        ran.block.line
    );
    &next.body
}

// ---------------------------------------------------------------------------
// Item 2: the documentation runs as written.

#[test]
fn readme_tutorial_runs_verbatim_in_a_fresh_home() {
    let sb = Sandbox::new();
    let path = path_with_only_fspl(sb.dir.path());
    let hosts = BTreeMap::from([("me", host(sb.dir.path(), "me"))]);
    let md = read_doc("README.md");
    let all = blocks(&md, "## Tutorial");
    let cmds: Vec<Block> = all.iter().filter(|b| b.runs()).cloned().collect();
    assert!(cmds.len() >= 6, "the tutorial has its command blocks");
    let ran = run_blocks(&cmds, &hosts, "me", &path, sb.dir.path());
    check_promises("README.md Tutorial", &ran, &[]);
    let me = &hosts["me"];

    // What the text promises beyond `# prints:`.
    let find = |needle: &str| {
        ran.iter()
            .find(|r| r.block.body.contains(needle))
            .unwrap_or_else(|| panic!("no block with {needle:?}"))
    };
    // The sender's number after two jobs (it was 2 when a missing db.dump
    // made the second prepare fail).
    assert_eq!(find("prepare-get-next").stdout, "3\n");
    // queue-ls: the header and a row per job, as shown after the block.
    let ls = find("fspl queue-ls");
    let shown = shown_after(&all, ls);
    let first_words = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(first_words(&ls.stdout), first_words(shown));
    assert_eq!(first_words(&ls.stdout), ["ID", "1", "2"]);
    assert_eq!(
        ls.stdout.lines().next(),
        shown.lines().next(),
        "queue-ls header"
    );
    // The handler restored the documents and the dump.
    assert_eq!(
        std::fs::read_to_string(me.home.join("restore/Documents/notes.txt")).unwrap(),
        "notes from monday\n"
    );
    assert_eq!(
        std::fs::read(me.home.join("db/latest.dump")).unwrap(),
        std::fs::read(me.cwd.join("db.dump")).unwrap()
    );
    // queue-status explains the gap exactly as shown, with the home
    // directory shown as /home/me.
    let status = find("fspl queue-status");
    let shown = shown_after(&all, status);
    let home = me.home.to_str().unwrap();
    assert_eq!(status.stdout.replace(home, "/home/me"), shown);
    assert!(
        status
            .stdout
            .contains("blocked: waiting for seq 3; seq 4 present")
    );
    // After the NOP filled the gap, the queue is empty and moved on.
    let q = me.home.join("queue");
    assert_eq!(sb.job_files(&q), Vec::<String>::new());
    assert_eq!(std::fs::read_to_string(q.join("nextseq")).unwrap(), "5\n");
    // The lost job is still a valid job 3 nobody ran.
    let info = ok(run_with_file(
        ours(["stdin-info"]),
        &me.cwd.join("lost.fspl"),
    ));
    assert!(String::from_utf8_lossy(&info).contains("FSPL_SEQ=3\n"));
}

#[test]
fn security_worked_example_runs_verbatim_on_two_hosts() {
    let sb = Sandbox::new();
    let base = sb.dir.path();
    let path = path_with_only_fspl(base);
    let hosts = BTreeMap::from([
        ("server", host(base, "server")),
        ("laptop", host(base, "laptop")),
        ("intruder", host(base, "intruder")),
    ]);
    // "files travel through a directory ~/sync that a sync tool keeps the
    // same on both": one directory, linked from every home.
    let sync = base.join("sync");
    std::fs::create_dir(&sync).unwrap();
    for h in hosts.values() {
        std::os::unix::fs::symlink(&sync, h.home.join("sync")).unwrap();
    }
    let md = read_doc("docs/security.md");
    let all = blocks(&md, "## A worked example: two hosts and a trust file");
    let cmds: Vec<Block> = all.iter().filter(|b| b.runs()).cloned().collect();
    for b in &cmds {
        let l = b.label.as_deref().unwrap_or("none");
        assert!(
            hosts.contains_key(l),
            "block at line {} runs on no known host ({l})",
            b.line
        );
    }
    let labels: Vec<&str> = cmds.iter().map(|b| b.label.as_deref().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "server", "laptop", "server", "laptop", "server", "intruder", "server", "laptop",
            "server"
        ]
    );
    let ran = run_blocks(&cmds, &hosts, "server", &path, base);
    // Block 6 (the server's run after the intrusion) logs the refusals.
    check_promises("docs/security.md worked example", &ran, &[6]);

    let server = &hosts["server"];
    let laptop = &hosts["laptop"];
    // The trust file holds the laptop's real key, not the doc's sample.
    let trust = std::fs::read_to_string(server.home.join(".config/fspl/trust.toml")).unwrap();
    let laptop_pub =
        std::fs::read_to_string(laptop.home.join(".config/fspl/laptop.key.pub")).unwrap();
    assert!(trust.contains(&format!("key = \"{}\"", laptop_pub.trim())));
    // The toml block shown matches what the command wrote, but for the key.
    let shown_toml = all.iter().find(|b| b.lang == "toml").unwrap();
    let no_key = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("key = "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(no_key(&trust), no_key(&shown_toml.body));

    // Job 1 arrived encrypted and signed, was listed as the laptop's and ran.
    let first_run = &ran[4];
    let row = first_run.stdout.lines().nth(1).unwrap_or("");
    // The signer column as shown: the header was checked, not the payload.
    let shown_row = shown_after(&all, first_run).lines().nth(1).unwrap_or("");
    let signer = shown_row.split_once(".fspl ").map_or("", |(_, s)| s);
    assert_eq!(signer, "laptop (payload unchecked)");
    assert!(
        row.starts_with("1 ") && row.ends_with(&format!(".fspl {signer}")),
        "queue-ls row: {:?}",
        first_run.stdout
    );
    assert_eq!(
        first_run.stdout.lines().next(),
        shown_after(&all, first_run).lines().next(),
        "queue-ls header with the signer column"
    );
    assert_eq!(
        std::fs::read_to_string(server.home.join("restore/Documents/notes.txt")).unwrap(),
        "notes from monday\n"
    );

    // The intruder's two jobs: refused, one warning line each, moved aside,
    // nextseq held; the handler did not run them.
    let refused = &ran[6];
    let warnings: Vec<&str> = refused.stderr.lines().collect();
    assert_eq!(warnings.len(), 2, "{:?}", refused.stderr);
    let shown = shown_after(&all, refused);
    for reason in [
        "job refused: unsigned job, and a trust file requires every job to be signed; moved to ",
        "job refused: signed by a key that is not in the trust file (SHA256:",
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(&format!("fspl: warning: {reason}"))),
            "no warning {reason:?}: {warnings:?}"
        );
        assert!(shown.contains(reason), "the doc shows {reason:?}");
    }
    for w in &warnings {
        assert!(w.contains(" seq=2 ") && w.ends_with(" sender=\"-\""), "{w}");
    }
    let rejected = std::fs::read_dir(server.home.join("queue/rejected"))
        .unwrap()
        .count();
    assert_eq!(rejected, 4, "two files and two .reason files");

    // The laptop's real job 2 ran afterwards.
    assert_eq!(
        std::fs::read_to_string(server.home.join("db/latest.dump")).unwrap(),
        "pretend this is a database dump\n"
    );
    assert_eq!(
        std::fs::read_to_string(server.home.join("queue/nextseq")).unwrap(),
        "3\n"
    );
    // Nothing is left in transit.
    let left: Vec<_> = std::fs::read_dir(&sync).unwrap().collect();
    assert!(left.is_empty(), "left in ~/sync: {left:?}");
}

/// Run the command blocks of section `heading` of `doc` on one host, "me"
/// (home `sb/me/home`), with `env` exported first (e.g. a private
/// XDG_RUNTIME_DIR); check their promises (no block may write to stderr).
/// Returns each command block's text and stdout.
pub(crate) fn run_doc_section(
    sb: &Sandbox,
    doc: &str,
    heading: &str,
    env: &[(&str, &Path)],
) -> Vec<(String, String)> {
    let path = path_with_only_fspl(sb.dir.path());
    let hosts = BTreeMap::from([("me", host(sb.dir.path(), "me"))]);
    let md = read_doc(doc);
    let all = blocks(&md, heading);
    let mut cmds: Vec<Block> = all.iter().filter(|b| b.runs()).cloned().collect();
    assert!(!cmds.is_empty(), "no command blocks under {heading}");
    // A watchdog: a block that waits forever (a daemon that never
    // answers) ends the script after two minutes instead of hanging the
    // test; on the way out, whatever the blocks left running in the
    // background (a daemon) is stopped. `disown`: the blocks' own
    // background jobs are %1, %2...
    let mut setup = String::from(
        "( sleep 120; kill -TERM $$ ) > /dev/null 2>&1 & __wd=$!; disown\n\
         trap 'kill $__wd $(jobs -p) 2> /dev/null' EXIT\n",
    );
    for (k, v) in env {
        setup.push_str(&format!("export {k}='{}'\n", v.display()));
    }
    cmds.insert(
        0,
        Block {
            lang: "sh".into(),
            body: setup,
            label: None,
            line: 0,
        },
    );
    let ran = run_blocks(&cmds, &hosts, "me", &path, sb.dir.path());
    check_promises(&format!("{doc} {heading}"), &ran, &[]);
    ran.into_iter()
        .skip(1)
        .map(|r| (r.block.body, r.stdout))
        .collect()
}

// ---------------------------------------------------------------------------
// Item 1: installation, completions, man pages.

/// Make sure `tool` is installed (with apt-get, as the tests may), or fail.
fn need_tool(tool: &str, package: &str) {
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have(tool) {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        install();
    }
    assert!(
        have(tool),
        "`{tool}` is needed and could not be installed: apt-get install -y {package}"
    );
}

/// The commands `fspl --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let help = String::from_utf8(ok(run(ours(["--help"])))).unwrap();
    let list = help
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    let subs: Vec<String> = list
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|s| s != "help")
        .collect();
    assert!(subs.len() > 20, "{subs:?}");
    subs
}

#[test]
fn completions_are_printed_for_every_shell_and_name_the_commands() {
    let subs = subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = String::from_utf8(ok(run(ours(["completions", shell])))).unwrap();
        for s in &subs {
            assert!(out.contains(s.as_str()), "{shell} completion lacks {s}");
        }
        // And options of a command.
        assert!(out.contains("allow-job-params"), "{shell}");
    }
    // bash and zsh accept the scripts.
    let sb = Sandbox::new();
    let bash = sb.path("fspl.bash");
    std::fs::write(&bash, ok(run(ours(["completions", "bash"])))).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && complete -p fspl", bash.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("fspl"),
        "bash did not register the completion: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // An unknown shell is a usage error.
    let bad = run(ours(["completions", "tcsh"]));
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn man_pages_are_written_for_every_command_and_render() {
    need_tool("man", "man-db");
    let sb = Sandbox::new();
    let dir = sb.path("man/man1");
    let listed = String::from_utf8(ok(run(ours([
        OsStr::new("man"),
        OsStr::new("--out"),
        dir.as_os_str(),
    ]))))
    .unwrap();
    let subs = subcommands();
    let mut expected = vec!["fspl.1".to_string()];
    expected.extend(subs.iter().map(|s| format!("fspl-{s}.1")));
    let mut got: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(listed.lines().count(), expected.len(), "one path per page");
    for page in &expected {
        let o = Command::new("man")
            .arg("-l")
            .arg(dir.join(page))
            .env("MANWIDTH", "100")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "man -l {page}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
        if page != "fspl.1" {
            let sub = page.trim_start_matches("fspl-").trim_end_matches(".1");
            assert!(text.contains("EXAMPLES"), "{page} has examples");
            assert!(text.contains(&format!("fspl {sub}")), "{page}: {text}");
        } else {
            for s in &subs {
                assert!(text.contains(&format!("fspl-{s}(1)")), "fspl.1 lists {s}");
            }
        }
    }
}

#[test]
fn readme_install_block_puts_completions_and_man_pages_where_they_are_found() {
    need_tool("man", "man-db");
    let sb = Sandbox::new();
    let me = host(sb.dir.path(), "me");
    // As after `cargo install`: fspl in ~/.cargo/bin, first on the PATH.
    let cargo_bin = me.home.join(".cargo/bin");
    std::fs::create_dir_all(&cargo_bin).unwrap();
    std::os::unix::fs::symlink(fspl_bin(), cargo_bin.join("fspl")).unwrap();
    let path = format!("{}:/usr/bin:/bin", cargo_bin.display());
    let md = read_doc("README.md");
    let cmds: Vec<Block> = blocks(&md, "### Shell completions and man pages")
        .into_iter()
        .filter(Block::runs)
        .collect();
    assert_eq!(cmds.len(), 1);
    let hosts = BTreeMap::from([("me", me)]);
    let ran = run_blocks(&cmds, &hosts, "me", &path, sb.dir.path());
    check_promises("README.md Shell completions and man pages", &ran, &[]);
    let home = &hosts["me"].home;
    for (file, needle) in [
        (
            ".local/share/bash-completion/completions/fspl",
            "queue-process",
        ),
        (".zfunc/_fspl", "#compdef fspl"),
        (".config/fish/completions/fspl.fish", "complete -c fspl"),
        (
            ".cargo/share/man/man1/fspl-queue-process.1",
            ".TH fspl-queue-process",
        ),
        (".cargo/share/man/man1/fspl.1", ".TH fspl"),
    ] {
        let text = std::fs::read_to_string(home.join(file)).unwrap_or_default();
        assert!(text.contains(needle), "{file} lacks {needle:?}");
    }
    // `man fspl-queue-process` (the block's last command) found the page.
    assert!(
        ran[0]
            .stdout
            .contains("fspl-queue-process - Run the jobs in a queue"),
        "man output: {:?}",
        ran[0].stdout
    );
}

// ---------------------------------------------------------------------------
// Item 10: errors and small surprises.

#[test]
fn error_and_warning_lines_carry_no_os_error_numbers() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    // An error line: a missing input file, and an injected EIO.
    let e = one_line_error(run(ours([
        OsStr::new("prepare"),
        OsStr::new("-s"),
        OsStr::new("-"),
        OsStr::new("-i"),
        sb.path("missing").as_os_str(),
    ])));
    assert!(e.ends_with(": No such file or directory"), "{e}");
    let mut w = ours([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]);
    w.env("FAILPOINTS", "write:before-fsync=return(eio)");
    let e = one_line_error(run_with_input(
        w,
        &ok(run(ours(["prepare-nop", "--seq", "9"]))),
    ));
    assert!(e.ends_with(": Input/output error"), "{e}");
    assert!(!e.contains("os error"), "{e}");

    // A warning line: a processed job file that cannot be deleted (a file
    // mounted over it: EBUSY).
    let job = ok(run(ours(["prepare", "-s", "-"])));
    ok(run_with_input(
        ours([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]),
        &job,
    ));
    let name = sb.job_files(&q).pop().unwrap();
    let file = q.join("jobs").join(&name);
    let copy = sb.path("copy");
    std::fs::copy(&file, &copy).unwrap();
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(&copy)
        .arg(&file)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mount --bind (the test runs as root, like CI)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(file.clone());
    let o = run(ours([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        q.as_os_str(),
        OsStr::new("true"),
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("fspl: warning: cannot delete processed job file")
            && lines[0].contains("Device or resource busy"),
        "{err}"
    );
    assert!(!lines[0].contains("os error"), "{err}");
}

#[test]
fn missing_queue_directory_error_suggests_queue_init() {
    let sb = Sandbox::new();
    let q = sb.path("no-such-queue");
    let qs = q.to_str().unwrap();
    let hint = format!(
        "fspl: error: {qs}: no such queue directory; create one with `fspl queue-init -q {qs}`"
    );
    let cases: [(&[&str], i32); 9] = [
        (&["queue-ls"], 1),
        (&["queue-write"], 1),
        (&["queue-process", "true"], 1),
        (&["queue-get-next"], 1),
        (&["queue-set-next", "4"], 1),
        (&["queue-info", "-j", "1"], 1),
        (&["queue-payload", "-j", "1"], 1),
        (&["queue-status"], 2),
        (&["queue-check"], 2),
    ];
    for (args, code) in cases {
        let mut all = vec![args[0], "-q", qs];
        all.extend_from_slice(&args[1..]);
        let o = run(ours(&all));
        assert_eq!(o.status.code(), Some(code), "{all:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!("{hint}\n"),
            "{all:?}"
        );
        assert!(o.stdout.is_empty());
        if code == 1 {
            // The reference fails the same way (with a backtrace).
            let r = run(theirs(&all));
            assert_eq!(r.status.code(), o.status.code(), "{all:?} vs the reference");
        }
    }
    assert!(!q.exists(), "nothing was created");
}

/// Run `fspl ARGS` with stdout on a new pseudo-terminal; returns the output
/// (stdout empty) and what reached the terminal.
fn run_on_terminal(args: &[&str], cwd: &Path) -> (Output, Vec<u8>) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills in two new descriptors, owned below.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both are fresh descriptors nobody else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut c = ours(args);
    c.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped());
    let out = c.output().unwrap();
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&master), libc::F_GETFL);
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::F_SETFL,
            fl | libc::O_NONBLOCK,
        );
    }
    let mut screen = Vec::new();
    let mut m = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut m, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => screen.extend_from_slice(&buf[..n]),
        }
    }
    (out, screen)
}

#[test]
fn prepare_refuses_to_write_a_binary_job_to_a_terminal() {
    let sb = Sandbox::new();
    for args in [
        &["prepare", "-s", "seq"][..],
        &["prepare", "-s", "seq", "-i", "-", "--", "x"],
        &["prepare-nop", "-s", "seq"],
        &["prepare-fail", "-s", "seq"],
        &["prepare-nop", "--seq", "5"],
    ] {
        let (o, screen) = run_on_terminal(args, sb.dir.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err,
            "fspl: error: refusing to write a binary job to a terminal: redirect stdout to a file \
             or a pipe (`fspl prepare ... > job.fspl`, `... | base64`); no sequence number was used\n"
        );
        assert!(
            screen.is_empty(),
            "{args:?} wrote to the terminal: {screen:?}"
        );
        assert!(!sb.path("seq").exists(), "no number was taken");
    }
    // Not a terminal: it works as before.
    let o = run(ours(["prepare", "-s", "-"]));
    assert!(o.status.success() && !o.stdout.is_empty());
}

#[test]
fn prepare_without_input_warns_when_stdin_holds_data() {
    let sb = Sandbox::new();
    let warning = "fspl: warning: stdin has data, but no -i was given: the job's payload is \
                   empty (`-i -` sends stdin)\n";
    let data = sb.path("data");
    std::fs::write(&data, b"meant as the payload\n").unwrap();
    let check_empty_payload = |job: &[u8]| {
        let p = ok(run_with_input(ours(["stdin-payload"]), job));
        assert!(p.is_empty());
    };
    // stdin is a file with data.
    let o = run_with_file(ours(["prepare", "-s", "-", "--", "x"]), &data);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr), warning, "file on stdin");
    check_empty_payload(&o.stdout);
    // stdin is a pipe that already holds data.
    let (r, mut w) = std::io::pipe().unwrap();
    w.write_all(b"meant as the payload\n").unwrap();
    drop(w);
    let mut c = ours(["prepare", "-s", "-"]);
    c.stdin(Stdio::from(r));
    let o = c.output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr), warning, "pipe on stdin");
    check_empty_payload(&o.stdout);
    // No data, or -i given, or a job without payload: no warning.
    let o = run(ours(["prepare", "-s", "-"]));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "/dev/null");
    let o = run_with_input(ours(["prepare", "-s", "-"]), b"");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "empty pipe");
    for args in [
        &["prepare", "-s", "-", "-i", "-"][..],
        &["prepare-nop", "-s", "-"],
    ] {
        let o = run_with_file(ours(args), &data);
        assert!(o.status.success());
        assert_eq!(String::from_utf8_lossy(&o.stderr), "", "{args:?}");
    }
    // -l error silences it.
    let o = run_with_file(ours(["-l", "error", "prepare", "-s", "-"]), &data);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

#[test]
fn mistyped_queue_proces_suggests_queue_process_first() {
    let o = run(ours(["queue-proces", "-q", "q", "true"]));
    assert_eq!(o.status.code(), Some(2));
    // Same status as the reference.
    assert_eq!(
        run(theirs(["queue-proces", "-q", "q", "true"]))
            .status
            .code(),
        Some(2)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let tip = err
        .lines()
        .find(|l| l.contains("tip:"))
        .unwrap_or_else(|| panic!("no tip: {err}"));
    let first = tip.split('\'').nth(1).unwrap();
    assert_eq!(first, "queue-process", "{tip}");
    assert!(tip.matches('\'').count() <= 6, "at most three names: {tip}");
}

#[test]
fn seqfile_options_of_prepare_get_next_and_set_next_are_described() {
    for sub in ["prepare-get-next", "prepare-set-next"] {
        let help = String::from_utf8(ok(run(ours([sub, "-h"])))).unwrap();
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with("-s, --seqfile <FILE>"))
            .unwrap();
        let desc = line
            .trim_start()
            .trim_start_matches("-s, --seqfile <FILE>")
            .trim();
        assert!(desc.contains("sequence file"), "{sub}: {line:?}");
    }
}

#[test]
fn top_level_help_lists_each_command_on_one_short_line() {
    let help = String::from_utf8(ok(run(ours(["--help"])))).unwrap();
    let list = help
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    for line in list.lines() {
        assert!(line.len() <= 100, "too long ({}): {line}", line.len());
    }
    for sub in ["queue-status", "queue-check"] {
        let line = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(sub))
            .unwrap();
        assert!(line.len() <= 80, "{line}");
        // The details are in the command's own --help.
        let long = String::from_utf8(ok(run(ours([sub, "--help"])))).unwrap();
        assert!(long.contains("Exit status: 0 = "), "{sub} --help: {long}");
    }
}

#[test]
fn every_command_help_ends_with_examples() {
    for sub in subcommands() {
        for flag in ["-h", "--help"] {
            let help = String::from_utf8(ok(run(ours([sub.as_str(), flag])))).unwrap();
            let (_, examples) = help
                .rsplit_once("\nExamples:\n")
                .unwrap_or_else(|| panic!("{sub} {flag} has no examples:\n{help}"));
            let lines: Vec<&str> = examples.lines().collect();
            assert!(
                (1..=2).contains(&lines.len()),
                "{sub} {flag}: one or two examples, at the end: {examples:?}"
            );
            for l in lines {
                assert!(l.starts_with("  "), "{sub}: {l:?}");
                let mentions = l.contains(&format!("fspl {sub} "))
                    || l.ends_with(&format!("fspl {sub}"))
                    || sub == "gen-filename" && l.contains("$(fspl gen-filename)");
                assert!(mentions, "{sub}: example {l:?} does not run fspl {sub}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Item 12: the build scripts say what they are doing.

/// A fake `cargo` that logs each call, one line per call, and for `build`
/// puts our binary where a release build would.
fn fake_cargo(dir: &Path, log: &Path) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         echo \"cargo $*\" >> '{log}'\n\
         echo \"    (fake cargo $1)\" >&2\n\
         if [ \"$1\" = build ]; then mkdir -p \"$CARGO_TARGET_DIR/release\" && cp '{fspl}' \"$CARGO_TARGET_DIR/release/fspl\"; fi\n\
         exit 0\n",
        log = log.display(),
        fspl = fspl_bin().display()
    );
    let cargo = bin.join("cargo");
    std::fs::write(&cargo, script).unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Run a script of ours with the fake cargo first on the PATH; stdout and
/// stderr merged, as a terminal shows them.
fn run_script(
    name: &str,
    fake: &Path,
    target: &Path,
    extra_env: &[(&str, &OsStr)],
) -> (i32, String) {
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!(
            "exec '{}' 2>&1",
            root().join("scripts").join(name).display()
        ))
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("FSPL")
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn build_scripts_show_progress_instead_of_building_silently() {
    let sb = Sandbox::new();
    let log = sb.path("cargo.log");
    let fake = fake_cargo(sb.dir.path(), &log);
    let target = sb.path("target");

    // scripts/demo: says it builds, lets cargo show its progress, says how
    // long it took, then runs the demo with what it built.
    let (code, out) = run_script("demo", &fake, &target, &[]);
    assert_eq!(code, 0, "{out}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.starts_with("cargo build --release"), "{calls}");
    assert!(!calls.contains("--quiet"), "{calls}");
    let lines: Vec<&str> = out.lines().collect();
    let announce = lines
        .iter()
        .position(|l| l.starts_with("==> building fspl"))
        .unwrap();
    let cargo = lines
        .iter()
        .position(|l| l.contains("(fake cargo build)"))
        .unwrap();
    assert!(announce < cargo, "{out}");
    assert!(
        lines[cargo + 1..]
            .iter()
            .any(|l| l.starts_with("==> built in ") && l.ends_with('s')),
        "{out}"
    );
    assert!(out.contains("Done: 3 jobs"), "{out}");

    // scripts/test: each step is announced and timed; no cargo step that
    // compiles runs with --quiet; the tests are built (with progress)
    // before they run.
    std::fs::remove_file(&log).unwrap();
    let (code, out) = run_script(
        "test",
        &fake,
        &target,
        &[
            ("FSPL_REFERENCE", reference_bin().as_os_str()),
            // The package step needs a real cargo-deb and release build.
            ("FSPL_SKIP_PACKAGE", OsStr::new("1")),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert!(calls.len() >= 4, "{calls:?}");
    let no_run = calls
        .iter()
        .position(|c| c.starts_with("cargo test") && c.contains("--no-run"))
        .unwrap_or_else(|| panic!("tests are not built first: {calls:?}"));
    let test_run = calls
        .iter()
        .position(|c| c.starts_with("cargo test") && !c.contains("--no-run"))
        .unwrap();
    assert!(no_run < test_run, "{calls:?}");
    for c in &calls[..test_run] {
        let quiet = c.split_whitespace().any(|w| w == "--quiet" || w == "-q");
        assert!(!quiet, "a build step runs silently: {c}");
    }
    let lines: Vec<&str> = out.lines().collect();
    let steps = lines.iter().filter(|l| l.starts_with("==> ")).count();
    let timed = lines
        .iter()
        .filter(|l| {
            l.trim_start().starts_with('(') && l.trim_end().ends_with("s)") && !l.contains("fake")
        })
        .count();
    assert!(steps >= calls.len(), "every cargo call is announced: {out}");
    assert!(timed >= calls.len(), "every cargo call is timed: {out}");
    for (i, l) in lines.iter().enumerate() {
        if l.contains("(fake cargo") {
            assert!(
                lines[..i]
                    .iter()
                    .rev()
                    .find(|p| p.starts_with("==> ") || p.contains("(fake cargo"))
                    .is_some_and(|p| p.starts_with("==> ")),
                "a cargo call without its own announcement: {out}"
            );
        }
    }
}
