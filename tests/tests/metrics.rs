//! Every metrics endpoint's output passes `promtool check metrics` (the Prometheus project's own
//! linter; `apt-get install prometheus`), and the counters match the traffic sent.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_tests::apps::HttpApp;
use weft_tests::*;

/// Runs `promtool check metrics` on `text`; returns its complaints, if any.
fn promtool(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed: apt-get install prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let r = get(&http1_client(), addr, "admin", path).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scrape_passes_promtool_and_counts_the_traffic() {
    let app = HttpApp::start("orders").await;
    let (mesh, client, server) = pair("HTTP", app.addr).await;
    let http = http1_client();
    for _ in 0..7 {
        assert_eq!(
            get(&http, client.upstreams[0], "orders", "/")
                .await
                .unwrap()
                .status,
            200
        );
    }
    for _ in 0..3 {
        let r = get(&http, client.upstreams[0], "orders", "/status/503")
            .await
            .unwrap();
        assert_eq!(r.status, 503);
    }
    let r = get(&http, client.outbound, "nothing.shop", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // Requests are counted as their responses end: wait for all 11 on the client, 10 inbound.
    let counted = |text: &str, direction: &str| {
        metric(
            text,
            "weft_proxy_requests_total",
            &[&format!("direction=\"{direction}\"")],
        )
    };
    eventually("every request counted", Duration::from_secs(5), || async {
        let c = scrape(client.admin, "/metrics").await;
        let s = scrape(server.admin, "/metrics").await;
        (counted(&c, "outbound") == 11.0 && counted(&s, "inbound") == 10.0).then_some(())
    })
    .await;
    let client_text = scrape(client.admin, "/metrics").await;
    let server_text = scrape(server.admin, "/metrics").await;
    let cp_text = scrape(mesh.api_addr, "/admin/metrics").await;
    for (who, text) in [
        ("client proxy", &client_text),
        ("server proxy", &server_text),
        ("control plane", &cp_text),
    ] {
        promtool(text).unwrap_or_else(|e| panic!("{who}: promtool: {e}\n{text}"));
    }

    let out = |class: &str| {
        metric(
            &client_text,
            "weft_proxy_requests_total",
            &[
                "direction=\"outbound\"",
                "service=\"orders.shop\"",
                "route=\"default\"",
                "peer=\"spiffe://weft.local/ns/shop/sa/orders\"",
                &format!("status_class=\"{class}\""),
            ],
        )
    };
    assert_eq!((out("2xx"), out("5xx")), (7.0, 3.0), "{client_text}");
    assert_eq!(
        metric(
            &client_text,
            "weft_proxy_requests_total",
            &["error=\"no-route\""]
        ),
        1.0
    );
    let inbound = metric(
        &server_text,
        "weft_proxy_requests_total",
        &[
            "direction=\"inbound\"",
            "peer=\"spiffe://weft.local/ns/shop/sa/frontend\"",
        ],
    );
    assert_eq!(inbound, 10.0, "{server_text}");
    assert_eq!(
        metric(&cp_text, "weft_certificates_total", &["outcome=\"issued\""]),
        2.0,
        "{cp_text}"
    );
    assert!(metric(&cp_text, "weft_config_push_duration_seconds_count", &[]) >= 2.0);
    assert_eq!(metric(&cp_text, "weft_proxies_connected", &[]), 2.0);
}
