#!/usr/bin/env bash
# A local fleet without Docker: N `api` instances on loopback ports behind the system's nginx,
# with deploy/nginx.conf as it is and generated upstreams.conf/listen.conf in a temporary prefix.
# It owns only the processes it starts, and stops exactly those (by their PIDs) on Ctrl-C or
# SIGTERM; it never edits deploy/, and never touches another nginx or api on the machine.
#
#   deploy/fleet.sh                      # 3 instances on 127.0.0.1:8081-8083, the edge on :8080
#   deploy/fleet.sh -n 5 -p 9000         # 5 instances on :9001-9005, the edge on :9000
#   deploy/fleet.sh --cert edge.pem --key edge.key   # the edge speaks https
#
# Environment: INSTANCES, EDGE_PORT, API_PORT_BASE (instance i listens on base + i), TLS_CERT,
# TLS_KEY, NGINX (the nginx binary), API_BIN (the api binary; default target/release/api, built
# if missing). Every other variable (POLL_HOLD_SECS, LOG_LEVEL, ...) reaches the instances.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

repo=$(cd "$(dirname "$0")/.." && pwd)
instances=${INSTANCES:-3}
edge_port=${EDGE_PORT:-8080}
api_port_base=${API_PORT_BASE:-}
cert=${TLS_CERT:-}
key=${TLS_KEY:-}

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--instances) instances=${2:?$1 needs a value}; shift 2 ;;
    -p|--port) edge_port=${2:?$1 needs a value}; shift 2 ;;
    --api-port-base) api_port_base=${2:?$1 needs a value}; shift 2 ;;
    --cert) cert=${2:?$1 needs a value}; shift 2 ;;
    --key) key=${2:?$1 needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fleet.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
api_port_base=${api_port_base:-$edge_port}

number() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
number "$instances" 1 64 || { echo "fleet.sh: -n must be 1 to 64; got '$instances'" >&2; exit 2; }
number "$edge_port" 1 65535 || { echo "fleet.sh: -p must be a port; got '$edge_port'" >&2; exit 2; }
number "$api_port_base" 0 $((65535 - instances)) \
  || { echo "fleet.sh: API_PORT_BASE + $instances must be a port; got '$api_port_base'" >&2; exit 2; }
if [ -n "$cert$key" ] && { [ ! -r "$cert" ] || [ ! -r "$key" ]; }; then
  echo "fleet.sh: --cert and --key must both name readable PEM files" >&2
  exit 2
fi

nginx=${NGINX:-}
if [ -z "$nginx" ]; then
  for candidate in /usr/sbin/nginx /usr/local/sbin/nginx "$(command -v nginx || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then nginx=$candidate; break; fi
  done
fi
[ -n "$nginx" ] || { echo "fleet.sh: nginx not found (apt-get install nginx-light, or set NGINX)" >&2; exit 1; }

api=${API_BIN:-$repo/target/release/api}
if [ ! -x "$api" ]; then
  echo "fleet.sh: building $api" >&2
  (cd "$repo" && cargo build --release --bin api)
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/camera-logs-fleet.XXXXXX")
pids=()
names=()

stop() {
  trap - INT TERM EXIT
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir/temp"
  echo "fleet.sh: stopped ${#pids[@]} process(es); their logs are kept in $dir" >&2
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

# Waits until 127.0.0.1:$1 accepts connections, or $2 (a pid) has exited.
wait_listening() {
  local i
  for i in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

cp "$repo/deploy/nginx.conf" "$dir/nginx.conf"
mkdir -p "$dir/temp"
: > "$dir/upstreams.conf"
# Each instance knows the others (PEERS), so /cameras through the edge lists the whole fleet.
url() { echo "http://127.0.0.1:$((api_port_base + $1))"; }
for i in $(seq 1 "$instances"); do
  port=$((api_port_base + i))
  peers=$(for j in $(seq 1 "$instances"); do [ "$j" = "$i" ] || url "$j"; done | paste -sd, -)
  env HOST=127.0.0.1 PORT=$port INSTANCE_NAME="$(url "$i")" ${peers:+PEERS=$peers} "$api" 2> "$dir/api-$i.log" &
  pids+=("$!")
  names+=("api-$i on http://127.0.0.1:$port (log $dir/api-$i.log)")
  wait_listening "$port" "$!" || { echo "fleet.sh: api-$i did not start:" >&2; cat "$dir/api-$i.log" >&2; exit 1; }
  echo "server 127.0.0.1:$port max_fails=0;" >> "$dir/upstreams.conf"
done

if [ -n "$cert" ]; then
  scheme=https
  cat > "$dir/listen.conf" <<EOF
listen 127.0.0.1:$edge_port ssl;
ssl_certificate $(realpath "$cert");
ssl_certificate_key $(realpath "$key");
EOF
else
  scheme=http
  echo "listen 127.0.0.1:$edge_port;" > "$dir/listen.conf"
fi
"$nginx" -p "$dir/" -c "$dir/nginx.conf" -g 'daemon off;' 2> "$dir/nginx.log" &
pids+=("$!")
names+=("nginx on $scheme://127.0.0.1:$edge_port (log $dir/nginx.log)")
wait_listening "$edge_port" "$!" || { echo "fleet.sh: nginx did not start:" >&2; cat "$dir/nginx.log" >&2; exit 1; }

echo "fleet.sh: $instances instance(s) behind the edge, logs in $dir; Ctrl-C stops them all"
for i in "${!pids[@]}"; do
  echo "  pid ${pids[$i]}  ${names[$i]}"
done
echo "  cameras: API_BASE_URL=$scheme://127.0.0.1:$edge_port target/release/camera"
echo "  users:   curl '$scheme://127.0.0.1:$edge_port/logs?cameraId=ID'"

# Report each process that ends on its own (an instance killed to watch a fail-over), until
# all have ended or a signal stops the fleet.
alive=("${pids[@]}")
while [ ${#alive[@]} -gt 0 ]; do
  wait -n "${alive[@]}" 2>/dev/null || true
  still=()
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    if [[ " ${alive[*]} " == *" $pid "* ]]; then
      if kill -0 "$pid" 2>/dev/null; then
        still+=("$pid")
      else
        echo "fleet.sh: pid $pid ended: ${names[$i]}" >&2
      fi
    fi
  done
  alive=("${still[@]}")
done
