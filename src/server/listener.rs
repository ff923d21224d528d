//! The listening socket, the tiny_http server accepting on it, and the kernel's view of its
//! connections. Every line that exists because of a tiny_http 0.12 gap is here, named with the
//! test that fails without it (docs/reliability.md says why each is kept):
//!
//! - no timeouts: SO_RCVTIMEO/SO_SNDTIMEO on the listening socket, which accepted sockets
//!   inherit (`connections::idle_connections_are_closed_after_the_header_timeout`);
//! - an accept loop that ends for good on any `accept()` error, and without a word when it cannot
//!   duplicate an accepted socket (it panics): a new tiny_http server on a duplicate of the
//!   socket, the old one drained, the panic noticed by a hook
//!   (`connections::the_server_accepts_again_after_running_out_of_descriptors`);
//! - `accept()` itself times out through the same SO_RCVTIMEO, and a lost wake-up in its
//!   connection pool can leave a connection queued: an empty loopback connection now and then
//!   (`connections::an_idle_server_keeps_its_accept_loop`,
//!   `connections::bursts_of_calls_on_fresh_connections_are_taken_at_once`,
//!   `connections::bursts_of_calls_that_wait_for_nothing_are_taken_at_once`);
//! - an unread body is discarded by allocating its declared length: a body declared beyond
//!   memory is answered and its connection parked
//!   (`protocol_errors::a_huge_declared_content_length_is_413_and_the_server_keeps_serving`);
//!
//! It knows nothing of routes; it answers no request of its own choosing.

use std::collections::HashSet;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tiny_http::{Header, Request, Response, ResponseBox};

use super::ServerStats;
use crate::log::{log_error, log_warn};
use crate::settings::MAX_LOGS_TIMEOUT;

/// While `/logs` calls wait, and for [`BUSY`] after any request, the pool is nudged this often:
/// a lost wake-up may have queued the very connection they wait for, or part of a burst of
/// connections. Each nudge frees one (the thread it wakes serves a queued connection after it);
/// four a tick kept tiny_http's idle threads from retiring, as each wake restarts their 5 s exit
/// clock (`edge_attacks::every_attack_through_the_edge_leaves_the_api_at_baseline_and_users_served`).
const TICK: Duration = Duration::from_millis(100);
/// A lost wake-up needs two connections accepted together; the other one's request, if it sends
/// one, arrives within this.
const BUSY: Duration = Duration::from_secs(1);
/// When quiet, nudge only this often: enough to keep `accept()` from timing out, rare enough
/// that tiny_http's idle pool threads (each wake restarts their 5 s exit clock) can retire.
const QUIET_NUDGE_MAX: Duration = Duration::from_secs(4);
/// The wait before another attempt to start an accept loop, after one failed (EMFILE and the
/// like): never a hot loop.
const RESTART_RETRY: Duration = Duration::from_secs(1);
/// A declared body up to this size is discarded as tiny_http does (lazily, bounded by the read
/// timeout); beyond it, its allocation could abort the process.
const SAFE_TO_DISCARD: usize = 64 * 1024 * 1024;

/// One tiny_http server on the socket; older ones are drained while their connections last.
/// Several handler threads wait on it at once ([`Listener::next`] takes `&self`).
pub struct Listener {
    addr: SocketAddr,
    socket: TcpListener,
    /// How often to nudge when quiet: every half header timeout, within [`TICK`] and
    /// [`QUIET_NUDGE_MAX`].
    quiet_every: Duration,
    /// How long a drained server is kept after it last delivered a request: its connections
    /// may still have one in service (a hold, or a `/logs` call of up to 300 s) and send their
    /// next one after it.
    drained_for: Duration,
    state: Mutex<State>,
    stats: Arc<ServerStats>,
}

struct State {
    current: Arc<tiny_http::Server>,
    /// Servers whose accept loop ended, with when each last delivered a request.
    draining: Vec<(Arc<tiny_http::Server>, Instant)>,
    last_nudge: Instant,
    last_request: Instant,
    /// When to try starting another accept loop.
    restart: Option<Instant>,
    /// [`ACCEPT_LOOP_PANICS`] when last looked at.
    panics_seen: usize,
}

