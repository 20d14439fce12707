# syntax=docker/dockerfile:1
# apns-worker: multi-stage build. The last stage (the default target) is the worker's
# small non-root runtime image; the `mock` stage is the mock APNs (`apns-mock`) that
# docker-compose runs beside it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The workspace: the worker (root package) and its crates. Nothing else is needed to
# build it (tests/deploy.rs builds exactly what is copied here).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
# The registry and the target directory live in BuildKit caches, so a source edit
# rebuilds only the workspace's own crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p apns-worker -p apns-mock \
    && mkdir -p /out \
    && cp target/release/apns-worker target/release/apns-mock /out/ \
    && strip /out/apns-worker /out/apns-mock

# The mock APNs (docker-compose, local trials): `docker build --target mock`.
FROM gcr.io/distroless/cc-debian12:nonroot AS mock
COPY --from=build /out/apns-mock /usr/local/bin/apns-mock
USER 65532:65532
EXPOSE 2197
ENTRYPOINT ["/usr/local/bin/apns-mock"]

# distroless/cc: glibc and libgcc only, no shell, runs as uid 65532 ("nonroot").
# TLS roots are compiled in (webpki-roots), so no CA bundle is needed in the image.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="apns-worker" \
      org.opencontainers.image.description="Delivers Apple push notifications from RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/apns-worker /usr/local/bin/apns-worker
USER 65532:65532
ENV APNS_WORKER_LOG_FORMAT=json
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/apns-worker"]
CMD ["run", "--config", "/etc/apns-worker/config.toml"]
