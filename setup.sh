#!/usr/bin/env bash
# Installs everything the pipeline, the demo and the tests need, from this
# repository's own files: Debian packages, the pinned Python packages, and the
# pinned Kubernetes, etcd, KWOK, Helm, distribution registry and actionlint builds (cached under
# ~/.cache, so a second run takes seconds). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '==> %s\n' "$*"; }
started=$(date +%s)

missing=()
command -v git-crypt >/dev/null || missing+=(git-crypt)
command -v gpg >/dev/null || missing+=(gnupg)
command -v openssl >/dev/null || missing+=(openssl)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# npm brings node.js: configurable-http-proxy (the smoke suite's tests) and pyright (the
# type checker `invoke test` runs; its PyPI wheel carries pyright, node.js runs it) need it.
command -v npm >/dev/null || missing+=(npm)
# actionlint runs it on the run: scripts of the CI workflow (tests/test_workflow.py)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
  step "Debian packages: ${missing[*]}"
  # As root here; as a user with password-less sudo on CI runners (GitHub Actions).
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "Python packages (requirements.txt)"
python3 -m pip install -q --disable-pip-version-check -r requirements.txt

# BinderHub itself comes as a wheel beside the project (its PyPI release is from 2018);
# the tests run the smoke suite against it, and skip those runs where it is absent.
shared="${BINDER_DEPLOY_SHARED:-../shared}"
wheel=""
for candidate in "$shared"/binderhub/binderhub-*.whl; do
  [ -f "$candidate" ] && wheel="$candidate"
done
if [ -n "$wheel" ]; then
  step "BinderHub ($wheel) and the smoke suite's test bed (tests/smoke_requirements.txt)"
  python3 -m pip install -q --disable-pip-version-check -c requirements.txt \
    -r tests/smoke_requirements.txt "$wheel"
else
  step "Smoke suite's test bed (tests/smoke_requirements.txt)"
  echo "    no BinderHub wheel in $shared/binderhub/: the tests against a live BinderHub" \
    "will be skipped (set BINDER_DEPLOY_SHARED to the folder that holds binderhub/)"
  python3 -m pip install -q --disable-pip-version-check -c requirements.txt \
    -r tests/smoke_requirements.txt
fi

step "configurable-http-proxy (npm), for the smoke suite's tests against a real JupyterHub"
proxy_dir="$HOME/.cache/binder-deploy/npm"
if [ ! -x "$proxy_dir/node_modules/.bin/configurable-http-proxy" ]; then
  npm install --silent --no-audit --no-fund --prefix "$proxy_dir" configurable-http-proxy@5.3.0 >/dev/null
fi

# Where PYTHONDONTWRITEBYTECODE is set (container images often set it), Python would
# compile every module of the deploy package again at each task's start; compiled once
# here, each `invoke` starts about 0.1 s sooner. A module edited since is compiled afresh.
step "Byte-compiling the deploy package"
python3 -m compileall -q tasks sandbox tasks.py >/dev/null

step "Pinned cluster tools (config/tools.yaml), built once and cached"
python3 -m invoke cluster.build

printf '==> set-up done in %ss\n' "$(( $(date +%s) - started ))"