impl Listener {
    /// Binds `host:port` with errors that name what to change, and starts accepting.
    pub fn bind(
        host: &str, port: u16, header_timeout: Duration, stats: Arc<ServerStats>,
    ) -> std::io::Result<Listener> {
        let socket = bind(host, port)?;
        // Inherited by every accepted socket on Linux: a connection silent for the header
        // timeout is closed, and a client that stops reading cannot pin a thread. TCP_NODELAY:
        // tiny_http writes head and body separately, and Nagle would hold the body for the
        // client's delayed ACK (40 ms on every keep-alive answer over 1 KiB).
        // std offers these options only on a TcpStream: set through a duplicate descriptor (std's
        // safe conversions), they act on the socket itself.
        // Test of the timeouts: connections::idle_connections_are_closed_after_the_header_timeout.
        let options = TcpStream::from(OwnedFd::from(socket.try_clone()?));
        options.set_read_timeout(Some(header_timeout))?;
        options.set_write_timeout(Some(header_timeout))?;
        options.set_nodelay(true)?;
        let state = State {
            current: Arc::new(serve_on(&socket)?),
            draining: Vec::new(),
            last_nudge: Instant::now(),
            last_request: Instant::now(),
            restart: None,
            panics_seen: ACCEPT_LOOP_PANICS.load(Ordering::Relaxed),
        };
        Ok(Listener {
            addr: socket.local_addr()?,
            socket,
            quiet_every: (header_timeout / 2).clamp(TICK, QUIET_NUDGE_MAX),
            drained_for: header_timeout * 2 + MAX_LOGS_TIMEOUT,
            state: Mutex::new(state),
            stats,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request, within about a [`TICK`]. The pool is nudged every [`TICK`] while
    /// `callers_waiting` or busy, else every half header timeout.
    pub fn next(&self, callers_waiting: bool) -> Option<Request> {
        let now = Instant::now();
        let (current, nudge, draining) = {
            let mut state = self.state.lock();
            let panics = ACCEPT_LOOP_PANICS.load(Ordering::Relaxed);
            if panics != state.panics_seen {
                state.panics_seen = panics;
                log_warn!("tiny_http's accept loop panicked (above); starting another");
                state.restart = Some(now);
            }
            // Tests: connections::an_idle_server_keeps_its_accept_loop (quiet),
            // connections::bursts_of_calls_on_fresh_connections_are_taken_at_once (calls waiting),
            // connections::bursts_of_calls_that_wait_for_nothing_are_taken_at_once (busy).
            let busy = callers_waiting || now < state.last_request + BUSY;
            let nudge = now >= state.last_nudge + if busy { TICK } else { self.quiet_every };
            if nudge {
                state.last_nudge = now;
            }
            if state.restart.is_some_and(|at| now >= at) {
                self.start_another(&mut state);
            }
            let drained_for = self.drained_for;
            state.draining.retain(|(_, last)| now.saturating_duration_since(*last) < drained_for);
            for (server, last) in &mut state.draining {
                if let Ok(Some(request)) = server.try_recv() {
                    *last = now;
                    state.last_request = now;
                    return Some(request);
                }
            }
            (Arc::clone(&state.current), nudge, !state.draining.is_empty())
        };
        if nudge {
            let _ = TcpStream::connect_timeout(&loopback(self.addr), Duration::from_secs(1));
        }
        let wait = if draining { Duration::from_millis(10) } else { TICK };
        match current.recv_timeout(wait) {
            Ok(Some(request)) => {
                self.state.lock().last_request = Instant::now();
                Some(request)
            }
            Ok(None) => None,
            Err(e) => {
                // Reported once, by the accept thread as it ends. A timeout of accept() itself
                // is the quiet nudge coming late: not worth a warning.
                if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    log_warn!("the accept loop ended ({e}); starting another");
                }
                let mut state = self.state.lock();
                if Arc::ptr_eq(&state.current, &current) {
                    self.start_another(&mut state);
                }
                None
            }
        }
    }

    /// A new tiny_http server on a duplicate of the socket; the old one is drained.
    /// Test: connections::the_server_accepts_again_after_running_out_of_descriptors.
    fn start_another(&self, state: &mut State) {
        match serve_on(&self.socket) {
            Ok(server) => {
                let old = std::mem::replace(&mut state.current, Arc::new(server));
                state.draining.push((old, Instant::now()));
                state.restart = None;
                self.stats.accept_loop_restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let retry = RESTART_RETRY.as_secs();
                log_error!("cannot restart the accept loop: {e}; retrying in {retry} s");
                state.restart = Some(Instant::now() + RESTART_RETRY);
            }
        }
    }
}

/// Writes `response` to `request`; a request whose declared body is too large to discard (and
/// was not read, being over `max_body`) is answered and its connection parked instead.
/// Test: protocol_errors::a_huge_declared_content_length_is_413_and_the_server_keeps_serving.
pub fn respond(
    request: Request, response: ResponseBox, stats: &ServerStats, max_body: usize,
) -> std::io::Result<()> {
    let too_large = |len: &usize| *len > SAFE_TO_DISCARD.max(max_body);
    if let Some(declared) = request.body_length().filter(too_large) {
        let status = response.status_code().0;
        log_warn!("a request declared a {declared}-byte body: answered {status} and parked its connection");
        park(request, response);
        stats.parked_connections.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    request.respond(response)
}

/// Panics of tiny_http's accept threads so far (see [`watch_accept_loops`]).
static ACCEPT_LOOP_PANICS: AtomicUsize = AtomicUsize::new(0);

/// tiny_http's accept thread panics when it cannot duplicate a socket it accepted
/// (`util/refined_tcp_stream.rs`: `try_clone().unwrap()`, on EMFILE), and its accept loop is
/// gone without a word: the hook counts those, for every listener to start another. Every panic
/// is still reported as before.
/// Test: connections::the_server_accepts_again_after_running_out_of_descriptors.
pub fn watch_accept_loops() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map_or("", |at| at.file());
            if file.contains("tiny_http") && file.ends_with("refined_tcp_stream.rs") {
                ACCEPT_LOOP_PANICS.fetch_add(1, Ordering::Relaxed);
            }
            report(info)
        }));
    });
}

