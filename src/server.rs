//! The API server: opens the [`FrontDoor`] and serves its requests from an elastic pool of
//! handler threads. Long polls and `/logs` calls block their thread, so the pool grows whenever
//! no thread is idle and shrinks back when the load is gone.
//!
//! Requests of one connection are served one at a time, in order ([`Connections`]): tiny_http
//! hands over every pipelined request at once, yet each response is written only after the
//! previous one (its writers are chained), so a handler given request 2 while request 1 is a
//! held poll would block for the whole hold. One poll followed by 5,000 pipelined requests took
//! every handler thread for `POLL_HOLD_SECS`; now it takes one, and the rest wait in a queue.
//!
//! Owns handler thread lifetimes and shutdown; knows nothing of routes, cameras or sockets.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use tiny_http::Request;

use crate::config::ServerConfig;
use crate::front_door::{loopback, FrontDoor, FrontDoorConfig, FrontDoorStats};
use crate::log::{log_error, log_info};
use crate::registry::{Registry, RegistryConfig};
use crate::routes::{self, Context, ServerView};

/// Handler threads kept alive while idle.
const MIN_WORKERS: usize = 4;
/// How often an idle worker wakes to notice shutdown.
const WAKE_EVERY: Duration = Duration::from_millis(250);
/// Handlers parse JSON (serde_json stops at depth 128) and format responses: 256 KiB is ample,
/// and only the pages actually touched count against memory.
const WORKER_STACK: usize = 256 * 1024;
/// How long shutdown waits for handler threads busy with a request.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Live counters of the handler pool, shown on `/stats`.
#[derive(Debug, Default)]
pub struct PoolStats {
    threads: AtomicUsize,
    idle: AtomicUsize,
    busy: AtomicUsize,
    spawn_failures: AtomicUsize,
    parked: AtomicUsize,
    pipelined: AtomicUsize,
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
    /// Requests waiting behind an earlier request of the same connection (pipelined).
    pub pipelined_waiting: usize,
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
            pipelined_waiting: self.pipelined.load(Ordering::Relaxed),
            process_threads: crate::front_door::process_threads(),
        }
    }
}

/// The connections with a request being served, each with the requests it pipelined behind it.
#[derive(Default)]
struct Connections {
    serving: Mutex<HashMap<SocketAddr, VecDeque<Request>>>,
}

impl Connections {
    /// The request back when it may be served now; `None` when it waits behind an earlier
    /// request of its connection (a connection is identified by its peer's address and port).
    fn admit(&self, request: Request, stats: &PoolStats) -> Option<Request> {
        let Some(peer) = request.remote_addr().copied() else {
            return Some(request);
        };
        match self.serving.lock().entry(peer) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back(request);
                stats.pipelined.fetch_add(1, Ordering::Relaxed);
                None
            }
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                Some(request)
            }
        }
    }

    /// Called when a request of `peer` has been answered: the connection's next request, if it
    /// sent one.
    fn finished(&self, peer: Option<SocketAddr>, stats: &PoolStats) -> Option<Request> {
        let peer = peer?;
        let mut serving = self.serving.lock();
        let next = serving.get_mut(&peer)?.pop_front();
        match next {
            Some(_) => {
                stats.pipelined.fetch_sub(1, Ordering::Relaxed);
            }
            None => {
                serving.remove(&peer);
            }
        }
        next
    }
}

struct Pool {
    connections: Connections,
    app: Context,
    stats: Arc<PoolStats>,
    front_door: Arc<FrontDoor>,
    stopping: AtomicBool,
    /// Each request being served holds a handler, and each request has a connection, so the
    /// connection limit bounds the handlers too.
    max_workers: usize,
    /// Each worker holds a clone of this sender until it exits; taken at shutdown, after which
    /// no worker starts.
    workers_alive: Mutex<Option<Sender<()>>>,
    /// Disconnects once the sender above and every worker's clone are gone.
    workers_done: Receiver<()>,
    surplus: Mutex<Surplus>,
}

/// Which handler threads the pool can do without. Idle threads take the next request in turn,
/// so while cameras keep polling every idle thread is woken now and then and none stays idle
/// for a whole `worker_idle_exit`: a per-thread idle clock would keep a burst's threads for
/// ever. What the pool watches instead is the fewest threads left idle at any moment: if, over
/// a whole `worker_idle_exit`, there were always `k` idle threads besides the one kept free for
/// the next request, those `k` were never needed, and `k` threads retire (whichever time out
/// first; which ones does not matter).
struct Surplus {
    /// The current half of the watched interval began here.
    since: Instant,
    /// Fewest idle threads seen in the current half, and in the half before it.
    fewest_now: usize,
    fewest_before: usize,
    /// Threads still to retire, decided at the end of the last half.
    to_retire: usize,
}

