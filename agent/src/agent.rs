//! The running agent: startup and shutdown.
//!
//! [`Agent::start`] loads the keys, opens the database, obtains federation documents whose
//! signatures verify against the pinned key (from the broker, or the verified cache when
//! the broker is away and the agent ran before), binds the HTTP API and spawns the loops
//! of [`crate::sync`]. It refuses to start on documents that do not verify. The operations
//! themselves are [`crate::ops`].

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ketenpost_schemas::keys::VerifyingKey;
use ketenpost_schemas::protocol::{Documents, Request, Response};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use ketenpost_core::clock::{SharedClock, SystemClock};

use crate::config::AgentConfig;
use crate::documents::{self, Me, Trusted};
use crate::link::BrokerLink;
use crate::store::Store;
use crate::{api, sync, Error};

use crate::ops::{Core, DOCUMENTS};

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    core: Arc<Core>,
    api_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Agent {
    /// Start the agent. Fails on a bad configuration, on documents that do not verify
    /// against the pinned federation key, or when no verified documents can be had in
    /// `timing.startup_wait_secs`.
    pub async fn start(config: AgentConfig) -> Result<Agent, Error> {
        Agent::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Agent::start`] with the clock every operation reads `now` from (tests move an
    /// `OffsetClock` instead of sleeping).
    pub async fn start_with_clock(config: AgentConfig, clock: SharedClock) -> Result<Agent, Error> {
        config.check()?;
        let keys = config.load_keys()?;
        let me_keys = Me {
            oin: config.oin.clone(),
            signing: keys.signing.verifying_key(),
            age_recipient: keys.age.to_public().to_string(),
        };
        let link = BrokerLink::new(&config.broker, &config.tls)?;
        let store = Store::open(&config.data_dir)?;
        let docs = initial_documents(&config, &keys.federation, &me_keys, &store, &link).await?;
        store.meta_put(DOCUMENTS, &docs.raw)?;
        store.flush().await?;
        info!(
            oin = %config.oin,
            covenant = %docs.policy.covenant.id,
            directory_serial = docs.serial(),
            "federation documents verified"
        );

        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", config.api.listen), e))?;
        let api_addr = listener
            .local_addr()
            .map_err(|e| Error::io("listener address", e))?;
        if !api_addr.ip().is_loopback() {
            warn!(%api_addr, "the HTTP API listens beyond loopback: partner systems on the network can reach it with the token");
        }

        let core = Arc::new(Core {
            me: config.oin.clone(),
            signing: keys.signing,
            identities: std::iter::once(keys.age).chain(keys.previous_age).collect(),
            federation: keys.federation,
            api_token: keys.api_token,
            me_keys,
            docs: RwLock::new(Arc::new(docs)),
            store,
            link,
            outbox_wake: Notify::new(),
            clock,
            config,
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(api::serve(listener, core.clone(), stopped.clone()));
        sync::spawn_all(&mut tasks, &core, &stopped);
        info!(%api_addr, oin = %core.me, "agent running");
        Ok(Agent {
            core,
            api_addr,
            stop,
            tasks,
        })
    }

    /// Where the HTTP API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The shared state (for embedding and tests).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Run until `signal` completes, then shut down cleanly.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        info!("shutting down");
        self.shutdown().await;
    }

    /// Stop the API and the loops (each finishes the step it is in, bounded), close the
    /// broker connection and flush the database.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(std::time::Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            warn!("background tasks did not stop in time; aborting them");
            self.tasks.abort_all();
        }
        self.core.link.close().await;
        if let Err(e) = self.core.store.flush().await {
            error!(cause = %e, "final flush failed");
        }
        info!("agent stopped");
    }
}

async fn initial_documents(
    config: &AgentConfig,
    pinned: &VerifyingKey,
    me: &Me,
    store: &Store,
    link: &BrokerLink,
) -> Result<Trusted, Error> {
    if let Some(raw) = store.meta_get::<Documents>(DOCUMENTS)? {
        match documents::verify(pinned, &raw, me) {
            // The broker may be away; start on the verified cache, refresh in the background.
            Ok(c) => return Ok(c),
            // E.g. a new federation key was pinned: the cache is of no use, ask the broker.
            Err(e) => {
                warn!(cause = %e, "the cached federation documents do not verify; fetching them again")
            }
        }
    }
    let started = Instant::now();
    let wait = std::time::Duration::from_secs(config.timing.startup_wait_secs);
    let mut backoff = config.backoff();
    loop {
        match link
            .request(&Request::GetDocuments, config.request_timeout())
            .await
        {
            Ok(Response::Documents(d)) => return documents::verify(pinned, &d, me),
            Ok(other) => warn!(answer = ?other.name(), "unexpected answer to GetDocuments"),
            Err(e) => warn!(cause = %e, "cannot fetch the federation documents yet"),
        }
        if started.elapsed() >= wait {
            return Err(Error::NotReady);
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
