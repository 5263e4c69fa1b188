//! The layers of the library and the tools, read from the sources, so that a feature cannot
//! quietly undo them: every `use` tree and every `crate::`, `super::` or `self::` path in code
//! is resolved to the module file it names (a name the crate root re-exports, to the module
//! that defines it), and the rules below are checked on the graph of those files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file as a module: `driver::guard` for `src/driver/guard.rs`, "" for the root.
struct Module {
    name: String,
    path: PathBuf,
    code: String,
}

/// The modules of the crate whose root is `root_file` (lib.rs or a binary's main.rs), with
/// comments left out.
fn crate_modules(root_file: &Path) -> Vec<Module> {
    let base = root_file.parent().unwrap();
    let mut modules = Vec::new();
    let mut pending = vec![(String::new(), root_file.to_path_buf())];
    while let Some((name, path)) = pending.pop() {
        let code = code_of(&std::fs::read_to_string(&path).unwrap());
        let dir = match name.is_empty() {
            true => base.to_path_buf(),
            false => match path.file_name().unwrap() == "mod.rs" {
                true => path.parent().unwrap().to_path_buf(),
                false => path.with_extension(""),
            },
        };
        for child in declared_modules(&code) {
            let file = [
                dir.join(format!("{child}.rs")),
                dir.join(&child).join("mod.rs"),
            ]
            .into_iter()
            .find(|file| file.exists());
            if let Some(file) = file {
                pending.push((join(&name, &child), file));
            }
        }
        modules.push(Module { name, path, code });
    }
    modules
}

fn join(parent: &str, child: &str) -> String {
    match parent.is_empty() {
        true => child.to_owned(),
        false => format!("{parent}::{child}"),
    }
}

/// The text without comments (doc comments name paths that are no imports).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file declares with `mod name;` (its own inline `mod tests { … }` is part of
/// the file).
fn declared_modules(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// Every path of every `use` tree in `code`, expanded (`a::{b, c::d}` is `a::b` and
/// `a::c::d`), each with the name it brings in.
fn uses_in(code: &str) -> Vec<(Vec<String>, Option<String>)> {
    let mut uses = Vec::new();
    let mut rest = code;
    while let Some(at) = find_use(rest) {
        let tree = &rest[at..];
        let end = tree.find(';').unwrap_or(tree.len());
        expand(&tree[..end], &mut Vec::new(), &mut uses);
        rest = &tree[end..];
    }
    uses
}

/// Every path in `code`: those of its `use` trees, and every inline `crate::`, `super::` or
/// `self::` path.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut paths: Vec<_> = uses_in(code).into_iter().map(|(path, _)| path).collect();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(root) {
            let start = from + found;
            from = start + root.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = code[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(split(&path));
        }
    }
    paths
}

/// Where the next `use` tree starts (after `use `), at the start of a statement.
fn find_use(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = code[from..].find("use ") {
        let at = from + found;
        from = at + 4;
        let before = code[..at].trim_end();
        let starts_statement = before.is_empty()
            || before.ends_with(';')
            || before.ends_with('{')
            || before.ends_with('}')
            || before.ends_with(']')
            || before.ends_with("pub")
            || before.ends_with(')');
        let word_before = code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if starts_statement && !word_before {
            return Some(at + 4);
        }
    }
    None
}

fn split(path: &str) -> Vec<String> {
    path.split("::")
        .filter(|segment| !segment.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Expands one `use` tree under `prefix`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Option<String>)>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let mut parts = tree.split(" as ");
        let path = parts.next().unwrap_or(tree);
        let mut full = prefix.clone();
        full.extend(split(path).into_iter().filter(|segment| segment != "*"));
        if full.last().is_some_and(|segment| segment == "self") {
            full.pop();
        }
        let glob = tree.ends_with('*');
        let name = match parts.next() {
            Some(alias) => Some(alias.trim().to_owned()),
            None => full.last().cloned().filter(|_| !glob),
        };
        out.push((full, name));
        return;
    };
    let depth = prefix.len();
    prefix.extend(split(&tree[..open]));
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut level, mut start) = (0, 0);
    for (at, c) in inner.char_indices() {
        match c {
            '{' => level += 1,
            '}' => level -= 1,
            ',' if level == 0 => {
                expand(&inner[start..at], prefix, out);
                start = at + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        expand(&inner[start..], prefix, out);
    }
    prefix.truncate(depth);
}

/// The crate's graph: each module's set of the other modules it names.
struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
    files: BTreeMap<String, PathBuf>,
}

