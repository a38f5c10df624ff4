//! weft: the control plane and CLI. See ARCHITECTURE.md.
//!
//! [`start`] takes already-bound listeners so tests run control planes on port 0 in-process;
//! [`cli`] is the command line, which `main.rs` runs.
//!
//! Its infrastructure is the `weft-runtime` crate (`proxy/runtime/`), which the sidecar is built
//! on too: the accept loops and limits its gRPC and API listeners run on, the tasks a
//! [`Running`] holds, TLS verification and SPIFFE names, tracing, logging, durations,
//! rule-path patterns, `/metrics` exposition and the admin guard. This library does not link
//! the sidecar: `weft-proxy` is linked only for the `weft proxy` entry in `main.rs`, which the
//! demo runs as its sidecars' processes.
//!
//! # Where does X live
//!
//! | what | where |
//! |---|---|
//! | resources: types, parsing (field paths, budgets), validation | `resources.rs`, `resources/{parse,validate}.rs` |
//! | config files: loading, watching (a callback), refusals | `files.rs` |
//! | the config in force, its one writer lock, API writes, the store | `state.rs`, `state/write.rs`, `store.rs` (atomic files: `atomic.rs`) |
//! | resources compiled into a `Mesh`, each proxy's view | `mesh.rs` |
//! | the config stream to proxies | `discovery.rs`, `discovery/peer.rs` |
//! | the CA | `ca.rs`, `ca/{files,generate,sign,rotate}.rs` |
//! | the gRPC listener's TLS and serving certificate | `grpc_tls.rs` |
//! | proofs of identity and `Certify` | `tokens.rs`, `kubernetes.rs`, `identity.rs` |
//! | the REST API and its OpenAPI document | `api.rs`, `api/`, `openapi.rs` (+ `openapi.json`) |
//! | control-plane metrics | `metrics.rs` |
//! | start-up: listeners, tasks, watchers | this file, [`start`] |
//! | the command line, and `weft demo` | `cli.rs`, `cli/`; `demo.rs`, `demo/` |

// Resources and the config in force.
pub mod atomic; // files written whole or not at all, owner-only
pub mod files; // --config files and folders: loading and watching
pub mod mesh; // resources compiled into the mesh, each proxy's view
pub mod resources; // resource types, parsing and validation
pub mod state; // the config in force and its writers
pub mod store; // the API's resources, revision and audit on disk

// Identity.
pub mod ca; // the mesh CA: files, signing, rotation
pub mod identity; // Identity/Certify
pub mod kubernetes; // service-account tokens through TokenReview
pub mod tokens; // join tokens

// Serving.
pub mod api; // the REST API
pub mod discovery; // the config stream to proxies
pub mod grpc_tls; // the gRPC listener's TLS
pub mod metrics; // control-plane metrics
pub mod openapi; // the API's OpenAPI document

// The command line and the demo.
pub mod cli; // `weft`: one file per command
pub mod demo; // `weft demo`: a whole mesh on loopback

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::discovery::{DiscoveryService, Proxies};
use crate::metrics::Metrics;
use crate::state::State;
use weft_runtime::tasks::Tasks;

/// `weft serve` settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub config: Vec<PathBuf>,
    pub data_dir: PathBuf,
    pub trust_domain: String,
    /// How long a proxy may leave a config snapshot unacknowledged before its stream is closed.
    pub ack_timeout: Duration,
    /// Where the CA comes from: `None` for the one weft manages in `DATA_DIR/ca`.
    pub ca: Option<ca::Source>,
    /// The Kubernetes API for service-account tokens; `None`: in-cluster config, or
    /// `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Bearer tokens for API users besides the admin (`TOKEN[,USER]` per line): they manage
    /// resources, not join tokens or the CA.
    pub api_token_file: Option<PathBuf>,
    /// Host names callers reach the API by, besides IP literals, `localhost` and the control
    /// plane's Service names (`--api-host`); a request for any other name is refused.
    pub api_hosts: Vec<String>,
}

/// The default [`ServeConfig::ack_timeout`].
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Running {
    pub grpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub state: Arc<State>,
    pub proxies: Arc<Proxies>,
    pub ca: Arc<ca::Ca>,
    pub tokens: Arc<tokens::Tokens>,
    tasks: Tasks,
}

impl Running {
    pub fn shutdown(&self) {
        self.tasks.shutdown();
    }

    pub async fn shutdown_requested(&self) {
        self.tasks.shutdown_requested().await;
    }

    pub async fn stop(self) {
        self.tasks.shutdown();
        self.tasks.join().await;
    }
}

