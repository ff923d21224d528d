#!/usr/bin/env python3
"""Kubernetes' scaling and drain, for real, on one machine (.ci/kubernetes-check runs it).

The same processes a cluster runs, under the names it gives them: api-0 .. api-4 (the api
binary, each on its own loopback address 127.0.0.1N:8080, with the StatefulSet's environment:
INSTANCE_NAME, PEERS_DNS=http://api:8080, DRAIN_FILE), the edge (deploy/kubernetes/base/edge/
sync.sh with the rendered nginx.conf, which starts nginx and keeps it routing), cameras that
reach the api only through the edge, and users calling /logs through it. The cluster's DNS is
/etc/hosts, which the caller has bind-mounted from HOSTS in a private mount and network
namespace: this script writes it as CoreDNS would answer (the Service's name lists the ready
pods, each pod's name its own address while it is ready). The StatefulSet controller is this
script, doing what Kubernetes does: OrderedReady scale-up (a pod is in DNS once /health
answers), and scale-down from the highest ordinal, one pod at a time, where a pod leaves DNS
and its preStop hook (`api --drain`) starts at the same moment, and SIGTERM comes when the
hook returns.

Steps: 3 instances, then 5, then 2, then api-1 restarted on a new address. It fails on any
wrong answer, on a camera not answering again within 30 s of a step, on a /logs call that
failed while a pod drained, on the edge not routing to exactly the ready pods within 30 s, and
on a fleet view (/cameras through the edge) that misses a camera; it prints the timings.

Usage: kubernetes-scale.py HOSTS WORKDIR EDGE_CONFIG_DIR (run as root inside `unshare
--mount --net`, /etc/hosts bind-mounted from HOSTS; EDGE_CONFIG_DIR holds nginx.conf and the
test's listen.conf). Every process it starts is stopped by its pid.
"""
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HOSTS, WORK, EDGE_CONFIG = sys.argv[1:4]
BIN = os.path.join(os.getcwd(), "target", "release")
API_PORT = 8080
EDGE = "http://127.0.0.1:8443"
CAMERAS = [f"cam-{i:02}" for i in range(16)]
USERS = 4
# Short holds, so that a camera moved by a scale-up (its poll held by its old instance until
# the hold ends) answers again well within 30 s; the cluster's default is 30 s.
POLL_HOLD_SECS = 10
# The edge's update time here: SYNC_SECS 2, one round more for a pod that leaves, the reload.
DRAIN_SECS = 6
WITHIN = 30.0
LOGS_TIMEOUT = 20

started = time.monotonic()
procs = []
failures = []


def now():
    return time.monotonic() - started


def say(text):
    print(f"kubernetes-scale: [{now():6.1f} s] {text}", flush=True)


def check(condition, text):
    if not condition:
        failures.append(text)
        say("FAILED: " + text)


