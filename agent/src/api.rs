//! The local HTTP API for the organisation's own systems (JSON over HTTP/1.1, axum).
//!
//! Every request needs `Authorization: Bearer <token>` with the token from
//! `api.token_file`. Errors are a JSON body `{"code": ..., "message": ...}`; a policy
//! refusal adds `check` and `refused_by` (`agent` or `broker`) and uses the broker's
//! rejection code. `agent/openapi.yaml` describes every route.
//!
//! | method and path | operation |
//! |---|---|
//! | `GET /v1/health` | broker connection, counters, audit warnings |
//! | `POST /v1/messages` | send a message (202, queued) |
//! | `GET /v1/messages` | outbox, `?case_ref=` |
//! | `GET /v1/messages/{id}` | status of one message, per recipient |
//! | `GET /v1/inbox` | received messages, `?all=true` includes acknowledged ones |
//! | `GET /v1/inbox/{id}` | one received message with its payload |
//! | `POST /v1/inbox/{id}/ack` | the partner system has it |
//! | `GET /v1/refused` | deliveries the agent refused |
//! | `GET /v1/cases`, `POST /v1/cases` | known cases; open a case |
//! | `GET /v1/cases/{case_ref}`, `PUT /v1/cases/{case_ref}` | one case; register a case we were added to |
//! | `POST /v1/cases/{case_ref}/members` | add a member |
//! | `DELETE /v1/cases/{case_ref}/members/{oin}` | remove a member |
//! | `POST /v1/cases/{case_ref}/close` | close the case |
//! | `GET /v1/consents`, `POST /v1/consents` | known consents; register one |
//! | `POST /v1/consents/{id}/withdraw` | record a withdrawal |
//! | `GET /v1/deletion-orders` | deletion orders carried out |
//! | `POST /v1/deletion-orders/{id}/ack` | the partner system deleted its copies |
//! | `GET /v1/audit` | the agent's own audit trail as JSON lines, `?from=&until=` (RFC 3339) |
//! | `GET /v1/audit/verify` | check that trail's hash chain |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ketenpost_schemas::control::CaseOp;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::Role;
use ketenpost_schemas::protocol::{AcceptFlag, Rejection};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{error, warn};

use crate::inbox::InboxEntry;
use crate::ops::{AddMember, Core, GrantConsent, OpenCase, RegisterCase, WithdrawConsent};
use crate::outbox::{OutboxEntry, Overdue, RecipientStatus, Status, Submission};
use crate::resolve::SendRequest;
use crate::Error;

/// Largest request body: a payload up to the 4 MiB plaintext limit, plus JSON overhead.
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The JSON error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short code: a broker rejection code, or one of `invalid_request`,
    /// `invalid_payload`, `unauthorized`, `not_found`, `broker_unavailable`,
    /// `broker_error`, `not_ready`, `internal`.
    pub code: String,
    /// What went wrong, in words (names fields, never their values).
    pub message: String,
    /// For a policy refusal: the check (1-8 of DESIGN.md) it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<u8>,
    /// For a policy refusal: `agent` (early) or `broker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
}

