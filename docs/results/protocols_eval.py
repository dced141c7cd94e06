"""Both protocols on the new default demo model (helper A2's f_seed0 run: tiny_shapes_pretrained with
relative_coverage 0.5, scored without no_repeat_vrt as the recipe now generates), REC and RES."""

import json
import sys

import torch

from padt_core import load
from padt_core.eval.run import evaluate_model

torch.set_num_threads(1)
run, out = sys.argv[1], sys.argv[2]
model = load(f"{run}/model").eval()
model.logits_processors = lambda: []  # the recipe's generation now has no no_repeat_vrt
report, predictions, samples = evaluate_model(model, list(model.recipe.data.val), ["rec", "res"], protocol="both")
objects = {}
for s, p in zip(samples, predictions):
    if s.task == "rec":
        objects[len(p.objects)] = objects.get(len(p.objects), 0) + 1
report["eval"] = {
    "model": "padt demo (tiny_shapes_pretrained, relative_coverage 0.5, no no_repeat_vrt), seed 0",
    "protocol": "both",
    "tasks": ["rec", "res"],
    "rec_objects_per_answer": objects,
}
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(json.dumps({k: v for k, v in report.items() if k != "counts"}, indent=1))
print(json.dumps(report["counts"]))
