//! `config.toml` (DESIGN.md §9): one typed struct, read once at start, validated once.
//!
//! Every error names the file, the key path and what is wrong, so that a user can fix it
//! without reading code. Scalar keys of the `[server]`, `[storage]`, `[sync]` and `[log]`
//! sections can be overridden by `WATCHSTATE_<SECTION>_<KEY>` environment variables.

use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use watchstate_actors::event::{normalize_id, BackendKind};

/// A configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file, as given on the command line.
    pub file: String,
    /// Dotted key path (`users.alice.backends.plex.url`), or `(file)` for the whole file.
    pub key: String,
    pub message: String,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[users.<name>.backends.<name>]`; a BTreeMap so that start order and status are stable.
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the HTTP API listens; `0.0.0.0:8080` to receive webhooks from other machines.
    #[serde(deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// Fixed API key; unset means generated at first start and kept in the store.
    pub api_key: Option<String>,
    /// When true the webhook route needs the API key as well.
    pub secure_webhooks: bool,
    /// Webhook bodies larger than this are refused with 413.
    pub max_body_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            api_key: None,
            secure_webhooks: false,
            max_body_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The sled database directory, relative to the working directory.
    pub path: PathBuf,
    /// sled page cache; sled's own default (1 GiB) is far too much for this service.
    pub cache_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("./data"),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Scheduled sync per actor; `None` ("0") disables it.
    #[serde(deserialize_with = "de_interval")]
    pub interval: Option<Duration>,
    /// Whether resume positions propagate at all.
    pub progress: bool,
    /// Positions below this are not worth propagating (a few seconds of a trailer).
    #[serde(deserialize_with = "de_duration")]
    pub progress_min: Duration,
    /// Positions closer than this to the target's are left alone (avoids write storms).
    #[serde(deserialize_with = "de_duration")]
    pub progress_threshold: Duration,
    /// Attempts before a push becomes a dead letter.
    pub push_attempts: u32,
    /// Per-backend ceiling on requests a sync makes, to spare the media server.
    pub max_requests_per_second: f64,
    /// Items per page when a sync lists a library.
    pub page_size: usize,
    /// Timeout of one request to a media server.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// First delay before a failed push is retried; it doubles per attempt.
    #[serde(deserialize_with = "de_duration")]
    pub retry_base: Duration,
    /// Longest delay between two attempts of a push.
    #[serde(deserialize_with = "de_duration")]
    pub retry_max: Duration,
    /// Delay before the first sync of a never-synced (or overdue) pair after start, plus a
    /// per-pair stagger of up to as much again, so that many pairs do not list one server at
    /// once.
    #[serde(deserialize_with = "de_duration")]
    pub first_sync_delay: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval: Some(Duration::from_secs(12 * 3600)),
            progress: true,
            progress_min: Duration::from_secs(60),
            progress_threshold: Duration::from_secs(30),
            push_attempts: 10,
            max_requests_per_second: 10.0,
            page_size: 200,
            request_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            first_sync_delay: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `watchstate=debug`; `RUST_LOG` wins when set.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub backends: BTreeMap<String, BackendConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    #[serde(rename = "type")]
    pub kind: BackendKind,
    pub url: String,
    pub token: String,
    /// Plex machineIdentifier / Jellyfin and Emby server Id: what webhooks are routed by.
    pub server_id: String,
    /// The backend's id of this user: what user-scoped webhooks are routed by.
    pub user_id: String,
    /// Other ids the webhooks may name this user by. The Plex server owner is `1` in Plex's
    /// own webhooks but their plex.tv account id in Tautulli's: configure one, alias the other.
    #[serde(default)]
    pub user_id_aliases: Vec<String>,
    /// false: this backend's events never change state.
    #[serde(default = "yes")]
    pub import: bool,
    /// false: never push to this backend.
    #[serde(default = "yes")]
    pub export: bool,
    /// false: this backend's unmarks (webhook or found by the sync) change nothing; its
    /// plays and positions still do (WatchState's `DISABLE_MARK_UNPLAYED`).
    #[serde(default = "yes")]
    pub import_unplayed: bool,
    /// Overrides `sync.interval` for this backend.
    #[serde(default, deserialize_with = "de_opt_interval")]
    pub sync_interval: Option<Option<Duration>>,
    /// Library (section) ids whose items are ignored.
    #[serde(default)]
    pub ignore_libraries: Vec<String>,
}

fn yes() -> bool {
    true
}

impl BackendConfig {
    /// The parsed URL; validated at load, so this cannot fail afterwards.
    pub fn parsed_url(&self) -> url::Url {
        url::Url::parse(&self.url).expect("validated at load")
    }
}

/// Never print tokens or keys, even in debug output of the config.
impl fmt::Display for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {} (token ***)", self.kind, self.url)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e} (write it like \"12h\", \"90s\", \"1h 30m\")")
    })
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port, such as 127.0.0.1:8080 (this machine only), \
             0.0.0.0:8080 (every interface) or [::]:8080; a host name is not accepted"
        ))
    })
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
    }
}

fn de_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let dur = de_duration(d)?;
    Ok((!dur.is_zero()).then_some(dur))
}

fn de_opt_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Duration>>, D::Error> {
    de_interval(d).map(Some)
}

impl Config {
    /// Read, override from the environment, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    pub fn load_with_env(
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            message: format!("cannot read the config file: {e}"),
        })?;
        Self::parse(&file, &text, env)
    }

    /// Parse `text` as the content of `file` (the name is only used in messages).
    pub fn parse(
        file: &str,
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: String, message: String| ConfigError {
            file: file.to_string(),
            key,
            message,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            err(
                "(syntax)".into(),
                e.message().to_string() + &line_of(text, e.span()),
            )
        })?;
        let from_env = apply_env_overrides(&mut table, env).map_err(|(k, m)| err(k, m))?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let mut msg = inner.message().to_string();
                if let Some((_, var)) = from_env.iter().find(|(p, _)| *p == path) {
                    msg.push_str(&format!(" (from environment variable {var})"));
                }
                err(
                    if path == "." {
                        "(top level)".into()
                    } else {
                        path
                    },
                    msg,
                )
            })?;
        config.validate().map_err(|(k, m)| err(k, m))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if self.server.max_body_bytes == 0 {
            return Err((
                "server.max_body_bytes".into(),
                "must be greater than 0".into(),
            ));
        }
        if let Some(key) = &self.server.api_key {
            if key.trim().len() < 16 {
                return Err((
                    "server.api_key".into(),
                    "must be at least 16 characters (or remove it to have one generated)".into(),
                ));
            }
        }
        if let Some(level) = &self.log.level {
            check_log_level(level).map_err(|m| ("log.level".to_string(), m))?;
        }
        if self.storage.cache_bytes < 1024 * 1024 {
            return Err((
                "storage.cache_bytes".into(),
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.sync.push_attempts == 0 {
            return Err(("sync.push_attempts".into(), "must be at least 1".into()));
        }
        // Below one request in 1000 s a sync would never finish (and the gap between two
        // requests would overflow a timer).
        let rps = self.sync.max_requests_per_second;
        if rps.is_nan() || rps < 0.001 {
            return Err((
                "sync.max_requests_per_second".into(),
                "must be at least 0.001 (one request every 1000 s)".into(),
            ));
        }
        if self.sync.page_size == 0 {
            return Err(("sync.page_size".into(), "must be at least 1".into()));
        }
        if self.sync.request_timeout.is_zero() {
            return Err((
                "sync.request_timeout".into(),
                "must be greater than 0".into(),
            ));
        }
        if self.sync.retry_base.is_zero() {
            return Err(("sync.retry_base".into(), "must be greater than 0".into()));
        }
        if self.sync.retry_max < self.sync.retry_base {
            return Err((
                "sync.retry_max".into(),
                format!(
                    "must be at least sync.retry_base ({})",
                    humantime::format_duration(self.sync.retry_base)
                ),
            ));
        }
        // (normalised server id, normalised user id) → where it was first seen.
        let mut seen: HashMap<(String, String), String> = HashMap::new();
        // (normalised Plex server id, token) → where it was first seen and for which user id.
        let mut plex_tokens: HashMap<(String, &str), (String, String)> = HashMap::new();
        for (user, uc) in &self.users {
            check_name(user).map_err(|m| (format!("users.{user}"), m))?;
            if uc.backends.is_empty() {
                return Err((
                    format!("users.{user}.backends"),
                    "a user needs at least one backend".into(),
                ));
            }
            for (name, b) in &uc.backends {
                let at = format!("users.{user}.backends.{name}");
                check_name(name).map_err(|m| (at.clone(), m))?;
                if name == "items" {
                    return Err((
                        at,
                        "the backend name \"items\" is reserved (the status API uses /status/users/<user>/items); pick another".into(),
                    ));
                }
                match url::Url::parse(&b.url) {
                    Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
                    Ok(u) => {
                        return Err((
                            format!("{at}.url"),
                            format!(
                                "invalid URL {:?}: must be http:// or https:// with a host (scheme was {:?})",
                                b.url,
                                u.scheme()
                            ),
                        ))
                    }
                    Err(e) => {
                        return Err((
                            format!("{at}.url"),
                            format!("invalid URL {:?}: {e} (write it like \"http://192.168.1.10:32400\")", b.url),
                        ))
                    }
                }
                if b.token.trim().is_empty() {
                    return Err((
                        format!("{at}.token"),
                        "is empty: the backend's API token is required".into(),
                    ));
                }
                if b.server_id.trim().is_empty() {
                    return Err((
                        format!("{at}.server_id"),
                        "is empty: set the media server's id (Plex machineIdentifier, Jellyfin/Emby server Id)".into(),
                    ));
                }
                if b.user_id.trim().is_empty() {
                    return Err((
                        format!("{at}.user_id"),
                        "is empty: set the backend's id of this user".into(),
                    ));
                }
                if b.ignore_libraries.iter().any(|l| l.trim().is_empty()) {
                    return Err((
                        format!("{at}.ignore_libraries"),
                        "contains an empty id: list library ids, e.g. [\"7\"] (Plex section id, Jellyfin/Emby library id)".into(),
                    ));
                }
                if b.user_id_aliases.iter().any(|a| a.trim().is_empty()) {
                    return Err((
                        format!("{at}.user_id_aliases"),
                        "contains an empty id: list other ids of this user, e.g. [\"1\"] for the Plex owner".into(),
                    ));
                }
                let ids = std::iter::once(("user_id", &b.user_id))
                    .chain(b.user_id_aliases.iter().map(|a| ("user_id_aliases", a)));
                for (key, user_id) in ids {
                    let id = (normalize_id(&b.server_id), normalize_id(user_id));
                    if let Some(first) = seen.get(&id) {
                        return Err((
                            format!("{at}.{key}"),
                            format!(
                                "server_id {:?} with user id {:?} is already configured at {first}; one backend user can belong to one user only",
                                b.server_id, user_id
                            ),
                        ));
                    }
                    seen.insert(id, at.clone());
                }
                // A Plex token is one account's: a second user id with it would read and write
                // the first account's watch state. (Jellyfin and Emby API keys act for any user.)
                if b.kind == BackendKind::Plex {
                    let key = (normalize_id(&b.server_id), b.token.trim());
                    let user_id = normalize_id(&b.user_id);
                    match plex_tokens.get(&key) {
                        Some((first, first_user)) if *first_user != user_id => {
                            return Err((
                                format!("{at}.token"),
                                format!(
                                    "is the same Plex token as {first}.token, which is user id {first_user:?}'s: a Plex token acts as one account, so user id {:?} would read and change that account's watch state; give each Plex user their own token (see \"Plex users\" in the README)",
                                    b.user_id
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => {
                            plex_tokens.insert(key, (at.clone(), user_id));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every configured (user, backend) pair, in a stable order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str, &BackendConfig)> {
        self.users.iter().flat_map(|(u, uc)| {
            uc.backends
                .iter()
                .map(move |(b, bc)| (u.as_str(), b.as_str(), bc))
        })
    }

    /// What the backend's HTTP client is built from.
    pub fn client_config(&self, backend: &BackendConfig) -> crate::backend::ClientConfig {
        crate::backend::ClientConfig {
            kind: backend.kind,
            base_url: backend.parsed_url(),
            token: backend.token.clone(),
            user_id: backend.user_id.clone(),
            timeout: self.sync.request_timeout,
            ignore_libraries: backend.ignore_libraries.clone(),
        }
    }

    /// The effective sync interval of one backend (its override, else `sync.interval`).
    pub fn sync_interval_of(&self, backend: &BackendConfig) -> Option<Duration> {
        backend.sync_interval.unwrap_or(self.sync.interval)
    }
}

/// `log.level`: a level, or tracing's directives (`watchstate=debug,warn`). A bare word that
/// is no level is valid for tracing (a target name) but turns every other line off, which is
/// never what `"warning"` or `"verbose"` meant.
fn check_log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let hint = "write error, warn, info, debug or trace, or target=level directives such as \"watchstate=debug,warn\"";
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // A span filter (`target[span{field=value}]=level`) is left to tracing's parser.
        if directive.contains('[') {
            continue;
        }
        let level = match directive.split_once('=') {
            Some((_, level)) => level.trim(),
            None if directive.contains("::") => continue,
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!("{level:?} is not a log level: {hint}"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(drop)
        .map_err(|e| format!("{text:?} is not a log filter ({e}): {hint}"))
}

/// Names appear in URLs and storage keys: keep them to letters, digits, `_` and `-`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "invalid name {name:?}: use only letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// The sections whose scalar keys `WATCHSTATE_<SECTION>_<KEY>` may override.
const ENV_SECTIONS: [&str; 4] = ["server", "storage", "sync", "log"];
/// Keys whose value is text whatever it looks like (an API key or a directory may be all
/// digits): an override of one that is not in the file is not read as a number.
const ENV_TEXT_KEYS: [&str; 5] = [
    "server.listen",
    "server.api_key",
    "storage.path",
    "log.format",
    "log.level",
];

/// Returns the (key path, variable name) of every override, to name the variable in errors.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &HashMap<String, String>,
) -> Result<Vec<(String, String)>, (String, String)> {
    let mut applied = Vec::new();
    let mut vars: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("WATCHSTATE_"))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let rest = name["WATCHSTATE_".len()..].to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if !ENV_SECTIONS.contains(&section) || key.is_empty() {
            continue;
        }
        let path = format!("{section}.{key} (from environment variable {name})");
        let sect = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(sect) = sect.as_table_mut() else {
            return Err((section.to_string(), "must be a table".into()));
        };
        let parsed = match sect.get(key) {
            Some(toml::Value::Integer(_)) => value
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| (path.clone(), format!("expected an integer, got {value:?}")))?,
            Some(toml::Value::Float(_)) => value
                .trim()
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| (path.clone(), format!("expected a number, got {value:?}")))?,
            Some(toml::Value::Boolean(_)) => value
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| {
                    (
                        path.clone(),
                        format!("expected true or false, got {value:?}"),
                    )
                })?,
            Some(toml::Value::String(_)) => toml::Value::String(value.clone()),
            Some(_) => return Err((path, "only scalar keys can be overridden".into())),
            // Not in the file: text keys stay text; for the others, infer the type so that
            // defaults-only configs can be overridden.
            None if ENV_TEXT_KEYS.contains(&format!("{section}.{key}").as_str()) => {
                toml::Value::String(value.clone())
            }
            None => infer_scalar(value),
        };
        sect.insert(key.to_string(), parsed);
        applied.push((format!("{section}.{key}"), name.clone()));
    }
    Ok(applied)
}

fn infer_scalar(value: &str) -> toml::Value {
    let v = value.trim();
    if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if v.contains('.') && v.parse::<f64>().is_ok() && !v.contains(':') {
        toml::Value::Float(v.parse().unwrap())
    } else {
        toml::Value::String(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("test.toml", text, &HashMap::new())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.max_body_bytes, 1024 * 1024);
        assert_eq!(c.sync.interval, Some(Duration::from_secs(43200)));
    }

    #[test]
    fn retry_and_first_sync_delays_are_read() {
        let c = parse(
            "[sync]\nretry_base = \"250ms\"\nretry_max = \"10s\"\nfirst_sync_delay = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(c.sync.retry_base, Duration::from_millis(250));
        assert_eq!(c.sync.retry_max, Duration::from_secs(10));
        assert_eq!(c.sync.first_sync_delay, Duration::ZERO);
        let d = parse("").unwrap();
        assert_eq!(
            (d.sync.retry_base, d.sync.retry_max, d.sync.first_sync_delay),
            (
                Duration::from_secs(1),
                Duration::from_secs(300),
                Duration::from_secs(30)
            )
        );
    }

    #[test]
    fn a_listen_address_with_a_host_name_says_what_to_write() {
        let err = parse("[server]\nlisten = \"localhost:8080\"\n").unwrap_err();
        assert_eq!(err.key, "server.listen");
        assert!(err.message.contains("127.0.0.1:8080"), "{}", err.message);
        let ok = parse("[server]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        assert_eq!(ok.server.listen.port(), 9000);
    }

    #[test]
    fn a_user_id_alias_may_not_name_another_backends_user() {
        let backend = |user_id: &str, aliases: &str| {
            format!(
                "type = \"plex\"\nurl = \"http://h:32400\"\ntoken = \"t{user_id}\"\nserver_id = \"s\"\n\
                 user_id = \"{user_id}\"\nuser_id_aliases = {aliases}\n"
            )
        };
        let text = format!(
            "[users.a.backends.plex]\n{}\n[users.b.backends.plex]\n{}",
            backend("1", "[\"556205\"]"),
            backend("7", "[\"556205\"]")
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "users.b.backends.plex.user_id_aliases");
        assert!(
            err.message.contains("already configured"),
            "{}",
            err.message
        );
        let err = parse(&format!(
            "[users.a.backends.plex]\n{}",
            backend("1", "[\" \"]")
        ))
        .unwrap_err();
        assert_eq!(err.key, "users.a.backends.plex.user_id_aliases");
    }

    /// A Plex token is one account's: the same token for two user ids of one server would
    /// read and write the first account's state for both. Jellyfin and Emby API keys are not
    /// tied to a user, and one Plex account on two servers (or twice on one, as the same user
    /// id) is fine.
    #[test]
    fn one_plex_token_for_two_user_ids_of_a_server_is_refused() {
        let backend = |kind: &str, server: &str, user_id: &str, token: &str| {
            format!(
                "type = \"{kind}\"\nurl = \"http://h:32400\"\ntoken = \"{token}\"\n\
                 server_id = \"{server}\"\nuser_id = \"{user_id}\"\n"
            )
        };
        let two = |a: String, b: String| {
            parse(&format!(
                "[users.alice.backends.plex]\n{a}\n[users.bob.backends.plex]\n{b}"
            ))
        };
        let err = two(
            backend("plex", "s1", "1", "owner-token"),
            backend("plex", "S1", "7", " owner-token "),
        )
        .unwrap_err();
        assert_eq!(err.key, "users.bob.backends.plex.token");
        assert!(
            err.message.contains("users.alice.backends.plex.token")
                && err.message.contains("their own token"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("owner-token"), "{}", err.message);

        two(
            backend("plex", "s1", "1", "owner-token"),
            backend("plex", "s1", "7", "bob-token"),
        )
        .expect("each user their own token");
        two(
            backend("plex", "s1", "1", "owner-token"),
            backend("plex", "s2", "1", "owner-token"),
        )
        .expect("one account on two servers");
        two(
            backend("jellyfin", "s1", "u1", "api-key"),
            backend("jellyfin", "s1", "u2", "api-key"),
        )
        .expect("one Jellyfin API key for every user");
    }

    /// A level that is no level would turn the service's logs off (tracing reads a bare word
    /// as a target name): refused with the levels to use.
    #[test]
    fn a_log_level_that_is_no_level_is_refused() {
        for bad in ["warning", "verbose", "watchstate=loud", "info,chatty"] {
            let err = parse(&format!("[log]\nlevel = \"{bad}\"\n")).unwrap_err();
            assert_eq!(err.key, "log.level", "{bad}");
            assert!(
                err.message.contains("warn, info, debug"),
                "{bad}: {}",
                err.message
            );
        }
        for good in [
            "warn",
            "INFO",
            "watchstate=debug,warn",
            "watchstate::journal=trace",
            "watchstate[sync{pair=a}]=debug",
        ] {
            parse(&format!("[log]\nlevel = \"{good}\"\n"))
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn interval_zero_disables() {
        let c = parse("[sync]\ninterval = \"0\"\n").unwrap();
        assert_eq!(c.sync.interval, None);
    }

    #[test]
    fn env_overrides_keep_types() {
        let mut env = HashMap::new();
        env.insert(
            "WATCHSTATE_SERVER_MAX_BODY_BYTES".to_string(),
            "2048".to_string(),
        );
        env.insert("WATCHSTATE_SYNC_INTERVAL".to_string(), "1h".to_string());
        env.insert(
            "WATCHSTATE_SERVER_SECURE_WEBHOOKS".to_string(),
            "true".to_string(),
        );
        let c = Config::parse("t.toml", "[server]\nmax_body_bytes = 10\n", &env).unwrap();
        assert_eq!(c.server.max_body_bytes, 2048);
        assert!(c.server.secure_webhooks);
        assert_eq!(c.sync.interval, Some(Duration::from_secs(3600)));
    }

    /// An API key or a data directory made of digits, set only in the environment, is text.
    #[test]
    fn env_overrides_of_text_keys_absent_from_the_file_stay_text() {
        let mut env = HashMap::new();
        env.insert(
            "WATCHSTATE_SERVER_API_KEY".to_string(),
            "1234567890123456".to_string(),
        );
        env.insert("WATCHSTATE_STORAGE_PATH".to_string(), "2024".to_string());
        env.insert("WATCHSTATE_SYNC_PAGE_SIZE".to_string(), "200".to_string());
        let c = Config::parse("t.toml", "", &env).unwrap();
        assert_eq!(c.server.api_key.as_deref(), Some("1234567890123456"));
        assert_eq!(c.storage.path, std::path::PathBuf::from("2024"));
        assert_eq!(c.sync.page_size, 200);
    }
}
