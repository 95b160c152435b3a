#!/usr/bin/env bash
# GPU session 15 (bench/NOTES.md, attempt 15; prepared, not yet run), ONE H100 (nvidia-h100-x1), ~20 min: the flat
# parameter buffer (train.flat_params, now in fast) against attempt 14's fast, then the MNIST headline again, with the
# GPU's clocks and the host's load logged beside it (attempt 14's MNIST stage was disturbed: its 50-step windows
# ranged 48-90 steps/s, cause unrecorded), a profile of the new fast step, and CIFAR-10 fast.
#   1. MNIST config on Fashion-MNIST, 2000 steps: plain, fast, fast-cdt, loss and bf16 agreement
#   2. MNIST 600 steps: fast-noflat, fast, twice (two bench calls, each after a discarded warm-up run)
#   3. profile_step.py, MNIST fast step (with the flat buffer)
#   4. CIFAR-10 600 steps: fast
#   R=runs/s15 bash bench/gpu_session15.sh     (from the repo root; needs .data/fashion-mnist)
# Poll with back-to-back calls (the machine goes back 30 s after a call), copying $R to $OUT in every poll (a tar);
# wait for $R/all.done, never for a pgrep of a string in the polling command itself.
R=${R:-runs/session15}
source bench/session_setup.sh
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,fast,fast-cdt > $R/bench-mnist.log 2>&1
log "1 bench mnist done (exit $?)"
for k in 1 2; do
    python bench/bench.py --out $R/bench-flat$k.json --configs mnist --only train --mnist-root $MNIST_ROOT \
        --mnist-steps 600 --modes fast-noflat,fast > $R/bench-flat$k.log 2>&1
    log "2.$k bench flat done (exit $?)"
done
python bench/profile_step.py --config configs/ddpm_mnist.yaml --mode fast --bf16-weights --flat-params \
    --out $R/prof-mnist > $R/prof-mnist.log 2>&1
log "3 profile done (exit $?)"
gzip -f $R/prof-mnist/trace.json
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --only train --modes fast --warmup-run 0 \
    > $R/bench-cifar.log 2>&1
log "4 bench cifar done (exit $?)"
finish
