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
//!
//! Faults are the other kind of point: where [`fault`] is asked, the code fails as the
//! system under it can (a write that returns an error), and the process goes on. The
//! environment variable `KETENPOST_FAULT` names the point and how often: `<op>.<stage>`
//! fails its first hit, `<op>.<stage>*N` its first `N`. The broker's: `spool.append` (the
//! check stage's one write of a batch's bodies fails after its bytes were written, as a
//! full disk or an I/O error can).

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

/// The environment variable that names the fault to inject, and how often.
pub const FAULT_ENV: &str = "KETENPOST_FAULT";

/// The point and the number of hits to fail that `KETENPOST_FAULT`'s value names:
/// `<point>` (once) or `<point>*N`. `None` for an empty point or a count that is not a
/// number.
pub fn parse_fault(value: &str) -> Option<(&str, u64)> {
    let (point, times) = match value.rsplit_once('*') {
        Some((point, n)) => (point, n.trim().parse().ok()?),
        None => (value, 1),
    };
    let point = point.trim();
    (!point.is_empty()).then_some((point, times))
}

/// Whether the code at `<op>.<stage>` must fail now: `KETENPOST_FAULT` names the point,
/// and fewer hits than it allows have failed so far in this process.
#[cfg(feature = "failpoints")]
pub fn fault(op: &str, stage: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static FAILED: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let value = std::env::var(FAULT_ENV).ok()?;
        parse_fault(&value).map(|(point, times)| (point.to_owned(), times))
    });
    let Some((point, times)) = armed else {
        return false;
    };
    if point.len() != op.len() + 1 + stage.len()
        || !point.starts_with(op)
        || !point.ends_with(stage)
        || point.as_bytes().get(op.len()) != Some(&b'.')
    {
        return false;
    }
    let failed = FAILED
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < *times).then_some(n + 1)
        })
        .is_ok();
    if failed {
        tracing::warn!(point = point.as_str(), "fault injected");
    }
    failed
}

/// Faults are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn fault(_op: &str, _stage: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::parse_fault;

    #[test]
    fn a_fault_names_its_point_and_how_often() {
        assert_eq!(parse_fault("spool.append"), Some(("spool.append", 1)));
        assert_eq!(parse_fault("spool.append*3"), Some(("spool.append", 3)));
        assert_eq!(parse_fault(" spool.append * 2"), Some(("spool.append", 2)));
        assert_eq!(parse_fault("spool.append*"), None);
        assert_eq!(parse_fault("spool.append*many"), None);
        assert_eq!(parse_fault(""), None);
        assert_eq!(parse_fault("*2"), None);
    }
}
