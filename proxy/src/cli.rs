//! The `weft-proxy` command line: parse settings, bind, run until SIGTERM/SIGINT or (with
//! `admin-shutdown`) `POST /shutdown`, drain. Shared by the `weft-proxy` binary and `weft proxy`.

use std::process::ExitCode;

use crate::config::{Args, Config};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft-proxy",
    version,
    about = "weft's sidecar proxy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(Args),
}

/// Exit status for invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Runs the proxy with these command-line arguments (the first is the program name).
pub fn main(argv: impl IntoIterator<Item = String>) -> ExitCode {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("weft-proxy: {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init();
    crate::server::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .thread_name("weft-proxy")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = crate::Listeners::bind(&config).await?;
    let running = crate::start(config, listeners)?;
    tracing::info!(
        inbound = %running.inbound_addr,
        outbound = %running.outbound_addr,
        admin = %running.admin_addr,
        "weft-proxy started"
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        () = running.shutdown_requested() => {}
    }
    running.stop().await;
    tracing::info!("drained; exiting");
    Ok(())
}
