"""Where a PaDT training step spends its time: torch.profiler over the benchmark's batch.

    python tools/profile_train_step.py [--device cuda] [--dtype bfloat16] [--rows 25] [key.sub=value ...]

Builds the same batch as ``padt bench train`` (batch 8, every task), runs warm-up steps, then profiles
one PaDT step and one plain SFT step and prints, for each, the op count and the top ops by self time.
A development aid: the figures to report come from ``padt bench train``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from padt_bench.train import DEFAULT_RECIPE, _samples, _to_device, make_collator, train_steps
from torch.profiler import ProfilerActivity, profile

import padt_core
from padt_core.recipe import load_recipe
from padt_core.runtime import tune_cpu_allocator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default=DEFAULT_RECIPE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=[None, "bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    spec = load_recipe(args.recipe, args.overrides)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = padt_core.build(spec).to(device=dev, dtype=getattr(torch, args.dtype) if args.dtype else None)
    model.train()
    with tempfile.TemporaryDirectory() as tmp:  # images are read by the collator
        items = _samples(spec, Path(tmp) / "shapes", args.batch_size, None)
        batch = _to_device(make_collator(model)(items), dev)
    steps = train_steps(model, batch)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    for name, run in steps.items():
        for _ in range(3):
            run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            run()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        ops = sum(e.count for e in events if e.key.startswith("aten::"))
        print(f"== {name}: {ops} aten op calls")
        print(events.table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
