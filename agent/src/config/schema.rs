//! The schema machinery: every key of every section is written once, in a
//! [`fragment!`] invocation, with its type, default (or `required` /
//! `optional`) and doc line. From that one line come the raw fragment's field
//! (spanned, `deny_unknown_fields`), its merge, its type check, its default,
//! the typed field and, for the tests, its place in the schema walk.

use super::problem::{Check, Problem};
use crate::schedule::Schedule;
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

/// An optional value that remembers where in its file it was written.
pub type Opt<T> = Option<Spanned<T>>;

/// What a default may depend on besides constants.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// This machine's host name.
    pub host_name: String,
    /// The configured (or defaulted) `host_id`.
    pub host_id: String,
    /// The configured (or defaulted) `state_dir`.
    pub state_dir: PathBuf,
}

/// A key's typed value and how it is read from what was written.
pub trait Key: Sized {
    /// What the TOML holds.
    type Raw: for<'de> Deserialize<'de> + std::fmt::Debug;
    /// The typed value, or (what is wrong, how to fix it).
    fn parse(key: &str, raw: &Self::Raw) -> Result<Self, (String, String)>;
}

macro_rules! written_as_is {
    ($($t:ty),*) => {$(
        impl Key for $t {
            type Raw = $t;
            fn parse(_: &str, raw: &$t) -> Result<Self, (String, String)> {
                Ok(raw.clone())
            }
        }
    )*};
}
written_as_is!(String, bool, u8, u32, u64);

/// Paths must be absolute: the daemon's working directory is `/`.
impl Key for PathBuf {
    type Raw = PathBuf;
    fn parse(key: &str, raw: &PathBuf) -> Result<Self, (String, String)> {
        if raw.is_absolute() {
            Ok(raw.clone())
        } else {
            Err((
                format!("`{key}` must be an absolute path, got {raw:?}"),
                "write the full path starting with /".into(),
            ))
        }
    }
}

impl<T: Key> Key for Vec<T> {
    type Raw = Vec<T::Raw>;
    fn parse(key: &str, raw: &Self::Raw) -> Result<Self, (String, String)> {
        raw.iter().map(|r| T::parse(key, r)).collect()
    }
}

impl Key for Schedule {
    type Raw = String;
    fn parse(_: &str, raw: &String) -> Result<Self, (String, String)> {
        Schedule::parse(raw).map_err(|e| {
            (
                format!("invalid schedule {raw:?}: {e}"),
                "use 5 fields: minute hour day-of-month month day-of-week, e.g. \"30 2 * * *\" (read in `timezone`)".into(),
            )
        })
    }
}

impl Key for crate::window::MaintenanceWindow {
    type Raw = String;
    fn parse(key: &str, raw: &String) -> Result<Self, (String, String)> {
        crate::window::MaintenanceWindow::parse(raw).map_err(|e| {
            (
                format!("invalid {key} {raw:?}: {e}"),
                "write DAYS HH:MM-HH:MM read in `timezone`, e.g. \"Sun 22:00-24:00\" or \"Mon-Fri 01:00-03:00\" (an end at or before the start is on the next day)".into(),
            )
        })
    }
}

impl Key for chrono_tz::Tz {
    type Raw = String;
    fn parse(_: &str, raw: &String) -> Result<Self, (String, String)> {
        raw.parse().map_err(|_| {
            (
                format!("unknown time zone {raw:?}"),
                "use an IANA zone name such as \"Asia/Kolkata\", \"Europe/Helsinki\" or \"UTC\""
                    .into(),
            )
        })
    }
}

impl Key for std::net::SocketAddr {
    type Raw = String;
    fn parse(key: &str, raw: &String) -> Result<Self, (String, String)> {
        raw.parse().map_err(|_| {
            (
                format!("{key} {raw:?} is not an address:port"),
                format!("e.g. {key} = \"0.0.0.0:7443\""),
            )
        })
    }
}

/// A default written as a literal of the raw type (`"x"` for a path or a
/// string, `14` for a number, `vec![]` for a list).
pub trait Lit<R> {
    /// The raw value.
    fn lit(self) -> R;
}
impl Lit<String> for &str {
    fn lit(self) -> String {
        self.to_owned()
    }
}
impl Lit<PathBuf> for &str {
    fn lit(self) -> PathBuf {
        self.into()
    }
}
macro_rules! lit_as_is {
    ($($t:ty),*) => {$( impl Lit<$t> for $t { fn lit(self) -> $t { self } } )*};
}
lit_as_is!(String, PathBuf, bool, u8, u32, u64);
impl<T> Lit<Vec<T>> for Vec<T> {
    fn lit(self) -> Vec<T> {
        self
    }
}

