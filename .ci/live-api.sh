# Sourced by the .ci/ checks that need a live system: builds the binaries, starts the api on
# 127.0.0.1 with a free port (PORT=0, the port read back from its "listening on" line) and a
# real camera polling it, and stops both by pid when the calling script exits. Also makes the
# Python venv those checks use. Nothing here touches anything but 127.0.0.1.

live_dir=$(mktemp -d)
live_pids=()

live_stop() {
  live_stop_started
  rm -rf "$live_dir"
}
trap live_stop EXIT

# live_stop_started: stops what was started so far (the temporary directory stays).
live_stop_started() {
  local pid
  for pid in "${live_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  live_pids=()
}

# live_build: the release api and camera (cargo is a no-op when they are current).
live_build() {
  cargo build --locked --release --bin api --bin camera >&2
}

# live_start_api [VAR=value ...]: starts the api and sets LIVE_URL (http://127.0.0.1:PORT).
live_start_api() {
  env HOST=127.0.0.1 PORT=0 "$@" target/release/api 2>"$live_dir/api.log" &
  live_pids+=($!)
  local deadline=$((SECONDS + 30))
  LIVE_URL=
  while [ -z "$LIVE_URL" ]; do
    LIVE_URL=$(sed -n 's/.*API server listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$live_dir/api.log" | head -n 1)
    if [ -z "$LIVE_URL" ]; then
      if [ $SECONDS -ge $deadline ] || ! kill -0 "${live_pids[-1]}" 2>/dev/null; then
        echo "the api did not start:" >&2
        cat "$live_dir/api.log" >&2
        return 1
      fi
      sleep 0.1
    fi
  done
}

# live_start_camera ID [VAR=value ...]: starts a camera and waits until /cameras says online.
# Uses LIVE_TOKEN as the API token for the check, when set.
live_start_camera() {
  local id=$1
  shift
  env API_BASE_URL="$LIVE_URL" CAMERA_ID="$id" EVENT_INTERVAL_SECS=0.2 LOG_LEVEL=warn "$@" \
    target/release/camera 2>"$live_dir/camera-$id.log" &
  live_pids+=($!)
  local auth=()
  [ -n "${LIVE_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $LIVE_TOKEN")
  local deadline=$((SECONDS + 30))
  until curl -sf "${auth[@]}" "$LIVE_URL/cameras" | grep -q "\"cameraId\":\"$id\",\"online\":true"; do
    if [ $SECONDS -ge $deadline ]; then
      echo "camera '$id' did not come online:" >&2
      cat "$live_dir/camera-$id.log" >&2
      return 1
    fi
    sleep 0.1
  done
}

# live_venv NAME PACKAGE...: a venv under target/ with the packages; sets LIVE_PY. Returns
# non-zero, with LIVE_WHY saying why, when it cannot be made, so the caller can skip.
live_venv() {
  local name=$1
  shift
  local venv="target/ci-venv-$name"
  command -v python3 >/dev/null || { LIVE_WHY="python3 is not installed"; return 1; }
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >/dev/null 2>&1 \
      || { LIVE_WHY="python3 -m venv failed (python3-venv missing?)"; return 1; }
  fi
  "$venv/bin/pip" install -q "$@" >"$live_dir/pip.log" 2>&1 \
    || { LIVE_WHY="pip install $* failed: $(tail -n 1 "$live_dir/pip.log")"; return 1; }
  LIVE_PY="$venv/bin/python"
}
