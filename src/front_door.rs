//! The front door: the listening socket, the tiny_http servers accepting on it, and a
//! supervisor that keeps them accepting. Handler threads take requests straight from the
//! current tiny_http server ([`FrontDoor::recv`]): no thread of our own sits in between.
//!
//! tiny_http 0.12 leaves five gaps that this module closes without touching its code:
//! - No timeouts. SO_RCVTIMEO and SO_SNDTIMEO (and TCP_NODELAY) are set on the listening socket; Linux copies
//!   them to every accepted socket, so a connection that sends nothing for `header_timeout`
//!   (idle, or stalled mid-request) is closed, and a client that stops reading cannot pin a
//!   thread. The same option makes `accept()` itself time out when no connection arrives; the
//!   supervisor's loopback nudge every 100 ms keeps that from happening, and a restart covers
//!   it when the machine is too busy for the nudge.
//! - Its accept loop ends for good on any `accept()` error (EMFILE, a timeout), and silently if
//!   it cannot spawn a connection thread (it panics). When a server reports (to the handler
//!   that receives from it) that its accept loop ended, or three `/health` probes in a row go
//!   unanswered, the supervisor starts a fresh tiny_http server on a duplicate of the same
//!   listening socket (at most four side by side; extra ones are harmless) and makes it the
//!   current one. Handlers receive from the current server and, while there are older ones,
//!   look at those too; an older server whose accept loop ended is dropped once quiet.
//! - No connection limit. The supervisor counts this port's connections (from /proc/net/tcp,
//!   only when the thread count says the limit could be near) and, at `max_connections`, stops
//!   listening (`shutdown(SHUT_RD)` on the listening socket: new connects are refused) while
//!   open connections keep being served; below 90 % of the limit it binds the port again.
//! - A lost wake-up in its connection pool (`util::TaskPool`) can leave a new connection queued
//!   until some other connection ends. The same loopback nudge, an empty connection, gets a pool
//!   thread to take the oldest queued connection. It runs every 100 ms only while `/logs` calls
//!   wait (the case where everyone may be waiting on the queued connection); otherwise every
//!   `header_timeout / 2`, at most 4 s, since every wake restarts an idle pool thread's 5 s
//!   retirement clock and frequent nudges would keep a burst's threads alive forever.
//! - It panics in a connection thread when a client resets its connection before tiny_http
//!   reads the peer address (client.rs: `remote_addr.as_ref().unwrap()`), one backtrace per
//!   reset. [`quiet_tiny_http_panics`] counts those and logs one line a minute instead.
//!
//! What it cannot do: bound the time a client takes to send a whole request head. tiny_http reads
//! the head itself, so a client that trickles one byte per read timeout keeps its connection;
//! such connections count against `max_connections` like any other, and the nginx edge
//! (deploy/nginx.conf) bounds the whole head.
//!
//! This module knows nothing of routes; it must not answer requests itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::log::{log_error, log_info, log_warn};

/// How often the supervisor wakes: nudges tiny_http's pool while calls wait, checks the accept
/// loops.
const TICK: Duration = Duration::from_millis(100);
/// When quiet, nudge only this often: enough to keep accept() from timing out, rare enough that
/// idle pool threads (each wake restarts their 5 s retirement clock) are retired.
const QUIET_NUDGE_MAX: Duration = Duration::from_secs(4);
/// Unanswered health probes in a row before another accept loop is started.
const PROBES_BEFORE_NEW_LOOP: u32 = 3;
/// Accept loops the supervisor may run side by side on the one socket.
const MAX_ACCEPT_LOOPS: usize = 4;
/// How often the connection count is checked (when the thread count says it could be high).
const COUNT_EVERY: Duration = Duration::from_millis(500);
/// Resume accepting once connections fall below this share of the limit.
const RESUME_PERCENT: usize = 90;
/// Longest wait between attempts to restart a failed accept loop.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// While more than one server is live, a handler waits on the current one at most this long
/// before it looks at the older ones again (a rare state: after an accept loop was replaced).
const OLDER_SERVERS_EVERY: Duration = Duration::from_millis(10);

