#!/usr/bin/env bash
# GPU session 15 (bench/NOTES.md, attempt 15; prepared, not yet run), ONE H100 (nvidia-h100-x1), ~16 min: the MNIST
# headline again, with the GPU's clocks and the host's load logged beside it (attempt 14's MNIST stage was disturbed:
# its 50-step windows ranged 48-90 steps/s, cause unrecorded), then a profile of the current fast step.
#   1. MNIST config on Fashion-MNIST, 2000 steps: plain, fast, fast-cdt, loss and bf16 agreement
#   2. profile_step.py, MNIST fast step (the new kernel budget after models/conv_backward_layout.py)
#   R=runs/s15 bash bench/gpu_session15.sh     (from the repo root; needs .data/fashion-mnist)
# Poll with back-to-back calls (the machine goes back 30 s after a call), copying $R to $OUT in every poll (a tar);
# wait for $R/all.done, never for a pgrep of a string in the polling command itself.
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session15}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> $R/pipeline.log
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,clocks_throttle_reasons.active \
    --format=csv -lms 1000 > $R/gpu-monitor.csv 2>&1 &
GPU_MON=$!
(while true; do echo "$(date +%T) $(cat /proc/loadavg) $(grep '^cpu ' /proc/stat)"; sleep 2; done) > $R/host-monitor.log &
HOST_MON=$!
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,fast,fast-cdt > $R/bench-mnist.log 2>&1
log "1 bench mnist done (exit $?)"
python bench/profile_step.py --config configs/ddpm_mnist.yaml --mode fast --bf16-weights --out $R/prof-mnist \
    > $R/prof-mnist.log 2>&1
gzip -f $R/prof-mnist/trace.json
log "2 profile done (exit $?)"
kill $GPU_MON $HOST_MON
touch $R/all.done
