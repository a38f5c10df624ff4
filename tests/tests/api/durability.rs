//! `weft serve` as a process: acknowledged writes survive a clean restart and `kill -9`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use weft_tests::*;

use crate::{samples, version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_restart_and_kill_9() {
    let dir = TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let serve = ServeProcess::builder()
        .args(&["--data-dir", data])
        .start()
        .await;
    let api = serve.api_addr;
    let token = admin_token(api).unwrap();

    // One writer creating a Service per request, noting each one acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = tokio::spawn({
        let acked = acked.clone();
        async move {
            let auth = format!("Bearer {token}");
            for i in 0.. {
                let mut svc = samples()[0].3.clone();
                let name = format!("svc-{i}");
                svc["metadata"]["name"] = json!(name);
                let req = http::Request::put(format!("http://{api}/api/v1/services/shop/{name}"))
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        svc.to_string(),
                    )))
                    .unwrap();
                match http1_client().request(req).await {
                    Ok(r) if r.status() == 201 => acked.lock().unwrap().push(name),
                    Ok(r) => panic!("write {i}: {}", r.status()),
                    Err(_) => return, // the control plane is gone
                }
            }
        }
    });
    eventually(
        "40 acknowledged writes",
        Duration::from_secs(20),
        || async { (acked.lock().unwrap().len() >= 40).then_some(()) },
    )
    .await;
    // Killed while the writer is still writing.
    serve.kill9().await;
    writer.await.unwrap();
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();

    let stored = |api| async move {
        let (status, list) = api_call(api, "GET", "/api/v1/services", "").await;
        assert_eq!(status, 200);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect::<HashSet<String>>()
    };
    let serve = ServeProcess::builder()
        .args(&["--data-dir", data])
        .start()
        .await;
    let after_kill = stored(serve.api_addr).await;
    let lost: Vec<_> = acked.difference(&after_kill).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );
    assert!(
        after_kill.len() <= acked.len() + 1,
        "at most the one unacknowledged write in flight may have landed"
    );

    // A clean restart keeps everything too, and versions keep growing.
    let (_, audit) = api_call(serve.api_addr, "GET", "/api/v1/audit?limit=1", "").await;
    let last_seq = audit["items"][0]["seq"].as_u64().unwrap();
    serve.terminate().await;
    let serve = ServeProcess::builder()
        .args(&["--data-dir", data])
        .start()
        .await;
    assert_eq!(stored(serve.api_addr).await, after_kill);
    let (status, body) = api_call(
        serve.api_addr,
        "PUT",
        "/api/v1/services/shop/after-restart",
        &samples()[0]
            .3
            .to_string()
            .replace("\"pay\"", "\"after-restart\""),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(version(&body) > after_kill.len() as u64);
    let (_, audit) = api_call(serve.api_addr, "GET", "/api/v1/audit?limit=1", "").await;
    assert_eq!(audit["items"][0]["seq"].as_u64().unwrap(), last_seq + 1);
    serve.terminate().await;
}
