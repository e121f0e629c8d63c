//! What a QUIC connection and a TLS-over-TCP connection share: the checks of a new
//! connection ([`admit`]) and every request from its first byte to its counted answer
//! ([`request`]). The transports differ only in how the bytes of one request come in and
//! how its answer goes out ([`RequestIo`]); every bound, budget, refusal and count is here,
//! once.

use std::sync::Arc;

use ketenpost_schemas::directory::FgScope;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::protocol::{
    request_bound, CheckpointWire, ReceiptOutcome, RejectCode, Rejection, Request, Response,
    FRAME_HEAD, PROTOCOL_VERSION,
};
use ketenpost_transport::client::Transport;
use ketenpost_transport::tls::{self, PeerCertificates};
use tracing::warn;

use super::access;
use super::limits::{self, ConnectionGuard, Limit};
use super::records::{control, fetch, receipt, receipts};
use super::state::{storage_error, task_failed, Shared};
use super::submit::submit;
use crate::audit::{AuditEntry, AuditEvent};
use crate::config::BrokerConfig;
use crate::documents::NotAdmitted;

/// Why a connection that completed its TLS handshake is not served. Over QUIC the
/// connection is closed with [`Refusal::code`] and [`Refusal::reason`]; TCP has no such
/// codes and just closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The certificate carries no usable OIN.
    NoOin,
    /// The OIN is not an active party of the directory.
    NotActive,
    /// The certificate is not the one the directory lists for the party.
    NotInDirectory,
    /// A CRL in force lists the certificate (it was revoked after the connection began,
    /// or the TLS configuration had not caught up yet).
    Revoked,
    /// The party (or the broker) holds its limit of connections.
    OverLimit(Limit),
}

impl Refusal {
    /// The QUIC application close code.
    pub(super) fn code(self) -> u32 {
        match self {
            Refusal::NoOin => 1,
            Refusal::NotActive => 2,
            Refusal::NotInDirectory => 3,
            Refusal::OverLimit(_) => 4,
            Refusal::Revoked => 5,
        }
    }

    /// The QUIC close reason (no personal data: fixed texts and limit names).
    pub(super) fn reason(self) -> &'static [u8] {
        match self {
            Refusal::NoOin => b"no OIN in certificate",
            Refusal::NotActive => b"not an active party",
            Refusal::NotInDirectory => b"certificate not in directory",
            Refusal::Revoked => b"certificate revoked",
            Refusal::OverLimit(limit) => limit.as_str().as_bytes(),
        }
    }
}

/// A connection the broker serves: whose it is, and the admission it holds.
#[derive(Debug)]
pub(super) struct Admitted {
    /// The party: the OIN of its verified client certificate.
    pub(super) oin: Oin,
    /// Its place among the party's connections, and its byte budget.
    pub(super) guard: Arc<ConnectionGuard>,
    /// What the federation documents are checked against again when they change.
    pub(super) identity: Identity,
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Caller {
    /// A party's agent: it sends and receives messages and records.
    Party,
    /// An FG with its own certificate: it reads reports, nothing else.
    Fg(FgScope),
}

/// The certificate a connection authenticated with.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    oin: Oin,
    fingerprint: String,
    serial: Option<Vec<u8>>,
    /// Decided at the connection's start; a reload never turns one into the other.
    pub(super) caller: Caller,
}

