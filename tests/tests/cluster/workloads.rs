//! Workloads: a Deployment becomes Ready and is reached by Service DNS name and by ClusterIP
//! (from a pod, and from the host through the node), scaling shows in its EndpointSlices, a
//! deleted pod is replaced, a Job runs to completion, and weft's own image runs both binaries
//! as its non-root user.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use weft_tests::{get, http1_client, TestNamespace, TEST_APP_IMAGE, WEFT_IMAGE};

fn echo(replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {TEST_APP_IMAGE}
        imagePullPolicy: Never
        args: [http, --name, echo, --port, "8080"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
"#
    )
}

/// A Job whose one pod GETs `url` (retrying while DNS and endpoints settle) and succeeds on 200.
fn caller(name: &str, url: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 60
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: get
        image: {TEST_APP_IMAGE}
        imagePullPolicy: Never
        args: [get, "{url}", --retry-for, 30s]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_is_reached_by_service_name_and_cluster_ip() {
    let ns = TestNamespace::new("reach").await;
    ns.apply(&echo(1)).await;
    ns.deployment_available("echo", 1).await;
    let service = ns.api::<Service>().get("echo").await.unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();

    let by_name = format!("http://echo.{}.svc.cluster.local:8080/", ns.name);
    let by_short_name = "http://echo:8080/".to_string();
    let by_ip = format!("http://{cluster_ip}:8080/");
    ns.apply(&caller("by-name", &by_name)).await;
    ns.apply(&caller("by-short-name", &by_short_name)).await;
    ns.apply(&caller("by-ip", &by_ip)).await;
    for job in ["by-name", "by-short-name", "by-ip"] {
        ns.job_complete(job).await;
        let log = ns.kubectl(&["logs", &format!("job/{job}")]).unwrap();
        assert!(
            log.contains("x-app: echo"),
            "job {job} saw another app: {log}"
        );
    }

    // The host reaches the ClusterIP too: it routes the Service range through the node, where
    // kube-proxy's rules send it to the pod.
    let addr = format!("{cluster_ip}:8080").parse().unwrap();
    let reply = get(&http1_client(), addr, "echo", "/").await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-app"), "echo", "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_shows_in_endpoint_slices_and_a_deleted_pod_is_replaced() {
    let ns = TestNamespace::new("scale").await;
    ns.apply(&echo(1)).await;
    ns.deployment_available("echo", 1).await;
    let deployments = ns.api::<Deployment>();
    let scale = |replicas: u32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch(
                    "echo",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                )
                .await
                .unwrap();
        }
    };

    scale(3).await;
    ns.deployment_available("echo", 3).await;
    let three = ns
        .wait("3 ready endpoints", Duration::from_secs(60), || async {
            let e = ns.ready_endpoints("echo").await;
            (e.len() == 3).then_some(e)
        })
        .await;
    let pod_ips: Vec<String> = {
        let mut ips: Vec<String> = ns
            .pods("app=echo")
            .await
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.sort();
        ips
    };
    assert_eq!(three, pod_ips, "the slices name the pods' addresses");

    scale(1).await;
    let one = ns
        .wait("1 ready endpoint", Duration::from_secs(60), || async {
            let e = ns.ready_endpoints("echo").await;
            (e.len() == 1).then_some(e)
        })
        .await;

    // Deleting the last pod: the ReplicaSet replaces it, and the slices follow.
    let pods = ns.pods("app=echo").await;
    let old = pods[0].metadata.name.clone().unwrap();
    ns.api::<Pod>()
        .delete(&old, &DeleteParams::default())
        .await
        .unwrap();
    let replacement = ns
        .wait(
            "a replacement pod, ready",
            Duration::from_secs(60),
            || async {
                let pods = ns.pods("app=echo").await;
                let ready = pods.iter().find(|p| {
                    p.metadata.name.as_deref() != Some(old.as_str())
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                })?;
                ready.status.as_ref()?.pod_ip.clone()
            },
        )
        .await;
    ns.wait(
        "the slices to name the replacement alone",
        Duration::from_secs(60),
        || async { (ns.ready_endpoints("echo").await == [replacement.clone()]).then_some(()) },
    )
    .await;
    assert_ne!(one, [replacement], "a new pod has a new address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_to_completion_and_a_failing_one_is_reported() {
    let ns = TestNamespace::new("job").await;
    // A Job that succeeds without any Service: the API server's own ClusterIP, by name.
    ns.apply(&caller(
        "api-server",
        "http://kubernetes.default.svc.cluster.local:443/",
    ))
    .await;
    // The API server speaks TLS only: a plain HTTP request still gets an HTTP answer (400),
    // which is not 200, so this job must fail and say so.
    let api = ns.api::<k8s_openapi::api::batch::v1::Job>();
    ns.wait(
        "job api-server to fail",
        Duration::from_secs(90),
        || async {
            let s = api.get("api-server").await.ok()?.status?;
            (s.failed.unwrap_or(0) >= 1).then_some(())
        },
    )
    .await;
    let log = ns.kubectl(&["logs", "job/api-server"]).unwrap();
    assert!(
        log.contains("400"),
        "the caller printed the API server's answer: {log}"
    );

    ns.apply(
        &caller(
            "succeeds",
            "http://kubernetes.default.svc.cluster.local:443/",
        )
        .replace(
            "--retry-for, 30s]",
            "--retry-for, 30s, --expect-status, \"400\"]",
        ),
    )
    .await;
    ns.job_complete("succeeds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_image_runs_both_binaries_as_its_non_root_user() {
    let ns = TestNamespace::new("image").await;
    for (job, command) in [("proxy", "weft-proxy"), ("control-plane", "weft")] {
        ns.apply(&format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {job}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      securityContext: {{runAsNonRoot: true}}
      containers:
      - name: version
        image: {WEFT_IMAGE}
        imagePullPolicy: Never
        command: [{command}, --version]
        securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"#
        ))
        .await;
        ns.job_complete(job).await;
        let log = ns.kubectl(&["logs", &format!("job/{job}")]).unwrap();
        assert!(log.starts_with(command), "{job}: {log}");
    }
}