/// Tells the front door whether calls are waiting on something a connection may bring.
pub type WaitingProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Limits the front door enforces.
#[derive(Clone)]
pub struct FrontDoorConfig {
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// While true, the pool is nudged every tick (see the module comment).
    pub callers_waiting: WaitingProbe,
}

/// What `/stats` shows of the front door.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontDoorStats {
    /// Connections on the port at the last count (0 until a count was needed).
    pub connections: usize,
    pub accepting: bool,
    pub accept_loops: usize,
    pub accept_loop_restarts: usize,
    pub times_paused: usize,
    /// tiny_http's connection threads that panicked (client resets); counted, not printed.
    pub tiny_http_panics: usize,
    /// Connections whose client has closed that this process still holds (CLOSE_WAIT), read at
    /// the time of asking. A moment's worth is normal; a count that stays is a class tiny_http
    /// never releases (an HTTP/2.0 request line, a parked connection: docs/reliability.md).
    pub held_after_client_left: usize,
}

/// One tiny_http server accepting on a duplicate of the listening socket.
struct AcceptLoop {
    http: tiny_http::Server,
    /// Cleared when its accept loop reported that it ended; its open connections may still
    /// bring requests for up to a read timeout.
    accepting: AtomicBool,
    /// When it last delivered a request, in milliseconds since the front door opened.
    last_request_ms: AtomicU64,
}

