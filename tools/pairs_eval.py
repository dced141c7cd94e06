"""Score a two-image shapes model on held-out pairs: which / ordinal / both, against chance.

A sample is a hit when every referent's object (in answer order) is in the right image and its box
overlaps the ground truth with IoU >= 0.5 in that image's pixels. Chance: each referent guessed as a
uniformly random object of the two images (``chance_random_object``), and the image alone (0.5 per
referent). ``padt eval MODEL`` gives the same ``which`` number through the REC metric.

Usage::

    python tools/pairs_eval.py MODEL_DIR [--pairs 200] [--root runs/data/shapes_pairs] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from padt_plugins.datasets.shapes.pairs import ShapesPairsDataset, ShapesPairsDatasetConfig
from padt_plugins.metrics.base import box_iou, gt_box_pixels

import padt_core
from padt_core.atomic import atomic_write_text


def score(model, root: str, question: str, pairs: int) -> dict[str, float | int]:
    """Acc@0.5 with the right image(s), the first object's image accuracy and the chance levels."""
    config = ShapesPairsDatasetConfig(root=root, split="val", n_pairs=pairs, questions=[question])
    samples = ShapesPairsDataset(config).samples()
    coco = json.loads((Path(root) / "annotations" / "instances_val.json").read_text())
    objects_in = Counter(a["image_id"] for a in coco["annotations"])
    predictions = model.predict([s.images for s in samples], [s.prompt for s in samples], batch_size=16)
    hits = first_image = crossing = 0
    chance = []
    for sample, prediction in zip(samples, predictions):
        crossing += sum("crosses images" in line for line in prediction.skipped)
        hit = True
        for k, gt in enumerate(sample.objects):
            obj = prediction.objects[k] if k < len(prediction.objects) else None
            if obj is None or obj.box is None:
                hit = False
                continue
            first_image += k == 0 and obj.image == gt.image
            iou = box_iou(tuple(obj.box), gt_box_pixels(gt, sample.image_sizes[gt.image]))
            hit &= obj.image == gt.image and iou >= 0.5
        hits += hit
        total = sum(objects_in[i] for i in sample.meta["image_ids"])
        chance.append(total ** -len(sample.objects))
    n = len(samples)
    referents = len(samples[0].objects)
    return {
        "samples": n,
        "acc50_right_image": hits / n,
        "first_object_right_image": first_image / n,
        "chance_random_object": float(np.mean(chance)),
        "chance_image": 0.5**referents,
        "crossing_runs": crossing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="saved model directory")
    parser.add_argument("--pairs", type=int, default=200, help="val pairs per question (default 200)")
    parser.add_argument("--root", default="runs/data/shapes_pairs", help="the shapes_pairs image root")
    parser.add_argument("--questions", nargs="+", default=["which", "ordinal", "both"])
    parser.add_argument("--out", default=None, help="also write the report JSON here")
    args = parser.parse_args()
    model = padt_core.load(args.model).eval()
    report = {}
    for question in args.questions:
        report[question] = score(model, args.root, question, args.pairs)
        print(question, report[question], flush=True)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
