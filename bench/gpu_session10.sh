#!/usr/bin/env bash
# RECORD: ran as attempt 10 at commit fc013cf, when train_ddpm.py stored conv weights channels_last (its fast) and
# fast-convnchw was the variant without; that was reverted after this run (bench/NOTES.md).
# GPU session 10 (bench/NOTES.md, attempt 10), ONE H100 (nvidia-h100-x1), one stage at a time (~17 min): the final
# fast setting (conv weights channels_last in training, freezing in sampling) against plain in one run.
#   1. sampling, 1000-step chain at batch 500: plain, fast, fast-cdt
#   2. MNIST config on Fashion-MNIST, 2000 steps: plain, fast, fast-convnchw (loss curves, bf16 sampling agreement)
#   3. CIFAR-10 config training, 300 steps: plain, fast, fast-convnchw
#   4. sample_ddpm.py end to end with --compile reduce-overhead under bf16 (freezing on), timed
#   R=runs/s10 bash bench/gpu_session10.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session10}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/bench.py --out $R/bench-sample.json --configs cifar10 --only matmul,sample \
    --sample-modes plain,fast,fast-cdt > $R/bench-sample.log 2>&1
log "1 bench sample done (exit $?)"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,fast,fast-convnchw --mnist-steps 2000 > $R/bench-mnist.log 2>&1
log "2 bench mnist done (exit $?)"
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes plain,fast,fast-convnchw \
    --only train --train-steps 300 > $R/bench-cifar.log 2>&1
log "3 bench cifar done (exit $?)"
E=$R/e2e
python train_ddpm.py -c configs/ddpm_mnist.yaml -e $E --data.root $MNIST_ROOT --train.n_steps 1 --train.n_samples 0 \
    > $R/e2e-train.log 2>&1
s=$(date +%s.%N)
accelerate launch --num_processes 1 --mixed_precision bf16 sample_ddpm.py -c configs/ddpm_mnist.yaml \
    --weights $E/ckpt/step0000001 --n_samples 2000 --micro_batch 500 --save_dir $E/samples \
    --compile reduce-overhead > $R/e2e-sample.log 2>&1
echo "exit $? wall $(echo "$(date +%s.%N) - $s" | bc) s, $(ls $E/samples | grep -c png) png" >> $R/e2e-sample.log
log "4 e2e sample done"
rm -rf $E/samples $E/ckpt
touch $R/all.done
