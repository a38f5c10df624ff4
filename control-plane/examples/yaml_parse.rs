#![allow(clippy::unwrap_used)] // a benchmark: a failure to spawn or measure should stop it loudly
//! How fast `resources::parse` reads a realistic config, and what the alias-bomb bodies cost it.
//!
//! Every case runs in a child process of its own, so that its peak RSS (`VmHWM`) is its own:
//!
//! ```sh
//! cargo run --release -p weft --example yaml_parse            # every case, one table
//! cargo run --release -p weft --example yaml_parse -- CASE    # one case
//! ```
//!
//! Cases: `realistic` (1000 Services and 1000 HTTPRoutes, one multi-document text, parsed 10
//! times), and the attack bodies `laughs-block`, `laughs-flow` (9 levels of 9 aliases) and
//! `wide` (one anchor of 1000 scalars, aliased 3000 times: the finding's 11 KB shape), sized so
//! that even a parser that expands them stays within a few hundred MiB. `nested-256k` and
//! `nested-1m` are flow keys nested 60 deep (`{a: {a: ...}}`, within every depth limit),
//! repeated to that size: the shape that costs YAML scanners time quadratic in the depth; linear
//! time means the second takes four times the first. Case `errors` prints the problems reported
//! for a few common mistakes, to compare wording.

use std::time::Instant;

#[path = "../src/resources/parse/bombs.rs"]
mod bombs;
use bombs::{laughs_block, laughs_flow};

const CASES: [&str; 6] = [
    "realistic",
    "laughs-block",
    "laughs-flow",
    "wide",
    "nested-256k",
    "nested-1m",
];

fn main() {
    match std::env::args().nth(1) {
        Some(case) if case == "errors" => errors(),
        Some(case) => run(&case),
        None => {
            println!(
                "| case | input KiB | documents | ms per parse | MiB/s | peak RSS MiB | outcome |"
            );
            println!("|---|---|---|---|---|---|---|");
            for case in CASES {
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .arg(case)
                    .output()
                    .unwrap();
                print!("{}", String::from_utf8_lossy(&out.stdout));
                if !out.status.success() {
                    println!("| {case} | - | - | - | - | - | died: {} |", out.status);
                }
            }
        }
    }
}

fn run(case: &str) {
    let (text, rounds) = match case {
        "realistic" => (realistic(1000), 10),
        "laughs-block" => (laughs_block(9, 9), 1),
        "laughs-flow" => (laughs_flow(9, 9), 1),
        "wide" => (wide(1000, 3000), 1),
        "nested-256k" => (nested(256 << 10), 1),
        "nested-1m" => (nested(1 << 20), 1),
        other => panic!("unknown case {other}; one of {CASES:?}"),
    };
    let mut outcome = String::new();
    let mut documents = 0;
    let started = Instant::now();
    for _ in 0..rounds {
        match weft::resources::parse("bench", &text) {
            Ok(parsed) => {
                documents = parsed.len();
                outcome = "parsed".into();
            }
            Err(problems) => {
                documents = problems.len();
                outcome = problems[0].to_string();
                outcome.truncate(100);
            }
        }
    }
    let per = started.elapsed().as_secs_f64() / f64::from(rounds);
    let kib = text.len() as f64 / 1024.0;
    println!(
        "| {case} | {kib:.1} | {documents} | {:.2} | {:.1} | {:.1} | {} |",
        per * 1000.0,
        kib / 1024.0 / per,
        peak_rss_mib(),
        outcome.replace('|', "/").replace('\n', " ")
    );
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `n` Services and `n` HTTPRoutes splitting each between two versions, as users write them.
fn realistic(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "apiVersion: weft.dev/v1alpha1
kind: Service
metadata:
  name: svc-{i}
  namespace: shop
  labels: {{app: svc-{i}, team: payments}}
spec:
  ports:
  - name: http
    port: 8080
    protocol: HTTP
  serviceAccount: svc-{i}
  endpoints:
  - address: 10.0.{}.{}:8080
    labels: {{version: v1}}
  - address: 10.1.{}.{}:8080
    labels: {{version: v2}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: svc-{i}
  namespace: shop
spec:
  parentRefs: [{{kind: Service, name: svc-{i}, port: 8080}}]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /api}}
      headers: [{{name: x-canary, value: \"true\"}}]
    backendRefs:
    - {{name: svc-{i}, weight: 90}}
    - {{name: svc-{i}, weight: 10}}
    timeouts: {{request: 2s}}
    retry: {{attempts: 3, codes: [502, 503], backoff: 100ms}}
---
",
            i / 256,
            i % 256,
            i / 256,
            i % 256
        ));
    }
    out
}

/// One anchor of `scalars` scalars, aliased `aliases` times: few alias jumps, many nodes.
fn wide(scalars: usize, aliases: usize) -> String {
    let (anchored, aliasing) = bombs::wide(scalars, aliases);
    format!("a: {anchored}\nb: {aliasing}\n")
}

/// Flow mappings nested 60 deep, one per line, to `bytes` in all.
fn nested(bytes: usize) -> String {
    let one = format!("- {}x{}\n", "{a: ".repeat(60), "}".repeat(60));
    one.repeat(bytes / one.len() + 1)
}

/// The problems reported for common mistakes, one line each.
fn errors() {
    let head = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\n";
    let cases = [
        (
            "bad indentation",
            format!("{head}spec:\n  ports:\n  - port: 80\n   protocol: TCP\n"),
        ),
        (
            "unclosed flow",
            format!("{head}spec: {{ports: [{{port: 80}}]\n"),
        ),
        ("tab indentation", format!("{head}spec:\n\tports: []\n")),
        (
            "duplicate key",
            format!("{head}spec: {{ports: []}}\nspec: {{ports: []}}\n"),
        ),
        (
            "wrong type",
            format!("{head}spec: {{ports: [{{port: eighty}}]}}\n"),
        ),
        (
            "unknown field",
            format!("{head}spec: {{ports: [], endpoint: []}}\n"),
        ),
        (
            "port out of range",
            format!("{head}spec: {{ports: [{{port: 70000}}]}}\n"),
        ),
        ("anchor", format!("{head}spec: &s {{ports: []}}\n")),
        ("merge key", format!("{head}spec: {{<<: {{ports: []}}}}\n")),
    ];
    for (name, text) in cases {
        let text = format!("{}{text}", realistic(1)); // the mistake in document 3
        match weft::resources::parse("f.yaml", &text) {
            Ok(_) => println!("{name}: accepted"),
            Err(problems) => {
                for p in problems {
                    println!("{name}: {p}");
                }
            }
        }
    }
}
