//! The `moshca` binary: parse arguments, set up logging, run the command, exit with the
//! error's code. Everything else lives in the `moshca_client` library.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use moshca_client::cli::Cli;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    match moshca_client::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            moshca_client::error::report(&err);
            ExitCode::from(err.exit_code())
        }
    }
}

/// Logs to stderr: warnings only by default, more with each `-v`; `RUST_LOG` wins, except
/// that ureq never logs at TRACE (see below).
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,moshca_client=info",
        2 => "info,moshca_client=debug",
        _ => "debug,moshca_client=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // ureq's TRACE level dumps the wire unredacted: GitHub's request token and the ID token
    // in its answer. Its DEBUG level redacts them, so that is as far as it goes.
    let no_wire_dumps = filter_fn(|meta| {
        !(meta.target().starts_with("ureq") && *meta.level() == tracing::Level::TRACE)
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose > 1)
        .with_filter(filter)
        .with_filter(no_wire_dumps);
    tracing_subscriber::registry().with(layer).init();
}