def spawn(name, argv, env, log):
    out = open(os.path.join(WORK, log), "ab")
    full = {"PATH": os.environ["PATH"], "LOG_LEVEL": "info", **env}
    proc = subprocess.Popen(argv, env=full, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    procs.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url, timeout=5.0):
    """(status, body) of a GET; (0, why) when there was no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


def wait_for(what, within, probe, every=0.1):
    """Seconds until probe() is true; a failure (and None) after `within`."""
    t0 = time.monotonic()
    while not probe():
        if time.monotonic() - t0 > within:
            check(False, f"no {what} within {within:.0f} s")
            return None
        time.sleep(every)
    return time.monotonic() - t0


# --- the cluster's DNS ------------------------------------------------------------------------
ready = {}  # pod name -> address, as DNS has it


def publish():
    """/etc/hosts as CoreDNS would answer: written in place (it is a bind mount), one write."""
    lines = ["127.0.0.1 localhost"] + [f"{a} {n}.api api" for n, a in sorted(ready.items())]
    fd = os.open(HOSTS, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, ("\n".join(lines) + "\n").encode())
    os.close(fd)


# --- the StatefulSet ----------------------------------------------------------------------------
pods = {}  # name -> (process, address, env)


def pod_env(name, address):
    return {
        "HOST": address, "PORT": str(API_PORT), "INSTANCE_NAME": name,
        "PEERS_DNS": f"http://api:{API_PORT}", "DRAIN_FILE": os.path.join(WORK, f"{name}.drain"),
        "DRAIN_SECS": str(DRAIN_SECS), "POLL_HOLD_SECS": str(POLL_HOLD_SECS),
    }


def start_pod(ordinal, address):
    name = f"api-{ordinal}"
    env = pod_env(name, address)
    proc = spawn(name, [f"{BIN}/api"], env, f"{name}.log")
    pods[name] = (proc, address, env)
    # Ready once /health answers; then its names resolve.
    wait_for(f"readiness of {name}", WITHIN, lambda: get(f"http://{address}:{API_PORT}/health")[0] == 200)
    ready[name] = address
    publish()


def delete_pod(name):
    """What deleting a pod does: it leaves DNS and its preStop hook runs at the same moment;
    SIGTERM when the hook returns. Returns how long the hook took."""
    proc, address, env = pods.pop(name)
    del ready[name]
    publish()
    t0 = time.monotonic()
    hook = subprocess.run([f"{BIN}/api", "--drain"], env={"PATH": os.environ["PATH"], **env},
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    took = time.monotonic() - t0
    check(hook.returncode == 0, f"api --drain of {name} exited {hook.returncode}: {hook.stderr.decode()}")
    stop(proc)
    return took


# --- cameras and users ----------------------------------------------------------------------------
def events_of(camera):
    n = 3 + sum(map(ord, camera)) % 5
    return [{"timestamp": 1_700_000_000 + k * 0.25, "description": f"{camera} event {k}"} for k in range(n)]


def start_cameras():
    for camera in CAMERAS:
        path = os.path.join(WORK, f"{camera}.events")
        with open(path, "w") as f:
            for event in events_of(camera):
                f.write(json.dumps(event) + "\n")
        spawn(camera, [f"{BIN}/camera"], {
            "API_BASE_URL": EDGE, "CAMERA_ID": camera, "LOG_FILE": path,
            "EVENT_INTERVAL_SECS": "0", "BACKOFF_MAX_SECS": "2", "LOG_LEVEL": "warn",
        }, f"{camera}.log")


calls = []  # (camera, start, end, failure or None), in the order they ended
calls_lock = threading.Lock()
users_stop = threading.Event()


def user(index):
    n = index
    while not users_stop.is_set():
        camera = CAMERAS[n % len(CAMERAS)]
        n += USERS
        t0 = now()
        status, body = get(f"{EDGE}/logs?cameraId={camera}&timeout={LOGS_TIMEOUT}", timeout=LOGS_TIMEOUT * 2 + 10)
        failure = None
        if status == 200:
            logs = json.loads(body)["logs"]
            if logs != events_of(camera):
                failure = f"WRONG ANSWER {logs}"
        else:
            failure = f"HTTP {status}: {body.decode(errors='replace').strip()[:200]}"
        with calls_lock:
            calls.append((camera, t0, now(), failure))
        time.sleep(0.02)


def answering_since(t):
    """Whether every camera has had a successful call that started after t."""
    with calls_lock:
        done = {c for c, start, _, failure in calls if start >= t and failure is None}
    return done >= set(CAMERAS)


# --- what the edge does -----------------------------------------------------------------------------
def routed():
    """The pods the edge's upstreams.conf lists, as nginx loaded it."""
    try:
        text = open(os.path.join(WORK, "edge-run", "upstreams.conf")).read()
    except OSError:
        return set()
    return {line.split()[1].split(".")[0] for line in text.splitlines() if line.startswith("server ") and "max_fails=0" in line}


def fleet_view_complete():
    status, body = get(f"{EDGE}/cameras", timeout=10)
    if status != 200:
        return False
    view = json.loads(body)
    rows = {c["cameraId"]: c.get("instance") for c in view["cameras"] if c["online"]}
    return (view["scope"] == "fleet" and not view.get("unreachable") and set(rows) == set(CAMERAS)
            and set(rows.values()) <= set(ready))


def holdings(name):
    """The cameras pod `name` lists as online, asked directly."""
    _, address, _ = pods[name]
    status, body = get(f"http://{address}:{API_PORT}/cameras?scope=instance", timeout=10)
    if status != 200:
        return None
    return {c["cameraId"] for c in json.loads(body)["cameras"] if c["online"]}


timings = []


def settle(step, t_end):
    """After a step: the edge routes to exactly the ready pods, every camera answers again (a
    call that began once the edge had changed succeeds), and the fleet view is whole. Each
    is timed from the step's end."""
    routed_in = wait_for(f"edge routing to exactly {sorted(ready)} after '{step}'", WITHIN,
                         lambda: routed() == set(ready))
    t_routed = now()
    answering = wait_for(f"every camera answering after '{step}'", WITHIN, lambda: answering_since(t_routed))
    answering = answering and now() - t_end
    fleet = wait_for(f"a whole fleet view after '{step}'", WITHIN, fleet_view_complete, every=0.5)
    fleet = fleet and now() - t_end
    timings.append((step, routed_in, answering, fleet))
    fmt = lambda v: "-" if v is None else f"{v:.1f} s"
    say(f"{step}: edge routes to {sorted(routed())} after {fmt(routed_in)}; every camera answered again "
        f"within {fmt(answering)}; fleet view whole after {fmt(fleet)}")


