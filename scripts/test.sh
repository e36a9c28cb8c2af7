#!/usr/bin/env bash
# The project's checks: lint, then the whole test suite (real Flower processes included).
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no test: that is a failure here, never green.
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