/// The listening socket and everything accepting on it.
pub struct FrontDoor {
    config: FrontDoorConfig,
    addr: SocketAddr,
    opened: Instant,
    /// The live tiny_http servers, the current one last. Replaced whole (copy on write) so a
    /// handler holds the lock only to clone an `Arc`, never while it waits.
    servers: Mutex<Arc<Vec<Arc<AcceptLoop>>>>,
    /// The current listening socket; tiny_http servers accept on duplicates of it.
    listener: Mutex<TcpListener>,
    stopping: AtomicBool,
    /// Dropped by [`FrontDoor::close`]: wakes the supervisor at once.
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    accepting: AtomicBool,
    accept_loops: AtomicUsize,
    restarts: AtomicUsize,
    pauses: AtomicUsize,
    connections: AtomicUsize,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl FrontDoor {
    /// Binds `host:port` and starts accepting; handler threads take the requests with
    /// [`FrontDoor::recv`].
    pub fn open(host: &str, port: u16, config: FrontDoorConfig) -> std::io::Result<Arc<FrontDoor>> {
        let listener = bind(host, port)?;
        configure_accepted_sockets(&listener, config.header_timeout)?;
        let (stop_tx, stop_rx) = bounded(0);
        let door = Arc::new(FrontDoor {
            config,
            addr: listener.local_addr()?,
            opened: Instant::now(),
            servers: Mutex::new(Arc::new(Vec::new())),
            listener: Mutex::new(listener),
            stopping: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            accepting: AtomicBool::new(true),
            accept_loops: AtomicUsize::new(0),
            restarts: AtomicUsize::new(0),
            pauses: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            supervisor: Mutex::new(None),
        });
        door.start_accept_loop()?;
        let supervised = Arc::clone(&door);
        let supervisor = std::thread::Builder::new()
            .name("front-door".into())
            .stack_size(128 * 1024)
            .spawn(move || supervised.supervise())?;
        *door.supervisor.lock() = Some(supervisor);
        Ok(door)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open on the port now, counted afresh (for a scrape; `/proc` where it exists).
    pub fn open_connections(&self) -> usize {
        count_connections(self.addr.port(), &[ESTABLISHED, CLOSE_WAIT]).unwrap_or(0)
    }

    pub fn stats(&self) -> FrontDoorStats {
        FrontDoorStats {
            connections: self.connections.load(Ordering::Relaxed),
            accepting: self.accepting.load(Ordering::Relaxed),
            accept_loops: self.accept_loops.load(Ordering::Relaxed),
            accept_loop_restarts: self.restarts.load(Ordering::Relaxed),
            times_paused: self.pauses.load(Ordering::Relaxed),
            tiny_http_panics: tiny_http_panics(),
            held_after_client_left: count_connections(self.addr.port(), &[CLOSE_WAIT]).unwrap_or(0),
        }
    }

    /// Stops listening (the port refuses connections at once), ends the supervisor and drops
    /// the tiny_http servers once no handler holds them; connections already open end as their
    /// requests finish.
    pub fn close(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_tx.lock().take();
        stop_listening(&self.listener.lock());
        if let Some(supervisor) = self.supervisor.lock().take() {
            let _ = supervisor.join();
        }
        *self.servers.lock() = Arc::new(Vec::new());
    }

    /// The next request, or `None` after about `timeout` without one (or once closed). Called by
    /// every handler thread at once: tiny_http's queue hands each request to one of them.
    pub fn recv(&self, timeout: Duration) -> Option<tiny_http::Request> {
        let servers = Arc::clone(&self.servers.lock());
        let Some((current, older)) = servers.split_last() else {
            // No server (closed, or a restart pending): wait as a receive would have. Once closed
            // the stop channel no longer waits, so sleep instead of spinning until the pool
            // notices that it is stopping.
            if let Err(RecvTimeoutError::Disconnected) = self.stop_rx.recv_timeout(timeout) {
                std::thread::sleep(timeout.min(OLDER_SERVERS_EVERY));
            }
            return None;
        };
        for server in older {
            if let Some(request) = self.take(server, server.http.try_recv()) {
                return Some(request);
            }
        }
        let wait = if older.is_empty() {
            timeout
        } else {
            timeout.min(OLDER_SERVERS_EVERY)
        };
        self.take(current, current.http.recv_timeout(wait))
    }

    /// What one server's receive gave: a request, nothing, or the news that its accept loop
    /// ended (tiny_http reports that once, to whichever receiver is waiting).
    fn take(
        &self,
        server: &AcceptLoop,
        received: std::io::Result<Option<tiny_http::Request>>,
    ) -> Option<tiny_http::Request> {
        match received {
            Ok(Some(request)) => {
                server
                    .last_request_ms
                    .store(self.millis_since_open(), Ordering::Relaxed);
                Some(request)
            }
            Ok(None) => None,
            Err(e) => {
                if server.accepting.swap(false, Ordering::SeqCst) {
                    self.accept_loops.fetch_sub(1, Ordering::SeqCst);
                    if !self.stopping.load(Ordering::SeqCst)
                        && self.accepting.load(Ordering::SeqCst)
                    {
                        log_warn!("an accept loop ended ({e}); the supervisor starts another");
                    }
                }
                None
            }
        }
    }

    fn millis_since_open(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops servers whose accept loop ended and whose connections have been quiet for twice
    /// the read timeout (by then none can deliver a request any more).
    fn drop_drained_servers(&self) {
        let quiet_ms =
            u64::try_from((self.config.header_timeout * 2).as_millis()).unwrap_or(u64::MAX);
        let now = self.millis_since_open();
        let mut servers = self.servers.lock();
        let drained = |s: &Arc<AcceptLoop>| {
            !s.accepting.load(Ordering::SeqCst)
                && now.saturating_sub(s.last_request_ms.load(Ordering::Relaxed)) > quiet_ms
        };
        if servers.iter().any(drained) {
            let kept: Vec<Arc<AcceptLoop>> =
                servers.iter().filter(|s| !drained(s)).cloned().collect();
            *servers = Arc::new(kept);
        }
    }

    /// Starts one more tiny_http server on a duplicate of the listening socket and makes it the
    /// current one.
    fn start_accept_loop(self: &Arc<Self>) -> std::io::Result<()> {
        let listener = self.listener.lock().try_clone()?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.accept_loops.fetch_add(1, Ordering::SeqCst);
        let server = Arc::new(AcceptLoop {
            http,
            accepting: AtomicBool::new(true),
            last_request_ms: AtomicU64::new(self.millis_since_open()),
        });
        let mut servers = self.servers.lock();
        let mut next: Vec<Arc<AcceptLoop>> = servers.iter().cloned().collect();
        next.push(server);
        *servers = Arc::new(next);
        Ok(())
    }

    fn supervise(self: Arc<Self>) {
        let target = loopback(self.addr);
        let mut restart_backoff = TICK;
        let mut next_restart = Instant::now();
        let mut next_count = Instant::now();
        let mut last_probe = Instant::now();
        let mut failed_probes = 0;
        let probe_every = (self.config.header_timeout / 2).clamp(TICK, QUIET_NUDGE_MAX);
        // Each turn waits one tick, or ends as soon as `close` drops the stop sender.
        while let Err(RecvTimeoutError::Timeout) = self.stop_rx.recv_timeout(TICK) {
            let accepting = self.accepting.load(Ordering::SeqCst);
            if accepting && last_probe.elapsed() >= probe_every {
                // A probe is also a nudge, and keeps accept() from timing out when quiet.
                last_probe = Instant::now();
                failed_probes = if probe(target) { 0 } else { failed_probes + 1 };
            } else if accepting && (self.config.callers_waiting)() {
                nudge(target);
            }
            if Instant::now() >= next_count {
                next_count = Instant::now() + COUNT_EVERY;
                self.enforce_connection_limit();
                self.drop_drained_servers();
            }
            let loops = self.accept_loops.load(Ordering::SeqCst);
            // No accept loop at all, or one that stopped answering without saying so (tiny_http
            // panics in its accept thread when it cannot spawn a connection thread).
            let silent = failed_probes >= PROBES_BEFORE_NEW_LOOP && loops < MAX_ACCEPT_LOOPS;
            let wanted =
                self.accepting.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst);
            if wanted && (loops == 0 || silent) && Instant::now() >= next_restart {
                if silent {
                    log_warn!("{failed_probes} health probes in a row went unanswered; starting another accept loop");
                    failed_probes = 0;
                }
                match self.start_accept_loop() {
                    Ok(()) => {
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                        restart_backoff = TICK;
                        log_info!("accepting connections again on {}", self.addr);
                    }
                    Err(e) => {
                        // EMFILE and friends: retry, slower each time, never in a hot loop.
                        log_error!(
                            "cannot restart the accept loop: {e}; retrying in {} ms",
                            restart_backoff.as_millis()
                        );
                        next_restart = Instant::now() + restart_backoff;
                        restart_backoff = (restart_backoff * 2).min(RESTART_BACKOFF_MAX);
                    }
                }
            }
        }
    }

    fn enforce_connection_limit(&self) {
        let max = self.config.max_connections;
        // Every open connection holds at least one thread, so the (cheap) thread count bounds
        // the connection count; read /proc/net/tcp only when the limit could be near.
        if process_threads() < max * RESUME_PERCENT / 100 && self.accepting.load(Ordering::SeqCst) {
            self.connections.store(0, Ordering::Relaxed);
            return;
        }
        let Some(open) = count_connections(self.addr.port(), &[ESTABLISHED, CLOSE_WAIT]) else {
            return;
        };
        self.connections.store(open, Ordering::Relaxed);
        let accepting = self.accepting.load(Ordering::SeqCst);
        if accepting && open >= max {
            self.accepting.store(false, Ordering::SeqCst);
            self.pauses.fetch_add(1, Ordering::Relaxed);
            stop_listening(&self.listener.lock());
            log_warn!("{open} connections reached MAX_CONNECTIONS={max}: refusing new ones, serving the open ones");
        } else if !accepting && open < max * RESUME_PERCENT / 100 {
            match self.listen_again() {
                Ok(()) => {
                    log_info!("{open} connections, below the limit again: accepting new ones")
                }
                Err(e) => log_error!("cannot listen on {} again: {e}; will retry", self.addr),
            }
        }
    }

    /// Binds the port afresh after a pause (the paused socket cannot listen again).
    fn listen_again(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr)?;
        configure_accepted_sockets(&listener, self.config.header_timeout)?;
        *self.listener.lock() = listener;
        self.accepting.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Binds `host:port`, with errors that name what to change: `HOST` when it does not resolve, the
/// address (and `PORT`) when it cannot be bound.
fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    use std::io::{Error, ErrorKind};
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("HOST={host:?} does not resolve to an address ({e}); use an IP address such as 127.0.0.1 or 0.0.0.0, or a resolvable name"),
            ))
        }
    };
    if addrs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("HOST={host:?} resolves to no address"),
        ));
    }
    let mut last = None;
    for addr in &addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some((*addr, e)),
        }
    }
    let Some((addr, e)) = last else {
        return Err(Error::other("no address to bind"));
    };
    let hint = match e.kind() {
        ErrorKind::AddrInUse => "; another process listens there: stop it, or choose another PORT (and the cameras' API_BASE_URL with it)",
        ErrorKind::AddrNotAvailable => "; HOST is not an address of this machine",
        ErrorKind::PermissionDenied => "; ports below 1024 need privileges: choose a PORT of 1024 or more",
        _ => "",
    };
    Err(Error::new(
        e.kind(),
        format!("cannot listen on {addr}: {e}{hint}"),
    ))
}

