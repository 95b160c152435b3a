"""FID against training time, read from a run's log: a Markdown table and a PNG plot.

    python bench/fid_curve.py RUN_DIR [RUN_DIR ...] --out-md curve.md --out-png assets/fid-curve.png

A run trained with `--train.fid_freq N` logs, every N steps, `FID: sampling ...` and then `step N: fid X`
(train_ddpm.py). From the timestamps of `output.log` this reads, per FID point, the wall time since the run
started and the training time: the wall time less the time spent on FID evaluations (and sample grids) before
it, so a curve does not depend on how often FID was measured. A run resumed in the same folder continues its
log; the time between a stop and the resume is left out (the gap from the last line before the resume to the
resumed session's first line, `exp dir: ...`). Several runs (e.g. settings compared) are drawn in one plot, labelled by folder name.
"""
import argparse
import datetime
import math
import os
import re

from PIL import Image, ImageDraw

STAMP = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$')


def read_points(run_dir):
    """[(step, wall_s, train_s, fid)] of the run's FID lines, in log order."""
    points, start, prev, idle, fid_time, t_fid_start = [], None, None, 0.0, 0.0, None
    with open(os.path.join(run_dir, 'output.log')) as f:
        for line in f:
            m = STAMP.match(line.rstrip('\n'))
            if not m:
                continue
            t = datetime.datetime.strptime(m.group(1), '%Y-%m-%d %H:%M:%S').timestamp()
            text = m.group(2)
            if start is None:
                start = t
            if text.startswith('exp dir:') and prev is not None:
                idle += t - prev                             # a resumed session: the time the run was stopped
            if text.startswith('FID: sampling') or text.startswith('sampling the grid'):
                t_fid_start = t
            fid = re.match(r'step (\d+): fid ([-\d.e+na]+)', text)
            if fid:
                wall = t - start - idle
                if t_fid_start is not None:
                    fid_time += t - t_fid_start
                points.append((int(fid.group(1)), wall, wall - fid_time, float(fid.group(2))))
                t_fid_start = None
            elif t_fid_start is not None and text.startswith('step '):
                fid_time += t - t_fid_start                  # a grid ended at the next logged line
                t_fid_start = None
            prev = t
    return points


def markdown(curves):
    lines = ['| run | step | training time | wall time | FID |', '|---|---|---|---|---|']
    for name, points in curves.items():
        for step, wall, train, fid in points:
            lines.append(f'| {name} | {step:,} | {train / 60:.1f} min | {wall / 60:.1f} min | {fid:.2f} |')
    return '\n'.join(lines) + '\n'


def plot(curves, path, size=(720, 440), margin=(70, 20, 30, 50)):
    """A line plot of FID against training minutes, log-scaled FID axis, drawn with PIL."""
    left, top, right, bottom = margin
    w, h = size
    img = Image.new('RGB', size, 'white')
    d = ImageDraw.Draw(img)
    pts = [p for ps in curves.values() for p in ps if p[3] > 0]
    if not pts:
        raise SystemExit('error: no FID points to plot')
    x_max = max(p[2] for p in pts) / 60 * 1.05
    lo, hi = math.floor(math.log10(min(p[3] for p in pts))), math.ceil(math.log10(max(p[3] for p in pts)))
    hi = max(hi, lo + 1)
    X = lambda minutes: left + (w - left - right) * minutes / x_max
    Y = lambda fid: top + (h - top - bottom) * (hi - math.log10(fid)) / (hi - lo)
    d.rectangle([left, top, w - right, h - bottom], outline='black')
    for e in range(lo, hi + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if 10 ** lo <= v <= 10 ** hi:
                d.line([left - 4, Y(v), w - right, Y(v)], fill='#dddddd' if m > 1 else '#bbbbbb')
                d.text((left - 8 - 7 * len(f'{v:g}'), Y(v) - 6), f'{v:g}', fill='black')
    step = max(1, round(x_max / 8))
    for k in range(0, int(x_max) + 1, step):
        d.line([X(k), h - bottom, X(k), h - bottom + 4], fill='black')
        d.text((X(k) - 4, h - bottom + 8), str(k), fill='black')
    d.text(((w - left - right) // 2 + left - 60, h - 22), 'training time (minutes)', fill='black')
    d.text((8, top), 'FID', fill='black')
    colors = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b']
    for k, (name, points) in enumerate(curves.items()):
        c = colors[k % len(colors)]
        xy = [(X(p[2] / 60), Y(p[3])) for p in points if p[3] > 0]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
        d.text((w - right - 220, top + 8 + 14 * k), name, fill=c)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', help='run folders (EXP_DIR) with an output.log')
    p.add_argument('--out-md', help='write the table here (default: print it)')
    p.add_argument('--out-png', help='write the plot here')
    args = p.parse_args()
    curves = {os.path.basename(os.path.normpath(r)): read_points(r) for r in args.runs}
    table = markdown(curves)
    if args.out_md:
        with open(args.out_md, 'w') as f:
            f.write(table)
    print(table, end='')
    if args.out_png:
        plot(curves, args.out_png)


if __name__ == '__main__':
    main()
