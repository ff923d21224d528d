//! The handler threads, as leaders and followers: a few idle threads (the leaders) wait on the
//! [`Listener`] at once and serve the request they take themselves, so no hand-off sits between
//! tiny_http and the handler; when too few are left waiting, the one that took a request wakes
//! the most recently idle thread to take its place (or starts one, up to `MAX_HANDLERS`). Long
//! polls and `/logs` calls block their thread, so the pool grows while no thread is idle; a
//! follower idle for `WORKER_IDLE_SECS` exits, and since the most recently idle thread leads
//! next, the threads a burst left behind are the ones that go.
//!
//! A connection's pipelined requests are served at once, each by its own thread: tiny_http
//! hands them over together and writes each answer after the one before, so they are answered
//! in order (`connections::pipelined_requests_are_answered_in_order`), and each holds its
//! thread until then. Serving them one at a time instead needs the leaders to take requests
//! one at a time, or two would start a connection's requests in the wrong order and wait on
//! each other for ever; that costs a wake-up per request (docs/reliability.md says why it was
//! dropped). No client pipelines through the edge.
//!
//! It owns thread lifetimes and hands each request to [`routes::handle`]; it knows nothing of
//! cameras or sockets.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError};
use parking_lot::Mutex;
use tiny_http::Request;

use super::listener::Listener;
use super::routes::{self, App};
use crate::log::log_error;

/// Threads waiting on the listener at once, at most: a thread that finishes a request leads
/// again while fewer wait. More than one, so that taking the next request never waits for a
/// thread to be woken.
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
    /// Idle threads waiting to lead, the most recently idle last, and how many lead.
    followers: Mutex<(Vec<Sender<()>>, usize)>,
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
    let leaders = LEADERS.min(app.config.max_handlers);
    let followers = Mutex::new((Vec::new(), leaders));
    let shared = Arc::new(Shared { app, listener, followers, stop, done });
    for _ in 0..leaders {
        if !shared.spawn()? {
            shared.followers.lock().1 -= 1;
        }
    }
    Ok(())
}

impl Shared {
    /// Starts a handler thread; `Ok(false)` when `MAX_HANDLERS` run. The place is taken before
    /// the thread starts, so two threads promoting at once cannot both take the last one.
    fn spawn(self: &Arc<Self>) -> std::io::Result<bool> {
        let (threads, max) = (&self.app.stats.handler_threads, self.app.config.max_handlers);
        let take = |n: usize| (n < max).then_some(n + 1);
        if threads.fetch_update(Ordering::Relaxed, Ordering::Relaxed, take).is_err() {
            return Ok(false);
        }
        let shared = Arc::clone(self);
        let builder = std::thread::Builder::new().name("handler".into()).stack_size(HANDLER_STACK);
        let spawned = builder.spawn(move || shared.handler_thread());
        if spawned.is_err() {
            threads.fetch_sub(1, Ordering::Relaxed);
        }
        spawned.map(|_| true)
    }

    fn handler_thread(self: Arc<Self>) {
        let _alive = self.done.clone();
        let (me, wake) = bounded(1);
        while let Some(request) = self.lead() {
            self.promote();
            self.serve(request);
            if !self.follow(&me, &wake) {
                break;
            }
        }
        self.app.stats.handler_threads.fetch_sub(1, Ordering::Relaxed);
    }

    /// Waits, as a leader, for the next request; `None` once the server stops.
    fn lead(&self) -> Option<Request> {
        loop {
            if matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return None;
            }
            let waiting = self.app.registry.callers_waiting() > 0;
            if let Some(request) = self.listener.next(waiting) {
                return Some(request);
            }
        }
    }

    /// Hands the place of a leader that took a request to the most recently idle thread, or to
    /// a new one; at `MAX_HANDLERS`, to the next thread that finishes (further requests wait in
    /// tiny_http's queue).
    fn promote(self: &Arc<Self>) {
        let mut followers = self.followers.lock();
        // Still enough leaders without this one: it leaves their count and serves.
        if followers.1 > READY {
            followers.1 -= 1;
            return;
        }
        while let Some(next) = followers.0.pop() {
            // A follower that left in the same instant (its idle timeout) takes no lead.
            if next.send(()).is_ok() {
                return;
            }
        }
        drop(followers);
        let started = self.spawn();
        if !matches!(started, Ok(true)) {
            self.followers.lock().1 -= 1;
        }
        if let Err(e) = started {
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
                let listed = followers.0.iter().position(|s| s.same_channel(me));
                let left = listed.map(|at| followers.0.remove(at)).is_some();
                drop(followers);
                !left && wake.recv().is_ok()
            }
        }
    }

    /// Serves one request to completion, whatever its handler does.
    fn serve(&self, request: Request) {
        self.app.stats.busy_handlers.fetch_add(1, Ordering::Relaxed);
        if catch_unwind(AssertUnwindSafe(|| routes::handle(&self.app, request))).is_err() {
            log_error!(
                "a request handler panicked; the request got a 500 and the server keeps serving"
            );
        }
        self.app.stats.busy_handlers.fetch_sub(1, Ordering::Relaxed);
    }
}
