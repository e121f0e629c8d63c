//! A small client for the agent's own HTTP API, used by the CLI (and usable by scripts
//! and tests). HTTP/1.1 over loopback TCP with hyper; no TLS (the API stays on loopback).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::api::ErrorBody;
use crate::config::AgentConfig;
use crate::Error;

/// How long one API call may take: control operations wait for the broker.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of the local API.
#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    token: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the API at `addr` with `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        let addr = match addr.ip() {
            // A wildcard listen address is reached over loopback.
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        ApiClient {
            addr,
            token: token.into(),
        }
    }

    /// A client for the API an agent configuration describes.
    pub fn from_config(cfg: &AgentConfig) -> Result<Self, Error> {
        let token = std::fs::read_to_string(&cfg.api.token_file)
            .map_err(|e| Error::Config {
                path: cfg.api.token_file.clone(),
                message: format!("cannot read the API token: {e}"),
            })?
            .trim()
            .to_owned();
        Ok(ApiClient::new(cfg.api.listen, token))
    }

    /// The address called.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Call `method path` with an optional JSON body; the JSON answer, or
    /// [`Error::Api`] for an error answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        match tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(Ok((_, bytes))) => serde_json::from_slice(&bytes)
                .map_err(|e| self.unreachable(format!("answer is not JSON: {e}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.unreachable(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    /// `GET path` for an answer that is not one JSON value (the audit export's JSON
    /// lines): its bytes, or [`Error::Api`] for an error answer.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, Error> {
        match tokio::time::timeout(CALL_TIMEOUT, self.exchange("GET", path, None)).await {
            Ok(Ok((_, bytes))) => Ok(bytes),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.unreachable(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    fn unreachable(&self, reason: impl Into<String>) -> Error {
        Error::ApiUnreachable {
            addr: self.addr.to_string(),
            reason: reason.into(),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(hyper::StatusCode, Bytes), Error> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let bytes = match body {
            Some(v) => {
                Bytes::from(serde_json::to_vec(v).map_err(|e| Error::Invalid(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| Error::Invalid(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let status = resp.status();
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?
            .to_bytes();
        conn.abort();
        if status.is_success() {
            return Ok((status, collected));
        }
        let err: ErrorBody = serde_json::from_slice(&collected).unwrap_or(ErrorBody {
            code: "http_error".into(),
            message: String::from_utf8_lossy(&collected)
                .chars()
                .take(500)
                .collect(),
            check: None,
            refused_by: None,
        });
        Err(Error::Api {
            status: status.as_u16(),
            code: err.code,
            message: match err.refused_by {
                Some(by) => format!("{} (refused by the {by})", err.message),
                None => err.message,
            },
        })
    }
}
