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

/// glibc malloc settings for a long-lived daemon, before any thread exists:
/// a fixed mmap threshold (glibc otherwise raises it to the largest block
/// freed so far, so after the first multi-MiB backup part every later part
/// comes from the heap and its high-water mark stays resident) and at most
/// two arenas (one per tokio worker would keep freed memory per thread).
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called from
    // main before the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Give freed heap memory back to the kernel (after a job: its buffers are
/// gone, and an idle daemon should not keep their pages resident).
#[allow(unsafe_code)]
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
