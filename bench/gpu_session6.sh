#!/usr/bin/env bash
# Ran at commit b7eb97e (attempt 6); bench modes were renamed after it (bench/NOTES.md, attempt 6), so as
# written this script no longer runs against the current bench.py. Kept as the record of what ran.
# Next GPU session (bench/NOTES.md, "Next session's GPU plan", item 0), for a two-GPU host:
#   GPU 0: CIFAR-10 fast vs fast-layout (train.compile_force_layout_opt) vs fast-gnchan (GroupNorm statistics per
#          channel in the compiled graph) vs both vs fast-cdt (coordinate-descent tuning), training and sampling;
#          then the kernel profiles of the fast-layout-gnchan training step and the gnchan sampling forward, and
#          bench/groupnorm.py (GroupNorm + SiLU alone against memory bandwidth)
#   GPU 1: MNIST config plain vs fast vs fast-layout vs fast-layout-gnchan on Fashion-MNIST (loss curves)
#   then, with SCALING=1: bench/scaling.py --only train (adds the 1-GPU batch-64 point that explains the 2-GPU
#          fixed-global-batch result)
#   R=runs/s6 bash bench/gpu_session6.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session6}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
(
    CUDA_VISIBLE_DEVICES=0 python bench/bench.py --out $R/bench-cifar.json --configs cifar10 \
        --modes fast,fast-layout,fast-gnchan,fast-layout-gnchan,fast-cdt --sample-modes fast,fast-gnchan,fast-cdt \
        --only matmul,train,sample --train-steps 300 > $R/bench-cifar.log 2>&1
    log "bench cifar done (exit $?)"
    CUDA_VISIBLE_DEVICES=0 python bench/profile_step.py --force-layout-opt --norm-stats per_channel \
        --out $R/prof-train-cifar-layout-gnchan > $R/prof-train-cifar-layout-gnchan.log 2>&1
    log "profile train done (exit $?)"
    CUDA_VISIBLE_DEVICES=0 python bench/profile_step.py --what sample --batch 500 --norm-stats per_channel \
        --out $R/prof-sample-cifar-gnchan > $R/prof-sample-cifar-gnchan.log 2>&1
    log "profile sample done (exit $?)"
    rm -f $R/prof-*/trace.json
    CUDA_VISIBLE_DEVICES=0 python bench/groupnorm.py --out $R/groupnorm.json > $R/groupnorm.log 2>&1
    log "groupnorm done (exit $?)"
) &
(
    CUDA_VISIBLE_DEVICES=1 python bench/bench.py --out $R/bench-mnist.json --configs mnist \
        --modes plain,fast,fast-layout,fast-layout-gnchan --only matmul,train,agree --mnist-root $MNIST_ROOT \
        --mnist-steps 2000 > $R/bench-mnist.log 2>&1
    log "bench mnist done (exit $?)"
) &
wait
if [ "${SCALING:-0}" = 1 ]; then
    python bench/scaling.py --gpus 1,2 --only train --steps 200 --out $R/scaling.json > $R/scaling.log 2>&1
    log "scaling done (exit $?)"
fi
touch $R/all.done
