//! `weft`: the control plane (`weft serve`), the demo, and the operator CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft::cli::client::{connect as client, Credentials};

#[derive(Parser)]
#[command(name = "weft", version, about = "weft: a light, fast service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where `weft serve` keeps its state [default: ./weft-data]. The other commands read the
    /// admin token there (`DATA_DIR/admin-token`) for a --server on this host's loopback.
    #[arg(long, env = "WEFT_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// A file holding an API bearer token (`TOKEN[,USER]`, as in `weft serve
    /// --api-token-file`), sent instead of the admin token.
    #[arg(long, env = "WEFT_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// For an https:// --server: the mesh's trust anchors, to verify the control plane.
    #[arg(long, env = "WEFT_CERTIFICATE_AUTHORITY", global = true)]
    certificate_authority: Option<PathBuf>,
    /// For an https:// --server: the mesh's trust domain; the server must present
    /// spiffe://THIS/ns/weft-system/sa/weft-control-plane.
    #[arg(
        long,
        env = "WEFT_SERVER_TRUST_DOMAIN",
        global = true,
        default_value = "weft.local"
    )]
    server_trust_domain: String,
    /// An admin client certificate (from `weft admin-cert`) for an https:// --server.
    #[arg(
        long,
        env = "WEFT_CLIENT_CERTIFICATE",
        global = true,
        requires = "client_key"
    )]
    client_certificate: Option<PathBuf>,
    /// The key of --client-certificate.
    #[arg(
        long,
        env = "WEFT_CLIENT_KEY",
        global = true,
        requires = "client_certificate"
    )]
    client_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve {
        /// Files or folders of YAML resources (repeatable).
        #[arg(long)]
        config: Vec<PathBuf>,
        /// gRPC listener for proxies.
        #[arg(long, default_value = "127.0.0.1:15012")]
        grpc_addr: String,
        /// HTTP listener for the API and /admin.
        #[arg(long, default_value = "127.0.0.1:15080")]
        api_addr: String,
        /// The mesh's SPIFFE trust domain (MeshConfig trustDomain overrides it).
        #[arg(long, default_value = "weft.local")]
        trust_domain: String,
        /// Sign with this issuing certificate (PEM, optionally followed by its chain) instead of
        /// the CA weft manages in the data dir. Re-read when it changes.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The private key of --ca-cert (PEM).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Trust anchors for --ca-cert (PEM) [default: the self-signed root ending --ca-cert].
        #[arg(long, requires = "ca_cert")]
        ca_roots: Option<PathBuf>,
        /// Kubernetes API for reviewing service-account tokens [default: the in-cluster service
        /// account, else $KUBECONFIG or ~/.kube/config].
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Bearer tokens for API users, one `TOKEN[,USER]` per line (re-read on use): they
        /// manage resources; join tokens and the CA take the admin token
        /// (DATA_DIR/admin-token) or an admin certificate.
        #[arg(long)]
        api_token_file: Option<PathBuf>,
        /// A host name callers reach the API by (repeatable). The API answers requests for IP
        /// addresses, localhost, the control plane's Service names and these; a request naming
        /// another host is refused (it is how a web page would reach it, by DNS rebinding).
        #[arg(long = "api-host", value_name = "NAME")]
        api_hosts: Vec<String>,
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
    /// Show the resources in force (`weft get services`, `weft get httproute orders -n shop -o
    /// yaml`), the connected proxies (`weft get proxies`), or the last writes (`weft get audit
    /// [N]`).
    Get {
        /// A kind (Service, HTTPRoute, TrafficPolicy, AuthorizationPolicy, MeshConfig; singular or
        /// plural, any case), `proxies` or `audit`.
        kind: String,
        /// One resource's name (a proxy: its identity, service or id).
        name: Option<String>,
        /// The namespace [default: all for a list, `default` for a name].
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Print YAML or JSON instead of a table.
        #[arg(short = 'o', long, value_enum)]
        output: Option<weft::cli::get::Output>,
        /// The control plane's API.
        #[arg(long, env = "WEFT_SERVER", default_value = weft::cli::client::DEFAULT_SERVER)]
        server: String,
    },
    /// Create or update the resources in FILE (`-` for stdin), all or nothing: prints
    /// `kind/namespace/name created|configured|unchanged` for each.
    Apply {
        /// A file of YAML or JSON resources (multi-document), or `-`.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Check everything on the server and print what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The control plane's API.
        #[arg(long, env = "WEFT_SERVER", default_value = weft::cli::client::DEFAULT_SERVER)]
        server: String,
    },
    /// Delete a resource applied through the API (`weft delete httproute orders -n shop`).
    Delete {
        /// The kind (singular or plural, any case).
        kind: String,
        name: String,
        /// The namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The control plane's API.
        #[arg(long, env = "WEFT_SERVER", default_value = weft::cli::client::DEFAULT_SERVER)]
        server: String,
    },
    /// Make an admin client certificate for the API: the key is made here, the control plane
    /// signs spiffe://TRUST_DOMAIN/ns/weft-system/sa/NAME for the holder of its admin token
    /// (run it on the control plane's host, where `weft serve` keeps its data dir).
    AdminCert {
        /// The admin's name (a DNS label).
        name: String,
        /// Where to write NAME.crt, NAME.key and ca.crt.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// How long the certificate is valid (1m to 30d).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// The control plane's API, on loopback.
        #[arg(long, env = "WEFT_SERVER", default_value = weft::cli::client::DEFAULT_SERVER)]
        server: String,
    },
    /// Manage join tokens: proofs of identity for proxies outside Kubernetes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        /// The control plane's API.
        #[arg(long, env = "WEFT_SERVER", default_value = weft::cli::client::DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// The mesh CA: its state, and trust-anchor rotation without downtime.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        /// The control plane's API.
        #[arg(long, env = "WEFT_SERVER", default_value = weft::cli::client::DEFAULT_SERVER, global = true)]
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
        /// The workload the token proves, NAMESPACE/SERVICEACCOUNT (e.g. shop/orders): a proxy
        /// that presents it gets the certificate spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICEACCOUNT.
        #[arg(value_name = "NAMESPACE/SERVICEACCOUNT")]
        workload: String,
        /// How long the token may be used.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Revoke a token (by id, or the whole token).
    Revoke {
        /// The token's id (as `weft token list` shows it), or the whole token.
        #[arg(value_name = "ID|TOKEN")]
        id: String,
    },
    /// List tokens (never their secrets).
    List,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Show the trust anchors, the issuer, the rotation phase and which proxies hold
    /// certificates from which issuer.
    Status,
    /// One step of a trust-anchor rotation: prepare (trust a new root beside the old), activate
    /// (sign with the new issuer; proxies renew), retire (stop trusting the old root).
    Rotate {
        #[arg(value_enum)]
        step: RotateStep,
        /// Retire even though some connected proxies still hold certificates from the old
        /// issuer (they will fail to talk to the others until they renew).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RotateStep {
    Prepare,
    Activate,
    Retire,
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
            let auth = weft::cli::client::Credentials {
                token_file: cli.token_file,
                tls: weft::cli::client::TlsFiles {
                    certificate_authority: cli.certificate_authority,
                    trust_domain: cli.server_trust_domain,
                    client_certificate: cli.client_certificate,
                    client_key: cli.client_key,
                },
                data_dir: cli.data_dir,
            };
            runtime.block_on(run(command, auth))
        }
    }
}

