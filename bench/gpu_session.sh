#!/usr/bin/env bash
# One session on a host with two GPUs, as run for docs/DDPM.md (Fashion-MNIST results), docs/benchmarks.md
# (multi-GPU scaling) and bench/NOTES.md. It chains the repo's own commands so that neither GPU idles:
#
#   GPU 0: train configs/ddpm_fashion_mnist.yaml in the fast setting for TRAIN_S seconds (SIGTERM: the run
#          saves a checkpoint and stops; resume it with --train.resume latest)
#   GPU 1: meanwhile, speed experiments (bench/profile_step.py, bench/bench.py variants), at most TRAIN_S s
#   both:  sample the FID table's rows from that checkpoint, one process per GPU taking rows from a shared list
#          (bench/fid_table.py --stage sample), then score all rows (--stage score, once FID_READY exists),
#          draw the figures with sample_ddpm.py, and measure 1 vs 2 GPUs (bench/scaling.py).
#
#   bash bench/gpu_session.sh            (from the repo root; writes under $R, default runs/session)
#
# Inputs (git-ignored folders): .data/fashion-mnist/train-images-idx3-ubyte.gz, .fid/inception-fid-fp16.pth
# (../shared/tools/fid_inception_weights.py --fp16), .fid/fashion_mnist_train32_fid_stats.npz (../shared/data),
# torch-fidelity importable. Each stage writes $R/<stage>.done; the log is $R/pipeline.log.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
R=${R:-runs/session}
TRAIN_S=${TRAIN_S:-400}
FID_READY=${FID_READY:-$R/fid_ready}
CFG=${CFG:-configs/ddpm_fashion_mnist.yaml}
W=${W:-.fid/inception-fid-fp16.pth}
STATS=${STATS:-.fid/fashion_mnist_train32_fid_stats.npz}
FAST=${FAST:-"--data.on_gpu true --train.mixed_precision bf16 --train.compile true --train.compile_mode reduce-overhead"}
EXTRA=${EXTRA:-}          # config overrides for every command (a CPU dry run shrinks the model with them)
ROWS=${ROWS:-"ddpm:fixed_large:1000 ddpm:fixed_small:1000 ddpm:fixed_large:100 ddpm:fixed_small:100 ddim:-:100
      ddpm:fixed_large:50 ddpm:fixed_small:50 ddim:-:50 dpm_solver++:-:20 ddpm:fixed_large:10 ddpm:fixed_small:10
      ddim:-:10 dpm_solver++:-:10"}
SPEED=${SPEED:-1}         # 0: no speed experiments on GPU 1 (CPU dry run)
SCALING=${SCALING:-1}     # 0: no bench/scaling.py
FIDARGS="-c $CFG --out-dir $R/fid --ref-stats $STATS --feature-extractor-weights $W --n-samples ${N_FID:-10000}
         --micro-batch ${FID_MB:-2500}"
mkdir -p $R/claims
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }

sample_worker() {   # $1 = GPU: take unclaimed rows in order until none is left
    for row in $ROWS; do
        mkdir "$R/claims/${row//[:+]/_}" 2>/dev/null || continue
        # compiling (~30 s) pays only for the 1000-step chains; the short ones run eager bf16
        compile=$([ "${row##*:}" -ge 1000 ] && echo "--compile reduce-overhead" || echo "")
        log "GPU $1 samples $row $compile"
        CUDA_VISIBLE_DEVICES=$1 python bench/fid_table.py $FIDARGS --weights "$CKPT" --rows "$row" --stage sample $compile \
            $EXTRA --launch "accelerate launch --num_processes 1 --mixed_precision bf16" >> $R/fid-sample-gpu$1.log 2>&1 \
            || log "GPU $1: row $row FAILED"
    done
    touch $R/sample-gpu$1.done
}

speed_experiments() {   # GPU 1 while GPU 0 trains
    local end=$(($(date +%s) + TRAIN_S))
    left() { local l=$((end - $(date +%s))); echo $((l > 1 ? l : 1)); }
    mkdir -p $R/bench5
    CUDA_VISIBLE_DEVICES=1 timeout $(left) python bench/bench.py --out $R/bench5/bench.json --configs cifar10 \
        --modes fast,fast-cl --sample-modes fast,fast-cl --only matmul,train,sample --train-steps 300 \
        --print-freq 50 > $R/bench5/bench.log 2>&1
    CUDA_VISIBLE_DEVICES=1 timeout $(left) python bench/profile_step.py --mode fast --compile-mode default \
        --channels-last --out $R/bench5/profile-cl > $R/bench5/profile-cl.txt 2>&1
    CUDA_VISIBLE_DEVICES=1 timeout $(left) python bench/profile_step.py --mode fast --compile-mode default \
        --out $R/bench5/profile-nchw > $R/bench5/profile-nchw.txt 2>&1
    rm -f $R/bench5/profile-*/trace.json        # large; kernels.txt keeps the summary
    touch $R/bench5.done
}

log "start; train for $TRAIN_S s"
nvidia-smi --query-gpu=name,memory.total --format=csv >> $R/pipeline.log
if [ "$SPEED" = 1 ]; then speed_experiments & else touch $R/bench5.done; fi
CUDA_VISIBLE_DEVICES=0 timeout -s TERM -k 90 $TRAIN_S python train_ddpm.py -c $CFG -e $R/fashion \
    --data.root .data/fashion-mnist $FAST --train.save_freq 5000 --train.sample_freq 10000 $EXTRA > $R/train.log 2>&1
log "training stopped (exit $?): $(tail -n 2 $R/fashion/output.log | tr '\n' ' ')"
CKPT=$R/fashion/ckpt/$(cat $R/fashion/ckpt/latest)
touch $R/train.done

sample_worker 0 &
wait_gpu1() { while [ ! -e $R/bench5.done ]; do sleep 2; done; }
(wait_gpu1; sample_worker 1) &
while [ ! -e $R/sample-gpu0.done ] || [ ! -e $R/sample-gpu1.done ]; do sleep 2; done
log "all rows sampled"

while [ ! -e "$FID_READY" ]; do sleep 2; done
CUDA_VISIBLE_DEVICES=1 python bench/fid_table.py $FIDARGS --weights "$CKPT" --rows "$(echo $ROWS | tr ' ' ',')" \
    --stage score $EXTRA > $R/fid-score.log 2>&1 && touch $R/score.done &
for mode in sample denoise progressive; do
    n=$([ $mode = sample ] && echo 64 || echo 8)
    CUDA_VISIBLE_DEVICES=0 accelerate launch --num_processes 1 --mixed_precision bf16 sample_ddpm.py -c $CFG \
        --weights "$CKPT" --mode $mode --n_samples $n --micro_batch $n --grid $n --seed 1 \
        --save_dir $R/fig-$mode $EXTRA >> $R/figures.log 2>&1 || log "figure $mode FAILED"
done
wait
log "scored and drawn: $(tail -n 16 $R/fid/fid_table.md 2>/dev/null | tr '\n' ' ')"
touch $R/figures.done

if [ "$SCALING" = 1 ]; then
    python bench/scaling.py --gpus 1,2 --steps 200 --sample-images 4000 --sample-steps 50 --fid-weights $W \
        --fid-ref-stats $STATS --out $R/scaling.json > $R/scaling.log 2>&1
    log "scaling done (exit $?)"
fi
touch $R/all.done
