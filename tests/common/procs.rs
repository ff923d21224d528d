//! The built binaries as child processes, stopped and reaped when dropped, with their stderr
//! captured; temporary directories; `/proc` probes (threads, connections, CPU time).

use super::*;

// ---------------------------------------------------------------------------------------------
// The built binaries as child processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed and reaped when dropped; its stderr is captured line by line.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    drain: Option<JoinHandle<()>>,
    reaped: bool,
    /// Started as the leader of its own process group, whose members are stopped with it.
    group: bool,
}

impl Proc {
    /// Starts `program` with exactly `envs` as its environment.
    pub fn spawn(name: &str, program: &str, envs: &[(&str, String)]) -> Proc {
        Proc::spawn_args(name, program, &[], envs)
    }

    /// Starts `program` with `args` and exactly `envs` as its environment.
    pub fn spawn_args(name: &str, program: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        Proc::start(name, program, args, envs, false)
    }

    /// Like [`Proc::spawn_args`], for a program that forks workers (nginx): it leads a process
    /// group of its own, and stopping it stops the whole group. Killing only the leader would
    /// leave its workers serving, and holding the stderr pipe open for ever.
    pub fn spawn_group(name: &str, program: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        Proc::start(name, program, args, envs, true)
    }

    fn start(
        name: &str, program: &str, args: &[&str], envs: &[(&str, String)], group: bool,
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        if group {
            command.process_group(0);
        }
        command
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("start {program}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let prefix = name.to_string();
        let drain = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => {
                        if std::env::var_os("CAMERA_LOGS_TEST_LOG").is_some() {
                            eprintln!("[{prefix}] {line}");
                        }
                        sink.lock().push(line)
                    }
                    Err(_) => break,
                }
            }
        });
        Proc { child, lines, drain: Some(drain), reaped: false, group }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    pub fn stderr_len(&self) -> usize {
        self.lines.lock().len()
    }

    pub fn stderr_text(&self) -> String {
        self.lines.lock().join("\n")
    }

    /// Whether the process has exited (and reaps it if so).
    pub fn exited(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.reaped = true;
            self.join_drain();
        }
        self.reaped
    }

    /// SIGKILL, then reap; the stderr captured so far stays readable. A group leader's group
    /// gets SIGTERM first (nginx's fast shutdown, which ends its workers), and SIGKILL if it is
    /// still there after a few seconds.
    pub fn kill(&mut self) {
        if !self.reaped {
            if self.group {
                self.signal_group("TERM");
                let deadline = Instant::now() + Duration::from_secs(5);
                while !self.exited() && Instant::now() < deadline {
                    thread::sleep(POLL_EVERY);
                }
                self.signal_group("KILL");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
        self.join_drain();
    }

    /// Sends `signal` to this process's group (only for a group leader this harness started).
    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{}", self.pid())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn join_drain(&mut self) {
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }

    /// User plus system CPU time so far, from /proc/PID/stat (fields 14 and 15, 100 Hz ticks).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // The command name (field 2) may hold spaces; fields after it are plain.
        let after_name = &stat[stat.rfind(')').expect("stat format") + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // fields[0] is field 3 (state), so field N is fields[N - 3].
        let utime: u64 = fields[14 - 3].parse().unwrap();
        let stime: u64 = fields[15 - 3].parse().unwrap();
        Duration::from_millis((utime + stime) * 10)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `api` binary, listening on 127.0.0.1.
pub struct ApiProc {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
}

/// Starts the `api` binary with `HOST=127.0.0.1`, `PORT=port`, no arrival window (as
/// [`test_config`]: `/logs` for a camera not seen yet is 404 at once) and `envs`, which may
/// override them, and waits for its "listening" line. `Err` (with its stderr) if it exits
/// first, e.g. when the port is taken.
pub fn try_start_api(port: u16, envs: &[(&str, String)]) -> Result<ApiProc, String> {
    let mut all: Vec<(&str, String)> = vec![
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
        ("CAMERA_ARRIVAL_SECS", "0".to_string()),
    ];
    all.extend(envs.iter().cloned());
    let mut proc = Proc::spawn("api", env!("CARGO_BIN_EXE_api"), &all);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = proc.stderr_lines().iter().find_map(|line| {
            line.split("API server listening on http://").nth(1).map(|addr| addr.trim().to_string())
        });
        if let Some(addr) = found {
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port in the listening line");
            return Ok(ApiProc { url: format!("http://{addr}"), port, proc });
        }
        if proc.exited() {
            return Err(proc.stderr_text());
        }
        assert!(
            Instant::now() < deadline,
            "api did not report listening within {PATIENCE:?}; stderr:\n{}",
            proc.stderr_text()
        );
        thread::sleep(POLL_EVERY);
    }
}

pub fn start_api(envs: &[(&str, String)]) -> ApiProc {
    try_start_api(0, envs).unwrap_or_else(|stderr| panic!("api exited at start:\n{stderr}"))
}

/// An environment for [`start_api`] or [`start_camera_bin`] from string pairs.
pub fn envs(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Starts the `camera` binary with `API_BASE_URL=url` and `envs`.
pub fn start_camera_bin(url: &str, envs: &[(&str, String)]) -> Proc {
    let mut all: Vec<(&str, String)> = vec![("API_BASE_URL", url.to_string())];
    all.extend(envs.iter().cloned());
    Proc::spawn("camera", env!("CARGO_BIN_EXE_camera"), &all)
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("camera-logs-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This process's threads by name (from /proc/self/task), for diagnosing thread-count checks.
pub fn thread_names() -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            *names.entry(name.trim().to_string()).or_insert(0) += 1;
        }
    }
    names
}

/// Threads of this process that carry the calling thread's name. Linux gives a new thread its
/// creator's name unless it is named, so for a test these are the test's own thread and every
/// unnamed thread started on its behalf (tiny_http's accept and connection-pool threads of a
/// server the test started, its unnamed helper threads), and none of a parallel test's.
pub fn threads_named_as_current() -> usize {
    let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).ok() == Some(me.clone()))
        .count()
}

/// Connections to local `port` in state ESTABLISHED or CLOSE_WAIT, from /proc/net/tcp{,6}.
pub fn open_connections(port: u16) -> usize {
    let mut total = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        total += text
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                local_port == Some(port) && matches!(fields.get(3), Some(&"01" | &"08"))
            })
            .count();
    }
    total
}

/// Runs `openssl` with the space-separated `args` in `dir`; false when the command is missing
/// (the test is then skipped).
pub fn openssl(dir: &std::path::Path, args: &str) -> bool {
    match Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) => {
            assert!(status.success(), "openssl {args} failed: {status}");
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("cannot run openssl: {e}"),
    }
}
