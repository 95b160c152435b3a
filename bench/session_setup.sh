# Sourced by bench/gpu_session15*.sh after they set R (the output folder): shell settings, `log` into
# $R/pipeline.log, and two monitors beside the runs (the GPU's clocks, power and clock-event (throttle) reasons every
# second into $R/gpu-monitor.csv; the host's load and CPU counters every 2 s into $R/host-monitor.log).
# `finish` stops the monitors and touches $R/all.done, the file a poll waits for.
set -u
export PYTHONUNBUFFERED=1
MNIST_ROOT=${MNIST_ROOT:-.data/fashion-mnist}
mkdir -p $R
log() { echo "[$(date +%T)] $*" >> $R/pipeline.log; }
log "start"; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> $R/pipeline.log
REASONS=clocks_event_reasons.active     # older drivers: clocks_throttle_reasons.active
nvidia-smi --query-gpu=$REASONS --format=csv > /dev/null 2>&1 || REASONS=clocks_throttle_reasons.active
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,$REASONS \
    --format=csv -lms 1000 > $R/gpu-monitor.csv 2>&1 &
GPU_MON=$!
(while true; do echo "$(date +%T) $(cat /proc/loadavg) $(grep '^cpu ' /proc/stat)"; sleep 2; done) > $R/host-monitor.log &
HOST_MON=$!
finish() { kill $GPU_MON $HOST_MON; touch $R/all.done; }
