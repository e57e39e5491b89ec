//! Configuration: every flag of the contract's "Running it" table, each with
//! its environment variable (flags win), parsed with clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::ffi::OsStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::backplane::{RedisNodes, RedisUrl};
use crate::model::PayRecordId;
use crate::signature::Secret;
use crate::store::Durability;

/// Default listen address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Default time a stream waits for its outcome before `event: timeout`.
pub const DEFAULT_PUSH_TIMEOUT: &str = "300s";
/// Default interval of keep-alive comments on a waiting stream.
pub const DEFAULT_KEEP_ALIVE: &str = "15s";
/// Default time an outcome is remembered.
pub const DEFAULT_OUTCOME_TTL: &str = "15m";
/// Default cap of waiting streams per payment.
pub const DEFAULT_MAX_STREAMS_PER_PAYMENT: &str = "16";
/// Default data folder of the store, in the working directory.
pub const DEFAULT_DATA_DIR: &str = "paypush-data";
/// Default bound on remembered outcomes.
pub const DEFAULT_MAX_OUTCOMES: &str = "5000000";
/// Default cap of concurrent HTTP/2 streams on one connection: a proxy
/// multiplexes thousands of waiting pages over a few h2c connections.
pub const DEFAULT_H2_MAX_STREAMS: &str = "10000";
/// A callback body must arrive within this time of its request head, else
/// `408`: a client that declares a body and never sends it cannot hold a
/// connection (and its file descriptor) for ever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept free for callbacks, Redis, the listener and logs when
/// the total stream limit is sized from the open-file limit.
pub const RESERVED_FDS: u64 = 512;

/// paypush: tells a waiting checkout page, the instant it happens, that its
/// payment went through.
#[derive(Parser, Debug, Clone)]
#[command(name = "paypush", version, about, long_about = None)]
pub struct Cli {
    /// A helper command; without one, paypush serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's settings.
    #[command(flatten)]
    pub serve: Config,
}

/// The server's settings.
#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "PAYPUSH_BIND", default_value = DEFAULT_BIND, value_name = "ADDR")]
    pub bind: SocketAddr,

    /// How long a stream waits for its outcome before `event: timeout` (e.g. 300s, 2m).
    #[arg(long, env = "PAYPUSH_PUSH_TIMEOUT", default_value = DEFAULT_PUSH_TIMEOUT,
          value_name = "DUR", value_parser = parse_duration)]
    pub push_timeout: Duration,

    /// Interval of keep-alive comments on a waiting stream.
    #[arg(long, env = "PAYPUSH_KEEP_ALIVE", default_value = DEFAULT_KEEP_ALIVE,
          value_name = "DUR", value_parser = parse_duration)]
    pub keep_alive: Duration,

    /// How long an outcome is remembered for late subscribers and duplicates.
    #[arg(long, env = "PAYPUSH_OUTCOME_TTL", default_value = DEFAULT_OUTCOME_TTL,
          value_name = "DUR", value_parser = parse_duration)]
    pub outcome_ttl: Duration,

    /// Waiting streams in the whole process [default: the open-file limit less a reserve].
    #[arg(long, env = "PAYPUSH_MAX_STREAMS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams: Option<u64>,

    /// Waiting streams of one payment.
    #[arg(long, env = "PAYPUSH_MAX_STREAMS_PER_PAYMENT", value_name = "N",
          default_value = DEFAULT_MAX_STREAMS_PER_PAYMENT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams_per_payment: u64,

    /// Require callbacks signed with this secret (prefer the environment variable) [default: none, demo mode].
    #[arg(
        long,
        env = "PAYPUSH_CALLBACK_SECRET",
        value_name = "S",
        hide_env_values = true
    )]
    pub callback_secret: Option<Secret>,

    /// Require a subscribe token made with this secret on /push (prefer the environment variable).
    #[arg(
        long,
        env = "PAYPUSH_SUBSCRIBE_SECRET",
        value_name = "S",
        hide_env_values = true
    )]
    pub subscribe_secret: Option<Secret>,

    /// Run as one of many instances sharing this Redis (e.g. redis://127.0.0.1:6379) [default: none, in-memory].
    #[arg(
        long,
        env = "PAYPUSH_REDIS_URL",
        value_name = "URL",
        hide_env_values = true,
        value_parser = RedisUrlParser
    )]
    pub redis_url: Option<RedisUrl>,

    /// Run as one of many instances sharing this Redis Cluster: redis:// URLs of some of its nodes, comma-separated (the rest are discovered).
    #[arg(
        long,
        env = "PAYPUSH_REDIS_CLUSTER",
        value_name = "NODES",
        hide_env_values = true,
        conflicts_with = "redis_url",
        value_parser = RedisNodesParser
    )]
    pub redis_cluster: Option<RedisNodes>,

    /// Keep outcomes and nonces in this folder, so they survive restarts (created if missing, mode 0700; unused in Redis mode).
    #[arg(long, env = "PAYPUSH_DATA_DIR", default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// When a callback is answered: after fdatasync (disk: survives a power cut) or once the OS has the data (process: survives a crash of paypush).
    #[arg(long, env = "PAYPUSH_DURABILITY", default_value = "disk", value_enum)]
    pub durability: DurabilityArg,

    /// Keep outcomes in memory only: nothing on disk, outcomes lost on restart.
    #[arg(long, env = "PAYPUSH_IN_MEMORY")]
    pub in_memory: bool,

    /// Outcomes remembered at once; beyond it, new outcomes get 503 (none is evicted).
    #[arg(long, env = "PAYPUSH_MAX_OUTCOMES", value_name = "N", default_value = DEFAULT_MAX_OUTCOMES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_outcomes: u64,

    /// Concurrent streams one HTTP/2 (h2c) connection may carry, e.g. from a proxy.
    #[arg(long, env = "PAYPUSH_H2_MAX_STREAMS", value_name = "N", default_value = DEFAULT_H2_MAX_STREAMS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_streams: u32,

    /// Answer these origins' cross-origin requests (comma-separated, e.g. https://shop.example.com).
    #[arg(long, env = "PAYPUSH_ALLOW_ORIGIN", value_name = "LIST", value_delimiter = ',',
          value_parser = parse_origin)]
    pub allow_origin: Vec<String>,

    /// Serve the demo page from this folder instead of the files built into the binary.
    #[arg(long, env = "PAYPUSH_STATIC_DIR", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,

    /// This server's public URL (e.g. https://pay.example.com), encoded in the demo page's QR code [default: the request's Host].
    #[arg(long, env = "PAYPUSH_PUBLIC_URL", value_name = "URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,

    /// Turn the demo page, its files and /qr.svg off (404), for production; /paypush.js stays.
    #[arg(long, env = "PAYPUSH_NO_DEMO_PAGE")]
    pub no_demo_page: bool,

    /// Serve /metrics on this (internal) address instead; the main address then answers it with 404 [default: on --bind].
    #[arg(long, env = "PAYPUSH_METRICS_BIND", value_name = "ADDR")]
    pub metrics_bind: Option<SocketAddr>,

    /// Threads serving connections, as nginx's worker_processes; the store's writer has its own [default: one per core].
    #[arg(long, env = "PAYPUSH_WORKERS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

