#!/usr/bin/env bash
# Fires N requests at URL at once and prints each one's HTTP status and body.
# Exits non-zero if any request fails (transport error or a status other than 2xx).
#
#   ./curl_parallel.sh 10 http://localhost:8080/logs
#   ./curl_parallel.sh 10 'http://localhost:8080/logs?cameraId=front&startTimestamp=1732300000'
set -u

usage() {
  echo "usage: $0 N URL   (N: how many requests at once, 1-1000)" >&2
  exit 2
}
[ $# -eq 2 ] || usage
n=$1
url=$2
case "$n" in '' | *[!0-9]*) usage ;; esac
[ "$n" -ge 1 ] && [ "$n" -le 1000 ] || usage
command -v curl >/dev/null || { echo "$0: curl is not installed" >&2; exit 2; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

start_ms=$(($(date +%s%N) / 1000000))
for i in $(seq 1 "$n"); do
  # --max-time bounds each call even if the server never answers.
  curl -sS --max-time 330 -o "$out/$i.body" -w '%{http_code} %{time_total}' "$url" >"$out/$i.status" 2>"$out/$i.err" &
done
wait
elapsed_ms=$(($(date +%s%N) / 1000000 - start_ms))

failed=0
for i in $(seq 1 "$n"); do
  # -w output has no trailing newline, so read returns non-zero even when it read the line.
  read -r code secs <"$out/$i.status" || true
  code=${code:-000}
  body=$(cat "$out/$i.body" 2>/dev/null)
  [ -n "$body" ] || body=$(cat "$out/$i.err")
  printf '#%-4s HTTP %s in %ss: %s\n' "$i" "$code" "${secs:-?}" "$body"
  case "$code" in 2??) ;; *) failed=$((failed + 1)) ;; esac
done
printf '%d of %d succeeded in %d ms\n' "$((n - failed))" "$n" "$elapsed_ms"
[ "$failed" -eq 0 ]