/// Loads the config and starts serving. Invalid config: every problem, one per line.
pub fn start(
    cfg: ServeConfig,
    grpc: TcpListener,
    api: TcpListener,
) -> Result<Running, Vec<String>> {
    let resources = files::load(&cfg.config)?;
    // Keys, tokens and the store live there: a data dir made here is for the owner only.
    atomic::create_dir(&cfg.data_dir, 0o700)
        .map_err(|e| vec![format!("data-dir {}: {e}", cfg.data_dir.display())])?;
    // The CA is created on first start; `trust-anchors.pem` is written beside it every start.
    let tokens = Arc::new(tokens::Tokens::open(&cfg.data_dir).map_err(|e| vec![e.to_string()])?);
    let ca_source = cfg.ca.clone().unwrap_or(ca::Source::Managed {
        dir: cfg.data_dir.join("ca"),
    });
    let ca = Arc::new(
        ca::Ca::open(&cfg.data_dir, &cfg.trust_domain, ca_source)
            .map_err(|e| vec![format!("certificate authority: {e}")])?,
    );
    let store = store::Store::open(&cfg.data_dir).map_err(|e| vec![e.to_string()])?;
    // After the store, whose lock keeps a second `weft serve` off this data dir.
    let admin_token = api::AdminToken::load_or_create(&cfg.data_dir)
        .map_err(|e| vec![format!("admin token: {e}")])?;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(
        State::open(
            resources,
            Some(store),
            cfg.trust_domain.clone(),
            mesh::Trust::of(&ca),
            metrics.clone(),
        )
        .map_err(|e| vec![e.to_string()])?,
    );
    let serving = grpc_tls::ServingIdentity::new(&ca, &state.mesh().trust_domain)
        .map_err(|e| vec![format!("control plane serving certificate: {e}")])?;
    let api_serving = serving.clone();
    let proxies = Arc::new(Proxies::default());
    let mut tasks = Tasks::default();
    let shutdown = tasks.shutdown_token().clone();
    let local = |l: &TcpListener| l.local_addr().map_err(|e| vec![e.to_string()]);
    let (grpc_addr, api_addr) = (local(&grpc)?, local(&api)?);

    tasks.spawn({
        let (paths, state) = (cfg.config.clone(), state.clone());
        files::watch(
            cfg.config.clone(),
            move || state.reload(&paths),
            shutdown.clone(),
        )
    });

    // A changed CA (rotation step, replaced files) reaches every proxy with the next config.
    tasks.spawn(ca.clone().watch(shutdown.clone()));
    tasks.spawn({
        let (ca, state, stop) = (ca.clone(), state.clone(), shutdown.clone());
        async move {
            let mut changes = ca.subscribe();
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    () = stop.cancelled() => return,
                }
                state.set_trust(mesh::Trust::of(&ca));
            }
        }
    });
    tasks.spawn(
        serving
            .clone()
            .keep_fresh(ca.clone(), state.subscribe(), shutdown.clone()),
    );

    let discovery = DiscoveryService::new(
        state.clone(),
        proxies.clone(),
        shutdown.clone(),
        cfg.ack_timeout,
    )
    .into_server();
    let identity = identity::IdentityService {
        ca: ca.clone(),
        tokens: tokens.clone(),
        state: state.clone(),
        kubernetes: Arc::new(kubernetes::TokenReviewer::new(cfg.kubeconfig.clone())),
    }
    .into_server();
    // The gRPC listener has a cap of its own, apart from the API's: a flood of API
    // connections cannot take the descriptors proxies need for their config streams.
    let grpc_acceptor = serving.grpc_acceptor(ca.clone());
    let routes = tonic::service::Routes::new(discovery).add_service(identity);
    let grpc_listener = weft_runtime::server::Listener {
        name: "grpc",
        limits: weft_runtime::server::Limits::default(),
        grace: Duration::from_secs(5),
        metrics: metrics.listeners.clone(),
    };
    tasks.spawn(weft_runtime::server::accept_loop(
        grpc_listener,
        grpc,
        shutdown.clone(),
        move |conn| grpc_tls::serve(grpc_acceptor.clone(), routes.clone(), conn),
    ));

    let api_svc = Arc::new(api::Api {
        state: state.clone(),
        ca: ca.clone(),
        proxies: proxies.clone(),
        tokens: tokens.clone(),
        shutdown: shutdown.clone(),
        admin_token,
        api_tokens: cfg.api_token_file.clone(),
        hosts: grpc_tls::dns_names()
            .into_iter()
            .chain(cfg.api_hosts.iter().cloned())
            .collect(),
    });
    let api_ca = ca.clone();
    let api_listener = weft_runtime::server::Listener {
        name: "api",
        limits: weft_runtime::server::Limits::operator(),
        grace: Duration::from_secs(5),
        metrics: metrics.listeners.clone(),
    };
    tasks.spawn(weft_runtime::server::accept_loop(
        api_listener,
        api,
        shutdown.clone(),
        move |conn| api::serve(api_svc.clone(), api_serving.clone(), api_ca.clone(), conn),
    ));

    Ok(Running {
        grpc_addr,
        api_addr,
        state,
        proxies,
        ca,
        tokens,
        tasks,
    })
}
