#!/usr/bin/env bash
# Next GPU session (bench/NOTES.md, "Next session's GPU plan"), for ONE H100 (nvidia-h100-x1): every stage runs
# alone on the machine, one after another, because another process's compile skews the short MNIST step
# (attempt 6). About 13 minutes: start it in the background and collect $R in two or three calls.
#   1. CIFAR-10 config: plain vs fast vs fast-nolayout training, plain vs fast vs fast-gngroup sampling
#   2. MNIST config on Fashion-MNIST: plain vs fast, 2000 steps (loss curves, bf16 sampling agreement)
#   3. kernel profiles of both fast training steps and the fast sampling forward; inductor's generated code for
#      the MNIST training step and the sampling forward (TORCH_LOGS=output_code) and the MNIST step's trace, to
#      read offline where the memory-bound time goes
#   4. bench/groupnorm.py, both settings, without CUDA graphs
#   R=runs/s7 bash bench/gpu_session7.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session7}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes plain,fast,fast-nolayout \
    --sample-modes plain,fast,fast-gngroup --only matmul,train,sample --train-steps 300 > $R/bench-cifar.log 2>&1
log "bench cifar done (exit $?)"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --modes plain,fast --only matmul,train,agree \
    --mnist-root $MNIST_ROOT --mnist-steps 2000 > $R/bench-mnist.log 2>&1
log "bench mnist done (exit $?)"
TORCH_LOGS=output_code python bench/profile_step.py --config configs/ddpm_mnist.yaml --out $R/prof-train-mnist \
    > $R/prof-train-mnist.log 2> $R/output-code-train-mnist.txt
log "profile mnist done (exit $?)"
python bench/profile_step.py --out $R/prof-train-cifar > $R/prof-train-cifar.log 2>&1
log "profile cifar done (exit $?)"
TORCH_LOGS=output_code python bench/profile_step.py --what sample --batch 500 --out $R/prof-sample-cifar \
    > $R/prof-sample-cifar.log 2> $R/output-code-sample-cifar.txt
log "profile sample done (exit $?)"
gzip -f $R/prof-train-mnist/trace.json          # the MNIST step's timeline, to place its copies and gaps offline
rm -f $R/prof-train-cifar/trace.json $R/prof-sample-cifar/trace.json
gzip -f $R/output-code-*.txt
python bench/groupnorm.py --out $R/groupnorm.json > $R/groupnorm.log 2>&1
log "groupnorm done (exit $?)"
touch $R/all.done
