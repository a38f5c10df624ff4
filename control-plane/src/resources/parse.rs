//! Reading resources from text: every YAML (or JSON) document of a text into a [`Resource`],
//! each problem placed by document, field path and, for what the YAML reader refuses, line.
//! Every document is read, whatever the others hold, and a document's field problems (wrong
//! types, unknown fields) are listed together, not only the first (see [`typed`]).
//!
//! The reader (`serde-saphyr`) runs under hard budgets, so that no text costs more than a small
//! multiple of its own size: anchors and aliases are refused outright (resources never need
//! them, and expanding them is how 11 KB became gigabytes), collections nest at most
//! [`MAX_DEPTH`] deep, and a document holds at most [`MAX_NODES`] nodes. Each document becomes
//! a JSON value first (so that its kind can pick the type), then the typed resource, read with
//! `serde_path_to_error` for the field path. A text is read whole when it fits the budgets (the
//! common case, and the faster one), else again document by document, which places each
//! problem in its document and lets the documents before it be checked.

use std::fmt;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::granit_parser::ErrorKind;
use serde_saphyr::ExternalMessageSource;

use super::{known_kinds, Object, Resource, KINDS};

/// How deep sequences and mappings (block or flow) may nest. Resources need about ten levels
/// (`spec.rules[].matches[].headers[]` is eight).
pub const MAX_DEPTH: usize = 64;

/// How many nodes (scalars, sequences, mappings) one document may hold: a resource with a
/// thousand endpoints has about five thousand.
pub const MAX_NODES: usize = 250_000;

/// The most text one parse reads. The API takes at most 1 MiB per request; files are the
/// operator's, and a mesh of ten thousand services fits in a few MiB.
pub const MAX_TEXT_BYTES: usize = 64 << 20;

/// The message for an anchor or alias, whatever the reader's own words for it.
pub const NO_ANCHORS: &str = "anchors and aliases are not supported in weft resources";

/// A problem with a resource, placed as exactly as we can: source, document, field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// File name, or `request` for the API.
    pub source: String,
    /// 1-based document number within the source (empty documents are not counted).
    pub document: usize,
    /// The resource, `Kind/namespace/name`, when known.
    pub resource: Option<String>,
    /// Dotted field path, e.g. `spec.rules[0].backendRefs[0].weight`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// A parsed resource and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced {
    pub resource: Resource,
    pub source: String,
    pub document: usize,
}

/// Parses every document of a multi-document YAML (or JSON) text. Returns every problem found.
pub fn parse(source: &str, text: &str) -> Result<Vec<Sourced>, Vec<Problem>> {
    let (out, problems) = parse_each(source, text);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Parses every document it can: the resources that parsed, and the problems of those that did
/// not (so that they can still be checked, and every problem reported at once).
pub fn parse_each(source: &str, text: &str) -> (Vec<Sourced>, Vec<Problem>) {
    parse_with(source, text, MAX_NODES)
}

/// [`parse_each`] with a node budget of `max_nodes` (small in tests).
fn parse_with(source: &str, text: &str, max_nodes: usize) -> (Vec<Sourced>, Vec<Problem>) {
    let docs: Vec<Result<Result<Resource, Vec<ParseError>>, String>> = match fast(text, max_nodes) {
        Some(Collect(parsed)) => parsed.into_iter().map(Ok).collect(),
        None => read(text, max_nodes)
            .into_iter()
            .map(|d| d.map(parse_value))
            .collect(),
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let document = i + 1;
        let problem = |resource: Option<String>, field: String, message: String| Problem {
            source: source.to_string(),
            document,
            resource,
            field,
            message,
        };
        let parsed = match doc {
            Ok(parsed) => parsed,
            Err(message) => {
                // The reader stops at a syntax error or a budget: nothing after it is read.
                problems.push(problem(None, String::new(), message));
                continue;
            }
        };
        match parsed {
            Ok(resource) => out.push(Sourced {
                resource,
                source: source.to_string(),
                document,
            }),
            Err(errors) => problems.extend(
                errors
                    .into_iter()
                    .map(|(resource, field, message)| problem(resource, field, message)),
            ),
        }
    }
    (out, problems)
}

/// Each document's outcome, collected as the reader yields it (no document's JSON value
/// outlives its turn).
#[derive(Default)]
struct Collect(Vec<Result<Resource, Vec<ParseError>>>);

impl Extend<serde_json::Value> for Collect {
    fn extend<I: IntoIterator<Item = serde_json::Value>>(&mut self, values: I) {
        self.0.extend(values.into_iter().map(parse_value));
    }
}

/// The common case, fast: the whole text read at once (a quarter faster than document by
/// document), under budgets at least as strict as [`read`]'s — [`MAX_NODES`] for the whole
/// text, not per document. `None` when anything is wrong, or the text is bigger: then [`read`]
/// goes document by document and says exactly where.
fn fast(text: &str, max_nodes: usize) -> Option<Collect> {
    if text.len() > MAX_TEXT_BYTES {
        return None;
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_anchors: 0,
            max_aliases: 0,
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: max_nodes,
            // The text's size bounds the documents; the node budget bounds their content.
            max_documents: usize::MAX,
        },
        merge_keys: serde_saphyr::options::MergeKeyPolicy::AsOrdinary,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    };
    serde_saphyr::from_str_multiple_with_options::<serde_json::Value, Collect>(text, options).ok()
}

