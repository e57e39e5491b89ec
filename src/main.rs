//! The `paypush` binary: parse the configuration, set up logging, raise the
//! open-file limit, bind, and serve until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use paypush::config::Cli;
use paypush::server::{self, App};
use tokio::net::TcpListener;

/// Exit code for a configuration the server cannot start with.
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure to start (address in use, ...).
const EXIT_FAILURE: u8 = 1;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
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
    let config = cli.serve;
    let open_file_limit = raise_open_file_limit();
    let listener = match TcpListener::bind(config.bind).await {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.bind);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let app = match App::new(config, open_file_limit) {
        Ok(app) => app,
        Err(e) => {
            log::error!("cannot set up metrics: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let address = listener
        .local_addr()
        .map_or_else(|_| app.config.bind.to_string(), |a| a.to_string());
    let limits = app.hub.limits();
    log::info!(
        "paypush listening on http://{address} (in-memory mode; up to {} streams, {} per payment)",
        limits.max_streams,
        limits.max_streams_per_payment
    );
    server::run(listener, app, paypush::shutdown::signal()).await;
    log::info!("paypush stopped");
    ExitCode::SUCCESS
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