fn body(code: &str, message: String) -> ErrorBody {
    ErrorBody {
        code: code.to_owned(),
        message,
        check: None,
        refused_by: None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use ketenpost_schemas::Error as S;
        let (status, b) = match self.0 {
            Error::Refused { by, rejection } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody {
                    code: rejection.code.as_str().to_owned(),
                    message: rejection.reason,
                    check: Some(rejection.check),
                    refused_by: Some(by.to_string()),
                },
            ),
            Error::Schema(e @ (S::Schema { .. } | S::FieldsOutsideView { .. })) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                body("invalid_payload", e.to_string()),
            ),
            Error::Schema(e @ S::Seal(_)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                body("invalid_request", e.to_string()),
            ),
            Error::Schema(e) => (
                StatusCode::BAD_REQUEST,
                body("invalid_request", e.to_string()),
            ),
            Error::Invalid(m) => (StatusCode::BAD_REQUEST, body("invalid_request", m)),
            e @ Error::NotFound { .. } => (StatusCode::NOT_FOUND, body("not_found", e.to_string())),
            e @ Error::Broker(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                body("broker_unavailable", e.to_string()),
            ),
            e @ Error::Unexpected(_) => {
                (StatusCode::BAD_GATEWAY, body("broker_error", e.to_string()))
            }
            e @ Error::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                body("not_ready", e.to_string()),
            ),
            e => {
                error!(cause = %e, "internal error in an API request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    body("internal", e.to_string()),
                )
            }
        };
        (status, Json(b)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| ApiError(Error::Invalid(format!("a JSON body is required: {e}"))));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(Error::Invalid(format!("invalid JSON body: {e}"))))
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> ApiResult<T> {
    s.parse()
        .map_err(|_| ApiError(Error::Invalid(format!("'{s}' is not a valid {what}"))))
}

/// Build the router.
pub fn router(core: Arc<Core>) -> Router {
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/messages", post(send).get(list_messages))
        .route("/messages/{id}", get(message_status))
        .route("/inbox", get(inbox_list))
        .route("/inbox/{id}", get(inbox_read))
        .route("/inbox/{id}/ack", post(inbox_ack))
        .route("/refused", get(refused))
        .route("/cases", get(cases).post(open_case))
        .route("/cases/{case_ref}", get(case).put(register_case))
        .route("/cases/{case_ref}/members", post(add_member))
        .route("/cases/{case_ref}/members/{oin}", delete(remove_member))
        .route("/cases/{case_ref}/close", post(close_case))
        .route("/cases/{case_ref}/phase", post(enter_phase))
        .route("/cases/{case_ref}/deletion-orders", post(order_deletion))
        .route("/consents", get(consents).post(grant_consent))
        .route("/consents/{id}/withdraw", post(withdraw_consent))
        .route("/deletion-orders", get(deletion_orders))
        .route("/deletion-orders/{id}/ack", post(ack_deletion))
        .route(
            "/access-requests",
            get(access_requests).post(new_access_request),
        )
        .route("/access-requests/{id}", get(access_request))
        .route("/access-requests/{id}/answer.html", get(access_answer_html))
        .route("/access-requests/{id}/answered", post(access_answered))
        .route("/audit", get(audit_export))
        .route("/audit/verify", get(audit_verify));
    let api = Router::new()
        .nest("/v1", v1)
        .fallback(|| async { ApiError(Error::not_found("route", "(see agent/openapi.yaml)")) })
        .layer(middleware::from_fn_with_state(core.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    // For monitoring, without the token: counts and states only.
    let ops = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    ops.merge(api).with_state(core)
}

async fn metrics(State(core): State<Arc<Core>>) -> ApiResult<impl IntoResponse> {
    let h = core.health()?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&h),
    ))
}

/// 200 while the agent serves and can read its store.
async fn healthz(State(core): State<Arc<Core>>) -> impl IntoResponse {
    match core.health() {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            error!(cause = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent cannot read its store\n",
            )
        }
    }
}

/// 200 when the agent can also reach the broker.
async fn readyz(State(core): State<Arc<Core>>) -> impl IntoResponse {
    match core.health() {
        Ok(h) if h.broker_connected => (StatusCode::OK, "ready\n"),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is not reachable\n",
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent cannot read its store\n",
        ),
    }
}

/// Serve until `stop` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    core: Arc<Core>,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(core);
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        error!(cause = %e, "HTTP API stopped with an error");
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), core.api_token.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    warn!(path = %req.uri().path(), "API request without a valid bearer token");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    (
        StatusCode::UNAUTHORIZED,
        headers,
        Json(body(
            "unauthorized",
            "a valid 'Authorization: Bearer <token>' header is required".into(),
        )),
    )
        .into_response()
}

