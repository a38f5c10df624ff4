//! The API server's admission chain calls a mutating webhook of the test's own (an HTTPS server
//! in this process, on loopback, with a certificate the webhook configuration's caBundle
//! names) when a pod is created, and the JSON patch it answers is applied to the stored pod —
//! what sidecar injection relies on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use weft_tests::{TestNamespace, TEST_APP_IMAGE};

/// What the webhook was asked: (namespace, kind, operation) per review.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// The answer to one AdmissionReview: allowed, with a JSON patch that annotates the pod.
fn review(body: &[u8], seen: &Seen) -> Value {
    let review: Value = serde_json::from_slice(body).unwrap_or_default();
    let request = &review["request"];
    seen.lock().unwrap().push((
        request["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        request["kind"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        request["operation"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ));
    let patch = if request["object"]["metadata"]["annotations"].is_object() {
        json!([{"op": "add", "path": "/metadata/annotations/weft-tests~1mutated", "value": "true"}])
    } else {
        json!([{"op": "add", "path": "/metadata/annotations", "value": {"weft-tests/mutated": "true"}}])
    };
    // AdmissionReview carries the patch as base64: k8s-openapi's ByteString serializes so.
    let patch =
        serde_json::to_value(k8s_openapi::ByteString(patch.to_string().into_bytes())).unwrap();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": request["uid"], "allowed": true, "patchType": "JSONPatch", "patch": patch}
    })
}

/// Serves the webhook over TLS on 127.0.0.1 (the API server runs on this host); returns its
/// port and the CA bundle (its self-signed certificate) for the configuration.
async fn serve(seen: Seen) -> (u16, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let answer = review(&body, &seen).to_string();
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, cert.pem())
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": TEST_APP_IMAGE, "imagePullPolicy": "Never", "args": ["sleep"]}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutating_webhook_is_called_for_a_pod_create_and_its_patch_applied() {
    let ns = TestNamespace::new("webhook").await;
    let seen = Seen::default();
    let (port, ca) = serve(seen.clone()).await;
    let ca_bundle = serde_json::to_value(k8s_openapi::ByteString(ca.into_bytes())).unwrap();
    ns.apply(&format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: {ns}}}
webhooks:
- name: mutate.weft-tests.weft.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 5
  clientConfig: {{url: "https://127.0.0.1:{port}/mutate", caBundle: {ca_bundle}}}
  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
  rules:
  - {{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods], scope: Namespaced}}
"#,
        ns = ns.name
    ))
    .await;

    // The API server picks up webhook configurations from a watch: wait until a dry-run create
    // (webhooks with no side effects see those too) comes back mutated.
    let pods = ns.api::<Pod>();
    ns.wait(
        "the webhook to take effect",
        Duration::from_secs(30),
        || async {
            let dry = pods
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &pod("probe"),
                )
                .await
                .ok()?;
            dry.metadata
                .annotations?
                .contains_key("weft-tests/mutated")
                .then_some(())
        },
    )
    .await;

    let created = pods
        .create(&PostParams::default(), &pod("mutated"))
        .await
        .unwrap();
    let annotations = created.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("weft-tests/mutated").map(String::as_str),
        Some("true")
    );
    {
        let seen = seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(
            last,
            &(ns.name.clone(), "Pod".into(), "CREATE".into()),
            "{seen:?}"
        );
    }
    // The stored pod carries the patch and runs.
    ns.wait("pod mutated to run", Duration::from_secs(60), || async {
        let p = pods.get("mutated").await.ok()?;
        let phase = p.status?.phase?;
        (phase == "Running" && p.metadata.annotations?.contains_key("weft-tests/mutated"))
            .then_some(())
    })
    .await;
}
