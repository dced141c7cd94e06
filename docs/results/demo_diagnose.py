"""Where a trained `padt demo` model loses REC and OVD: the LLM's pointing, the decoder, or the labels.

    python docs/results/demo_diagnose.py RUN_DIR [N_REC]

RUN_DIR is a `padt demo --out` folder (its `model/` and the data its recipe names). Prints, on the
first N_REC held-out REC samples (default 112) and 60 OVD images:

* how many VRT cells the referred objects cover, at the one-pixel-row rule and at half coverage;
* (a) free-running answers: how many of the emitted VRTs lie on the referred object, Acc@0.5 by object size;
* (b) the decoder alone: the object's own cells teacher-forced as the answer's VRTs (K drawn as in training);
* (c) OVD: label-agnostic matches at IoU >= 0.5, how many of them carry the right label, the scores.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torchvision.ops import box_iou

from padt_core import load
from padt_core.data.image import load_image
from padt_core.data.reader import build_dataset
from padt_core.data.sample import cell_coverage, object_cells
from padt_core.eval.evaluate import evaluate
from padt_core.model import _to_device
from padt_core.train.collator import PaDTCollator


def pixels(box, image) -> torch.Tensor:
    """A normalised xyxy sample box in pixels of ``image``, ``[1, 4]``."""
    return torch.tensor([[box[0] * image.width, box[1] * image.height, box[2] * image.width, box[3] * image.height]])


def main(run: str, n_rec: int = 112) -> None:
    torch.set_num_threads(1)
    model = load(f"{run}/model").eval()
    samples = list(build_dataset(model.recipe.data.val[0], templates=model.recipe.data.templates).samples())
    rec = [s for s in samples if s.task == "rec"][:n_rec]
    ovd = [s for s in samples if s.task == "ovd"][:60]
    cov = model.coverage

    def grid(image) -> tuple[int, int]:
        return tuple(model.prepare([image], ["x"])["image_grids"][0])

    loose, half = [], []
    for s in rec:
        image = load_image(s.image)
        loose.append(len(object_cells(s.objects[0], grid(image), (image.height, image.width), cov)))
        half.append(len(object_cells(s.objects[0], grid(image), (image.height, image.width), 0.5)))
    print(f"REC objects, cells at coverage {cov:.3f}: mean {np.mean(loose):.2f}, histogram {np.bincount(loose)}")
    print(f"REC objects, cells at coverage 0.5: mean {np.mean(half):.2f}, histogram {np.bincount(half)}")

    # (a) free-running answers
    with torch.no_grad():
        predictions = model.predict([s.image for s in rec], [s.prompt for s in rec], batch_size=16, progress=False)
    on_object, on_core, emitted_cov, ious, counts = [], [], [], [], []
    for s, p in zip(rec, predictions):
        image = load_image(s.image)
        g, size, obj = grid(image), (image.height, image.width), s.objects[0]
        if not p.objects or p.objects[0].box is None:
            ious.append(0.0)
            continue
        vrt = p.objects[0].vrt
        cells, core = set(object_cells(obj, g, size, cov)), set(object_cells(obj, g, size, cov, relative=0.5))
        coverage = cell_coverage(obj, g, size).ravel()
        counts.append(len(vrt))
        on_object.append(np.mean([c in cells for c in vrt]) if vrt else 0.0)
        on_core.append(np.mean([c in core for c in vrt]) if vrt else 0.0)
        emitted_cov += [float(coverage[c]) for c in vrt if c < coverage.size]
        ious.append(box_iou(torch.tensor([p.objects[0].box]), pixels(obj.box, image)).item())
    ious = np.array(ious)
    print(
        f"(a) free run: Acc@0.5 {np.mean(ious >= 0.5):.3f}, mean IoU {ious.mean():.3f}; {np.mean(counts):.2f} VRTs per "
        f"object, {np.mean(on_object):.3f} of them in the object's cells ({np.mean(on_core):.3f} in its cells at "
        f"relative coverage 0.5); emitted cells' mean coverage {np.mean(emitted_cov):.3f}, "
        f"{np.mean(np.array(emitted_cov) >= 0.5):.3f} at least half covered"
    )
    half = np.array(half)
    for lo, hi in [(0, 1), (1, 2), (2, 4), (4, 100)]:
        sel = (half >= lo) & (half < hi)
        if sel.any():
            acc = np.mean(ious[sel] >= 0.5)
            print(f"    objects with {lo}-{hi - 1} half-covered cells: n={sel.sum()}, Acc@0.5 {acc:.3f}")

    # (b) the decoder alone, the object's own cells teacher-forced
    def teacher_forced(k: int, coverage: float | None) -> np.ndarray:
        collators = [PaDTCollator(model, vrt_per_object=k, coverage=coverage), PaDTCollator(model, vrt_per_object=k)]
        out = []
        for start in range(0, len(rec), 16):
            chunk = rec[start : start + 16]
            images = [load_image(s.image) for s in chunk]
            batch = _to_device(model.prepare(images, [s.prompt for s in chunk]), model.device)
            rng = np.random.default_rng(0)
            rows = []
            for b, s in enumerate(chunk):
                args = (s, tuple(batch["image_grids"][b]), (images[b].height, images[b].width), rng)
                enc = collators[0].encode_vrt_answer(*args) or collators[1].encode_vrt_answer(*args)
                rows.append(enc.completion)
            ids = torch.full((len(rows), max(map(len, rows))), model.backbone.pad_token_id, dtype=torch.long)
            for b, row in enumerate(rows):
                ids[b, : len(row)] = torch.tensor(row)
            with torch.no_grad():
                done = model.answer_format.read_completions(model, batch, model.encode(batch), ids, images)
            for s, p, image in zip(chunk, done, images):
                out.append(box_iou(torch.tensor([p.objects[0].box]), pixels(s.objects[0].box, image)).item())
        return np.array(out)

    for k, coverage in [(5, None), (-1, None), (5, 0.5), (2, 0.5)]:
        x = teacher_forced(k, coverage)
        print(f"(b) decoder, own cells, K={k}, coverage {coverage or cov:.3f}: Acc@0.5 {(x >= 0.5).mean():.3f}")

    # (c) OVD: boxes vs labels
    with torch.no_grad():
        found = model.predict([s.image for s in ovd], [s.prompt for s in ovd], batch_size=16, progress=False)
    n_gt, n_pred = sum(len(s.objects) for s in ovd), sum(len(p.objects) for p in found)
    matched, right, hit_scores, miss_scores = 0, 0, [], []
    for s, p in zip(ovd, found):
        if not p.objects:
            continue
        image = load_image(s.image)
        iou = box_iou(torch.tensor([o.box for o in p.objects]), torch.cat([pixels(o.box, image) for o in s.objects]))
        used: set[int] = set()
        for j in np.argsort([-(o.score or 0.0) for o in p.objects]):
            free = [(iou[j, g].item(), g) for g in range(len(s.objects)) if g not in used]
            best, g = max(free) if free else (0.0, -1)
            if best >= 0.5:
                used.add(g)
                matched += 1
                right += p.objects[j].label.strip() == s.objects[g].label.strip()
                hit_scores.append(p.objects[j].score)
            else:
                miss_scores.append(p.objects[j].score)
    print(
        f"(c) OVD, {len(ovd)} images: {n_gt} objects, {n_pred} predicted; label-agnostic matches at IoU 0.5: {matched} "
        f"(recall {matched / n_gt:.3f}), {right} of them with the right label; mean score of matches "
        f"{np.mean(hit_scores):.3f}, of the rest {np.mean(miss_scores):.3f}"
    )
    report = evaluate(found, ovd, ["ovd"])
    print(f"    ovd_map on these images {report['ovd_map']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 112)
