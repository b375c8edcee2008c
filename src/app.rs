//! Wiring: from a validated [`Config`] to a running service (store, journal, actors, HTTP),
//! and back down again in order on shutdown. `serve`, the integration tests and the
//! benchmarks all start the service through [`App::start`].

use crate::backend;
use crate::config::Config;
use crate::http::service::ServiceRoutes;
use crate::http::webhook::{RequestLog, WebhookService};
use crate::http::{self, Api, ReadyCheck};
use crate::journal::Journal;
use crate::store::SledStore;
use crate::webhook::{RouteTable, RouteTarget, UnmatchedLog};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use watchstate_actors::clock::{Clock, SystemClock};
use watchstate_actors::config::{PairSpec, SyncSettings};
use watchstate_actors::store::{PairKey, Store};
use watchstate_actors::supervisor::SupervisorHandle;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Store(#[from] crate::store::OpenError),
    #[error("storage error: {0}")]
    Storage(String),
    #[error(
        "cannot listen on {addr}: {source} (change server.listen or stop what uses that port)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the actors: {0}")]
    Actors(String),
}

/// A running service.
pub struct App {
    /// Where the HTTP API listens (the real port when the config said `:0`).
    pub addr: SocketAddr,
    /// The API key in force (for tests and the startup log line, which masks it).
    pub api_key: String,
    store: SledStore,
    actors: SupervisorHandle,
    journal: Arc<Journal>,
    shutdown_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl App {
    /// Open the store, start the actors, replay the journal, start the HTTP server.
    pub async fn start(config: Config) -> Result<App, AppError> {
        let store = SledStore::open(&config.storage.path, config.storage.cache_bytes)?;
        let api_key = store
            .api_key(config.server.api_key.as_deref())
            .map_err(|e| AppError::Storage(e.to_string()))?;

        let mut specs = Vec::new();
        let mut targets = Vec::new();
        for (user, name, b) in config.pairs() {
            let client = backend::build_client(config.client_config(b))
                .map_err(|e| AppError::Actors(format!("users.{user}.backends.{name}: {e}")))?;
            let key = PairKey::new(user, name);
            specs.push((
                PairSpec {
                    key,
                    kind: b.kind,
                    server_id: b.server_id.clone(),
                    backend_user_id: b.user_id.clone(),
                    import: b.import,
                    export: b.export,
                    import_unplayed: b.import_unplayed,
                    sync_interval: config.sync_interval_of(b),
                    ignore_libraries: b.ignore_libraries.clone(),
                },
                client,
            ));
            // The user id and each alias route to this pair alike.
            for user_id in std::iter::once(&b.user_id).chain(&b.user_id_aliases) {
                targets.push(RouteTarget {
                    user: user.to_string(),
                    backend: name.to_string(),
                    server_id: b.server_id.clone(),
                    user_id: user_id.clone(),
                });
            }
        }
        let settings = SyncSettings {
            progress: config.sync.progress,
            progress_min: config.sync.progress_min,
            progress_threshold: config.sync.progress_threshold,
            push_attempts: config.sync.push_attempts,
            max_requests_per_second: config.sync.max_requests_per_second,
            page_size: config.sync.page_size,
            retry_base: config.sync.retry_base,
            retry_max: config.sync.retry_max,
            first_sync_delay: config.sync.first_sync_delay,
            ..SyncSettings::default()
        };
        // The journal is opened before the actors start, so that their reads and removals of
        // journal keys reach it.
        let journal =
            Arc::new(Journal::open(store.clone()).map_err(|e| AppError::Storage(e.to_string()))?);
        let pair_count = specs.len();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let actors = SupervisorHandle::start(
            specs,
            settings,
            Arc::new(store.clone()) as Arc<dyn Store>,
            clock.clone(),
        )
        .await
        .map_err(|e| AppError::Actors(e.to_string()))?;

        let dispatch_to = actors.clone();
        journal.set_dispatch(Arc::new(move |entry| {
            dispatch_to.dispatch(entry).map_err(|e| e.to_string())
        }));
        let configured: std::collections::HashSet<PairKey> =
            config.pairs().map(|(u, b, _)| PairKey::new(u, b)).collect();
        let replayed = journal
            .replay_configured(|pair| configured.contains(pair))
            .map_err(|e| AppError::Storage(e.to_string()))?;
        if replayed > 0 {
            tracing::info!(replayed, "replaying journaled events from the previous run");
        }

        let readiness_store = store.clone();
        let readiness_actors = actors.clone();
        let api = Arc::new(Api {
            api_key: api_key.clone(),
            secure_webhooks: config.server.secure_webhooks,
            max_body_bytes: config.server.max_body_bytes,
            started: Instant::now(),
            readiness: Box::new(move || {
                let report = readiness_actors.ready();
                let actors_check = ReadyCheck {
                    name: "actors".into(),
                    ok: report.ready,
                    message: (!report.ready).then(|| {
                        format!(
                            "{} of {} actors running; not running: {}",
                            report.running,
                            report.actors,
                            report
                                .not_running
                                .iter()
                                .map(|(k, s)| format!("{k} ({s:?})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }),
                };
                vec![
                    ReadyCheck {
                        name: "config".into(),
                        ok: true,
                        message: None,
                    },
                    store_check(&readiness_store),
                    actors_check,
                ]
            }),
        });
        let routes: Arc<dyn http::Routes> = Arc::new(ServiceRoutes {
            webhook: WebhookService {
                routes: RouteTable::new(targets),
                sink: journal.clone(),
                unmatched: UnmatchedLog::default(),
                requests: RequestLog::new(1000),
                counters: Default::default(),
                max_body_bytes: config.server.max_body_bytes,
                clock,
            },
            actors: Some(actors.clone()),
            journal: Some(journal.clone()),
            store: Some(store.clone()),
        });

        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| AppError::Listen {
                addr: config.server.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| AppError::Listen {
            addr: config.server.listen,
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(http::serve(listener, api, routes, async move {
            let _ = shutdown_rx.await;
        }));
        tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), pairs = pair_count, "watchstate is serving");
        Ok(App {
            addr,
            api_key,
            store,
            actors,
            journal,
            shutdown_tx: Some(shutdown_tx),
            server: Some(server),
        })
    }

    /// Stop accepting, finish in-flight requests, stop the actors, flush the store.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.actors.shutdown().await;
        self.journal.close().await;
        if let Err(e) = self.store.flush_async().await {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!("watchstate stopped");
    }
}

fn store_check(store: &SledStore) -> ReadyCheck {
    use watchstate_actors::store::{Store, Tree};
    match store.get(Tree::Meta, b"schema_version") {
        Ok(_) => ReadyCheck {
            name: "store".into(),
            ok: true,
            message: None,
        },
        Err(e) => ReadyCheck {
            name: "store".into(),
            ok: false,
            message: Some(e.to_string()),
        },
    }
}

/// `watchstate serve`: run until SIGINT or SIGTERM, then shut down gracefully.
pub async fn serve_until_signal(config: Config) -> Result<(), AppError> {
    let app = App::start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    app.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
