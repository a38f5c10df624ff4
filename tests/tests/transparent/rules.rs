//! `weft-proxy init` in a running mesh: twice, uninstalled, with skipped ports and CIDRs.

use std::time::Duration;

use weft_tests::*;

use crate::world::*;

/// `init` twice gives the same rules; `init --uninstall` leaves none of weft's, and the pod's
/// traffic flows directly again (IPv4 and IPv6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_twice_is_the_same_and_uninstall_lets_the_pods_traffic_flow_directly() {
    let p = pods("").await;
    let before = (p.a.nat_rules(false), p.a.nat_rules(true));
    assert!(before.0.contains("-A OUTPUT -j WEFT_OUTPUT") && before.1.contains("WEFT_OUTPUT"));
    p.a.init(&[]);
    assert_eq!(
        (p.a.nat_rules(false), p.a.nat_rules(true)),
        before,
        "no duplicates"
    );

    p.a.init(&["--uninstall"]);
    for v6 in [false, true] {
        let rules = p.a.nat_rules(v6);
        assert!(!rules.contains("WEFT"), "{rules}");
    }
    // To b's pod IP: now plaintext, straight from the app, so b's strict proxy refuses it.
    let (b, client) = (p.b.addr(8080), http1_client());
    let direct =
        p.a.run(async move { get(&client, b, "b", "/").await })
            .await;
    assert!(direct.is_err(), "{direct:?}");
    let u6 = p.u.addr6(8080).to_string();
    let rsp = get_from(&p.a, false, &u6, "u").await;
    assert_eq!(rsp.header("x-app"), "u");
    let a = p.a.metrics().await;
    assert_eq!(
        metric(&a, "weft_proxy_redirected_connections_total", &[]),
        0.0,
        "nothing reached a's proxy: {a}"
    );
}

/// `--skip-outbound-ports`, `--skip-outbound-cidrs` and `--skip-inbound-ports` are honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_ports_and_cidrs_are_not_redirected() {
    let p = pods("").await;
    let (u, b) = (p.u.addr(8080), p.b.addr(8080));
    p.a.init(&["--uninstall"]);
    p.a.init(&["--skip-outbound-ports", "8080"]);
    let client = http1_client();
    let direct =
        p.a.run(async move { get(&client, b, "b", "/").await })
            .await;
    assert!(
        direct.is_err(),
        "port 8080 skipped: plaintext to b, refused: {direct:?}"
    );

    p.a.init(&["--uninstall"]);
    p.a.init(&["--skip-outbound-cidrs", &format!("{}/32", p.u.ip)]);
    let rsp = get_from(&p.a, false, &u.to_string(), "u").await;
    assert_eq!(rsp.header("x-app"), "u");
    let rsp = get_from(&p.a, false, &b.to_string(), "b.shop").await;
    assert_eq!(
        rsp.header("x-seen-identity"),
        CALLER,
        "other destinations still redirected"
    );
    let a = p.a.metrics().await;
    let passthrough = ["destination=\"passthrough\""];
    assert_eq!(
        metric(&a, "weft_proxy_redirected_connections_total", &passthrough),
        0.0
    );

    // b skips its inbound port 8080: plaintext from outside reaches its app even under strict.
    p.b.init(&["--uninstall"]);
    p.b.init(&["--skip-inbound-ports", "8080"]);
    let rsp = get_from(&p.u, false, &b.to_string(), "b").await;
    assert_eq!((rsp.status, rsp.header("x-app")), (200, "b"));
    drop((p.b2, p.s1, p.s2));
}

/// A proxy run under another UID than `init`'s `--proxy-uid` has its own connections redirected
/// back into it: it says so and refuses them, instead of opening connections without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_under_the_wrong_uid_refuses_its_own_redirected_traffic() {
    let mut node = Node::create();
    let cp = node.control_plane(MESH_A).await;
    let mut k = node.pod("k");
    k.init(&["--proxy-uid", "2103", "--proxy-gid", "2103"]);
    k.start_proxy(&cp, "shop", "a", "a").await;
    eventually(
        "the proxy to say its traffic loops",
        Duration::from_secs(10),
        || async {
            k.proxy_log()
                .contains("redirected back into it")
                .then_some(())
        },
    )
    .await;
    let loops = |m: &str| {
        let labels = ["destination=\"loop\""];
        metric(m, "weft_proxy_redirected_connections_total", &labels)
    };
    // Refused, not multiplied: it retries its control plane with backoff, each try one refused
    // connection, and holds no pile of connections to itself.
    let m = eventually("a second try", Duration::from_secs(10), || async {
        let m = k.metrics().await;
        (loops(&m) >= 2.0).then_some(m)
    })
    .await;
    let open = metric(
        &m,
        "weft_proxy_listener_connections_open",
        &["listener=\"outbound\""],
    );
    assert!(
        open < 5.0,
        "{open} connections open on the outbound listener\n{m}"
    );
    let (status, body) = k.admin("/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
}

/// Service `a` alone.
const MESH_A: &str = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec: {ports: [{port: 80}]}\n";
