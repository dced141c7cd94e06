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
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import padt_core
from padt_core.bench.train import DEFAULT_RECIPE, _adamw, _plain_inputs, _samples, _to_device
from padt_core.recipe import load_recipe
from padt_core.runtime import tune_cpu_allocator
from padt_core.train.collator import PaDTCollator
from padt_core.train.step import compute_losses


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
    cfg = model.recipe.train
    with tempfile.TemporaryDirectory() as tmp:  # images are read by the collator
        items = _samples(spec, Path(tmp) / "shapes", args.batch_size, None)
        batch = _to_device(PaDTCollator(model, vrt_per_object=cfg.vrt_per_object, seed=0)(items), dev)
    plain_inputs, targets = _plain_inputs(model, batch)
    length = batch["completion_ids"].shape[1]
    hf = model.backbone.hf_model
    opt_padt = _adamw([p for p in model.parameters() if p.requires_grad])  # what `padt bench train` steps
    opt_plain = _adamw([p for p in hf.parameters() if p.requires_grad])

    def padt() -> None:
        opt_padt.zero_grad(set_to_none=True)
        compute_losses(model, batch, step=cfg.prototype_warmup_steps)["loss"].backward()
        opt_padt.step()

    def plain() -> None:
        opt_plain.zero_grad(set_to_none=True)
        logits = hf(**plain_inputs, use_cache=False, logits_to_keep=length + 1).logits[:, :length]
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100).backward()
        opt_plain.step()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    for name, run in (("padt", padt), ("plain", plain)):
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
