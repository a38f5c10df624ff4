//! The settings' parsing: every bad value reported, defaults, files and warnings.

use super::*;

/// [`Config::from_args`], then the trust-anchor file [`args`] wrote is removed: the tests leave
/// nothing in the temp folder.
fn from_args(a: Args) -> Result<Config, Vec<String>> {
    let written = a.trust_anchors.clone();
    let result = Config::from_args(a);
    if let Some(path) = written.filter(|p| p.starts_with(std::env::temp_dir())) {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn args() -> Args {
    // One file per call: tests run in parallel, and one must not read another's half-written.
    let anchors = std::env::temp_dir().join(format!(
        "weft-anchors-{}-{:x}.pem",
        std::process::id(),
        rand::random::<u64>()
    ));
    let ca = rcgen::CertificateParams::default()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(&anchors, ca.pem()).unwrap();
    Args {
        control_plane: "https://127.0.0.1:15012".into(),
        trust_anchors: Some(anchors),
        join_token: Some("weft1.x.y".into()),
        namespace: Some("shop".into()),
        service_account: Some("orders".into()),
        inbound_addr: "0.0.0.0:15006".into(),
        outbound_addr: "127.0.0.1:15001".into(),
        admin_addr: "127.0.0.1:15020".into(),
        app_addr: "127.0.0.1:8080".into(),
        drain_timeout: "10s".into(),
        workers: "1".into(),
        ..Default::default()
    }
}

#[test]
fn the_admin_drain_is_off_unless_asked_for() {
    assert!(!from_args(args()).unwrap().admin_shutdown);
    let with = |v: &str| {
        let mut a = args();
        a.admin_shutdown = v.into();
        from_args(a)
    };
    assert!(with("true").unwrap().admin_shutdown);
    assert!(!with("false").unwrap().admin_shutdown);
    assert_eq!(
        with("yes").unwrap_err(),
        vec!["admin-shutdown=\"yes\": expected true or false".to_string()]
    );
    // The bare flag turns it on.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(["weft-proxy", "--admin-shutdown"]).unwrap();
    assert_eq!(cli.args.admin_shutdown, "true");
}

#[test]
fn service_defaults_to_service_account() {
    let c = from_args(args()).unwrap();
    assert_eq!(c.service, "orders");
}

#[test]
fn the_trust_domain_defaults_to_weft_local_and_must_be_a_name() {
    assert_eq!(from_args(args()).unwrap().trust_domain, "weft.local");
    let mut a = args();
    a.trust_domain = Some("corp.example".into());
    assert_eq!(from_args(a).unwrap().trust_domain, "corp.example");
    let mut a = args();
    a.trust_domain = Some("evil/ns/x".into());
    let errs = from_args(a).unwrap_err();
    assert!(
        errs[0].starts_with("trust-domain=\"evil/ns/x\""),
        "{errs:?}"
    );
}

#[test]
fn a_join_token_is_read_from_a_file_and_one_on_the_command_line_is_warned_about() {
    let file = std::env::temp_dir().join(format!("weft-join-{:x}", rand::random::<u64>()));
    std::fs::write(&file, "weft1.from.file\n").unwrap();
    let mut a = args();
    a.join_token = None;
    a.join_token_file = Some(file.clone());
    let c = from_args(a).unwrap();
    assert!(matches!(&c.proof, Proof::JoinToken(t) if t == "weft1.from.file"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // From the environment (what `args()` stands for): no warning.
    assert!(from_args(args()).unwrap().warnings.is_empty());
    let mut a = args();
    a.join_token_on_command_line = true;
    let warnings = from_args(a).unwrap().warnings;
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("--join-token-file"), "{warnings:?}");
    // Two proofs, or an empty file, are refused.
    let mut a = args();
    a.join_token_file = Some(file.clone());
    let errs = from_args(a).unwrap_err();
    assert!(errs[0].contains("not several"), "{errs:?}");
    std::fs::write(&file, "\n").unwrap();
    let mut a = args();
    a.join_token = None;
    a.join_token_file = Some(file.clone());
    assert!(from_args(a).unwrap_err()[0].ends_with("empty"));
    std::fs::remove_file(file).unwrap();
}

#[test]
fn every_bad_setting_is_reported() {
    let mut a = args();
    a.inbound_addr = "nope".into();
    a.namespace = None;
    a.upstream = vec!["127.0.0.1:1=orders".into()];
    a.drain_timeout = "10".into();
    let errs = from_args(a).unwrap_err();
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs[0].starts_with("inbound-addr=\"nope\""));
    assert!(errs.iter().any(|e| e == "namespace: required"));
}

#[test]
fn tls_to_the_control_plane_anchors_and_proof_are_required() {
    let mut a = args();
    a.control_plane = "http://127.0.0.1:15012".into();
    if let Some(written) = a.trust_anchors.take() {
        let _ = std::fs::remove_file(written);
    }
    a.join_token = None;
    let errs = from_args(a).unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].contains("over TLS only; use https://"), "{errs:?}");
    assert!(errs[1].starts_with("trust-anchors: required"), "{errs:?}");
    assert!(
        errs[2].starts_with("join-token or token-file: required"),
        "{errs:?}"
    );

    let mut a = args();
    let bad = std::env::temp_dir().join(format!("weft-bad-anchors-{}.pem", std::process::id()));
    std::fs::write(&bad, "not a certificate").unwrap();
    if let Some(written) = a.trust_anchors.replace(bad) {
        let _ = std::fs::remove_file(written);
    }
    let errs = from_args(a).unwrap_err();
    assert!(errs[0].contains("no certificate in the PEM"), "{errs:?}");
}

#[test]
fn upstream_mapping_parses() {
    let u: Upstream = "127.0.0.1:9000=orders.shop:8080".parse().unwrap();
    assert_eq!(u.key("default"), ServiceKey::new("orders", "shop"));
    assert_eq!(u.port, 8080);
    let u: Upstream = "127.0.0.1:9000=orders:8080".parse().unwrap();
    assert_eq!(u.key("default"), ServiceKey::new("orders", "default"));
    assert!("127.0.0.1:9000=orders".parse::<Upstream>().is_err());
    assert!("orders:8080".parse::<Upstream>().is_err());
}