/// Options every accepted connection inherits from the listening socket on Linux:
/// SO_RCVTIMEO and SO_SNDTIMEO bound every read and write; TCP_NODELAY, because tiny_http writes
/// a response's head and body in separate writes, and with Nagle's algorithm the body would wait
/// for the client's delayed ACK (about 40 ms on every keep-alive answer over 1 KiB).
fn configure_accepted_sockets(listener: &TcpListener, timeout: Duration) -> std::io::Result<()> {
    with_socket(listener, |socket| {
        socket.set_read_timeout(Some(timeout))?;
        socket.set_write_timeout(Some(timeout))?;
        socket.set_nodelay(true)
    })
}

/// Stops a listening socket: pending and future connects are refused and every thread blocked
/// in `accept()` on it (or a duplicate) wakes with an error.
fn stop_listening(listener: &TcpListener) {
    let _ = with_socket(listener, |socket| socket.shutdown(std::net::Shutdown::Read));
}

/// Runs socket-level calls that std only offers on `TcpStream` against the listening socket.
fn with_socket<T>(
    listener: &TcpListener,
    f: impl FnOnce(&TcpStream) -> std::io::Result<T>,
) -> std::io::Result<T> {
    // A duplicate descriptor of the same socket, as a TcpStream through std's safe conversions
    // (TcpListener -> OwnedFd -> TcpStream). Socket options and shutdown act on the socket, not
    // on the descriptor, so they reach the listener; dropping the duplicate closes only itself.
    let duplicate = TcpStream::from(OwnedFd::from(listener.try_clone()?));
    f(&duplicate)
}