/// The helper subcommands, for curl and for the merchant's backend.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the three signature headers of a callback, ready for `curl -H`.
    Sign {
        /// The callback secret.
        #[arg(
            long,
            env = "PAYPUSH_CALLBACK_SECRET",
            value_name = "S",
            hide_env_values = true
        )]
        secret: Option<Secret>,
        /// The request method.
        #[arg(long, default_value = "GET", value_parser = ["GET", "POST"])]
        method: String,
        /// The path and query as sent, e.g. /pay-callback?payRecordId=123.
        #[arg(long, value_name = "PATH_AND_QUERY")]
        path: String,
        /// The request body (empty for GET).
        #[arg(long, default_value = "")]
        body: String,
        /// The request's Content-Type; its type/subtype is signed [default: none for GET, application/x-www-form-urlencoded for POST (what curl -d sends)].
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        /// Sign with this Unix time instead of now (to check another implementation).
        #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
        timestamp: Option<i64>,
        /// Sign with this nonce instead of a random one (to check another implementation).
        #[arg(long, value_name = "NONCE", value_parser = parse_nonce)]
        nonce: Option<String>,
    },
    /// Print the subscribe token of a payment.
    Token {
        /// The subscribe secret.
        #[arg(
            long,
            env = "PAYPUSH_SUBSCRIBE_SECRET",
            value_name = "S",
            hide_env_values = true
        )]
        secret: Option<Secret>,
        /// The payment.
        #[arg(long, value_name = "N", value_parser = parse_pay_record_id)]
        pay_record_id: PayRecordId,
    },
}

/// `--durability`'s words; the store's `Durability` knows no CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// After `fdatasync`: survives a power cut.
    Disk,
    /// After `write`: survives a crash of paypush, not of the machine.
    Process,
}

impl From<DurabilityArg> for Durability {
    fn from(arg: DurabilityArg) -> Durability {
        match arg {
            DurabilityArg::Disk => Durability::Disk,
            DurabilityArg::Process => Durability::Process,
        }
    }
}

impl Config {
    /// The total stream limit: `--max-streams`, or else the open-file limit
    /// less [`RESERVED_FDS`].
    pub fn stream_limit(&self, open_file_limit: u64) -> usize {
        let limit = self
            .max_streams
            .unwrap_or_else(|| open_file_limit.saturating_sub(RESERVED_FDS).max(1));
        usize::try_from(limit).unwrap_or(usize::MAX)
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, no path.
fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} is not an origin like https://shop.example.com"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '*']) {
        return Err(format!(
            "{s:?} is not an origin like https://shop.example.com"
        ));
    }
    Ok(s.to_string())
}

