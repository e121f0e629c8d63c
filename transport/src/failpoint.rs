//! Crash points for the crash tests: kill the broker with SIGKILL at a named write point.
//!
//! Compiled only with the cargo feature `failpoints`, which release builds never enable
//! (the workspace's end-to-end tests turn it on for the broker and agent binaries they
//! start, through those crates' own `failpoints` features). With the
//! feature, the point `<op>.<stage>` fires when the environment variable
//! `KETENPOST_FAILPOINT` names it: the process sends itself SIGKILL, so nothing after the
//! point runs, no destructor, no flush, exactly as a power cut or an OOM kill. Without the
//! feature, [`hit`] is an empty inline function.
//!
//! The broker's points: the stages of a transition (`Store::transition`): `applied` (the
//! transaction is in sled, not yet durable) and `durable` (flushed; bodies not yet
//! destroyed, caller not yet answered). In the broker's writer thread (submissions,
//! answers and the decisions queued with them: `submit`, `answer`, `receipt`, ...) a
//! third stage falls between them: `written` (sled flushed the round into its log, the
//! settling thread's `fdatasync` still to come). FG alerts: `alert.staged` (alerts queued and the
//! cursor moved, not yet durable), `alert.accepted` (a receiver took an alert, not yet
//! recorded) and `alert.recorded` (its `alert_sent` record is in sled). The agent's points are named `agent-...`. The
//! crash tests list every point they use.

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

/// The environment variable that names a test clock file (see [`test_clock`]).
pub const CLOCK_ENV: &str = "KETENPOST_TEST_CLOCK_FILE";

/// With the feature and `KETENPOST_TEST_CLOCK_FILE` set: a clock that runs `offset`
/// seconds ahead of the system clock, where the file holds the offset (a whole number,
/// re-read at most every 50 ms). So a crash test moves a broker *process* through days of
/// retention without sleeping. Without either: `None`.
#[cfg(feature = "failpoints")]
pub fn test_clock() -> Option<ketenpost_core::clock::SharedClock> {
    let path = std::env::var_os(CLOCK_ENV)?;
    Some(std::sync::Arc::new(FileClock {
        path: path.into(),
        cached: std::sync::Mutex::new(None),
    }))
}

/// Without the feature there is no test clock.
#[cfg(not(feature = "failpoints"))]
pub fn test_clock() -> Option<ketenpost_core::clock::SharedClock> {
    None
}

#[cfg(feature = "failpoints")]
#[derive(Debug)]
struct FileClock {
    path: std::path::PathBuf,
    cached: std::sync::Mutex<Option<(std::time::Instant, i64)>>,
}

#[cfg(feature = "failpoints")]
impl ketenpost_core::clock::Clock for FileClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let offset = match *cached {
            Some((at, offset)) if at.elapsed() < std::time::Duration::from_millis(50) => offset,
            _ => {
                let offset = std::fs::read_to_string(&self.path)
                    .ok()
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                *cached = Some((std::time::Instant::now(), offset));
                offset
            }
        };
        chrono::Utc::now() + chrono::Duration::seconds(offset)
    }
}

/// Crash points are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_op: &str, _stage: &str) {}
