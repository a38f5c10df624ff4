//! `weft serve`: its flags, checked all at once, the listeners bound, then the control plane
//! ([`crate::start`]) until SIGTERM or Ctrl-C. What the control plane does is the rest of the
//! crate; this file only turns the command line into a [`crate::ServeConfig`] and two sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::client::DEFAULT_DATA_DIR;
use super::Error;

#[derive(clap::Args)]
pub struct Args {
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
}

impl Args {
    /// Serves until a signal or an API shutdown request; `data_dir` is `--data-dir`.
    pub async fn run(self, data_dir: Option<PathBuf>) -> Result<(), Error> {
        let ca = self
            .ca_cert
            .zip(self.ca_key)
            .map(|(cert, key)| crate::ca::Source::Files {
                cert,
                key,
                roots: self.ca_roots,
            });
        let cfg = crate::ServeConfig {
            config: self.config,
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            trust_domain: self.trust_domain,
            ack_timeout: crate::DEFAULT_ACK_TIMEOUT,
            ca,
            kubeconfig: self.kubeconfig,
            api_token_file: self.api_token_file,
            api_hosts: self.api_hosts,
        };
        serve(cfg, &self.grpc_addr, &self.api_addr).await
    }
}

async fn serve(cfg: crate::ServeConfig, grpc_addr: &str, api_addr: &str) -> Result<(), Error> {
    weft_runtime::server::raise_fd_limit();
    let mut errors = Vec::new();
    let mut addr = |name: &str, v: &str| -> Option<SocketAddr> {
        v.parse()
            .map_err(|e| errors.push(format!("{name}={v:?}: {e} (expected IP:PORT)")))
            .ok()
    };
    let (grpc, api) = (addr("grpc-addr", grpc_addr), addr("api-addr", api_addr));
    for host in &cfg.api_hosts {
        let name = host.trim_end_matches('.');
        let label_ok = |l: &str| crate::resources::is_dns_label(&l.to_ascii_lowercase());
        if name.is_empty() || !name.split('.').all(label_ok) {
            errors.push(format!(
                "api-host={host:?}: expected a host name, without a port (e.g. cp.example.com)"
            ));
        }
    }
    let (Some(grpc), Some(api), true) = (grpc, api, errors.is_empty()) else {
        return Err(Error::Settings(errors));
    };
    let bind = |name: &'static str, a: SocketAddr| async move {
        tokio::net::TcpListener::bind(a).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(" (is another `weft serve` running? choose another --{name})")
            } else {
                String::new()
            };
            // The same shape as a bad setting's line; exit 1: the setting is valid, the
            // address is taken.
            Error::failed("weft", format!("{name}={a}: cannot listen: {e}{hint}"))
        })
    };
    let (grpc, api) = (bind("grpc-addr", grpc).await?, bind("api-addr", api).await?);
    let running = crate::start(cfg, grpc, api).map_err(Error::Settings)?;
    tracing::info!(grpc = %running.grpc_addr, api = %running.api_addr, "weft control plane serving");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::failed("weft", format!("cannot watch for SIGTERM: {e}")))?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        () = running.shutdown_requested() => {}
    }
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .ok();
    Ok(())
}
