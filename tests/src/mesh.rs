//! A control plane in this process, watching one config file in a temp folder: [`Mesh`], made
//! with [`Mesh::builder`], and what a proxy needs to join it ([`Access`]). Proxies are
//! [`crate::sidecar`]'s; a control plane as a process of its own is [`crate::process`]'s.

use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::data_dirs::remember_data_dir;
use crate::eventually::eventually;
use crate::temp_dir::TempDir;

/// The harness's log filter (`warn`, unless `WEFT_LOG` says otherwise); set once, by the first
/// control plane started.
pub fn init_logging() {
    weft_runtime::logging::init_with_default("warn");
}

/// How to start a [`Mesh`]: every setting has the value `weft serve` would give it, except the
/// listeners (port 0 on loopback) and the folders (a fresh temp folder).
#[derive(Clone, Debug)]
#[must_use = "a mesh starts with .start()"]
pub struct MeshBuilder {
    config: String,
    trust_domain: String,
    ack_timeout: Duration,
    ca: Option<weft::ca::Source>,
}

impl MeshBuilder {
    /// The config file's text (empty unless given).
    pub fn config(mut self, yaml: impl Into<String>) -> Self {
        self.config = yaml.into();
        self
    }

    /// `--trust-domain` (`weft.local` unless given).
    pub fn trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = trust_domain.into();
        self
    }

    /// `--ack-timeout`: streams whose ACK is overdue this long are closed.
    pub fn ack_timeout(mut self, ack_timeout: Duration) -> Self {
        self.ack_timeout = ack_timeout;
        self
    }

    /// Signs with a CA from files (`--ca-cert`/`--ca-key`) instead of one generated in the
    /// data dir.
    pub fn ca(mut self, ca: weft::ca::Source) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Writes the config file, binds both listeners and starts the control plane.
    pub async fn start(self) -> Mesh {
        init_logging();
        let dir = TempDir::new();
        let config = dir.0.join("mesh.yaml");
        std::fs::write(&config, &self.config).expect("write config");
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (grpc_addr, api_addr) = (grpc.local_addr().unwrap(), api.local_addr().unwrap());
        let mut mesh = Mesh {
            dir,
            config,
            grpc_addr,
            api_addr,
            settings: self,
            running: None,
        };
        mesh.running = Some(weft::start(mesh.serve_config(), grpc, api).expect("config accepted"));
        remember_data_dir(api_addr, mesh.data_dir());
        mesh
    }
}

/// A control plane watching one config file.
pub struct Mesh {
    pub dir: TempDir,
    pub config: PathBuf,
    pub grpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// What it was started with, to start it again the same way.
    settings: MeshBuilder,
    running: Option<weft::Running>,
}

