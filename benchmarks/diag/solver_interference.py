"""How much the stability bootstrap's solves slow the main thread's kernel launches (run on a GPU machine).

The shared engine solves each cell's bootstrap resamples on a background thread (execution/stability_pipeline.py)
while the main thread launches the next cells' kernels. HiGHS releases the GIL while it solves, but scipy's `milp`
wrapper runs Python around each solve. This script times: one `KnapsackProblem.solve` (a 113-group, 2-choice problem
like a Qwen3-0.6B cell's); then the rate of small CUDA kernel launches from the main thread alone, beside a thread
that solves continuously, beside the same thread with scipy's per-call option checks memoised (the suspect ruled
out), and beside a thread that only sleeps. Prints one JSON line.

    python3 benchmarks/diag/solver_interference.py
"""

import threading, time, sys, json, cProfile, pstats, io
import numpy as np, torch
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2] / 'src'))
from quantsweep.engine.exact_solver import KnapsackProblem
import scipy; print("scipy", scipy.__version__, "python", sys.version.split()[0])
rng = np.random.default_rng(0)
G, K = 113, 2
costs = [list(rng.random(K) * 10) for _ in range(G)]
p = KnapsackProblem(costs, sum(min(c) for c in costs) * 1.3)
probs = [[list(rng.random(K)) for _ in range(G)] for _ in range(40)]
t = time.perf_counter()
for s in probs: p.solve(s)
print("milp per solve ms", round((time.perf_counter() - t) / len(probs) * 1e3, 2))
pr = cProfile.Profile(); pr.enable()
for s in probs[:20]: p.solve(s)
pr.disable()
out = io.StringIO(); pstats.Stats(pr, stream=out).sort_stats('tottime').print_stats(8); print(out.getvalue()[-1800:])
x = torch.randn(1024, device='cuda')
def launches(sec):
    n = 0; torch.cuda.synchronize(); t = time.perf_counter()
    while time.perf_counter() - t < sec:
        for _ in range(100): x.add_(1.0)
        n += 100
    torch.cuda.synchronize(); return n
def run_bg(fn, sec=2.0):
    stop = [False]
    def loop():
        i = 0
        while not stop[0]: fn(probs[i % len(probs)]); i += 1
    th = threading.Thread(target=loop); th.start(); r = launches(sec); stop[0] = True; th.join(); return r / sec
alone = launches(2.0) / 2
with_milp = run_bg(p.solve)
import scipy.optimize._highspy._highs_wrapper as hw
orig = hw.check_option; memo = {}
def cached(h, k, v):
    key = (k, type(v), v)
    if key not in memo: memo[key] = orig(h, k, v)
    return memo[key]
hw.check_option = cached
t = time.perf_counter()
for s in probs: p.solve(s)
print("milp (memoised check_option) per solve ms", round((time.perf_counter() - t) / len(probs) * 1e3, 2))
with_memo = run_bg(p.solve)
hw.check_option = orig
sleep_only = run_bg(lambda s: time.sleep(0.02))
print(json.dumps({"launches_per_s_alone": alone, "with_milp_thread": with_milp, "with_milp_memoised_options": with_memo, "with_sleeping_thread": sleep_only}))