fn parse_nonce(s: &str) -> Result<String, String> {
    if crate::signature::is_valid_nonce(s) {
        Ok(s.to_string())
    } else {
        Err("must be 16 to 64 characters of [A-Za-z0-9_-]".to_string())
    }
}

/// A base URL like `https://pay.example.com` or `https://example.com/paypush`:
/// `http` or `https`, a host, an optional path, no query or fragment; kept
/// without its trailing `/`.
fn parse_public_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} is not a URL like https://pay.example.com"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || s.contains(['?', '#', ' ', '@']) {
        return Err(format!(
            "{s:?} is not a URL like https://pay.example.com (no user, query or fragment)"
        ));
    }
    Ok(s.to_string())
}

/// Parses `--redis-url` itself: clap's own error would quote the value, and
/// with it the password; this one quotes it through [`redact_url`].
#[derive(Clone, Debug)]
struct RedisUrlParser;

impl TypedValueParser for RedisUrlParser {
    type Value = RedisUrl;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<RedisUrl, clap::Error> {
        let text = value.to_string_lossy();
        text.parse::<RedisUrl>().map_err(|why| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!(
                    "invalid value '{}' for '--redis-url <URL>': {why}\n",
                    redact_url(&text)
                ),
            )
        })
    }
}

/// Parses `--redis-cluster` itself, for the same reason as
/// [`RedisUrlParser`]: every node of the list may hold a password, so each
/// is quoted through [`redact_url`].
#[derive(Clone, Debug)]
struct RedisNodesParser;

impl TypedValueParser for RedisNodesParser {
    type Value = RedisNodes;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<RedisNodes, clap::Error> {
        let text = value.to_string_lossy();
        text.parse::<RedisNodes>().map_err(|why| {
            let shown: Vec<String> = text.split(',').map(redact_url).collect();
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!(
                    "invalid value '{}' for '--redis-cluster <NODES>': {why}\n",
                    shown.join(",")
                ),
            )
        })
    }
}

/// `url` with its password (and any `pass`/`password` query value) shown as
/// `***`: `redis://user:***@host:6379/0`. A user part without `:` may be a
/// password alone, and is hidden whole.
///
/// By hand rather than with the `url` crate: the URLs shown are the ones that
/// failed to parse (a bad port, a stray character), which `url` would refuse
/// too, so the text is cut at `://`, the last `@` and the query instead.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (user_info, host) = rest.split_at(at);
            match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:{REDACTED}{host}"),
                None => format!("{REDACTED}{host}"),
            }
        }
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((before, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("pass") => {
                        format!("{key}={REDACTED}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{before}?{}", query.join("&"))
        }
        None => rest,
    };
    if scheme.is_empty() && !url.contains("://") {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

/// What a hidden secret is shown as.
const REDACTED: &str = "***";

fn parse_pay_record_id(s: &str) -> Result<PayRecordId, String> {
    PayRecordId::parse(s)
        .map_err(|_| "must be an integer from 1 to 9223372036854775807".to_string())
}

/// Parses `300ms`, `15s`, `2m`, `1h 30m`; zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than zero".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (write durations like 300ms, 15s, 2m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["paypush"]).unwrap();
        let config = cli.serve;
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.push_timeout, Duration::from_secs(300));
        assert_eq!(config.keep_alive, Duration::from_secs(15));
        assert_eq!(config.outcome_ttl, Duration::from_secs(900));
        assert_eq!(config.max_streams_per_payment, 16);
        assert_eq!(config.stream_limit(20_000), 19_488);
        assert_eq!(config.data_dir, PathBuf::from("paypush-data"));
        assert_eq!(Durability::from(config.durability), Durability::Disk);
        assert!(!config.in_memory);
        assert_eq!(config.max_outcomes, 5_000_000);
    }

    #[test]
    fn redacted_urls_hide_passwords_only() {
        for (url, shown) in [
            ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
            ("redis://u:pw@h", "redis://u:***@h"),
            ("redis://pw@h", "redis://***@h"),
            ("redis://h:6379", "redis://h:6379"),
            (
                "redis+unix:///s?db=1&pass=pw",
                "redis+unix:///s?db=1&pass=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["paypush", "--push-timeout", "soon"][..],
            &["paypush", "--keep-alive", "0s"],
            &["paypush", "--max-streams", "0"],
            &["paypush", "--bind", "localhost"],
            &["paypush", "--redis-cluster", "not a url"],
            &[
                "paypush",
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-cluster",
                "redis://127.0.0.1:7000",
            ],
            &["paypush", "--public-url", "pay.example.com"],
            &["paypush", "--public-url", "https://pay.example.com/?a=1"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
