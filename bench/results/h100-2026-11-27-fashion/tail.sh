#!/usr/bin/env bash
# Replaces the pipeline's tail (too long for the 30-minute machine): waits for the training to stop, then a
# reduced FID table (10 and 20 steps, DPM-Solver++ and DDIM x uniform/logsnr/trailing) and NLL on 1000 test images.
set -u
R=/root/g; W=/root/w/inception-fid-fp16.pth; RUN=$R/fashion; CFG=configs/ddpm_fashion_mnist.yaml
export PYTHONPATH=/root/site PYTHONUNBUFFERED=1
log() { echo "=== $(date +%T) $*"; }
TP=$(pgrep -f "train_ddpm.py -c" | head -1); log "waiting for training pid $TP"
while kill -0 $TP 2>/dev/null; do sleep 2; done
log "training stopped"
CK=$RUN/ckpt/$(cat $RUN/ckpt/latest)
log "end point $CK"; ls $CK
python3 bench/fid_curve.py $RUN --out-md $R/fid_curve.md --out-png $R/fid_curve.png; cat $R/fid_curve.md
T="python3 bench/fid_table.py -c $CFG --weights $CK --out-dir $R/table --ref-config $CFG --feature-extractor-weights $W --n-samples 10000 --micro-batch 1000 --launch"
L="accelerate launch --num_processes 1 --mixed_precision bf16"
A=dpm_solver++:-:20:logsnr,dpm_solver++:-:10:uniform,dpm_solver++:-:10:logsnr,dpm_solver++:-:10:trailing,ddim:-:10:uniform,ddim:-:10:logsnr,ddim:-:10:trailing
B=dpm_solver++:-:20:uniform,dpm_solver++:-:20:trailing,ddim:-:20:uniform,ddim:-:20:logsnr,ddim:-:20:trailing
$T "$L" --stage all --rows $A > $R/table-a.log 2>&1 &
PA=$!
$T "$L" --stage all --rows $B > $R/table-b.log 2>&1 &
PB=$!
python3 evaluate_ddpm.py --nll -c $CFG --weights $CK --var_type both --n_images 1000 --batch_size 500 --out $R/nll.json > $R/nll.log 2>&1
log "nll done ($?)"; grep -A3 '"bits_per_dim"\|bpd' $R/nll.json | head -20
wait $PA $PB; log "rows sampled and scored"
grep -h FID $R/table-a.log $R/table-b.log
log done; touch $R/done
