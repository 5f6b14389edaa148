//! Builds storage, the session registry, TLS and the module tables; spawns the listeners;
//! shuts down on request (every stream gets `system-shutdown`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::Config;
use crate::modules::{IqHandler, MODULES};
use crate::sasl::AuthThrottle;
use crate::session::SessionRegistry;
use crate::storage::Storage;
use crate::stream::tls::TlsSetup;

/// Everything a connection or module needs, shared behind one `Arc`.
pub struct Server {
    pub config: Config,
    hosts: HashSet<String>,
    pub storage: Storage,
    pub sessions: SessionRegistry,
    /// Sessions that can be resumed (XEP-0198), by resumption id.
    pub resumable: crate::session::sm::ResumeTable,
    pub tls: TlsSetup,
    pub throttle: AuthThrottle,
    pub started: Instant,
    /// Becomes `true` once when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Archiving preferences of active accounts (XEP-0313), read on every archived message.
    pub archive_prefs: crate::modules::mam::PrefsCache,
    /// Offline store or live resource: one decision at a time per account.
    pub offline_gates: crate::modules::offline::Gates,
    /// Group chat (XEP-0045), when enabled: a router destination of its own.
    pub muc: Option<Arc<crate::modules::muc::Service>>,
    /// External components (XEP-0114): a router destination of their own.
    pub components: crate::session::component::Components,
    /// HTTP bots and webhooks: a router destination of their own.
    pub bots: crate::modules::bots::Bots,
    /// Federation: links to other servers, the router's destination for other domains.
    pub s2s: crate::s2s::S2s,
    /// Payload namespace -> handler, built once from [`MODULES`].
    pub iq_handlers: HashMap<&'static str, &'static IqHandler>,
    /// Counters for monitoring (`/metrics`).
    pub counters: crate::metrics::Counters,
    /// Clients' feature sets by entity capabilities (XEP-0115).
    pub caps: crate::modules::caps::Caps,
    /// Contacts on other servers that PEP notifies (their resources and caps).
    pub pep_remote: crate::modules::pep::RemoteReaders,
}