/// A tiny_http server accepting on a duplicate of `socket`.
fn serve_on(socket: &TcpListener) -> std::io::Result<tiny_http::Server> {
    tiny_http::Server::from_listener(socket.try_clone()?, None)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Answers without ever dropping the request's body reader (dropping it allocates the declared
/// length): `upgrade` hands over the raw stream, the answer is written whole, and the stream is
/// leaked. tiny_http's upgrade path writes no framing headers and forbids setting them, so
/// `Content-Length` and `Connection: close` ride in one header value of our own (fixed text,
/// never client input). Cost per parked connection: one idle thread and one socket.
fn park(request: Request, response: ResponseBox) {
    let mut head = Response::empty(response.status_code());
    for header in response.headers() {
        head.add_header(header.clone());
    }
    let mut body = Vec::new();
    let _ = std::io::copy(&mut response.into_reader(), &mut body);
    let framing = format!("1\r\nContent-Length: {}\r\nConnection: close", body.len());
    if let Ok(header) = Header::from_bytes(&b"X-Parked"[..], framing.as_bytes()) {
        head.add_header(header);
    }
    let mut stream = request.upgrade("none", head);
    let _ = stream.write_all(&body).and_then(|()| stream.flush());
    std::mem::forget(stream);
}

/// Binds `host:port`, with errors that name what to change: `HOST` when it does not resolve, the
/// address (and `PORT`) when it cannot be bound.
fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map(Iterator::collect).map_err(|e| {
        let why = format!("HOST={host:?} does not resolve to an address ({e}); use an IP address such as 127.0.0.1 or 0.0.0.0, or a resolvable name");
        std::io::Error::new(ErrorKind::InvalidInput, why)
    })?;
    TcpListener::bind(&addrs[..]).map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::AddrInUse => "; another process listens there: stop it, or choose another PORT (and the cameras' API_BASE_URL with it)",
            ErrorKind::AddrNotAvailable => "; HOST is not an address of this machine",
            ErrorKind::PermissionDenied => "; ports below 1024 need privileges: choose a PORT of 1024 or more",
            _ => "",
        };
        let addr = addrs.first().map_or(format!("{host}:{port}"), SocketAddr::to_string);
        std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
    })
}

/// The address that reaches a server bound to `addr`: loopback in place of an unspecified one.
pub fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The kernel's table of the port's connections, as the watcher of held polls, `/stats` and
/// `/metrics` read it. The table lists every connection of the machine (hundreds of thousands
/// of lines with many cameras), so a view takes a reading up to a second old instead of reading
/// it on every call, and one reading is taken at a time.
pub struct ConnectionTable {
    port: u16,
    last: Mutex<Option<(Instant, Arc<Connections>)>>,
    stats: Arc<ServerStats>,
}