/// What a crate's modules are and what each brings into scope with `use`.
struct Scopes {
    known: BTreeSet<String>,
    /// Per module, a name it imports, to the absolute path it stands for.
    imported: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Scopes {
    /// The module that defines what the absolute `path` names: its longest leading part that
    /// is a module, followed through that module's imports (a re-export) when the next
    /// segment is a name it imports.
    fn resolve(&self, path: &[String], hops: usize) -> Option<String> {
        let n = (0..=path.len())
            .rev()
            .find(|&n| self.known.contains(&path[..n].join("::")))?;
        let module = path[..n].join("::");
        let followed = path
            .get(n)
            .and_then(|name| self.imported[&module].get(name));
        match followed {
            Some(target) if hops < 16 => {
                let mut next = target.clone();
                next.extend(path[n + 1..].iter().cloned());
                self.resolve(&next, hops + 1).or(Some(module))
            }
            _ => Some(module),
        }
    }
}

fn graph(root_file: &Path) -> Graph {
    let modules = crate_modules(root_file);
    let known = modules.iter().map(|m| m.name.clone()).collect();
    let mut imported = BTreeMap::new();
    for module in &modules {
        let children = declared_modules(&module.code);
        let names = uses_in(&module.code)
            .into_iter()
            .filter_map(|(path, name)| Some((name?, absolute(&module.name, &children, &path)?)))
            .collect();
        imported.insert(module.name.clone(), names);
    }
    let scopes = Scopes { known, imported };
    let mut edges = BTreeMap::new();
    for module in &modules {
        let mut named = BTreeSet::new();
        let children = declared_modules(&module.code);
        for path in paths_in(&module.code) {
            let Some(absolute) = absolute(&module.name, &children, &path) else {
                continue;
            };
            // A module declares, re-exports and may use its own submodules: only what a
            // module names beside or above itself counts.
            if let Some(target) = scopes.resolve(&absolute, 0) {
                if !under(&target, &module.name) {
                    named.insert(target);
                }
            }
        }
        edges.insert(module.name.clone(), named);
    }
    let files = modules.into_iter().map(|m| (m.name, m.path)).collect();
    Graph { edges, files }
}

/// `path` from the crate root, or `None` for another crate's.
fn absolute(module: &str, children: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = split(module);
    let mut segments = path.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            base.clear();
            segments.next();
        }
        Some("self") => {
            segments.next();
        }
        Some("super") => {
            while segments.peek().map(|s| s.as_str()) == Some("super") {
                segments.next();
                base.pop();
            }
        }
        Some(first) if children.iter().any(|child| child == first) => {}
        _ => return None,
    }
    base.extend(segments.cloned());
    Some(base)
}

impl Graph {
    fn names(&self, module: &str) -> &BTreeSet<String> {
        &self.edges[module]
    }

    /// Every circle of modules (each as the path around it), found by a depth-first search;
    /// the crate root, which declares and re-exports everything, is left out.
    fn circles(&self) -> Vec<Vec<String>> {
        let mut circles = Vec::new();
        let mut done = BTreeSet::new();
        for start in self.edges.keys().filter(|name| !name.is_empty()) {
            let mut stack = vec![start.clone()];
            self.walk(&mut stack, &mut done, &mut circles);
        }
        circles
    }

    fn walk(
        &self,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<Vec<String>>,
    ) {
        let current = stack.last().unwrap().clone();
        if done.contains(&current) {
            return;
        }
        for next in self.names(&current) {
            if next.is_empty() {
                continue;
            }
            if let Some(at) = stack.iter().position(|name| name == next) {
                let mut circle = stack[at..].to_vec();
                circle.push(next.clone());
                circles.push(circle);
            } else {
                stack.push(next.clone());
                self.walk(stack, done, circles);
                stack.pop();
            }
        }
        done.insert(current);
    }

    fn file(&self, module: &str) -> String {
        self.files[module].display().to_string()
    }
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn library() -> Graph {
    graph(&repository().join("src/lib.rs"))
}

/// Every crate root of the tools: their library and each binary.
fn tool_crates() -> Vec<PathBuf> {
    let bin = repository().join("cli/src/bin");
    let mut roots = vec![repository().join("cli/src/lib.rs")];
    for entry in std::fs::read_dir(bin).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => roots.push(path.join("main.rs")),
            false => roots.push(path),
        }
    }
    roots
}

