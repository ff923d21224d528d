//! The API server: start-up and shutdown. It binds the [`Listener`], starts the handler pool on
//! it, and one upkeep thread (the registry's ticker, and the watcher that ends
//! held polls whose client has left, and the drain). Everything stops when [`ApiServer`]'s stop
//! sender is dropped: when the server is dropped or shut down, or by a start that fails half-way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

mod error;
mod listener;
mod metrics;
mod peers;
mod pool;
mod query;
mod registry;
mod routes;

use crate::log::{announce, log_info, log_warn};
use crate::settings::ServerConfig;
use listener::{loopback, ConnectionTable, Listener};
use metrics::Metrics;
use registry::Registry;
use routes::App;

/// How long shutdown waits for handler threads busy with a request.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// How often the watcher looks for held polls whose client has left (they end within twice this).
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The kernel's table lists every connection of the machine, TIME_WAIT included: with a thousand
/// cameras calling, hundreds of thousands of lines. So the watcher reads it only while a poll has
/// been held a while (one that gets a command ends within milliseconds), and waits at least this
/// many times what the last read cost before the next: at most 10 % of a core, which keeps a
/// read of a busy machine's 20,000 lines (40 ms, twice that on a loaded one) within the second.
const WATCH_COST_SHARE: u32 = 10;
/// Threads besides the handlers' and their connections': tiny_http's accept loop and idle
/// connection threads, the upkeep thread, the log writer, the main thread.
const OTHER_THREADS: usize = 64;
/// How long a drain waits between releasing the held polls and answering the calls still
/// waiting: by then their cameras poll the next instance, where the edge asks the calls again.
const DRAIN_SETTLE: Duration = Duration::from_secs(1);

/// Counters of the pool and the listener, kept where they change, for `/stats` and `/metrics`.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStats {
    handler_threads: AtomicUsize,
    /// Requests in service (held polls and waiting calls among them).
    busy_handlers: AtomicUsize,
    parked_connections: AtomicUsize,
    accept_loop_restarts: AtomicUsize,
    /// Readings of the kernel's connection table so far (at most about one a second).
    connection_table_reads: AtomicUsize,
}