/// Every non-empty document of `text` as a JSON value, or what is wrong with it (one line,
/// naming the line of the input), document by document. Used by [`parse_each`] when the fast
/// path fails, and by the API to add a namespace.
pub fn documents(text: &str) -> Vec<Result<serde_json::Value, String>> {
    read(text, MAX_NODES)
}

/// [`documents`] with a node budget of `max_nodes` per document (small in tests).
fn read(text: &str, max_nodes: usize) -> Vec<Result<serde_json::Value, String>> {
    if text.len() > MAX_TEXT_BYTES {
        return vec![Err(format!("longer than {MAX_TEXT_BYTES} bytes"))];
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_TEXT_BYTES),
            // Refused at the first `&name`, or the first `*name` (which then names no anchor).
            max_anchors: 0,
            max_aliases: 0,
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: max_nodes,
        },
        // `<<` is a key like any other, as YAML 1.2 has it: resources reject it by name.
        merge_keys: serde_saphyr::options::MergeKeyPolicy::AsOrdinary,
        // YAML 1.2's core schema, as before: `off`, `yes`, `0755` and `1_000` are words, so that
        // `accessLog: off` is the mode `off`, not `false`, and label values stay what was typed.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    };
    let mut bytes = text.as_bytes();
    serde_saphyr::read_with_options::<_, serde_json::Value>(&mut bytes, options)
        .map(|r| r.map_err(|e| reader_message(&e)))
        .collect()
}

/// The reader's error as one line, in our words where we have them.
fn reader_message(e: &serde_saphyr::Error) -> String {
    let line = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| format!("line {}: ", l.line()))
        .unwrap_or_default();
    let depth =
        || format!("collections ([...], {{...}}, or indented) nested deeper than {MAX_DEPTH}");
    let own = match e.without_snippet() {
        serde_saphyr::Error::Budget { breach, .. } => match breach {
            BudgetBreach::Anchors { .. } | BudgetBreach::Aliases { .. } => {
                Some(NO_ANCHORS.to_string())
            }
            BudgetBreach::Depth { .. } => Some(depth()),
            BudgetBreach::Nodes { .. } => {
                Some(format!("a document holds more than {MAX_NODES} nodes"))
            }
            _ => None,
        },
        serde_saphyr::Error::UnknownAnchor { .. } => Some(NO_ANCHORS.to_string()),
        // The flow nesting limit is the parser's own, reported in its words.
        serde_saphyr::Error::ExternalMessage { source, .. }
            if matches!(&**source, ExternalMessageSource::Parser(scan)
                if matches!(scan.kind(), ErrorKind::RecursionLimitExceeded)) =>
        {
            Some(depth())
        }
        _ => None,
    };
    match own {
        Some(m) => format!("{line}{m}"),
        None => {
            // The formatter for end users: no hints about the reader's own options.
            let m = e.render_with_options(serde_saphyr::render_options! {
                formatter: &serde_saphyr::UserMessageFormatter,
                snippets: serde_saphyr::SnippetMode::Off,
            });
            format!("not valid YAML: {}", m.replace('\n', " "))
        }
    }
}