/// See [`Lit`].
pub fn lit<R, D: Lit<R>>(d: D) -> R {
    d.lit()
}

/// Report a written value its type refuses, at its span.
pub fn check_value<T: Key>(c: &mut Check, key: &str, v: &Spanned<T::Raw>) {
    if let Err((msg, hint)) = T::parse(key, v.get_ref()) {
        c.err(v.span(), msg, hint);
    }
}

/// Written values were checked file by file; only a default can fail here,
/// and that is a bug worth a problem rather than a silent refusal.
fn convert<T: Key>(key: &str, raw: &T::Raw, problems: &mut Vec<Problem>) -> Option<T> {
    match T::parse(key, raw) {
        Ok(v) => Some(v),
        Err((msg, hint)) => {
            problems
                .push(Problem::general(format!("built-in default of `{key}`: {msg}")).hint(hint));
            None
        }
    }
}

/// A key every configuration that enables the section must set.
pub fn required<T: Key>(
    v: Opt<T::Raw>,
    section: &str,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match v {
        Some(v) => convert(key, v.get_ref(), problems),
        None => {
            problems.push(
                Problem::general(format!("[{section}] is missing the required key `{key}`"))
                    .hint(format!("add `{key} = …` to [{section}] (see /usr/share/doc/cloudnx-agent/agent.toml for every key and its default)")),
            );
            None
        }
    }
}

