//! Small helpers shared by every module.

/// A random 128-bit id as 32 hex digits.
pub fn new_id() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode(b)
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Seconds since the epoch as a float (for metrics).
pub fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

/// The name of the invoking Unix user (for `cli:<user>` actors).
pub fn unix_user() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid{uid}"), |u| u.name)
}

/// A named fault point for the fault-injection tests (`agent/tests/faults_*.rs`):
/// compiled to nothing unless the crate is built with the `failpoints` feature;
/// then configured by the `FAILPOINTS` environment variable (the `fail` crate's
/// syntax, e.g. `backup::before_manifest=sleep(60000)`). A configured point says
/// on stderr that it was reached, so a test knows when to kill the process.
#[macro_export]
macro_rules! fault_point {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        $crate::util::fault_point_reached($name);
        fail::fail_point!($name);
    }};
}

/// Announce on stderr that a configured fault point was reached.
#[cfg(feature = "failpoints")]
pub fn fault_point_reached(name: &str) {
    if fail::list().iter().any(|(n, _)| n == name) {
        eprintln!("cloudnx-agent: fail point {name} reached");
    }
}
