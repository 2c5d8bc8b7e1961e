#!/usr/bin/env bash
# Prepared runs for a session lent a GPU (the device tool): GPU correctness first, then the speed targets.
#
# Why a script: device time is short (minutes, all tries together) and every start costs; this runs the CUDA
# tests (tests/test_gpu.py, plus the DCN tests that compare with torchvision, which imports there) and the three
# benchmarks of issue 7 in a fixed order, each result in its own file under $OUT, so whatever finishes before a
# timeout comes back. One device command may run 10 minutes, so use two calls:
#   STAGES="tests deform model" bash benchmarks/gpu_session.sh      (≤ 8.5 min of timeouts, usually ~3)
#   STAGES="inference" bash benchmarks/gpu_session.sh               (8192² aligncr, fast + naive, ≤ 7 min)
#   STAGES="train" bash benchmarks/gpu_session.sh                   (issue 26: the residual design at paper size)
#
# The train stage trains aligncr-res's recipe (training/configs/aligncr_res.toml: its data, clouds, loss and select
# split) with the paper's network (`aligncr`, D=6, G0=96, 45.5 M parameters, the estimate as input: prior = true)
# for TRAIN_MINUTES (default 7; TRAIN_DEVICE=cpu TRAIN_BATCH=1 rehearse it here) from a training pack, and brings back
# its logs, train_log.csv and val_log.csv. val_log's margin_in is the select split's inside-cloud margin over the
# better of flat and fill (the figure checkpoints are chosen by). On that view the estimate alone scores +1.18 dB
# and the bundled one-block aligncr-res +1.27 (each measured with the loop at lr 0). The run answers one question,
# whether capacity is what the residual lacks: its weights (180 MB) cannot come back (16 MiB a file) and could not
# ship (45.5 M parameters on 2 CPU cores), so if it climbs clearly above +1.27 the next step is a residual network
# whose weights come back (lite size, ~9 MB) trained the same way, then the report split through `engine run`.
# TRAIN_MODEL=aligncr-lite trains that size instead (its weights come back). The run lives in
# /tmp/aligncr-res-MODEL: the same command on the still-warm machine resumes it. It needs no .whl:
# training from a pack needs no GDAL.
# Prepare:
#   mkdir -p .training-pack && python -m training.pack --config training/configs/aligncr_res.toml \
#     --out .training-pack/aligncr_res.npz                                      # 27 MB
# and call the device tool with carry [".training-pack"] — in a call of its own: the pack (27 MB) and the wheels
# (22 MB) do not travel together beside the 32 MB tree.
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
if stage train; then
    RUN=/tmp/aligncr-res-${TRAIN_MODEL:-aligncr}  # outlives a call on the warm machine: the same command resumes it
    resume=()
    if [ -f "$RUN/state_last.pt" ]; then resume=(--resume "$RUN/state_last.pt"); fi
    # batch 16 of 112-px crops (the recipe's crop: its smallest grounds are 120 px); validation and a checkpoint
    # every 250 steps. Stopped by SIGTERM after TRAIN_MINUTES (rc 124, the normal end): the loop finishes its step,
    # validates and checkpoints (run.max_minutes would not do: it counts the resumed run's earlier minutes too)
    timeout -s TERM -k 120 $(( ${TRAIN_MINUTES:-7} * 60 )) $PY -m training.train \
        --config training/configs/aligncr_res.toml --pack .training-pack/aligncr_res.npz \
        --device "${TRAIN_DEVICE:-cuda}" --out "$RUN" "${resume[@]}" \
        --set "model.name=\"${TRAIN_MODEL:-aligncr}\"" --set 'model.overrides={ prior = true }' \
        --set data.batch_size=${TRAIN_BATCH:-16} \
        --set data.samples_per_epoch=1600 --set data.num_workers=4 --set run.threads=0 --set run.val_every=250 \
        --set run.ckpt_every_steps=250 --set run.ckpt_every_minutes=2 >>"$OUT/train.txt" 2>&1
    echo "train rc=$?" >>"$OUT/status.txt"
    cp "$RUN/train_log.csv" "$RUN/val_log.csv" "$OUT/" 2>/dev/null
    # weights that can come back do (16 MiB a file): TRAIN_MODEL=aligncr-lite's, not the paper size's
    if [ -f "$RUN/best.safetensors" ] && [ "$(stat -c %s "$RUN/best.safetensors")" -le 16777216 ]; then
        cp "$RUN/best.safetensors" "$OUT/"
    fi
fi
if stage inference; then
    timeout 420 $PY benchmarks/bench_inference.py --size 8192 --model aligncr --device cuda --batch 16 \
        --workdir /tmp >"$OUT/inference.jsonl" 2>"$OUT/inference.err"
    echo "inference rc=$?" >>"$OUT/status.txt"
fi
cat "$OUT/status.txt"
