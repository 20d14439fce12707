#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Unit tables, the client and
# mock components, and the end-to-end tests against RabbitMQ at 127.0.0.1:5672.
# Release mode: the reconciliation and chaos tests move tens of thousands of jobs.
set -euo pipefail
cd "$(dirname "$0")"
exec cargo test --release --all-targets "$@"
