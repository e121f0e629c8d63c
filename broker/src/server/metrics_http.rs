//! The metrics and health endpoints of a running broker (see [`crate::metrics`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tracing::{error, warn};

use super::state::Shared;
use crate::metrics::{Gauges, PartyGauges};

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        error!(cause = %e, "the metrics endpoint stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let s = shared.clone();
    let gauges = tokio::task::spawn_blocking(move || gauges(&s)).await;
    match gauges {
        Ok(g) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            crate::metrics::render(&shared.counters, shared.store.commit_stats(), &g),
        )
            .into_response(),
        Err(e) => {
            error!(cause = %e, "metrics task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn gauges(shared: &Shared) -> Gauges {
    let now = shared.now();
    let mut g = Gauges {
        up: shared.store.poison().check().is_ok(),
        ..Gauges::default()
    };
    let docs = shared.docs();
    g.documents_serial = docs.serial();
    for p in &docs.directory.parties {
        let mut pg = PartyGauges {
            connections: shared.admission.connections_of(&p.oin),
            ..PartyGauges::default()
        };
        match shared.store.queue_gauges(&p.oin) {
            Ok((depth, oldest, notices)) => {
                pg.queue_depth = depth;
                pg.oldest_age_secs =
                    oldest.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
                pg.notices = notices;
            }
            Err(e) => warn!(cause = %e, "cannot read a queue for the metrics"),
        }
        g.parties.insert(p.oin.to_string(), pg);
    }
    g
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.store.poison().check() {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store poisoned by a failed fsync\n",
        ),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.store.poison().check().is_err() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "store poisoned by a failed fsync\n",
        )
    } else if !shared.ready.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
