#!/usr/bin/env bash
# RECORD: ran as attempt 8 at commit 95b2587; mode names as of then (fast-freeze is now sampling fast; see bench/NOTES.md).
# GPU session 8 (bench/NOTES.md, attempt 8), for ONE H100 (nvidia-h100-x1), one stage at a time, in order of what
# the open targets need most (~30 min; start it in the background with setsid and collect $R in several calls):
#   1. sampling, 1000-step chain at batch 500: plain, fast (per-channel statistics), fast-gnchunk (per-chunk
#      statistics), fast-freeze (weights folded as constants), fast-gngroup
#   2. kernel profiles of the sampling forward, per-channel and per-chunk, with every kernel's time (kernels.tsv)
#      and inductor's generated code, to match kernel times with what each kernel reads and writes
#   3. bench/groupnorm.py, sampling setting, the three formulations
#   4. MNIST config on Fashion-MNIST, 2000 steps: plain, fast, fast-gnchunk, fast-cl (loss curves, bf16 sampling)
#   5. kernel profile, generated code and trace of the MNIST training step
#   6. CIFAR-10 config training: plain, fast, fast-gnchunk; 7. its kernel profile
#   R=runs/s8 bash bench/gpu_session8.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session8}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/bench.py --out $R/bench-sample.json --configs cifar10 --only matmul,sample \
    --sample-modes plain,fast,fast-gnchunk,fast-freeze,fast-gngroup > $R/bench-sample.log 2>&1
log "1 bench sample done (exit $?)"
for s in per_channel per_chunk; do
    TORCH_LOGS=output_code python bench/profile_step.py --what sample --batch 500 --norm-stats $s \
        --out $R/prof-sample-$s > $R/prof-sample-$s.log 2> $R/code-sample-$s.txt
    log "2 profile sample $s done (exit $?)"
    rm -f $R/prof-sample-$s/trace.json
done
python bench/groupnorm.py --settings sample --out $R/groupnorm-sample.json > $R/groupnorm-sample.log 2>&1
log "3 groupnorm sample done (exit $?)"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --modes plain,fast,fast-gnchunk,fast-cl \
    --only matmul,train,agree --mnist-root $MNIST_ROOT --mnist-steps 2000 > $R/bench-mnist.log 2>&1
log "4 bench mnist done (exit $?)"
TORCH_LOGS=output_code python bench/profile_step.py --config configs/ddpm_mnist.yaml --out $R/prof-train-mnist \
    > $R/prof-train-mnist.log 2> $R/code-train-mnist.txt
log "5 profile mnist done (exit $?)"
gzip -f $R/prof-train-mnist/trace.json
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes plain,fast,fast-gnchunk \
    --only train --train-steps 300 > $R/bench-cifar.log 2>&1
log "6 bench cifar done (exit $?)"
python bench/profile_step.py --out $R/prof-train-cifar > $R/prof-train-cifar.log 2>&1
log "7 profile cifar done (exit $?)"
rm -f $R/prof-train-cifar/trace.json
touch $R/all.done