impl Identity {
    /// Whether the federation documents in force (they change on a reload) still admit
    /// this connection. A party: active, a certificate the directory lists (or a previous
    /// one inside its rotation overlap). An FG: its certificate listed under `fgs` with the
    /// same scope. Neither on a CRL.
    pub(super) fn check(&self, shared: &Shared) -> Result<(), Refusal> {
        let docs = shared.docs();
        if let Caller::Fg(scope) = self.caller {
            let listed = docs
                .directory
                .fg(&self.oin, &self.fingerprint)
                .is_some_and(|f| f.scope == scope);
            if !listed {
                return Err(Refusal::NotInDirectory);
            }
            if self
                .serial
                .as_deref()
                .is_some_and(|s| docs.revocations.revokes(s))
            {
                return Err(Refusal::Revoked);
            }
            return Ok(());
        }
        docs.admits(
            &self.oin,
            &self.fingerprint,
            self.serial.as_deref(),
            shared.now(),
        )
        .map_err(|why| match why {
            NotAdmitted::NotActive => Refusal::NotActive,
            NotAdmitted::NotInDirectory => Refusal::NotInDirectory,
            NotAdmitted::Revoked => Refusal::Revoked,
        })
    }
}

/// The checks every new connection passes after its TLS handshake, on either transport:
/// the certificate names an OIN, the OIN is an active party, the certificate is the one the
/// directory lists, and the party is under its connection limits.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    conn: &impl PeerCertificates,
    transport: Transport,
) -> Result<Admitted, Refusal> {
    let oin = match tls::peer_oin(conn) {
        Ok(oin) => oin,
        Err(e) => {
            warn!(cause = %e, %transport, "client certificate carries no usable OIN");
            return Err(Refusal::NoOin);
        }
    };
    // The directory loader refuses an entry without a fingerprint, so this always compares.
    let fingerprint = tls::peer_fingerprint(conn).unwrap_or_default();
    // An FG's certificate carries its organisation's OIN too; the directory tells it
    // apart from the organisation's agent by its fingerprint.
    let caller = match shared.docs().directory.fg(&oin, &fingerprint) {
        Some(fg) => Caller::Fg(fg.scope),
        None => Caller::Party,
    };
    let identity = Identity {
        oin: oin.clone(),
        fingerprint,
        serial: tls::peer_serial(conn).ok(),
        caller,
    };
    if let Err(refusal) = identity.check(shared) {
        warn!(%oin, %transport, reason = ?refusal, "connection refused by the federation documents");
        return Err(refusal);
    }
    match shared.admission.connect(&oin) {
        Ok(g) => {
            shared.counters.connected(transport.as_str());
            Ok(Admitted {
                oin,
                guard: Arc::new(g),
                identity,
            })
        }
        Err(refused) => {
            shared.over_limit(&oin, refused).await;
            Err(Refusal::OverLimit(refused.limit))
        }
    }
}

/// How one request's bytes come in and its answer goes out: a QUIC stream, or one
/// length-prefixed frame on a TCP connection.
pub(super) trait RequestIo {
    /// The request's length when the transport announces it before the request (TCP's
    /// length prefix); `None` when only the end of the stream tells (QUIC).
    fn announced(&self) -> Option<usize>;

