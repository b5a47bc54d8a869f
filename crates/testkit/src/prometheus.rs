//! A real Prometheus server and its `promtool`, for the metrics tests:
//! started by the test on 127.0.0.1 on a free port, with its own
//! configuration and storage directory, a short scrape and rule
//! evaluation interval, and killed on Drop. Debian's `prometheus` package
//! (which ships `promtool`) is installed when either is missing (never
//! skipped).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Install Debian's prometheus package once, if the server or promtool is
/// missing. The package's own service is not started (the tests start
/// their own server).
pub fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let lock =
            File::create(std::env::temp_dir().join("fspl-test-prometheus-install.lock")).unwrap();
        lock.lock().unwrap();
        if Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
            return;
        }
        crate::procs::apt_install(
            &["--no-install-recommends", "prometheus"],
            "installing prometheus failed",
        );
        assert!(
            Path::new(PROMTOOL).exists(),
            "{PROMTOOL} missing after installing"
        );
    });
}

/// Run promtool with `args`, `stdin` on its standard input.
pub fn promtool(args: &[&str], stdin: &[u8]) -> Output {
    ensure_installed();
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// A running Prometheus server.
pub struct Prometheus {
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Prometheus {
    /// Start a server in `dir` (created) scraping each `(job_name,
    /// "127.0.0.1:PORT")` target every 200 ms and evaluating `rule_files`
    /// as often; returns once it says it is ready.
    pub fn start(dir: &Path, targets: &[(&str, String)], rule_files: &[&Path]) -> Prometheus {
        ensure_installed();
        std::fs::create_dir_all(dir).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n  evaluation_interval: 200ms\n",
        );
        config.push_str("rule_files:\n");
        for r in rule_files {
            config.push_str(&format!("  - {:?}\n", r.to_str().unwrap()));
        }
        config.push_str("scrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job:?}\n    static_configs:\n      - targets: [{addr:?}]\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("prometheus.log");
        for _attempt in 0..10 {
            let port = crate::free_port();
            let child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap())
                .current_dir(dir)
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus {
                port,
                dir: dir.to_path_buf(),
                log: log.clone(),
                child,
            };
            let deadline = Instant::now() + crate::SOON;
            loop {
                if p.child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                if p.get("/-/ready").is_some_and(|(code, _)| code == 200) {
                    return p;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready: {}",
                    p.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "prometheus did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` (HTTP/1.0): (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// An instant query through the HTTP API: the `data.result` vector
    /// (panics unless Prometheus answers `status: success`).
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let (code, body) = self
            .get(&format!("/api/v1/query?query={}", url_encode(expr)))
            .expect("query prometheus");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: HTTP {code}: {body}"));
        assert_eq!(v["status"], "success", "{expr}: {body}");
        v["data"]["result"].as_array().unwrap().clone()
    }

    /// The single value of `expr`'s result, if it has exactly one series.
    pub fn value(&self, expr: &str) -> Option<f64> {
        match &self.query(expr)[..] {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// The alerts Prometheus has (pending or firing), from /api/v1/alerts.
    pub fn alerts(&self) -> Vec<Value> {
        let (_, body) = self.get("/api/v1/alerts").expect("query prometheus");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"].as_array().unwrap().clone()
    }

    /// The scrape targets and their health, from /api/v1/targets.
    pub fn targets(&self) -> Vec<Value> {
        let (_, body) = self.get("/api/v1/targets").expect("query prometheus");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["activeTargets"].as_array().unwrap().clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` from 127.0.0.1:`port` with plain HTTP/1.0: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
