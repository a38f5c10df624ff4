//! YAML alias bombs, the attack bodies the reader must refuse before they expand: for its unit
//! tests and for `examples/yaml_parse.rs`, which measures them (included there by path).

/// The classic billion laughs, block style: level 0 holds `width` scalars, each next level
/// `width` aliases of the one before.
pub fn laughs_block(levels: usize, width: usize) -> String {
    let mut out = "a0: &a0\n".to_string() + &"  - lol\n".repeat(width);
    for l in 1..levels {
        out += &format!("a{l}: &a{l}\n");
        out += &format!("  - *a{}\n", l - 1).repeat(width);
    }
    out
}

/// The same in flow style, on one line.
pub fn laughs_flow(levels: usize, width: usize) -> String {
    let mut parts = vec![format!("a0: &a0 [{}]", vec!["lol"; width].join(", "))];
    for l in 1..levels {
        let alias = format!("*a{}", l - 1);
        parts.push(format!("a{l}: &a{l} [{}]", vec![alias; width].join(", ")));
    }
    format!("{{{}}}\n", parts.join(", "))
}

/// One anchor of `scalars` scalars and a sequence of `aliases` aliases of it, as two flow
/// sequences (few alias jumps, many nodes): `(anchored, aliasing)`.
pub fn wide(scalars: usize, aliases: usize) -> (String, String) {
    (
        format!("&a [{}]", vec!["x"; scalars].join(",")),
        format!("[{}]", vec!["*a"; aliases].join(",")),
    )
}
