#!/usr/bin/env bash
# GPU session 14 (bench/NOTES.md, attempt 14), ONE H100 (nvidia-h100-x1), ~22 min: the convolution_backward layout
# lowering (models/conv_backward_layout.py, now part of fast), then the headline numbers with whichever is faster.
#   1. MNIST config on Fashion-MNIST, 600 steps after a discarded warm-up run: fast-noclbw (attempt 13's fast), fast
#   2. the headline, MNIST 2000 steps: plain, fast, fast-cdt (+ train.compile_tuning), loss and bf16 agreement;
#      if stage 1 measured fast more than 1% slower than fast-noclbw, the noclbw modes instead
#   3. CIFAR-10 config training, 600 steps: plain, fast (or fast-noclbw, as in 2)
#   4. conv_layouts.py with and without the lowering (cuDNN's copies in the compiled backward)
#   5. sampling, CIFAR-10 config, batch 500: plain, fast (with tuning, the recommended command)
#   R=runs/s14 bash bench/gpu_session14.sh     (from the repo root; needs .data/fashion-mnist)
# Poll with back-to-back calls (the machine goes back 30 s after a call), e.g. `sleep 240; cat $R/pipeline.log`;
# wait for $R/all.done, never for a pgrep of a string in the polling command itself.
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session14}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/bench.py --out $R/bench-clbw.json --configs mnist --only train --mnist-root $MNIST_ROOT \
    --modes fast-noclbw,fast --mnist-steps 600 > $R/bench-clbw.log 2>&1
log "1 clbw done (exit $?)"
F=$(python -c "import json; t = json.load(open('$R/bench-clbw.json'))['train']; a, b = t['mnist/fast'], t['mnist/fast-noclbw']
print('fast' if 'error' in b or ('error' not in a and a['steps_per_s'] >= 0.99 * b['steps_per_s']) else 'fast-noclbw')" 2>> $R/pipeline.log || echo fast)
log "fast mode for the headline: $F"
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,$F,${F}-cdt > $R/bench-mnist.log 2>&1
log "2 bench mnist done (exit $?)"
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --only matmul,train --modes plain,$F > $R/bench-cifar.log 2>&1
log "3 bench cifar done (exit $?)"
python bench/conv_layouts.py > $R/conv-layouts.log 2>&1; python bench/conv_layouts.py --no-cl-backward >> $R/conv-layouts.log 2>&1
log "4 conv layouts done (exit $?)"
python bench/bench.py --out $R/bench-sample.json --configs cifar10 --only matmul,sample --sample-modes plain,fast \
    > $R/bench-sample.log 2>&1
log "5 bench sample done (exit $?)"
touch $R/all.done
