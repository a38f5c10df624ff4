//! The `weft` command line: the arguments of every command, and what each does.
//!
//! One file per command group, each owning its clap `Args` and a `run()`: `serve` (the control
//! plane, built by the crate's [`crate::start`]), `demo` (whose engine is [`crate::demo`]), and
//! the commands that talk to a control plane's API: `get`, `apply`, `delete`, `token`, `ca`,
//! `admin_cert`. Those share `client`: one set of API-client arguments (`--server` and the
//! credentials) and the HTTP client they build. The server's side of the API is `crate::api`;
//! nothing here reaches into a running control plane but through it.
//!
//! Every failure is an [`Error`], which says its exit code (64: what the user gave is wrong; 1:
//! the work failed) and prints as the `weft: ...` lines `main.rs` writes to stderr.

pub mod admin_cert;
pub mod apply;
pub mod ca;
pub mod client;
pub mod delete;
pub mod demo;
pub mod get;
pub mod serve;
pub mod table;
pub mod token;

use std::path::PathBuf;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use self::client::CredentialArgs;

#[derive(Parser)]
#[command(name = "weft", version, about = "weft: a light, fast service mesh")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Where `weft serve` keeps its state [default: ./weft-data]. The other commands read the
    /// admin token there (`DATA_DIR/admin-token`) for a --server on this host's loopback.
    #[arg(long, env = "WEFT_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The API credentials given before the command's name (`weft --token-file FILE get ...`);
    /// each command that talks to the API takes them after its name too.
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the control plane.
    Serve(serve::Args),
    /// Run a whole mesh on loopback and show what it does.
    Demo(demo::Args),
    /// Show the resources in force (`weft get services`, `weft get httproute orders -n shop -o
    /// yaml`), the connected proxies (`weft get proxies`), or the last writes (`weft get audit
    /// [N]`).
    Get(get::Args),
    /// Create or update the resources in FILE (`-` for stdin), all or nothing: prints
    /// `kind/namespace/name created|configured|unchanged` for each.
    Apply(apply::Args),
    /// Delete a resource applied through the API (`weft delete httproute orders -n shop`).
    Delete(delete::Args),
    /// Make an admin client certificate for the API: the key is made here, the control plane
    /// signs spiffe://TRUST_DOMAIN/ns/weft-system/sa/NAME for the holder of its admin token
    /// (run it on the control plane's host, where `weft serve` keeps its data dir).
    AdminCert(admin_cert::Args),
    /// Manage join tokens: proofs of identity for proxies outside Kubernetes.
    Token(token::Args),
    /// The mesh CA: its state, and trust-anchor rotation without downtime.
    Ca(ca::Args),
    /// Run the sidecar proxy from this executable (what `weft demo` uses when no `weft-proxy`
    /// binary sits beside `weft`).
    #[command(hide = true, disable_help_flag = true)]
    Proxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Why a command failed: its exit code, and the stderr lines it prints as ([`std::fmt::Display`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the user gave is wrong (a flag, an argument, a file they named): exit 64.
    #[error("{said_by}: {message}")]
    Usage {
        said_by: &'static str,
        message: String,
    },
    /// `weft serve`'s settings: every problem found, one `weft: ...` line each; exit 64.
    #[error("{}", .0.iter().map(|p| format!("weft: {p}")).collect::<Vec<_>>().join("\n"))]
    Settings(Vec<String>),
    /// The work failed (the control plane unreachable or refusing, I/O): exit 1.
    #[error("{said_by}: {message}")]
    Failed {
        said_by: &'static str,
        message: String,
    },
}

/// The exit code for bad flags, arguments or settings (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

impl Error {
    /// A wrong flag or argument, reported as `SAID_BY: MESSAGE`.
    pub fn usage(said_by: &'static str, message: impl Into<String>) -> Self {
        Self::Usage {
            said_by,
            message: message.into(),
        }
    }

    /// Failed work, reported as `SAID_BY: MESSAGE`.
    pub fn failed(said_by: &'static str, message: impl Into<String>) -> Self {
        Self::Failed {
            said_by,
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage { .. } | Self::Settings(_) => EXIT_USAGE,
            Self::Failed { .. } => 1,
        }
    }
}

impl Cli {
    /// Parses the process's arguments. The credentials given after a command's name win over
    /// those given before it, and either over the environment.
    pub fn from_args() -> Result<Self, clap::Error> {
        Self::parse_from_args(std::env::args_os())
    }

    /// [`Cli::from_args`] for these arguments (the first is the program's name).
    pub fn parse_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        // Before a command's name the credentials are the root's own flags, not global ones:
        // global, they would reach `weft serve` and `weft demo`, which use none.
        let root = CredentialArgs::IDS
            .iter()
            .fold(Self::command(), |c, id| c.mut_arg(id, |a| a.global(false)));
        let matches = root.try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let Some((_, command)) = matches.subcommand() {
            cli.command
                .prefer_given_credentials(&cli.credentials, &matches, command);
        }
        Ok(cli)
    }

    /// Whether this is a command whose screen is its output (its logs are for when something
    /// goes wrong).
    pub fn is_quiet(&self) -> bool {
        matches!(self.command, Command::Demo(_))
    }
}