/// A key whose absence means "not set" (`None`).
pub fn optional<T: Key>(
    v: Opt<T::Raw>,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<Option<T>> {
    match v {
        Some(v) => convert(key, v.get_ref(), problems).map(Some),
        None => Some(None),
    }
}

/// A key with a default.
pub fn defaulted<T: Key>(
    v: Opt<T::Raw>,
    key: &str,
    problems: &mut Vec<Problem>,
    default: impl FnOnce() -> T::Raw,
) -> Option<T> {
    let raw = v.map_or_else(default, Spanned::into_inner);
    convert(key, &raw, problems)
}

/// Later fragments override earlier ones, key by key, all the way down.
pub trait Merge {
    /// Merge `later` (a later file) over `self`.
    fn merge(&mut self, later: Self);
}

/// A later key wins when it is written.
pub fn merge_key<T>(into: &mut Opt<T>, later: Opt<T>) {
    if later.is_some() {
        *into = later;
    }
}

/// A table merges key by key over the same table of an earlier file.
pub fn merge_table<T: Merge>(into: &mut Option<T>, later: Option<T>) {
    match (into.as_mut(), later) {
        (Some(a), Some(b)) => a.merge(b),
        (None, b @ Some(_)) => *into = b,
        (_, None) => {}
    }
}

/// An array-of-tables entry that later files address by its name.
pub trait Named {
    /// The entry's `name`, if written.
    fn name(&self) -> Option<&Spanned<String>>;
}

fn name_of<T: Named>(e: &T) -> Option<&str> {
    e.name().map(|n| n.get_ref().as_str())
}

/// `[[…]]` entries merge by name; unnamed or new names are appended.
pub fn merge_named<T: Named + Merge>(into: &mut Vec<T>, later: Vec<T>) {
    for e in later {
        let at = name_of(&e).and_then(|n| into.iter().position(|x| name_of(x) == Some(n)));
        match at {
            Some(i) => into[i].merge(e),
            None => into.push(e),
        }
    }
}

/// Within one file a name is one entry: a second one is a mistake (across
/// files, a later entry of the same name changes the earlier one).
pub fn check_names<T: Named>(c: &mut Check, array: &str, entries: &[T]) {
    let mut seen = std::collections::BTreeSet::new();
    for n in entries.iter().filter_map(Named::name) {
        if !seen.insert(n.get_ref().as_str()) {
            c.err(
                n.span(),
                format!("[[{array}]] name {:?} is used twice in this file", n.get_ref()),
                "give every entry its own name (a drop-in's entry of the same name changes that entry)",
            );
        }
    }
}

/// A section's own rules: per-value checks beyond the type and cross-key
/// rules within one file, reported at their spans.
pub trait Rules {
    /// Record every problem of this fragment (keys are already type-checked).
    fn rules(&self, _c: &mut Check) {}
}

/// One key of the schema (for the tests that walk it).
#[cfg(test)]
#[derive(Debug)]
pub struct KeyDoc {
    /// As written in TOML.
    pub name: &'static str,
    /// Its doc line.
    pub doc: &'static str,
    /// Two different values of its raw type.
    pub samples: fn() -> [toml::Value; 2],
}

/// A fragment's keys, nested tables and named arrays of tables.
#[cfg(test)]
#[derive(Debug)]
pub struct Schema {
    /// Its keys.
    pub keys: &'static [KeyDoc],
    /// `[name]` tables within it.
    pub tables: &'static [(&'static str, &'static Schema)],
    /// `[[name]]` arrays of tables within it, merged by `name`.
    pub arrays: &'static [(&'static str, &'static Schema)],
}

/// Two different values of a raw type, for the schema walk.
#[cfg(test)]
pub trait Sample {
    /// Two distinct values.
    fn samples() -> [toml::Value; 2];
}
/// Declare a configuration fragment: the raw struct one file parses into and
/// the typed struct(s) built from the merged fragments, with every key once:
///
/// ```text
/// fragment! {
///     /// doc of the raw struct
///     raw RawX [by name];                 // `by`: [[…]] entries merge by this key
///     /// doc of the typed struct
///     #[derive(Debug, Clone)]
///     pub struct X {
///         /// doc line of the key
///         key [as "toml-name"]: Type = DEFAULT,
///     } [+ { /// doc
///            extra: Type, }]               // typed fields the caller builds
///     …more typed structs over the same raw struct…
///     [tables { name: RawTable, }]        // [name] sub-tables (Option, merged)
///     [arrays { name: RawEntry as "a.name", }] // [[a.name]] entries, merged by name
/// }
/// ```
///
/// DEFAULT is `required`, `optional` (the typed field is `Option<Type>`),
/// `(literal)` or `{|ctx| expression}` (see [`Ctx`]). `Type` implements
/// [`Key`]; its raw type is what TOML holds. The raw struct implements
/// [`Merge`] over every field, `check_all` (each written key's [`Key::parse`]
/// at its span, nested fragments, then [`Rules`]), and in tests `SCHEMA`.
/// Each typed struct gets `build(&mut raw, section, ctx, problems, extras…)`
/// (taking its keys out of the merged raw) and `written(&raw)`.
macro_rules! fragment {
    (@name $key:ident) => { stringify!($key) };
    (@name $key:ident $tname:literal) => { $tname };
    (@ty optional $ty:ty) => { Option<$ty> };
    (@ty $def:tt $ty:ty) => { $ty };
    (@value required, $v:expr, $ty:ty, $sect:expr, $name:expr, $ctx:expr, $p:expr) => {
        $crate::config::schema::required::<$ty>($v, $sect, $name, $p)
    };
    (@value optional, $v:expr, $ty:ty, $sect:expr, $name:expr, $ctx:expr, $p:expr) => {
        $crate::config::schema::optional::<$ty>($v, $name, $p)
    };
    (@value ($d:expr), $v:expr, $ty:ty, $sect:expr, $name:expr, $ctx:expr, $p:expr) => {
        $crate::config::schema::defaulted::<$ty>($v, $name, $p, || $crate::config::schema::lit($d))
    };
    (@value {|$c:ident| $d:expr}, $v:expr, $ty:ty, $sect:expr, $name:expr, $ctx:expr, $p:expr) => {{
        let $c: &$crate::config::schema::Ctx = $ctx;
        $crate::config::schema::defaulted::<$ty>($v, $name, $p, || $crate::config::schema::lit($d))
    }};
    (
        $(#[doc = $rdoc:literal])*
        raw $Raw:ident $(by $nk:ident)?;
        $(
            $(#[$gmeta:meta])*
            pub struct $G:ident {
                $(
                    $(#[doc = $doc:literal])*
                    $key:ident $(as $tname:literal)? : $ty:ty = $def:tt,
                )*
            } $(+ { $( $(#[doc = $xdoc:literal])* $x:ident : $X:ty, )* })?
        )+
        $(tables { $( $t:ident : $TRaw:ty, )* })?
        $(arrays { $( $a:ident : $ARaw:ty as $apath:literal, )* })?
    ) => {
        $(#[doc = $rdoc])*
        #[derive(Debug, Default, serde::Deserialize)]
        #[cfg_attr(test, derive(serde::Serialize))]
        #[serde(deny_unknown_fields)]
        pub struct $Raw {
            $($(
                $(#[serde(rename = $tname)])?
                $key: $crate::config::schema::Opt<<$ty as $crate::config::schema::Key>::Raw>,
            )*)+
            $($( $t: Option<$TRaw>, )*)?
            $($( #[serde(default)] $a: Vec<$ARaw>, )*)?
        }

        impl $crate::config::schema::Merge for $Raw {
            fn merge(&mut self, later: Self) {
                $($( $crate::config::schema::merge_key(&mut self.$key, later.$key); )*)+
                $($( $crate::config::schema::merge_table(&mut self.$t, later.$t); )*)?
                $($( $crate::config::schema::merge_named(&mut self.$a, later.$a); )*)?
            }
        }

        $(
            impl $crate::config::schema::Named for $Raw {
                fn name(&self) -> Option<&toml::Spanned<String>> {
                    self.$nk.as_ref()
                }
            }
        )?

        impl $Raw {
            /// Check one file's fragment: every written key against its
            /// type, the nested fragments, then the section's own rules.
            pub(crate) fn check_all(&self, c: &mut $crate::config::problem::Check) {
                $($(
                    if let Some(v) = &self.$key {
                        $crate::config::schema::check_value::<$ty>(c, $crate::config::schema::fragment!(@name $key $($tname)?), v);
                    }
                )*)+
                $($( if let Some(t) = &self.$t { t.check_all(c); } )*)?
                $($(
                    $crate::config::schema::check_names(c, $apath, &self.$a);
                    for e in &self.$a { e.check_all(c); }
                )*)?
                $crate::config::schema::Rules::rules(self, c);
            }

            /// The schema: every key, table and array of this fragment.
            #[cfg(test)]
            pub const SCHEMA: $crate::config::schema::Schema = $crate::config::schema::Schema {
                keys: &[$($(
                    $crate::config::schema::KeyDoc {
                        name: $crate::config::schema::fragment!(@name $key $($tname)?),
                        doc: concat!($($doc),*),
                        samples: <<$ty as $crate::config::schema::Key>::Raw as $crate::config::schema::Sample>::samples,
                    },
                )*)+],
                tables: &[$($( (stringify!($t), &<$TRaw>::SCHEMA), )*)?],
                arrays: &[$($( (stringify!($a), &<$ARaw>::SCHEMA), )*)?],
            };
        }

        $(
            $(#[$gmeta])*
            pub struct $G {
                $(
                    $(#[doc = $doc])*
                    pub $key: $crate::config::schema::fragment!(@ty $def $ty),
                )*
                $($( $(#[doc = $xdoc])* pub $x: $X, )*)?
            }

            impl $G {
                /// Build from the merged fragment (taking these keys out of
                /// it): defaults applied, missing required keys reported.
                #[allow(clippy::too_many_arguments)]
                pub(crate) fn build(
                    raw: &mut $Raw,
                    section: &str,
                    ctx: &$crate::config::schema::Ctx,
                    problems: &mut Vec<$crate::config::problem::Problem>,
                    $($( $x: $X, )*)?
                ) -> Option<Self> {
                    let _ = (section, ctx);
                    $(
                        let $key = $crate::config::schema::fragment!(
                            @value $def, raw.$key.take(), $ty, section,
                            $crate::config::schema::fragment!(@name $key $($tname)?), ctx, problems
                        );
                    )*
                    Some($G { $( $key: $key?, )* $($( $x, )*)? })
                }

                /// This struct's keys that the fragment has.
                #[allow(dead_code)]
                pub(crate) fn written(raw: &$Raw) -> Vec<&'static str> {
                    let mut out = Vec::new();
                    $(
                        if raw.$key.is_some() {
                            out.push($crate::config::schema::fragment!(@name $key $($tname)?));
                        }
                    )*
                    out
                }
            }
        )+
    };
}
pub(crate) use fragment;

#[cfg(test)]
mod samples {
    use super::Sample;
    use toml::Value;
    impl Sample for String {
        fn samples() -> [Value; 2] {
            ["first".into(), "second".into()]
        }
    }
    impl Sample for std::path::PathBuf {
        fn samples() -> [Value; 2] {
            ["/first".into(), "/second".into()]
        }
    }
    impl Sample for bool {
        fn samples() -> [Value; 2] {
            [false.into(), true.into()]
        }
    }
    macro_rules! int_samples {
        ($($t:ty),*) => {$( impl Sample for $t { fn samples() -> [Value; 2] { [Value::Integer(1), Value::Integer(2)] } } )*};
    }
    int_samples!(u8, u32, u64);
    impl<T: Sample> Sample for Vec<T> {
        fn samples() -> [Value; 2] {
            T::samples().map(|v| Value::Array(vec![v]))
        }
    }
}
