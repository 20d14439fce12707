//! Where an app's notifications go: Apple's production or sandbox host, or any
//! `https://host:port`; and where its broadcast channels are managed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub const PRODUCTION_HOST: &str = "api.push.apple.com";
pub const SANDBOX_HOST: &str = "api.sandbox.push.apple.com";
/// Broadcast channel management, production (port 2196).
pub const MANAGE_PRODUCTION_HOST: &str = "api-manage-broadcast.push.apple.com";
/// Broadcast channel management, sandbox (port 2195).
pub const MANAGE_SANDBOX_HOST: &str = "api-manage-broadcast.sandbox.push.apple.com";

/// An APNs endpoint. Parsed from `production`, `sandbox`, `production:2197`,
/// `sandbox:2197` or `https://host[:port]` (a mock or a proxy; port 443 when omitted).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    kind: EndpointKind,
    host: String,
    port: u16,
}

/// Which of Apple's environments an endpoint is, which matters for environment-scoped keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Production,
    Sandbox,
    Custom,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "endpoint {0:?} is not understood: use \"production\", \"sandbox\", \"production:2197\", \"sandbox:2197\" or \"https://host:port\""
    )]
    Unrecognised(String),
    #[error(
        "endpoint {0:?}: Apple's hosts listen on port 443 and 2197 only (2197 is for networks that block 443)"
    )]
    ApplePort(String),
    #[error("endpoint {0:?}: the port is not a number from 1 to 65535")]
    BadPort(String),
    #[error("endpoint {0:?}: plain http is not allowed; APNs needs TLS (use https://)")]
    PlainHttp(String),
}

impl Endpoint {
    pub fn production() -> Self {
        Endpoint {
            kind: EndpointKind::Production,
            host: PRODUCTION_HOST.into(),
            port: 443,
        }
    }

    pub fn sandbox() -> Self {
        Endpoint {
            kind: EndpointKind::Sandbox,
            host: SANDBOX_HOST.into(),
            port: 443,
        }
    }

