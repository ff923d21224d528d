#!/usr/bin/env bash
# Fires N requests at URL truly at once (one curl process, --parallel --parallel-immediate, all N
# connections opened together), prints each one's HTTP status, time and body, and how many
# camera round trips the burst cost (camera_logs_camera_round_trips_total from /metrics, before
# and after; "unknown" when that /metrics is not the camera's server). Sends API_TOKEN as a
# bearer token when it is set.
# Exits non-zero if any request fails (transport error or a status other than 2xx).
#
#   ./curl_parallel.sh 10 localhost:8080/logs
#   API_TOKEN=secret ./curl_parallel.sh 10 'http://localhost:8080/logs?cameraId=front&startTimestamp=1732300000'
set -u

usage() {
  echo "usage: $0 N URL   (N: how many requests at once, 1-1000)" >&2
  exit 2
}
[ $# -eq 2 ] || usage
n=$1
url=$2
# A URL without a scheme is http://, as curl takes it; the /metrics base below needs it spelt out.
[[ $url =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]] || url="http://$url"
case "$n" in '' | *[!0-9]*) usage ;; esac
[ "$n" -ge 1 ] && [ "$n" -le 1000 ] || usage
command -v curl >/dev/null || { echo "$0: curl is not installed" >&2; exit 2; }
curl --help all 2>/dev/null | grep -q -- '--parallel-immediate' \
  || { echo "$0: this curl has no --parallel-immediate (curl 7.68 or later is needed)" >&2; exit 2; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
chmod 700 "$out"

# The token goes in a config file, not on the command line, where ps would show it.
auth="$out/auth.conf"
: >"$auth"
[ -n "${API_TOKEN:-}" ] && printf 'header = "Authorization: Bearer %s"\n' "$API_TOKEN" >"$auth"

# camera_logs_camera_round_trips_total from the server's /metrics, or nothing.
base=$(printf '%s' "$url" | sed -n 's#^\(https\{0,1\}://[^/?#]*\).*#\1#p')
round_trips() {
  curl -sS --max-time 10 --config "$auth" "$base/metrics" 2>/dev/null \
    | sed -n 's/^camera_logs_camera_round_trips_total \([0-9][0-9]*\)$/\1/p'
}

quote() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
{
  for i in $(seq 1 "$n"); do
    printf 'url = %s\noutput = "%s/%s.body"\n' "$(quote "$url")" "$out" "$i"
  done
} >"$out/urls.conf"

before=$(round_trips)
start_ms=$(($(date +%s%N) / 1000000))
# --max-time bounds each call even if the server never answers; %{urlnum} says which call a
# line is about (0-based, in the order of urls.conf); %{errormsg} is empty on success.
curl -sS --parallel --parallel-immediate --parallel-max "$n" --max-time 330 \
  --config "$auth" --config "$out/urls.conf" \
  -w '%{urlnum} %{http_code} %{time_total} %{errormsg}\n' >"$out/results" 2>"$out/stderr"
elapsed_ms=$(($(date +%s%N) / 1000000 - start_ms))
after=$(round_trips)

failed=0
for i in $(seq 1 "$n"); do
  line=$(grep "^$((i - 1)) " "$out/results" | head -n 1)
  read -r _ code secs err <<<"$line"
  code=${code:-000}
  body=$(cat "$out/$i.body" 2>/dev/null)
  [ -n "$body" ] || body=${err:-"(no answer)"}
  printf '#%-4s HTTP %s in %ss: %s\n' "$i" "$code" "${secs:-?}" "$body"
  case "$code" in 2??) ;; *) failed=$((failed + 1)) ;; esac
done
printf '%d of %d succeeded in %d ms\n' "$((n - failed))" "$n" "$elapsed_ms"
if [ -n "$before" ] && [ -n "$after" ] && [ "$after" -eq "$before" ] && [ "$failed" -lt "$n" ]; then
  # Every answered call cost the answering server a round trip, so this /metrics is another
  # server's: behind a fleet's edge, /metrics is the instance "default" hashes to.
  echo "camera round trips for the burst: unknown ($base/metrics counted none for $((n - failed)) answered calls: it is another instance's, as behind a fleet's edge)"
elif [ -n "$before" ] && [ -n "$after" ]; then
  printf 'camera round trips for the burst: %d (camera_logs_camera_round_trips_total %d -> %d)\n' \
    "$((after - before))" "$before" "$after"
else
  echo "camera round trips for the burst: unknown ($base/metrics did not answer; is API_TOKEN set as the server's?)"
fi
[ "$failed" -eq 0 ]
