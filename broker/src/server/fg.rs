//! Live FG reads: `FgRead` over a connection whose certificate the directory lists under
//! `fgs`. The report is scoped to the FG (its organisation's records, or every record for
//! the federation's FG), and the read is recorded first, with the verified organisation:
//! if the `audit_read` record cannot be made durable, nothing is read. Agents' trails the
//! FG brings (`--agent-trail`) are verified and merged as in an offline read.

use std::sync::Arc;

use ketenpost_schemas::directory::FgScope;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::protocol::{self, FgQuery, RejectCode, Rejection, Response};
use tracing::{error, info};

use super::state::Shared;
use crate::fg::{self, FgError, Query, Reader, ReportContext};
use crate::report::Viewer;

/// Answer an FG's report request.
pub(super) async fn read(q: FgQuery, shared: &Arc<Shared>, oin: &Oin, scope: FgScope) -> Response {
    let docs = shared.docs();
    let query = match Query::parse(&q).and_then(|query| {
        fg::check_filter(&docs.policy, &query.filter)?;
        Ok(query)
    }) {
        Ok(query) => query,
        Err(e) => return Response::Rejected(Rejection::new(RejectCode::Malformed, e.to_string())),
    };
    // The trails the FG brings are verified before the read is recorded: a broken one
    // refuses the whole read.
    let mut agent = Vec::new();
    for (i, trail) in q.agent_trails.iter().enumerate() {
        let source = std::path::PathBuf::from(format!("agent trail {}", i + 1));
        match fg::parse_agent_trail(trail.as_bytes(), &source) {
            Ok(records) => agent.extend(records),
            Err(e) => {
                return Response::Rejected(Rejection::new(RejectCode::Malformed, e.to_string()))
            }
        }
    }
    let now = shared.now();
    let reader = Reader::Live {
        oin,
        federation: scope == FgScope::Covenant,
    };
    if let Err(e) = shared.audit.append(query.audit_entry(reader), now) {
        error!(cause = %e, "cannot record an FG read; nothing is read");
        return storage();
    }
    if let Err(e) = shared.store.commit().await {
        error!(cause = %e, "cannot make an FG read's record durable; nothing is read");
        return storage();
    }
    let viewer = match scope {
        FgScope::Organisation => Viewer::Organisation(oin.clone()),
        FgScope::Covenant => Viewer::Federation,
    };
    let s = shared.clone();
    let rendered =
        tokio::task::spawn_blocking(move || -> Result<(String, &'static str), FgError> {
            let f = &query.filter;
            let records = s.audit.records_between(
                f.from.unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
                f.until.unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            )?;
            let records = crate::report::scope(records, &viewer, f);
            let records = fg::merge_agent_records(records, agent, &viewer, f);
            let head = s.audit.head();
            let cx = ReportContext {
                policy: &docs.policy,
                directory: &docs.directory,
                head: (head.seq, &head.hash),
            };
            let body = fg::render(query.kind, query.format, &records, &viewer, f, cx, now)?;
            Ok((body, query.format.content_type()))
        })
        .await;
    match rendered {
        Ok(Ok((body, content_type))) => {
            info!(fg = %oin, ?scope, "FG report read");
            Response::FgReport(protocol::FgReport {
                content_type: content_type.to_owned(),
                body,
            })
        }
        Ok(Err(e @ FgError::Usage(_))) => {
            Response::Rejected(Rejection::new(RejectCode::Malformed, e.to_string()))
        }
        Ok(Err(e)) => {
            error!(cause = %e, "an FG report could not be read");
            storage()
        }
        Err(e) => {
            error!(cause = %e, "an FG report task failed");
            storage()
        }
    }
}

fn storage() -> Response {
    Response::Rejected(Rejection::new(
        RejectCode::Storage,
        "the broker could not read or record this report; try again",
    ))
}
