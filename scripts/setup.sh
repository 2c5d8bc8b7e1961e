#!/usr/bin/env bash
# Set up everything on a fresh Debian 12 machine: QGIS (plugin + its tests) and a virtualenv that sees QGIS's
# Python *and* has torch, rasterio & co. (../shared/notes/qgis-headless.md: --system-site-packages venv from
# /usr/bin/python3, numpy<2, never pip-install PyQt5 or GDAL into it). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PKGS=(qgis python3-qgis qgis-providers python3-venv xvfb xauth)
if ! dpkg -s "${APT_PKGS[@]}" >/dev/null 2>&1; then
  echo "== installing QGIS and friends from Debian (about 2 minutes)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PKGS[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv (system site packages visible, for QGIS's Python bindings)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

echo "== installing Python packages (the masks extra: the trained cloud detector, ~165 MB)"
# torch first and pinned: 2.13.0 is the CPU wheel available locally; a later unpinned resolve would pull CUDA.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q 'numpy<2' -e '.[report,train,scale,dataset,masks,dev,cpu]' pytest-qgis
echo "== setup done: activate with '. .venv/bin/activate'"
