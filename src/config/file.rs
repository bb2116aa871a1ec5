//! The configuration file (`--config herald.toml`): its keys, each the twin of a flag, how
//! the file is read under flags and variables, and `herald config example`.
//!
//! The file does not get a parser of its own: each key it sets becomes its flag, appended to
//! the command line unless the flag or its variable is given, and the command line is then
//! parsed once. So a key accepts exactly what its flag accepts, is checked by the same value
//! parser, and the precedence flags > variables > file > defaults is clap's own
//! (command line > variable > default) with the file slotted in as command-line arguments.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// A key of the file and the flag it stands for.
#[derive(Debug)]
pub struct Key {
    /// `section.name`, or `name` at the top.
    pub path: &'static str,
    /// The clap id of its flag (the `ServeArgs` field).
    pub id: &'static str,
    /// The TOML type it takes.
    pub kind: Kind,
    /// A valid value other than the default, as TOML: the example for keys without a
    /// default, and what the tests set each key to.
    pub sample: &'static str,
}

/// The TOML type of a key. Durations, addresses and URLs are strings, as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    /// A switch: `true` is the flag given, `false` the flag not given.
    Bool,
    /// A list of strings: the flag repeated.
    List,
}

/// Every key, in the order `herald config example` prints them.
pub const KEYS: &[Key] = &[
    key("listen", "listen", Kind::Str, r#""0.0.0.0:8080""#),
    key("data_dir", "data_dir", Kind::Str, r#""/var/lib/herald""#),
    key("memory", "memory", Kind::Bool, "true"),
    key("dev", "dev", Kind::Bool, "true"),
    key("workers", "workers", Kind::Int, "2"),
    key(
        "tls.cert",
        "tls_cert",
        Kind::Str,
        r#""/etc/herald/tls/cert.pem""#,
    ),
    key(
        "tls.key",
        "tls_key",
        Kind::Str,
        r#""/etc/herald/tls/key.pem""#,
    ),
    key(
        "auth.jwt_secret",
        "jwt_secret",
        Kind::Str,
        r#""change-me-to-32-bytes-or-more-of-secret""#,
    ),
    key(
        "auth.jwt_secret_file",
        "jwt_secret_file",
        Kind::Str,
        r#""/run/secrets/herald-jwt""#,
    ),
    key(
        "auth.jwks",
        "jwks",
        Kind::Str,
        r#""https://idp.example.com/.well-known/jwks.json""#,
    ),
    key("auth.jwks_refresh", "jwks_refresh", Kind::Str, r#""1m""#),
    key(
        "auth.publisher_keys",
        "publisher_keys",
        Kind::List,
        r#"["change-me-publisher-key"]"#,
    ),
    key(
        "auth.publisher_keys_file",
        "publisher_keys_file",
        Kind::Str,
        r#""/run/secrets/herald-publisher-keys""#,
    ),
    key("auth.dashboard_auth", "dashboard_auth", Kind::Bool, "true"),
    key("history.size", "history_size", Kind::Int, "5000"),
    key("history.ttl", "history_ttl", Kind::Str, r#""2h""#),
    key(
        "history.idempotency_window",
        "idempotency_window",
        Kind::Str,
        r#""10m""#,
    ),
    key(
        "limits.max_connections",
        "max_connections",
        Kind::Int,
        "10000",
    ),
    key(
        "limits.max_listeners_per_instance",
        "max_listeners_per_instance",
        Kind::Int,
        "8",
    ),
    key("limits.max_body", "max_body", Kind::Int, "65536"),
    key("limits.body_timeout", "body_timeout", Kind::Str, r#""20s""#),
    key(
        "limits.subscriber_queue",
        "subscriber_queue",
        Kind::Int,
        "4096",
    ),
    key("sse.keepalive", "sse_keepalive", Kind::Str, r#""25s""#),
    key("websocket.ping", "ws_ping", Kind::Str, r#""20s""#),
    key(
        "websocket.announce_timeout",
        "ws_announce_timeout",
        Kind::Str,
        r#""5s""#,
    ),
    key("webhooks.timeout", "webhook_timeout", Kind::Str, r#""5s""#),
    key(
        "webhooks.retry_schedule",
        "webhook_retry_schedule",
        Kind::Str,
        r#""1s, 1m, 1h""#,
    ),
    key(
        "webhooks.allow_private",
        "webhook_allow_private",
        Kind::Bool,
        "true",
    ),
    key(
        "shutdown.timeout",
        "shutdown_timeout",
        Kind::Str,
        r#""10s""#,
    ),
    key("shutdown.drain_delay", "drain_delay", Kind::Str, r#""15s""#),
    key(
        "redis.url",
        "redis",
        Kind::Str,
        r#""redis://127.0.0.1:6379/""#,
    ),
    key("redis.replicas", "redis_replicas", Kind::Int, "1"),
    key("redis.node_name", "node_name", Kind::Str, r#""node-1""#),
];

const fn key(path: &'static str, id: &'static str, kind: Kind, sample: &'static str) -> Key {
    Key {
        path,
        id,
        kind,
        sample,
    }
}

/// Flags that are two forms of one setting: given either way by flag or variable, the file's
/// keys for both are left out (a `--jwt-secret` replaces the file's `jwt_secret_file`).
const SAME_SETTING: &[&[&str]] = &[
    &["jwt_secret", "jwt_secret_file"],
    &["publisher_keys", "publisher_keys_file"],
];

/// Why the file cannot be used: one line naming the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}", file.display())]
pub struct FileError {
    pub file: PathBuf,
    pub what: String,
}

/// Why the command line, with the file under it, cannot be used.
#[derive(Debug)]
pub enum ParseError {
    /// From clap, about flags and variables (also `--help` and `--version`): clap prints it.
    Clap(clap::Error),
    /// About the file or one of its keys.
    File(FileError),
}

impl From<FileError> for ParseError {
    fn from(e: FileError) -> Self {
        ParseError::File(e)
    }
}

/// Parses `argv` as `P`, reading the `--config` file (or `HERALD_CONFIG`) of the subcommand
/// that takes one under its flags and variables.
pub fn parse<P: clap::Parser>(argv: Vec<OsString>) -> Result<P, ParseError> {
    let command = P::command();
    // A lenient first pass, only to find the subcommand, its `--config` and what its flags
    // give; the real parse below reports every error.
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv);
    let Some((name, given, path)) = first.ok().and_then(|m| config_of(&m)) else {
        return P::try_parse_from(argv).map_err(ParseError::Clap);
    };
    let sub = command
        .find_subcommand(&name)
        .expect("the matches came from this command");
    let mut argv = argv;
    let mut from_file = Vec::new();
    for (key, values) in read(&path)? {
        let Some(arg) = sub.get_arguments().find(|a| a.get_id() == key.id) else {
            continue; // a key of `serve` that this subcommand (`token`) does not take
        };
        let over = SAME_SETTING
            .iter()
            .find(|ids| ids.contains(&key.id))
            .map_or(&[key.id][..], |ids| ids)
            .iter()
            .find_map(|id| given_by(&given, sub, id));
        if let Some(over) = over {
            // Said, so that a key that seems ignored (a container's HERALD_LISTEN over the
            // mounted file's `listen`) is explained in the log.
            log::info!("{}: {} is overridden by {over}", path.display(), key.path);
            continue;
        }
        check_secrets(key, &values).map_err(|what| FileError {
            file: path.clone(),
            what,
        })?;
        let flag = format!("--{}", arg.get_long().expect("every serve flag is long"));
        if key.kind == Kind::Bool {
            argv.push(flag.clone().into());
        }
        for value in values {
            argv.push(flag.clone().into());
            argv.push(value.into());
        }
        from_file.push((flag, key));
    }
    P::try_parse_from(argv).map_err(|e| {
        let what = match blame(&e, &from_file) {
            Some(key) => format!("{}: {}", key.path, reason(&e)),
            None => match missing(&e, sub) {
                Some(key) if !from_file.is_empty() => {
                    format!(
                        "`{}` must be set too: a key this file sets needs it",
                        key.path
                    )
                }
                _ => return ParseError::Clap(e),
            },
        };
        ParseError::File(FileError { file: path, what })
    })
}

/// The JWT secret's length rule, checked here rather than by a value parser because clap's
/// message for a refused value prints the value, here a secret.
fn check_secrets(key: &Key, values: &[String]) -> Result<(), String> {
    if key.id != "jwt_secret" {
        return Ok(());
    }
    values
        .iter()
        .try_for_each(|secret| super::check_secret(secret, key.path))
        .map_err(|e| e.to_string())
}

/// The key of the flag that a "required argument missing" error names (`tls.key` when the
/// file sets `tls.cert` alone).
fn missing(error: &clap::Error, command: &Command) -> Option<&'static Key> {
    if error.kind() != clap::error::ErrorKind::MissingRequiredArgument {
        return None;
    }
    let Some(ContextValue::Strings(args)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = args.first()?.split(' ').next()?.strip_prefix("--")?;
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))?;
    KEYS.iter().find(|k| k.id == arg.get_id())
}

/// The subcommand that takes `--config`, what its flags gave, and the file, when one is named.
fn config_of(matches: &ArgMatches) -> Option<(String, ArgMatches, PathBuf)> {
    let (name, sub) = matches.subcommand()?;
    let path = sub.try_get_one::<PathBuf>("config").ok()??.clone();
    Some((name.to_string(), sub.clone(), path))
}

/// How flag `id` was given, when it was: `--flag` on the command line or its variable.
fn given_by(matches: &ArgMatches, command: &Command, id: &str) -> Option<String> {
    let arg = command.get_arguments().find(|a| a.get_id() == id)?;
    let source = matches
        .try_contains_id(id)
        .ok()
        .and_then(|_| matches.value_source(id));
    if source == Some(ValueSource::CommandLine) {
        return Some(format!("--{}", arg.get_long().unwrap_or(id)));
    }
    let var = arg.get_env()?;
    let set = source == Some(ValueSource::EnvVariable)
        || std::env::var_os(var).is_some_and(|v| !v.is_empty());
    set.then(|| var.to_string_lossy().into_owned())
}

/// The file's key that a parse error is about, when the file gave its flag.
fn blame(error: &clap::Error, from_file: &[(String, &'static Key)]) -> Option<&'static Key> {
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split([' ', '=']).next()?;
    from_file
        .iter()
        .find(|(f, _)| f == flag)
        .map(|(_, key)| *key)
}

/// What is wrong with a value, without the value: it may be a secret.
fn reason(error: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    let text = error.kind().to_string();
    text.lines().next().unwrap_or_default().to_string()
}

/// Reads the file: each key with the values to give its flag (none for a switch, which is
/// given alone). Every key must be known and of its kind; switches set to `false` are left out.
fn read(path: &Path) -> Result<Vec<(&'static Key, Vec<String>)>, FileError> {
    let fail = |what: String| FileError {
        file: path.to_path_buf(),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            format!("line {line}: ")
        });
        fail(format!("{at}{}", e.message().trim().replace('\n', "; ")))
    })?;
    let mut settings = Vec::new();
    for (name, value) in &table {
        match value {
            toml::Value::Table(section) if is_section(name) => {
                for (inner, value) in section {
                    let path = format!("{name}.{inner}");
                    settings.extend(setting(&path, value).map_err(fail)?);
                }
            }
            _ if is_section(name) => {
                return Err(fail(format!("{name}: must be a table ([{name}])")))
            }
            value => settings.extend(setting(name, value).map_err(fail)?),
        }
    }
    Ok(settings)
}

fn is_section(name: &str) -> bool {
    KEYS.iter()
        .any(|k| k.path.split_once('.').is_some_and(|(s, _)| s == name))
}

/// One key's values, or `None` for a switch set to `false`.
fn setting(path: &str, value: &toml::Value) -> Result<Option<(&'static Key, Vec<String>)>, String> {
    let Some(key) = KEYS.iter().find(|k| k.path == path) else {
        return Err(format!("unknown key `{path}`{}", known_near(path)));
    };
    let wrong = |expected: &str| Err(format!("{path}: expected {expected}"));
    let values = match (key.kind, value) {
        (Kind::Str, toml::Value::String(s)) => vec![s.clone()],
        (Kind::Int, toml::Value::Integer(n)) => vec![n.to_string()],
        (Kind::Bool, toml::Value::Boolean(true)) => Vec::new(),
        (Kind::Bool, toml::Value::Boolean(false)) => return Ok(None),
        (Kind::List, toml::Value::Array(items)) => {
            match items.iter().map(|i| i.as_str().map(String::from)).collect() {
                Some(values) => values,
                None => return wrong("a list of strings"),
            }
        }
        (Kind::Str, _) => return wrong("a string"),
        (Kind::Int, _) => return wrong("an integer"),
        (Kind::Bool, _) => return wrong("true or false"),
        (Kind::List, _) => return wrong("a list of strings"),
    };
    Ok(Some((key, values)))
}

/// The keys of the unknown key's section, to spot a typo.
fn known_near(path: &str) -> String {
    let section = path.split_once('.').map(|(s, _)| s);
    let near: Vec<&str> = KEYS
        .iter()
        .filter(|k| k.path.split_once('.').map(|(s, _)| s) == section)
        .map(|k| k.path)
        .collect();
    if section.is_none() || near.is_empty() {
        return " (`herald config example` lists every key)".into();
    }
    format!(" (known there: {})", near.join(", "))
}

/// A commented configuration file with every key, its flag, variable and default; every line
/// but the section headers commented out, so that it sets nothing as printed.
pub fn example(serve: &Command) -> String {
    let mut out = String::from(
        "# Herald configuration: `herald serve --config herald.toml`.\n\
         # Every key is the twin of a flag; flags and HERALD_* variables override the file.\n\
         # Durations are written as on the command line (\"250ms\", \"30s\", \"5m\", \"24h\").\n\
         # Relative paths are relative to the directory herald is started in.\n",
    );
    let mut section = None;
    for key in KEYS {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_id() == key.id)
            .expect("every key names a serve flag");
        let (this, name) = key.path.split_once('.').unzip();
        if this != section {
            section = this;
            let _ = write!(out, "\n[{}]\n", this.unwrap_or_default());
        }
        let name = name.unwrap_or(key.path);
        out.push('\n');
        for line in wrap(&help(arg.get_long_help().or(arg.get_help())), 88) {
            let _ = writeln!(out, "# {line}");
        }
        let env = arg.get_env().map(|v| v.to_string_lossy().into_owned());
        let long = arg.get_long().expect("every serve flag is long");
        let _ = writeln!(out, "# --{long}, {}", env.unwrap_or_default());
        match default(arg, key.kind) {
            Some(value) => {
                let _ = writeln!(out, "#{name} = {value}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "# Not set by default; for example:\n#{name} = {}",
                    key.sample
                );
            }
        }
    }
    out
}

/// A flag's help as sentences: clap drops the full stop of a one-line help.
fn help(text: Option<&StyledStr>) -> String {
    let text = text.map(|t| t.to_string()).unwrap_or_default();
    match text.trim_end() {
        t if t.ends_with('.') || t.is_empty() => t.to_string(),
        t => format!("{t}."),
    }
}

/// A flag's default as TOML, or `None` when it has none.
fn default(arg: &clap::Arg, kind: Kind) -> Option<String> {
    let values = arg.get_default_values();
    match kind {
        Kind::Bool => Some("false".into()),
        Kind::List if matches!(arg.get_action(), ArgAction::Append) => Some("[]".into()),
        _ => {
            let value = values.first()?.to_string_lossy();
            Some(match kind {
                Kind::Int => value.into_owned(),
                _ => format!("{value:?}"),
            })
        }
    }
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::Write as _;

    use clap::{Args, Parser, Subcommand};

    use super::*;
    use crate::config::ServeArgs;

    /// `herald serve` without the rest of the binary.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Serve(ServeArgs),
    }

    fn serve_command() -> Command {
        ServeArgs::augment_args(Command::new("serve"))
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// `herald serve ARGS` with `--config` of that file, as `ServeArgs` minus the `--config`
    /// path itself (which differs between the runs compared).
    fn serve(args: &[&str], config: Option<&Path>) -> Result<String, ParseError> {
        let mut argv: Vec<OsString> = ["herald", "serve"].map(OsString::from).to_vec();
        argv.extend(args.iter().map(OsString::from));
        if let Some(path) = config {
            argv.extend(["--config".into(), path.into()]);
        }
        let Sub::Serve(mut args) = parse::<Cli>(argv)?.command;
        args.config = None;
        Ok(format!("{args:?}"))
    }

    fn sample_file(name: &str, text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_string();
        (dir, path)
    }

    #[test]
    fn every_flag_has_one_key_of_its_kind() {
        let serve = serve_command();
        let flags: BTreeSet<&str> = serve
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| *id != "config")
            .collect();
        let keys: BTreeSet<&str> = KEYS.iter().map(|k| k.id).collect();
        assert_eq!(flags, keys);
        assert_eq!(keys.len(), KEYS.len(), "a flag with two keys");
        for key in KEYS {
            let arg = serve
                .get_arguments()
                .find(|a| a.get_id() == key.id)
                .unwrap();
            let kind = match arg.get_action() {
                ArgAction::SetTrue => Kind::Bool,
                ArgAction::Append => Kind::List,
                _ => key.kind, // Str or Int: the samples below are parsed by the flag
            };
            assert_eq!(kind, key.kind, "{}", key.path);
            assert_ne!(
                default(arg, key.kind).as_deref(),
                Some(key.sample),
                "{}",
                key.path
            );
        }
    }

    /// Each key set to its sample gives the same `ServeArgs` as its flag set to that value, and
    /// each sample differs from the default: so no key is lost or lands on another setting.
    #[test]
    fn every_key_reaches_the_setting_its_flag_does() {
        let (_a, secret) = sample_file("jwt", "s3cret-s3cret-s3cret-s3cret-s3cret\n");
        let (_b, keys) = sample_file("keys", "# publishers\nk1\n\nk2\n");
        // jwt_secret and jwt_secret_file conflict: one run each.
        for skip in ["jwt_secret_file", "jwt_secret"] {
            let mut toml = String::new();
            let mut flags: Vec<String> = Vec::new();
            let mut section = "";
            for key in KEYS.iter().filter(|k| k.id != skip) {
                let text = match key.id {
                    "jwt_secret_file" => format!("{secret:?}"),
                    "publisher_keys_file" => format!("{keys:?}"),
                    _ => key.sample.to_string(),
                };
                let value = toml::from_str::<toml::Table>(&format!("v = {text}"))
                    .unwrap()
                    .remove("v")
                    .unwrap();
                let (this, name) = key.path.split_once('.').unwrap_or(("", key.path));
                if this != section {
                    section = this;
                    toml.push_str(&format!("[{this}]\n"));
                }
                toml.push_str(&format!("{name} = {text}\n"));
                let flag = format!(
                    "--{}",
                    serve_command()
                        .get_arguments()
                        .find(|a| a.get_id() == key.id)
                        .unwrap()
                        .get_long()
                        .unwrap()
                );
                match value {
                    toml::Value::Boolean(_) => flags.push(flag),
                    toml::Value::Array(items) => {
                        for item in items {
                            flags.extend([flag.clone(), item.as_str().unwrap().to_string()]);
                        }
                    }
                    toml::Value::Integer(n) => flags.extend([flag, n.to_string()]),
                    value => flags.extend([flag, value.as_str().unwrap().to_string()]),
                }
            }
            let config = file(&toml);
            let by_flags = flags.iter().map(String::as_str).collect::<Vec<_>>();
            let by_flags = serve(&by_flags, None).unwrap();
            let by_file = serve(&[], Some(config.path())).unwrap();
            assert_eq!(by_flags, by_file, "{toml}");
            assert_ne!(by_file, serve(&[], None).unwrap());
        }
    }

    #[test]
    fn a_flag_overrides_the_file_and_the_file_the_default() {
        let config = file("[history]\nsize = 5\n[limits]\nmax_body = 100\n");
        let args = serve(&["--history-size", "7"], Some(config.path())).unwrap();
        assert!(args.contains("history_size: 7,"), "{args}");
        assert!(args.contains("max_body: 100,"), "{args}");
        // A flag given as --jwt-secret replaces the file's other form of the same setting.
        let (_d, secret) = sample_file("jwt", "s3cret-s3cret-s3cret-s3cret-s3cret");
        let config = file(&format!("[auth]\njwt_secret_file = {secret:?}\n"));
        let args = serve(&["--jwt-secret", &"x".repeat(32)], Some(config.path())).unwrap();
        assert!(args.contains("jwt_secret_file: None"), "{args}");
    }

    fn refusal(text: &str) -> String {
        let config = file(text);
        match serve(&[], Some(config.path())) {
            Err(ParseError::File(e)) => {
                let line = e.to_string();
                assert!(
                    line.starts_with(&config.path().display().to_string()),
                    "{line}"
                );
                assert_eq!(line.lines().count(), 1, "{line}");
                line
            }
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn a_bad_key_or_value_is_one_line_naming_the_key() {
        for (text, says) in [
            (
                "[limits]\nmax_bdy = 3\n",
                "unknown key `limits.max_bdy` (known there: limits.max_connections",
            ),
            ("lisen = \"x\"\n", "unknown key `lisen`"),
            (
                "[limits]\nmax_body = \"1MB\"\n",
                "limits.max_body: expected an integer",
            ),
            ("memory = \"yes\"\n", "memory: expected true or false"),
            (
                "[auth]\npublisher_keys = \"k\"\n",
                "auth.publisher_keys: expected a list of strings",
            ),
            ("[history]\nsize = 0\n", "history.size: must be at least 1"),
            (
                "[websocket]\nping = \"0s\"\n",
                "websocket.ping: must be longer than zero",
            ),
            (
                "listen = \"nope\"\n",
                "listen: invalid socket address syntax",
            ),
            (
                "[webhooks]\nretry_schedule = \"5x\"\n",
                "webhooks.retry_schedule: `5x` is not a duration",
            ),
            ("[tls]\ncert = \"c.pem\"\n", "`tls.key` must be set too"),
            ("tls = 1\n", "tls: must be a table"),
            ("listen =\n", "line 1: "),
            (
                "[auth]\njwt_secret_file = \"/nonexistent\"\n",
                "auth.jwt_secret_file: cannot read it",
            ),
        ] {
            let line = refusal(text);
            assert!(line.contains(says), "{text}: {line}");
        }
        // Secrets are refused without being printed.
        let line = refusal("[auth]\njwt_secret = \"hunter2\"\n");
        assert!(line.contains("auth.jwt_secret is 7 bytes long"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
        let line = refusal("[auth]\npublisher_keys = [\"hunter2\", \" \"]\n");
        assert!(
            line.contains("auth.publisher_keys: must not hold an empty key"),
            "{line}"
        );
        assert!(!line.contains("hunter2"), "{line}");
    }

    /// The example sets nothing as printed, names every key once in its section, and with the
    /// defaults uncommented still sets nothing: its defaults are the flags'.
    #[test]
    fn the_example_lists_every_key_at_its_default() {
        let example = example(&serve_command());
        let as_printed: toml::Table = example.parse().unwrap();
        assert!(as_printed
            .values()
            .all(|v| v.as_table().is_some_and(|t| t.is_empty())));
        let mut uncommented = String::new();
        let mut section = String::new();
        let mut seen = Vec::new();
        for line in example.lines() {
            if let Some(header) = line.strip_prefix('[') {
                section = header.trim_end_matches(']').to_string();
                uncommented.push_str(line);
                uncommented.push('\n');
            } else if let Some((name, _)) = line.strip_prefix('#').and_then(|l| l.split_once(" = "))
            {
                if !name.starts_with(' ') {
                    seen.push(if section.is_empty() {
                        name.to_string()
                    } else {
                        format!("{section}.{name}")
                    });
                    let no_default = uncommented.ends_with("for example:\n");
                    if !no_default {
                        uncommented.push_str(&line[1..]);
                        uncommented.push('\n');
                    }
                    continue;
                }
            }
            if line.starts_with('#') {
                uncommented.push_str(line);
                uncommented.push('\n');
            }
        }
        let keys: Vec<String> = KEYS.iter().map(|k| k.path.to_string()).collect();
        assert_eq!(seen, keys);
        let config = file(&uncommented);
        assert_eq!(
            serve(&[], Some(config.path())).unwrap(),
            serve(&[], None).unwrap()
        );
    }
}