// ---- views -------------------------------------------------------------------------------

/// One recipient in a message status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecipientView {
    /// The recipient.
    pub oin: Oin,
    /// Its view (case role).
    pub role: Role,
    /// pending, delivered or expired.
    pub status: RecipientStatus,
    /// From its signed receipt.
    pub delivered_at: Option<DateTime<Utc>>,
    /// From the broker's expiry notice.
    pub expired_at: Option<DateTime<Utc>>,
}

/// The status of a sent message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageView {
    /// The message id.
    pub message_id: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// Its case.
    pub case_ref: CaseRef,
    /// Its purpose.
    pub purpose: String,
    /// When it was sealed.
    pub created_at: DateTime<Utc>,
    /// queued, accepted, rejected, delivered or expired.
    pub status: Status,
    /// When the broker accepted it.
    pub accepted_at: Option<DateTime<Utc>>,
    /// What the broker noted.
    pub flags: Vec<AcceptFlag>,
    /// The broker's rejection.
    pub rejection: Option<Rejection>,
    /// Per recipient.
    pub recipients: Vec<RecipientView>,
    /// Submission attempts.
    pub attempts: u32,
    /// The last transport problem while queued.
    pub last_error: Option<String>,
    /// Answers the broker reported overdue.
    pub overdue: Vec<Overdue>,
}

impl From<OutboxEntry> for MessageView {
    fn from(e: OutboxEntry) -> Self {
        let status = e.status();
        let (accepted_at, flags, rejection) = match e.submission {
            Submission::Queued => (None, Vec::new(), None),
            Submission::Accepted { at, flags } => (Some(at), flags, None),
            Submission::Rejected { rejection, .. } => (None, Vec::new(), Some(rejection)),
        };
        MessageView {
            message_id: e.message_id,
            kind: e.kind,
            case_ref: e.case_ref,
            purpose: e.purpose,
            created_at: e.created_at,
            status,
            accepted_at,
            flags,
            rejection,
            recipients: e
                .recipients
                .into_iter()
                .map(|r| RecipientView {
                    status: r.status(),
                    oin: r.oin,
                    role: r.role,
                    delivered_at: r.delivered_at,
                    expired_at: r.expired_at,
                })
                .collect(),
            attempts: e.attempts,
            last_error: e.last_error,
            overdue: e.overdue,
        }
    }
}

/// A received message without its payload, for lists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InboxSummary {
    /// The message id.
    pub message_id: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// Its case.
    pub case_ref: CaseRef,
    /// Its purpose.
    pub purpose: String,
    /// The sender.
    pub sender: Oin,
    /// The sender's name in the directory.
    pub sender_name: Option<String>,
    /// The view received.
    pub view: Role,
    /// When it was stored.
    pub received_at: DateTime<Utc>,
    /// When the partner system acknowledged it.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When an answer is due from us: the covenant's term, or the sender's request.
    pub answer_due: Option<DateTime<Utc>>,
    /// The sender asked us for an answer by a due date with this message.
    pub answer_requested: bool,
    /// The deadline the broker reported as passed without our answer.
    pub answer_overdue: Option<DateTime<Utc>>,
    /// The header's event time disagrees with the payload's own date of the event.
    pub event_time_mismatch: bool,
    /// For a breach notice: our FG's contact, whom the partner system must hand it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fg_contact: Option<String>,
}

fn summary(core: &Core, e: &InboxEntry) -> InboxSummary {
    InboxSummary {
        message_id: e.message_id,
        kind: e.kind,
        case_ref: e.case_ref.clone(),
        purpose: e.purpose.clone(),
        sender: e.sender.clone(),
        sender_name: core
            .docs()
            .directory
            .party(&e.sender)
            .map(|p| p.name.clone()),
        view: e.view.clone(),
        received_at: e.received_at,
        acknowledged_at: e.acknowledged_at,
        answer_due: e.answer_due,
        answer_requested: e.answer_requested,
        answer_overdue: e.answer_overdue,
        event_time_mismatch: e.event_time_mismatch,
        fg_contact: (e.kind == Kind::DatalekMelding)
            .then(|| {
                core.docs()
                    .directory
                    .party(core.oin())
                    .map(|p| p.fg_contact.clone())
            })
            .flatten(),
    }
}