impl Server {
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.hosts.contains(domain)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("tls: {0}")]
    Tls(#[from] crate::stream::tls::TlsSetupError),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// A started server: its bound addresses and the handle to stop it.
pub struct Running {
    pub server: Arc<Server>,
    pub c2s_addrs: Vec<SocketAddr>,
    pub c2s_tls_addrs: Vec<SocketAddr>,
    pub component_addrs: Vec<SocketAddr>,
    pub s2s_addrs: Vec<SocketAddr>,
    pub s2s_direct_tls_addrs: Vec<SocketAddr>,
    pub http_addrs: Vec<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    /// Every connection task holds a clone; all dropped = all streams closed.
    alive_tx: mpsc::Sender<()>,
    alive_rx: mpsc::Receiver<()>,
}

pub async fn start(config: Config) -> Result<Running, StartError> {
    let storage = Storage::open(&config.storage_url(), config.storage.max_connections).await?;
    let tls = TlsSetup::new(&config)?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut iq_handlers = HashMap::new();
    for m in MODULES {
        for h in m.iq {
            iq_handlers.insert(h.ns, h);
        }
    }
    let muc = crate::modules::muc::Service::new(&config);
    let components = crate::session::component::Components::new(&config);
    let server = Arc::new(Server {
        muc,
        components,
        bots: crate::modules::bots::Bots::new(&config),
        s2s: crate::s2s::S2s::new(&config),
        hosts: config.server.hosts.iter().cloned().collect(),
        throttle: AuthThrottle::new(config.auth.free_failures, Duration::from_secs(config.auth.max_delay_secs)),
        config,
        storage,
        sessions: SessionRegistry::new(),
        resumable: Default::default(),
        archive_prefs: Default::default(),
        offline_gates: Default::default(),
        tls,
        started: Instant::now(),
        shutdown,
        iq_handlers,
        counters: Default::default(),
        caps: Default::default(),
        pep_remote: Default::default(),
    });
    if let Some(muc) = &server.muc {
        muc.attach(&server);
    }
    server.s2s.attach(&server);
    tokio::spawn(crate::modules::mam::retention_task(server.clone()));
    let (alive_tx, alive_rx) = mpsc::channel(1);
    let limit = Arc::new(Semaphore::new(server.config.c2s.max_connections));
    let mut c2s_addrs = Vec::new();
    let mut c2s_tls_addrs = Vec::new();
    let listeners =
        server.config.listen.c2s.iter().map(|a| (*a, false)).chain(server.config.listen.c2s_direct_tls.iter().map(|a| (*a, true)));
    for (addr, direct) in listeners.collect::<Vec<_>>() {
        let (l, local) = bind(addr).await?;
        tracing::info!(addr = %local, direct_tls = direct, "listening for clients");
        if direct {
            c2s_tls_addrs.push(local);
        } else {
            c2s_addrs.push(local);
        }
        tokio::spawn(accept_loop(server.clone(), l, Link::Client { direct_tls: direct }, limit.clone(), alive_tx.clone()));
    }
    let mut component_addrs = Vec::new();
    for addr in server.config.listen.component.clone() {
        let (l, local) = bind(addr).await?;
        tracing::info!(addr = %local, "listening for components");
        component_addrs.push(local);
        tokio::spawn(accept_loop(server.clone(), l, Link::Component, limit.clone(), alive_tx.clone()));
    }
    let mut s2s_addrs = Vec::new();
    let mut s2s_direct_tls_addrs = Vec::new();
    if server.s2s.enabled() {
        for addr in server.config.listen.s2s.clone() {
            let (l, local) = bind(addr).await?;
            tracing::info!(addr = %local, "listening for servers");
            s2s_addrs.push(local);
            tokio::spawn(accept_loop(server.clone(), l, Link::Server { direct_tls: false }, limit.clone(), alive_tx.clone()));
        }
        for addr in server.config.listen.s2s_direct_tls.clone() {
            let (l, local) = bind(addr).await?;
            tracing::info!(addr = %local, "listening for servers (direct TLS)");
            s2s_direct_tls_addrs.push(local);
            tokio::spawn(accept_loop(server.clone(), l, Link::Server { direct_tls: true }, limit.clone(), alive_tx.clone()));
        }
    }
    let http_addrs = crate::http::listen(&server).await?;
    crate::modules::bots::Bots::start(&server);
    Ok(Running {
        server,
        c2s_addrs,
        c2s_tls_addrs,
        component_addrs,
        s2s_addrs,
        s2s_direct_tls_addrs,
        http_addrs,
        shutdown_tx,
        alive_tx,
        alive_rx,
    })
}

/// A listener on `addr`, and the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind(addr).await.map_err(|e| StartError::Listen(addr, e))?;
    let local = l.local_addr().map_err(|e| StartError::Listen(addr, e))?;
    Ok((l, local))
}

/// What a listener accepts.
#[derive(Clone, Copy)]
enum Link {
    Client { direct_tls: bool },
    Component,
    Server { direct_tls: bool },
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener, link: Link, limit: Arc<Semaphore>, alive: mpsc::Sender<()>) {
    let mut shutdown = server.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            continue;
        };
        let server = server.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            match link {
                Link::Client { direct_tls } => crate::session::c2s::serve(server, tcp, peer, direct_tls).await,
                Link::Component => crate::session::component::serve(server, tcp, peer).await,
                Link::Server { direct_tls } => crate::s2s::serve(server, tcp, peer, direct_tls).await,
            }
            drop(permit);
            drop(alive);
        });
    }
}

impl Running {
    /// Close every stream with `system-shutdown`, wait for them (bounded), close storage.
    pub async fn shutdown(self) {
        let Running { server, shutdown_tx, alive_tx, mut alive_rx, .. } = self;
        tracing::info!(sessions = server.sessions.count(), "shutting down");
        // Connections still negotiating watch the flag; bound sessions are told through their
        // mailbox (a session bound after this sweep sees the flag when its loop starts).
        let _ = shutdown_tx.send(true);
        server.sessions.close_all(crate::error::StreamError::SystemShutdown);
        server.components.close_all(crate::error::StreamError::SystemShutdown);
        server.s2s.close_all(crate::error::StreamError::SystemShutdown);
        drop(alive_tx);
        let grace = Duration::from_secs(server.config.server.shutdown_grace_secs);
        if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
            tracing::warn!("some connections did not close in time");
        }
        server.storage.close().await;
        tracing::info!("stopped");
    }
}

/// Run until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), StartError> {
    let running = start(config).await?;
    wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
