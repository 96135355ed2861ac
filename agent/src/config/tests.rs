//! Tests that walk the generated schema: every key of every section, nested
//! table and named array, found from the `fragment!` declarations, not from
//! a list kept by hand.

use super::schema::{Merge, Schema};
use super::RawConfig;
use toml::{Table, Value};

/// The name every array entry of the main file and the drop-ins has, so they merge.
const ENTRY: &str = "entry";

/// One key in the schema: the tables (`false`) and arrays of tables
/// (`true`) leading to it, and the key.
#[derive(Debug, Clone)]
struct Place {
    path: Vec<(&'static str, bool)>,
    key: &'static str,
    doc: &'static str,
    samples: [Value; 2],
}

impl Place {
    /// `[a.b]` / `[[a.b]]` (empty for the top level).
    fn header(&self) -> String {
        let dotted: Vec<&str> = self.path.iter().map(|(n, _)| *n).collect();
        match self.path.last() {
            None => String::new(),
            Some((_, true)) => format!("[[{}]]", dotted.join(".")),
            Some((_, false)) => format!("[{}]", dotted.join(".")),
        }
    }

    /// The key of a named array that entries merge by.
    fn is_entry_name(&self) -> bool {
        self.key == "name" && self.path.last().is_some_and(|(_, array)| *array)
    }

    fn describe(&self) -> String {
        match self.header() {
            h if h.is_empty() => self.key.to_owned(),
            h => format!("{h} {}", self.key),
        }
    }
}

fn walk(schema: &'static Schema, path: &[(&'static str, bool)], out: &mut Vec<Place>) {
    for k in schema.keys {
        out.push(Place {
            path: path.to_vec(),
            key: k.name,
            doc: k.doc,
            samples: (k.samples)(),
        });
    }
    for (array, subs) in [(false, schema.tables), (true, schema.arrays)] {
        for (name, sub) in subs {
            let mut p = path.to_vec();
            p.push((name, array));
            walk(sub, &p, out);
        }
    }
}

fn places() -> Vec<Place> {
    let mut out = Vec::new();
    walk(&RawConfig::SCHEMA, &[], &mut out);
    out
}

/// Set `key = value` at `path` in `doc`, creating tables and the named
/// array entry on the way.
fn set(doc: &mut Table, path: &[(&str, bool)], key: &str, value: Value) {
    let mut t = doc;
    for (name, array) in path {
        let slot = t.entry(name.to_string()).or_insert_with(|| {
            if *array {
                let mut e = Table::new();
                e.insert("name".into(), ENTRY.into());
                Value::Array(vec![Value::Table(e)])
            } else {
                Value::Table(Table::new())
            }
        });
        t = match slot {
            Value::Array(a) => a[0].as_table_mut().expect("an entry"),
            Value::Table(x) => x,
            other => panic!("{other:?} at {name}"),
        };
    }
    t.insert(key.into(), value);
}

