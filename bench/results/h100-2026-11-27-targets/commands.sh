#!/usr/bin/env bash
# What ran on the nvidia-h100-x1 machine of 2026-11-27 22:48-23:15 (repo at 31b51d6, the repo root as cwd,
# Fashion-MNIST IDX files in /usr/share/datasets/fashion-mnist). .exp = `git archive exp/flat-input` (the
# branch where the model takes the flat buffers as its parameters); .out/hostspeed.py = hostspeed.py here.
# the GPU's clocks/temperature/throttle reasons and the host's speed logged; then exp/flat-input and host time
set -u
R=/root/g; cd /root/repo; export PYTHONUNBUFFERED=1
M="--mnist-root /usr/share/datasets/fashion-mnist"
stamp() { echo "== $1 $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"; }
Q=timestamp,clocks.sm,clocks.mem,utilization.gpu,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=timestamp,clocks.sm,clocks.mem,utilization.gpu,power.draw,temperature.gpu,clocks_throttle_reasons.active
setsid nvidia-smi --query-gpu=$Q --format=csv -l 2 > $R/smi.csv 2>&1 < /dev/null &
(nvidia-smi; nvidia-smi -q -d PERFORMANCE,CLOCK,TEMPERATURE,POWER; lscpu) > $R/gpu-info.log 2>&1
stamp host; python .out/hostspeed.py 2>&1 | tee -a $R/host.log
stamp warm
python bench/bench.py --only sample --sample-modes fast --sample-steps 5 --out $R/warm-sample.json > $R/warm-sample.log 2>&1 & p1=$!
(cd .exp && python bench/bench.py --configs mnist --only train --modes fast --mnist-steps 100 --warmup-run 0 $M --out $R/warm-exp.json) > $R/warm-exp.log 2>&1 & p2=$!
python bench/bench.py --configs mnist --only train --modes fast --mnist-steps 100 --warmup-run 0 $M --out $R/warm.json > $R/warm.log 2>&1
wait $p1 $p2
touch $R/warm1
stamp host; python .out/hostspeed.py 2>&1 | tee -a $R/host.log
stamp new-a
python bench/bench.py --configs mnist --only train,matmul --modes plain,fast --mnist-steps 1000 $M --out $R/new-a.json > $R/new-a.log 2>&1
stamp sample
python bench/bench.py --only sample --sample-modes plain,fast --out $R/sample.json > $R/sample.log 2>&1
stamp exp; touch $R/targets
(cd .exp && python bench/bench.py --configs mnist --only train --modes fast --mnist-steps 1000 --warmup-run 0 $M --out $R/exp.json) > $R/exp.log 2>&1
stamp new-b
python bench/bench.py --configs mnist --only train --modes fast --mnist-steps 1000 --warmup-run 0 $M --out $R/new-b.json > $R/new-b.log 2>&1
stamp prof-new
python bench/profile_step.py -c configs/ddpm_mnist.yaml --train.fast true --steps 20 --out $R/prof-new > $R/prof-new.log 2>&1
stamp prof-exp
(cd .exp && python bench/profile_step.py -c configs/ddpm_mnist.yaml --train.fast true --steps 20 --out $R/prof-exp) > $R/prof-exp.log 2>&1
rm -f $R/prof-*/trace.json
stamp host; python .out/hostspeed.py 2>&1 | tee -a $R/host.log
stamp end; touch $R/done
# Then, by hand, while prof-exp was still running on the GPU (so disturbed; no figure uses it, no file kept):
#   python bench/bench.py --only sample --sample-modes plain,fast --out /root/g/sample2.json   (the "sample2" line)
# prof-exp had not finished when the machine's time ran out. first-machine/: the same script's files from the
# session's first machine, which ran e_pipeline.sh (the same commands, without the clock and host logs).
