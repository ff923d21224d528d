# camera-logs: one image holds both binaries (`api` and `camera`); docker-compose.yml picks one.
#
#   docker build -t camera-logs .
#   docker run --rm -p 8080:8080 camera-logs                 # the API server
#   docker run --rm -e API_BASE_URL=http://host:8080 camera-logs camera

# --- build: the official Rust image ---
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so editing the sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin && echo 'fn main() {}' > src/bin/api.rs && echo 'fn main() {}' > src/bin/camera.rs \
    && echo 'fn main() {}' > src/bin/loadtest.rs && touch src/lib.rs \
    && cargo build --release --locked --bin api --bin camera \
    && rm -rf src
COPY src ./src
# touch: the real sources must be newer than the placeholder build above.
RUN touch src/lib.rs src/bin/*.rs && cargo build --release --locked --bin api --bin camera

# --- run: slim Debian, a non-root user, nothing but the binaries and curl for the healthcheck ---
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin camlogs
COPY --from=build /src/target/release/api /src/target/release/camera /usr/local/bin/
USER camlogs
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
CMD ["api"]