def loopback_up():
    """A new network namespace's loopback is down: up, without needing `ip` (SIOCGIFFLAGS,
    SIOCSIFFLAGS with IFF_UP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, request))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))


def main():
    loopback_up()
    publish()
    edge_env = {"SERVICE": "api", "STATEFULSET": "api", "API_PORT": str(API_PORT), "SYNC_SECS": "2",
                "CONFIG_DIR": EDGE_CONFIG, "RUN_DIR": os.path.join(WORK, "edge-run"),
                "TLS_DIR": os.path.join(WORK, "no-tls"), "NGINX_BIN": os.environ.get("NGINX_BIN", "nginx")}
    address = lambda ordinal: f"127.0.0.{10 + ordinal}"
    phases = []  # (name, start, end): scale-downs, whose calls must not fail

    t0 = now()
    for ordinal in range(3):
        start_pod(ordinal, address(ordinal))
    edge = spawn("edge", ["sh", "deploy/kubernetes/base/edge/sync.sh"], edge_env, "edge.log")
    wait_for("the edge listening", WITHIN, lambda: get(f"{EDGE}/health")[0] in (200, 502))
    start_cameras()
    users = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(USERS)]
    for thread in users:
        thread.start()
    settle("start with 3", t0)

    t0 = now()
    for ordinal in (3, 4):
        start_pod(ordinal, address(ordinal))
    say(f"scaled 3 -> 5 in {now() - t0:.1f} s (OrderedReady)")
    settle("scale 3 -> 5", now())
    # Every pod holds cameras: the edge sends each its share (a moved camera's old poll ends
    # within POLL_HOLD_SECS).
    wait_for("every pod holding cameras", WITHIN, lambda: all(holdings(n) for n in ready), every=0.5)

    t0 = now()
    hooks = []
    for ordinal in (4, 3, 2):
        hooks.append(delete_pod(f"api-{ordinal}"))
    phases.append(("scale 5 -> 2", t0, now()))
    say(f"scaled 5 -> 2 in {now() - t0:.1f} s (each preStop drain: {', '.join(f'{h:.1f} s' for h in hooks)})")
    settle("scale 5 -> 2", now())

    before = holdings("api-1")
    t0 = now()
    took = delete_pod("api-1")
    phases.append(("api-1 deleted", t0, now()))
    start_pod(1, "127.0.0.21")
    say(f"api-1 restarted on a new address, 127.0.0.21 (drain {took:.1f} s), holding {sorted(before)} before")
    settle("api-1 on a new address", now())
    back = wait_for("api-1 holding its cameras again", WITHIN, lambda: holdings("api-1") == before, every=0.5)
    say(f"api-1 holds the same cameras again after {back if back is None else round(back, 1)} s")

    users_stop.set()
    for thread in users:
        thread.join(timeout=LOGS_TIMEOUT * 2 + 15)
    edge_log = open(os.path.join(WORK, "edge.log"), errors="replace").read()

    with calls_lock:
        done = list(calls)
    wrong = [c for c in done if c[3] and c[3].startswith("WRONG")]
    failed = [c for c in done if c[3]]
    in_drain = [c for c in failed for _, a, b in phases if c[1] <= b and c[2] >= a]
    say(f"{len(done)} calls: {len(done) - len(failed)} right, {len(wrong)} wrong, {len(failed)} failed "
        f"({len(in_drain)} of them while a pod drained)")
    for camera, a, b, failure in failed[:10]:
        say(f"  failed: {camera} {a:.1f}-{b:.1f} s: {failure}")
    check(not wrong, f"{len(wrong)} wrong answer(s)")
    check(not in_drain, f"{len(in_drain)} /logs call(s) failed while a pod drained")
    check(edge.poll() is None, "the edge (sync.sh) exited:\n" + edge_log[-2000:])
    reloads = edge_log.count("routing to:")
    say(f"the edge reloaded nginx {reloads - 1} time(s); its log: {WORK}/edge.log")


if __name__ == "__main__":
    try:
        main()
    finally:
        users_stop.set()
        for proc in reversed(procs):
            stop(proc)
        # nginx is sync.sh's child: stopped with it, unless sync.sh died first.
        try:
            os.kill(int(open(os.path.join(WORK, "edge-run", "nginx.pid")).read()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    print("kubernetes-scale: timings (edge routing / every camera answering / fleet view, after each step):")
    for step, routed_in, answering, fleet in timings:
        cells = ["-" if v is None else f"{v:5.1f} s" for v in (routed_in, answering, fleet)]
        print(f"  {step:<26} {cells[0]:>8} {cells[1]:>8} {cells[2]:>8}")
    if failures:
        print(f"kubernetes-scale: FAILED: {len(failures)} check(s)")
        sys.exit(1)
    print("kubernetes-scale: ok")
