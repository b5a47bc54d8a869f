//! `fspl nats` against the original remaphore (built from
//! shared/remaphore/reference) on a real nats-server: interoperability
//! both ways, the original's faults, exit statuses, durable delivery.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fspl_testkit::nats::NatsServer;
use fspl_testkit::remaphore::{Node, remaphore_bin, write_dummy_creds};
use fspl_testkit::{SOON, private_tempdir, wait_for};

use crate::helper::fspl_bin;

/// A server, a credentials file, and nodes whose configs list each other.
struct Net {
    dir: tempfile::TempDir,
    server: NatsServer,
    creds: PathBuf,
}

impl Net {
    fn new() -> Net {
        let dir = private_tempdir("fspl-remaphore");
        let server = NatsServer::start(&dir.path().join("nats"));
        let creds = write_dummy_creds(&dir.path().join("test.creds"));
        Net { dir, server, creds }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `node`'s config listing `peers` (each with `verbs`).
    fn config(&self, node: &Node, peers: &[(&Node, &str)], extra: &str) -> PathBuf {
        node.write_config(
            &self.path(&format!("{}.conf", node.destination)),
            &self.server.url(),
            &self.creds,
            peers,
            extra,
        )
    }
}

/// The environment of a script remaphore runs: exactly its variables (and
/// the PWD sh adds itself), sorted.
pub(crate) const SCRIPT_ENV: [&str; 7] = [
    "PWD",
    "REMAPHORE_DESTMATCH",
    "REMAPHORE_MSG",
    "REMAPHORE_SENDER",
    "REMAPHORE_TIME",
    "REMAPHORE_UUID",
    "REMAPHORE_VERB",
];

/// A script that records its argv and environment in `<dir>/<name>.log`
/// and prints two lines.
fn recorder(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.sh"));
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n{{ printf 'argv:'; for a in \"$@\"; do printf ' [%s]' \"$a\"; done; echo; env | sort; echo ---; }} >> {log}\necho \"done $1\"\necho \"by {name}\"\n",
            log = dir.join(format!("{name}.log")).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// Runs of the recorder: (argv line, environment lines).
pub type Runs = Vec<(String, Vec<String>)>;

pub fn runs(log: &str) -> Runs {
    log.split("---\n")
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            let mut lines = r.lines();
            let argv = lines.next().unwrap().to_string();
            (argv, lines.map(str::to_string).collect())
        })
        .collect()
}

/// Wait for the original's waiter and ours (recorders "go" and "us"),
/// each of which must exit 0: the runs each recorded.
fn both_ran(d: &Path, go: Waiter, us: Waiter) -> (Runs, Runs) {
    let (gc, _, gerr) = go.finish();
    let (uc, _, uerr) = us.finish();
    assert_eq!(gc, Some(0), "{gerr}");
    assert_eq!(uc, Some(0), "{uerr}");
    (runs(&log_of(d, "go")), runs(&log_of(d, "us")))
}

/// A waiting process whose stderr goes to a file; started when it says
/// it is subscribed.
struct Waiter {
    child: Child,
    stderr: PathBuf,
}

impl Waiter {
    fn start(mut cmd: Command, stderr: PathBuf) -> Waiter {
        let f = std::fs::File::create(&stderr).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(f)
            .spawn()
            .unwrap();
        let w = Waiter { child, stderr };
        wait_for("the waiter to subscribe", SOON, || {
            let s = std::fs::read_to_string(&w.stderr).unwrap_or_default();
            s.contains("Ready") || s.contains("ready:")
        });
        w
    }

    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + SOON;
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "waiter did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        (st.code(), out, err)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ours(config: &Path) -> Command {
    let mut c = Command::new(fspl_bin());
    c.arg("nats").arg("-c").arg(config);
    c
}

fn original(config: &Path) -> Command {
    let mut c = Command::new(remaphore_bin());
    c.arg("-c").arg(config);
    c
}

/// fspl called as `remaphore` (a symlink).
fn ours_as_remaphore(dir: &Path, config: &Path) -> Command {
    let link = dir.join("bin/remaphore");
    if !link.exists() {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(fspl_bin(), &link).unwrap();
    }
    let mut c = Command::new(link);
    c.arg("-c").arg(config);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

fn ok(c: Command) -> Output {
    let out = run(c);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A bare NATS client on the server's port (no authorization configured):
/// publish raw bytes, or capture what is published on a subject.
struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let mut w = s;
        w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .unwrap();
        let mut raw = Raw { r, w };
        raw.ping();
        raw
    }

    fn ping(&mut self) {
        self.w.write_all(b"PING\r\n").unwrap();
        loop {
            let mut l = String::new();
            self.r.read_line(&mut l).unwrap();
            if l.starts_with("PONG") {
                return;
            }
            assert!(!l.is_empty() && !l.starts_with("-ERR"), "{l}");
        }
    }

    fn publish(&mut self, subject: &str, data: &[u8]) {
        self.w
            .write_all(format!("PUB {subject} {}\r\n", data.len()).as_bytes())
            .unwrap();
        self.w.write_all(data).unwrap();
        self.w.write_all(b"\r\n").unwrap();
        self.ping();
    }

    fn subscribe(&mut self, subject: &str) {
        self.w
            .write_all(format!("SUB {subject} 1\r\n").as_bytes())
            .unwrap();
        self.ping();
    }

    /// The next message's payload.
    fn next(&mut self) -> Vec<u8> {
        loop {
            let mut l = String::new();
            self.r.read_line(&mut l).unwrap();
            if l.starts_with("PING") {
                self.w.write_all(b"PONG\r\n").unwrap();
                continue;
            }
            if let Some(rest) = l.strip_prefix("MSG ") {
                let n: usize = rest.split_whitespace().last().unwrap().parse().unwrap();
                let mut buf = vec![0u8; n + 2];
                self.r.read_exact(&mut buf).unwrap();
                buf.truncate(n);
                return buf;
            }
        }
    }
}

fn env_without(lines: &[String], key: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.starts_with(&format!("{key}=")))
        .cloned()
        .collect()
}

/// Node C's keys come from `fspl keygen --format base58`.
fn node_from_our_keygen(dir: &Path, destination: &str) -> Node {
    let k = dir.join(format!("{destination}.key"));
    let mut c = Command::new(fspl_bin());
    c.args(["keygen", "--format", "base58", "-o"]).arg(&k);
    ok(c);
    Node {
        destination: destination.into(),
        public: std::fs::read_to_string(k.with_extension("key.pub"))
            .unwrap()
            .trim()
            .into(),
        secret: std::fs::read_to_string(&k).unwrap().trim().into(),
    }
}

fn three(net: &Net) -> (Node, Node, Node, PathBuf, PathBuf, PathBuf) {
    let a = Node::new("com.test.a");
    let b = Node::new("com.test.b");
    let c = node_from_our_keygen(net.dir.path(), "com.test.c");
    let peers = [(&a, "[*]"), (&b, "[*]"), (&c, "[*]")];
    let ac = net.config(&a, &peers, "");
    let bc = net.config(&b, &peers, "");
    let cc = net.config(&c, &peers, "");
    (a, b, c, ac, bc, cc)
}

/// Our send reaches the original's waiter and ours; both run the script
/// with the same argv and the same environment (but for the destination
/// each matched).
#[test]
fn our_send_runs_the_same_script_argv_and_env_on_the_original_and_on_ours() {
    let net = Net::new();
    let d = net.dir.path();
    let (_a, b, c, ac, bc, cc) = three(&net);
    let mut gw = original(&bc);
    gw.args(["-o", "-t", "20s"]).arg(recorder(d, "go"));
    let go = Waiter::start(gw, net.path("go.err"));
    let mut ow = ours(&cc);
    ow.args(["wait", "-o", "-t", "20s", "--"])
        .arg(recorder(d, "us"));
    let us = Waiter::start(ow, net.path("us.err"));
    let mut s = ours(&ac);
    s.args([
        "send",
        "-D",
        "com.test.*",
        "-v",
        "deploy",
        "-u",
        "job-42",
        "--",
    ])
    .args(["hello,", "world", "-x"]);
    ok(s);
    let (g, u) = both_ran(d, go, us);
    assert_eq!(g.len(), 1);
    assert_eq!(u.len(), 1);
    assert_eq!(g[0].0, "argv: [deploy] [hello, world -x]");
    assert_eq!(u[0].0, g[0].0);
    assert!(
        g[0].1
            .contains(&format!("REMAPHORE_DESTMATCH={}", b.destination))
    );
    assert!(
        u[0].1
            .contains(&format!("REMAPHORE_DESTMATCH={}", c.destination))
    );
    assert!(g[0].1.contains(&"REMAPHORE_UUID=6a6f622d3432".to_string()));
    assert_eq!(
        env_without(&g[0].1, "REMAPHORE_DESTMATCH"),
        env_without(&u[0].1, "REMAPHORE_DESTMATCH")
    );
    // Exactly remaphore's variables (and the PWD sh adds itself).
    let keys: Vec<&str> = u[0]
        .1
        .iter()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(keys, SCRIPT_ENV);
}

/// Regression: a script named without a path was looked up in the
/// script's own (cleared) environment, so only in `/bin:/usr/bin`, where
/// the original (Go's `exec.Command`) finds it through the waiter's PATH.
/// Now ours finds it there too, and starts it without copying itself.
#[test]
fn a_script_named_without_a_path_is_found_through_the_waiters_path_as_the_original_finds_it() {
    let net = Net::new();
    let d = net.dir.path();
    let (_a, _b, _c, ac, bc, cc) = three(&net);
    let bin = d.join("scripts");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["go", "us"] {
        std::fs::rename(recorder(d, name), bin.join(format!("record-{name}"))).unwrap();
    }
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let mut gw = original(&bc);
    gw.env("PATH", &path).args(["-o", "-t", "20s", "record-go"]);
    let go = Waiter::start(gw, net.path("go.err"));
    let mut ow = ours(&cc);
    ow.env("PATH", &path)
        .args(["wait", "-o", "-t", "20s", "--", "record-us"]);
    let us = Waiter::start(ow, net.path("us.err"));
    let mut s = ours(&ac);
    s.args(["send", "-D", "com.test.*", "-v", "deploy", "--", "hello"]);
    ok(s);
    let (g, u) = both_ran(d, go, us);
    assert_eq!(g.len(), 1, "the original did not run its script");
    assert_eq!(u.len(), 1, "ours did not run its script");
    assert_eq!(u[0].0, g[0].0);
    assert_eq!(u[0].0, "argv: [deploy] [hello]");
}

/// The original's send reaches our waiter (here called as `remaphore`,
/// with the original's flags) and runs the script as the original does.
#[test]
fn original_send_reaches_ours_called_as_remaphore_with_the_same_argv_and_env() {
    let net = Net::new();
    let d = net.dir.path();
    let (a, _b, _c, ac, bc, cc) = three(&net);
    let mut ow = ours_as_remaphore(d, &cc);
    ow.args(["-o", "-t", "20s", "-v", "ping,deploy"])
        .arg(recorder(d, "us"));
    let us = Waiter::start(ow, net.path("us.err"));
    let mut gw = original(&bc);
    gw.args(["-o", "-t", "20s"]).arg(recorder(d, "go"));
    let go = Waiter::start(gw, net.path("go.err"));
    let mut s = original(&ac);
    s.args(["-s", "-D", "com.test.**", "-v", "deploy", "two words"]);
    ok(s);
    let (uc, _, uerr) = us.finish();
    let (gc, _, gerr) = go.finish();
    assert_eq!(uc, Some(0), "{uerr}");
    assert_eq!(gc, Some(0), "{gerr}");
    let g = runs(&log_of(d, "go"));
    let u = runs(&log_of(d, "us"));
    assert_eq!(u[0].0, "argv: [deploy] [two words]");
    assert_eq!(u[0].0, g[0].0);
    assert!(u[0].1.contains(&format!("REMAPHORE_SENDER={}", a.public)));
    assert_eq!(
        env_without(&g[0].1, "REMAPHORE_DESTMATCH"),
        env_without(&u[0].1, "REMAPHORE_DESTMATCH")
    );
}

/// Our request collects the replies of the original's responder and of
/// ours, framed as the original frames them; the original's request
/// collects ours.
#[test]
fn requests_are_answered_across_implementations() {
    let net = Net::new();
    let d = net.dir.path();
    let (_a, _b, _c, ac, bc, cc) = three(&net);
    let mut gw = original(&bc);
    gw.args(["-t", "30s"]).arg(recorder(d, "go"));
    let _go = Waiter::start(gw, net.path("go.err"));
    let mut ow = ours(&cc);
    ow.args(["wait", "-t", "30s", "--"]).arg(recorder(d, "us"));
    let _us = Waiter::start(ow, net.path("us.err"));

    let mut r = ours(&ac);
    r.args(["request", "-D", "com.test.[bc]", "-t", "10s", "q"]);
    // No peer matches that pattern literally: no known receivers.
    let out = run(r);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no known receivers"));

    let mut r = ours(&ac);
    r.args(["request", "-D", "com.test.*", "-t", "20s", "question"]);
    let out = ok(r);
    let text = String::from_utf8(out.stdout).unwrap();
    // Both replies have two lines: framed, with one separator throughout.
    let seps: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("--> "))
        .collect();
    assert_eq!(seps.len(), 2, "{text}");
    assert_eq!(seps[0], seps[1]);
    assert_eq!(seps[0].len(), 32);
    for (dest, who) in [("com.test.b", "go"), ("com.test.c", "us")] {
        let want = format!(
            "--> {s}\n{dest},0,done ping\nby {who}\n--< {s}\n",
            s = seps[0]
        );
        assert!(text.contains(&want), "{text}\nwanted {want}");
    }

