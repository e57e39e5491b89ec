//! The command line: parse the configuration, set up logging, then either
//! run a helper subcommand (`sign`, `token`) or serve: start the runtime
//! with `--workers` threads, raise the open-file limit, bind, build the app
//! and serve until SIGINT or SIGTERM, then wait for the store's writer. The
//! binary (`main.rs`) only picks the allocator and calls [`run`].

use std::process::ExitCode;

use std::time::SystemTime;

use crate::app::App;
use crate::config::{Cli, Command, Config};
use crate::server;
use crate::signature::{self, SignedParts};
use crate::store::Stopped;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use futures_util::FutureExt;

/// Exit code for a configuration the server cannot start with.
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure to start (address in use, ...).
const EXIT_FAILURE: u8 = 1;

/// Runs `paypush` with the process's arguments; its exit code.
pub fn run() -> ExitCode {
    ignore_file_size_signal();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if e.use_stderr() => {
            // One line: what is wrong, without clap's usage block.
            let text = e.to_string();
            eprintln!(
                "{}",
                text.lines().next().unwrap_or("error: invalid arguments")
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    init_logging();
    warn_about_secrets_on_the_command_line(&matches);
    match cli.command {
        Some(Command::Sign {
            secret,
            method,
            path,
            body,
            content_type,
            timestamp,
            nonce,
        }) => {
            let Some(secret) = secret else {
                return missing_secret("PAYPUSH_CALLBACK_SECRET");
            };
            let content_type = content_type.unwrap_or_else(|| default_content_type(&method).into());
            let media_type = signature::media_type(&content_type);
            let parts = SignedParts {
                method: &method,
                path_and_query: &path,
                media_type: &media_type,
                body: body.as_bytes(),
            };
            let timestamp = timestamp.unwrap_or_else(|| signature::unix_seconds(SystemTime::now()));
            let nonce = nonce.unwrap_or_else(signature::fresh_nonce);
            let headers = signature::sign_with(&secret, parts, timestamp.to_string(), nonce);
            for (name, value) in headers {
                println!("{name}: {value}");
            }
            ExitCode::SUCCESS
        }
        Some(Command::Token {
            secret,
            pay_record_id,
        }) => {
            let Some(secret) = secret else {
                return missing_secret("PAYPUSH_SUBSCRIBE_SECRET");
            };
            println!("{}", signature::subscribe_token(&secret, pay_record_id));
            ExitCode::SUCCESS
        }
        None => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(workers) = cli.serve.workers {
                runtime.worker_threads(usize::from(workers));
            }
            match runtime.enable_all().build() {
                Ok(runtime) => match runtime.block_on(serve(cli.serve)) {
                    Ok(store) => {
                        // The tasks go with the runtime, and the last store
                        // handles with them: the writer can finish.
                        drop(runtime);
                        if store.is_some_and(|store| !store.wait(server::SHUTDOWN_GRACE)) {
                            log::warn!("the store's writer had not stopped at exit");
                        }
                        log::info!("paypush stopped");
                        ExitCode::SUCCESS
                    }
                    Err(code) => code,
                },
                Err(e) => {
                    log::error!("cannot start the runtime: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
    }
}

/// Runs the server until SIGINT or SIGTERM; gives what tells when the
/// store's writer has stopped (the durable default), or the exit code of a
/// server that could not start.
async fn serve(config: Config) -> Result<Option<Stopped>, ExitCode> {
    let open_file_limit = raise_open_file_limit();
    let listener = match server::bind(config.bind) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.bind);
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    };
    let app = match App::new(config, open_file_limit) {
        Ok(app) => app,
        Err(e) => {
            log::error!("{e}");
            return Err(ExitCode::from(if e.usage {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            }));
        }
    };
    let address = listener
        .local_addr()
        .map_or_else(|_| app.config.bind.to_string(), |a| a.to_string());
    let shutdown = crate::shutdown::signal().shared();
    let metrics_server = match app.config.metrics_bind {
        Some(metrics_bind) => match server::bind(metrics_bind) {
            Ok(listener) => {
                let address = listener
                    .local_addr()
                    .map_or_else(|_| metrics_bind.to_string(), |a| a.to_string());
                log::info!("metrics on http://{address}/metrics");
                let serving = server::run_metrics(listener, app.clone(), shutdown.clone());
                Some(tokio::spawn(serving))
            }
            Err(e) => {
                log::error!("cannot listen on {metrics_bind} for metrics: {e}");
                return Err(ExitCode::from(EXIT_FAILURE));
            }
        },
        None => None,
    };
    warn_about_open_modes(&app.config);
    let (max_streams, per_payment) = app.stream_limits();
    log::info!(
        "paypush listening on http://{address} ({}; up to {max_streams} streams, {per_payment} per payment)",
        app.describe(),
    );
    let store = app.store_stopped.clone();
    server::run(listener, app, shutdown).await;
    if let Some(metrics_server) = metrics_server {
        if tokio::time::timeout(server::SHUTDOWN_GRACE, metrics_server)
            .await
            .is_err()
        {
            log::warn!("the metrics address still had open connections at exit");
        }
    }
    Ok(store)
}

/// Warns about settings that leave payments open to anyone.
fn warn_about_open_modes(config: &Config) {
    if config.callback_secret.is_none() {
        log::warn!(
            "demo mode: callbacks are unauthenticated, so anyone can mark any order as paid; \
             set PAYPUSH_CALLBACK_SECRET in production"
        );
    } else if config.subscribe_secret.is_none() {
        log::warn!(
            "no subscribe secret: anyone who guesses a payment id can watch it and fill its \
             stream slots; set PAYPUSH_SUBSCRIBE_SECRET in production"
        );
    }
}

/// What `paypush sign` signs when `--content-type` is not given: none for GET,
/// and for POST what `curl -d` and an HTML form send.
fn default_content_type(method: &str) -> &'static str {
    if method == "POST" {
        "application/x-www-form-urlencoded"
    } else {
        ""
    }
}

fn missing_secret(variable: &str) -> ExitCode {
    eprintln!("error: no secret: pass --secret or set {variable}");
    ExitCode::from(EXIT_USAGE)
}

/// A secret on the command line shows in `ps` and shell history: say so.
fn warn_about_secrets_on_the_command_line(matches: &ArgMatches) {
    let on_command_line = |matches: &ArgMatches, id: &str| {
        matches.try_get_raw(id).is_ok_and(|v| v.is_some())
            && matches.value_source(id) == Some(ValueSource::CommandLine)
    };
    for (id, variable) in [
        ("callback_secret", "PAYPUSH_CALLBACK_SECRET"),
        ("subscribe_secret", "PAYPUSH_SUBSCRIBE_SECRET"),
    ] {
        if on_command_line(matches, id) {
            log::warn!("a secret given on the command line shows in ps and shell history; set {variable} instead");
        }
    }
    if let Some((_, sub)) = matches.subcommand() {
        if on_command_line(sub, "secret") {
            log::warn!("a secret given on the command line shows in ps and shell history; use the environment variable instead");
        }
    }
}

/// A file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) must be a failed write
/// like a full disk: the store answers `503` and stays up. By default the
/// kernel kills a process that writes past it (`SIGXFSZ`); ignored, the
/// write fails with `EFBIG` instead. Called first, before anything writes.
fn ignore_file_size_signal() {
    // SAFETY: `SIG_IGN` installs no handler, so no code of ours ever runs
    // in signal context; nothing else in paypush sets SIGXFSZ's disposition.
    let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        // Logging is not set up yet; this cannot fail for a valid signal.
        eprintln!("warning: cannot ignore SIGXFSZ: a file-size limit would kill paypush");
    }
}

fn init_logging() {
    let mut builder = pretty_env_logger::formatted_timed_builder();
    builder.filter_level(log::LevelFilter::Info);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    builder.init();
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
            log::warn!("cannot raise the open-file limit ({e}); it stays at {soft}");
            soft
        }
    }
}
