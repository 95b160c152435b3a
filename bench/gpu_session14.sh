#!/usr/bin/env bash
# GPU session 14 (bench/NOTES.md, attempt 14; prepared, not yet run), ONE H100 (nvidia-h100-x1), ~20 min:
# the convolution_backward layout wrapper (bench variant fast-clbw) and the sampling re-measurement lost in attempt 13.
#   1. conv_layouts.py with --cl-backward: cuDNN's copies in the compiled backward (attempt 13: ~29 without it)
#   2. MNIST config on Fashion-MNIST, 600 steps after a discarded warm-up run: fast, fast-clbw, fast-cdt
#   3. sampling, CIFAR-10 config, batch 500: plain, fast (with tuning), fast-notune
#   R=runs/s14 bash bench/gpu_session14.sh     (from the repo root; needs .data/fashion-mnist)
# Poll with back-to-back calls (the machine goes back 30 s after a call), e.g. `sleep 240; cat $R/pipeline.log`;
# wait for $R/all.done, never for a pgrep of a string in the polling command itself.
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session14}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/conv_layouts.py --cl-backward > $R/conv-layouts.log 2>&1
log "1 conv layouts done (exit $?)"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only train --mnist-root $MNIST_ROOT \
    --modes fast,fast-clbw,fast-cdt --mnist-steps 600 > $R/bench-mnist.log 2>&1
log "2 bench mnist done (exit $?)"
python bench/bench.py --out $R/bench-sample.json --configs cifar10 --only matmul,sample \
    --sample-modes plain,fast,fast-notune > $R/bench-sample.log 2>&1
log "3 bench sample done (exit $?)"
touch $R/all.done