/// A running API server. Dropping it stops it as [`ApiServer::shutdown`] does, without waiting
/// for its threads to end.
pub struct ApiServer {
    addr: SocketAddr,
    registry: Arc<Registry>,
    /// Never sent on: dropping it stops the upkeep thread and every handler.
    stop: Option<Sender<()>>,
    /// Disconnected once every thread of the server has ended (each holds a sender).
    done: Receiver<()>,
    /// The registry's ticker: without it commands are never re-sent nor cameras found offline.
    upkeep: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `HOST:PORT` and starts serving on background threads.
    pub fn start(mut config: ServerConfig) -> std::io::Result<ApiServer> {
        listener::watch_accept_loops();
        // A request in service holds a handler thread and a tiny_http connection thread: a
        // MAX_HANDLERS the process cannot start threads for would fail at the busiest moment.
        if let Some(limit) = thread_limit() {
            let fits = (limit.saturating_sub(OTHER_THREADS) / 2).max(1);
            if config.max_handlers > fits {
                let asked = config.max_handlers;
                log_warn!("MAX_HANDLERS={asked} needs about {} threads, more than this process may start ({limit}: ulimit -u, or the container's pids.max); serving with MAX_HANDLERS={fits}", 2 * asked + OTHER_THREADS);
                config.max_handlers = fits;
            }
        }
        let stats = Arc::new(ServerStats::default());
        let listener =
            Listener::bind(&config.host, config.port, config.header_timeout, Arc::clone(&stats))?;
        let addr = listener.addr();
        let connections = Arc::new(ConnectionTable::new(addr.port(), Arc::clone(&stats)));
        let metrics = Arc::new(Metrics::new());
        // A peer the kernel's table does not list as connected has left; where the table cannot
        // be read, every peer counts as connected. The watcher reads it fresh.
        let table = Arc::clone(&connections);
        let alive = Box::new(move || table.read(Duration::ZERO));
        let registry = Arc::new(Registry::new(&config, Arc::clone(&metrics), alive));
        let (stop, stopped) = bounded::<()>(0);
        let (done_tx, done) = bounded::<()>(0);
        let config_handlers = config.max_handlers;
        // A file left by an earlier process of this container is not a drain of this one.
        let _ = config.drain_file.as_ref().map(std::fs::remove_file);
        let app = Arc::new(App {
            registry: Arc::clone(&registry),
            metrics,
            stats,
            connections,
            camera_tokens: config.camera_tokens.clone().map(parking_lot::Mutex::new),
            draining: AtomicBool::new(false),
            config,
        });
        pool::start(listener, Arc::clone(&app), (stopped.clone(), done_tx.clone()))?;
        let upkeep_app = Arc::clone(&app);
        let upkeep = std::thread::Builder::new()
            .name("upkeep".into())
            .spawn(move || upkeep(&upkeep_app, &stopped, done_tx))?;
        announce(format_args!("API server listening on http://{addr}"));
        announce(format_args!("{}", exposure(addr)));
        let (polls, handlers) = (registry.poll_capacity(), config_handlers);
        announce(format_args!("capacity: {polls} cameras may poll at once (three quarters of MAX_HANDLERS={handlers}); more get 503 and retry"));
        // At every level but off: who may call is part of how the server is exposed.
        for line in routes::describe_authentication(&app.config) {
            announce(format_args!("authentication: {line}"));
        }
        Ok(ApiServer { addr, registry, stop: Some(stop), done, upkeep: Some(upkeep) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, with 127.0.0.1 in place of an unspecified bind address.
    pub fn url(&self) -> String {
        format!("http://{}", loopback(self.addr))
    }

    /// Blocks while the server runs (the `api` binary's main thread). An error means the upkeep
    /// thread panicked: the process should exit and be restarted.
    pub fn wait(mut self) -> std::io::Result<()> {
        match self.upkeep.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(std::io::Error::other("the upkeep thread panicked")),
            _ => Ok(()),
        }
    }

    /// Answers held polls and waiting calls at once, stops the threads and closes the listening
    /// socket. Returns when every thread has ended, or after 10 s.
    pub fn shutdown(mut self) {
        self.stop_threads();
        if let Some(upkeep) = self.upkeep.take() {
            let _ = upkeep.join();
        }
        let _ = self.done.recv_timeout(SHUTDOWN_WAIT);
        log_info!("API server on {} stopped", self.addr);
    }

    fn stop_threads(&mut self) {
        self.registry.shutdown();
        self.stop.take();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// The registry's ticker, the watcher of held polls and the drain, until `stopped` disconnects.
fn upkeep(app: &App, stopped: &Receiver<()>, done: Sender<()>) {
    let _alive = done;
    let registry = &app.registry;
    let mut next_watch = Instant::now() + WATCH_EVERY;
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(registry.tick_interval()) {
        registry.tick();
        drain(app);
        let now = Instant::now();
        if now >= next_watch
            && registry.holds_polls_since(now - WATCH_EVERY)
            && registry.release_gone_polls()
        {
            next_watch = now + WATCH_EVERY.max(now.elapsed() * WATCH_COST_SHARE);
        }
    }
}

/// Threads this process may start, as Linux bounds them: the soft `Max processes` limit
/// (`ulimit -u`, per user) and the cgroup's `pids.max` (a container's); `None` when unbounded.
fn thread_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let nproc = limits.lines().find(|line| line.starts_with("Max processes"));
    let nproc = nproc.and_then(|line| line.split_whitespace().nth(2)?.parse().ok());
    let pids = std::fs::read_to_string("/sys/fs/cgroup/pids.max").unwrap_or_default();
    nproc.into_iter().chain(pids.trim().parse().ok()).min()
}

/// A drain, asked for by `DRAIN_FILE` appearing (`api --drain`): it has no network route, so no
/// client can start one. Polls are refused from then on and held ones released (`routes`), and
/// the edge sends the cameras to the next instance on its ring; a settle later, the calls still
/// waiting are answered so that the edge asks them there, and the file's removal says it is done.
fn drain(app: &App) {
    let Some(path) = app.config.drain_file.as_ref().filter(|path| path.exists()) else {
        return;
    };
    if !app.draining.swap(true, Ordering::Relaxed) {
        let released = app.registry.release_polls(&(Arc::default(), Instant::now()));
        log_info!("draining: polls are refused from now on; {released} held poll(s) released");
        // The ticker may pause this long: nothing it does is due within a second.
        std::thread::sleep(DRAIN_SETTLE);
        app.registry.shutdown();
        log_info!("drained: the calls still waiting were handed on");
    }
    let _ = std::fs::remove_file(path);
}

/// How the server is exposed, for the start-up log.
fn exposure(addr: SocketAddr) -> String {
    let ip = addr.ip();
    if ip.is_loopback() {
        format!("exposure: loopback only ({ip}): reachable from this machine alone; to serve other machines, put the nginx edge (deploy/nginx.conf) in front and let it reach this port")
    } else {
        format!("exposure: bound to {ip}: reachable from the network; this port must be reachable only by the nginx edge (deploy/nginx.conf) and trusted hosts, never by untrusted clients directly")
    }
}
