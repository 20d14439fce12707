//! Reaching APNs through an outbound proxy: HTTP CONNECT (with Basic auth) or SOCKS5
//! (with a user name and password, RFC 1929). The proxy opens a TCP tunnel; TLS runs
//! inside it end to end, so the proxy sees none of the traffic and APNs' certificate is
//! verified against APNs' host name exactly as without a proxy. The proxy resolves the
//! host name (SOCKS5 with a domain address), so the worker needs no DNS for Apple.
//!
//! ```
//! use apns::proxy::Proxy;
//!
//! let p: Proxy = "http://user:s3cret@proxy.internal:3128".parse()?;
//! assert_eq!(p.to_string(), "http://user@proxy.internal:3128"); // never the password
//! assert!(Proxy::no_proxy_matches("api.push.apple.com", ".apple.com, localhost"));
//! # Ok::<(), apns::proxy::ProxyError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::secret::Secret;

/// The kind of proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: the HTTP CONNECT method.
    HttpConnect,
    /// `socks5://` (or `socks5h://`, the same here: the proxy resolves names).
    Socks5,
}

/// An outbound proxy. Displays without its password; debug-prints it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    credentials: Option<(String, Secret<String>)>,
}

/// Why a proxy could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "proxy {0:?} is not understood: use http://[user:password@]host:port or socks5://[user:password@]host:port"
    )]
    Url(String),
    #[error("connecting to the proxy {proxy} failed: {source}")]
    Connect {
        proxy: String,
        source: std::io::Error,
    },
    #[error("the proxy {proxy} refused the tunnel to {target}: {reason}")]
    Refused {
        proxy: String,
        target: String,
        reason: String,
    },
    #[error("the proxy {proxy} did not answer within {after:?}")]
    Timeout { proxy: String, after: Duration },
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::HttpConnect => "http",
            ProxyKind::Socks5 => "socks5",
        };
        match &self.credentials {
            Some((user, _)) => write!(f, "{scheme}://{user}@{}:{}", self.host, self.port),
            None => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// Percent-decoding of a URL's user or password (`%40` is `@`).
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl FromStr for Proxy {
    type Err = ProxyError;

    fn from_str(url: &str) -> Result<Proxy, ProxyError> {
        // The error never quotes the URL past its scheme: it may hold a password.
        let bad = || ProxyError::Url(url.split("://").next().unwrap_or("").to_string() + "://...");
        let (scheme, rest) = url.trim().split_once("://").ok_or_else(bad)?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" => ProxyKind::HttpConnect,
            "socks5" | "socks5h" => ProxyKind::Socks5,
            _ => return Err(bad()),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains('/') || port == 0 {
            return Err(bad());
        }
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                Some((
                    decode(user).ok_or_else(bad)?,
                    Secret::new(decode(pass).ok_or_else(bad)?),
                ))
            }
        };
        Ok(Proxy {
            kind,
            host: host.to_string(),
            port,
            credentials,
        })
    }
}

