# syntax=docker/dockerfile:1
# apns-worker: multi-stage build, small non-root runtime image. The same image runs the
# worker (default) and the mock APNs (`mock-apns`), the publisher and the demo.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin apns-worker \
    && strip target/release/apns-worker

# distroless/cc: glibc and libgcc only, no shell, runs as uid 65532 ("nonroot").
# TLS roots are compiled in (webpki-roots), so no CA bundle is needed in the image.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="apns-worker" \
      org.opencontainers.image.description="Delivers Apple push notifications from RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/apns-worker /usr/local/bin/apns-worker
USER 65532:65532
ENV APNS_WORKER_LOG_FORMAT=json
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/apns-worker"]
CMD ["run", "--config", "/etc/apns-worker/config.toml"]
