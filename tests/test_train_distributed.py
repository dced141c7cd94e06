"""Data-parallel training: 2 CPU processes (gloo, launched by torchrun) against 1 process with the same global batch.

The tiny recipe trains 3 steps on REC samples only, so every sample holds exactly one object: the
per-object means of the decoder losses then agree between a batch of 4 and two per-rank batches of 2
(with varying object counts DDP averages per-rank means, which is a different number by design).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from padt_core.train.run import train

RECIPE = "tiny_qwen_shapes"
STEPS = 3

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from transformers import TrainerCallback

    from padt_core.train import collator
    from padt_core.train.run import train

    seen = []  # (sample id, per-sample seed [seed, epoch, index]) of every item this rank collated
    collate = collator.PaDTCollator.__call__


    def recording(self, items):
        seen.extend((item["sample"].id, item["seed"]) for item in items)
        return collate(self, items)


    collator.PaDTCollator.__call__ = recording


    class DumpRank(TrainerCallback):
        # Each rank writes its own parameters, log history and collated items when training ends.
        def on_train_end(self, args, state, control, model=None, **kwargs):
            out, rank = Path(args.output_dir), args.process_index
            params = {k: v.detach().clone() for k, v in model.state_dict().items()}
            torch.save({"params": params, "log_history": state.log_history, "seen": seen}, out / f"rank{rank}.pt")


    recipe, output_dir, *overrides = sys.argv[1:]
    train(recipe, overrides, output_dir=output_dir, callbacks=[DumpRank()])
    """
)


def run_two_processes(tmp_path: Path, output_dir: Path, overrides: list[str]) -> list[dict]:
    """``torchrun --nproc_per_node 2`` of the worker (gloo on CPU); what each rank dumped."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [*launch, str(worker), RECIPE, str(output_dir), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [torch.load(output_dir / f"rank{r}.pt") for r in (0, 1)]


def overrides(data: Path, batch_size: int, tasks: str = "[rec]", n_train: int = 8, steps: int = STEPS) -> list[str]:
    shapes = (
        f"{{name: shapes, root: {data}, split: train, tasks: {tasks}, n_train: {n_train}, n_val: 2, image_size: 112}}"
    )
    settings = {"batch_size": batch_size, "max_steps": steps, "prototype_warmup_steps": 2, "logging_steps": 1}
    return [f"data.train=[{shapes}]", "data.val=[]", *(f"train.{k}={v}" for k, v in settings.items())]


def logged(history: list[dict]) -> list[dict]:
    return [h for h in history if "loss" in h]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, one_thread):
    data = tmp_path / "shapes"
    # One process, batch 4 (this also generates the data, so the two ranks below only read it).
    single = train(RECIPE, overrides(data, 4), output_dir=tmp_path / "single")

    # Two processes x batch 2 (gloo on CPU: the Trainer picks it when use_cpu is set and no GPU exists).
    ddp_dir = tmp_path / "ddp"
    ranks = run_two_processes(tmp_path, ddp_dir, overrides(data, 2))

    # Both ranks end with identical parameters, and rank 0 saved exactly those.
    rank0, rank1 = ranks[0]["params"], ranks[1]["params"]
    assert rank0.keys() == rank1.keys()
    differing = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not differing, f"ranks disagree on {differing[:5]}"
    saved = load_file(ddp_dir / "model.safetensors")
    for name, value in saved.items():
        assert torch.equal(value, rank0[name]), name

    # The logged losses (the Trainer's "loss" and our per-term means, both averaged over the ranks) are
    # the same on both ranks and match the single process. Tolerance: float32 rounding only. The first
    # step sees identical weights and the same 4 samples (same sampler permutation, same per-sample VRT
    # draws) but sums in another order (two padded batches of 2 vs one of 4); later steps add the
    # all-reduce-averaged gradients vs one backward over 4 samples. Observed differences are ~1e-7.
    ddp_logs = [logged(r["log_history"]) for r in ranks]
    assert ddp_logs[0] == ddp_logs[1]
    ours = logged(single["log_history"])
    assert len(ours) == len(ddp_logs[0]) == STEPS
    assert ddp_logs[0][0]["loss"] == pytest.approx(ours[0]["loss"], rel=1e-5)
    for theirs, mine in zip(ddp_logs[0], ours):
        terms = [k for k in mine if k == "loss" or k.startswith("loss_")]
        assert len(terms) == 7
        for key in terms:
            assert theirs[key] == pytest.approx(mine[key], rel=1e-4, abs=1e-6), (theirs["step"], key)


def test_every_rank_follows_the_epoch(tmp_path):
    """Per-sample VRT draws (and COCO category prompts) change every epoch on every rank.

    accelerate does not forward ``set_epoch`` to the dataset under ``BatchSamplerShard``; without
    ``DatasetEpochCallback`` every epoch of a multi-process run repeated epoch 0's draws.
    """
    # 4 OVD samples, global batch 2 x 2: one step per epoch, 3 epochs.
    ranks = run_two_processes(tmp_path, tmp_path / "ddp", overrides(tmp_path / "shapes", 2, "[ovd]", 4, steps=3))
    per_epoch: dict[int, set[int]] = {}
    for rank in ranks:
        epochs = [seed[1] for _, seed in rank["seen"]]
        assert epochs[:6] == [0, 0, 1, 1, 2, 2], epochs  # (a rank may prefetch one more batch)
        for _, (_, epoch, index) in rank["seen"][:6]:
            per_epoch.setdefault(epoch, set()).add(index)
    assert per_epoch == {0: {0, 1, 2, 3}, 1: {0, 1, 2, 3}, 2: {0, 1, 2, 3}}  # the ranks split each epoch