fn parse(doc: &Table) -> RawConfig {
    let text = toml::to_string(doc).expect("serialising a test document");
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn as_value(raw: &RawConfig) -> Value {
    Value::try_from(raw).expect("a raw fragment serialises")
}

/// The main file with every key of the schema written (first sample).
fn main_file(places: &[Place]) -> Table {
    let mut main = Table::new();
    for p in places.iter().filter(|p| !p.is_entry_name()) {
        set(&mut main, &p.path, p.key, p.samples[0].clone());
    }
    main
}

#[test]
fn config_schema_walk_a_drop_in_wins_for_every_key() {
    let places = places();
    // Sanity: the walk reaches the nested tables and both named arrays.
    for want in [
        "[backup] connection",
        "[metrics] textfile_dir",
        "[luks.policy] cipher",
        "[[luks.volumes]] keyfile",
        "[[destinations]] type",
        "timezone",
    ] {
        assert!(
            places.iter().any(|p| p.describe() == want),
            "the schema walk misses {want}"
        );
    }
    let main = main_file(&places);
    let mut checked = 0;
    for p in places.iter().filter(|p| !p.is_entry_name()) {
        let mut dropin = Table::new();
        set(&mut dropin, &p.path, p.key, p.samples[1].clone());
        let mut merged = parse(&main);
        merged.merge(parse(&dropin));

        let mut expected = main.clone();
        set(&mut expected, &p.path, p.key, p.samples[1].clone());
        assert_eq!(
            as_value(&merged),
            as_value(&parse(&expected)),
            "a drop-in setting {} did not win over the main file (or changed other keys)",
            p.describe()
        );
        checked += 1;
    }
    assert!(checked > 80, "only {checked} keys walked");
}

#[test]
fn config_schema_walk_entries_merge_by_name() {
    let places = places();
    let main = main_file(&places);
    let names: Vec<&Place> = places.iter().filter(|p| p.is_entry_name()).collect();
    assert_eq!(
        names.len(),
        2,
        "[[destinations]] and [[luks.volumes]]: {names:?}"
    );
    for p in names {
        // An entry of another name is a new entry; the main file's stays whole.
        let mut dropin = Table::new();
        set(&mut dropin, &p.path, "name", "another".into());
        let mut merged = as_value(&{
            let mut m = parse(&main);
            m.merge(parse(&dropin));
            m
        });
        let mut at = &mut merged;
        for (seg, _) in &p.path {
            at = &mut at[*seg];
        }
        let entries = at.as_array().expect("entries");
        assert_eq!(entries.len(), 2, "{}: {entries:?}", p.describe());
        assert_eq!(entries[1]["name"].as_str(), Some("another"));
        assert!(entries[0].as_table().unwrap().len() > 1, "{entries:?}");
    }
}

#[test]
fn config_schema_every_key_is_documented_in_the_shipped_agent_toml() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    // (header, key) of every `key =` line, commented out or not.
    let mut header = String::new();
    let mut documented = std::collections::BTreeSet::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            header = t.split('#').next().unwrap().trim().to_owned();
            continue;
        }
        let t = t.trim_start_matches('#').trim_start();
        if let Some((k, _)) = t.split_once('=') {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                documented.insert((header.clone(), k.to_owned()));
            }
        }
    }
    let missing: Vec<String> = places()
        .iter()
        .filter(|p| !documented.contains(&(p.header(), p.key.to_owned())))
        .map(Place::describe)
        .collect();
    assert!(
        missing.is_empty(),
        "config/agent.toml does not show these keys: {missing:?}"
    );
    for p in places() {
        assert!(!p.doc.trim().is_empty(), "{} has no doc line", p.describe());
    }
}

/// Drop-ins through the real loader: the typed configuration holds the
/// drop-in's values, in nested tables and named entries too.
#[test]
fn config_drop_ins_reach_the_typed_configuration() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().display();
    let main = d.path().join("agent.toml");
    std::fs::write(
        &main,
        format!(
            "state_dir = \"{dir}/state\"\n[audit]\nsigning_key_file = \"{dir}/audit.pem\"\n\
             [[destinations]]\nname = \"local\"\ntype = \"filesystem\"\npath = \"/srv/a\"\n\
             [luks]\n[luks.policy]\ncipher = \"aes-xts-plain64\"\n\
             [[luks.volumes]]\nname = \"data\"\ndevice = \"/dev/a\"\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(d.path().join("agent.d")).unwrap();
    std::fs::write(
        d.path().join("agent.d/50-x.toml"),
        "[metrics]\ntextfile_dir = \"/m\"\n[[destinations]]\nname = \"local\"\nprefix = \"p\"\n\
         [luks.policy]\ncipher = \"serpent-xts-plain64\"\n\
         [[luks.volumes]]\nname = \"data\"\nrequire_open = false\n",
    )
    .unwrap();
    let c = super::load(&main).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(c.textfile_dir, std::path::Path::new("/m"));
    assert_eq!(c.destinations.len(), 1);
    assert_eq!(c.destinations[0].prefix, "p");
    assert_eq!(
        c.destinations[0].kind,
        super::DestinationKind::Filesystem {
            path: "/srv/a".into()
        }
    );
    let luks = c.luks.unwrap();
    assert_eq!(luks.policy.cipher, "serpent-xts-plain64");
    assert_eq!(luks.policy.key_bits, 512);
    assert_eq!(luks.volumes.len(), 1);
    assert!(!luks.volumes[0].require_open);
    assert_eq!(luks.volumes[0].device, std::path::Path::new("/dev/a"));
    assert_eq!(luks.header_backup_dir, d.path().join("state/luks-headers"));
}

/// One file naming an entry twice is a mistake, reported at the second name.
#[test]
fn config_an_entry_name_used_twice_in_one_file_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let main = d.path().join("agent.toml");
    std::fs::write(
        &main,
        "[luks]\n[[luks.volumes]]\nname = \"a\"\ndevice = \"/dev/a\"\n[[luks.volumes]]\nname = \"a\"\ndevice = \"/dev/b\"\n",
    )
    .unwrap();
    let p = super::load(&main).unwrap_err().to_string();
    assert!(
        p.contains("agent.toml:6:8: [[luks.volumes]] name \"a\" is used twice in this file"),
        "{p}"
    );
}
