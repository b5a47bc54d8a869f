//! Where the bucket is and who we are: the standard AWS configuration
//! chain, read once when a [`crate::Client`] is made (never by commands
//! that do not use S3).
//!
//! What is read, first match wins for each setting:
//!
//! 1. what the caller set explicitly ([`S3Config`] fields, e.g. from a
//!    daemon config table or the `s3://` URL's query);
//! 2. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`; `AWS_REGION`, then `AWS_DEFAULT_REGION`;
//!    `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`;
//!    `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` / `FSPL_S3_PATH_STYLE`;
//! 3. the profile `AWS_PROFILE` (else `default`) of the shared files
//!    `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`) and
//!    `AWS_CONFIG_FILE` (else `~/.aws/config`, section `[profile NAME]`
//!    or `[default]`): the keys `aws_access_key_id`,
//!    `aws_secret_access_key`, `aws_session_token`, `region`,
//!    `endpoint_url`;
//! 4. what object_store finds by itself when no keys were found: web
//!    identity (`AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`), ECS
//!    container credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` /
//!    `_FULL_URI`), and last the EC2 instance metadata service, unless
//!    `AWS_EC2_METADATA_DISABLED=true`, in which case having no keys is
//!    an error.
//!
//! Not read: `credential_process`, SSO sessions, `role_arn`/`source_profile`
//! chains in profiles, the `s3 =` sub-sections of a profile.
//!
//! Addressing is path-style (`http://endpoint/bucket/key`) unless
//! virtual-hosted style is asked for: S3-compatible servers (MinIO, s3s,
//! Ceph) want path-style, and AWS still serves it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::S3Error;

/// Where the default region is when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Settings of one bucket connection. `Default` reads nothing: use
/// [`S3Config::from_env`] for the chain above.
#[derive(Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    pub region: Option<String>,
    /// `http://127.0.0.1:9000`, `https://s3.example.net` (plain http is
    /// allowed only when asked for by an http:// endpoint).
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `Some(false)`: virtual-hosted style (`bucket.endpoint`); default
    /// path-style.
    pub path_style: Option<bool>,
    /// The AWS profile to read from the shared files (default
    /// `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// A canned ACL (`private`, `public-read`, ...) sent as `x-amz-acl`
    /// with uploads.
    pub acl: Option<String>,
    /// Send a SHA-256 checksum with every upload (the server verifies
    /// that what landed is what was sent).
    pub checksum: bool,
    /// Limits of the HTTP client; `None`: the defaults below.
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    /// How often a request that failed transiently (network, 5xx) is
    /// retried inside one call, and for how long at most.
    pub max_retries: Option<usize>,
    pub retry_timeout: Option<Duration>,
    /// Where the settings came from, for messages (`environment`,
    /// `profile default of ~/.aws/credentials`).
    pub credential_source: Option<String>,
    /// Extra environment to read instead of the process's (tests).
    #[doc(hidden)]
    pub env_override: Option<HashMap<String, String>>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("path_style", &self.path_style)
            .field("profile", &self.profile)
            .field("credential_source", &self.credential_source)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_RETRIES: usize = 3;
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl S3Config {
    /// The settings for `bucket` from the chain described in the module
    /// documentation (fields already set are kept).
    pub fn from_env(bucket: &str) -> Result<S3Config, S3Error> {
        let mut c = S3Config {
            bucket: bucket.to_string(),
            ..S3Config::default()
        };
        c.fill_from_env()?;
        Ok(c)
    }

    fn var(&self, name: &str) -> Option<String> {
        let v = match &self.env_override {
            Some(m) => m.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        v.filter(|s| !s.is_empty())
    }

    /// Fill what is not set yet from the environment and the profile.
    pub fn fill_from_env(&mut self) -> Result<(), S3Error> {
        if self.bucket.is_empty() {
            return Err(S3Error::Config("no bucket given".into()));
        }
        if self.access_key_id.is_none() {
            if let (Some(id), Some(secret)) = (
                self.var("AWS_ACCESS_KEY_ID"),
                self.var("AWS_SECRET_ACCESS_KEY"),
            ) {
                self.access_key_id = Some(id);
                self.secret_access_key = Some(secret);
                self.session_token = self.var("AWS_SESSION_TOKEN");
                self.credential_source = Some("the environment (AWS_ACCESS_KEY_ID)".into());
            } else if self.var("AWS_ACCESS_KEY_ID").is_some() {
                return Err(S3Error::Config(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                ));
            }
        } else if self.credential_source.is_none() {
            self.credential_source = Some("the configuration".into());
        }
        if self.region.is_none() {
            self.region = self
                .var("AWS_REGION")
                .or_else(|| self.var("AWS_DEFAULT_REGION"));
        }
        if self.endpoint.is_none() {
            self.endpoint = self
                .var("AWS_ENDPOINT_URL_S3")
                .or_else(|| self.var("AWS_ENDPOINT_URL"));
        }
        if self.path_style.is_none() {
            if let Some(v) = self.var("FSPL_S3_PATH_STYLE") {
                self.path_style = Some(truthy(&v));
            } else if let Some(v) = self.var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST") {
                self.path_style = Some(!truthy(&v));
            }
        }
        if self.profile.is_none() {
            self.profile = self.var("AWS_PROFILE");
        }
        let explicit_profile = self.profile.is_some();
        let profile = self.profile.clone().unwrap_or_else(|| "default".into());
        let home = self.var("HOME").map(PathBuf::from);
        let creds_file = self
            .var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config_file = self
            .var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        let mut found_profile = false;
        if let Some(path) = &creds_file
            && let Some(ini) = read_ini(path)?
            && let Some(sec) = ini.get(&profile)
        {
            found_profile = true;
            self.take_profile(sec, path, &profile);
        }
        if let Some(path) = &config_file
            && let Some(ini) = read_ini(path)?
        {
            let name = if profile == "default" {
                "default".to_string()
            } else {
                format!("profile {profile}")
            };
            if let Some(sec) = ini.get(&name).or_else(|| ini.get(&profile)) {
                found_profile = true;
                self.take_profile(sec, path, &profile);
            }
        }
        if explicit_profile && !found_profile {
            return Err(S3Error::Config(format!(
                "AWS profile {profile:?} not found in {} or {}",
                show(creds_file.as_deref()),
                show(config_file.as_deref())
            )));
        }
        if self.access_key_id.is_none()
            && self
                .var("AWS_EC2_METADATA_DISABLED")
                .is_some_and(|v| truthy(&v))
            && self.var("AWS_WEB_IDENTITY_TOKEN_FILE").is_none()
            && self.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_none()
            && self.var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_none()
        {
            return Err(S3Error::NoCredentials);
        }
        Ok(())
    }

    fn take_profile(&mut self, sec: &HashMap<String, String>, path: &Path, profile: &str) {
        let get = |k: &str| sec.get(k).filter(|v| !v.is_empty()).cloned();
        if self.access_key_id.is_none()
            && let (Some(id), Some(secret)) =
                (get("aws_access_key_id"), get("aws_secret_access_key"))
        {
            self.access_key_id = Some(id);
            self.secret_access_key = Some(secret);
            self.session_token = get("aws_session_token");
            self.credential_source = Some(format!("profile {profile} of {}", path.display()));
        }
        if self.region.is_none() {
            self.region = get("region");
        }
        if self.endpoint.is_none() {
            self.endpoint = get("endpoint_url");
        }
    }

    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }
}