    // And the original's request to our node.
    let mut r = original(&bc);
    r.args(["-r", "-D", "com.test.c", "-t", "20s", "from-go"]);
    let out = ok(r);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\ncom.test.c,0,done ping\nby us\n--< "),
        "{text}"
    );
}

/// The original panics on a pattern segment whose prefix is longer than
/// the local segment (any authorised peer can crash every receiver with
/// one message); ours drops it and goes on.
#[test]
fn crafted_pattern_that_crashes_the_original_neither_crashes_nor_matches_ours() {
    let net = Net::new();
    let d = net.dir.path();
    let (_a, _b, _c, ac, bc, cc) = three(&net);
    let mut ow = ours(&cc);
    ow.args(["wait", "-o", "-t", "20s", "--"])
        .arg(recorder(d, "us"));
    let us = Waiter::start(ow, net.path("us.err"));
    let mut gw = original(&bc);
    gw.args(["-o", "-t", "20s"]).arg(recorder(d, "go"));
    let go = Waiter::start(gw, net.path("go.err"));
    for pattern in [
        "com.test.cccccccccc*",
        "com.test.*cccccccccc",
        "com.test.c*c",
    ] {
        let mut s = ours(&ac);
        s.args(["send", "-D", pattern, "crafted"]);
        ok(s);
    }
    let mut s = ours(&ac);
    s.args(["send", "-D", "com.test.*", "good"]);
    ok(s);
    let (uc, _, uerr) = us.finish();
    assert_eq!(uc, Some(0), "{uerr}");
    let u = runs(&log_of(d, "us"));
    assert_eq!(u.len(), 1, "{u:?}");
    assert_eq!(u[0].0, "argv: [ping] [good]");
    // The original died on the first one (the fault fixed here).
    let (gc, _, gerr) = go.finish();
    assert_eq!(gc, Some(2), "{gerr}");
    assert!(gerr.contains("panic"), "{gerr}");
    assert!(log_of(d, "go").is_empty());
}

