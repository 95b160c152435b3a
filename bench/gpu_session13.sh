#!/usr/bin/env bash
# Ran at commit de972a8 (the fast-cupd variants and train.compile_update were removed after it: bench/NOTES.md).
# GPU session 13 (bench/NOTES.md, attempt 13), ONE H100 (nvidia-h100-x1), part 1 of 2 (~15 min): what the compiled
# weight update (train.compile_update) and coordinate-descent tuning (train.compile_tuning) are worth.
#   1. update_step.py: the weight update eager / compiled / compiled + CUDA graph, MNIST config
#   2. MNIST config on Fashion-MNIST, 600 steps (after a discarded warm-up run): fast, fast-cupd, fast-cupd-ro,
#      fast-cdt
#   3. conv_layouts.py: cuDNN's operand copies in the compiled backward, MNIST config
#   R=runs/s13 bash bench/gpu_session13.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session13}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/update_step.py --config configs/ddpm_mnist.yaml > $R/update-step.log 2>&1
log "1 update step done (exit $?)"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only train --mnist-root $MNIST_ROOT \
    --modes fast,fast-cupd,fast-cupd-ro,fast-cdt --mnist-steps 600 > $R/bench-mnist.log 2>&1
log "2 bench mnist done (exit $?)"
python bench/conv_layouts.py > $R/conv-layouts.log 2>&1
log "3 conv layouts done (exit $?)"
touch $R/all.done
