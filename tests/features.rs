//! Every feature in Cargo.toml is listed where users look for it: the
//! crate docs and the README.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn every_feature_is_in_the_crate_docs_and_the_readme() {
    let manifest = read("Cargo.toml");
    let features: Vec<&str> = manifest
        .split("\n[features]\n")
        .nth(1)
        .expect("a [features] table")
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim()))
        // `default` names the others.
        .filter(|name| !name.is_empty() && !name.starts_with('#') && *name != "default")
        .collect();
    assert!(features.len() >= 6, "{features:?}");
    let lib = read("src/lib.rs");
    let readme = read("README.md");
    for feature in features {
        let row = format!("| `{feature}` |");
        assert!(
            lib.contains(&format!("//! {row}")),
            "src/lib.rs lists no `{feature}`"
        );
        assert!(readme.contains(&row), "README.md lists no `{feature}`");
    }
}
