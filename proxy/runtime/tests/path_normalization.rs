//! Path normalization never panics on any input, is idempotent, and what it returns has no
//! dot segment, no repeated slash, and no escape or character a server could read as a
//! separator, a dot or a parameter.

use proptest::prelude::*;
use weft_runtime::path::normalize;

/// Paths built from the pieces that matter: separators, dots, escapes (valid, invalid, of
/// slashes, dots and controls), `;`, backslashes, non-ASCII.
fn path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", ".", "..", "%2e", "%2E", "%2f", "%5C", "%25", "%41", "%7e", "%3b", "%00", "%zz",
        "%", "%2", ";", ";x=1", "\\", "a", "B", "~", "-", "_", "é", "*", "?", "%C3%A9", "%3f",
    ]);
    prop::collection::vec(piece, 0..16).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn normalization_is_idempotent_and_leaves_no_dot_segment(p in path()) {
        if let Ok(once) = normalize(&p) {
            let twice = normalize(&once);
            prop_assert_eq!(twice.as_deref(), Ok(&*once), "not idempotent for {:?}", p);
            // Nothing left that a server could read as a separator or a dot.
            let upper = once.to_ascii_uppercase();
            for bad in ["//", "/./", "/../", "\\", ";", "%2F", "%5C", "%2E", "%3B"] {
                prop_assert!(!upper.contains(bad), "{:?} became {:?}", p, once);
            }
            prop_assert!(!once.ends_with("/.") && !once.ends_with("/.."), "{:?} became {:?}", p, once);
            prop_assert!(once.starts_with('/'));
        }
    }

    #[test]
    fn any_string_gets_an_answer(p in any::<String>()) {
        let _ = normalize(&p);
    }
}
