#!/usr/bin/env bash
# the rows again, from the EMA weights as a torch state_dict (torch 2.11's torch.load does not read .safetensors)
set -u
R=/root/g; W=/root/w/inception-fid-fp16.pth; CK=/root/e/ema.pt; CFG=configs/ddpm_fashion_mnist.yaml
export PYTHONPATH=/root/site PYTHONUNBUFFERED=1
log() { echo "=== $(date +%T) $*"; }
T="python3 bench/fid_table.py -c $CFG --weights $CK --ref-config $CFG --feature-extractor-weights $W --n-samples 10000 --micro-batch 1000 --compile reduce-overhead --launch"
L="accelerate launch --num_processes 1 --mixed_precision bf16"
R4=ddpm:fixed_large:1000; R5=ddpm:fixed_small:1000
R6=ddim:-:20:trailing,ddim:-:10:logsnr,ddim:-:20:logsnr,ddim:-:10:quad,ddim:-:20:quad,ddpm:fixed_small:20:uniform,ddpm:fixed_small:10:trailing,ddpm:fixed_small:20:trailing,ddpm:fixed_small:10:logsnr,ddpm:fixed_small:20:logsnr,ddim:-:100,ddim:-:50
log rows
$T "$L" --out-dir $R/t4 --rows $R4 > $R/t4.log 2>&1 &
P4=$!
$T "$L" --out-dir $R/t5 --rows $R5 > $R/t5.log 2>&1 &
P5=$!
$T "$L" --out-dir $R/t6 --rows $R6 > $R/t6.log 2>&1
log "t6 done"
wait $P4; log "t4 done"
python3 -c "import numpy as np; np.savez_compressed('$R/grid-ddpm1000.npz', np.load('$R/t4/ddpm-fixed_large-1000/samples.npz')['arr_0'][:100])"
wait $P5; log "t5 done"
cat $R/t4/fid_table.md $R/t5/fid_table.md $R/t6/fid_table.md
touch $R/rows-done