/// Replays inside the skew window, messages outside it (the captured
/// vectors, signed by a listed peer but long ago), unknown senders, verbs
/// a peer may not send, peers not authorised for our destination, and
/// non-canonical re-spellings: all dropped; the good message after them
/// runs once.
#[test]
fn replays_old_messages_unknown_peers_wrong_verbs_and_unauthorised_peers_are_dropped() {
    let net = Net::new();
    let d = net.dir.path();
    let a = Node::new("com.test.a");
    let stranger = Node::new("com.test.s");
    let limited = Node::new("com.test.l");
    let boxed = Node::new("com.test.x");
    // The vectors' sender A (its captured messages are from long ago).
    let vec_a = Node {
        destination: "com.test.v".into(),
        public: "CNXjr76S81qV8EUC2xUJqcHtGUWxHTEHiLMbfU1CEHot".into(),
        secret: String::new(),
    };
    let c = Node::new("com.test.c");
    let cc = net.config(
        &c,
        &[
            (&a, "[ping]"),
            (&limited, "[ping]"),
            (&vec_a, "[*]"),
            (&boxed, "[*]"),
        ],
        &format!("authorize: {} com.other.*", boxed.public),
    );
    let all = [(&a, "[*]"), (&c, "[*]")];
    let ac = net.config(&a, &all, "");
    let sc = net.config(&stranger, &all, "");
    let lc = net.config(&limited, &all, "");
    let xc = net.config(&boxed, &all, "");
    let mut ow = ours(&cc);
    ow.args(["wait", "-t", "20s", "--"]).arg(recorder(d, "us"));
    let us = Waiter::start(ow, net.path("us.err"));
    let mut raw = Raw::connect(net.server.port);
    raw.subscribe("remaphore.all");
    // A first good message, captured to replay.
    let mut s = ours(&ac);
    s.args(["send", "first"]);
    ok(s);
    let first = raw.next();
    wait_for("the first message to run", SOON, || {
        runs(&log_of(d, "us")).len() == 1
    });
    for _ in 0..3 {
        raw.publish("remaphore.all", &first);
    }
    // Non-canonical spellings of it (same signature, other hash).
    let text = String::from_utf8(first.clone()).unwrap();
    let f: Vec<&str> = text.splitn(8, ',').collect();
    raw.publish(
        "remaphore.all",
        format!(
            "{},{},{},0{},{},{},{},{}",
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
        )
        .as_bytes(),
    );
    // The captured vectors: valid signatures, times long past.
    let vectors = std::fs::read_to_string(
        fspl_testkit::root().join("crates/nats/tests/remaphore-vectors/messages.jsonl"),
    )
    .unwrap();
    for l in vectors.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        raw.publish("remaphore.all", v["data"].as_str().unwrap().as_bytes());
    }
    for (conf, verb) in [(&sc, "ping"), (&lc, "deploy"), (&xc, "ping")] {
        let mut s = ours(conf);
        s.args(["send", "-v", verb, "bad"]);
        ok(s);
    }
    let mut s = ours(&ac);
    s.args(["send", "last"]);
    ok(s);
    wait_for("the last message to run", SOON, || {
        runs(&log_of(d, "us")).len() >= 2
    });
    drop(us);
    let u = runs(&log_of(d, "us"));
    let argv: Vec<&str> = u.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(argv, ["argv: [ping] [first]", "argv: [ping] [last]"]);
    let err = std::fs::read_to_string(net.path("us.err")).unwrap();
    for reason in [
        "replayed message",
        "not in canonical form",
        "outside the allowed window",
        "is not a known peer",
        "may not send verb",
        "may not address this destination",
    ] {
        assert!(err.contains(reason), "{reason} not in {err}");
    }
}

