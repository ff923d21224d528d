# camera-logs: one image holds both binaries (`api` and `camera`); docker-compose.yml picks one
# and puts the nginx edge in front of the api.
#
#   docker build -t camera-logs .
#   docker run --rm -e HOST=0.0.0.0 -p 127.0.0.1:8080:8080 camera-logs   # a bare api, trusted use only
#   docker run --rm -e API_BASE_URL=http://host:8080 camera-logs camera
#
# The api binds 127.0.0.1 unless HOST says otherwise: a bare api is for loopback and trusted
# networks; anything untrusted clients can reach goes through deploy/nginx.conf.

# --- build: the official Rust image ---
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Cargo.toml keeps line tables in release builds for profiling; the image does without them.
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first, so editing the sources does not rebuild them: placeholders for the library
# and the two binaries built here (cargo finds bins by file, so other src/bin entries need none).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin && echo 'fn main() {}' > src/bin/api.rs && echo 'fn main() {}' > src/bin/camera.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin api --bin camera \
    && rm -rf src
# Whole folders, so moving modules needs no change here; the library embeds files of both
# with include_str! (the OpenAPI contract from docs/, the web page from src/).
COPY src ./src
COPY docs ./docs
# touch: every source must be newer than the placeholder build above, or cargo keeps it.
RUN find src docs -type f -exec touch {} + && cargo build --release --locked --bin api --bin camera

# --- run: slim Debian, a non-root user, the binaries, and curl for compose's api healthcheck ---
# No HEALTHCHECK here: the same image runs cameras, which serve nothing; compose checks the api.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin camlogs \
    && mkdir -p /var/lib/camera-logs && chown camlogs /var/lib/camera-logs
COPY --from=build /src/target/release/api /src/target/release/camera /usr/local/bin/
USER camlogs
# A camera's LOG_FILE lives here; a volume mounted on it starts owned by camlogs. No VOLUME line:
# it would give every api and camera container an anonymous volume that `compose down` leaves.
ENV PORT=8080
EXPOSE 8080
CMD ["api"]
