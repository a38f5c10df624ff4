//! `weft-proxy`: see `weft_proxy::cli`.

fn main() -> std::process::ExitCode {
    weft_proxy::cli::main(std::env::args())
}