/// Panics inside tiny_http's own threads since start (see [`quiet_tiny_http_panics`]).
static TINY_HTTP_PANICS: AtomicUsize = AtomicUsize::new(0);
/// At most one log line about them per this long.
const PANIC_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Replaces the default panic report, for panics raised inside tiny_http's code only, with a
/// count and one warning line a minute. Every other panic is reported as before. Installed once
/// per process; later calls do nothing.
pub fn quiet_tiny_http_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default_report = std::panic::take_hook();
        let last_report: Mutex<Option<(Instant, usize)>> = Mutex::new(None);
        std::panic::set_hook(Box::new(move |info| {
            let in_tiny_http = info
                .location()
                .is_some_and(|at| is_tiny_http_source(at.file()));
            if !in_tiny_http {
                return default_report(info);
            }
            let total = TINY_HTTP_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = last_report.lock();
            let due = last.is_none_or(|(at, _)| at.elapsed() >= PANIC_REPORT_EVERY);
            if due {
                let since = total - last.map_or(0, |(_, count)| count);
                *last = Some((Instant::now(), total));
                let at = info
                    .location()
                    .map_or(String::new(), |at| format!(" at {}:{}", at.file(), at.line()));
                log_warn!(
                    "tiny_http panicked in a connection thread{at} {since} time(s) since the last report (a client reset its connection; the server keeps serving); next report in {} s at the earliest",
                    PANIC_REPORT_EVERY.as_secs()
                );
            }
        }));
    });
}