async fn run(command: Command, auth: Credentials) -> ExitCode {
    match command {
        Command::Serve {
            config,
            grpc_addr,
            api_addr,
            trust_domain,
            ca_cert,
            ca_key,
            ca_roots,
            kubeconfig,
            api_token_file,
            api_hosts,
        } => {
            let ca = ca_cert
                .zip(ca_key)
                .map(|(cert, key)| weft::ca::Source::Files {
                    cert,
                    key,
                    roots: ca_roots,
                });
            let cfg = weft::ServeConfig {
                config,
                data_dir: auth
                    .data_dir
                    .unwrap_or_else(|| PathBuf::from(weft::cli::client::DEFAULT_DATA_DIR)),
                trust_domain,
                ack_timeout: weft::DEFAULT_ACK_TIMEOUT,
                ca,
                kubeconfig,
                api_token_file,
                api_hosts,
            };
            serve(cfg, grpc_addr, api_addr).await
        }
        Command::Ca { command, server } => ca(command, &server, &auth).await,
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
            if rps == 0 {
                eprintln!(
                    "weft demo: --rps 0: the load generator needs at least 1 request a second"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
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
        Command::Token { command, server } => token(command, &server, &auth).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
            server,
        } => {
            let api = match client(&server, &auth) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("weft get: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match weft::cli::get::get(&api, &kind, name.as_deref(), namespace.as_deref(), output)
                .await
            {
                Ok(out) => {
                    print!("{out}");
                    if !out.ends_with('\n') {
                        println!();
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weft get: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Apply {
            file,
            dry_run,
            server,
        } => {
            let text = if file.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
            } else {
                std::fs::read_to_string(&file)
            };
            let text = match text {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("weft apply: {}: {e}", file.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let result = match client(&server, &auth) {
                Ok(api) => weft::cli::apply::apply(&api, text, dry_run).await,
                Err(e) => Err(e),
            };
            print_result("weft apply", result)
        }
        Command::Delete {
            kind,
            name,
            namespace,
            server,
        } => {
            let result = match client(&server, &auth) {
                Ok(api) => weft::cli::apply::delete(&api, &kind, &name, Some(&namespace)).await,
                Err(e) => Err(e),
            };
            print_result("weft delete", result)
        }
        Command::AdminCert {
            name,
            out,
            ttl,
            server,
        } => {
            let result = match client(&server, &auth) {
                Ok(api) => weft::cli::admin_cert::admin_cert(&api, &name, &out, &ttl).await,
                Err(e) => Err(e),
            };
            print_result("weft admin-cert", result)
        }
        Command::Proxy { .. } => ExitCode::FAILURE,
    }
}

fn print_result(command: &str, result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{command}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: weft::ServeConfig, grpc_addr: String, api_addr: String) -> ExitCode {
    weft_proxy::server::raise_fd_limit();
    let mut errors = Vec::new();
    let mut addr = |name: &str, v: &str| -> Option<SocketAddr> {
        v.parse()
            .map_err(|e| errors.push(format!("{name}={v:?}: {e} (expected IP:PORT)")))
            .ok()
    };
    let (grpc, api) = (addr("grpc-addr", &grpc_addr), addr("api-addr", &api_addr));
    for host in &cfg.api_hosts {
        let name = host.trim_end_matches('.');
        let label_ok = |l: &str| weft::resources::is_dns_label(&l.to_ascii_lowercase());
        if name.is_empty() || !name.split('.').all(label_ok) {
            errors.push(format!(
                "api-host={host:?}: expected a host name, without a port (e.g. cp.example.com)"
            ));
        }
    }
    if !errors.is_empty() {
        return config_errors(&errors);
    }
    let (Some(grpc), Some(api)) = (grpc, api) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let bind = |name: &'static str, a: SocketAddr| async move {
        tokio::net::TcpListener::bind(a).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(" (is another `weft serve` running? choose another --{name})")
            } else {
                String::new()
            };
            format!("{name}={a}: cannot listen: {e}{hint}")
        })
    };
    let (grpc, api) = match (bind("grpc-addr", grpc).await, bind("api-addr", api).await) {
        (Ok(g), Ok(a)) => (g, a),
        (Err(e), _) | (_, Err(e)) => {
            // The same shape as a bad setting's line; exit 1: the setting is valid, the
            // address is taken.
            eprintln!("weft: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match weft::start(cfg, grpc, api) {
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

async fn token(command: TokenCommand, server: &str, auth: &Credentials) -> ExitCode {
    use http::Method;
    let api = match client(server, auth) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft token: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
            // Time left, as `weft get proxies` shows a certificate's, not epoch seconds.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            println!(
                "{:<18} {:<32} {:<12} REVOKED",
                "ID", "WORKLOAD", "EXPIRES IN"
            );
            for t in doc["items"].as_array().into_iter().flatten() {
                let expires = t["expiresAt"]
                    .as_i64()
                    .map_or_else(|| "-".to_string(), |at| weft::cli::get::remaining(at - now));
                println!(
                    "{:<18} {:<32} {:<12} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["workload"].as_str().unwrap_or_default(),
                    expires,
                    t["revoked"]
                );
            }
        }
    }
    ExitCode::SUCCESS
}

async fn ca(command: CaCommand, server: &str, auth: &Credentials) -> ExitCode {
    use http::Method;
    let api = match client(server, auth) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft ca: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (method, path, body) = match &command {
        CaCommand::Status => (Method::GET, "/api/v1/ca", None),
        CaCommand::Rotate { step, force } => (
            Method::POST,
            "/api/v1/ca/rotate",
            Some(serde_json::json!({
                "step": match step {
                    RotateStep::Prepare => "prepare",
                    RotateStep::Activate => "activate",
                    RotateStep::Retire => "retire",
                },
                "force": force,
            })),
        ),
    };
    let (status, body) = match api.request(method, path, body).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !(200..300).contains(&status) {
        eprintln!("weft: {}", body.trim());
        return ExitCode::FAILURE;
    }
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    println!("source:  {}", str_of(&doc["source"]));
    println!("phase:   {}", str_of(&doc["phase"]));
    println!(
        "issuer:  {}  {}",
        &str_of(&doc["issuer"]["fingerprint"])
            .get(..16)
            .unwrap_or_default(),
        str_of(&doc["issuer"]["subject"])
    );
    for a in doc["trustAnchors"].as_array().into_iter().flatten() {
        println!(
            "anchor:  {}  {}",
            &str_of(&a["fingerprint"]).get(..16).unwrap_or_default(),
            str_of(&a["subject"])
        );
    }
    println!(
        "proxies: {} on the current issuer, {} on another",
        doc["proxies"]["currentIssuer"], doc["proxies"]["otherIssuer"]
    );
    if let Some(next) = doc["next"].as_str() {
        println!("next:    {next}");
    }
    ExitCode::SUCCESS
}
