#!/usr/bin/env bash
# Session 4 on a two-GPU host (bench/NOTES.md, attempt 4): kernel profiles and one full benchmark in parallel,
# then 1 vs 2 GPUs.
#   GPU 0: bench/profile_step.py (training step and sampling forward, kernels by kind), then the MNIST half of
#          bench/bench.py (plain, fast, fast-cudnn; 2000 steps on real Fashion-MNIST; bf16 vs fp32 sampling)
#   GPU 1: the CIFAR-10 half of bench/bench.py (plain and fast variants, the DataLoader path, sampling)
#   both:  bench/scaling.py --only train,sample (issue 7)
#   R=runs/s4 bash bench/gpu_session4.sh     (from the repo root; needs .data/fashion-mnist for the MNIST half)
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
R=${R:-runs/session4}
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
STEPS=${STEPS:-300}         # CIFAR-10 training steps per mode (the first two 50-step windows are dropped)
MNIST_STEPS=${MNIST_STEPS:-2000}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
prof() {  # $1 GPU, $2 name, rest: profile_step.py arguments
    local gpu=$1 name=$2; shift 2
    CUDA_VISIBLE_DEVICES=$gpu python bench/profile_step.py --out $R/prof-$name "$@" > $R/prof-$name.log 2>&1 \
        || log "profile $name FAILED"
    rm -f $R/prof-$name/trace.json; log "profile $name done"
}
log "start"; nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
(
    prof 0 train-cifar-default --compile-mode default
    prof 0 train-cifar-graphs
    prof 0 sample-cifar-default --what sample --batch 500 --compile-mode default
    prof 0 train-mnist-default --config configs/ddpm_mnist.yaml --compile-mode default
    prof 0 train-mnist-graphs --config configs/ddpm_mnist.yaml
    prof 0 sample-cifar-cl-cudnn --what sample --batch 500 --compile-mode default --channels-last --cudnn-benchmark
    CUDA_VISIBLE_DEVICES=0 python bench/bench.py --out $R/bench-mnist.json --configs mnist --modes plain,fast,fast-cudnn \
        --only matmul,train,agree --mnist-root $MNIST_ROOT --mnist-steps $MNIST_STEPS > $R/bench-mnist.log 2>&1
    log "bench mnist done (exit $?)"
) &
(
    CUDA_VISIBLE_DEVICES=1 python bench/bench.py --out $R/bench-cifar.json --configs cifar10 \
        --modes plain,fast,fast-cudnn,fast-cl-cudnn --sample-modes plain,fast,fast-cudnn,fast-cl-cudnn \
        --only matmul,train,real,sample --train-steps $STEPS > $R/bench-cifar.log 2>&1
    log "bench cifar done (exit $?)"
) &
wait
touch $R/benches.done
python bench/scaling.py --gpus 1,2 --only train,sample --steps 200 --sample-images 4000 --sample-steps 50 \
    --out $R/scaling.json > $R/scaling.log 2>&1
log "scaling done (exit $?)"
touch $R/all.done
