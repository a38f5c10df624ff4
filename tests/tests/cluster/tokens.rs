//! Service-account tokens through the real API server: a token the kubelet projected into a pod
//! with audience `weft` passes a real TokenReview and entitles the pod's own identity only; the
//! pod's default token (the API server's audience) does not. The control plane runs in this
//! process and reviews tokens as a service account of its own, bound to
//! `system:auth-delegator` (least privilege: it may create TokenReviews, nothing else).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use weft_proto::identity::certify_request::Proof;
use weft_tests::{csr, Cluster, Mesh, TestNamespace, TEST_APP_IMAGE};

async fn certify(mesh: &Mesh, san: &str, token: &str) -> Result<String, tonic::Status> {
    mesh.certify(csr(san), Proof::ServiceAccountToken(token.to_string()))
        .await
        .map(|r| r.certificate_chain)
}

/// A kubeconfig for the in-process control plane: the cluster's API server and CA, and the
/// token of service account `weft-control-plane` in `ns`.
fn control_plane_kubeconfig(ns: &TestNamespace, token: &str) -> String {
    let admin = kube::config::Kubeconfig::read_from(&Cluster::get().kubeconfig).unwrap();
    let cluster = admin.clusters[0].cluster.as_ref().unwrap();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority-data: {}}}\nusers:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {}}}\ncurrent-context: c\n",
        cluster.server.as_ref().unwrap(),
        cluster.certificate_authority_data.as_ref().unwrap(),
        ns.name,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projected_token_with_audience_weft_passes_a_real_token_review() {
    let ns = TestNamespace::new("tokens").await;
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: weft-control-plane}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {ns}-token-reviewer}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}}
subjects: [{{kind: ServiceAccount, name: weft-control-plane, namespace: {ns}}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: orders}}
---
apiVersion: v1
kind: Pod
metadata: {{name: orders}}
spec:
  serviceAccountName: orders
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {TEST_APP_IMAGE}
    imagePullPolicy: Never
    args: [sleep]
    volumeMounts: [{{name: weft-token, mountPath: /var/run/secrets/weft, readOnly: true}}]
  volumes:
  - name: weft-token
    projected:
      sources: [{{serviceAccountToken: {{audience: weft, expirationSeconds: 600, path: token}}}}]
"#,
        ns = ns.name
    ))
    .await;
    let pods = ns.api::<Pod>();
    ns.wait("pod orders to run", Duration::from_secs(60), || async {
        let phase = pods.get("orders").await.ok()?.status?.phase?;
        (phase == "Running").then_some(())
    })
    .await;
    // Read through the kubelet (exec), as a user debugging the pod would.
    let read = |path: &'static str| {
        let ns = &ns;
        async move {
            ns.wait(
                &format!("{path} in pod orders"),
                Duration::from_secs(30),
                || async {
                    ns.kubectl(&["exec", "orders", "--", "weft-test-app", "cat", path])
                        .ok()
                        .filter(|t| !t.trim().is_empty())
                },
            )
            .await
        }
    };
    let weft_token = read("/var/run/secrets/weft/token").await;
    let default_token = read("/var/run/secrets/kubernetes.io/serviceaccount/token").await;

    let mesh = Mesh::builder().start().await;
    let reviewer_token = ns
        .kubectl(&["create", "token", "weft-control-plane", "--duration", "10m"])
        .unwrap();
    std::fs::write(
        mesh.dir.0.join("kubeconfig"),
        control_plane_kubeconfig(&ns, reviewer_token.trim()),
    )
    .unwrap();

    let orders = format!("spiffe://weft.local/ns/{}/sa/orders", ns.name);
    let chain = certify(&mesh, &orders, weft_token.trim()).await.unwrap();
    assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"), "{chain}");

    // The same token asking for another identity of the namespace.
    let payments = format!("spiffe://weft.local/ns/{}/sa/payments", ns.name);
    let err = certify(&mesh, &payments, weft_token.trim())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // The pod's default token is for the API server, not for weft.
    let err = certify(&mesh, &orders, default_token.trim())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("audience"), "{}", err.message());
}