/// A problem found while parsing a document: its resource when known, field, message.
type ParseError = (Option<String>, String, String);

/// The most field problems listed for one document: after each, the document is read again
/// without the offending field, so this bounds what a document full of mistakes costs.
const MAX_FIELD_PROBLEMS: usize = 10;

fn parse_value(value: serde_json::Value) -> Result<Resource, Vec<ParseError>> {
    let get = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let kind = get("kind").ok_or_else(|| {
        vec![(
            None,
            "kind".into(),
            format!("missing; expected one of {}", known_kinds()),
        )]
    })?;
    let api_version =
        get("apiVersion").ok_or_else(|| vec![(None, "apiVersion".into(), "missing".into())])?;
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    let ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    let id = Some(format!("{kind}/{ns}/{name}"));
    let Some((_, want_api)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return Err(vec![(
            None,
            "kind".into(),
            format!("unknown kind {kind:?}; expected one of {}", known_kinds()),
        )]);
    };
    if api_version != *want_api {
        return Err(vec![(
            id,
            "apiVersion".into(),
            format!("{kind} is {want_api}, not {api_version:?}"),
        )]);
    }
    Ok(match kind.as_str() {
        "MeshConfig" => Resource::MeshConfig(typed(value, &id)?),
        "Service" => Resource::Service(typed(value, &id)?),
        "HTTPRoute" => Resource::HttpRoute(typed(value, &id)?),
        "TrafficPolicy" => Resource::TrafficPolicy(typed(value, &id)?),
        _ => Resource::AuthorizationPolicy(typed(value, &id)?),
    })
}

/// The typed resource, or every field problem of the document (up to [`MAX_FIELD_PROBLEMS`]):
/// serde stops at the first, so the field it names is dropped and the document read again,
/// until it reads or the next problem cannot be told apart from the dropping — a required field
/// now missing, or a problem that is not at a field of a mapping (a list's element: dropping it
/// would renumber the ones after it).
fn typed<S: serde::de::DeserializeOwned>(
    mut value: serde_json::Value,
    id: &Option<String>,
) -> Result<Object<S>, Vec<ParseError>> {
    let mut problems = Vec::new();
    // The field last dropped, as its path reads.
    let mut dropped: Option<String> = None;
    loop {
        let e = match serde_path_to_error::deserialize::<_, Object<S>>(&value) {
            Ok(o) if problems.is_empty() => return Ok(o),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
        let message = e.into_inner().to_string();
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            let path = if field.is_empty() {
                missing.to_string()
            } else {
                format!("{field}.{missing}")
            };
            if dropped.as_deref() != Some(path.as_str()) {
                problems.push((id.clone(), field, message));
            }
            return Err(problems);
        }
        problems.push((id.clone(), field.clone(), message));
        if problems.len() >= MAX_FIELD_PROBLEMS || !drop_field(&mut value, &segments) {
            return Err(problems);
        }
        dropped = Some(field);
    }
}

