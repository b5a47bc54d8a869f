//! Connecting to NATS: one or more server URLs, an optional `.creds` file
//! (a user JWT and its nkey seed, as `nsc` writes them), a bound on how
//! long a connection attempt may take, and errors that tell a server that
//! is down (transient) from one that refused us (permanent, one line).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, ServerAddr};

use crate::error::{NatsError, one_line};

/// A `.creds` file larger than this is not one.
const MAX_CREDS_LEN: u64 = 64 * 1024;

/// How to reach a NATS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectConfig {
    /// Server URLs (`nats://HOST:PORT`, `HOST:PORT`, `tls://...`), tried
    /// in turn; more are learnt from a cluster.
    pub servers: Vec<String>,
    /// A `.creds` file: the user's JWT and nkey seed.
    pub creds: Option<PathBuf>,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a request (and a JetStream API call or publish
    /// acknowledgement) may wait for its answer.
    pub request_timeout: Duration,
    /// The client name the server shows (`nats server report connections`).
    pub name: String,
}

impl Default for ConnectConfig {
    fn default() -> ConnectConfig {
        ConnectConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            creds: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            name: "fspl".into(),
        }
    }
}

impl ConnectConfig {
    /// The servers, comma-separated, for messages.
    pub fn servers_text(&self) -> String {
        self.servers.join(",")
    }

    /// The parsed server addresses.
    pub fn addrs(&self) -> Result<Vec<ServerAddr>, NatsError> {
        if self.servers.is_empty() {
            return Err(NatsError::Config("no NATS server given".into()));
        }
        self.servers
            .iter()
            .map(|s| {
                ServerAddr::from_str(s).map_err(|e| {
                    NatsError::Config(format!(
                        "{s:?}: not a NATS server address: {}",
                        one_line(&e)
                    ))
                })
            })
            .collect()
    }

    /// The connect options (credentials read and checked now, so that a
    /// missing or malformed file is reported before any connection).
    pub fn options(&self) -> Result<ConnectOptions, NatsError> {
        let mut opts = ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout));
        if let Some(path) = &self.creds {
            let text = read_creds(path)?;
            opts = opts.credentials(&text).map_err(|e| NatsError::BadCreds {
                path: path.clone(),
                reason: one_line(&e),
            })?;
        }
        Ok(opts)
    }

    /// Connect (one attempt per server; the client reconnects by itself
    /// once connected).
    pub async fn connect(&self) -> Result<Client, NatsError> {
        let addrs = self.addrs()?;
        let opts = self.options()?;
        // One attempt per server at most, each bounded by connect_timeout.
        let budget = self.connect_timeout * (addrs.len() as u32 + 1);
        match tokio::time::timeout(budget, opts.connect(addrs)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                // The server's own words when it gave some ("nats:
                // authorization violation"), else the whole chain.
                let text = match (e.kind(), std::error::Error::source(&e)) {
                    (
                        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication,
                        Some(s),
                    ) => s.to_string().trim_start_matches("nats: ").to_string(),
                    _ => one_line(&e),
                };
                Err(self.connect_error(e.kind(), &text))
            }
            Err(_) => Err(NatsError::Connect {
                servers: self.servers_text(),
                reason: format!("no answer within {:?}", budget),
            }),
        }
    }

    /// [`ConnectConfig::connect`] from a synchronous caller.
    pub fn connect_blocking(&self) -> Result<Client, NatsError> {
        crate::runtime::block_on(self.connect())?
    }

    fn connect_error(&self, kind: ConnectErrorKind, text: &str) -> NatsError {
        let servers = self.servers_text();
        let creds = match &self.creds {
            Some(p) => format!(" (credentials {})", p.display()),
            None => " (no credentials given)".into(),
        };
        match kind {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                NatsError::Auth {
                    servers,
                    reason: format!("{text}{creds}"),
                }
            }
            ConnectErrorKind::ServerParse => NatsError::Config(format!("{servers}: {text}")),
            ConnectErrorKind::Tls => NatsError::Auth {
                servers,
                reason: format!("TLS: {text}"),
            },
            ConnectErrorKind::Dns
            | ConnectErrorKind::TimedOut
            | ConnectErrorKind::Io
            | ConnectErrorKind::MaxReconnects => NatsError::Connect {
                servers,
                reason: text.to_string(),
            },
        }
    }
}

/// The text of a `.creds` file (bounded: it is a few lines).
fn read_creds(path: &std::path::Path) -> Result<String, NatsError> {
    use std::io::Read;
    let err = |source| NatsError::ReadCreds {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut text = String::new();
    f.take(MAX_CREDS_LEN + 1)
        .read_to_string(&mut text)
        .map_err(err)?;
    if text.len() as u64 > MAX_CREDS_LEN {
        return Err(NatsError::BadCreds {
            path: path.to_path_buf(),
            reason: format!("longer than {MAX_CREDS_LEN} bytes"),
        });
    }
    Ok(text)
}
