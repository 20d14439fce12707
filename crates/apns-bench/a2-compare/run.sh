#!/usr/bin/env bash
# Sender-only: apns-worker's client vs the a2 crate, same mock, same machine, same run.
#   crates/apns-bench/a2-compare/run.sh [notifications per round] [in flight] [rounds]
set -euo pipefail
cd "$(dirname "$0")"
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/a2-0.10.0 2>/dev/null | head -1 || true)
if [ -z "$src" ]; then
  # Fetch a2 into the registry with a throwaway manifest (the real one needs the patch).
  tmp=$(mktemp -d); (cd "$tmp" && cargo init -q --name fetch-a2 && cargo add -q a2@=0.10.0 && cargo fetch -q); rm -rf "$tmp"
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/a2-0.10.0 | head -1)
fi
rm -rf target/a2-patched && mkdir -p target && cp -r "$src" target/a2-patched
python3 - target/a2-patched/src/client.rs <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
# 1. The host of requests: A2_ENDPOINT (host:port) when set.
s = s.replace("""    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self {""", """    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Ok(h) = std::env::var("A2_ENDPOINT") {
            return write!(f, "{}", h);
        }
        let host = match self {""", 1)
# 2. Trust the mock's CA (A2_EXTRA_CA, a PEM file) instead of the public roots.
s = s.replace("""fn default_connector() -> HyperConnector {
    HttpsConnectorBuilder::new()
        .with_webpki_roots()""", """fn default_connector() -> HyperConnector {
    if let Ok(path) = std::env::var("A2_EXTRA_CA") {
        let pem = std::fs::read(path).expect("A2_EXTRA_CA");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.expect("PEM certificate")).expect("CA");
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        return HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http2().build();
    }
    HttpsConnectorBuilder::new()
        .with_webpki_roots()""", 1)
assert "A2_ENDPOINT" in s and "A2_EXTRA_CA" in s, "a2's source changed; update run.sh"
open(p, "w").write(s)
PY
cargo run --release -q -- "${1:-200000}" "${2:-1000}" "${3:-3}"
