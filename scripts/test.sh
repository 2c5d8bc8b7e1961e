#!/usr/bin/env bash
# The test command (README, and CI via .ci/run): lint, the layering contracts (pyproject's [tool.importlinter]),
# then the whole pytest suite, QGIS tests included, in two worker processes (pytest-xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=offscreen
.venv/bin/ruff check .
.venv/bin/lint-imports
# one pytest worker per core of CI's two (a file's tests stay together: its module fixtures are built once);
# ALIGNCR_TEST_WORKERS=0 runs them in this process
.venv/bin/python -m pytest -q -n "${ALIGNCR_TEST_WORKERS:-2}" --dist loadfile "$@"
