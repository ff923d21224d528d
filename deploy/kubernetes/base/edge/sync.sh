#!/bin/sh
# The edge container's first process: nginx with deploy/nginx.conf as it is, kept routing to
# exactly the ready api pods (docs/kubernetes.md, "Scaling"). It owns nginx's run directory
# and the nginx it starts; it never talks to the Kubernetes API (so the edge needs no
# permissions), and it uses only what the official nginx image has: sh, getent, nginx.
#
# nginx hashes cameraId over the servers of upstreams.conf by their names as written, so each
# server is written as its pod's stable DNS name (api-0.api, api-1.api, ...): a pod that comes
# back with a new address keeps its place on the ring, and so its cameras. Open-source nginx
# looks such names up only when it loads its configuration (1.22 has no `resolve`), so every
# SYNC_SECS this loop finds the ready pods, and when they or their addresses have changed it
# rewrites upstreams.conf, checks the configuration (nginx -t) and reloads nginx. A reload is
# graceful: requests in flight (held polls among them) finish on the old workers.
#
# The ready pods: the headless Service's name resolves to the address of every ready pod, and
# each pod's own name <statefulset>-<ordinal>.<service> resolves while it is ready; ordinals are
# tried from 0 until every address of the Service has its name. A pod that leaves is dropped one
# round late: it is being deleted, and its preStop drain (api --drain, started at the same
# moment) first moves its cameras to the next instance on the ring, where nginx then sends
# their calls. nginx is reloaded too when the TLS Secret's files change (cert-manager renewals).
#
# Environment (defaults in brackets): SERVICE [api], STATEFULSET [api], API_PORT [8080],
# SYNC_SECS [2], CONFIG_DIR [/etc/camera-logs/edge]: nginx.conf and listen.conf, TLS_DIR
# [/etc/camera-logs/tls]: tls.crt and tls.key, RUN_DIR [/run/edge]: writable, nginx's prefix,
# NGINX_BIN [nginx]: the binary (not NGINX, which nginx reads itself: inherited sockets).
set -u

service=${SERVICE:-api}
statefulset=${STATEFULSET:-api}
port=${API_PORT:-8080}
every=${SYNC_SECS:-2}
config=${CONFIG_DIR:-/etc/camera-logs/edge}
tls=${TLS_DIR:-/etc/camera-logs/tls}
run=${RUN_DIR:-/run/edge}
nginx_bin=${NGINX_BIN:-nginx}

log() { echo "edge-sync: $*" >&2; }
nginx_run() { "$nginx_bin" -e stderr -p "$run/" -c "$run/nginx.conf" "$@"; }
addresses() { getent ahosts "$1" | awk '{ print $1 }' | sort -u; }

# "name address..." for each ready pod, by ordinal; nothing when none is ready.
ready_pods() {
  missing=$(addresses "$service")
  [ -n "$missing" ] || return 0
  # Past every ordinal a ready pod can have, unless the names and the Service disagree.
  limit=$(($(echo "$missing" | wc -l) + 16))
  i=0
  while [ -n "$missing" ] && [ "$i" -lt "$limit" ]; do
    found=$(addresses "$statefulset-$i.$service")
    if [ -n "$found" ]; then
      echo "$statefulset-$i.$service" $found
      missing=$(echo "$missing" | grep -vxF "$found")
    fi
    i=$((i + 1))
  done
}

# upstreams.conf for the ready pods on stdin; all servers down when there is none, so that
# nginx answers 502 at once.
render() {
  echo "# Written by edge-sync (deploy/kubernetes/base/edge/sync.sh): the ready api pods, by name."
  count=0
  while read -r name found; do
    echo "server $name:$port max_fails=0;  # $found"
    count=$((count + 1))
  done
  [ "$count" -gt 0 ] || echo "server 127.0.0.1:$port down;  # no api pod is ready"
}

# The pods a file of upstreams lists (not the stand-in for none).
servers() { sed -n 's/^server \([^ ]*\) max_fails=0;.*/\1/p' "$1" | sort; }

# Whether a pod that upstreams.conf lists is missing from next.conf.
leaves() {
  servers "$run/next.conf" >"$run/next.servers"
  [ -n "$(servers "$run/upstreams.conf" | comm -23 - "$run/next.servers")" ]
}

# Installs next.conf as upstreams.conf if nginx accepts it, and reloads nginx.
apply() {
  cp "$run/upstreams.conf" "$run/upstreams.conf.old"
  cp "$run/next.conf" "$run/upstreams.conf"
  if out=$(nginx_run -t -q 2>&1); then
    kill -HUP "$nginx"
    log "routing to: $(servers "$run/upstreams.conf" | tr '\n' ' ')"
  else
    mv "$run/upstreams.conf.old" "$run/upstreams.conf"
    log "kept the servers before, nginx -t refused the new ones: $out"
  fi
}

command -v getent >/dev/null || { log "getent is missing"; exit 1; }
mkdir -p "$run/temp" || exit 1
cp "$config/nginx.conf" "$config/listen.conf" "$run/" || exit 1
ln -sfn "$tls" "$run/tls"
ready_pods | render >"$run/upstreams.conf"
# Not through nginx_run: $! must be nginx itself, the process that reloads on SIGHUP.
"$nginx_bin" -e stderr -p "$run/" -c "$run/nginx.conf" -g 'daemon off;' &
nginx=$!
trap 'kill -QUIT "$nginx" 2>/dev/null; wait "$nginx"; exit 0' TERM INT
log "nginx started (pid $nginx), routing to: $(servers "$run/upstreams.conf" | tr '\n' ' ')"
certificate=$(cat "$run/tls/tls.crt" "$run/tls/tls.key" 2>/dev/null | cksum)

while :; do
  sleep "$every" &
  wait $!
  kill -0 "$nginx" 2>/dev/null || { log "nginx has exited"; wait "$nginx"; exit 1; }
  ready_pods | render >"$run/next.conf"
  if cmp -s "$run/next.conf" "$run/upstreams.conf"; then
    rm -f "$run/pending.conf"
  elif leaves && ! cmp -s "$run/next.conf" "$run/pending.conf"; then
    # A pod is leaving: dropped next round, once its drain has moved its cameras.
    cp "$run/next.conf" "$run/pending.conf"
  else
    apply
    rm -f "$run/pending.conf"
  fi
  now=$(cat "$run/tls/tls.crt" "$run/tls/tls.key" 2>/dev/null | cksum)
  if [ "$now" != "$certificate" ]; then
    certificate=$now
    kill -HUP "$nginx"
    log "the TLS certificate changed: nginx reloaded"
  fi
done
