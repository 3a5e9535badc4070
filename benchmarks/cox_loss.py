"""Benchmark: hpc_pgo's O(N log N) cox_nll against the N x N risk-matrix Cox loss.

Baseline ("pathomic_fusion_nxn"): the formulation Pathomic Fusion trains with, rewritten
here (vectorised, which only helps it): R[i, j] = 1 if time_j >= time_i, then
    loss = -mean((theta - log(sum_j exp(theta_j) * R[i, j])) * event)
It builds an N x N matrix, so time and memory grow as N^2.

Every (implementation, N, measurement) runs in a fresh subprocess, so no case's allocations
can hide another's. Inputs are the same in all of them (seeded by N): theta ~ N(0, 1),
times in months with one decimal (realistic ties), 60% events.

time:   one warm-up forward+backward, then the median of repeated forward+backward passes
        (at least 3, until --seconds have passed).
memory: peak bytes allocated during one forward+backward (after a warm-up), not counting
        the tensors that existed before it (the inputs).
  - CPU: torch.profiler (profile_memory, record_shapes, with_stack) and its memory
    timeline: the maximum over the pass of the bytes held by tensors allocated in it.
    This counts torch's allocations exactly; torch has no CPU allocator statistics, and
    RSS deltas miss small buffers that glibc serves from pages it already holds. If the
    timeline export is unavailable (it is deprecated in torch 2.13), the fallback is the
    RSS high-water mark (VmHWM after writing 5 to /proc/self/clear_refs) minus RSS before,
    run with MALLOC_MMAP_THRESHOLD_=4096 so that large blocks are fresh mappings; the
    table names the method that ran.
  - CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() before the pass.
The two losses differ only in normalisation (baseline divides by N, ours by the number of
events); the last column is |ours(reduction="sum") / N - baseline|, which should be ~0.

Usage: python benchmarks/cox_loss.py [--sizes 256 4096 16384] [--device cpu|cuda]
       [--dtype float32|float64] [--threads T] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("hpc_pgo_cox_nll", "pathomic_fusion_nxn")
MIB = 2.0**20


def pathomic_fusion_nxn(theta, time, event):
    """The baseline: Cox loss through the full N x N risk-set indicator matrix."""
    import torch

    risk_matrix = (time[None, :] >= time[:, None]).to(theta.dtype)  # R[i, j] = t_j >= t_i
    log_risk = torch.log(torch.sum(torch.exp(theta)[None, :] * risk_matrix, dim=1))
    return -torch.mean((theta - log_risk) * event.to(theta.dtype))


def _proc_status_bytes(field: str) -> int:
    """VmRSS or VmHWM of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_peak_by_profiler(step) -> int:
    """Max bytes held, during step(), by tensors allocated in it (torch memory timeline)."""
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still the CPU-capable tool
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max((sum(point) for point in sizes), default=0)


def _cpu_peak_by_rss(step) -> tuple[int, str]:
    """RSS high-water mark during step() minus RSS before it (page granularity)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _proc_status_bytes("VmRSS")
    step()
    if reset:
        return _proc_status_bytes("VmHWM") - before, "RSS high-water mark (VmHWM)"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return maxrss - before, "ru_maxrss (lower bound)"


def _peak_of(step, cuda: bool) -> tuple[int, str]:
    """Peak bytes in use during step() above the bytes in use before it, and the method."""
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated"
    try:
        return _cpu_peak_by_profiler(step), "torch.profiler memory timeline"
    except (AttributeError, RuntimeError, ValueError, OSError):
        return _cpu_peak_by_rss(step)


def worker(impl: str, n: int, device: str, dtype: str, measure: str, seconds: float) -> dict:
    """Run one measurement of one case in this process."""
    import torch

    import hpc_pgo  # noqa: F401  (package set-up, as in training)
    from hpc_pgo.survival.cox import cox_nll

    loss_fn = {
        "hpc_pgo_cox_nll": lambda th, t, e: cox_nll(th, t, e, reduction="mean"),
        "pathomic_fusion_nxn": pathomic_fusion_nxn,
    }[impl]
    g = torch.Generator().manual_seed(n)
    theta = torch.randn(n, generator=g, dtype=getattr(torch, dtype)).to(device)
    time_ = (torch.rand(n, generator=g) * 120).round(decimals=1).to(device)
    event = (torch.rand(n, generator=g) < 0.6).to(device)
    theta.requires_grad_(True)
    cuda = device.startswith("cuda")

    def step():
        theta.grad = None
        loss_fn(theta, time_, event).backward()
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up: kernels, thread pools, lazy allocations
    theta.grad = None
    if measure == "memory":
        peak, method = _peak_of(step, cuda)
        return {"peak_bytes": max(peak, 0), "memory_method": method}

    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 1000):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():  # both in the baseline's normalisation: sum over events / N
        if impl == "hpc_pgo_cox_nll":
            value = float(cox_nll(theta, time_, event, reduction="sum") / n)
        else:
            value = float(pathomic_fusion_nxn(theta, time_, event))
    return {"median_s": statistics.median(times), "runs": len(times), "loss_sum_over_n": value}


def run_case(impl: str, n: int, args: argparse.Namespace) -> dict:
    """Both measurements of one case, each in a fresh subprocess."""
    result = {}
    for measure in ("time", "memory"):
        cmd = [sys.executable, __file__, "--worker", impl, "--n", str(n), "--measure", measure]
        cmd += ["--device", args.device, "--dtype", args.dtype, "--seconds", str(args.seconds)]
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if measure == "memory":  # see the module docstring
            env.update(
                MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0", MALLOC_TOP_PAD_="0"
            )
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"error: case {impl} n={n} ({measure}) failed:\n{out.stderr[-2000:]}")
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 4096, 16384])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: unchanged)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per case")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(args.worker, args.n, args.device, args.dtype, args.measure, args.seconds)
        print(json.dumps(result))
        return 0

    print(
        f"Cox loss forward+backward: device={args.device}, dtype={args.dtype}, "
        f"threads={args.threads or 'unchanged'}; median time; peak memory above the inputs"
    )
    header = (
        f"{'N':>6} | {'ours ms':>9} {'nxn ms':>10} {'ratio':>8} | "
        f"{'ours MiB':>9} {'nxn MiB':>9} {'ratio':>8} | {'|ours-nxn|':>10}"
    )
    print(header)
    print("-" * len(header))
    methods = set()
    for n in args.sizes:
        ours, base = (run_case(impl, n, args) for impl in IMPLEMENTATIONS)
        methods.add(ours["memory_method"])
        # The RSS fallback sees nothing below one 4 KiB page: no ratio then.
        mem_ratio = (
            f"{base['peak_bytes'] / ours['peak_bytes']:>7.1f}x"
            if ours["peak_bytes"]
            else "     n/a"
        )
        print(
            f"{n:>6} | {ours['median_s'] * 1e3:>9.3f} {base['median_s'] * 1e3:>10.3f} "
            f"{base['median_s'] / ours['median_s']:>7.1f}x | "
            f"{ours['peak_bytes'] / MIB:>9.3f} {base['peak_bytes'] / MIB:>9.1f} {mem_ratio} | "
            f"{abs(ours['loss_sum_over_n'] - base['loss_sum_over_n']):>10.2e}",
            flush=True,
        )
    print(
        "ratio = baseline / ours (higher: ours is faster / smaller); n/a: ours below the method's resolution"
    )
    print(f"peak memory by {', '.join(sorted(methods))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
