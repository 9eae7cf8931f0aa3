# atmos-labeler: multi-stage build, small non-root runtime image.
#
#   docker build -t atmos-labeler .
#   docker run -v ./state:/app/state -p 8081:8081 atmos-labeler
#
# On an empty state directory the first start creates state/config.json (commented defaults),
# the signing key (0600) and the database, then serves on :8081.

FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change, so an edit to src/ recompiles this crate alone. Cargo loads the manifest only if
# every target it declares exists (explicit [lib]/[[bin]]/[[test]]/[[bench]] paths, and
# benches/<name>.rs for a bench without one, since autobenches = false), so each gets an
# empty stand-in; they are removed once the dependencies are built.
COPY Cargo.toml Cargo.lock ./
RUN for f in $(sed -n 's/^path = "\(.*\.rs\)"$/\1/p' Cargo.toml) \
             $(awk '/^\[\[bench\]\]/ {b = 1; next} /^\[/ {b = 0} \
                    b && /^name *=/ {gsub(/"/, "", $3); print "benches/" $3 ".rs"}' Cargo.toml); do \
      mkdir -p "$(dirname "$f")"; \
      case "$f" in */lib.rs) : > "$f" ;; *) echo 'fn main() {}' > "$f" ;; esac; \
    done \
 && cargo build --release --locked --bin labeler \
 && rm -rf src tests benches

# The real sources. The stand-ins' build of this crate looks fresh to cargo (the copied files
# can be older than it), so it is cleaned first; the dependencies stay built.
COPY . .
RUN cargo clean --release --locked -p atmos-labeler \
 && cargo build --release --locked --bin labeler \
 && strip target/release/labeler

FROM debian:bookworm-slim
# ca-certificates: HTTPS to the PLC directory, did:web hosts and PDSes, WSS to Jetstream.
# setpriv (util-linux, already in the base image) drops root in the entrypoint.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin labeler \
 && mkdir -p /app/state \
 && chown -R labeler:labeler /app \
 && chmod 0700 /app/state
COPY --from=build /src/target/release/labeler /usr/local/bin/labeler
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /app
VOLUME /app/state
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["labeler", "healthcheck"]
# The entrypoint starts as root only to hand a freshly bind-mounted ./state to the labeler
# user, then runs the daemon as that user (uid 10001). Run with --user to skip that step.
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["labeler"]