impl ConnectionTable {
    /// How old a reading a view takes.
    pub const VIEW_AGE: Duration = Duration::from_secs(1);

    pub fn new(port: u16, stats: Arc<ServerStats>) -> ConnectionTable {
        ConnectionTable { port, last: Mutex::new(None), stats }
    }

    /// A reading no older than `max_age`; `None` where the table cannot be read.
    pub fn read(&self, max_age: Duration) -> Option<Arc<Connections>> {
        let mut last = self.last.lock();
        match &*last {
            Some((at, table)) if at.elapsed() <= max_age => Some(Arc::clone(table)),
            _ => {
                let table = Arc::new(Connections::of_port(self.port)?);
                self.stats.connection_table_reads.fetch_add(1, Ordering::Relaxed);
                *last = Some((Instant::now(), Arc::clone(&table)));
                Some(table)
            }
        }
    }
}

/// The connections to one local port, from the kernel's tables (Linux's /proc/net/tcp{,6}).
#[derive(Debug, Default)]
pub struct Connections {
    /// Peers of the connections the kernel still counts as established.
    pub established: HashSet<SocketAddr>,
    /// Connections whose client closed that this process still holds (CLOSE_WAIT): a moment's
    /// worth is normal; a count that stays is a class tiny_http never releases.
    pub client_left: usize,
}

const ESTABLISHED: &str = "01";
const CLOSE_WAIT: &str = "08";

impl Connections {
    /// `None` where the tables cannot be read (not Linux).
    pub fn of_port(port: u16) -> Option<Connections> {
        let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(std::fs::read_to_string);
        let mut found = Connections::default();
        tables.iter().flatten().for_each(|text| found.add_table(text, port));
        tables.iter().any(Result::is_ok).then_some(found)
    }

    fn add_table(&mut self, text: &str, port: u16) {
        // Most lines are other ports' and TIME_WAIT: told apart by text, without parsing.
        let local_port = format!(":{port:04X}");
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            match state {
                _ if !local.ends_with(&local_port) => {}
                ESTABLISHED => self.established.extend(parse_address(remote)),
                CLOSE_WAIT => self.client_left += 1,
                _ => {}
            }
        }
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), each 32-bit word in host order as
/// the kernel prints it. An IPv4 client of a dual-stack socket (`HOST=::`) stays IPv4-mapped
/// IPv6, as std reports that peer.
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let mut bytes = Vec::with_capacity(16);
    for word in (0..ip.len()).step_by(8).map(|i| ip.get(i..i + 8)) {
        bytes.extend(u32::from_str_radix(word?, 16).ok()?.to_le_bytes());
    }
    let ip = match <[u8; 16]>::try_from(bytes.as_slice()) {
        Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
        Err(_) => IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?),
    };
    Some(SocketAddr::new(ip, u16::from_str_radix(port, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_tables_are_read_as_addresses_and_states() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D2F2 08 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2F4 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
   4: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1";
        let mut found = Connections::default();
        found.add_table(table, 8080);
        let peer: SocketAddr = "127.0.0.1:54000".parse().unwrap();
        assert_eq!(found.established, HashSet::from([peer]));
        assert_eq!(found.client_left, 1);
        // An IPv4 client of a dual-stack socket: listed as std reports its peer, mapped.
        let mapped = "0000000000000000FFFF00000100007F:1F90";
        assert_eq!(parse_address(mapped), Some("[::ffff:127.0.0.1]:8080".parse().unwrap()));
        let v6 = "00000000000000000000000001000000:1F90";
        assert_eq!(parse_address(v6), Some("[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn a_live_connection_is_seen_and_a_closed_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert!(Connections::of_port(port).unwrap().established.contains(&peer));
        drop(client);
        let left = Connections::of_port(port).unwrap();
        assert!(!left.established.contains(&peer));
        assert_eq!(left.client_left, 1);
    }
    #[test]
    fn an_ipv4_client_of_a_dual_stack_socket_is_seen_as_std_reports_it() {
        let Ok(listener) = TcpListener::bind("[::]:0") else {
            return eprintln!("skipped: no IPv6 on this machine");
        };
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert!(peer.is_ipv6(), "{peer}");
        assert!(Connections::of_port(port).unwrap().established.contains(&peer), "{peer}");
    }
}