/// Whether a panic location lies in tiny_http's sources (`.../tiny_http-0.12.0/src/client.rs`).
fn is_tiny_http_source(file: &str) -> bool {
    file.split(['/', '\\'])
        .any(|part| part.starts_with("tiny_http-") || part == "tiny_http")
}

/// Panics inside tiny_http's threads so far.
pub fn tiny_http_panics() -> usize {
    TINY_HTTP_PANICS.load(Ordering::Relaxed)
}

/// This process's thread count, from /proc/self/status; 0 where that is not available.
pub fn process_threads() -> usize {
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

/// An empty connection to the server itself (see the module comment).
fn nudge(target: SocketAddr) {
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}

/// Whether the server answers `GET /health` within a few seconds: proof that some accept loop
/// is alive, since a connection is accepted by the kernel even when no thread calls accept().
fn probe(target: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        return false;
    };
    let request = b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";
    let mut status = [0u8; 12];
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_ok()
        && stream.write_all(request).is_ok()
        && stream.read_exact(&mut status).is_ok()
        && &status == b"HTTP/1.1 200"
}

/// The address that reaches a server bound to `addr`: loopback in place of an unspecified one.
pub fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// TCP states in /proc/net/tcp that still cost us a socket and a thread: ESTABLISHED, and
/// CLOSE_WAIT (the peer left, we still hold it). Sockets we closed and the kernel still winds
/// down (FIN_WAIT, LAST_ACK, TIME_WAIT) cost neither.
const ESTABLISHED: &str = "01";
const CLOSE_WAIT: &str = "08";

/// Connections whose local port is `port` and whose state is one of `states`, from
/// /proc/net/tcp and tcp6.
fn count_connections(port: u16, states: &[&str]) -> Option<usize> {
    let mut total = 0;
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            read_any = true;
            total += count_in_table(&text, port, states);
        }
    }
    read_any.then_some(total)
}

fn count_in_table(text: &str, port: u16, states: &[&str]) -> usize {
    text.lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local_port = fields
                .next()
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            let state = fields.nth(1);
            local_port == Some(port) && state.is_some_and(|state| states.contains(&state))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_connections_that_hold_a_thread() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D2F2 08 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2F4 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
   4: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1";
        let held = [ESTABLISHED, CLOSE_WAIT];
        assert_eq!(
            count_in_table(table, 8080, &held),
            2,
            "ESTABLISHED and CLOSE_WAIT on :8080"
        );
        assert_eq!(count_in_table(table, 8080, &[CLOSE_WAIT]), 1);
        assert_eq!(count_in_table(table, 9999, &held), 0);
    }

    #[test]
    fn tiny_http_sources_are_recognised() {
        for file in [
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tiny_http-0.12.0/src/client.rs",
            "C:\\cargo\\registry\\src\\x\\tiny_http-0.12.0\\src\\client.rs",
            "vendor/tiny_http/src/util/sequential.rs",
        ] {
            assert!(is_tiny_http_source(file), "{file}");
        }
        for file in [
            "src/routes.rs",
            "/rustc/abc/library/core/src/option.rs",
            "src/tiny_http.rs",
        ] {
            assert!(!is_tiny_http_source(file), "{file}");
        }
    }

    #[test]
    fn live_count_sees_a_real_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = [ESTABLISHED, CLOSE_WAIT];
        let before = count_connections(port, &held).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        assert_eq!(count_connections(port, &held).unwrap(), before + 1);
    }
}
