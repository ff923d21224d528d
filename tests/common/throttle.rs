//! A slow uplink for tests: a TCP proxy whose clients' bytes reach the upstream at a limited
//! rate (what a camera sends over cellular or DSL), answers coming back at full speed. It counts
//! the connections it accepted, so a test also sees whether a camera keeps its connection.

use super::*;
use std::sync::atomic::AtomicUsize;

/// A throttling proxy on 127.0.0.1 in front of one upstream; stopped, its connections closed,
/// when dropped.
pub struct Throttle {
    pub url: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Throttle {
    /// Forwards to `upstream`; what clients send is paced to `bytes_per_sec` (`None`: full
    /// speed).
    pub fn start(upstream: SocketAddr, bytes_per_sec: Option<u64>) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the throttle");
        let addr = listener.local_addr().expect("its address");
        let stop: Arc<AtomicBool> = Arc::default();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stopping, counted, tracked) =
            (Arc::clone(&stop), Arc::clone(&accepted), Arc::clone(&open));
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                tracked.lock().extend([&client, &server].iter().filter_map(|s| s.try_clone().ok()));
                pipe(&server, &client, None);
                pipe(&client, &server, bytes_per_sec);
            }
        });
        Throttle { url: format!("http://{addr}"), addr, stop, accepted, open }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` on a thread of its own, at most `rate` bytes a second, and closes the
/// other direction's writing side when `from` ends.
fn pipe(from: &TcpStream, to: &TcpStream, rate: Option<u64>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    thread::spawn(move || {
        // A twentieth of a second's worth at a time, so the pace is even.
        let piece = rate.map_or(64 * 1024, |rate| (rate / 20).clamp(512, 64 * 1024) as usize);
        let (mut buf, started, mut sent) = (vec![0; piece], Instant::now(), 0u64);
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            if let Some(rate) = rate {
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for stream in self.open.lock().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}