// ---- handlers ----------------------------------------------------------------------------

async fn health(State(core): State<Arc<Core>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(core.health()?)))
}

async fn send(State(core): State<Arc<Core>>, bytes: Bytes) -> ApiResult<impl IntoResponse> {
    let req: SendRequest = parse_json(&bytes)?;
    let entry = core.send(req).await?;
    Ok((StatusCode::ACCEPTED, Json(MessageView::from(entry))))
}

#[derive(Deserialize)]
struct CaseFilter {
    case_ref: Option<String>,
}

async fn list_messages(
    State(core): State<Arc<Core>>,
    Query(q): Query<CaseFilter>,
) -> ApiResult<Json<Value>> {
    let case = q
        .case_ref
        .map(|c| parse::<CaseRef>("case reference", &c))
        .transpose()?;
    let list: Vec<MessageView> = core
        .messages(case.as_ref())?
        .into_iter()
        .map(MessageView::from)
        .collect();
    Ok(Json(json!({ "messages": list })))
}

async fn message_status(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageView>> {
    let id: MessageId = parse("message id", &id)?;
    Ok(Json(core.message(&id)?.into()))
}

#[derive(Deserialize)]
struct InboxQuery {
    #[serde(default)]
    all: bool,
}

async fn inbox_list(
    State(core): State<Arc<Core>>,
    Query(q): Query<InboxQuery>,
) -> ApiResult<Json<Value>> {
    let list: Vec<InboxSummary> = core
        .inbox(q.all)?
        .iter()
        .map(|e| summary(&core, e))
        .collect();
    Ok(Json(json!({ "messages": list })))
}

async fn inbox_read(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult<Json<InboxEntry>> {
    let id: MessageId = parse("message id", &id)?;
    Ok(Json(core.inbox_entry(&id)?))
}

async fn inbox_ack(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult<Json<InboxSummary>> {
    let id: MessageId = parse("message id", &id)?;
    let e = core.ack(&id).await?;
    Ok(Json(summary(&core, &e)))
}

async fn refused(State(core): State<Arc<Core>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "refused": core.refused()? })))
}

async fn cases(State(core): State<Arc<Core>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "cases": core.cases()? })))
}

async fn open_case(State(core): State<Arc<Core>>, bytes: Bytes) -> ApiResult<impl IntoResponse> {
    let req: OpenCase = parse_json(&bytes)?;
    let case = core.open_case(req).await?;
    Ok((StatusCode::CREATED, Json(case)))
}

async fn case(
    State(core): State<Arc<Core>>,
    Path(case_ref): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let case_ref: CaseRef = parse("case reference", &case_ref)?;
    Ok(Json(core.case(&case_ref)?))
}

async fn register_case(
    State(core): State<Arc<Core>>,
    Path(case_ref): Path<String>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let case_ref: CaseRef = parse("case reference", &case_ref)?;
    let req: RegisterCase = parse_json(&bytes)?;
    Ok(Json(core.register_case(&case_ref, req).await?))
}

fn case_answer(core: &Core, case_ref: &CaseRef, known: Option<crate::mirror::KnownCase>) -> Value {
    match known {
        Some(c) => json!(c),
        None => json!({ "case_ref": case_ref, "done": true, "oin": core.oin() }),
    }
}

