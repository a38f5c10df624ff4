//! `weft`: the control plane (`weft serve`), the demo, and the operator CLI. The commands are
//! `weft::cli`; this parses, starts the runtime, dispatches, and turns the outcome into the exit
//! code and the `weft: ...` lines on stderr.

use std::process::ExitCode;

use weft::cli::{self, Cli, Command, Error};

fn main() -> ExitCode {
    let cli = match Cli::from_args() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed.
            let code = if e.use_stderr() { cli::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Command::Proxy { args } = cli.command {
        let argv = std::iter::once("weft-proxy".to_string()).chain(args);
        return weft_proxy::cli::main(argv);
    }
    weft_runtime::logging::init_with_default(if cli.is_quiet() { "warn" } else { "info" });
    let outcome = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(cli::run(cli)),
        Err(e) => Err(Error::failed(
            "weft",
            format!("cannot start the runtime: {e}"),
        )),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
