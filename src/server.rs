//! The API server: binds the listener, runs tiny_http on it, and serves requests from an
//! elastic pool of handler threads. Long polls and `/logs` calls block their thread, so the pool
//! grows whenever no thread is idle and shrinks back when the load is gone.
//!
//! Owns thread lifetimes and shutdown; knows nothing of routes or cameras.

use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::ServerConfig;
use crate::registry::{Registry, RegistryConfig};
use crate::routes::{self, App};
use crate::{error, info};

/// How often the nudger opens an empty connection to the server itself (see [`spawn_nudger`]).
const NUDGE_EVERY: Duration = Duration::from_millis(100);
/// Handler threads kept alive while idle.
const MIN_WORKERS: usize = 4;
/// Upper bound on handler threads; each blocked long poll or `/logs` call holds one.
const MAX_WORKERS: usize = 16_384;
/// How often an idle worker wakes to notice shutdown.
const WAKE_EVERY: Duration = Duration::from_millis(250);
/// Handlers parse JSON (serde_json stops at depth 128) and format responses: 256 KiB is ample,
/// and only the pages actually touched count against memory.
const WORKER_STACK: usize = 256 * 1024;

/// Live counters of the handler pool, shown on `/stats`.
#[derive(Debug, Default)]
pub struct PoolStats {
    threads: AtomicUsize,
    idle: AtomicUsize,
    busy: AtomicUsize,
    spawn_failures: AtomicUsize,
    parked: AtomicUsize,
}

/// A copy of [`PoolStats`] at one instant, plus the process's thread count.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSnapshot {
    pub handler_threads: usize,
    pub idle_handlers: usize,
    pub busy_handlers: usize,
    pub spawn_failures: usize,
    /// Connections answered and then parked because their declared body was too large to discard.
    pub parked_connections: usize,
    /// From /proc/self/status; 0 where that is not available.
    pub process_threads: usize,
}

impl PoolStats {
    pub fn parked_connection(&self) {
        self.parked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            handler_threads: self.threads.load(Ordering::Relaxed),
            idle_handlers: self.idle.load(Ordering::Relaxed),
            busy_handlers: self.busy.load(Ordering::Relaxed),
            spawn_failures: self.spawn_failures.load(Ordering::Relaxed),
            parked_connections: self.parked.load(Ordering::Relaxed),
            process_threads: process_threads(),
        }
    }
}

fn process_threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Pool {
    http: tiny_http::Server,
    app: App,
    stopping: AtomicBool,
}

