//! moto (PyPI `moto[server]`) as a second S3-compatible server, for what
//! s3s-fs does not implement: object ACLs (`fspl s3-upload -a`). Started
//! on 127.0.0.1 on a free port, killed on Drop. moto does not check
//! signatures; the tests that need that use s3s-fs.
//!
//! The Python that runs it: `python3` when it can `import moto, boto3`,
//! else a virtual environment under the test cache
//! (`crate::s3::cache_dir()`/moto-venv) where `pip install moto[server]`
//! puts it, once, under a file lock.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MOTO_VERSION: &str = "5.2.1";

fn can_import(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python interpreter with moto and boto3.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let system = PathBuf::from("python3");
        if can_import(&system) {
            return system;
        }
        let venv = crate::s3::cache_dir().join("moto-venv");
        let py = venv.join("bin/python");
        if can_import(&py) {
            return py;
        }
        std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
        let lock = File::create(venv.with_extension("lock")).unwrap();
        lock.lock().unwrap();
        if can_import(&py) {
            return py;
        }
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(st.success(), "python3 -m venv {} failed", venv.display());
        let st = Command::new(&py)
            .args(["-m", "pip", "install", "-q"])
            .arg(format!("moto[server]=={MOTO_VERSION}"))
            .status()
            .expect("pip install moto[server]");
        assert!(st.success(), "pip install moto[server] failed");
        assert!(can_import(&py), "moto installed but not importable");
        py
    })
    .clone()
}

/// A running moto server.
pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    /// Start moto's S3 server; its log goes to `log`.
    pub fn start(log: &Path) -> Moto {
        let py = python();
        for _ in 0..10 {
            let port = crate::free_port();
            let f = File::create(log).unwrap();
            let mut child = Command::new(&py)
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .expect("start moto");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Moto { port, child };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS environment of a client of this server (any keys do).
    pub fn configure(&self, cmd: &mut Command) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// Run a boto3 snippet against this server (`s3` is the client);
    /// returns what it printed.
    pub fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new(python())
            .args(["-c", &script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_bucket(&self, name: &str) {
        self.boto(&format!("s3.create_bucket(Bucket='{name}')"));
    }

    /// The grants of an object's ACL, as `GRANTEE-URI-or-ID PERMISSION`
    /// lines.
    pub fn object_grants(&self, bucket: &str, key: &str) -> Vec<String> {
        self.boto(&format!(
            "for g in s3.get_object_acl(Bucket='{bucket}', Key='{key}')['Grants']:\n    print(g['Grantee'].get('URI') or g['Grantee'].get('ID'), g['Permission'])"
        ))
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// An object's content.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.boto(&format!(
            "import sys\nsys.stdout.write(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read().hex())"
        ))
        .trim()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
