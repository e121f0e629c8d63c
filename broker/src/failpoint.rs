//! Crash points for the crash tests: kill the broker with SIGKILL at a named write point.
//!
//! Compiled only with the cargo feature `failpoints`, which release builds never enable
//! (the workspace's end-to-end tests turn it on for the broker binary they start). With the
//! feature, the point `<op>.<stage>` fires when the environment variable
//! `KETENPOST_FAILPOINT` names it: the process sends itself SIGKILL, so nothing after the
//! point runs, no destructor, no flush, exactly as a power cut or an OOM kill. Without the
//! feature, [`hit`] is an empty inline function.
//!
//! The stages of a transition ([`crate::store::Store::transition`]): `applied` (the
//! transaction is in sled, not yet durable) and `durable` (flushed; bodies not yet
//! destroyed, caller not yet answered). Submissions: `submit.applied` and
//! `submit.durable` in the writer thread. The crash tests list every point they use.

/// The environment variable that names the point to crash at.
pub const ENV: &str = "KETENPOST_FAILPOINT";

/// Whether this build has crash points.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Crash here if `KETENPOST_FAILPOINT` is `<op>.<stage>`.
#[cfg(feature = "failpoints")]
pub fn hit(op: &str, stage: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok());
    let Some(point) = armed.as_deref() else {
        return;
    };
    if point.len() == op.len() + 1 + stage.len()
        && point.starts_with(op)
        && point.ends_with(stage)
        && point.as_bytes().get(op.len()) == Some(&b'.')
    {
        tracing::warn!(point, "crash point reached: SIGKILL");
        let pid = std::process::id().to_string();
        // SIGKILL from outside the process's own code paths: nothing after this runs.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        // `kill` may not be found; never go on past a crash point.
        std::process::abort();
    }
}

/// Crash points are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_op: &str, _stage: &str) {}
