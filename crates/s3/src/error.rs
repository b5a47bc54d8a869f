//! S3 errors, each saying whether trying again later may help.

use std::path::PathBuf;

use fspl_transport::{TransportError, TransportErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// Bad or contradictory settings (a bad URL, a missing bucket name).
    #[error("{0}")]
    Config(String),
    #[error(
        "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials)"
    )]
    NoCredentials,
    /// The server refused who we are (bad key, bad secret, expired token):
    /// never retried.
    #[error(
        "s3://{bucket}: the server refused the credentials{from} ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile"
    )]
    BadCredentials {
        bucket: String,
        code: String,
        /// ` from <where they came from>`, or empty.
        from: String,
    },
    /// We are who we say, but may not do this.
    #[error("s3://{bucket}/{key}: {op}: access denied ({message})")]
    Forbidden {
        bucket: String,
        key: String,
        op: &'static str,
        message: String,
    },
    #[error("s3://{bucket}: no such bucket")]
    NoSuchBucket { bucket: String },
    #[error("s3://{bucket}/{key}: no such object")]
    NotFound { bucket: String, key: String },
    /// A conditional create found the key taken.
    #[error("s3://{bucket}/{key}: already exists")]
    AlreadyExists { bucket: String, key: String },
    /// Anything else the server or the network said.
    #[error("s3://{bucket}/{key}: {op}: {message}")]
    Request {
        bucket: String,
        key: String,
        op: &'static str,
        message: String,
        transient: bool,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stream (a local file, a pipe) being uploaded failed.
    #[error("reading what is uploaded to s3://{bucket}/{key}")]
    Read {
        bucket: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// The S3 runtime thread could not start or went away.
    #[error("the S3 runtime: {0}")]
    Runtime(String),
}

impl S3Error {
    /// Network trouble, 5xx, 429, timeouts: back off and try again.
    /// Credentials, permissions, missing buckets, bad settings: not until
    /// someone changes something.
    pub fn is_transient(&self) -> bool {
        match self {
            S3Error::Request { transient, .. } => *transient,
            S3Error::Io { source, .. } | S3Error::Read { source, .. } => {
                fspl_queue::io_is_transient(source)
            }
            S3Error::Runtime(_) => true,
            _ => false,
        }
    }

    /// Classify an object_store error of `op` on `key`.
    pub(crate) fn from_store(
        e: object_store::Error,
        bucket: &str,
        key: &str,
        op: &'static str,
        cred_source: Option<&str>,
    ) -> S3Error {
        use object_store::Error as E;
        let bucket = bucket.to_string();
        let key = key.to_string();
        let (status, body) = http_status(&e);
        let code = body.as_deref().and_then(error_code);
        if code.as_deref() == Some("NoSuchBucket") {
            return S3Error::NoSuchBucket { bucket };
        }
        if let Some(c) = code.as_deref()
            && BAD_CREDENTIALS.contains(&c)
        {
            return S3Error::BadCredentials {
                bucket,
                code: c.to_string(),
                from: cred_source.map(|s| format!(" from {s}")).unwrap_or_default(),
            };
        }
        match e {
            E::NotFound { .. } => return S3Error::NotFound { bucket, key },
            E::AlreadyExists { .. } | E::Precondition { .. } => {
                return S3Error::AlreadyExists { bucket, key };
            }
            E::Unauthenticated { .. } => {
                return S3Error::BadCredentials {
                    bucket,
                    code: code.unwrap_or_else(|| "401".into()),
                    from: cred_source.map(|s| format!(" from {s}")).unwrap_or_default(),
                };
            }
            E::PermissionDenied { .. } => {
                return S3Error::Forbidden {
                    bucket,
                    key,
                    op,
                    message: code
                        .or_else(|| message_of(body.as_deref()))
                        .unwrap_or_else(|| "403".into()),
                };
            }
            _ => {}
        }
        let transient = match status {
            Some(s) => s >= 500 || s == 429 || s == 408,
            // No status: the request never got an answer (connection
            // refused or reset, timeout, DNS) - or a local problem such
            // as a bad setting, which object_store reports before sending.
            None => !matches!(
                e,
                E::InvalidPath { .. }
                    | E::NotSupported { .. }
                    | E::NotImplemented { .. }
                    | E::UnknownConfigurationKey { .. }
            ),
        };
        let message = match (status, code) {
            (Some(s), Some(c)) => format!("HTTP {s} {c}"),
            (Some(s), None) => format!("HTTP {s}"),
            (None, _) => one_line(&innermost(&e)),
        };
        S3Error::Request {
            bucket,
            key,
            op,
            message,
            transient,
        }
    }
}

/// S3 error codes that mean "who you are is wrong".
const BAD_CREDENTIALS: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
    // s3s and MinIO for an access key they do not know.
    "NotSignedUp",
];

/// The HTTP status and body of the request that failed, if it got one
/// (object_store keeps its request error private: read from the messages
/// of the chain, "... status code: 403 Forbidden: <body>").
fn http_status(e: &object_store::Error) -> (Option<u16>, Option<String>) {
    let mut text = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        text.push_str(&err.to_string());
        text.push('\n');
        cur = err.source();
    }
    let status = text.find("status code: ").and_then(|i| {
        let d = &text[i + 13..];
        d.get(..3).and_then(|n| n.parse::<u16>().ok())
    });
    let body = text.contains("<Code>").then_some(text);
    (status, body)
}

/// `<Code>X</Code>` of an S3 error document.
fn error_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + 6;
    let end = body[start..].find("</Code>")? + start;
    let c = body[start..end].trim();
    (!c.is_empty() && c.len() < 100).then(|| c.to_string())
}

fn message_of(body: Option<&str>) -> Option<String> {
    let body = body?;
    let start = body.find("<Message>")? + 9;
    let end = body[start..].find("</Message>")? + start;
    Some(one_line(&body[start..end]))
}

/// The innermost cause's message (reqwest's chain ends in the useful one:
/// "Connection refused (os error 111)").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msgs = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        msgs.push(err.to_string());
        cur = err.source();
    }
    // The last message that is not empty, plus the one above it when that
    // one says what failed ("error sending request").
    let last = msgs.iter().rev().find(|m| !m.is_empty()).cloned().unwrap_or_default();
    let last = last.trim().to_string();
    if msgs.len() >= 3 {
        let above = &msgs[msgs.len() - 2];
        if above.len() < 200 && !above.contains(&last) {
            return format!("{}: {last}", above.trim());
        }
    }
    last
}

fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.trim();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

impl From<S3Error> for TransportError {
    fn from(e: S3Error) -> TransportError {
        let kind = if e.is_transient() {
            TransportErrorKind::Transient
        } else {
            TransportErrorKind::Permanent
        };
        TransportError::Backend {
            message: fspl_queue::display_chain(&e),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_the_body() {
        assert_eq!(
            error_code("<Error><Code>NoSuchBucket</Code><Message>x</Message></Error>").as_deref(),
            Some("NoSuchBucket")
        );
        assert_eq!(error_code("<Error></Error>"), None);
        assert_eq!(message_of(Some("<Message>a\nb</Message>")).as_deref(), Some("a b"));
    }
}
