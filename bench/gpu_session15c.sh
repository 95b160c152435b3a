#!/usr/bin/env bash
# GPU session 15c (bench/NOTES.md, attempt 15c), ONE H100 (nvidia-h100-x1), ~13 min: with the flat buffer's
# parameters 16-byte aligned (static inputs of the CUDA graphs again), the MNIST headline and a profile.
#   1. MNIST config on Fashion-MNIST, 2000 steps: plain, fast, fast-cdt, loss and bf16 agreement
#   2. profile_step.py, MNIST fast step
#   R=runs/s15c bash bench/gpu_session15c.sh     (from the repo root; needs .data/fashion-mnist)
# Poll with back-to-back calls (the machine goes back 30 s after a call), copying $R to $OUT in every poll (a tar);
# wait for $R/all.done, never for a pgrep of a string in the polling command itself.
R=${R:-runs/session15c}
source bench/session_setup.sh
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,fast,fast-cdt > $R/bench-mnist.log 2>&1
log "1 bench mnist done (exit $?)"
python bench/profile_step.py --config configs/ddpm_mnist.yaml --mode fast --bf16-weights --flat-params \
    --out $R/prof-mnist > $R/prof-mnist.log 2>&1
log "2 profile done (exit $?)"
gzip -f $R/prof-mnist/trace.json
finish
