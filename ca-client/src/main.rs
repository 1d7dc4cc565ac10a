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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let json = cli.global.json;
    init_tracing(cli.global.verbose);
    match moshca_client::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if json {
                moshca_client::output::error_json(&err);
            } else {
                moshca_client::error::report(&err);
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// A command line clap refused: as JSON on stdout when `--json` is among the arguments
/// (clap could not parse them, so it cannot say), else clap's own text and exit code.
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !informational && std::env::args_os().any(|a| a == "--json") {
        let code = u8::try_from(err.exit_code()).unwrap_or(moshca_client::error::exit::USAGE);
        moshca_client::output::usage_error_json(&err.render().to_string(), code);
        return ExitCode::from(code);
    }
    // Printing help or the error is all that is left to do; clap exits with its code.
    err.exit()
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
        .with_writer(moshca_client::progress::StderrWriter::new)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose > 1)
        .with_filter(filter)
        .with_filter(no_wire_dumps);
    tracing_subscriber::registry().with(layer).init();
}
