//! The handler threads, as leaders and followers: a few idle threads (the leaders) take turns at
//! the [`Listener`] and serve the request they take themselves, so no hand-off sits between
//! tiny_http and the handler; when too few are left waiting, the one that took a request wakes
//! the most recently idle thread to take its place (or starts one, up to `MAX_HANDLERS`). Long
//! polls and `/logs` calls block their thread, so the pool grows while no thread is idle; a
//! follower idle for `WORKER_IDLE_SECS` exits, and since the most recently idle thread leads
//! next, the threads a burst left behind are the ones that go.
//!
//! Requests of one connection are served one at a time, in order: tiny_http hands over every
//! pipelined request at once, yet writes each response only after the one before it, so a
//! handler given request 2 while request 1 is a held poll would block for the whole hold
//! (`connections::pipelined_requests_behind_a_poll_take_one_handler` fails without it).
//!
//! It owns thread lifetimes and hands each request to [`routes::handle`]; it knows nothing of
//! cameras or sockets.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError};
use parking_lot::Mutex;
use tiny_http::Request;

use super::listener::{Listener, TICK};
use super::routes::{self, App};
use crate::log::log_error;

/// Threads waiting to take the next request, at most: a thread that finishes a request leads
/// again while fewer wait. More than one, so that the next turn never waits for a thread to be
/// woken by a follower's hand-over.
const LEADERS: usize = 4;
/// Below this many waiting, a leader that takes a request wakes a follower (or starts a thread)
/// to take its place; above, it does not, and saves a wake-up per request.
const READY: usize = 2;
/// Handlers parse JSON (serde_json stops at depth 128) and format responses: 256 KiB is ample,
/// and only the pages actually touched count against memory.
const HANDLER_STACK: usize = 256 * 1024;

struct Shared {
    /// What a request is served with (the routes).
    app: Arc<App>,
    listener: Listener,
    /// Held by the leader that takes the next request, until it is admitted.
    taking: Mutex<()>,
    /// Idle threads waiting to lead, the most recently idle last, and how many lead.
    followers: Mutex<(Vec<Sender<()>>, usize)>,
    /// Connections with a request in service, and the requests they pipelined behind it.
    serving: Mutex<HashMap<SocketAddr, VecDeque<Request>>>,
    /// Disconnected at shutdown (its sender is the server's).
    stop: Receiver<()>,
    /// Held by every thread until it ends; the server waits for all of them to be dropped.
    done: Sender<()>,
}

/// Starts the leaders on `listener`: at most `MAX_HANDLERS` threads, followers exiting after
/// `WORKER_IDLE_SECS` idle. They run until `stop` disconnects; each holds a clone of `done`
/// until it ends.
pub fn start(
    listener: Listener, app: Arc<App>, (stop, done): (Receiver<()>, Sender<()>),
) -> std::io::Result<()> {
    let followers = Mutex::new((Vec::new(), LEADERS));
    let serving = Mutex::new(HashMap::new());
    let taking = Mutex::new(());
    let shared = Arc::new(Shared { app, listener, taking, followers, serving, stop, done });
    (0..LEADERS).try_for_each(|_| shared.spawn())
}

