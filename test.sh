#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Unit tables, the client and
# mock components, end-to-end and reliability tests against RabbitMQ at 127.0.0.1:5672,
# the examples, the benchmark's smoke runs, the crates' doc examples, and the
# deployment files (Helm chart, compose file, Dockerfile) checked with offline
# validators that ops/install-tools.sh puts in .tools/.
# Release mode: the reconciliation and chaos tests move over 100,000 jobs.
set -euo pipefail
cd "$(dirname "$0")"
./ops/install-tools.sh
# The example binaries are run by tests/examples.rs and the worker binary by the
# benchmark's test; `cargo test --all-targets` compiles examples only as test
# harnesses, so build the real executables first.
cargo build --release --workspace --bins --examples
# Doc examples (not part of --all-targets).
cargo test --release --workspace --doc
exec cargo test --release --workspace --all-targets "$@"
