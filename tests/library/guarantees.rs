//! docs/guarantees.md maps each guarantee of the README's "What happens when…" to the test that
//! holds it. This keeps the map true to both: its questions are the README's, and every test it
//! names exists as a `#[test]` function in the file it names.

use std::collections::BTreeSet;
use std::path::Path;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The questions of the README's "What happens when…" (`**…no server is running?**`), each on
/// one line.
fn readme_questions() -> BTreeSet<String> {
    let readme = read("README.md");
    let start = readme.find("## What happens when").expect("the section");
    let end = readme[start + 2..]
        .find("\n## ")
        .map_or(readme.len(), |at| start + 2 + at);
    readme[start..end]
        .split("**…")
        .skip(1)
        .filter_map(|rest| rest.split_once("?**"))
        .map(|(question, _)| {
            format!(
                "…{}?",
                question.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect()
}

/// The map's questions (its `### …` headings) and the tests it names (`path.rs::name`).
fn map() -> (BTreeSet<String>, Vec<(String, String)>) {
    let text = read("docs/guarantees.md");
    let questions = text
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(str::to_owned)
        .collect();
    let tests = text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| quoted.split_once(".rs::"))
        .map(|(path, name)| (format!("{path}.rs"), name.to_owned()))
        .collect();
    (questions, tests)
}

/// True if `code` has a function `name` with `#[test]` among the attributes before it.
fn has_test(code: &str, name: &str) -> bool {
    let signature = format!("fn {name}(");
    code.match_indices(&signature).any(|(at, _)| {
        let before = &code[..at];
        let item_start = before.rfind(['}', ';']).map_or(0, |end| end + 1);
        before[item_start..].contains("#[test]")
    })
}

#[test]
fn the_guarantee_map_asks_the_readmes_questions() {
    let (questions, _) = map();
    let readme = readme_questions();
    assert!(
        readme.len() >= 10,
        "found the README's questions: {readme:?}"
    );
    assert_eq!(questions, readme, "docs/guarantees.md's ### headings");
}

#[test]
fn every_test_the_guarantee_map_names_exists() {
    let (_, tests) = map();
    assert!(
        tests.len() >= 30,
        "the map names its tests: {}",
        tests.len()
    );
    for (path, name) in tests {
        assert!(
            has_test(&read(&path), &name),
            "docs/guarantees.md names {path}::{name}, which is no test there"
        );
    }
}

#[test]
fn a_renamed_or_missing_test_is_caught() {
    let code = "#[test]\nfn holds() {}\n\nfn helper() {}\n#[test]\n#[ignore]\nfn later() {}\n";
    assert!(has_test(code, "holds") && has_test(code, "later"));
    assert!(!has_test(code, "helper"), "a function without #[test]");
    assert!(!has_test(code, "hold"), "a prefix of a name");
}
