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