impl Mesh {
    /// A control plane to start, with an empty config file unless told otherwise.
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            config: String::new(),
            trust_domain: "weft.local".into(),
            ack_timeout: weft::DEFAULT_ACK_TIMEOUT,
            ca: None,
        }
    }

    fn serve_config(&self) -> weft::ServeConfig {
        weft::ServeConfig {
            config: vec![self.config.clone()],
            data_dir: self.data_dir(),
            trust_domain: self.settings.trust_domain.clone(),
            ack_timeout: self.settings.ack_timeout,
            ca: self.settings.ca.clone(),
            kubeconfig: Some(self.dir.0.join("kubeconfig")),
            api_token_file: None,
            api_hosts: Vec::new(),
        }
    }

    /// `--data-dir`: the store, the CA, the admin token.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// The admin token (`DATA_DIR/admin-token`).
    pub fn admin_token(&self) -> String {
        weft::cli::client::read_admin_token(&self.data_dir()).expect("admin token")
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// The roots proxies start with (`DATA_DIR/trust-anchors.pem`).
    pub fn anchors(&self) -> PathBuf {
        self.dir.0.join("data/trust-anchors.pem")
    }

    /// What a proxy for workload `namespace/service_account` needs to join: the URL, the trust
    /// anchors, and a fresh join token (valid for an hour).
    pub fn access(&self, namespace: &str, service_account: &str) -> Access {
        let tokens = &self.running().tokens;
        let workload = format!("{namespace}/{service_account}")
            .parse()
            .expect("workload");
        let (_, token) = tokens
            .create(workload, Duration::from_secs(3600))
            .expect("join token");
        self.access_with_token(&token)
    }

    /// Like [`Mesh::access`], with a given token.
    pub fn access_with_token(&self, token: &str) -> Access {
        Access {
            url: self.url(),
            anchors: self.anchors(),
            token: token.to_string(),
            token_file: None,
        }
    }

    /// `Certify`, as a proxy asks for its certificate: `csr` (see [`csr`]) with `proof`.
    pub async fn certify(
        &self,
        csr: Vec<u8>,
        proof: weft_proto::identity::certify_request::Proof,
    ) -> Result<weft_proto::identity::CertifyResponse, tonic::Status> {
        weft_proto::identity::identity_client::IdentityClient::new(self.channel())
            .certify(weft_proto::identity::CertifyRequest {
                csr,
                proof: Some(proof),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A gRPC channel to the control plane, over TLS verified as a proxy verifies it.
    pub fn channel(&self) -> tonic::transport::Channel {
        let anchors = std::fs::read_to_string(self.anchors()).expect("trust anchors");
        let control = weft_proxy::control::ControlPlane::new(
            self.url(),
            anchors,
            self.settings.trust_domain.clone(),
        )
        .expect("anchors");
        Arc::new(control).channel(true).expect("channel")
    }

    /// A gRPC channel to the control plane that presents a fresh certificate for workload
    /// `namespace/service_account` (signed by the mesh's CA, as `Certify` would), as a proxy does
    /// once it has one. Returns the channel and the certificate.
    pub fn channel_as(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> (tonic::transport::Channel, weft::ca::Issued) {
        let id = self.state().mesh().identity(namespace, service_account);
        let (key, csr) = weft_runtime::tls::key_and_csr(&id).expect("key and CSR");
        let issued = self
            .running()
            .ca
            .sign(csr.der(), &id, Duration::from_secs(3600))
            .expect("signed");
        (
            self.channel_presenting(&issued.chain_pem, &key.serialize_pem()),
            issued,
        )
    }

    /// A gRPC channel to the control plane that presents `chain_pem` with `key_pem`.
    pub fn channel_presenting(&self, chain_pem: &str, key_pem: &str) -> tonic::transport::Channel {
        let anchors = std::fs::read_to_string(self.anchors()).expect("trust anchors");
        let anchors = Arc::new(weft_runtime::tls::parse_anchors(&anchors).expect("anchors"));
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .expect("a key in the PEM");
        let mut config = weft_runtime::control_channel::verifying(
            anchors,
            &self.running().state.mesh().trust_domain,
        )
        .expect("TLS config")
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
            let config = config.clone();
            async move {
                weft_runtime::control_channel::connect_tls(&uri, config)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        });
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("URL")
            .connect_with_connector_lazy(connector)
    }

    pub fn running(&self) -> &weft::Running {
        self.running.as_ref().expect("control plane running")
    }

    pub fn state(&self) -> &weft::state::State {
        &self.running().state
    }

    pub fn generation(&self) -> u64 {
        self.state().mesh().generation
    }

    /// Replaces the config file atomically (write, then rename), as editors and ConfigMaps do.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.0.join(".mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Stops the control plane (its listeners close; proxies lose their streams).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Starts it again on the same addresses, from the config file as it is now.
    pub async fn restart(&mut self) {
        self.stop().await;
        let grpc = bind_again(self.grpc_addr).await;
        let api = bind_again(self.api_addr).await;
        self.running = Some(weft::start(self.serve_config(), grpc, api).expect("config accepted"));
    }

    /// Proxies connected now, as the control plane reports them.
    pub fn proxies(&self) -> Vec<weft::discovery::ProxyStatus> {
        self.running
            .as_ref()
            .map(|r| r.proxies.list())
            .unwrap_or_default()
    }
}

async fn bind_again(addr: SocketAddr) -> TcpListener {
    eventually(
        &format!("{addr} to be free again"),
        Duration::from_secs(5),
        || async { TcpListener::bind(addr).await.ok() },
    )
    .await
}

/// How a proxy reaches and joins a control plane.
#[derive(Clone, Debug)]
pub struct Access {
    pub url: String,
    pub anchors: PathBuf,
    /// A join token, used unless `token_file` is set.
    pub token: String,
    /// A Kubernetes service-account token file, as mounted in a pod.
    pub token_file: Option<PathBuf>,
}

/// YAML for a Service whose endpoints are the given proxies' inbound listeners.
/// A CSR for `san`, made the way a proxy makes it: the key never leaves this function.
pub fn csr(san: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().expect("a URI SAN"))];
    params
        .serialize_request(&key)
        .expect("a CSR")
        .der()
        .to_vec()
}

pub fn service_yaml(ns: &str, name: &str, protocol: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{address: \"{e}\"}}"))
        .collect();
    format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: main, port: 8080, protocol: {protocol}}}]\n  endpoints: [{}]\n",
        eps.join(", ")
    )
}