async fn add_member(
    State(core): State<Arc<Core>>,
    Path(case_ref): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Value>> {
    let case_ref: CaseRef = parse("case reference", &case_ref)?;
    let req: AddMember = parse_json(&bytes)?;
    let c = core.add_member(&case_ref, req).await?;
    Ok(Json(case_answer(&core, &case_ref, c)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PurposeOnly {
    #[serde(default)]
    purpose: Option<String>,
}

async fn remove_member(
    State(core): State<Arc<Core>>,
    Path((case_ref, oin)): Path<(String, String)>,
    Query(q): Query<PurposeOnly>,
) -> ApiResult<Json<Value>> {
    let case_ref: CaseRef = parse("case reference", &case_ref)?;
    let oin: Oin = parse("OIN", &oin)?;
    let c = core
        .change_case(&case_ref, CaseOp::RemoveMember { oin }, q.purpose)
        .await?;
    Ok(Json(case_answer(&core, &case_ref, c)))
}

async fn close_case(
    State(core): State<Arc<Core>>,
    Path(case_ref): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Value>> {
    let case_ref: CaseRef = parse("case reference", &case_ref)?;
    let q: PurposeOnly = parse_json(&bytes)?;
    let c = core
        .change_case(&case_ref, CaseOp::Close, q.purpose)
        .await?;
    Ok(Json(case_answer(&core, &case_ref, c)))
}

/// `POST /v1/cases/{case}/phase` with `{"phase": "waakvlam"}`: move the case to another
/// phase of its purpose.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseRequest {
    phase: String,
    #[serde(default)]
    purpose: Option<String>,
}

async fn enter_phase(
    State(core): State<Arc<Core>>,
    Path(case_ref): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Value>> {
    let case_ref: CaseRef = parse("case reference", &case_ref)?;
    let q: PhaseRequest = parse_json(&bytes)?;
    if !ketenpost_schemas::ids::is_identifier(&q.phase) {
        return Err(crate::error::Error::Invalid(
            "'phase' must be a phase name of the policy (1-64 letters, digits, '_', '.', ':' or '-')"
                .into(),
        )
        .into());
    }
    let c = core
        .change_case(&case_ref, CaseOp::EnterPhase { phase: q.phase }, q.purpose)
        .await?;
    Ok(Json(case_answer(&core, &case_ref, c)))
}

/// `POST /v1/cases/{case}/deletion-orders`: the regievoerder orders parties to delete the
/// case's data now (a data subject's erasure request, an upheld objection, consent
/// withdrawn with deletion, or a handover).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletionOrderRequest {
    reason: ketenpost_schemas::control::DeletionReason,
    #[serde(default)]
    parties: Vec<Oin>,
    #[serde(default)]
    purpose: Option<String>,
}

async fn order_deletion(
    State(core): State<Arc<Core>>,
    Path(case_ref): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Value>> {
    let case_ref: CaseRef = parse("case reference", &case_ref)?;
    let q: DeletionOrderRequest = parse_json(&bytes)?;
    let op = CaseOp::OrderDeletion {
        reason: q.reason,
        parties: q.parties,
    };
    let c = core.change_case(&case_ref, op, q.purpose).await?;
    Ok(Json(case_answer(&core, &case_ref, c)))
}

async fn consents(
    State(core): State<Arc<Core>>,
    Query(q): Query<CaseFilter>,
) -> ApiResult<Json<Value>> {
    let case = q
        .case_ref
        .map(|c| parse::<CaseRef>("case reference", &c))
        .transpose()?;
    Ok(Json(json!({ "consents": core.consents(case.as_ref())? })))
}

async fn grant_consent(
    State(core): State<Arc<Core>>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: GrantConsent = parse_json(&bytes)?;
    let c = core.grant_consent(req).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

async fn withdraw_consent(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Value>> {
    let id: uuid::Uuid = parse("consent id", &id)?;
    let req: WithdrawConsent = parse_json(&bytes)?;
    Ok(Json(match core.withdraw_consent(&id, req).await? {
        Some(c) => json!(c),
        None => json!({ "consent_id": id, "withdrawn": true }),
    }))
}

async fn deletion_orders(State(core): State<Arc<Core>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "deletion_orders": core.deletion_orders()? })))
}

/// An access request with its state now.
fn access_json(core: &Core, r: &crate::rights::AccessRequest) -> Value {
    let mut v = json!(r);
    v["state"] = json!(r.state(core.clock.now()));
    v
}

async fn new_access_request(
    State(core): State<Arc<Core>>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: crate::rights::NewAccessRequest = parse_json(&bytes)?;
    let r = core.access_request(req).await?;
    Ok((StatusCode::CREATED, Json(access_json(&core, &r))))
}

async fn access_requests(State(core): State<Arc<Core>>) -> ApiResult<Json<Value>> {
    let all: Vec<Value> = core
        .store
        .access_requests()?
        .iter()
        .map(|r| access_json(&core, r))
        .collect();
    Ok(Json(json!({ "access_requests": all })))
}

fn find_access_request(core: &Core, id: &str) -> Result<crate::rights::AccessRequest, ApiError> {
    let id: uuid::Uuid = parse("access request id", id)?;
    Ok(core
        .store
        .access_request(&id)?
        .ok_or_else(|| Error::not_found("access request", id))?)
}

async fn access_request(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = find_access_request(&core, &id)?;
    Ok(Json(access_json(&core, &r)))
}

/// The answer for the person, as HTML (organisations by name).
async fn access_answer_html(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let r = find_access_request(&core, &id)?;
    let docs = core.docs();
    let me = docs
        .directory
        .party(core.oin())
        .map_or_else(|| core.oin().to_string(), |p| p.name.clone());
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::rights::answer_html(&r, &me),
    ))
}

async fn access_answered(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: uuid::Uuid = parse("access request id", &id)?;
    let r = core.access_answered(&id).await?;
    Ok(Json(access_json(&core, &r)))
}

async fn ack_deletion(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: uuid::Uuid = parse("order id", &id)?;
    Ok(Json(json!(core.ack_deletion(&id).await?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
    }
}

/// `?from=&until=` of the audit export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditRange {
    from: Option<String>,
    until: Option<String>,
}

fn parse_time(name: &str, text: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError(Error::Invalid(format!("'{name}' is not an RFC 3339 time"))))
}

/// The agent's audit records dated in `[from, until)`, one per line, exactly as stored.
async fn audit_export(
    State(core): State<Arc<Core>>,
    Query(q): Query<AuditRange>,
) -> ApiResult<impl IntoResponse> {
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time("from", t))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|t| parse_time("until", t))
        .transpose()?;
    let records = core.store.audit.export(from, until).map_err(Error::from)?;
    let mut body = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for r in records {
        body.extend_from_slice(&r);
        body.push(b'\n');
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/jsonl")],
        body,
    ))
}

/// Whether the agent's audit trail is intact: `{records, intact, first_broken}`.
async fn audit_verify(State(core): State<Arc<Core>>) -> ApiResult<Json<Value>> {
    let v = core.store.audit.verify().map_err(Error::from)?;
    Ok(Json(json!({
        "records": v.records,
        "intact": v.intact,
        "first_broken": v.first_broken,
        "problem": v.problem,
    })))
}

#[cfg(test)]
mod openapi_tests {
    /// Every route the router serves is described in `agent/openapi.yaml`.
    #[test]
    fn every_route_is_in_the_openapi_description() {
        let spec = include_str!("../openapi.yaml");
        let source = include_str!("api.rs");
        let mut n = 0;
        for line in source.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix(".route(\"") {
                let path = rest.split('"').next().unwrap_or_default();
                // The monitoring routes sit beside /v1.
                let full = if ["/metrics", "/healthz", "/readyz"].contains(&path) {
                    format!("  {path}:")
                } else {
                    format!("  /v1{path}:")
                };
                assert!(spec.contains(&full), "openapi.yaml lacks {full}");
                n += 1;
            }
        }
        assert!(n >= 14, "found only {n} routes");
    }
}
