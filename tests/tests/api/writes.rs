//! Writes through the API: every kind created, read, updated and deleted, exactly one of two
//! concurrent writers with one version winning, a file shadowing a stored resource, a dry run.

use std::time::Duration;

use serde_json::json;
use weft_tests::*;

use crate::{samples, version, FILE_SERVICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_update_delete_every_kind() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    for (plural, ns, name, created, updated) in samples() {
        let path = format!("/api/v1/{plural}/{ns}/{name}");
        let id = format!("{}/{ns}/{name}", created["kind"].as_str().unwrap());

        let (status, body) = api_call(api, "PUT", &path, &created.to_string()).await;
        assert_eq!(status, 201, "PUT {path}: {body}");
        let v1 = version(&body);
        let (status, read) = api_call(api, "GET", &path, "").await;
        assert_eq!(status, 200);
        assert_eq!(read, body, "GET answers what PUT stored");
        assert_eq!(read["spec"], body["spec"]);
        let in_force = mesh.state().mesh();
        let stored = in_force
            .resources
            .iter()
            .find(|s| s.resource.id() == id)
            .unwrap_or_else(|| panic!("{id} in force"));
        assert_eq!(stored.source, "api");

        // An update with the version read: accepted, with a higher version.
        let mut update = updated.clone();
        update["metadata"]["resourceVersion"] = json!(v1.to_string());
        let (status, body) = api_call(api, "PUT", &path, &update.to_string()).await;
        assert_eq!(status, 200, "update {path}: {body}");
        let v2 = version(&body);
        assert!(v2 > v1);
        assert_eq!(
            body["spec"],
            api_call(api, "GET", &path, "").await.1["spec"]
        );
        // The same again, without a version: nothing to change, the version stays.
        let (status, body) = api_call(api, "PUT", &path, &updated.to_string()).await;
        assert_eq!(status, 200);
        assert_eq!(
            version(&body),
            v2,
            "an unchanged resource keeps its version"
        );

        let (_, list) = api_call(api, "GET", &format!("/api/v1/{plural}"), "").await;
        assert!(
            list["items"].as_array().unwrap().iter().any(|r| r == &body),
            "{list}"
        );

        let (status, body) = api_call(api, "DELETE", &path, "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["deleted"], json!(id));
        assert_eq!(api_call(api, "GET", &path, "").await.0, 404);
        let (status, body) = api_call(api, "DELETE", &path, "").await;
        assert_eq!((status, body["reason"].as_str()), (404, Some("not-found")));
        assert!(mesh
            .state()
            .mesh()
            .resources
            .iter()
            .all(|s| s.resource.id() != id));
    }

    // A resource from a --config file cannot be written or deleted through the API.
    let body = FILE_SERVICE.replace("8080", "9090");
    let (status, answer) = api_call(api, "PUT", "/api/v1/services/shop/orders", &body).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["reason"], "file-managed");
    assert!(
        answer["message"].as_str().unwrap().contains("mesh.yaml"),
        "names the file: {answer}"
    );
    let (status, answer) = api_call(api, "DELETE", "/api/v1/services/shop/orders", "").await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (409, Some("file-managed"))
    );

    // Every write is in the audit log: who, when, what.
    let (_, audit) = api_call(api, "GET", "/api/v1/audit?limit=1000", "").await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 15, "3 writes for each of 5 kinds: {audit}");
    let route_update = items
        .iter()
        .find(|e| e["resource"] == "HTTPRoute/shop/pay" && e["action"] == "configured")
        .unwrap();
    assert_eq!(
        route_update["changed"],
        json!(["spec.rules[0].backendRefs[0].weight"])
    );
    assert!(route_update["who"]
        .as_str()
        .unwrap()
        .starts_with("admin (admin token) from 127.0.0.1:"));
    assert!(route_update["time"].as_str().unwrap().ends_with('Z'));

    // `weft get audit N`: the last N writes as a table.
    let server = format!("http://{api}");
    let (code, out, err) = run_weft(None, &["get", "audit", "2", "--server", &server], "").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("CHANGED"),
        "{out}"
    );
    assert!(
        lines[2].contains("admin (admin token) from 127.0.0.1:")
            && lines[2].contains("deleted")
            && lines[2].contains("MeshConfig/default/default"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_writers_with_one_version_exactly_one_gets_409() {
    let mesh = Mesh::builder().start().await;
    let api = mesh.api_addr;
    let path = "/api/v1/services/shop/pay";
    let svc = samples()[0].3.clone();
    api_call(api, "PUT", path, &svc.to_string()).await;
    for round in 0..20 {
        let (_, current) = api_call(api, "GET", path, "").await;
        let write = |port: u16| {
            let mut body = current.clone();
            body["spec"]["ports"][0]["port"] = json!(port);
            async move { api_call(api, "PUT", path, &body.to_string()).await }
        };
        let (a, b) = tokio::join!(
            tokio::spawn(write(1000 + round)),
            tokio::spawn(write(2000 + round))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "round {round}: {a:?} {b:?}");
        let loser = if a.0 == 409 { &a.1 } else { &b.1 };
        assert_eq!(loser["reason"], "conflict");
        assert!(
            loser["message"].as_str().unwrap().contains("stale"),
            "{loser}"
        );
        let winner = if a.0 == 200 { &a.1 } else { &b.1 };
        assert_eq!(api_call(api, "GET", path, "").await.1, *winner);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shadows_a_stored_resource_while_it_defines_it() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    let path = "/api/v1/services/shop/pay";
    let (status, _) = api_call(api, "PUT", path, &samples()[0].3.to_string()).await;
    assert_eq!(status, 201);
    let port_in_force = || {
        let m = mesh.state().mesh();
        let s = m
            .resources
            .iter()
            .find(|s| s.resource.id() == "Service/shop/pay")
            .cloned()
            .unwrap();
        (
            s.source.clone(),
            serde_json::to_value(&s.resource).unwrap()["spec"]["ports"][0]["port"].clone(),
        )
    };
    assert_eq!(port_in_force(), ("api".to_string(), json!(8080)));

    // The file now defines it too: the file's definition is in force, and the API refuses it.
    let from_file = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: pay, namespace: shop}\nspec: {ports: [{port: 7070}]}\n";
    let generation = mesh.generation();
    mesh.write_config(&format!("{FILE_SERVICE}---\n{from_file}"));
    eventually(
        "the file to be in force",
        Duration::from_secs(5),
        || async { (mesh.generation() > generation).then_some(()) },
    )
    .await;
    let (source, port) = port_in_force();
    assert!(source.ends_with("mesh.yaml"), "{source}");
    assert_eq!(port, json!(7070));
    let (status, body) = api_call(api, "PUT", path, &samples()[0].4.to_string()).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("file-managed"))
    );

    // The file drops it: the stored definition is back in force.
    let generation = mesh.generation();
    mesh.write_config(FILE_SERVICE);
    eventually(
        "the stored one to be back",
        Duration::from_secs(5),
        || async { (mesh.generation() > generation).then_some(()) },
    )
    .await;
    assert_eq!(port_in_force(), ("api".to_string(), json!(8080)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_checks_everything_and_changes_nothing() {
    let mesh = Mesh::builder().config(FILE_SERVICE).start().await;
    let api = mesh.api_addr;
    let server = format!("http://{api}");
    let svc = samples()[0].3.to_string();
    let generation = mesh.generation();

    let (status, body) = api_call(api, "POST", "/api/v1/apply?dryRun=true", &svc).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dryRun"], json!(true));
    assert_eq!(body["results"][0]["action"], "created");
    let (code, out, err) = run_weft(
        None,
        &["apply", "--dry-run", "-f", "-", "--server", &server],
        &svc,
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "service/shop/pay created (dry run)\n"),
        "{err}"
    );
    // Problems and conflicts are found as for a real apply.
    let (status, _) = api_call(api, "POST", "/api/v1/apply?dryRun=true", FILE_SERVICE).await;
    assert_eq!(status, 409);
    let bad = svc.replace("8080", "0");
    let (status, _) = api_call(api, "POST", "/api/v1/apply?dryRun=true", &bad).await;
    assert_eq!(status, 422);

    assert_eq!(mesh.generation(), generation);
    assert_eq!(
        api_call(api, "GET", "/api/v1/services/shop/pay", "")
            .await
            .0,
        404
    );
    assert_eq!(
        api_call(api, "GET", "/api/v1/audit", "").await.1["items"],
        json!([])
    );
}