/// A running API server. Dropping it does not stop it; call [`ApiServer::shutdown`].
pub struct ApiServer {
    addr: SocketAddr,
    pool: Arc<Pool>,
    ticker: Option<JoinHandle<()>>,
    nudger: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `HOST:PORT` and starts serving on background threads.
    pub fn start(config: ServerConfig) -> std::io::Result<ApiServer> {
        let listener = TcpListener::bind((config.host.as_str(), config.port))?;
        let addr = listener.local_addr()?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let registry = Arc::new(Registry::new(RegistryConfig {
            poll_hold: config.poll_hold,
            ack_timeout: config.ack_timeout,
            camera_grace: config.camera_grace,
            max_waiting_per_camera: config.max_waiting_per_camera,
        }));
        let ticker = registry.spawn_ticker()?;
        let app = App {
            config,
            registry,
            pool: Arc::new(PoolStats::default()),
        };
        let pool = Arc::new(Pool {
            http,
            app,
            stopping: AtomicBool::new(false),
        });
        for _ in 0..MIN_WORKERS {
            spawn_worker(&pool)?;
        }
        let nudger = spawn_nudger(&pool, loopback(addr))?;
        info!("API server listening on http://{addr}");
        Ok(ApiServer {
            addr,
            pool,
            ticker: Some(ticker),
            nudger: Some(nudger),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, with 127.0.0.1 in place of an unspecified bind address.
    pub fn url(&self) -> String {
        format!("http://{}", loopback(self.addr))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.pool.app.registry
    }

    pub fn pool_stats(&self) -> crate::server::PoolSnapshot {
        self.pool.app.pool.snapshot()
    }

    /// Blocks the calling thread while the server runs (the `api` binary's main thread).
    pub fn wait(mut self) {
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }

    /// Answers held polls and waiting calls at once, stops the handler threads and closes the
    /// listening socket. Returns when all handler threads have exited or after `deadline`.
    pub fn shutdown(mut self) {
        self.pool.app.registry.shutdown();
        self.pool.stopping.store(true, Ordering::SeqCst);
        for thread in [self.ticker.take(), self.nudger.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pool.app.pool.threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        info!("API server on {} stopped", self.addr);
        // Dropping the last Arc<Pool> drops tiny_http's Server, which closes the listener.
    }
}

/// The address to reach a server bound to `addr`: loopback in place of an unspecified address.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Works around a lost wake-up in tiny_http 0.12's connection pool (`util::TaskPool`): when two
/// connections arrive within one idle thread's wake-up latency, the second is queued with no
/// thread woken for it, and waits until some pool thread finishes a whole connection. Under long
/// polling every busy connection may be a `/logs` call waiting on exactly that queued camera
/// connection, so without help it waits for a timeout. An empty connection to ourselves starts
/// or wakes a pool thread, which finishes it at once and then takes the oldest queued
/// connection. Cost: ten connect/close pairs a second on loopback.
fn spawn_nudger(pool: &Arc<Pool>, target: SocketAddr) -> std::io::Result<JoinHandle<()>> {
    let pool = Arc::clone(pool);
    std::thread::Builder::new()
        .name("tiny-http-nudger".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            while !pool.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(NUDGE_EVERY);
                // Connected and dropped at once: tiny_http reads EOF and ends the connection.
                let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1));
            }
        })
}

fn spawn_worker(pool: &Arc<Pool>) -> std::io::Result<()> {
    let stats = &pool.app.pool;
    stats.threads.fetch_add(1, Ordering::SeqCst);
    let worker_pool = Arc::clone(pool);
    let spawned = std::thread::Builder::new()
        .name("http-worker".into())
        .stack_size(WORKER_STACK)
        .spawn(move || worker(worker_pool));
    if let Err(e) = spawned {
        stats.threads.fetch_sub(1, Ordering::SeqCst);
        stats.spawn_failures.fetch_add(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

fn worker(pool: Arc<Pool>) {
    let stats = &pool.app.pool;
    let mut last_request = Instant::now();
    loop {
        if pool.stopping.load(Ordering::SeqCst) {
            break;
        }
        stats.idle.fetch_add(1, Ordering::SeqCst);
        let received = pool.http.recv_timeout(WAKE_EVERY);
        stats.idle.fetch_sub(1, Ordering::SeqCst);
        match received {
            Ok(Some(request)) => {
                last_request = Instant::now();
                // Keep one thread free for the next request, since this one may block for long.
                if stats.idle.load(Ordering::SeqCst) == 0
                    && stats.threads.load(Ordering::SeqCst) < MAX_WORKERS
                {
                    if let Err(e) = spawn_worker(&pool) {
                        error!("could not start a handler thread: {e}; serving with the threads there are");
                    }
                }
                stats.busy.fetch_add(1, Ordering::SeqCst);
                if catch_unwind(AssertUnwindSafe(|| routes::handle(&pool.app, request))).is_err() {
                    error!("a request handler panicked; the request got a 500 and the server keeps serving");
                }
                stats.busy.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(None) => {
                let retire = last_request.elapsed() > pool.app.config.worker_idle_exit
                    && stats
                        .threads
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n > MIN_WORKERS).then(|| n - 1)
                        })
                        .is_ok();
                if retire {
                    return;
                }
            }
            Err(e) => {
                error!("the HTTP listener failed: {e}");
                std::thread::sleep(WAKE_EVERY);
            }
        }
    }
    stats.threads.fetch_sub(1, Ordering::SeqCst);
}