fn show(p: Option<&Path>) -> String {
    p.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(no HOME)".into())
}

/// The sections of an AWS shared config/credentials file: `[name]` then
/// `key = value` lines; `#`/`;` comments; indented lines (sub-sections
/// such as `s3 =`) are skipped. `None` when the file does not exist.
/// Sections of an INI file: name -> key -> value.
type Ini = HashMap<String, HashMap<String, String>>;

fn read_ini(path: &Path) -> Result<Option<Ini>, S3Error> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(S3Error::Io {
                action: "read",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    if text.len() > 1 << 20 {
        return Err(S3Error::Config(format!(
            "{}: larger than 1 MiB, not an AWS config file",
            path.display()
        )));
    }
    let text = String::from_utf8_lossy(&text);
    let mut out: Ini = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim().to_string();
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        if let (Some(sec), Some((k, v))) = (&current, l.split_once('=')) {
            out.get_mut(sec)
                .expect("section inserted")
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn cfg(pairs: &[(&str, &str)]) -> Result<S3Config, S3Error> {
        let mut c = S3Config {
            bucket: "b".into(),
            env_override: env(pairs),
            ..S3Config::default()
        };
        c.fill_from_env().map(|_| c)
    }

    #[test]
    fn environment_keys_win_over_the_profile() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".aws")).unwrap();
        std::fs::write(
            d.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = s\n\
             [work]\naws_access_key_id=WORKKEY\naws_secret_access_key=ws\naws_session_token=tok\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join(".aws/config"),
            "[default]\nregion = eu-west-1\n[profile work]\nregion=eu-central-1\nendpoint_url = http://127.0.0.1:1\ns3 =\n  addressing_style = virtual\n",
        )
        .unwrap();
        let home = d.path().to_str().unwrap();
        let c = cfg(&[
            ("HOME", home),
            ("AWS_ACCESS_KEY_ID", "ENVKEY"),
            ("AWS_SECRET_ACCESS_KEY", "es"),
        ])
        .unwrap();
        assert_eq!(c.access_key_id.as_deref(), Some("ENVKEY"));
        assert_eq!(c.region(), "eu-west-1");
        let c = cfg(&[("HOME", home)]).unwrap();
        assert_eq!(c.access_key_id.as_deref(), Some("PROFILEKEY"));
        let c = cfg(&[("HOME", home), ("AWS_PROFILE", "work")]).unwrap();
        assert_eq!(c.access_key_id.as_deref(), Some("WORKKEY"));
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert_eq!(c.region(), "eu-central-1");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert!(c.credential_source.unwrap().contains("profile work"));
        let e = cfg(&[("HOME", home), ("AWS_PROFILE", "nope")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("\"nope\" not found"), "{e}");
    }

    #[test]
    fn no_keys_with_metadata_disabled_is_one_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let e = cfg(&[
            ("HOME", d.path().to_str().unwrap()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("no AWS credentials"), "{e}");
        let e = cfg(&[("AWS_ACCESS_KEY_ID", "x")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = S3Config {
            secret_access_key: Some("TOPSECRET".into()),
            ..S3Config::default()
        };
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }
}