    /// Append at most `want` more bytes of the request to `buf`; how many, 0 at its end.
    async fn read(&mut self, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize>;

    /// The rest of the request will not be read (it is refused): QUIC asks the peer to stop
    /// sending with `code`; TCP discards the rest after the answer, to stay in step.
    fn refuse_rest(&mut self, code: u32);

    /// The request did not arrive in time: end the exchange without an answer.
    fn abandon(&mut self);

    /// Send the one response frame.
    async fn respond(&mut self, frame: &[u8]) -> anyhow::Result<()>;
}

/// Serve one request of the party `oin` on the connection holding `conn`: the party's
/// in-flight limit, the frame read with its kind's bound under the byte budget, the
/// decision, and the counted answer.
pub(super) async fn request(
    io: &mut impl RequestIo,
    shared: &Arc<Shared>,
    oin: &Oin,
    conn: &ConnectionGuard,
    caller: Caller,
) -> anyhow::Result<()> {
    let _in_flight = match shared.admission.stream(oin) {
        Ok(g) => g,
        Err(refused) => {
            shared.over_limit(oin, refused).await;
            io.refuse_rest(2);
            return answer(io, &over_limit(refused.limit, shared), shared).await;
        }
    };
    let deadline = tokio::time::Instant::now() + shared.config.request_timeout();
    let mut held = Vec::new();
    let bytes = match read_request(io, conn, deadline, &shared.config, &mut held).await {
        Ok(b) => b,
        Err(ReadError::TooLong { kind, limit }) => {
            let r = Rejection::new(
                RejectCode::Malformed,
                format!("a request of type 0x{kind:02x} is over its limit of {limit} bytes"),
            );
            io.refuse_rest(1);
            shared
                .audit_async(AuditEntry::refused(AuditEvent::Rejected, r.code.as_str()).actor(oin))
                .await;
            return answer(io, &Response::Rejected(r), shared).await;
        }
        Err(ReadError::Budget) => {
            let refused = shared.admission.refused(oin, Limit::BufferedBytes);
            shared.over_limit(oin, refused).await;
            io.refuse_rest(2);
            return answer(io, &over_limit(Limit::BufferedBytes, shared), shared).await;
        }
        Err(ReadError::Timeout) => {
            io.abandon();
            return Ok(());
        }
        Err(ReadError::Stream(e)) => return Err(e.into()),
    };
    shared.admission.recovered(oin, Limit::BufferedBytes);
    let response = match Request::decode(&bytes) {
        Ok(req) => match (caller, req) {
            (Caller::Fg(scope), Request::FgRead(q)) => super::fg::read(q, shared, oin, scope).await,
            (Caller::Fg(_), _) => Response::Rejected(Rejection::new(
                RejectCode::NotPermitted,
                "an FG certificate reads reports (FgRead) and nothing else",
            )),
            (Caller::Party, Request::FgRead(_)) => {
                shared
                    .audit_async(
                        AuditEntry::refused(AuditEvent::AuditRead, "not_an_fg_certificate")
                            .actor(oin),
                    )
                    .await;
                Response::Rejected(Rejection::new(
                    RejectCode::NotPermitted,
                    "FG reports need an FG certificate the directory lists; this is a party's",
                ))
            }
            (Caller::Party, req) => handle(req, shared, oin).await,
        },
        Err(e) => Response::Rejected(Rejection::new(RejectCode::Malformed, e.to_string())),
    };
    drop(held);
    answer(io, &response, shared).await
}

/// Count the answer by outcome and send it.
async fn answer(
    io: &mut impl RequestIo,
    response: &Response,
    shared: &Shared,
) -> anyhow::Result<()> {
    shared.counters.answered(response);
    io.respond(&response.encode()).await
}

fn over_limit(limit: Limit, shared: &Shared) -> Response {
    Response::Rejected(Rejection::new(
        RejectCode::OverLimit,
        limit.explain(&shared.config.limits),
    ))
}

/// Why a request could not be read.
#[derive(Debug)]
enum ReadError {
    /// Longer than the bound of its frame kind (or of an unknown kind's head).
    TooLong { kind: u8, limit: usize },
    /// The global byte budget stayed exhausted until the request's deadline.
    Budget,
    /// The request did not arrive whole before its deadline.
    Timeout,
    /// The stream or connection failed.
    Stream(std::io::Error),
}

/// Read one request frame: the 2-byte head first, then at most the bound of its kind,
/// reserving every chunk from the connection's and the global byte budget before it is
/// kept (the reservations go to `held`, to be released once the request is answered). A
/// request whose announced length is over its kind's bound is refused after its head.
async fn read_request(
    io: &mut impl RequestIo,
    conn: &ConnectionGuard,
    deadline: tokio::time::Instant,
    config: &BrokerConfig,
    held: &mut Vec<limits::Reservation>,
) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    let mut limit = FRAME_HEAD;
    loop {
        let want = if bytes.len() < FRAME_HEAD {
            FRAME_HEAD - bytes.len()
        } else {
            // One byte past the bound, to tell "exactly the bound" from "over it".
            (limit + 1).saturating_sub(bytes.len()).min(64 * 1024)
        };
        let before = bytes.len();
        let n = match tokio::time::timeout_at(deadline, io.read(&mut bytes, want)).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Stream(e)),
            Ok(Ok(0)) => return Ok(bytes),
            Ok(Ok(n)) => n,
        };
        debug_assert_eq!(bytes.len(), before + n);
        held.push(
            conn.reserve(n, deadline)
                .await
                .map_err(|_| ReadError::Budget)?,
        );
        if bytes.len() >= FRAME_HEAD && limit == FRAME_HEAD {
            let kind = bytes[1];
            // An unknown kind or version is read no further: its head decodes to a clear
            // error. An unknown kind still gets a small bound, so its error can be given.
            limit = request_bound(kind, config.limits.max_envelope_bytes).unwrap_or(FRAME_HEAD);
            if bytes[0] != PROTOCOL_VERSION || limit == FRAME_HEAD {
                return Ok(bytes);
            }
            if io.announced().is_some_and(|len| len > limit) {
                return Err(ReadError::TooLong { kind, limit });
            }
        }
        if bytes.len() > limit {
            return Err(ReadError::TooLong {
                kind: bytes[1],
                limit,
            });
        }
    }
}

