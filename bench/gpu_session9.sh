#!/usr/bin/env bash
# RECORD: ran as attempt 9 at commit cb08141; mode names as of then (fast-freeze is now sampling fast, fast-freeze-cdt fast-cdt;
# fast-combo-convcl is gone; see bench/NOTES.md).
# GPU session 9 (bench/NOTES.md, attempt 9), for ONE H100 (nvidia-h100-x1), one stage at a time (~25 min; start it
# in the background with setsid and collect $R in several calls):
#   1. sampling, 1000-step chain at batch 500: plain, fast, fast-oldmodel (attempt 7's attention and upsampling),
#      fast-freeze, fast-freeze-cdt
#   2. MNIST config on Fashion-MNIST, 2000 steps: plain, fast, fast-oldmodel, fast-combo, fast-convcl,
#      fast-combo-convcl (loss curves of each against plain, bf16 sampling agreement)
#   3. kernel profile and trace of the fast MNIST step
#   4. CIFAR-10 config training, 300 steps: fast, fast-oldmodel, fast-combo-convcl; 5. its kernel profile
#   R=runs/s9 bash bench/gpu_session9.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session9}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/bench.py --out $R/bench-sample.json --configs cifar10 --only matmul,sample \
    --sample-modes plain,fast,fast-oldmodel,fast-freeze,fast-freeze-cdt > $R/bench-sample.log 2>&1
log "1 bench sample done (exit $?)"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,fast,fast-oldmodel,fast-combo,fast-convcl,fast-combo-convcl --mnist-steps 2000 > $R/bench-mnist.log 2>&1
log "2 bench mnist done (exit $?)"
python bench/profile_step.py --config configs/ddpm_mnist.yaml --out $R/prof-train-mnist > $R/prof-train-mnist.log 2>&1
log "3 profile mnist done (exit $?)"
gzip -f $R/prof-train-mnist/trace.json
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes fast,fast-oldmodel,fast-combo-convcl \
    --only train --train-steps 300 > $R/bench-cifar.log 2>&1
log "4 bench cifar done (exit $?)"
python bench/profile_step.py --out $R/prof-train-cifar > $R/prof-train-cifar.log 2>&1
log "5 profile cifar done (exit $?)"
rm -f $R/prof-train-cifar/trace.json
touch $R/all.done