/// True if `module` is `layer` or one of its submodules (every module is under the root).
fn under(module: &str, layer: &str) -> bool {
    layer.is_empty() || module == layer || module.starts_with(&format!("{layer}::"))
}

#[test]
fn the_driver_names_nothing_above_it() {
    let graph = library();
    let above = [
        "protocol", "message", "client", "server", "handler", "services",
    ];
    let mut checked = 0;
    for (module, named) in &graph.edges {
        if !under(module, "driver") {
            continue;
        }
        checked += 1;
        for target in named {
            assert!(
                !above.iter().any(|layer| under(target, layer)),
                "{} (the driver) names {target}, a layer above it",
                graph.file(module)
            );
        }
    }
    assert!(checked >= 10, "found the driver's modules");
}

#[test]
fn the_client_and_the_server_never_name_each_other() {
    let graph = library();
    for (module, named) in &graph.edges {
        for (from, to) in [("client", "server"), ("server", "client")] {
            if under(module, from) {
                let crossing: Vec<_> = named.iter().filter(|t| under(t, to)).collect();
                assert!(
                    crossing.is_empty(),
                    "{} names {crossing:?}",
                    graph.file(module)
                );
            }
        }
    }
}

#[test]
fn no_module_of_the_library_or_the_tools_imports_in_a_circle() {
    let mut roots = vec![repository().join("src/lib.rs")];
    roots.extend(tool_crates());
    for root in roots {
        let circles = graph(&root).circles();
        assert!(
            circles.is_empty(),
            "import circles in the crate of {}: {circles:?}",
            root.display()
        );
    }
}

/// The bundled services are written as an application would write them: through what the
/// crate makes public (its root's re-exports and its public modules, such as `protocol`), so
/// that they show the public API and cannot lean on the internals. Checked by module: an item
/// a public module keeps to the crate (`protocol::quote`) passes.
#[test]
fn the_services_use_the_library_through_its_public_paths_only() {
    let graph = library();
    let root = code_of(&std::fs::read_to_string(repository().join("src/lib.rs")).unwrap());
    let public: BTreeSet<String> = declared_modules(&root)
        .into_iter()
        .filter(|name| root.contains(&format!("pub mod {name};")))
        .collect();
    let mut checked = 0;
    for module in graph.edges.keys() {
        if !under(module, "services") {
            continue;
        }
        checked += 1;
        let code = code_of(&std::fs::read_to_string(&graph.files[module]).unwrap());
        // Their unit tests may build what only the crate can (a request's properties).
        let code = code.split("#[cfg(test)]").next().unwrap_or_default();
        for path in paths_in(code) {
            if path.first().map(String::as_str) != Some("crate") || path.len() < 2 {
                continue;
            }
            let first = &path[1];
            let through_root = !graph.edges.contains_key(first.as_str());
            assert!(
                through_root || public.contains(first),
                "{} names crate::{}: the services use the library's public paths only",
                graph.file(module),
                path[1..].join("::")
            );
        }
    }
    assert!(checked >= 2, "found the services");
}

/// The checks above see what they should: a circle, a driver naming the client, and a
/// private path, each in a made-up crate, are found.
#[test]
fn the_layer_checks_find_what_they_look_for() {
    let dir = std::env::temp_dir().join(format!("fib-rpc-layers-{}", std::process::id()));
    let write = |file: &str, text: &str| {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\nmod driver;\npub use a::Thing;\n");
    write("a.rs", "use crate::b::{self, Other};\npub struct Thing;\n");
    write("b.rs", "pub struct Other(crate::Thing);\n");
    write(
        "driver/mod.rs",
        "mod inner;\n// crate::a is only named in a comment\n",
    );
    write("driver/inner.rs", "use super::super::a::{Thing as T};\n");
    let graph = graph(&dir.join("lib.rs"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        graph.circles(),
        [vec!["a".to_owned(), "b".into(), "a".into()]]
    );
    assert_eq!(graph.names("driver"), &BTreeSet::new());
    assert_eq!(graph.names("driver::inner"), &BTreeSet::from(["a".into()]));
}
