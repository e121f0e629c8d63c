//! A small covenant on loopback: a dev federation, a real broker on 127.0.0.1:0, and agents
//! in-process on their own sled folders with their HTTP API on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ketenpost_agent::client::ApiClient;
use ketenpost_agent::config::{
    AgentConfig, ApiSection, BrokerSection, InboxSection, KeysSection, TimingSection,
};
use ketenpost_agent::{Agent, Error};
use ketenpost_broker::config::BrokerConfig;
use ketenpost_broker::server::Broker;
use ketenpost_certs::federation::PartyFiles;
use ketenpost_certs::{Federation, InitOptions};
use ketenpost_schemas::ids::Oin;
use ketenpost_transport::tls::ClientTls;
use serde_json::Value;
use tempfile::TempDir;

/// Every wait in these tests ends by this.
pub const WAIT: Duration = Duration::from_secs(30);

pub const WALCHEREN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../schemas/policies/walcheren.toml"
);

pub struct Net {
    pub tmp: TempDir,
    pub fed: Federation,
    pub broker: Option<Broker>,
    pub broker_addr: SocketAddr,
}

fn broker_config(fed: &Federation, data: PathBuf, listen: SocketAddr) -> BrokerConfig {
    let mut c = BrokerConfig::for_federation(fed, data, listen);
    c.timers.checkpoint_interval_secs = 1;
    c.timers.sweep_interval_secs = 1;
    c
}

impl Net {
    /// A federation from the Walcheren policy and a broker for it.
    pub async fn walcheren() -> Net {
        Net::with_policy(&std::fs::read_to_string(WALCHEREN).unwrap()).await
    }

    /// A federation from a policy text and a broker for it.
    pub async fn with_policy(policy: &str) -> Net {
        let tmp = tempfile::tempdir().unwrap();
        let policy_path = tmp.path().join("policy.toml");
        std::fs::write(&policy_path, policy).unwrap();
        let fed = ketenpost_certs::init(&InitOptions::new(&policy_path, tmp.path().join("fed")))
            .expect("dev federation");
        let broker = Broker::start(broker_config(
            &fed,
            tmp.path().join("broker"),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
        .expect("broker starts");
        let broker_addr = broker.local_addr();
        Net {
            tmp,
            fed,
            broker: Some(broker),
            broker_addr,
        }
    }

    /// The data directory of the agent of `oin`.
    pub fn agent_data(&self, oin: &Oin) -> PathBuf {
        self.tmp
            .path()
            .join("agents")
            .join(oin.as_str())
            .join("data")
    }

    pub fn broker_data(&self) -> PathBuf {
        self.tmp.path().join("broker")
    }

    pub async fn stop_broker(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }

    /// Start the broker again on the same address and data.
    pub async fn start_broker(&mut self) {
        let mut last = None;
        for _ in 0..50 {
            match Broker::start(broker_config(
                &self.fed,
                self.broker_data(),
                self.broker_addr,
            ))
            .await
            {
                Ok(b) => {
                    self.broker = Some(b);
                    return;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("broker does not start again: {last:?}");
    }

    pub fn party(&self, role: &str) -> &PartyFiles {
        self.fed
            .parties
            .iter()
            .find(|p| p.roles.iter().any(|r| r.as_str() == role))
            .unwrap_or_else(|| panic!("no party with role {role}"))
    }

    pub fn oin(&self, role: &str) -> Oin {
        self.party(role).oin.clone()
    }

    /// The configuration of the agent of the party with `role`, talking to `broker`.
    pub fn config(&self, role: &str, broker: SocketAddr) -> AgentConfig {
        let p = self.party(role);
        let dir = self.tmp.path().join("agents").join(p.oin.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("api.token");
        std::fs::write(&token_file, format!("token-{}-0123456789", p.oin)).unwrap();
        AgentConfig {
            oin: p.oin.clone(),
            data_dir: dir.join("data"),
            broker: BrokerSection {
                address: broker.to_string(),
                server_name: "localhost".into(),
                transport: Default::default(),
                tcp_address: None,
            },
            tls: ClientTls {
                ca: self.fed.ca.cert.clone(),
                cert: p.cert.clone(),
                key: p.key.clone(),
            },
            keys: KeysSection {
                signing_key: p.signing_key.clone(),
                age_identity: p.age_key.clone(),
                previous_age_identities: Vec::new(),
                federation_public_key: None,
                federation_public_key_file: Some(self.fed.federation.public_key.clone()),
            },
            api: ApiSection {
                listen: "127.0.0.1:0".parse().unwrap(),
                token_file,
            },
            timing: TimingSection {
                fetch_wait_ms: 500,
                retry_min_ms: 50,
                retry_max_ms: 500,
                request_timeout_ms: 5_000,
                checkpoint_interval_secs: 1,
                documents_refresh_secs: 3600,
                sweep_interval_secs: 1,
                startup_wait_secs: 10,
            },
            inbox: InboxSection::default(),
        }
    }

    pub async fn agent(&self, role: &str) -> TestAgent {
        TestAgent::start(self.config(role, self.broker_addr)).await
    }
}

pub struct TestAgent {
    pub agent: Agent,
    pub api: ApiClient,
    pub oin: Oin,
    pub token_file: PathBuf,
}

impl TestAgent {
    pub async fn start(config: AgentConfig) -> TestAgent {
        let oin = config.oin.clone();
        let token_file = config.api.token_file.clone();
        let token = std::fs::read_to_string(&token_file).unwrap();
        let agent = Agent::start(config).await.expect("agent starts");
        let api = ApiClient::new(agent.api_addr(), token);
        TestAgent {
            agent,
            api,
            oin,
            token_file,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        self.api.call(method, path, body.as_ref()).await
    }

    /// A call that must succeed.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.call(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("{method} {path} failed: {e}"),
        }
    }

    /// A call that must fail; returns (HTTP status, code, message).
    pub async fn fails(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String, String) {
        match self.call(method, path, body).await {
            Ok(v) => panic!("{method} {path} succeeded: {v}"),
            Err(Error::Api {
                status,
                code,
                message,
            }) => (status, code, message),
            Err(e) => panic!("{method} {path} failed oddly: {e}"),
        }
    }
}

/// Poll `f` until it returns `Some`, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn sha(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
