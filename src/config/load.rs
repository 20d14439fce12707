//! Reading the configuration: the TOML file, then the `APNS_WORKER__*` environment
//! overlay, then the checks.

use std::path::Path;

use super::{Config, ConfigError};

/// The prefix of environment overrides: `APNS_WORKER__APNS__REQUEST_TIMEOUT_MS=5000`.
pub const ENV_PREFIX: &str = "APNS_WORKER__";

impl Config {
    /// Parse TOML text (no environment overlay).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: origin.into(),
            message: e.to_string(),
        })?;
        Config::from_table(value, origin)
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Setting {
                path: origin.into(),
                message: one_line(&e),
            })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Read the file (if any), overlay the environment, check.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let t: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Toml {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                (t, p.display().to_string())
            }
            None => (toml::Table::new(), "<defaults>".to_string()),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let file_only = table.clone();
        overlay_env(&mut table, env.clone())?;
        let parsed: Result<Config, toml::de::Error> = toml::Value::Table(table).try_into();
        match parsed {
            Ok(cfg) => match cfg.check() {
                Ok(()) => Ok(cfg),
                Err(ConfigError::Invalid(message)) => Err(match set_by(&env, &message) {
                    Some(var) => ConfigError::Env { var, message },
                    None => ConfigError::Invalid(message),
                }),
                Err(e) => Err(e),
            },
            Err(e) => Err(blame(file_only, &env, &origin, e)),
        }
    }
}

/// Which source a configuration that does not deserialize comes from: the first
/// `APNS_WORKER__*` variable after which it stops deserializing (so the error names the
/// variable), else the file.
fn blame(
    mut table: toml::Table,
    env: &[(String, String)],
    origin: &str,
    whole: toml::de::Error,
) -> ConfigError {
    let file_fails = toml::Value::Table(table.clone())
        .try_into::<Config>()
        .is_err();
    if !file_fails {
        let mut vars: Vec<&(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (var, value) in vars {
            if overlay_env(&mut table, [(var.clone(), value.clone())]).is_err() {
                continue;
            }
            if let Err(e) = toml::Value::Table(table.clone()).try_into::<Config>() {
                return ConfigError::Env {
                    var: var.clone(),
                    message: one_line(&e),
                };
            }
        }
    }
    ConfigError::Setting {
        path: origin.into(),
        message: one_line(&whole),
    }
}

/// The `APNS_WORKER__*` variable that set the setting a check's message starts with
/// (`broker.prefetch must be ...`), so the message can name it.
fn set_by(env: &[(String, String)], message: &str) -> Option<String> {
    env.iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .map(|(k, _)| k)
        .filter(|k| {
            let key = k[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            message
                .strip_prefix(key.as_str())
                .is_some_and(|rest| rest.starts_with([' ', ':', ',']) || rest.is_empty())
        })
        // The longest match: apps.shop.team_id over apps.shop.
        .max_by_key(|k| k.len())
        .cloned()
}

/// A TOML error on one line, its Rust type names in words.
fn one_line(e: &toml::de::Error) -> String {
    let mut line = e
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    for (rust, words) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number from 0"),
        ("expected usize", "expected a whole number from 0"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        line = line.replace(rust, words);
    }
    line
}

/// Apply `APNS_WORKER__A__B=value` as `a.b = value`. Values are read as TOML when they
/// parse as such (numbers, booleans, arrays), else as strings.
pub fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty path segment (use APNS_WORKER__SECTION__KEY)".into(),
            });
        }
        let value = parse_env_value(&raw);
        let mut node = &mut *table;
        for seg in &path[..path.len() - 1] {
            let entry = node
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("{seg} is a value, not a section"),
                    });
                }
            };
        }
        node.insert(path[path.len() - 1].clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}
