//! An FG report as `ketenpost-broker audit <report>` asks for it: offline, over a stopped
//! broker's data directory or a backup ([`Session`]), or live, from a running broker over
//! the protocol (`FgRead`) with an FG certificate.
//!
//! [`report`] takes the query and a [`ReportSource`] (where to read and as whom) and
//! returns the rendered report; the binary only parses its arguments into them and prints
//! or writes the text.

use std::net::SocketAddr;
use std::path::PathBuf;

use ketenpost_core::clock::Clock;
use ketenpost_schemas::protocol::{FgQuery, Request, Response};
use ketenpost_transport::tls::ClientTls;

use crate::config::BrokerConfig;
use crate::fg::{merge_agent_records, read_agent_trail, render, FgError, Query, Session};

/// Where an FG report is read and as whom: the `audit <report>` options besides the
/// query's filters.
#[derive(Clone, Debug, Default)]
pub struct ReportSource {
    /// The broker's TOML configuration (offline: its data directory and federation files).
    pub config: Option<PathBuf>,
    /// A dev federation made by `ketenpost-certs init`, instead of `config`.
    pub federation: Option<PathBuf>,
    /// With `federation`, offline: the broker's data directory.
    pub data: Option<PathBuf>,
    /// Read as the FG of this organisation (an OIN).
    pub as_oin: Option<String>,
    /// Read as the federation's FG.
    pub federation_fg: bool,
    /// Read a running broker at this address instead of a data directory.
    pub broker: Option<SocketAddr>,
    /// Live: the FG's certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Live: the FG's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Live: the federation CA the broker's certificate chains to.
    pub ca: Option<PathBuf>,
    /// Live: the name on the broker's certificate.
    pub server_name: String,
    /// Agents' exported audit trails to add to the report.
    pub agent_trails: Vec<PathBuf>,
}

/// Read and render one FG report. The query is checked first, so a typo fails before
/// anything is read or recorded; then it is read live when `source.broker` is set, else
/// offline (the read stamped by the broker's clock, [`crate::failpoint::clock`]).
pub fn report(query: &FgQuery, source: &ReportSource) -> Result<String, FgError> {
    let parsed = Query::parse(query)?;
    match source.broker {
        Some(addr) => live_report(addr, source, query),
        None => offline_report(source, &parsed, &*crate::failpoint::clock()),
    }
}

/// A report of a stopped broker's data directory (or a backup), recorded as an offline
/// read at the time `clock` tells; `as_oin` or `federation_fg` only choose the scope.
pub fn offline_report(
    source: &ReportSource,
    query: &Query,
    clock: &dyn Clock,
) -> Result<String, FgError> {
    let config = match (&source.config, &source.federation, &source.data) {
        (Some(path), _, _) => {
            BrokerConfig::load(path).map_err(|e| FgError::Config(e.to_string()))?
        }
        (None, Some(fed), Some(data)) => {
            let f = ketenpost_certs::Federation::load(fed)
                .map_err(|e| FgError::Config(format!("federation {}: {e}", fed.display())))?;
            BrokerConfig::for_federation(&f, data.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
        }
        _ => {
            return Err(FgError::Usage(
                "an offline report needs --config FILE, or --federation DIR --data DIR; a live \
                 one --broker ADDR"
                    .into(),
            ))
        }
    };
    let session = Session::open(&config)?;
    let viewer = session.viewer(source.as_oin.as_deref(), source.federation_fg)?;
    // Read (and verify) every agent trail before the read is recorded.
    let mut agent = Vec::new();
    for file in &source.agent_trails {
        agent.extend(read_agent_trail(file)?);
    }
    let now = clock.now();
    let records = session.read_query(&viewer, query, now)?;
    let records = merge_agent_records(records, agent, &viewer, &query.filter);
    let head = session.head();
    render(
        query.kind,
        query.format,
        &records,
        &viewer,
        &query.filter,
        session.context(&head),
        now,
    )
}

/// The FG credential of a live read: `tls_cert`, `tls_key` and `ca`, or with `federation`
/// the FG credential of `as_oin` (or of the federation's FG) from a dev federation.
fn fg_credential(source: &ReportSource) -> Result<ClientTls, FgError> {
    match (
        &source.tls_cert,
        &source.tls_key,
        &source.ca,
        &source.federation,
    ) {
        (Some(cert), Some(key), Some(ca), _) => Ok(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None, None, Some(fed)) => {
            let f = ketenpost_certs::Federation::load(fed)
                .map_err(|e| FgError::Config(format!("federation {}: {e}", fed.display())))?;
            let cred = match (source.as_oin.as_deref(), source.federation_fg) {
                (Some(o), false) => {
                    let oin = o
                        .parse()
                        .map_err(|_| FgError::Usage(format!("'{o}' is not an OIN (20 digits)")))?;
                    f.fg(&oin, ketenpost_schemas::directory::FgScope::Organisation)
                }
                (None, true) => f.federation_fg(),
                _ => {
                    return Err(FgError::Usage(
                        "say whose FG credential to use: --as <OIN> or --federation-fg".into(),
                    ))
                }
            }
            .ok_or_else(|| FgError::Usage("the federation has no such FG credential".into()))?;
            Ok(ClientTls {
                ca: f.ca.cert.clone(),
                cert: cred.cert.clone(),
                key: cred.key.clone(),
            })
        }
        _ => Err(FgError::Usage(
            "a live report needs --tls-cert, --tls-key and --ca (the FG's certificate), or \
             --federation DIR with --as OIN or --federation-fg"
                .into(),
        )),
    }
}

/// A report of the running broker at `addr`, read with an FG certificate (see
/// [`ReportSource`]); the broker scopes it to that FG, records the read, and verifies and
/// merges the agents' trails, which go along whole.
pub fn live_report(
    addr: SocketAddr,
    source: &ReportSource,
    query: &FgQuery,
) -> Result<String, FgError> {
    let tls = fg_credential(source)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FgError::Config(format!("cannot start the runtime: {e}")))?;
    let mut query = query.clone();
    for file in &source.agent_trails {
        let text = std::fs::read_to_string(file).map_err(|e| FgError::AgentTrail {
            file: file.clone(),
            message: format!("cannot read it: {e}"),
        })?;
        query.agent_trails.push(text);
    }
    runtime.block_on(async {
        let client = ketenpost_transport::client::Client::connect(addr, &source.server_name, &tls)
            .await
            .map_err(|e| FgError::Config(format!("cannot connect to the broker at {addr}: {e}")))?;
        let answer = client
            .request(&Request::FgRead(query), std::time::Duration::from_secs(120))
            .await;
        client.close().await;
        match answer {
            Ok(Response::FgReport(r)) => Ok(r.body),
            Ok(Response::Rejected(r)) => Err(FgError::Usage(format!(
                "the broker refused the report ({}): {}",
                r.code, r.reason
            ))),
            Ok(other) => Err(FgError::Config(format!("unexpected answer: {other:?}"))),
            Err(e) => Err(FgError::Config(format!(
                "the broker did not answer the report (is this an FG certificate the \
                 directory lists?): {e}"
            ))),
        }
    })
}
