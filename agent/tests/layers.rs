//! The import graph of `agent/src` points one way (ARCHITECTURE.md, "Layers"):
//!
//! ```text
//! triggers (daemon, control, cli) → runner → duties (jobs) → config → leaves
//! ```
//!
//! Leaves (the sinks — audit log, outbox, metrics store —, fs-safety, the
//! S3/Proxmox/PostgreSQL clients, crypto, schedules, pages) import only other
//! leaves; a leaf that needs a configuration value takes it as a parameter.
//! And no module, at file granularity, reaches itself through its imports.
//! This test reads every `use` and every `crate::`/`super::`/child-module path
//! of the sources, so the rule is enforced, not hoped for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer of each top-level module: a module may import its own layer
/// or a lower one, never a higher one.
const LAYERS: &[(&str, u8)] = &[
    ("util", 0),
    ("fsx", 0),
    ("schedule", 0),
    ("window", 0),
    ("crypto", 0),
    ("metrics", 0),
    ("outbox", 0),
    ("audit", 0),
    ("alert", 0),
    ("store", 0),
    ("pve", 0),
    ("pg", 0),
    ("logging", 0),
    ("progress", 0),
    ("hold", 0),
    ("tls_floor", 0),
    ("config", 1),
    ("jobs", 2),
    ("runner", 3),
    ("daemon", 4),
    ("control", 4),
    ("cli", 4),
];

const LAYER_NAMES: [&str; 5] = ["leaf", "config", "duty", "runner", "trigger"];

/// Source files by module path (`jobs::backup::stream`); the crate root is "".
type Sources = BTreeMap<String, String>;

fn read_tree(root: &Path) -> Sources {
    fn walk(dir: &Path, root: &Path, out: &mut Sources) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    walk(&p, root, out);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            if parts == ["main"] {
                continue; // the binary: a trigger above everything
            }
            out.insert(parts.join("::"), std::fs::read_to_string(&p).unwrap());
        }
    }
    let mut out = Sources::new();
    walk(root, root, &mut out);
    out
}

/// The code without comments, string and char literals (a path in a doc
/// comment or a message is not an import), and without inline test modules
/// (`#[cfg(test)] mod tests { use super::*; … }` names the file's own module,
/// and test code may reach anywhere).
fn code_only(src: &str) -> String {
    without_test_modules(&strip(src))
}