impl Command {
    fn prefer_given_credentials(
        &mut self,
        before: &CredentialArgs,
        top: &ArgMatches,
        command: &ArgMatches,
    ) {
        let client = match self {
            Self::Get(a) => &mut a.client,
            Self::Apply(a) => &mut a.client,
            Self::Delete(a) => &mut a.client,
            Self::AdminCert(a) => &mut a.client,
            Self::Token(a) => &mut a.client,
            Self::Ca(a) => &mut a.client,
            Self::Serve(_) | Self::Demo(_) | Self::Proxy { .. } => return,
        };
        client.credentials.prefer_given(before, top, command);
    }
}

/// Runs a parsed command (all but `weft proxy`, which `main.rs` hands to the proxy's own CLI
/// before a runtime exists).
pub async fn run(cli: Cli) -> Result<(), Error> {
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Serve(args) => args.run(data_dir).await,
        Command::Demo(args) => args.run().await,
        Command::Get(args) => args.run(data_dir).await,
        Command::Apply(args) => args.run(data_dir).await,
        Command::Delete(args) => args.run(data_dir).await,
        Command::AdminCert(args) => args.run(data_dir).await,
        Command::Token(args) => args.run(data_dir).await,
        Command::Ca(args) => args.run(data_dir).await,
        // Not reached: main.rs runs `weft proxy` itself, before there is a runtime to run in.
        Command::Proxy { .. } => Err(Error::failed(
            "weft proxy",
            "the proxy runs from main.rs, not inside this runtime",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_of(args: &[&str]) -> client::ClientArgs {
        let cli = Cli::parse_from_args(std::iter::once("weft").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Get(a) => a.client,
            Command::Token(a) => a.client,
            Command::Ca(a) => a.client,
            _ => panic!("{args:?}: not a client command"),
        }
    }

    #[test]
    fn credentials_are_taken_before_and_after_the_command_name() {
        let before = client_of(&[
            "--token-file",
            "a",
            "--server-trust-domain",
            "x.test",
            "get",
            "services",
        ]);
        assert_eq!(before.credentials.token_file, Some(PathBuf::from("a")));
        assert_eq!(before.credentials.server_trust_domain, "x.test");
        let after = client_of(&["get", "services", "--token-file", "b"]);
        assert_eq!(after.credentials.token_file, Some(PathBuf::from("b")));
        assert_eq!(after.credentials.server_trust_domain, "weft.local");
        // Given twice, the nearer wins.
        let both = client_of(&["--token-file", "a", "get", "services", "--token-file", "b"]);
        assert_eq!(both.credentials.token_file, Some(PathBuf::from("b")));
        // `token` and `ca` take them (and --server) after their own subcommand too.
        let token = client_of(&[
            "token",
            "create",
            "shop/orders",
            "--token-file",
            "c",
            "--server",
            "http://cp:1",
        ]);
        assert_eq!(token.credentials.token_file, Some(PathBuf::from("c")));
        assert_eq!(token.server, "http://cp:1");
        let ca = client_of(&["--certificate-authority", "ca.crt", "ca", "status"]);
        assert_eq!(
            ca.credentials.certificate_authority,
            Some(PathBuf::from("ca.crt"))
        );
    }

    #[test]
    fn serve_takes_no_client_credentials() {
        let e = Cli::parse_from_args(["weft", "serve", "--token-file", "a"])
            .err()
            .map(|e| e.kind());
        assert_eq!(e, Some(clap::error::ErrorKind::UnknownArgument));
    }
}
