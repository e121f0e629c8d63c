//! The broker as a process: `ketenpost-broker serve`. [`serve`] starts a runtime and the
//! broker on the broker's clock ([`crate::failpoint::clock`]), tells where it listens on
//! standard output, and runs until SIGINT or SIGTERM; meanwhile SIGHUP reloads the
//! federation documents and SIGUSR1 writes an online backup ([`SignalTasks`]).
//!
//! The binary's allocator is jemalloc: freed memory is returned by its background thread
//! after [`DIRTY_DECAY_MS`], and what it holds is logged every minute and at shutdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ketenpost_core::clock::SharedClock;
use ketenpost_transport::signal::shutdown_signal;

use crate::config::BrokerConfig;
use crate::server::{Broker, Reloader};

/// Why `serve` ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The broker could not start (its configuration, documents, keys or store).
    #[error("{0:#}")]
    Start(anyhow::Error),
    /// The broker stopped on a storage failure (a failed fsync poisons the store).
    #[error("{0:#}")]
    Storage(anyhow::Error),
}

/// Serve `config` until SIGINT or SIGTERM (see the module docs). Prints `metrics on ADDR`,
/// `tcp on ADDR` (each when configured) and `listening on ADDR` once the broker listens,
/// and `backup written to DIR` after each backup SIGUSR1 asked for.
pub fn serve(config: BrokerConfig) -> Result<(), ServeError> {
    let backup_dir = config.backup.dir.clone();
    if let Err(e) = shorten_decay() {
        tracing::warn!(cause = %e, "cannot shorten the allocator's decay time");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.limits.blocking_threads)
        .thread_keep_alive(Duration::from_secs(10))
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async {
        let clock = crate::failpoint::clock();
        let broker = Broker::start_with_clock(config, clock.clone())
            .await
            .map_err(ServeError::Start)?;
        // Tell a supervisor (or a test harness) where we listen.
        if let Some(m) = broker.metrics_addr() {
            println!("metrics on {m}");
        }
        if let Some(t) = broker.tcp_addr() {
            println!("tcp on {t}");
        }
        println!("listening on {}", broker.local_addr());
        // Freed memory goes back to the system within seconds even while the broker is
        // idle, and the allocator's view is logged every minute and at the signal.
        if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!(cause = %e, "cannot start the allocator's purging thread");
        }
        let memory_log = tokio::spawn(async {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                log_memory();
            }
        });
        let signals = SignalTasks::spawn(broker.reloader(), backup_dir, clock);
        let result = broker
            .run_until(async {
                shutdown_signal().await;
                log_memory();
            })
            .await;
        memory_log.abort();
        drop(signals);
        result.map_err(ServeError::Storage)
    })
}

/// The folder under `dir` an online backup taken at `now` goes to: named by the time,
/// `YYYYMMDDTHHMMSS.mmmZ`.
pub fn backup_folder(dir: &Path, now: DateTime<Utc>) -> PathBuf {
    dir.join(now.format("%Y%m%dT%H%M%S%.3fZ").to_string())
}

/// The signal handlers of a serving broker (Unix): SIGHUP reads the policy, directory and
/// CRLs again now, not at the next timer; SIGUSR1 writes an online backup into a new
/// folder under `backup_dir` ([`backup_folder`], named by the broker's clock). Dropping
/// the value stops them.
#[derive(Debug)]
pub struct SignalTasks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SignalTasks {
    /// Install the handlers on the current runtime. `clock` should be the broker's, so the
    /// backup folder is named by the same time its manifest records.
    pub fn spawn(reloader: Reloader, backup_dir: Option<PathBuf>, clock: SharedClock) -> Self {
        #[cfg(unix)]
        {
            let hangup = {
                let reloader = reloader.clone();
                tokio::spawn(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut hup) = signal(SignalKind::hangup()) else {
                        return;
                    };
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the federation documents");
                        reloader.reload().await;
                    }
                })
            };
            let usr1 = tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
                    return;
                };
                while usr1.recv().await.is_some() {
                    let Some(dir) = &backup_dir else {
                        tracing::warn!(
                            "SIGUSR1: no backup folder configured ([backup] dir or --backup-dir)"
                        );
                        continue;
                    };
                    let dest = backup_folder(dir, clock.now());
                    if reloader.backup(&dest).await.is_ok() {
                        println!("backup written to {}", dest.display());
                    }
                }
            });
            SignalTasks {
                tasks: vec![hangup, usr1],
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (reloader, backup_dir, clock);
            SignalTasks { tasks: Vec::new() }
        }
    }
}

impl Drop for SignalTasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How long jemalloc keeps freed pages before it returns them (its default is 10 s).
/// Under load the checks, sled and the audit archiver allocate and free memory by the
/// megabyte every second; kept for 10 s, that freed memory showed as 20-45 MiB more
/// resident memory than the live data needed (BENCHMARKS.md, the audit archive).
pub const DIRTY_DECAY_MS: isize = 1000;

/// Set [`DIRTY_DECAY_MS`] for the arenas to come and every arena in use.
fn shorten_decay() -> Result<(), tikv_jemalloc_ctl::Error> {
    use tikv_jemalloc_ctl::{Access, AsName};
    b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS)?;
    let arenas: u32 = b"arenas.narenas\0".name().read()?;
    for i in 0..arenas {
        // An arena not created yet has no settings of its own (it takes the default set
        // above when it is): its error is no failure.
        let _ = format!("arena.{i}.dirty_decay_ms\0")
            .as_bytes()
            .name()
            .write(DIRTY_DECAY_MS);
    }
    Ok(())
}

/// Log what the allocator holds: `allocated` is live data, `resident` what it keeps in
/// memory for it (the difference is freed memory not yet returned, and fragmentation).
pub fn log_memory() {
    use tikv_jemalloc_ctl::{epoch, stats};
    let mib = |n: usize| n / (1024 * 1024);
    if epoch::advance().is_ok() {
        if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
            tracing::info!(
                allocated_mib = mib(allocated),
                resident_mib = mib(resident),
                "memory"
            );
        }
    }
}
