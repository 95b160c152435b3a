#!/usr/bin/env bash
# GPU session 13 (bench/NOTES.md, attempt 13), ONE H100 (nvidia-h100-x1), one stage at a time (~20 min):
# the convolutions' channels_last pinning (models.unet.Conv2d) and the cost of the weight update.
#   1. conv_layouts.py on the MNIST config: cuDNN's operand copies in the backward, pin on and off
#   2. update_step.py: eager vs compiled weight update, MNIST and CIFAR-10 configs
#   3. MNIST config on Fashion-MNIST, 600 steps (after a discarded warm-up run): fast-nopin, fast, fast-cdt
#   4. profile of the MNIST fast step (kernels.tsv)
#   5. CIFAR-10 config, 300 steps: fast-nopin, fast
#   R=runs/s13 bash bench/gpu_session13.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session13}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
{ python bench/conv_layouts.py --no-pin; python bench/conv_layouts.py; } > $R/conv-layouts.log 2>&1
log "1 conv layouts done (exit $?)"
{ python bench/update_step.py --config configs/ddpm_mnist.yaml;
  python bench/update_step.py --config configs/ddpm_cifar10.yaml; } > $R/update-step.log 2>&1
log "2 update step done (exit $?)"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only train --mnist-root $MNIST_ROOT \
    --modes fast-nopin,fast,fast-cdt --mnist-steps 600 > $R/bench-mnist.log 2>&1
log "3 bench mnist done (exit $?)"
python bench/profile_step.py --config configs/ddpm_mnist.yaml --mode fast --bf16-weights --out $R/prof-mnist \
    > $R/prof-mnist.log 2>&1
log "4 profile done (exit $?)"
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes fast-nopin,fast \
    --only train --train-steps 300 > $R/bench-cifar.log 2>&1
log "5 bench cifar done (exit $?)"
touch $R/all.done