/// Remove every `#[cfg(test)] mod name { … }` block (braces matched).
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find("#[cfg(test)]") {
        let after = rest[i + "#[cfg(test)]".len()..].trim_start();
        let inline_mod = after
            .strip_prefix("mod ")
            .and_then(|m| m.split_once(['{', ';']))
            .is_some_and(|(name, _)| {
                let name = name.trim();
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && after["mod ".len() + name.len()..]
                        .trim_start()
                        .starts_with('{')
            });
        if !inline_mod {
            out.push_str(&rest[..i + 1]);
            rest = &rest[i + 1..];
            continue;
        }
        out.push_str(&rest[..i]);
        let open = i + rest[i..].find('{').unwrap_or(0);
        let mut depth = 0usize;
        let mut end = rest.len();
        for (k, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The code without comments, string and char literals.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' || (b[i] == b'r' && matches!(b.get(i + 1), Some(b'"' | b'#'))) {
            // Plain or raw string.
            let raw = b[i] == b'r';
            let mut hashes = 0;
            i += 1;
            if raw {
                while b.get(i) == Some(&b'#') {
                    hashes += 1;
                    i += 1;
                }
                i += 1;
            }
            loop {
                if i >= b.len() {
                    break;
                }
                if !raw && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"' && b[i + 1..].iter().take(hashes).all(|c| *c == b'#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // 'x'
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Every path the code names, as segments: `use` trees expanded (`a::{b, c::d}`
/// gives `a::b` and `a::c::d`) and every other `x::y` path.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    let mut others = String::with_capacity(code.len());
    // `use` statements, braces expanded; the rest of the code is scanned below.
    while let Some(i) = find_word(rest, "use") {
        let after = &rest[i + 3..];
        let Some(end) = after.find(';') else { break };
        expand(&after[..end], &mut Vec::new(), &mut out);
        others.push_str(&rest[..i]);
        others.push(' ');
        rest = &after[end..];
    }
    others.push_str(rest);
    // Inline paths: identifier(::identifier)+.
    let bytes: Vec<char> = others.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if is_ident_start(bytes[i]) && (i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':') {
            let mut segs = Vec::new();
            let mut j = i;
            loop {
                let s = j;
                while j < bytes.len() && is_ident(bytes[j]) {
                    j += 1;
                }
                segs.push(bytes[s..j].iter().collect::<String>());
                if j + 2 < bytes.len()
                    && bytes[j] == ':'
                    && bytes[j + 1] == ':'
                    && is_ident_start(bytes[j + 2])
                {
                    j += 2;
                } else {
                    break;
                }
            }
            if segs.len() > 1 {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(k) = s[from..].find(w) {
        let at = from + k;
        let before = at == 0 || !is_ident(b[at - 1] as char);
        let after = b.get(at + w.len()).is_none_or(|c| c.is_ascii_whitespace());
        if before && after {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

/// Expand a use tree (`a::{b, c::{d, e}}`) under `prefix`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(brace) = tree.find('{') {
        let head: Vec<String> = tree[..brace]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let inner = &tree[brace + 1..tree.rfind('}').unwrap_or(tree.len())];
        let n = prefix.len();
        prefix.extend(head);
        for part in split_top(inner) {
            expand(part, prefix, out);
        }
        prefix.truncate(n);
    } else {
        let first = tree.split(" as ").next().unwrap_or("").trim();
        let mut p = prefix.clone();
        p.extend(
            first
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "*")
                .map(str::to_owned),
        );
        if !p.is_empty() {
            out.push(p);
        }
    }
}

/// Split at commas not inside braces.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The module a path names, resolved from `from`: the longest existing
/// module prefix (`crate::jobs::backup::manifest::Manifest` → `jobs::backup::manifest`).
fn resolve(from: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let here: Vec<&str> = if from.is_empty() {
        vec![]
    } else {
        from.split("::").collect()
    };
    let mut abs: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => {
            let mut base: Vec<String> = here.iter().map(|s| (*s).to_owned()).collect();
            let mut k = 0;
            while path.get(k).is_some_and(|s| s == "super") {
                base.pop();
                k += 1;
            }
            base.extend(path[k..].iter().cloned());
            return longest(&base, modules);
        }
        Some("self") => here.iter().map(|s| (*s).to_owned()).collect(),
        Some(first) => {
            // A child module of this one, named relatively.
            let mut child: Vec<String> = here.iter().map(|s| (*s).to_owned()).collect();
            child.push(first.to_owned());
            if !modules.contains(&child.join("::")) {
                return None;
            }
            let mut base: Vec<String> = here.iter().map(|s| (*s).to_owned()).collect();
            base.extend(path.iter().cloned());
            return longest(&base, modules);
        }
        None => return None,
    };
    abs.extend(path[1..].iter().cloned());
    longest(&abs, modules)
}

fn longest(abs: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=abs.len())
        .rev()
        .map(|n| abs[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Module → the modules it imports (itself excluded).
fn graph(src: &Sources) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = src.keys().cloned().collect();
    src.iter()
        .map(|(m, text)| {
            let deps = paths(&code_only(text))
                .iter()
                .filter_map(|p| resolve(m, p, &modules))
                .filter(|d| d != m && !d.is_empty())
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

fn layer(module: &str) -> Option<u8> {
    let top = module.split("::").next()?;
    LAYERS.iter().find(|(n, _)| *n == top).map(|(_, l)| *l)
}

/// Every violation: an edge to a higher layer, a top-level module missing
/// from [`LAYERS`], and each cycle.
fn violations(src: &Sources) -> Vec<String> {
    let g = graph(src);
    let mut out = Vec::new();
    for (from, deps) in &g {
        if from.is_empty() {
            continue;
        }
        let Some(lf) = layer(from) else {
            out.push(format!(
                "{from}: top-level module not placed in a layer (tests/layers.rs LAYERS)"
            ));
            continue;
        };
        for to in deps {
            if let Some(lt) = layer(to) {
                if lt > lf {
                    out.push(format!(
                        "{from} ({}) imports {to} ({}): a {} never imports a {}",
                        LAYER_NAMES[lf as usize],
                        LAYER_NAMES[lt as usize],
                        LAYER_NAMES[lf as usize],
                        LAYER_NAMES[lt as usize]
                    ));
                }
            }
        }
    }
    out.extend(cycles(&g));
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.g.contains_key(w) {
                    continue;
                }
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(lw));
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(iw));
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort_unstable();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
        .into_iter()
        .map(|c| format!("import cycle: {}", c.join(" ⇄ ")))
        .collect()
}

#[test]
fn the_import_graph_points_one_way_and_has_no_cycle() {
    let src = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(src.len() > 40, "read only {} modules", src.len());
    let v = violations(&src);
    assert!(v.is_empty(), "layering violations:\n  {}", v.join("\n  "));
}

#[test]
fn a_duty_that_imports_the_control_plane_is_caught() {
    let mut src = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let backup = src.get_mut("jobs::backup").unwrap();
    backup.push_str("\nuse crate::control::Shared;\n");
    let v = violations(&src);
    assert!(
        v.iter()
            .any(|m| m.starts_with("jobs::backup (duty) imports control (trigger)")),
        "{v:?}"
    );
}

#[test]
fn a_leaf_reaching_up_to_the_configuration_and_a_cycle_between_two_files_are_caught() {
    let tree = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut up = tree.clone();
    up.get_mut("metrics")
        .unwrap()
        .push_str("\nfn f(c: &crate::config::Config) {}\n");
    let v = violations(&up);
    assert!(
        v.iter()
            .any(|m| m.starts_with("metrics (leaf) imports config (config)")),
        "{v:?}"
    );
    let mut cycle = tree;
    cycle
        .get_mut("fsx")
        .unwrap()
        .push_str("\nuse crate::metrics::{Family, MetricsUpdate};\n");
    let v = violations(&cycle);
    assert!(
        v.iter().any(|m| m == "import cycle: fsx ⇄ metrics"),
        "{v:?}"
    );
}

#[test]
fn test_modules_anywhere_in_a_file_are_left_out() {
    let code = code_only("use crate::a::X;\n#[cfg(test)]\nmod samples {\n    use super::Y;\n    fn f() { if x { g() } }\n}\nuse crate::b::Z;\n#[cfg(test)]\nmod tests;\n");
    let p = paths(&code);
    assert!(
        p.contains(&vec!["crate".into(), "a".into(), "X".into()]),
        "{p:?}"
    );
    assert!(
        p.contains(&vec!["crate".into(), "b".into(), "Z".into()]),
        "{p:?}"
    );
    assert!(!p.iter().any(|s| s.contains(&"super".to_owned())), "{p:?}");
}

#[test]
fn imports_are_read_from_code_not_from_comments_or_strings() {
    let code = code_only("// use crate::control::x;\nlet s = \"crate::cli::y\";\nuse super::{a::B, c};\n/* crate::z */ crate::q::r();");
    let p = paths(&code);
    assert!(
        p.contains(&vec!["super".into(), "a".into(), "B".into()]),
        "{p:?}"
    );
    assert!(p.contains(&vec!["super".into(), "c".into()]), "{p:?}");
    assert!(
        p.contains(&vec!["crate".into(), "q".into(), "r".into()]),
        "{p:?}"
    );
    assert!(
        !p.iter().any(|s| s.contains(&"control".to_owned())
            || s.contains(&"cli".to_owned())
            || s.contains(&"z".to_owned())),
        "{p:?}"
    );
}
