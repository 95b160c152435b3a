#!/usr/bin/env bash
# Ran at commit b7eb97e (attempt 6); bench modes were renamed after it (bench/NOTES.md, attempt 6), so as
# written this script no longer runs against the current bench.py. Kept as the record of what ran.
# Follow-up to gpu_session6.sh on the same kind of host (bench/NOTES.md, attempt 6):
#   GPU 0: training-step profiles: CIFAR-10 fast-layout (per-group norm statistics, to set beside attempt 6's
#          fast-layout-gnchan profile), MNIST fast-layout and fast-layout-gnchan (why layout alone is slower
#          there); then bench/groupnorm.py's training setting
#   GPU 1: sampling fast vs fast-gnchan vs fast-gnchan-cdt
#   R=runs/s6b bash bench/gpu_session6b.sh
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session6b}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
(
    export CUDA_VISIBLE_DEVICES=0
    python bench/profile_step.py --force-layout-opt --out $R/prof-train-cifar-layout > $R/prof-train-cifar-layout.log 2>&1
    log "profile cifar layout done (exit $?)"
    for stats in per_group per_channel; do
        python bench/profile_step.py --config configs/ddpm_mnist.yaml --force-layout-opt --norm-stats $stats \
            --out $R/prof-train-mnist-layout-$stats > $R/prof-train-mnist-layout-$stats.log 2>&1
        log "profile mnist layout $stats done (exit $?)"
    done
    rm -f $R/prof-*/trace.json
    python bench/groupnorm.py --settings train --out $R/groupnorm-train.json > $R/groupnorm-train.log 2>&1
    log "groupnorm train done (exit $?)"
) &
(
    CUDA_VISIBLE_DEVICES=1 python bench/bench.py --out $R/bench-sample.json --configs cifar10 \
        --sample-modes fast,fast-gnchan,fast-gnchan-cdt --only sample > $R/bench-sample.log 2>&1
    log "bench sample done (exit $?)"
) &
wait
touch $R/all.done
