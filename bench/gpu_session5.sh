#!/usr/bin/env bash
# Session 4, second machine (bench/NOTES.md, attempt 5): after the 4-D attention fix, plain vs fast again for both
# configs in one run each, one per GPU, then the sampling forward's kernel profile.
#   R=runs/s5 bash bench/gpu_session5.sh     (from the repo root; needs .data/fashion-mnist for the MNIST half)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session5}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
(
    CUDA_VISIBLE_DEVICES=0 python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes plain,fast \
        --sample-modes plain,fast --only matmul,train,sample --train-steps 300 > $R/bench-cifar.log 2>&1
    log "bench cifar done (exit $?)"
) &
(
    CUDA_VISIBLE_DEVICES=1 python bench/bench.py --out $R/bench-mnist.json --configs mnist --modes plain,fast \
        --only matmul,train,agree --mnist-root $MNIST_ROOT --mnist-steps 2000 > $R/bench-mnist.log 2>&1
    log "bench mnist done (exit $?)"
    CUDA_VISIBLE_DEVICES=1 python bench/profile_step.py --what sample --batch 500 --compile-mode default \
        --out $R/prof-sample-cifar-default > $R/prof-sample-cifar-default.log 2>&1
    rm -f $R/prof-sample-cifar-default/trace.json; log "profile done (exit $?)"
) &
wait
touch $R/all.done
