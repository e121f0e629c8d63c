//! The agent's operational metrics in the Prometheus text format (`GET /metrics`, no token:
//! counts only, never content, case references or names), from [`Health`].
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ketenpost_agent_broker_connected` | gauge | 1 when the last broker request got through |
//! | `ketenpost_agent_outbox_queued` | gauge | messages waiting for submission |
//! | `ketenpost_agent_inbox_unacknowledged` | gauge | received messages the partner system has not acknowledged |
//! | `ketenpost_agent_refused_deliveries` | gauge | deliveries the agent refused (kept for the FG) |
//! | `ketenpost_agent_deletion_orders_unacknowledged` | gauge | deletion orders the partner system has not acknowledged |
//! | `ketenpost_agent_directory_serial` | gauge | serial of the directory in force |
//! | `ketenpost_agent_audit_checkpoint_seq` | gauge | seq of the latest broker audit checkpoint seen (absent before the first) |
//! | `ketenpost_agent_audit_warnings` | gauge | warnings about the broker's audit trail; should be 0 |

use std::fmt::Write as _;

use crate::ops::Health;

/// The Prometheus text (format 0.0.4) of `h`.
pub fn render(h: &Health) -> String {
    let mut out = String::with_capacity(1024);
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        if let Some(v) = value {
            let _ = writeln!(out, "{name} {v}");
        }
    };
    gauge(
        "ketenpost_agent_broker_connected",
        "1 when the last broker request got through.",
        Some(f64::from(u8::from(h.broker_connected))),
    );
    gauge(
        "ketenpost_agent_outbox_queued",
        "Messages waiting for submission.",
        Some(h.outbox_queued as f64),
    );
    gauge(
        "ketenpost_agent_inbox_unacknowledged",
        "Received messages not yet acknowledged by the partner system.",
        Some(h.inbox_unacknowledged as f64),
    );
    gauge(
        "ketenpost_agent_refused_deliveries",
        "Deliveries the agent refused.",
        Some(h.refused_deliveries as f64),
    );
    gauge(
        "ketenpost_agent_deletion_orders_unacknowledged",
        "Deletion orders the partner system has not acknowledged.",
        Some(h.deletion_orders_unacknowledged as f64),
    );
    gauge(
        "ketenpost_agent_directory_serial",
        "Serial of the directory in force.",
        Some(h.directory_serial as f64),
    );
    gauge(
        "ketenpost_agent_audit_checkpoint_seq",
        "Seq of the latest broker audit checkpoint seen.",
        h.latest_checkpoint_seq.map(|s| s as f64),
    );
    gauge(
        "ketenpost_agent_audit_warnings",
        "Warnings about the broker's audit trail; should be 0.",
        Some(h.audit_warnings.len() as f64),
    );
    out
}
