#!/usr/bin/env bash
# Lints, renders and validates the Helm chart (helm/hubcast) and checks that k8s/ is its default render.
#
#   scripts/helm-check.sh            # what `make helm-check` runs; exits non-zero on any problem
#   scripts/helm-check.sh --update   # also rewrites k8s/hubcast.yaml from the chart
#
# Everything comes from PyPI into a virtual environment, .venv-helm/ (HELM_CHECK_VENV to move it):
# helm-python-sdk, which bundles Helm's Go SDK as a native library (no helm binary, no cluster), and
# kubernetes-validate, which carries the Kubernetes API schemas. The checks are in tests/helm/helm_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${HELM_CHECK_VENV:-.venv-helm}"
requirements=tests/helm/requirements.txt

# A Python of 3.10 or newer (helm-python-sdk's floor) with a working venv module.
python=""
for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10 /usr/bin/python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 \
    && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    python="$candidate"
    break
  fi
done
need_apt=()
[ -n "$python" ] || need_apt+=(python3)
if [ -n "$python" ] && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "helm-check: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
    python="${python:-python3}"
  else
    echo "helm-check: needs Python >= 3.10 with venv: apt-get install ${need_apt[*]} (as root)" >&2
    exit 2
  fi
fi

# (Re)create the venv when it is missing, broken, or its requirements changed.
stamp="$venv/.requirements.sha256"
wanted="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] \
  || ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate' >/dev/null 2>&1; then
  echo "helm-check: setting up $venv (pip install -r $requirements)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
  echo "$wanted" > "$stamp"
fi

exec "$venv/bin/python" tests/helm/helm_check.py "$@"
