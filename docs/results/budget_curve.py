"""How far the tiny recipe gets with more steps, a re-balanced task mix, or a bigger backbone.

Every run trains ``tiny_qwen_shapes`` from scratch on one generated ``easy`` shapes dataset (4000 train
/ 200 held-out images, data seed 0, train seed 0; the demo's ``long`` budget data) with one torch
thread, and is evaluated during the run on 100 held-out samples per task (REC, RES, OVD), as
``padt bench ablate`` does (``bench/sweep.py``). Two runs side by side fill the 2 cores.

    python docs/results/budget_curve.py RUN [RUN ...]     # names below; results merged into the JSON

Writes ``docs/results/budget_curve.json`` (one record per run: spec, curve, seconds per step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from padt_bench.sweep import RunSpec, ShapesData, train_run

DATA = ShapesData(root="runs/budget_curve/data", n_train=4000, n_val=200, difficulty="easy", seed=0)
VISION_128x4 = (
    "backbone.config.vision_config.hidden_size=128",
    "backbone.config.vision_config.intermediate_size=256",
    "backbone.config.vision_config.depth=4",
    "backbone.config.vision_config.fullatt_block_indexes=[1,3]",
)
# name: (steps, evaluation points, overrides)
RUNS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "default_2700": (2700, 3, ()),
    "default_5400": (5400, 4, ()),
    "ovd_x3_2700": (2700, 3, ("data.task_weights.ovd=3",)),
    "vision_128x4_2700": (2700, 3, VISION_128x4),
}
OUT = Path(__file__).with_name("budget_curve.json")


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in RUNS]
    if unknown or not names:
        raise SystemExit(f"name runs among {', '.join(RUNS)}; got {unknown or 'none'}")
    DATA.ensure()
    for name in names:
        steps, points, overrides = RUNS[name]
        spec = RunSpec(name, "tiny_qwen_shapes", 0, steps, overrides)
        record = train_run(spec, DATA, "runs/budget_curve", points=points, eval_samples=100, threads=1)
        results = json.loads(OUT.read_text()) if OUT.exists() else {"data": DATA.to_json(), "runs": {}}
        results["runs"][name] = record
        OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
