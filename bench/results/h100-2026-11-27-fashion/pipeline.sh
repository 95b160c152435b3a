#!/usr/bin/env bash
# Issue 21 on one H100: FID against training time (>= 20 min of training), then the FID table and NLL at that point.
set -u
R=${R:-/root/g}; W=${W:-/root/w/inception-fid-fp16.pth}; RUN=$R/fashion; CFG=${CFG:-configs/ddpm_fashion_mnist.yaml}
export PYTHONPATH=/root/site PYTHONUNBUFFERED=1
log() { echo "=== $(date +%T) $*"; }
log start; nvidia-smi --query-gpu=name,clocks.max.sm --format=csv
(while true; do echo "$(date +%T) $(cat /proc/loadavg)"; sleep 10; done) > $R/host-load.log &
MON=$!
python3 train_ddpm.py -c $CFG -e $RUN --train.fast true --train.compile_tuning false --train.n_steps 1000000 \
    --train.print_freq 1000 --train.save_freq 12000 --train.sample_freq 48000 --train.fid_freq 12000 \
    --train.fid_n_samples 10000 --train.fid_sampler dpm_solver++ --train.fid_steps 20 --train.fid_skip_type logsnr \
    --train.fid_weights $W ${EXTRA:-} > $R/train.stdout 2>&1 &
TP=$!
python3 .out/x1_watch.py $RUN $TP ${LIMIT:-1200}
wait $TP; log "training stopped ($?)"
CK=$RUN/ckpt/$(python3 -c "import sys; sys.path.insert(0, 'bench'); from fid_curve import read_points; print('step%07d' % read_points('$RUN')[-1][0])")
log "end point $CK"; ls $CK
python3 bench/fid_curve.py $RUN --out-md $R/fid_curve.md --out-png $R/fid_curve.png
cat $R/fid_curve.md
T="python3 bench/fid_table.py -c $CFG --weights $CK --out-dir $R/table --ref-config $CFG --feature-extractor-weights $W --n-samples ${NS:-10000} --micro-batch 1000 ${TEXTRA:-} --launch"
L=${LAUNCH:-"accelerate launch --num_processes 1 --mixed_precision bf16"}
A=dpm_solver++:-:10:uniform,dpm_solver++:-:10:quad,dpm_solver++:-:10:logsnr,dpm_solver++:-:10:trailing,ddim:-:10:uniform,ddim:-:10:trailing,ddim:-:10:logsnr,ddpm:fixed_small:10:uniform,ddpm:fixed_small:10:logsnr
B=dpm_solver++:-:20:uniform,dpm_solver++:-:20:quad,dpm_solver++:-:20:logsnr,dpm_solver++:-:20:trailing,ddim:-:20:uniform,ddim:-:20:trailing,ddim:-:20:logsnr,ddpm:fixed_large:10:uniform,ddpm:fixed_large:10:logsnr
C=ddpm:fixed_small:100,ddpm:fixed_large:100,ddim:-:100,ddpm:fixed_small:1000,ddpm:fixed_large:1000
log "table + nll"
$T "$L" --stage sample --rows $A > $R/table-a.log 2>&1 &
PA=$!
$T "$L" --stage sample --rows $B > $R/table-b.log 2>&1 &
PB=$!
python3 evaluate_ddpm.py --nll -c $CFG --weights $CK --var_type both --n_images ${NN:-2000} --batch_size 500 ${TEXTRA:-} --out $R/nll.json > $R/nll.log 2>&1
log "nll done ($?)"; cat $R/nll.json
wait $PA $PB; log "rows A, B sampled"
$T "$L" --stage sample --rows $C > $R/table-c.log 2>&1 &
PC=$!
$T "$L" --stage score --rows $A,$B > $R/table-score-ab.log 2>&1; log "score A, B ($?)"
cat $R/table/fid_table.md 2>/dev/null
wait $PC; log "rows C sampled"
$T "$L" --stage score --rows $A,$B,$C > $R/table-score.log 2>&1; log "score all ($?)"
cat $R/table/fid_table.md 2>/dev/null
kill $MON; log done; touch $R/done
