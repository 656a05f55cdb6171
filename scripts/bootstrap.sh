#!/usr/bin/env bash
# Create .venv (if needed) and install erase into it from this checkout.
#   bash scripts/bootstrap.sh            # the toolkit and the app
#   bash scripts/bootstrap.sh --test     # + test tools, Ray (SISA's ray executor is tested) and
#                                        #   Debian's chromium for the browser test
# torch is installed first at the CPU-build pin (torch==2.13.0); on a GPU machine install the
# CUDA build of your choice before running this, and the pin is skipped when torch is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  python -m pip install -q -e ".[test,ray]"
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  fi
else
  python -m pip install -q -e .
fi
echo "erase installed in $(pwd)/.venv"
