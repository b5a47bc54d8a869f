//! remaphore's configuration file, as it is (docs/nats.md):
//!
//! ```text
//! server: nats://127.0.0.1:4222        # repeatable
//! credentials: /etc/remaphore/nats.creds
//! subject: remaphore
//! default_identity: <base58 public key>
//! destination: com.example.host1
//! allow_skew: 5s                       # Go duration
//!
//! [ Identities ]
//! <base58 public key> <base58 64-byte secret> [ping, *]
//!
//! [ Peers ]
//! com.example.host2 <base58 public key> [ping]
//! ```
//!
//! fspl's additions are keys before the first section, which the original
//! ignores: `authorize: PUBKEY PATTERN...` (messages from that peer are
//! accepted only where the local destination matches one of the patterns),
//! `durable_max_age:`, `durable_state:` and `durable_ack_wait:` (durable
//! mode).
//!
//! Differences from the original, all refusals of configs it would load and
//! then misbehave with: keys are checked (the secret's public half must be
//! the listed public key; weak, small-order public keys are refused), the
//! default identity must be one of the identities, a negative `allow_skew`
//! is refused, and `credentials:` may be left out (a server without
//! authentication).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fspl_trust::{PublicKey, SecretKey};

use super::duration;
use super::pattern;

pub const DEFAULT_PATH: &str = "/etc/remaphore/remaphore.conf";
pub const DEFAULT_SKEW: Duration = Duration::from_secs(3);
pub const DEFAULT_DURABLE_ACK_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_DURABLE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
}

/// A verb list: `[a, b]` lowercased; `*` allows every verb.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verbs(pub Vec<String>);

impl Verbs {
    /// Verbs are compared without regard to ASCII case, on both sides (the
    /// original lowercases the config's verbs but not the message's, so
    /// `-v Ping` could never be sent nor accepted except under `*`).
    pub fn allows(&self, verb: &str) -> bool {
        self.0
            .iter()
            .any(|v| v == "*" || v.eq_ignore_ascii_case(verb))
    }

    fn parse(s: &str) -> Option<Verbs> {
        let inner = s.strip_prefix('[')?.strip_suffix(']')?;
        Some(Verbs(
            inner
                .to_lowercase()
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }
}

impl std::fmt::Display for Verbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.0.join(", "))
    }
}

pub struct Identity {
    pub key: SecretKey,
    pub verbs: Verbs,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({} {})",
            self.key.public().to_base58(),
            self.verbs
        )
    }
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub destination: String,
    pub key: PublicKey,
    pub verbs: Verbs,
}

#[derive(Debug)]
pub struct Config {
    pub servers: Vec<String>,
    pub credentials: Option<PathBuf>,
    pub subject: String,
    pub default_identity: PublicKey,
    pub destination: String,
    pub allow_skew: Duration,
    pub identities: Vec<Identity>,
    pub peers: Vec<Peer>,
    /// `authorize:` lines: a peer listed here may address only nodes whose
    /// destination matches one of its patterns.
    pub authorize: HashMap<PublicKey, Vec<String>>,
    pub durable_max_age: Duration,
    pub durable_state: Option<PathBuf>,
    /// How long the server waits for a durable waiter's acknowledgement
    /// before delivering the message again (progress is signalled while a
    /// script runs).
    pub durable_ack_wait: Duration,
}

fn clean(s: &str) -> &str {
    let s = match s.find('#') {
        Some(p) => &s[..p],
        None => s,
    };
    s.trim()
}

fn b58_secret(text: &str) -> Result<SecretKey, String> {
    let bytes = bs58::decode(text)
        .into_vec()
        .map_err(|e| format!("private key is not base58: {e}"))?;
    if bytes.len() != 64 {
        return Err(format!(
            "private key decodes to {} bytes, not 64 (seed and public key)",
            bytes.len()
        ));
    }
    let seed: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    let key = SecretKey::from_seed(seed);
    if key.public().bytes()[..] != bytes[32..] {
        return Err("private key's public half is not its seed's public key".into());
    }
    // A seed's own public key is never weak, but say so explicitly.
    PublicKey::from_bytes(&key.public().bytes()).map_err(|e| e.to_string())?;
    Ok(key)
}

