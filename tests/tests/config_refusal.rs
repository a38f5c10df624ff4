//! A refused `--config` file is shown to the operator until it is fixed: in `GET /admin/config`
//! (`refusedFiles`, each file with every problem of every document), on `weft get`'s stderr,
//! and, once fixed, in the control plane's log (naming the file).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_tests::*;

/// What the in-process control plane logs, kept for the test to read.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const ORDERS: &str = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 8080}]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_file_is_shown_until_it_is_fixed_then_logged_as_accepted() {
    let log = Log::default();
    tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init()
        .unwrap();
    let mesh = Mesh::builder().config(ORDERS).start().await;
    let api = mesh.api_addr;
    let file = mesh.config.display().to_string();

    // Document 2 does not parse (a port that is not a number), document 3 parses but does not
    // validate (port 0): both are listed, in one refusal.
    let payments = ORDERS.replace("orders", "payments");
    let inventory = ORDERS.replace("orders", "inventory");
    let bad = format!(
        "{ORDERS}---\n{}---\n{}",
        payments.replace("8080", "eighty"),
        inventory.replace("8080", "0")
    );
    // Written again until it is seen: the watcher may not be watching yet right after start.
    let refused = eventually("the file to be refused", Duration::from_secs(5), || async {
        mesh.write_config(&bad);
        let (_, config) = api_call(api, "GET", "/admin/config", "").await;
        let files = config["refusedFiles"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (!files.is_empty()).then_some(files)
    })
    .await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["file"], file.as_str(), "{refused:?}");
    let problems: Vec<&str> = refused[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!(
            "{file}: document 2 (Service/shop/payments): spec.ports[0].port"
        )),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with(&format!(
            "{file}: document 3 (Service/shop/inventory): spec.ports[0].port"
        )),
        "{problems:?}"
    );
    // `lastRefusal` stays what it was: every problem, one line each.
    let (_, config) = api_call(api, "GET", "/admin/config", "").await;
    assert_eq!(
        config["lastRefusal"].as_array().unwrap().len(),
        2,
        "{config}"
    );

    // `weft get`: the config in force on stdout, the refused file and its problems on stderr.
    let url = format!("http://{api}");
    let (code, out, err) = run_weft(None, &["get", "services", "--server", &url], "").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("orders") && !out.contains("payments"), "{out}");
    assert!(
        err.contains("refuses 1 config file") && err.contains(&format!("  {file}:")),
        "{err}"
    );
    assert!(
        err.contains("document 2 (Service/shop/payments)")
            && err.contains("document 3 (Service/shop/inventory)"),
        "{err}"
    );

    // Fixed: in force, the log says the file is accepted (naming it), and nothing is shown.
    mesh.write_config(&format!("{ORDERS}---\n{payments}---\n{inventory}"));
    eventually(
        "the fixed file in force",
        Duration::from_secs(5),
        || async { (mesh.state().mesh().resources.len() == 3).then_some(()) },
    )
    .await;
    eventually("the acceptance logged", Duration::from_secs(5), || async {
        log.text()
            .lines()
            .any(|l| l.contains("INFO") && l.contains("config file accepted") && l.contains(&file))
            .then_some(())
    })
    .await;
    let (_, config) = api_call(api, "GET", "/admin/config", "").await;
    assert_eq!(config["refusedFiles"], serde_json::json!([]), "{config}");
    assert_eq!(config["lastRefusal"], serde_json::json!([]), "{config}");
    let (code, _, err) = run_weft(None, &["get", "services", "--server", &url], "").await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("refuses"), "{err}");
}