impl Surplus {
    fn new(now: Instant) -> Surplus {
        Surplus {
            since: now,
            fewest_now: 0,
            fewest_before: 0,
            to_retire: 0,
        }
    }

    /// Notes `idle` threads idle now (sampled whenever a request takes one); at the end of each
    /// half of `interval`, decides how many threads retire.
    fn note(&mut self, idle: usize, now: Instant, interval: Duration) {
        self.fewest_now = self.fewest_now.min(idle);
        if now.duration_since(self.since) >= interval / 2 {
            let fewest = self.fewest_now.min(self.fewest_before);
            // One idle thread stays: the spawn rule would start it again at the next request.
            self.to_retire = fewest.saturating_sub(1);
            self.fewest_before = self.fewest_now;
            self.fewest_now = idle;
            self.since = now;
        }
    }

    /// Whether the caller, an idle thread, should retire now.
    fn take_one(&mut self) -> bool {
        let retire = self.to_retire > 0;
        self.to_retire = self.to_retire.saturating_sub(1);
        retire
    }
}

/// The server's side of [`ServerView`]: what routes may see of the pool and the front door.
struct ServerStatus {
    pool: Arc<PoolStats>,
    front_door: Arc<FrontDoor>,
}

impl ServerView for ServerStatus {
    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "server": self.pool.snapshot(),
            "frontDoor": self.front_door.stats(),
        })
    }

    fn connection_parked(&self) {
        self.pool.parked_connection();
    }

    fn handler_threads(&self) -> usize {
        // Not `snapshot()`: that also reads /proc/self/status, which a scrape does not need.
        self.pool.threads.load(Ordering::Relaxed)
    }

    fn open_connections(&self) -> usize {
        self.front_door.open_connections()
    }
}

