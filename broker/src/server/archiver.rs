//! The audit archiver: every `timers.audit_archive_ms` it moves the oldest audit records
//! from the database into the archive file ([`crate::audit::archive`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error};

use super::state::Shared;

/// Run until the broker stops.
pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(shared.config.timers.audit_archive_ms);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        let (s, stopping) = (shared.clone(), stop.clone());
        let pass = move || {
            s.store
                .archive_audit_while(&s.audit, || !*stopping.borrow())
        };
        match tokio::task::spawn_blocking(pass).await {
            Ok(Ok(0)) => {}
            Ok(Ok(moved)) => debug!(moved, "audit records archived"),
            // Nothing is lost: the records stay in the database and the next pass tries
            // again.
            Ok(Err(e)) => {
                error!(cause = %e, "cannot archive audit records; they stay in the database")
            }
            Err(e) => error!(cause = %e, "the audit archiver failed"),
        }
    }
}