fn b58_public(text: &str) -> Result<PublicKey, String> {
    let bytes = bs58::decode(text)
        .into_vec()
        .map_err(|e| format!("public key {text:?} is not base58: {e}"))?;
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "public key {text:?} decodes to {} bytes, not 32",
            bytes.len()
        )
    })?;
    PublicKey::from_bytes(&arr).map_err(|e| format!("public key {text:?}: {e}"))
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    General,
    Identities,
    Peers,
    Other,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &String::from_utf8_lossy(&text))
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let line_err = |line: usize, msg: String| ConfigError::Line {
            path: path.to_path_buf(),
            line,
            msg,
        };
        let mut servers = Vec::new();
        let mut credentials = None;
        let mut subject = String::new();
        let mut destination = String::new();
        let mut default_identity = None;
        let mut allow_skew = Duration::ZERO;
        let mut identities: Vec<Identity> = Vec::new();
        let mut peers = Vec::new();
        let mut authorize: HashMap<PublicKey, Vec<String>> = HashMap::new();
        let mut durable_max_age = DEFAULT_DURABLE_MAX_AGE;
        let mut durable_state = None;
        let mut durable_ack_wait = DEFAULT_DURABLE_ACK_WAIT;
        let mut section = Section::General;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let l = clean(raw);
            if l.is_empty() {
                continue;
            }
            if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                // The original leaves its state unchanged at an unknown
                // section; we ignore that section's lines instead.
                section = match name.trim().to_lowercase().as_str() {
                    "identities" => Section::Identities,
                    "peers" => Section::Peers,
                    _ => Section::Other,
                };
                continue;
            }
            match section {
                Section::Other => {}
                Section::General => {
                    let Some(p) = l.find(':').filter(|&p| p > 0) else {
                        continue;
                    };
                    let key = clean(&l[..p]).to_lowercase();
                    let value = clean(&l[p + 1..]);
                    if key.is_empty() || value.is_empty() {
                        continue;
                    }
                    match key.as_str() {
                        "server" => servers.push(value.to_string()),
                        "credentials" => credentials = Some(PathBuf::from(value)),
                        "subject" => subject = value.to_string(),
                        "destination" => destination = value.to_string(),
                        "default_identity" => {
                            default_identity = Some(b58_public(value).map_err(|m| line_err(n, m))?)
                        }
                        "allow_skew" => {
                            allow_skew =
                                duration::parse(value).map_err(|e| line_err(n, e.to_string()))?
                        }
                        "durable_max_age" => {
                            durable_max_age =
                                duration::parse(value).map_err(|e| line_err(n, e.to_string()))?;
                            if durable_max_age.is_zero() {
                                return Err(line_err(n, "durable_max_age must not be 0".into()));
                            }
                        }
                        "durable_state" => durable_state = Some(PathBuf::from(value)),
                        "durable_ack_wait" => {
                            durable_ack_wait =
                                duration::parse(value).map_err(|e| line_err(n, e.to_string()))?;
                            if durable_ack_wait < Duration::from_secs(1) {
                                return Err(line_err(
                                    n,
                                    "durable_ack_wait must be at least 1s".into(),
                                ));
                            }
                        }
                        "authorize" => {
                            let mut f = value.split_whitespace();
                            let key = b58_public(f.next().unwrap_or_default())
                                .map_err(|m| line_err(n, m))?;
                            let pats: Vec<String> = f.map(str::to_string).collect();
                            if pats.is_empty() {
                                return Err(line_err(
                                    n,
                                    "authorize: expected PUBKEY PATTERN [PATTERN...]".into(),
                                ));
                            }
                            authorize.entry(key).or_default().extend(pats);
                        }
                        _ => {}
                    }
                }
                Section::Identities => {
                    let f: Vec<&str> = l.splitn(3, char::is_whitespace).collect();
                    if f.len() != 3 {
                        return Err(line_err(
                            n,
                            "identity: expected PUBKEY PRIVKEY [VERBS]".into(),
                        ));
                    }
                    let public = b58_public(f[0]).map_err(|m| line_err(n, m))?;
                    let key = b58_secret(f[1].trim()).map_err(|m| line_err(n, m))?;
                    if key.public() != public {
                        return Err(line_err(
                            n,
                            "identity: the private key does not belong to the public key".into(),
                        ));
                    }
                    let verbs = Verbs::parse(f[2].trim()).ok_or_else(|| {
                        line_err(n, format!("not a verb list: {:?}", f[2].trim()))
                    })?;
                    identities.push(Identity { key, verbs });
                }
                Section::Peers => {
                    let f: Vec<&str> = l.splitn(3, char::is_whitespace).collect();
                    if f.len() != 3 {
                        return Err(line_err(
                            n,
                            "peer: expected DESTINATION PUBKEY [VERBS]".into(),
                        ));
                    }
                    let key = b58_public(f[1]).map_err(|m| line_err(n, m))?;
                    let verbs = Verbs::parse(f[2].trim()).ok_or_else(|| {
                        line_err(n, format!("not a verb list: {:?}", f[2].trim()))
                    })?;
                    peers.push(Peer {
                        destination: f[0].to_string(),
                        key,
                        verbs,
                    });
                }
            }
        }
        let invalid = |msg: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        };
        if servers.is_empty() {
            return Err(invalid(
                "no nats servers configured (server: nats://HOST:PORT)",
            ));
        }
        if identities.is_empty() {
            return Err(invalid("no identities configured ([ Identities ])"));
        }
        if destination.is_empty() {
            return Err(invalid("no destination configured (destination: NAME)"));
        }
        if allow_skew.is_zero() {
            allow_skew = DEFAULT_SKEW;
        }
        if subject.is_empty() {
            subject = "remaphore".into();
        }
        let default_identity = default_identity.unwrap_or_else(|| identities[0].key.public());
        if !identities
            .iter()
            .any(|i| i.key.public() == default_identity)
        {
            return Err(invalid(
                "default_identity is not one of the [ Identities ] (its private key is needed to sign)",
            ));
        }
        Ok(Config {
            servers,
            credentials,
            subject,
            default_identity,
            destination,
            allow_skew,
            identities,
            peers,
            authorize,
            durable_max_age,
            durable_state,
            durable_ack_wait,
        })
    }

    /// The identity to sign with: `key` (default: the default identity),
    /// if it may send `verb` (`None`: replies, any identity may).
    pub fn signer(&self, key: Option<&PublicKey>, verb: Option<&str>) -> Option<&SecretKey> {
        let key = key.unwrap_or(&self.default_identity);
        let id = self.identities.iter().find(|i| i.key.public() == *key)?;
        match verb {
            Some(v) if !id.verbs.allows(v) => None,
            _ => Some(&id.key),
        }
    }

    /// The first `[ Peers ]` entry for a key (as the original: the first
    /// line decides).
    pub fn peer(&self, key: &PublicKey) -> Option<&Peer> {
        self.peers.iter().find(|p| p.key == *key)
    }

    /// May this peer address us? (`authorize:`; peers not listed there may.)
    pub fn authorized_for_us(&self, key: &PublicKey) -> bool {
        match self.authorize.get(key) {
            None => true,
            Some(pats) => pats.iter().any(|p| pattern::matches(&self.destination, p)),
        }
    }

    /// The peers a request to `pattern` expects a reply from.
    pub fn potential_receivers(&self, pattern: &str) -> Vec<&Peer> {
        let mut seen = std::collections::HashSet::new();
        self.peers
            .iter()
            .filter(|p| pattern::matches(&p.destination, pattern))
            .filter(|p| seen.insert(p.key))
            .collect()
    }

    /// The subject messages go on: `<subject>.<suffix or "all">`.
    pub fn message_subject(&self, suffix: Option<&str>) -> String {
        match suffix {
            Some(s) if !s.is_empty() => format!("{}.{s}", self.subject),
            _ => format!("{}.all", self.subject),
        }
    }

    /// The subject replies to a request go on.
    pub fn reply_subject(&self, request_hash: &[u8; 32]) -> String {
        format!("{}.{}", self.subject, super::wire::hex(request_hash))
    }
}

