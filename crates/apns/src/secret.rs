//! Secret values (keys, passwords, tokens) that can be used but never printed.
//!
//! `Secret<T>` has no `Display`, and its `Debug` prints `[redacted]`, so a secret
//! that ends up in a log line, an error message or `check-config` output by mistake
//! shows nothing. `SecretSource` is how config names a secret: inline or by file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A value that must never reach logs, errors or metrics.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// Borrow the secret to use it. Name the call site's purpose in review: every
    /// `expose` is a place where the value leaves its wrapper.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Where a secret comes from: a file path (mounted Kubernetes secret) or the value itself.
///
/// In TOML: `key_file = "/etc/apns/AuthKey.p8"` or `key = "-----BEGIN PRIVATE KEY-----..."`;
/// config structs expose both fields and turn them into one `SecretSource`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SecretSource {
    File(PathBuf),
    Value(Secret<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SecretSource {
    /// Read the secret's bytes.
    pub fn load(&self) -> Result<Secret<Vec<u8>>, SecretError> {
        match self {
            SecretSource::File(path) => read_file(path).map(Secret),
            SecretSource::Value(v) => Ok(Secret(v.expose().as_bytes().to_vec())),
        }
    }

    /// A description safe to print: the path, or `<inline value>`.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(p) => p.display().to_string(),
            SecretSource::Value(_) => "<inline value>".to_string(),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    std::fs::read(path).map_err(|source| SecretError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_redact() {
        let s = Secret::new("-----BEGIN PRIVATE KEY-----abc".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        let src = SecretSource::Value(s);
        assert!(!format!("{src:?}").contains("PRIVATE"));
        assert_eq!(src.describe(), "<inline value>");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = SecretSource::File("/nonexistent/AuthKey.p8".into())
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/AuthKey.p8"));
    }
}