async fn handle(req: Request, shared: &Arc<Shared>, oin: &Oin) -> Response {
    match req {
        Request::Submit(bytes) => {
            let started = std::time::Instant::now();
            let response = submit(bytes, shared, oin).await;
            shared.counters.submitted(started.elapsed());
            response
        }
        Request::Fetch { max, wait_ms, skip } => fetch(shared, oin, max, wait_ms, &skip).await,
        Request::Receipt(rec) => receipt(rec, shared, oin).await,
        Request::Receipts(recs) => Response::Receipted(
            receipts(recs, shared, oin)
                .await
                .into_iter()
                .map(ReceiptOutcome::of)
                .collect(),
        ),
        Request::Control(rec) => control(rec, shared, oin).await,
        Request::Ack { up_to } => {
            // sled's writes wait while the writer thread's transaction runs: not on the
            // async worker that drives the connections.
            let (s, o) = (shared.clone(), oin.clone());
            match tokio::task::spawn_blocking(move || s.store.ack_notices(&o, up_to)).await {
                Ok(Ok(_)) => Response::Done,
                Ok(Err(e)) => storage_error(e),
                Err(e) => task_failed(&e),
            }
        }
        Request::GetDocuments => Response::Documents(shared.docs().raw.clone()),
        Request::AccessFacts(q) => access::facts(q, shared, oin).await,
        // Answered for FG certificates only (`exchange::request`); never reaches here.
        Request::FgRead(_) => Response::Rejected(Rejection::new(
            RejectCode::NotPermitted,
            "FG reports need an FG certificate the directory lists",
        )),
        // Reads of the trail in sled, on a blocking thread (as above).
        Request::GetCheckpoint => {
            let s = shared.clone();
            match tokio::task::spawn_blocking(move || s.audit.latest_checkpoint()).await {
                Ok(Ok(cp)) => Response::Checkpoint(cp.map(|c| CheckpointWire {
                    seq: c.seq,
                    head_hash: c.head_hash.clone(),
                    time: c.time_text(),
                    signature: c.signature.clone(),
                })),
                Ok(Err(e)) => audit_error(&e),
                Err(e) => task_failed(&e),
            }
        }
        Request::ProveExtends { seq, hash } => {
            let s = shared.clone();
            match tokio::task::spawn_blocking(move || s.audit.prove_extends(seq, &hash)).await {
                Ok(Ok(b)) => Response::Extends(b),
                Ok(Err(e)) => audit_error(&e),
                Err(e) => task_failed(&e),
            }
        }
    }
}

/// The answer when the audit trail could not be read.
fn audit_error(e: &crate::audit::AuditError) -> Response {
    Response::Error {
        code: "audit".into(),
        message: e.to_string(),
    }
}