#[test]
fn exit_statuses_timeout_1_usage_2_runtime_3() {
    let net = Net::new();
    let (_a, _b, _c, ac, _bc, cc) = three(&net);
    // Nothing before the timeout: 1 (both entry points).
    let mut w = ours(&cc);
    w.args(["wait", "-t", "300ms"]);
    assert_eq!(run(w).status.code(), Some(1));
    let mut w = ours_as_remaphore(net.dir.path(), &cc);
    w.args(["-t", "300ms", "-u", "nope"]);
    assert_eq!(run(w).status.code(), Some(1));
    // Usage and config: 2.
    for args in [
        vec!["-s", "-r", "x"],
        vec!["-d", "-D", "x"],
        vec!["-nope"],
        vec!["-t", "5"],
        vec!["-p", "notakey", "-s"],
    ] {
        let mut c = ours_as_remaphore(net.dir.path(), &cc);
        c.args(&args);
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    let mut c = ours(&net.path("missing.conf"));
    c.args(["send", "x"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("fspl: error: cannot read") && err.lines().count() == 1,
        "{err}"
    );
    // Runtime: no known receivers, an unreachable server, an identity
    // without the verb: 3.
    let mut r = ours(&ac);
    r.args(["request", "-D", "org.*", "x"]);
    assert_eq!(run(r).status.code(), Some(3));
    let down = net.path("down.conf");
    let text = std::fs::read_to_string(&ac).unwrap().replace(
        &net.server.url(),
        &format!("nats://127.0.0.1:{}", fspl_testkit::free_port()),
    );
    std::fs::write(&down, text).unwrap();
    let mut s = ours(&down);
    s.args(["send", "x"]);
    assert_eq!(run(s).status.code(), Some(3));
    // -C / example-config: a config that loads, with a fresh key.
    let mut c = ours_as_remaphore(net.dir.path(), &cc);
    c.arg("-C");
    let one = String::from_utf8(ok(c).stdout).unwrap();
    let mut c = ours(&cc);
    c.arg("example-config");
    let two = String::from_utf8(ok(c).stdout).unwrap();
    assert_ne!(one, two);
    assert!(one.contains("[ Identities ]") && one.ends_with("[ Peers ]\n"));
}

/// A waiter that was offline while 100 messages were sent (half of them
/// before a nats-server restart, half after) gets all 100 when it
/// starts, each once, and one more sent after a restart while it waits;
/// run again, it gets none.
#[test]
fn durable_waiter_offline_during_100_sends_and_a_server_restart_gets_each_once() {
    let mut net = Net::new();
    let d = net.dir.path().to_path_buf();
    let (_a, _b, _c, ac, _bc, cc) = three(&net);
    let state = d.join("c.handled");
    let send = |i: usize| {
        let mut s = ours(&ac);
        s.args(["send", "--durable", "-D", "com.test.c", &format!("m{i}")]);
        ok(s);
    };
    for i in 0..50 {
        send(i);
    }
    net.server.restart();
    for i in 50..100 {
        send(i);
    }
    let mut w = ours(&cc);
    w.args(["wait", "--durable", "--state"])
        .arg(&state)
        .args(["-t", "60s", "--"])
        .arg(recorder(&d, "us"));
    let us = Waiter::start(w, d.join("us.err"));
    wait_for("100 scripts", SOON * 2, || {
        runs(&log_of(&d, "us")).len() >= 100
    });
    // Each is acknowledged after its script: wait for the last one's.
    let streams = || {
        let mut st = ours(&cc);
        st.arg("streams");
        String::from_utf8(ok(st).stdout).unwrap()
    };
    // A restart while it waits: it reconnects and goes on.
    net.server.restart();
    send(100);
    wait_for("the 101st script", SOON, || {
        runs(&log_of(&d, "us")).len() >= 101
    });
    wait_for("the last acknowledgement", SOON, || {
        streams().contains("consumer com_test_c pending 0 unacknowledged 0")
    });
    drop(us);
    let argv: Vec<String> = runs(&log_of(&d, "us")).into_iter().map(|r| r.0).collect();
    let want: Vec<String> = (0..=100).map(|i| format!("argv: [ping] [m{i}]")).collect();
    assert_eq!(argv, want);
    // Nothing more, even after another restart.
    net.server.restart();
    let mut w = ours(&cc);
    w.args(["wait", "--durable", "--state"])
        .arg(&state)
        .args(["-t", "2s", "--"])
        .arg(recorder(&d, "us"));
    let out = run(w);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(runs(&log_of(&d, "us")).len(), 101);
    let text = streams();
    assert!(
        text.contains("stream remaphore-remaphore_all subjects remaphore.all messages 101"),
        "{text}"
    );
    assert!(
        text.contains("consumer com_test_c pending 0 unacknowledged 0"),
        "{text}"
    );
}

/// A reply is taken only from a responder expected for the request (a
/// peer whose destination matches its pattern): the original prints the
/// reply of any peer that answers, here one waiting with `-d` (no
/// destination filter) although the request was addressed to another.
#[test]
fn reply_from_a_peer_the_request_was_not_addressed_to_is_dropped() {
    let net = Net::new();
    let d = net.dir.path();
    let (_a, _b, _c, ac, bc, cc) = three(&net);
    // B answers slowly, so that C's reply comes first.
    let mut gw = original(&bc);
    gw.args(["-t", "30s", "sh", "-c", "sleep 1; echo slow"]);
    let _go = Waiter::start(gw, net.path("go.err"));
    // C answers everything, whatever the destination.
    let mut ow = ours(&cc);
    ow.args(["wait", "-d", "-t", "30s", "--"])
        .arg(recorder(d, "us"));
    let _us = Waiter::start(ow, net.path("us.err"));
    // Ours, asking B only: C's reply is dropped.
    let mut r = ours(&ac);
    r.args(["request", "-D", "com.test.b", "-t", "20s", "one"]);
    let out = ok(r);
    let rerr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(rerr.contains("not an expected responder"), "{rerr}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, "com.test.b,0,slow\n");
    // C did answer: the original's request shows the fault.
    assert_eq!(runs(&log_of(d, "us")).len(), 1);
    let err = std::fs::read_to_string(net.path("us.err")).unwrap();
    assert!(err.contains("script exited 0"), "{err}");
    let mut r = original(&ac);
    r.args(["-r", "-D", "com.test.b", "-t", "20s", "two"]);
    let text = String::from_utf8(run(r).stdout).unwrap();
    assert!(text.contains("\ncom.test.c,0,done ping\nby us\n"), "{text}");
}

/// `credentials:` is used when connecting; a server refusing them is one
/// line and exit 3.
#[test]
fn config_credentials_are_presented_and_refused_ones_are_a_one_line_error() {
    use fspl_testkit::nats::{JwtAuth, Options};
    let dir = private_tempdir("fspl-remaphore-auth");
    let server = NatsServer::start_with(
        &dir.path().join("nats"),
        Options {
            auth: Some(JwtAuth::new()),
            ..Options::default()
        },
    );
    let good = server.write_creds(&dir.path().join("good.creds"));
    let bad = dir.path().join("bad.creds");
    fspl_testkit::nats::write_private(
        &bad,
        &server.auth.as_ref().unwrap().stranger_creds("stranger"),
    );
    let a = Node::new("com.test.a");
    let conf = |creds: &Path, name: &str| {
        a.write_config(
            &dir.path().join(name),
            &server.url(),
            creds,
            &[(&a, "[*]")],
            "",
        )
    };
    let good_conf = conf(&good, "good.conf");
    let bad_conf = conf(&bad, "bad.conf");
    let mut w = ours(&good_conf);
    w.args(["wait", "-o", "-t", "20s"]);
    let waiter = Waiter::start(w, dir.path().join("w.err"));
    let mut s = ours(&good_conf);
    s.args(["send", "hi"]);
    ok(s);
    let (code, _, err) = waiter.finish();
    assert_eq!(code, Some(0), "{err}");
    let mut s = ours(&bad_conf);
    s.args(["send", "hi"]);
    let out = run(s);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fspl: error: ") && last.contains("refused"),
        "{err}"
    );
}

/// A message is acknowledged only after its script has finished: a
/// durable waiter killed while the script of m1 runs gets m1 again when it
/// comes back (after `durable_ack_wait`), and the messages after it, each
/// run once more at most.
#[test]
fn durable_waiter_killed_during_a_script_gets_that_message_again() {
    let net = Net::new();
    let d = net.dir.path().to_path_buf();
    let a = Node::new("com.test.a");
    let c = Node::new("com.test.c");
    let peers = [(&a, "[*]"), (&c, "[*]")];
    let ac = net.config(&a, &peers, "");
    let cc = net.config(&c, &peers, "durable_ack_wait: 1s");
    for i in 0..3 {
        let mut s = ours(&ac);
        s.args(["send", "--durable", "-D", "com.test.c", &format!("m{i}")]);
        ok(s);
    }
    // The script kills its waiter (its parent) the first time it sees m1.
    let script = d.join("crash.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$2\" >> {log}\nif [ \"$2\" = m1 ] && [ ! -e {mark} ]; then touch {mark}; kill -9 $PPID; sleep 5; fi\n",
            log = d.join("crash.log").display(),
            mark = d.join("crashed").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let state = d.join("c.handled");
    let waiter = |t: &str| {
        let mut w = ours(&cc);
        w.args(["wait", "--durable", "--state"])
            .arg(&state)
            .args(["-t", t, "--"])
            .arg(&script);
        w
    };
    let out = run(waiter("20s"));
    assert_eq!(out.status.code(), None, "killed by SIGKILL: {out:?}");
    assert_eq!(fspl_testkit::lines(&d.join("crash.log")), ["m0", "m1"]);
    // Back: m1 again (it was never acknowledged), then m2.
    let w = Waiter::start(waiter("30s"), d.join("w2.err"));
    wait_for("m1 and m2", SOON, || {
        fspl_testkit::lines(&d.join("crash.log")).len() >= 4
    });
    drop(w);
    assert_eq!(
        fspl_testkit::lines(&d.join("crash.log")),
        ["m0", "m1", "m1", "m2"]
    );
}
