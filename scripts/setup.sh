#!/usr/bin/env bash
# Create .venv (Python 3.11) and install fedunlearn with its pinned stack.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch/torchvision first, pinned: a bare requirement could pull a newer multi-GB build.
.venv/bin/pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