/// Removes the mapping entry at `path` from `value`; false when `path` does not end at one.
fn drop_field(value: &mut serde_json::Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((Segment::Map { key }, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let next = match segment {
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Seq { index } => at.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    at.as_object_mut().is_some_and(|m| m.remove(key).is_some())
}

#[cfg(test)]
mod bombs;

#[cfg(test)]
mod tests {
    use super::super::Protocol;
    use super::*;

    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{name: orders, kind: Service}]
  rules:
  - backendRefs:
    - {name: orders-v1, weight: 90}
    - {name: orders-v2, weight: ninety}
"#;

    fn one_problem(text: &str) -> Problem {
        let mut p = parse("f.yaml", text).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        p.remove(0)
    }

    #[test]
    fn weight_that_does_not_parse_names_the_field() {
        let p = one_problem(ROUTE);
        assert_eq!(p.field, "spec.rules[0].backendRefs[1].weight");
        assert_eq!(p.resource.as_deref(), Some("HTTPRoute/shop/orders"));
        assert!(
            p.to_string()
                .starts_with("f.yaml: document 1 (HTTPRoute/shop/orders): spec.rules"),
            "{p}"
        );
    }

    #[test]
    fn unknown_field_names_the_field() {
        let p = one_problem("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80}]\n  endpoint: []\n");
        assert_eq!(p.field, "spec.endpoint");
        assert!(
            p.message.contains("unknown field `endpoint`"),
            "{}",
            p.message
        );
    }

    #[test]
    fn bad_duration_names_the_field() {
        let p = one_problem("apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec:\n  targetRef: {name: a}\n  timeouts: {request: 5 parsecs}\n");
        assert_eq!(p.field, "spec.timeouts.request");
        assert!(p.message.contains("unknown unit"), "{}", p.message);
    }

    #[test]
    fn a_document_lists_each_of_its_field_problems() {
        // An unknown field, a weight that does not parse, a bad duration: one document, three
        // problems, each with its field.
        let text = ROUTE.replace("parentRefs:", "hostname: x\n  parentRefs:")
            + "    timeouts: {request: 5 parsecs}\n";
        let problems = parse("f.yaml", &text).unwrap_err();
        let mut fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "spec.hostname",
                "spec.rules[0].backendRefs[1].weight",
                "spec.rules[0].timeouts.request"
            ],
            "{problems:?}"
        );
        assert!(problems.iter().all(|p| p.document == 1), "{problems:?}");
        // A required field that does not parse is one problem, not also a missing field.
        let p = one_problem("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n");
        assert_eq!(p.field, "spec.ports[0].port", "{p}");
        // A field that is missing is named once.
        let p = one_problem(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
        );
        assert!(p.message.contains("missing field `ports`"), "{p}");
    }

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let p = one_problem(
            "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {name: a}\nspec: {}\n",
        );
        assert!(
            p.message.contains("MeshConfig, Service, HTTPRoute"),
            "{}",
            p.message
        );
    }

    #[test]
    fn multi_document_reports_each_bad_document() {
        let text = format!("{ROUTE}---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: ok}}\nspec: {{ports: [{{port: 80}}]}}\n---\nkind: Nope\napiVersion: x\n");
        let problems = parse("f.yaml", &text).unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.document).collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_it_is_scanned() {
        let deep = "{a: ".repeat(100_000);
        let started = std::time::Instant::now();
        let p = one_problem(&deep);
        assert!(p.message.contains("nested deeper than 64"), "{p}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        // Closing brackets in quotes or comments cannot hide the depth.
        let hidden = "{a: \"]]\", b: # ]]\n".repeat(70);
        assert!(one_problem(&hidden).message.contains("deeper than"));
        // Indented collections have the same limit, reached as fast.
        let block: String = (0..1000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        let started = std::time::Instant::now();
        let p = one_problem(&block);
        assert!(p.message.contains("nested deeper than 64"), "{p}");
        assert!(p.message.contains("line 65"), "{p}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        // Shallow flow collections, brackets in strings and comments are fine.
        let text = "apiVersion: weft.dev/v1alpha1 # [[[[\nkind: Service\nmetadata: {name: a, annotations: {note: \"[{[{\", other: 'it''s [x]'}}\nspec: {ports: [{port: 80}]}\n";
        assert_eq!(parse("f.yaml", text).unwrap().len(), 1);
    }

    use bombs::{laughs_block, laughs_flow};

    /// [`bombs::wide`] inside a real resource: the shape of the finding's 11 KB body.
    fn wide(scalars: usize, aliases: usize) -> String {
        let (anchored, aliasing) = bombs::wide(scalars, aliases);
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata:\n  name: a\n  annotations: {{a: {anchored}, b: {aliasing}}}\nspec: {{ports: [{{port: 80}}]}}\n"
        )
    }

    #[test]
    fn alias_bombs_are_refused_before_they_expand() {
        for (name, text, line) in [
            ("wide", wide(1000, 3000), 5),
            // The anchored sequence starts on the line after its `&a0`.
            ("block", laughs_block(9, 9), 2),
            ("flow", laughs_flow(9, 9), 1),
        ] {
            let started = std::time::Instant::now();
            let p = one_problem(&text);
            assert!(
                p.message
                    .contains("anchors and aliases are not supported in weft resources"),
                "{name}: {p}"
            );
            assert!(p.message.contains(&format!("line {line}")), "{name}: {p}");
            assert!(
                started.elapsed() < std::time::Duration::from_millis(500),
                "{name}: {:?}",
                started.elapsed()
            );
        }
        // An anchor alone (no alias) is refused too, and so is a bomb after a good document.
        let lone = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: &s {ports: [{port: 80}]}\n";
        assert!(
            one_problem(lone).message.contains("line 4"),
            "{}",
            one_problem(lone)
        );
        let later = format!("{lone}---\n{}", wide(1000, 3000)).replacen("&s ", "", 1);
        let p = one_problem(&later);
        assert_eq!(p.document, 2, "{p}");
        assert!(p.message.contains("anchors and aliases"), "{p}");
    }

    #[test]
    fn a_document_has_a_node_budget() {
        // The budget's message, with the real budget (a document of 250 001 scalars).
        let many = format!("[{}]\n", vec!["x"; MAX_NODES + 1].join(","));
        let p = one_problem(&many);
        assert!(p.message.contains("more than 250000 nodes"), "{p}");
        // The budget is per document: a big config's many documents each have their own.
        let doc = |n: usize| format!("[{}]\n", vec!["x"; n].join(","));
        let docs = read(&format!("{}---\n{}", doc(60), doc(60)), 100);
        assert!(docs.iter().all(Result::is_ok), "{docs:?}");
        let docs = read(&format!("{}---\n{}", doc(60), doc(101)), 100);
        assert!(docs[0].is_ok() && docs[1].is_err(), "{docs:?}");
        // Parsing takes the whole text at once when it fits the budget, and goes document by
        // document when it does not: the outcome is the same (here, two documents that are not
        // resources, and no budget problem).
        for text in [doc(40) + "---\n" + &doc(40), doc(60) + "---\n" + &doc(60)] {
            let (ok, problems) = parse_with("f.yaml", &text, 100);
            assert!(ok.is_empty());
            let documents: Vec<usize> = problems.iter().map(|p| p.document).collect();
            assert_eq!(documents, [1, 2], "{problems:?}");
            assert!(problems.iter().all(|p| p.field == "kind"), "{problems:?}");
        }
    }

    #[test]
    fn what_weft_get_writes_reads_back_the_same() {
        let text = format!("{ROUTE}---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: a, labels: {{x: 'yes', y: '~'}}}}\nspec: {{ports: [{{port: 80, protocol: TCP}}], endpoints: [{{address: '[::1]:80'}}]}}\n")
            .replace("ninety", "10");
        for r in parse("f.yaml", &text).unwrap() {
            // `weft get -o yaml` writes the API's JSON as YAML.
            let json = serde_json::to_value(&r.resource).unwrap();
            let yaml = serde_saphyr::to_string(&json).unwrap();
            let again = parse("get", &yaml).unwrap();
            assert_eq!(again[0].resource, r.resource, "{yaml}");
        }
    }

    #[test]
    fn yaml_1_1_words_stay_words() {
        let text = "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default, labels: {a: yes, b: no, c: on, d: 0755, e: 1_000, f: y}}\nspec: {accessLog: off, mtls: strict}\n";
        let r = parse("f.yaml", text).unwrap();
        let Resource::MeshConfig(m) = &r[0].resource else {
            panic!()
        };
        assert_eq!(m.spec.access_log, Some(super::super::AccessLogMode::Off));
        let labels: Vec<&str> = m.metadata.labels.values().map(String::as_str).collect();
        assert_eq!(labels, ["yes", "no", "on", "0755", "1_000", "y"]);
    }

    #[test]
    fn valid_documents_parse_with_defaults() {
        let text = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n";
        let r = parse("f.yaml", text).unwrap();
        assert_eq!(r.len(), 1);
        let Resource::Service(s) = &r[0].resource else {
            panic!()
        };
        assert_eq!(s.metadata.namespace, "default");
        assert_eq!(s.spec.ports[0].protocol, Protocol::Http);
    }
}