    pub fn custom(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            kind: EndpointKind::Custom,
            host: host.into(),
            port,
        }
    }

    pub fn kind(&self) -> EndpointKind {
        self.kind
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Apple's other environment, on the same port: sandbox for production and the
    /// other way round; `None` for a custom endpoint.
    pub fn counterpart(&self) -> Option<Endpoint> {
        let mut other = match self.kind {
            EndpointKind::Production => Endpoint::sandbox(),
            EndpointKind::Sandbox => Endpoint::production(),
            EndpointKind::Custom => return None,
        };
        other.port = self.port;
        Some(other)
    }

    /// Where broadcast channels of this environment are managed: Apple's management
    /// host of the same environment (`api-manage-broadcast[.sandbox].push.apple.com`,
    /// port 2196 for production and 2195 for sandbox); a custom endpoint manages its
    /// own (a mock serves both APIs on one port).
    pub fn channel_management(&self) -> Endpoint {
        match self.kind {
            EndpointKind::Production => Endpoint {
                kind: EndpointKind::Production,
                host: MANAGE_PRODUCTION_HOST.into(),
                port: 2196,
            },
            EndpointKind::Sandbox => Endpoint {
                kind: EndpointKind::Sandbox,
                host: MANAGE_SANDBOX_HOST.into(),
                port: 2195,
            },
            EndpointKind::Custom => self.clone(),
        }
    }

    /// `host:port`, the value of the `:authority` pseudo-header and of the TCP connect.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apple = matches!(self.host.as_str(), PRODUCTION_HOST | SANDBOX_HOST);
        match (self.kind, self.port) {
            (EndpointKind::Production, 443) if apple => f.write_str("production"),
            (EndpointKind::Sandbox, 443) if apple => f.write_str("sandbox"),
            (EndpointKind::Production, p) if apple => write!(f, "production:{p}"),
            (EndpointKind::Sandbox, p) if apple => write!(f, "sandbox:{p}"),
            (_, p) => write!(f, "https://{}:{p}", self.host),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let apple = |mut e: Endpoint, port: Option<&str>| -> Result<Endpoint, EndpointError> {
            if let Some(p) = port {
                match p {
                    "443" => {}
                    "2197" => e.port = 2197,
                    _ => return Err(EndpointError::ApplePort(s.into())),
                }
            }
            Ok(e)
        };
        let (name, port) = match t.split_once(':') {
            Some((n, p)) if !t.contains("//") => (n, Some(p)),
            _ => (t, None),
        };
        match name {
            "production" => return apple(Endpoint::production(), port),
            "sandbox" | "development" => return apple(Endpoint::sandbox(), port),
            _ => {}
        }
        if t.starts_with("http://") {
            return Err(EndpointError::PlainHttp(s.into()));
        }
        let rest = t
            .strip_prefix("https://")
            .ok_or_else(|| EndpointError::Unrecognised(s.into()))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(EndpointError::Unrecognised(s.into()));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| EndpointError::BadPort(s.into()))?,
            ),
            None => (rest, 443),
        };
        if host.is_empty() {
            return Err(EndpointError::Unrecognised(s.into()));
        }
        let e = match host {
            PRODUCTION_HOST => Endpoint::production(),
            SANDBOX_HOST => Endpoint::sandbox(),
            MANAGE_PRODUCTION_HOST => return Ok(Endpoint::production().channel_management()),
            MANAGE_SANDBOX_HOST => return Ok(Endpoint::sandbox().channel_management()),
            _ => return Ok(Endpoint::custom(host, port)),
        };
        apple(e, Some(&port.to_string()))
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form() {
        let rows: &[(&str, EndpointKind, &str, u16)] = &[
            ("production", EndpointKind::Production, PRODUCTION_HOST, 443),
            ("sandbox", EndpointKind::Sandbox, SANDBOX_HOST, 443),
            ("development", EndpointKind::Sandbox, SANDBOX_HOST, 443),
            (
                "production:2197",
                EndpointKind::Production,
                PRODUCTION_HOST,
                2197,
            ),
            ("sandbox:2197", EndpointKind::Sandbox, SANDBOX_HOST, 2197),
            (
                "https://api.push.apple.com:2197",
                EndpointKind::Production,
                PRODUCTION_HOST,
                2197,
            ),
            (
                "https://localhost:8443",
                EndpointKind::Custom,
                "localhost",
                8443,
            ),
            ("https://127.0.0.1:9/", EndpointKind::Custom, "127.0.0.1", 9),
            (
                "https://proxy.internal",
                EndpointKind::Custom,
                "proxy.internal",
                443,
            ),
        ];
        for (input, kind, host, port) in rows {
            let e: Endpoint = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (e.kind(), e.host(), e.port()),
                (*kind, *host, *port),
                "{input}"
            );
            let again: Endpoint = e.to_string().parse().unwrap();
            assert_eq!(again, e, "round trip of {input}");
        }
    }

    #[test]
    fn channel_management_hosts_follow_the_environment() {
        let p = Endpoint::production().channel_management();
        assert_eq!((p.host(), p.port()), (MANAGE_PRODUCTION_HOST, 2196));
        assert_eq!(p.kind(), EndpointKind::Production);
        let s: Endpoint = "sandbox:2197".parse().unwrap();
        let s = s.channel_management();
        assert_eq!((s.host(), s.port()), (MANAGE_SANDBOX_HOST, 2195));
        assert_eq!(s.to_string().parse::<Endpoint>().unwrap(), s);
        assert_eq!(p.to_string().parse::<Endpoint>().unwrap(), p);
        let mock = Endpoint::custom("localhost", 8443);
        assert_eq!(mock.channel_management(), mock);
    }

    #[test]
    fn rejects_what_cannot_work() {
        assert!(matches!(
            "production:8443".parse::<Endpoint>(),
            Err(EndpointError::ApplePort(_))
        ));
        assert!(matches!(
            "http://localhost:80".parse::<Endpoint>(),
            Err(EndpointError::PlainHttp(_))
        ));
        assert!(matches!(
            "https://localhost:0".parse::<Endpoint>(),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(
            "https://localhost:x".parse::<Endpoint>(),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(
            "prod".parse::<Endpoint>(),
            Err(EndpointError::Unrecognised(_))
        ));
        assert!(matches!(
            "https://host/path".parse::<Endpoint>(),
            Err(EndpointError::Unrecognised(_))
        ));
    }
}
