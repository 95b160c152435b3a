"""Stop the training (SIGTERM: it saves and exits) once it has LIMIT s of training time (wall less FID time)."""
import os, signal, sys, time, datetime
sys.path.insert(0, 'bench')
from fid_curve import read_points
run, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
first = open(os.path.join(run, 'output.log')).readline()[:19]
start = datetime.datetime.strptime(first, '%Y-%m-%d %H:%M:%S').timestamp()
while True:
    time.sleep(1)
    pts = read_points(run)
    fid_time = (pts[-1][1] - pts[-1][2]) if pts else 0.0
    last = open(os.path.join(run, 'output.log')).read().rstrip().splitlines()[-1]
    if 'FID: sampling' in last:
        continue                                   # inside an FID evaluation: its time is not training time
    if time.time() - start - fid_time >= limit:
        print(f'{time.strftime("%T")} {time.time() - start - fid_time:.0f} s of training: stopping', flush=True)
        os.kill(pid, signal.SIGTERM)
        break
