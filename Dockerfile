# Orchion in a container: one static-ish binary on a minimal Debian, run as UID 1000.
#
#   docker build -t orchion .
#   docker run -p 8080:8080 -p 50051:50051 orchion
#
# Build stage: the release binary. Protos compile without a network (protox), SQLite is
# bundled, TLS is rustls: the runtime image needs only CA certificates.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin orchion \
 && strip target/release/orchion

# Runtime stage.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 orchion \
 && useradd --uid 1000 --gid 1000 --home-dir /var/lib/orchion --create-home orchion
COPY --from=build /src/target/release/orchion /usr/local/bin/orchion
USER 1000:1000
WORKDIR /var/lib/orchion
# The seed's variables work: SERVER_HOST, SERVER_PORT, RUST_LOG.
ENV SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8080
EXPOSE 8080 50051
ENTRYPOINT ["orchion"]
CMD ["server", "--data-dir", "/var/lib/orchion"]
