//! Where jobs go to and come from, named by URL as restic and rclone name
//! repositories: a plain path or `dir:PATH`, `ssh://[USER@]HOST[:PORT]/QUEUE`.
//! Schemes of later backends (`s3://`, `nats://`) are recognised by name so
//! that the error can say what is known.

use std::path::PathBuf;

use crate::error::TransportError;

/// A parsed destination or source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory: a queue directory (jobs go into its `jobs/`
    /// through the verifying queue-write path) or any other directory,
    /// such as a synced folder (files appear there by atomic rename).
    Dir(PathBuf),
    /// A queue on another host, through `ssh` and `fspl serve-stdin`.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        /// The queue name the intake maps to a directory (never a path).
        queue: String,
    },
    /// A location of a backend that lives in a crate above this one (its
    /// SDK is async: `s3://`, `nats://`), kept whole for that backend to
    /// parse; see [`crate::register`].
    Remote {
        /// `s3`, `nats`.
        scheme: String,
        /// The URL as given.
        url: String,
    },
}

/// Schemes of backends that register themselves from a higher crate
/// ([`crate::register`]); a URL with one of them parses as
/// [`Location::Remote`] whether or not that backend is compiled in.
pub const REMOTE_SCHEMES: &[&str] = &["s3", "nats"];

/// The schemes `Location::parse` knows, for error messages.
pub const KNOWN: &str = "a plain path, dir:PATH, ssh://[USER@]HOST[:PORT]/QUEUE, s3://BUCKET/PREFIX, nats://HOST:PORT/NAME";

impl Location {
    /// As [`Location::parse`], for a command-line argument: a name that is
    /// not UTF-8 can only be a path (`dir:` is stripped from it).
    pub fn parse_os(s: &std::ffi::OsStr) -> Result<Location, TransportError> {
        use std::os::unix::ffi::OsStrExt;
        match s.to_str() {
            Some(s) => Location::parse(s),
            None => {
                let b = s.as_bytes();
                let b = b.strip_prefix(b"dir:").unwrap_or(b);
                Ok(Location::Dir(PathBuf::from(std::ffi::OsStr::from_bytes(b))))
            }
        }
    }

    pub fn parse(s: &str) -> Result<Location, TransportError> {
        let bad = |reason: &str| TransportError::BadUrl {
            url: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(p) = s.strip_prefix("dir:") {
            if p.is_empty() {
                return Err(bad("dir: needs a path"));
            }
            return Ok(Location::Dir(PathBuf::from(p)));
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            // A plain path (which may contain ':' after a '/', as paths can).
            if let Some((scheme, _)) = s.split_once(':')
                && !scheme.contains('/')
                && !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
                && scheme.len() > 1
            {
                return Err(TransportError::UnknownScheme(
                    s.to_string(),
                    scheme.to_string(),
                ));
            }
            if s.is_empty() {
                return Err(bad("empty destination"));
            }
            return Ok(Location::Dir(PathBuf::from(s)));
        };
        match scheme {
            "ssh" => {
                let (authority, queue) = rest.split_once('/').ok_or_else(|| {
                    bad("ssh:// needs a queue name: ssh://[USER@]HOST[:PORT]/QUEUE")
                })?;
                let (user, hostport) = match authority.rsplit_once('@') {
                    Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
                    Some(_) => return Err(bad("empty user name before '@'")),
                    None => (None, authority),
                };
                let (host, port) = split_host_port(hostport).map_err(|r| bad(&r))?;
                if host.is_empty() {
                    return Err(bad("no host"));
                }
                if host.starts_with('-') || user.as_deref().is_some_and(|u| u.starts_with('-')) {
                    return Err(bad("a host or user may not start with '-'"));
                }
                check_queue_name(queue).map_err(|r| bad(&r))?;
                Ok(Location::Ssh {
                    user,
                    host,
                    port,
                    queue: queue.to_string(),
                })
            }
            remote if REMOTE_SCHEMES.contains(&remote) => {
                if rest.is_empty() {
                    return Err(bad(&format!("{remote}:// needs more after the scheme")));
                }
                Ok(Location::Remote {
                    scheme: remote.to_string(),
                    url: s.to_string(),
                })
            }
            other => Err(TransportError::UnknownScheme(
                s.to_string(),
                other.to_string(),
            )),
        }
    }
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in host".to_string())?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("unexpected {after:?} after the host")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("bad port {p:?}"))?,
        ),
    };
    Ok((host.to_string(), port))
}

/// A queue name as an intake maps it: one path component, no `..`, no
/// leading `.`, no NUL or control characters, at most 255 bytes.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty queue name".into());
    }
    if name.len() > 255 {
        return Err("queue name longer than 255 bytes".into());
    }
    if name.contains('/') {
        return Err(format!("queue name {name:?} contains '/'"));
    }
    if name.starts_with('.') {
        return Err(format!("queue name {name:?} starts with '.'"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("queue name {name:?} contains a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        assert_eq!(
            Location::parse("/srv/q").unwrap(),
            Location::Dir("/srv/q".into())
        );
        assert_eq!(
            Location::parse("dir:rel/x:y").unwrap(),
            Location::Dir("rel/x:y".into())
        );
        assert_eq!(
            Location::parse("./a:b").unwrap(),
            Location::Dir("./a:b".into())
        );
        assert_eq!(
            Location::parse("ssh://me@host.example:2222/backups").unwrap(),
            Location::Ssh {
                user: Some("me".into()),
                host: "host.example".into(),
                port: Some(2222),
                queue: "backups".into()
            }
        );
        assert_eq!(
            Location::parse("ssh://[::1]/q").unwrap(),
            Location::Ssh {
                user: None,
                host: "::1".into(),
                port: None,
                queue: "q".into()
            }
        );
    }

    #[test]
    fn remote_schemes_are_kept_whole_for_their_backend() {
        assert_eq!(
            Location::parse("s3://bucket/pre/fix").unwrap(),
            Location::Remote {
                scheme: "s3".into(),
                url: "s3://bucket/pre/fix".into()
            }
        );
        let e = Location::parse("nats://").unwrap_err().to_string();
        assert!(e.contains("needs more"), "{e}");
        let e = crate::open_sink(&Location::parse("s3://b/p").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not compiled into"), "{e}");
    }

    #[test]
    fn bad_urls_are_one_line_errors() {
        for (url, want) in [
            ("ftp://x/y", "unknown scheme \"ftp\""),
            ("s4:bucket", "unknown scheme \"s4\""),
            ("ssh://host", "needs a queue name"),
            ("ssh://host/..", "starts with '.'"),
            ("ssh://host/../etc", "contains '/'"),
            ("ssh://host/a/b", "contains '/'"),
            ("ssh://host:0/q", "bad port"),
            ("ssh://-oProxyCommand=x/q", "may not start with '-'"),
            ("ssh://@host/q", "empty user"),
            ("dir:", "needs a path"),
        ] {
            let e = Location::parse(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = Location::parse("ftp://x/y").unwrap_err().to_string();
        assert!(e.contains("ssh://"), "lists the known schemes: {e}");
    }
}