impl Shared {
    fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let shared = Arc::clone(self);
        self.app.stats.handler_threads.fetch_add(1, Ordering::Relaxed);
        let builder = std::thread::Builder::new().name("handler".into()).stack_size(HANDLER_STACK);
        let spawned = builder.spawn(move || shared.handler_thread());
        if spawned.is_err() {
            self.app.stats.handler_threads.fetch_sub(1, Ordering::Relaxed);
        }
        spawned.map(|_| ())
    }

    fn handler_thread(self: Arc<Self>) {
        let _alive = self.done.clone();
        let (me, wake) = bounded(1);
        while let Some(request) = self.lead() {
            self.promote();
            self.serve_connection(request);
            if !self.follow(&me, &wake) {
                break;
            }
        }
        self.app.stats.handler_threads.fetch_sub(1, Ordering::Relaxed);
    }

    /// Waits, as a leader, for the next request to serve; `None` once the server stops. A
    /// request that waits behind an earlier one of its connection is left to that one's thread.
    fn lead(&self) -> Option<Request> {
        loop {
            if matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return None;
            }
            // One leader takes and admits at a time: two could admit a connection's pipelined
            // requests in the wrong order, and tiny_http would hold the later one's answer for
            // ever behind the earlier (connections::pipelined_requests_behind_a_poll_take_one_handler
            // hangs one run in two without it).
            let _taking = self.taking.lock();
            let waiting = self.app.registry.callers_waiting() > 0;
            if let Some(request) = self.listener.next(TICK, waiting).and_then(|r| self.admit(r)) {
                return Some(request);
            }
        }
    }

    /// Hands the place of a leader that took a request to the most recently idle thread, or to
    /// a new one; at `MAX_HANDLERS`, to the next thread that finishes (further requests wait in
    /// tiny_http's queue).
    fn promote(self: &Arc<Self>) {
        let mut followers = self.followers.lock();
        followers.1 -= 1;
        if followers.1 >= READY {
            return;
        }
        followers.1 += 1;
        while let Some(next) = followers.0.pop() {
            // A follower that left in the same instant (its idle timeout) takes no lead.
            if next.send(()).is_ok() {
                return;
            }
        }
        if self.app.stats.handler_threads.load(Ordering::Relaxed) >= self.app.config.max_handlers {
            followers.1 -= 1;
            return;
        }
        drop(followers);
        if let Err(e) = self.spawn() {
            self.followers.lock().1 -= 1;
            log_error!("could not start a handler thread: {e}; serving with the threads there are");
        }
    }

    /// After a request: lead at once if a leader is missing, else wait to be handed a lead;
    /// `false` when the thread should end (idle for `WORKER_IDLE_SECS`, or the server stops).
    fn follow(&self, me: &Sender<()>, wake: &Receiver<()>) -> bool {
        {
            let mut followers = self.followers.lock();
            if followers.1 < LEADERS {
                followers.1 += 1;
                return true;
            }
            followers.0.push(me.clone());
        }
        select! {
            recv(wake) -> _ => true,
            recv(self.stop) -> _ => false,
            default(self.app.config.worker_idle) => {
                // Leave the idle list, unless the lead was handed over just now.
                let mut followers = self.followers.lock();
                match followers.0.iter().position(|s| s.same_channel(me)) {
                    Some(at) => {
                        followers.0.remove(at);
                        false
                    }
                    None => {
                        drop(followers);
                        wake.recv().is_ok()
                    }
                }
            }
        }
    }

    /// Serves `request`, then every request its connection pipelined behind it, in order.
    fn serve_connection(&self, request: Request) {
        self.app.stats.busy_handlers.fetch_add(1, Ordering::Relaxed);
        let mut next = Some(request);
        while let Some(request) = next {
            let peer = request.remote_addr().copied();
            if catch_unwind(AssertUnwindSafe(|| routes::handle(&self.app, request))).is_err() {
                log_error!("a request handler panicked; the request got a 500 and the server keeps serving");
            }
            next = peer.and_then(|peer| self.finished(peer));
        }
        self.app.stats.busy_handlers.fetch_sub(1, Ordering::Relaxed);
    }

    /// The request back when it may be served now; `None` when it waits behind an earlier
    /// request of its connection (identified by its peer's address and port).
    /// Test: connections::pipelined_requests_behind_a_poll_take_one_handler.
    fn admit(&self, request: Request) -> Option<Request> {
        let Some(peer) = request.remote_addr().copied() else {
            return Some(request);
        };
        let mut serving = self.serving.lock();
        match serving.get_mut(&peer) {
            Some(waiting) => {
                waiting.push_back(request);
                self.app.stats.pipelined_waiting.fetch_add(1, Ordering::Relaxed);
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
            self.app.stats.pipelined_waiting.fetch_sub(1, Ordering::Relaxed);
        } else {
            serving.remove(&peer);
        }
        next
    }
}
