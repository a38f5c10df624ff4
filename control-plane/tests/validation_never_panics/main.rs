#![allow(clippy::unwrap_used)]
//! Parsing and validating resources never panics, whatever the input.
//!
//! Three families of input: arbitrary text (including YAML punctuation soup), generated
//! documents shaped like the real resources (real field names, hostile leaf values), and
//! arbitrary strings in every kind of duration field. Whatever happens, `parse` and `validate`
//! return problems rather than panicking, and every problem says something.

use std::time::Duration;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};
use weft::resources::{parse, validate, Problem, Resource, Sourced, GATEWAY_API, WEFT_API};
use weft_runtime::duration::parse_duration;

type S = BoxedStrategy<Value>;

mod leaves;
mod shapes;
mod text;

use leaves::*;
use shapes::*;
use text::*;

// ---- checks ----

fn check_problems(problems: &[Problem], documents: usize) {
    for p in problems {
        assert!(
            !p.message.trim().is_empty(),
            "problem without a message: {p:?}"
        );
        assert!(
            (1..=documents).contains(&p.document),
            "problem in document {} of {documents}: {p:?}",
            p.document
        );
        if let Some(r) = &p.resource {
            assert!(!r.is_empty(), "empty resource: {p:?}");
        }
        let shown = p.to_string();
        assert!(shown.contains(&p.message), "{shown:?} lacks the message");
    }
}

fn check_accepted(items: &[Sourced], documents: usize) {
    assert!(items.len() <= documents);
    let problems = validate(items);
    check_problems(&problems, documents);
    if problems.is_empty() {
        for r in items {
            let id = r.resource.id();
            let kind = r.resource.kind();
            assert!(id.starts_with(&format!("{kind}/")), "{id} is not a {kind}");
        }
    }
    // What was accepted can be written back out.
    for r in items {
        serde_saphyr::to_string(&r.resource).unwrap();
    }
}

/// Parses (and, when that succeeds, validates) `text`, checking everything said about it.
fn check_text(text: &str, documents: usize) {
    match parse("gen.yaml", text) {
        Ok(items) => check_accepted(&items, documents),
        Err(problems) => {
            assert!(!problems.is_empty(), "Err without problems");
            check_problems(&problems, documents);
        }
    }
}

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check_text(&text, usize::MAX);
    }

    #[test]
    fn yaml_punctuation_never_panics(text in punctuation()) {
        check_text(&text, usize::MAX);
    }

    #[test]
    fn yaml_token_soup_never_panics(text in token_soup()) {
        check_text(&text, usize::MAX);
    }

    #[test]
    fn any_duration_string_never_panics(
        text in duration_text(),
        field in 0..DURATION_FIELDS.len(),
    ) {
        let direct = parse_duration(&text);
        if let Ok(d) = direct {
            prop_assert!(d <= TEN_YEARS, "{text:?} parsed to {d:?}");
        }
        let (kind, api, path, spec) = DURATION_FIELDS[field];
        let doc = json!({
            "apiVersion": api,
            "kind": kind,
            "metadata": {"name": "default"},
            "spec": spec(Value::from(text.as_str())),
        });
        let yaml = serde_saphyr::to_string(&doc).unwrap();
        match parse("d.yaml", &yaml) {
            Ok(items) => {
                prop_assert!(direct.is_ok(), "{text:?} accepted in a resource, refused alone");
                prop_assert_eq!(items.len(), 1);
                check_accepted(&items, 1);
                if let Resource::TrafficPolicy(tp) = &items[0].resource {
                    if let Some(t) = &tp.spec.timeouts {
                        prop_assert_eq!(t.request.map(|d| d.0), direct.ok());
                    }
                }
            }
            Err(problems) => {
                prop_assert!(direct.is_err(), "{text:?} refused in a resource: {problems:?}");
                prop_assert_eq!(problems.len(), 1, "{:?}", problems);
                prop_assert_eq!(&problems[0].field, path);
                check_problems(&problems, 1);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn resource_shaped_documents_never_panic(docs in stream()) {
        check_text(&docs.join("\n---\n"), docs.len());
        // Each document alone too, and whichever of them parse validated together: a stream
        // with one bad document never reaches `validate`.
        let mut accepted = Vec::new();
        for doc in &docs {
            if let Ok(items) = parse("one.yaml", doc) {
                check_accepted(&items, 1);
                accepted.extend(items);
            }
        }
        check_accepted(&accepted, docs.len());
    }
}

/// Inputs random generation is unlikely to reach: deep nesting and alias bombs.
#[test]
fn deep_and_self_referential_documents_are_refused_not_crashed_on() {
    let deep = [
        "[".repeat(2_000),
        "{a: ".repeat(2_000),
        "- ".repeat(2_000),
        (0..1_000).map(|i| format!("{}k:\n", " ".repeat(i))).collect(),
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: a}}\nspec: {{ports: [{{port: 80, name: {}1{}}}]}}\n",
            "[".repeat(1_000),
            "]".repeat(1_000)
        ),
    ];
    for text in &deep {
        let problems = parse("deep.yaml", text).unwrap_err();
        check_problems(&problems, 1);
    }
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..20 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let problems = parse("bomb.yaml", &bomb).unwrap_err();
    check_problems(&problems, 1);
}
