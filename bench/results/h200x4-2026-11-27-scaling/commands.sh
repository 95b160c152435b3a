#!/usr/bin/env bash
# Issue 22 on one machine of 4 H100s: training and sampling scaling 1/2/4 GPUs, profiles, 1-vs-4 equality.
set -u
R=/root/g
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
log() { echo "=== $(date +%T) $*"; }
log start; nvidia-smi --query-gpu=index,name,clocks.max.sm --format=csv; nvidia-smi topo -m
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__, torch.cuda.device_count(), 'GPUs')"
(while true; do echo "$(date +%T) $(cat /proc/loadavg)"; sleep 10; done) > $R/host-load.log &
MON=$!
O="--train.compile_tuning false"
python3 bench/scaling.py --gpus 1,2,4 --only train,sample --fixed both --global-gpus 1,2 --steps 300 \
    --sample-images 8000 --sample-steps 100 --overrides "$O" --out $R/scaling.json > $R/scaling.log 2>&1
log "scaling done ($?)"; tail -n 12 $R/scaling.log
accelerate launch --multi_gpu --num_processes 4 --main_process_port 29611 bench/profile_step.py --train.fast true $O \
    --train.batch_size 512 --out $R/prof4 > $R/prof4.log 2>&1
log "profile 4 GPUs done ($?)"
kill $MON; log done; touch $R/done
