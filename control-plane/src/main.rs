//! `weft`: the control plane (`weft serve`), the demo, and the operator CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft", version, about = "weft: a light, fast service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve {
        /// Files or folders of YAML resources (repeatable).
        #[arg(long)]
        config: Vec<PathBuf>,
        /// Where the control plane keeps its state.
        #[arg(long, default_value = "./weft-data")]
        data_dir: PathBuf,
        /// gRPC listener for proxies.
        #[arg(long, default_value = "127.0.0.1:15012")]
        grpc_addr: String,
        /// HTTP listener for the API and /admin.
        #[arg(long, default_value = "127.0.0.1:15080")]
        api_addr: String,
        /// The mesh's SPIFFE trust domain (MeshConfig trustDomain overrides it).
        #[arg(long, default_value = "weft.local")]
        trust_domain: String,
    },
    /// Run a whole mesh on loopback and show what it does.
    Demo {
        /// Stop after this long (e.g. 30s); without it, run until Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
        /// Requests per second the demo's load generator sends.
        #[arg(long, default_value_t = 50)]
        rps: u32,
        /// Send the demo's traces to this OTLP endpoint (e.g. http://127.0.0.1:4317).
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Manage join tokens: proofs of identity for proxies outside Kubernetes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        /// The control plane's API.
        #[arg(long, env = "WEFT_SERVER", default_value = weft::client::DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// Run the sidecar proxy from this executable (what `weft demo` uses when no `weft-proxy`
    /// binary sits beside `weft`).
    #[command(hide = true, disable_help_flag = true)]
    Proxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new join token for NAMESPACE/SERVICEACCOUNT.
    Create {
        workload: String,
        /// How long the token may be used.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Revoke a token (by id, or the whole token).
    Revoke { id: String },
    /// List tokens (never their secrets).
    List,
}

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Proxy { args } => {
            let argv = std::iter::once("weft-proxy".to_string()).chain(args);
            weft_proxy::cli::main(argv)
        }
        command => {
            // The demo's screen is its output; its logs are for when something goes wrong.
            let quiet = matches!(command, Command::Demo { .. });
            weft_proxy::logging::init_with_default(if quiet { "warn" } else { "info" });
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("weft: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(command))
        }
    }
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            config,
            data_dir,
            grpc_addr,
            api_addr,
            trust_domain,
        } => serve(config, data_dir, grpc_addr, api_addr, trust_domain).await,
        Command::Demo {
            duration,
            rps,
            otlp_endpoint,
        } => {
            let duration = match duration
                .map(|d| weft_proxy::config::parse_duration(&d))
                .transpose()
            {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("weft demo: --duration: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match weft::demo::run(weft::demo::DemoOptions {
                duration,
                rps,
                otlp_endpoint,
            })
            .await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weft demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token { command, server } => token(command, &server).await,
        Command::Proxy { .. } => ExitCode::FAILURE,
    }
}

async fn serve(
    config: Vec<PathBuf>,
    data_dir: PathBuf,
    grpc_addr: String,
    api_addr: String,
    trust_domain: String,
) -> ExitCode {
    let mut errors = Vec::new();
    let mut addr = |name: &str, v: &str| -> Option<SocketAddr> {
        v.parse()
            .map_err(|e| errors.push(format!("{name}={v:?}: {e} (expected IP:PORT)")))
            .ok()
    };
    let (grpc, api) = (addr("grpc-addr", &grpc_addr), addr("api-addr", &api_addr));
    if !errors.is_empty() {
        return config_errors(&errors);
    }
    let (Some(grpc), Some(api)) = (grpc, api) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let bind = |a: SocketAddr| async move {
        tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| format!("cannot listen on {a}: {e}"))
    };
    let (grpc, api) = match (bind(grpc).await, bind(api).await) {
        (Ok(g), Ok(a)) => (g, a),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match weft::start(
        weft::ServeConfig {
            config,
            data_dir,
            trust_domain,
            ack_timeout: weft::DEFAULT_ACK_TIMEOUT,
        },
        grpc,
        api,
    ) {
        Ok(r) => r,
        Err(problems) => return config_errors(&problems),
    };
    tracing::info!(grpc = %running.grpc_addr, api = %running.api_addr, "weft control plane serving");
    let Ok(mut sigterm) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        () = running.shutdown_requested() => {}
    }
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .ok();
    ExitCode::SUCCESS
}

fn config_errors(errors: &[String]) -> ExitCode {
    for e in errors {
        eprintln!("weft: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

async fn token(command: TokenCommand, server: &str) -> ExitCode {
    use http::Method;
    let api = weft::client::ApiClient::new(server);
    let (method, path, body) = match &command {
        TokenCommand::Create { workload, ttl } => (
            Method::POST,
            "/api/v1/tokens".to_string(),
            Some(serde_json::json!({ "workload": workload, "ttl": ttl })),
        ),
        TokenCommand::Revoke { id } => (Method::DELETE, format!("/api/v1/tokens/{id}"), None),
        TokenCommand::List => (Method::GET, "/api/v1/tokens".to_string(), None),
    };
    let (status, body) = match api.request(method, &path, body).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !(200..300).contains(&status) {
        eprintln!("weft: the control plane answered {status}: {}", body.trim());
        return ExitCode::FAILURE;
    }
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match command {
        // The token alone on stdout, so that `$(weft token create ns/sa)` works.
        TokenCommand::Create { .. } => println!("{}", doc["token"].as_str().unwrap_or_default()),
        TokenCommand::Revoke { id } => println!("token {id} revoked"),
        TokenCommand::List => {
            println!("{:<18} {:<32} {:<12} REVOKED", "ID", "WORKLOAD", "EXPIRES");
            for t in doc["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<18} {:<32} {:<12} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["workload"].as_str().unwrap_or_default(),
                    t["expiresAt"],
                    t["revoked"]
                );
            }
        }
    }
    ExitCode::SUCCESS
}