impl Proxy {
    /// The proxy from `HTTPS_PROXY` (or `https_proxy`, then `ALL_PROXY`) for a
    /// connection to `host`, unless `NO_PROXY` (or `no_proxy`) names it or `host` is a
    /// loopback name or address. `None` when unset or excluded; an error when set but
    /// not understood.
    pub fn from_env(host: &str) -> Result<Option<Proxy>, ProxyError> {
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(None);
        }
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let Some(url) = var(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]) else {
            return Ok(None);
        };
        if let Some(no) = var(&["NO_PROXY", "no_proxy"]) {
            if Proxy::no_proxy_matches(host, &no) {
                return Ok(None);
            }
        }
        url.parse().map(Some)
    }

    /// Does a `NO_PROXY` list (comma-separated host names, `.domain` or `domain`
    /// suffixes, `*` for all) name `host`?
    pub fn no_proxy_matches(host: &str, list: &str) -> bool {
        let host = host.to_ascii_lowercase();
        list.split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .any(|e| {
                if e == "*" {
                    return true;
                }
                let e = e.trim_start_matches("*.").trim_start_matches('.');
                host == e || host.ends_with(&format!(".{e}"))
            })
    }

    /// A TCP stream to `host:port` through the proxy, ready for TLS.
    pub async fn tunnel(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, ProxyError> {
        let proxy = self.to_string();
        let target = format!("{host}:{port}");
        let work = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| ProxyError::Connect {
                    proxy: proxy.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            match self.kind {
                ProxyKind::HttpConnect => self.http_connect(tcp, &target).await,
                ProxyKind::Socks5 => self.socks5(tcp, host, port).await,
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ProxyError::Timeout {
                proxy: proxy.clone(),
                after: timeout,
            })?
    }

    async fn http_connect(
        &self,
        mut tcp: TcpStream,
        target: &str,
    ) -> Result<TcpStream, ProxyError> {
        let refused = |reason: String| ProxyError::Refused {
            proxy: self.to_string(),
            target: target.to_string(),
            reason,
        };
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((user, pass)) = &self.credentials {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", pass.expose()));
            head.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes())
            .await
            .map_err(|e| refused(e.to_string()))?;
        // Read the answer's head byte by byte: nothing of the tunnel may be consumed.
        let mut answer = Vec::with_capacity(256);
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > 8192 {
                return Err(refused("an answer head over 8 KiB".into()));
            }
            let mut byte = [0u8; 1];
            match tcp.read(&mut byte).await {
                Ok(0) => return Err(refused("the proxy closed the connection".into())),
                Ok(_) => answer.push(byte[0]),
                Err(e) => return Err(refused(e.to_string())),
            }
        }
        let status_line = String::from_utf8_lossy(&answer);
        let status_line = status_line.lines().next().unwrap_or("");
        let code = status_line.split_whitespace().nth(1).unwrap_or("");
        if !code.starts_with('2') {
            return Err(refused(status_line.to_string()));
        }
        Ok(tcp)
    }

    async fn socks5(&self, tcp: TcpStream, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let refused = |e: tokio_socks::Error| ProxyError::Refused {
            proxy: self.to_string(),
            target: format!("{host}:{port}"),
            reason: e.to_string(),
        };
        let stream = match &self.credentials {
            Some((user, pass)) => tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                tcp,
                (host, port),
                user,
                pass.expose(),
            )
            .await
            .map_err(refused)?,
            None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, (host, port))
                .await
                .map_err(refused)?,
        };
        Ok(stream.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_the_password() {
        let p: Proxy = "http://alice:p%40ss@proxy.internal:3128/".parse().unwrap();
        assert_eq!(p.kind, ProxyKind::HttpConnect);
        assert_eq!((p.host.as_str(), p.port), ("proxy.internal", 3128));
        assert_eq!(p.credentials.as_ref().unwrap().1.expose(), "p@ss");
        assert_eq!(p.to_string(), "http://alice@proxy.internal:3128");
        assert!(!format!("{p:?}").contains("p@ss"));
        let s: Proxy = "socks5h://[::1]:1080".parse().unwrap();
        assert_eq!(
            (s.kind, s.host.as_str(), s.port),
            (ProxyKind::Socks5, "::1", 1080)
        );
        for bad in [
            "ftp://x:1",
            "http://host",
            "http://:80",
            "http://u:secret@h:notaport",
        ] {
            let e = bad.parse::<Proxy>().unwrap_err().to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn no_proxy_lists() {
        let rows = [
            ("api.push.apple.com", ".apple.com", true),
            ("api.push.apple.com", "apple.com", true),
            ("api.push.apple.com", "*.apple.com", true),
            ("api.push.apple.com", "push.apple.com,localhost", true),
            ("api.push.apple.com", "notapple.com", false),
            ("localhost", "localhost", true),
            ("apple.com.evil.example", "apple.com", false),
            ("anything", "*", true),
        ];
        for (host, list, want) in rows {
            assert_eq!(
                Proxy::no_proxy_matches(host, list),
                want,
                "{host} in {list:?}"
            );
        }
    }
}
