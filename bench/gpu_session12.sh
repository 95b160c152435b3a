#!/usr/bin/env bash
# GPU session 12 (bench/NOTES.md, attempt 12), ONE H100 (nvidia-h100-x1), one stage at a time (~15 min): the bf16
# weight copy after the GroupNorm fix (compiled GroupNorm traces nn.GroupNorm whatever the traced layout).
#   1. MNIST config on Fashion-MNIST, 2000 steps: plain, fast (loss curves, bf16 sampling agreement)
#   2. MNIST variants, 600 steps: fast, fast-a10, fast-bf16nchw, fast-nobf16w
#   3. CIFAR-10 config training, 300 steps: plain, fast, fast-a10, fast-bf16nchw
#   4. profile of the MNIST fast step (kernels.tsv, trace)
#   R=runs/s12 bash bench/gpu_session12.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session12}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,fast --mnist-steps 2000 > $R/bench-mnist.log 2>&1
log "1 bench mnist done (exit $?)"
python bench/bench.py --out $R/bench-mnist-var.json --configs mnist --only train --mnist-root $MNIST_ROOT \
    --modes fast,fast-a10,fast-bf16nchw,fast-nobf16w --mnist-steps 600 > $R/bench-mnist-var.log 2>&1
log "2 bench mnist variants done (exit $?)"
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes plain,fast,fast-a10,fast-bf16nchw \
    --only train --train-steps 300 > $R/bench-cifar.log 2>&1
log "3 bench cifar done (exit $?)"
python bench/profile_step.py --config configs/ddpm_mnist.yaml --mode fast --bf16-weights --out $R/prof-mnist \
    > $R/prof-mnist.log 2>&1
gzip -f $R/prof-mnist/trace.json
log "4 profile done (exit $?)"
touch $R/all.done
