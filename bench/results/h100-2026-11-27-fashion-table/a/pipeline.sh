#!/usr/bin/env bash
# One H100, issues 21 and 18. (1) Retrain the 20-minute Fashion-MNIST run to the FID curve's end point (step
# 87,180), meanwhile fill the inductor cache with the tuned kernels of the speed benchmark; (2) the FID table and
# the NLL at the end point; (3) the speed benchmark on the then quiet GPU (new code vs the code before the redesign).
set -u
R=/root/g; W=/root/w/inception-fid-fp16.pth; RUN=$R/fashion; CFG=configs/ddpm_fashion_mnist.yaml
FM=/usr/share/datasets/fashion-mnist
export PYTHONPATH=/root/site PYTHONUNBUFFERED=1
log() { echo "=== $(date +%T) $*"; }
log start; nvidia-smi --query-gpu=name,clocks.max.sm --format=csv
(while true; do echo "$(date +%T) $(cat /proc/loadavg)"; sleep 10; done) > $R/host-load.log &
MON=$!
nvidia-smi --query-gpu=timestamp,clocks.current.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
    --format=csv -l 5 > $R/gpu-monitor.csv &
GMON=$!
python3 train_ddpm.py -c $CFG -e $RUN --train.fast true --train.compile_tuning false --train.n_steps 87180 \
    --train.print_freq 1000 --train.save_freq 12000 --train.sample_freq 48000 > $R/train.stdout 2>&1 &
TP=$!
export TORCHINDUCTOR_COMPILE_THREADS=4     # every benchmark run (the cache key may hold it)
BW="--configs mnist --only train --mnist-root $FM --warmup-run 0 --mnist-steps 100"
python3 bench/bench.py $BW --modes fast --out $R/warm-new.json > $R/warm-new.log 2>&1 &
W1=$!
(cd .old && python3 bench/bench.py $BW --modes fast-cdt --out $R/warm-old.json > $R/warm-old.log 2>&1) &
W2=$!
python3 bench/bench.py --only sample --sample-modes fast --sample-steps 5 --out $R/warm-sample.json > $R/warm-sample.log 2>&1 &
W3=$!
(while [ ! -f $W ]; do sleep 5; done; python3 -c "
import datasets
from utils.config import load_config
from utils.fid import cached_reference
d = load_config('$CFG')['data']
r = cached_reference(d, 'train', lambda: datasets.load_uint8(d, 'train'), '$W', device='cuda')
print(r['cache_path'], r['n'], r['cached'])") > $R/refstats.log 2>&1 &
wait $W1 $W2 $W3; log "cache warm-ups done"; grep -h "steps_per_s\|sample fast" $R/warm-*.log | cut -c1-160
wait $TP; log "training stopped ($?)"; tail -3 $RUN/output.log
CK=$RUN/ckpt/step0087180; ls $CK
python3 -m models.convert safetensors -c $CFG --weights $CK --out $R/ema.safetensors && split -b 15M -d $R/ema.safetensors $R/ema.part
sha256sum $R/ema.safetensors
while [ ! -f $W ]; do sleep 5; done
T="python3 bench/fid_table.py -c $CFG --weights $CK --ref-config $CFG --feature-extractor-weights $W --n-samples 10000 --micro-batch 1000 --launch"
L="accelerate launch --num_processes 1 --mixed_precision bf16"
log "table + nll"
$T "$L" --out-dir $R/t1 --rows ddpm:fixed_large:1000,ddpm:fixed_small:1000 > $R/t1.log 2>&1 &
P1=$!
$T "$L" --out-dir $R/t2 --rows dpm_solver++:-:10:logsnr,dpm_solver++:-:20:logsnr,dpm_solver++:-:10:uniform,dpm_solver++:-:20:uniform,dpm_solver++:-:10:trailing,dpm_solver++:-:20:trailing,dpm_solver++:-:10:quad,dpm_solver++:-:20:quad,ddim:-:10:uniform,ddim:-:20:uniform,ddim:-:10:trailing,ddim:-:20:trailing,ddim:-:10:logsnr,ddim:-:20:logsnr,ddim:-:10:quad,ddim:-:20:quad > $R/t2.log 2>&1 &
P2=$!
$T "$L" --out-dir $R/t3 --rows ddpm:fixed_large:100,ddpm:fixed_small:100,ddpm:fixed_large:50,ddpm:fixed_small:50,ddpm:fixed_large:10,ddpm:fixed_small:10,ddpm:fixed_small:20:uniform,ddpm:fixed_small:10:trailing,ddpm:fixed_small:20:trailing,ddpm:fixed_small:10:logsnr,ddpm:fixed_small:20:logsnr,ddim:-:100,ddim:-:50 > $R/t3.log 2>&1 &
P3=$!
python3 evaluate_ddpm.py --nll -c $CFG --weights $CK --var_type both --n_images 2000 --batch_size 500 --out $R/nll.json > $R/nll.log 2>&1
log "nll done ($?)"
wait $P2; log "t2 done"; python3 -c "import numpy as np; np.savez_compressed('$R/grid-dpmpp20.npz', np.load('$R/t2/dpm_solverpp-20-logsnr/samples.npz')['arr_0'][:100])"
wait $P3; log "t3 done"
wait $P1; log "t1 done"; python3 -c "import numpy as np; np.savez_compressed('$R/grid-ddpm1000.npz', np.load('$R/t1/ddpm-fixed_large-1000/samples.npz')['arr_0'][:100])"
cat $R/t1/fid_table.md $R/t2/fid_table.md $R/t3/fid_table.md
touch $R/table-done
log "quiet benchmark"
BQ="--configs mnist --only train --mnist-root $FM --mnist-steps 1000"
python3 bench/bench.py $BQ --modes plain,fast --out $R/bench-mnist-new.json > $R/bench-mnist-new.log 2>&1; log "new ($?)"
(cd .old && python3 bench/bench.py $BQ --warmup-run 0 --modes fast-cdt --out $R/bench-mnist-old.json > $R/bench-mnist-old.log 2>&1); log "old ($?)"
python3 bench/bench.py --only sample --sample-modes plain,fast --out $R/bench-sample.json > $R/bench-sample.log 2>&1; log "sample ($?)"
python3 bench/bench.py $BQ --warmup-run 0 --modes fast --out $R/bench-mnist-new2.json > $R/bench-mnist-new2.log 2>&1; log "new again ($?)"
grep -h "steps_per_s': [0-9]\|^sample \|fast / plain" $R/bench-*.log | cut -c1-200
kill $MON $GMON; log done; touch $R/done
