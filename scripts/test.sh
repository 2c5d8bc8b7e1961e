#!/usr/bin/env bash
# The test command (README, and CI via .ci/run): lint, the layering contracts (pyproject's [tool.importlinter]),
# then the whole pytest suite, QGIS tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=offscreen
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
