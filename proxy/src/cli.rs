//! The `weft-proxy` command line: parse settings, bind, run until SIGTERM/SIGINT or (with
//! `admin-shutdown`) `POST /shutdown`, drain; or `weft-proxy init`, the init container's
//! iptables rules (`init.rs`). Shared by the `weft-proxy` binary and `weft proxy`.

use std::process::ExitCode;

use crate::config::{Args, Config};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
#[allow(clippy::large_enum_variant)] // parsed once, at start
enum Command {
    /// Run the proxy (the default).
    Run(Args),
    /// Install the iptables rules of transparent interception in this network namespace (the
    /// init container's job; needs NET_ADMIN), or remove them with --uninstall.
    Init(crate::init::Args),
}

/// What the command line asks for.
#[allow(clippy::large_enum_variant)] // parsed once, at start
enum Parsed {
    Run(Args),
    Init(crate::init::Args),
}

/// Exit status for invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// The settings these command-line arguments give (the first is the program name), noting
/// whether the join token was on the command line itself.
fn parse(argv: impl IntoIterator<Item = String>) -> Result<Parsed, clap::Error> {
    let matches = Cli::command().try_get_matches_from(argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let (mut args, matches) = match cli.command {
        Some(Command::Run(args)) => (args, matches.subcommand_matches("run").unwrap_or(&matches)),
        Some(Command::Init(args)) => return Ok(Parsed::Init(args)),
        None => (cli.run, &matches),
    };
    args.join_token_on_command_line =
        matches.value_source("join_token") == Some(ValueSource::CommandLine);
    Ok(Parsed::Run(args))
}

/// Runs the proxy with these command-line arguments (the first is the program name).
pub fn main(argv: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match parse(argv) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Init(args)) => return crate::init::main(args),
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let exit_with_parent = args.exit_with_parent;
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("weft-proxy: {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    weft_runtime::logging::init();
    weft_runtime::server::raise_fd_limit();
    if exit_with_parent {
        follow_parent();
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
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
    let listeners = crate::wiring::Listeners::bind(&config).await?;
    let running = crate::wiring::start(config, listeners)?;
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

/// Asks the kernel for SIGTERM (a drain) when the parent process exits, so that a sidecar
/// outlives neither a `weft demo` that was killed nor one that crashed.
fn follow_parent() {
    use rustix::process::{getppid, set_parent_process_death_signal, Signal};
    if let Err(e) = set_parent_process_death_signal(Some(Signal::TERM)) {
        return tracing::warn!(error = %e, "cannot follow the parent process");
    }
    // The parent may have gone before the request: then this process was handed to init.
    if getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        tracing::warn!("the parent process is gone; exiting");
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn argv(extra: &[&str]) -> Vec<String> {
        std::iter::once("weft-proxy")
            .chain(extra.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn a_join_token_on_the_command_line_is_noticed() {
        let run = |extra: &[&str]| match parse(argv(extra)).unwrap() {
            Parsed::Run(args) => args,
            Parsed::Init(_) => panic!("not init"),
        };
        assert!(run(&["--join-token", "weft1.a.b"]).join_token_on_command_line);
        assert!(run(&["run", "--join-token", "weft1.a.b"]).join_token_on_command_line);
        assert!(!run(&["--join-token-file", "/dev/null"]).join_token_on_command_line);
        assert!(matches!(
            parse(argv(&["init", "--dry-run"])).unwrap(),
            Parsed::Init(_)
        ));
    }
}
