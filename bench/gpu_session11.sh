#!/usr/bin/env bash
# GPU session 11 (bench/NOTES.md, attempt 11), ONE H100 (nvidia-h100-x1), one stage at a time (~30 min): the bf16
# weight copy (train.bf16_weights) and the single-GEMM embedding projections (UNet.project_embedding).
#   1. MNIST config on Fashion-MNIST, 2000 steps: plain, fast (loss curves, bf16 sampling agreement)
#   2. MNIST variants, 600 steps: fast, fast-nobf16w, fast-perblock, fast-a10 (attempt 10's fast)
#   3. sampling, 1000-step chain at batch 500: plain, fast, fast-perblock, fast-cdt
#   4. CIFAR-10 config training, 300 steps: plain, fast, fast-nobf16w
#   5. profile of the MNIST fast step with the bf16 copy (kernels.tsv)
#   6. end to end: train_ddpm.py fast + bf16 weights 20 steps, resume to 30; sample_ddpm.py --compile
#   R=runs/s11 bash bench/gpu_session11.sh     (from the repo root; needs .data/fashion-mnist)
set -u
export PYTHONUNBUFFERED=1
R=${R:-runs/session11}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
python bench/bench.py --out $R/bench-mnist.json --configs mnist --only matmul,train,agree --mnist-root $MNIST_ROOT \
    --modes plain,fast --mnist-steps 2000 > $R/bench-mnist.log 2>&1
log "1 bench mnist done (exit $?)"
python bench/bench.py --out $R/bench-mnist-var.json --configs mnist --only train --mnist-root $MNIST_ROOT \
    --modes fast,fast-nobf16w,fast-perblock,fast-a10 --mnist-steps 600 > $R/bench-mnist-var.log 2>&1
log "2 bench mnist variants done (exit $?)"
python bench/bench.py --out $R/bench-sample.json --configs cifar10 --only sample \
    --sample-modes plain,fast,fast-perblock,fast-cdt > $R/bench-sample.log 2>&1
log "3 bench sample done (exit $?)"
python bench/bench.py --out $R/bench-cifar.json --configs cifar10 --modes plain,fast,fast-nobf16w \
    --only train --train-steps 300 > $R/bench-cifar.log 2>&1
log "4 bench cifar done (exit $?)"
python bench/profile_step.py --config configs/ddpm_mnist.yaml --mode fast --bf16-weights --out $R/prof-mnist \
    > $R/prof-mnist.log 2>&1
log "5 profile done (exit $?)"
E=$R/e2e
F="--data.on_gpu true --train.mixed_precision bf16 --train.compile true --train.compile_mode reduce-overhead"
F="$F --train.bf16_weights true --train.n_samples 0 --train.print_freq 10 --train.save_freq 10"
python train_ddpm.py -c configs/ddpm_mnist.yaml -e $E --data.root $MNIST_ROOT --train.n_steps 20 $F > $R/e2e-train.log 2>&1
echo "exit $?" >> $R/e2e-train.log
python train_ddpm.py -c configs/ddpm_mnist.yaml -e $E --data.root $MNIST_ROOT --train.n_steps 30 $F \
    --train.resume latest >> $R/e2e-train.log 2>&1
echo "exit $?" >> $R/e2e-train.log
s=$(date +%s.%N)
accelerate launch --num_processes 1 --mixed_precision bf16 sample_ddpm.py -c configs/ddpm_mnist.yaml \
    --weights $E/ckpt/step0000030 --n_samples 2000 --micro_batch 500 --save_dir $E/samples \
    --compile reduce-overhead > $R/e2e-sample.log 2>&1
echo "exit $? wall $(echo "$(date +%s.%N) - $s" | bc) s, $(ls $E/samples | grep -c png) png" >> $R/e2e-sample.log
log "6 e2e done"
rm -rf $E/samples $E/ckpt
touch $R/all.done