/// A running API server. Dropping it does not stop it; call [`ApiServer::shutdown`].
pub struct ApiServer {
    pool: Arc<Pool>,
    ticker: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `HOST:PORT` and starts serving on background threads.
    pub fn start(config: ServerConfig) -> std::io::Result<ApiServer> {
        crate::front_door::quiet_tiny_http_panics();
        let registry = Arc::new(Registry::new(RegistryConfig {
            poll_hold: config.poll_hold,
            ack_timeout: config.ack_timeout,
            camera_grace: config.camera_grace,
            max_waiting_per_camera: config.max_waiting_per_camera,
            camera_forget: config.camera_forget,
            max_cameras: config.max_cameras,
            arrival_window: config.camera_arrival,
        }));
        let probe_registry = Arc::clone(&registry);
        let front_door = FrontDoor::open(
            &config.host,
            config.port,
            FrontDoorConfig {
                header_timeout: config.header_timeout,
                max_connections: config.max_connections,
                callers_waiting: Arc::new(move || probe_registry.callers_waiting() > 0),
            },
        )?;
        let addr = front_door.local_addr();
        let ticker = registry.spawn_ticker()?;
        let max_workers = config.max_connections + MIN_WORKERS;
        let stats = Arc::new(PoolStats::default());
        let metrics = Arc::clone(registry.metrics());
        let app = Context {
            config,
            metrics,
            registry,
            server: Arc::new(ServerStatus {
                pool: Arc::clone(&stats),
                front_door: Arc::clone(&front_door),
            }),
        };
        let (workers_done_tx, workers_done) = bounded(0);
        let pool = Arc::new(Pool {
            connections: Connections::default(),
            app,
            stats,
            front_door,
            stopping: AtomicBool::new(false),
            max_workers,
            workers_alive: Mutex::new(Some(workers_done_tx)),
            workers_done,
            surplus: Mutex::new(Surplus::new(Instant::now())),
        });
        for _ in 0..MIN_WORKERS {
            spawn_worker(&pool)?;
        }
        crate::log::announce(format_args!("API server listening on http://{addr}"));
        crate::log::announce(format_args!("{}", exposure(addr)));
        // At every level but off: who may call is part of how the server is exposed.
        crate::log::announce(format_args!(
            "authentication: {}",
            if pool.app.config.api_token.is_some() {
                "API_TOKEN on: /logs, /cameras, /stats and /metrics need it"
            } else {
                "API_TOKEN off: /logs, /cameras, /stats and /metrics are open to anyone who reaches this port"
            }
        ));
        crate::log::announce(format_args!(
            "authentication: {}",
            pool.app.config.camera_auth.describe()
        ));
        Ok(ApiServer {
            pool,
            ticker: Some(ticker),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.pool.front_door.local_addr()
    }

    /// `http://IP:PORT`, with 127.0.0.1 in place of an unspecified bind address.
    pub fn url(&self) -> String {
        format!("http://{}", loopback(self.addr()))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.pool.app.registry
    }

    pub fn pool_stats(&self) -> PoolSnapshot {
        self.pool.stats.snapshot()
    }

    pub fn front_door_stats(&self) -> FrontDoorStats {
        self.pool.front_door.stats()
    }

    /// Blocks the calling thread while the server runs (the `api` binary's main thread).
    pub fn wait(mut self) {
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }

    /// Answers held polls and waiting calls at once, stops the handler threads and closes the
    /// listening socket. Returns when all handler threads have exited, or after 10 s.
    pub fn shutdown(mut self) {
        self.pool.front_door.close();
        self.pool.app.registry.shutdown();
        self.pool.stopping.store(true, Ordering::SeqCst);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        // No new worker can start now, and `workers_done` disconnects when the last one exits.
        self.pool.workers_alive.lock().take();
        let _ = self.pool.workers_done.recv_timeout(SHUTDOWN_WAIT);
        log_info!("API server on {} stopped", self.addr());
    }
}

/// How the server is exposed, for the start-up log: the bare api is for loopback and trusted
/// networks; anything untrusted clients can reach goes through the nginx edge.
fn exposure(addr: SocketAddr) -> String {
    if addr.ip().is_loopback() {
        format!("exposure: loopback only ({}): reachable from this machine alone; to serve other machines, put the nginx edge (deploy/nginx.conf) in front and let it reach this port", addr.ip())
    } else {
        format!("exposure: bound to {}: reachable from the network; this port must be reachable only by the nginx edge (deploy/nginx.conf) and trusted hosts, never by untrusted clients directly", addr.ip())
    }
}

fn spawn_worker(pool: &Arc<Pool>) -> std::io::Result<()> {
    let Some(alive) = pool.workers_alive.lock().clone() else {
        return Ok(()); // shutting down
    };
    let stats = &pool.stats;
    stats.threads.fetch_add(1, Ordering::SeqCst);
    let worker_pool = Arc::clone(pool);
    let spawned = std::thread::Builder::new()
        .name("http-worker".into())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            worker(worker_pool);
            drop(alive);
        });
    if let Err(e) = spawned {
        stats.threads.fetch_sub(1, Ordering::SeqCst);
        stats.spawn_failures.fetch_add(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

fn worker(pool: Arc<Pool>) {
    let stats = &pool.stats;
    let interval = pool.app.config.worker_idle_exit;
    loop {
        if pool.stopping.load(Ordering::SeqCst) {
            break;
        }
        stats.idle.fetch_add(1, Ordering::SeqCst);
        let received = pool.front_door.recv(WAKE_EVERY);
        let idle = stats.idle.fetch_sub(1, Ordering::SeqCst) - 1;
        match received {
            Some(request) => {
                pool.surplus.lock().note(idle, Instant::now(), interval);
                // Keep one thread free for the next request, since this one may block for long.
                if idle == 0 && stats.threads.load(Ordering::SeqCst) < pool.max_workers {
                    if let Err(e) = spawn_worker(&pool) {
                        log_error!("could not start a handler thread: {e}; serving with the threads there are");
                    }
                }
                let mut next = pool.connections.admit(request, stats);
                while let Some(request) = next {
                    let peer = request.remote_addr().copied();
                    serve(&pool, request);
                    next = pool.connections.finished(peer, stats);
                }
            }
            None => {
                // Counts this thread too: in a quiet pool every sample comes from here.
                pool.surplus.lock().note(idle + 1, Instant::now(), interval);
            }
        }
        // Checked after a request too, not only on a timeout: while requests keep coming, an
        // idle thread may never wait a whole WAKE_EVERY.
        let retire = pool.surplus.lock().take_one()
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
    stats.threads.fetch_sub(1, Ordering::SeqCst);
}

fn serve(pool: &Pool, request: Request) {
    let stats = &pool.stats;
    stats.busy.fetch_add(1, Ordering::SeqCst);
    if catch_unwind(AssertUnwindSafe(|| routes::handle(&pool.app, request))).is_err() {
        log_error!(
            "a request handler panicked; the request got a 500 and the server keeps serving"
        );
    }
    stats.busy.fetch_sub(1, Ordering::SeqCst);
}
