//! The handler threads. One dispatcher thread takes each request from the [`Listener`], takes a
//! permit from a bounded channel (at most `MAX_HANDLERS` requests in service), and hands the
//! request to the most recently idle handler thread, or to a new one. Long polls and `/logs`
//! calls block their thread, so the pool grows while no thread is idle; a thread idle for
//! `WORKER_IDLE_SECS` exits, and since the most recently idle thread is used first, the threads
//! a burst left behind are the ones that stay idle and go.
//!
//! Requests of one connection are served one at a time, in order: tiny_http hands over every
//! pipelined request at once, yet writes each response only after the one before it, so a
//! handler given request 2 while request 1 is a held poll would block for the whole hold
//! (`connections::pipelined_requests_behind_a_poll_take_one_handler` fails without it).
//!
//! It owns thread lifetimes; it knows nothing of routes, cameras or sockets.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;
use tiny_http::Request;

use super::listener::{Listener, TICK};
use crate::log::log_error;

/// Handlers parse JSON (serde_json stops at depth 128) and format responses: 256 KiB is ample,
/// and only the pages actually touched count against memory.
const HANDLER_STACK: usize = 256 * 1024;

/// What `/stats` and `/metrics` show of the pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub threads: AtomicUsize,
    /// Requests in service (held polls and waiting calls among them).
    pub busy: AtomicUsize,
    /// Requests waiting behind an earlier request of the same connection.
    pub pipelined: AtomicUsize,
}

/// Serves one request to completion (the routes).
pub type Handler = Arc<dyn Fn(Request) + Send + Sync>;

struct Shared {
    handle: Handler,
    /// Idle threads' inboxes, the most recently idle last.
    idle: Mutex<Vec<Sender<Request>>>,
    /// One message per request in service; a handler takes its own out when done.
    permits: (Sender<()>, Receiver<()>),
    /// Connections with a request in service, and the requests they pipelined behind it.
    serving: Mutex<HashMap<SocketAddr, VecDeque<Request>>>,
    idle_exit: Duration,
    /// Disconnected at shutdown (its sender is the server's).
    stop: Receiver<()>,
    /// Held by every thread until it ends; the server waits for all of them to be dropped.
    done: Sender<()>,
    stats: Arc<PoolStats>,
}

/// Starts the dispatcher on `listener`, with at most `max_handlers` requests in service and
/// handler threads that exit after `idle_exit`. It runs until `stop` disconnects; every thread
/// holds a clone of `done` until it ends.
pub fn start(
    listener: Listener, handle: Handler, stats: Arc<PoolStats>,
    (max_handlers, idle_exit): (usize, Duration),
    callers_waiting: impl Fn() -> bool + Send + 'static, (stop, done): (Receiver<()>, Sender<()>),
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let shared = Arc::new(Shared {
        handle,
        idle: Mutex::new(Vec::new()),
        permits: bounded(max_handlers),
        serving: Mutex::new(HashMap::new()),
        idle_exit,
        stop,
        done,
        stats,
    });
    std::thread::Builder::new()
        .name("dispatcher".into())
        .spawn(move || dispatch(listener, &shared, callers_waiting))
}

fn dispatch(mut listener: Listener, shared: &Arc<Shared>, callers_waiting: impl Fn() -> bool) {
    let _alive = shared.done.clone();
    while !shared.stopped() {
        let Some(request) = listener.next(TICK, callers_waiting()) else {
            continue;
        };
        let Some(request) = shared.admit(request) else {
            continue;
        };
        // At MAX_HANDLERS, further requests wait in tiny_http's queue until a handler is free.
        select! {
            send(shared.permits.0, ()) -> _ => shared.run(request),
            recv(shared.stop) -> _ => break,
        }
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected))
    }

    /// Hands `request` to the most recently idle thread, or to a new one.
    fn run(self: &Arc<Self>, mut request: Request) {
        while let Some(inbox) = self.idle.lock().pop() {
            match inbox.send(request) {
                Ok(()) => return,
                // It exited in the same instant (idle timeout).
                Err(back) => request = back.0,
            }
        }
        let shared = Arc::clone(self);
        let peer = request.remote_addr().copied();
        let (inbox_tx, inbox) = bounded(1);
        let spawned = std::thread::Builder::new()
            .name("handler".into())
            .stack_size(HANDLER_STACK)
            .spawn(move || shared.handler_thread(request, inbox_tx, &inbox));
        if let Err(e) = spawned {
            log_error!("could not start a handler thread: {e}; serving with the threads there are");
            // The request went with the closure, and with what its connection pipelined behind
            // it: tiny_http answers a dropped request with 500.
            if let Some(peer) = peer {
                self.serving.lock().remove(&peer);
            }
            let _ = self.permits.1.try_recv();
        }
    }

    fn handler_thread(&self, first: Request, me: Sender<Request>, inbox: &Receiver<Request>) {
        let _alive = self.done.clone();
        self.stats.threads.fetch_add(1, Ordering::Relaxed);
        let mut next = Some(first);
        while let Some(request) = next.take() {
            self.serve_connection(request);
            let _ = self.permits.1.try_recv();
            self.idle.lock().push(me.clone());
            next = select! {
                recv(inbox) -> request => request.ok(),
                recv(self.stop) -> _ => None,
                default(self.idle_exit) => {
                    // Leave the idle list, unless the dispatcher took this thread just now:
                    // then its request is on the way.
                    let mut idle = self.idle.lock();
                    match idle.iter().position(|s| s.same_channel(&me)) {
                        Some(at) => {
                            idle.remove(at);
                            None
                        }
                        None => {
                            drop(idle);
                            inbox.recv().ok()
                        }
                    }
                }
            };
        }
        self.stats.threads.fetch_sub(1, Ordering::Relaxed);
    }

    /// Serves `request`, then every request its connection pipelined behind it, in order.
    fn serve_connection(&self, request: Request) {
        self.stats.busy.fetch_add(1, Ordering::Relaxed);
        let mut next = Some(request);
        while let Some(request) = next {
            let peer = request.remote_addr().copied();
            if catch_unwind(AssertUnwindSafe(|| (self.handle)(request))).is_err() {
                log_error!("a request handler panicked; the request got a 500 and the server keeps serving");
            }
            next = peer.and_then(|peer| self.finished(peer));
        }
        self.stats.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// The request back when it may be served now; `None` when it waits behind an earlier
    /// request of its connection (identified by its peer's address and port).
    fn admit(&self, request: Request) -> Option<Request> {
        let Some(peer) = request.remote_addr().copied() else {
            return Some(request);
        };
        let mut serving = self.serving.lock();
        match serving.get_mut(&peer) {
            Some(waiting) => {
                waiting.push_back(request);
                self.stats.pipelined.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                serving.insert(peer, VecDeque::new());
                Some(request)
            }
        }
    }

    /// The connection's next request, once the one before it has been answered.
    fn finished(&self, peer: SocketAddr) -> Option<Request> {
        let mut serving = self.serving.lock();
        let next = serving.get_mut(&peer)?.pop_front();
        if next.is_some() {
            self.stats.pipelined.fetch_sub(1, Ordering::Relaxed);
        } else {
            serving.remove(&peer);
        }
        next
    }
}