/// remaphore's `-C`: a config with a fresh key pair.
pub fn example_config() -> String {
    let key = SecretKey::generate("");
    let public = key.public();
    let mut secret = key.seed().to_vec();
    secret.extend_from_slice(&public.bytes());
    format!(
        "server: nats://natsserver:4222\n\
         credentials: /path/to/credentials/file\n\
         subject: remaphore\n\
         default_identity: {pk}\n\
         destination: all\n\
         allow_skew: 5s\n\
         \n\
         [ Identities ]\n\
         {pk} {sk} [ping]\n\
         \n\
         [ Peers ]\n",
        pk = public.to_base58(),
        sk = bs58::encode(&secret).into_string(),
    )
}

/// A base58 key pair as remaphore writes them: (public, 64-byte secret).
pub fn base58_pair(key: &SecretKey) -> (String, String) {
    let mut secret = key.seed().to_vec();
    secret.extend_from_slice(&key.public().bytes());
    (
        key.public().to_base58(),
        bs58::encode(&secret).into_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_conf(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/remaphore-vectors/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn the_vectors_configs_parse() {
        let a = Config::parse(Path::new("a.conf"), &vector_conf("a.conf")).unwrap();
        assert_eq!(a.servers, ["nats://127.0.0.1:4444"]);
        assert_eq!(a.credentials.as_deref(), Some(Path::new("test.creds")));
        assert_eq!(a.destination, "com.test.a");
        assert_eq!(a.allow_skew, Duration::from_secs(5));
        assert_eq!(
            a.default_identity.to_base58(),
            "CNXjr76S81qV8EUC2xUJqcHtGUWxHTEHiLMbfU1CEHot"
        );
        assert_eq!(a.peers.len(), 1);
        assert_eq!(a.peers[0].destination, "com.test.b");
        assert!(a.peers[0].verbs.allows("ping"));
        assert!(a.peers[0].verbs.allows("PING"));
        assert!(!a.peers[0].verbs.allows("pong"));
        assert!(a.signer(None, Some("ping")).is_some());
        assert!(a.signer(None, Some("other")).is_none());
        assert!(a.signer(None, None).is_some());
        assert_eq!(a.potential_receivers("com.test.*").len(), 1);
        assert_eq!(a.potential_receivers("com.other.*").len(), 0);
        assert_eq!(a.message_subject(None), "remaphore.all");
        assert_eq!(a.message_subject(Some("x")), "remaphore.x");
    }

    #[test]
    fn example_config_parses_and_round_trips_its_key() {
        let text = example_config();
        let c = Config::parse(Path::new("x"), &text).unwrap();
        assert_eq!(c.destination, "all");
        assert_eq!(c.allow_skew, Duration::from_secs(5));
        assert!(c.signer(None, Some("ping")).is_some());
        assert!(text.ends_with("[ Peers ]\n"));
    }

    fn with(extra_general: &str, identities: &str, peers: &str) -> Result<Config, ConfigError> {
        let k = SecretKey::generate("");
        let (pk, sk) = base58_pair(&k);
        let text = format!(
            "server: nats://x:1\n{extra_general}\ndestination: d.e\n[ Identities ]\n{pk} {sk} [ping]\n{identities}\n[ Peers ]\n{peers}\n"
        );
        Config::parse(Path::new("c.conf"), &text)
    }

    #[test]
    fn weak_peer_key_in_config_is_refused() {
        // The identity point, base58: a key anyone can "sign" for.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let weak = bs58::encode(weak).into_string();
        let e = with("", "", &format!("a.b {weak} [*]")).unwrap_err();
        assert!(e.to_string().contains("weak"), "{e}");
        let e = with(&format!("default_identity: {weak}"), "", "").unwrap_err();
        assert!(e.to_string().contains("weak"), "{e}");
    }

    #[test]
    fn mismatched_identity_halves_are_refused() {
        let a = SecretKey::generate("");
        let b = SecretKey::generate("");
        let (pa, _) = base58_pair(&a);
        let (_, sb) = base58_pair(&b);
        let e = with("", &format!("{pa} {sb} [ping]"), "").unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers_and_nothing_panics() {
        for (g, i, p) in [
            ("allow_skew: 5", "", ""),
            ("allow_skew: -5s", "", ""),
            ("", "x", ""),
            ("", "a b c", ""),
            ("", "", "a.b"),
            ("", "", "a.b 1111 [x]"),
            ("authorize: nope", "", ""),
        ] {
            let e = with(g, i, p).unwrap_err();
            assert!(e.to_string().starts_with("c.conf"), "{e}");
        }
        // Garbage files load or fail, never panic.
        for t in [
            "",
            "[",
            "]",
            "[]",
            ":",
            "a:",
            ":b",
            "[ Peers ]\n[",
            "#",
            "\u{0}",
        ] {
            let _ = Config::parse(Path::new("g"), t);
        }
        let e = Config::parse(Path::new("g"), "").unwrap_err();
        assert!(e.to_string().contains("no nats servers"), "{e}");
    }

    #[test]
    fn authorize_limits_a_peer_to_matching_local_destinations() {
        let p = SecretKey::generate("").public().to_base58();
        let c = with(
            &format!("authorize: {p} x.* d.*"),
            "",
            &format!("a.b {p} [*]"),
        )
        .unwrap();
        let key = b58_public(&p).unwrap();
        assert!(c.authorized_for_us(&key));
        let c = with(&format!("authorize: {p} x.*"), "", &format!("a.b {p} [*]")).unwrap();
        assert!(!c.authorized_for_us(&key));
        let other = SecretKey::generate("").public();
        assert!(c.authorized_for_us(&other));
    }
}
