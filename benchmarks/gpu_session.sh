#!/usr/bin/env bash
# Prepared runs for a session lent a GPU (the device tool): GPU correctness first, then the speed targets.
#
# Why a script: device time is short (minutes, all tries together) and every start costs; this runs the CUDA
# tests (tests/test_gpu.py, plus the DCN tests that compare with torchvision, which imports there) and the three
# benchmarks of issue 7 in a fixed order, each result in its own file under $OUT, so whatever finishes before a
# timeout comes back. One device command may run 10 minutes, so use two calls:
#   STAGES="tests deform model" bash benchmarks/gpu_session.sh      (≤ 8.5 min of timeouts, usually ~3)
#   STAGES="inference" bash benchmarks/gpu_session.sh               (8192² aligncr, fast + naive, ≤ 7 min)
#
# Prepare here, before the first call (both folders are git-ignored and travel with `carry`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl "rasterio==1.4.3" "affine<3" cligj click-plugins   # the image lacks rasterio (device README);
#     affine<3 as pyproject pins it. rasterio 1.4.3 because its wheel is 22 MB and 1.5's is 39 MB: the tracked
#     tree is 32 MB and everything that travels must stay under 64 MiB, so 1.5 does not fit beside it.
#   mkdir -p .shared-data && cp -r ../shared/data/m3rcr_sample .shared-data/   # 1.7 MB, for the real-data test
#   git ls-files -z | xargs -0 du -cb | tail -1; du -sb .whl .shared-data      # the sum must stay under 67108864
# and call the device tool with carry [".whl", ".shared-data"].
set -u
OUT=${OUT:-/tmp/aligncr-gpu}
mkdir -p "$OUT"
rm -f "$OUT/status.txt"
export QT_QPA_PLATFORM=offscreen
STAGES=${STAGES:-"tests deform model inference"}
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed" | tee "$OUT/error.txt"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, torchvision; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"; \
  nproc; } >"$OUT/device.txt" 2>&1

if [ -d .shared-data ]; then export ALIGNCR_SHARED_DATA=$PWD/.shared-data; fi

stage() { [[ " $STAGES " == *" $1 "* ]]; }

if stage tests; then
    timeout 180 $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_deform_conv.py tests/test_accel.py \
        -s >"$OUT/tests.txt" 2>&1
    echo "tests rc=$?" >>"$OUT/status.txt"
fi
if stage deform; then
    timeout 90 $PY benchmarks/bench_deform.py --device cuda --batch 4 >"$OUT/deform.jsonl" 2>"$OUT/deform.err"
    echo "deform rc=$?" >>"$OUT/status.txt"
fi
if stage model; then
    timeout 240 $PY benchmarks/bench_model.py --model aligncr --device cuda --sizes 160 304 --batches 1 16 \
        --dtypes fp32 bf16 fp16 >"$OUT/model.jsonl" 2>"$OUT/model.err"
    timeout 60 $PY benchmarks/bench_model.py --model aligncr --device cuda --sizes 304 --batches 16 --dtypes bf16 \
        --no-tf32 >>"$OUT/model.jsonl" 2>>"$OUT/model.err"   # the TF32 ablation (fp32 deformable convs)
    echo "model rc=$?" >>"$OUT/status.txt"
fi
if stage inference; then
    timeout 420 $PY benchmarks/bench_inference.py --size 8192 --model aligncr --device cuda --batch 16 \
        --workdir /tmp >"$OUT/inference.jsonl" 2>"$OUT/inference.err"
    echo "inference rc=$?" >>"$OUT/status.txt"
fi
cat "$OUT/status.txt"
