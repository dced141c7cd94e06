"""Diagnose REC/OVD of a trained demo run: pointing (emitted cells on GT), decoder alone (GT cells teacher-forced), OVD oracle labels."""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from padt_core import load
from padt_core.data.reader import build_dataset
from padt_core.data.sample import object_cells, cell_coverage
from padt_core.train.collator import PaDTCollator
from padt_core.model import _to_device
from padt_core.data.image import load_image
from torchvision.ops import box_iou

run = sys.argv[1]; nmax = int(sys.argv[2]) if len(sys.argv) > 2 else 120
model = load(f"{run}/model").eval()
recipe = model.recipe
samples = list(build_dataset(recipe.data.val[0], templates=recipe.data.templates).samples())
rec = [s for s in samples if s.task == "rec"][:nmax]
ovd = [s for s in samples if s.task == "ovd"][:60]
cov = model.coverage
print("coverage", cov, "cell", model.backbone.cell_size)

def px(b, img):
    return torch.tensor([[b[0]*img.width, b[1]*img.height, b[2]*img.width, b[3]*img.height]])

def grid_of(img):
    b = model.prepare([img], ["x"]); return tuple(b["image_grids"][0])

# object size stats in cells
ncells, ncells50 = [], []
for s in rec:
    img = load_image(s.image); g = grid_of(img); o = s.objects[0]
    ncells.append(len(object_cells(o, g, (img.height, img.width), cov)))
    ncells50.append(len(object_cells(o, g, (img.height, img.width), 0.5)))
print("REC objects: cells at default coverage: mean %.2f hist %s" % (np.mean(ncells), np.bincount(ncells)[:12].tolist()))
print("             cells at coverage 0.5: mean %.2f hist %s" % (np.mean(ncells50), np.bincount(ncells50)[:12].tolist()))

t = time.time()
with torch.no_grad():
    preds = model.predict([s.image for s in rec], [s.prompt for s in rec], batch_size=16, progress=False)
print("predict s", round(time.time() - t, 1))
on_core, on_gt, on_box, ious, hits, nvrt, cov_emitted = [], [], [], [], [], [], []
for s, p in zip(rec, preds):
    img = load_image(s.image); g = grid_of(img); o = s.objects[0]
    gt = set(object_cells(o, g, (img.height, img.width), cov))
    core = set(object_cells(o, g, (img.height, img.width), cov, 0.5))
    c = cell_coverage(o, g, (img.height, img.width)).ravel()
    if not p.objects:
        ious.append(0.0); continue
    po = p.objects[0]; v = po.vrt
    nvrt.append(len(v))
    on_gt.append(np.mean([x in gt for x in v]) if v else 0)
    on_core.append(np.mean([x in core for x in v]) if v else 0)
    cov_emitted += [float(c[x]) for x in v if x < len(c)]
    iou = box_iou(torch.tensor([po.box]), px(o.box, img)).item() if po.box is not None else 0
    ious.append(iou)
print("box fmt sample", rec[0].objects[0].box, preds[0].objects[0].box if preds[0].objects else None, img.size)
print("(a) free-run: REC acc50 %.3f mean IoU %.3f; emitted VRTs/object %.2f; frac emitted cells in GT cell set %.3f; mean coverage of emitted cells %.3f; frac emitted cells with cov>=0.5 %.3f; frac in core set (relative 0.5) %.3f" % (
    np.mean(np.array(ious) >= 0.5), np.mean(ious), np.mean(nvrt), np.mean(on_gt), np.mean(cov_emitted), np.mean(np.array(cov_emitted) >= 0.5), np.mean(on_core)))
# by object size
ious_a = np.array(ious); nc = np.array(ncells50)
for lo, hi in [(0, 1), (1, 2), (2, 4), (4, 100)]:
    m = (nc >= lo) & (nc < hi)
    if m.any(): print(f"   objects with {lo}..{hi-1} cells (cov .5): n={m.sum()} acc50 {np.mean(ious_a[m] >= .5):.3f}")

# (b) teacher-forced GT cells
def tf_boxes(k, coverage, sampling="random"):
    col = PaDTCollator(model, vrt_per_object=k, vrt_sampling=sampling, coverage=coverage, seed=0)
    col0 = PaDTCollator(model, vrt_per_object=k, vrt_sampling=sampling, coverage=None, seed=0)
    out = []
    for i in range(0, len(rec), 16):
        chunk = rec[i:i + 16]
        pil = [load_image(s.image) for s in chunk]
        batch = _to_device(model.prepare(pil, [s.prompt for s in chunk]), model.device)
        rng = np.random.default_rng(0)
        comps = []
        for b, s in enumerate(chunk):
            enc = col.encode_vrt_answer(s, tuple(batch["image_grids"][b]), (pil[b].height, pil[b].width), rng)
            if enc is None:
                enc = col0.encode_vrt_answer(s, tuple(batch["image_grids"][b]), (pil[b].height, pil[b].width), rng)
            comps.append(enc.completion)
        L = max(map(len, comps)); pad = model.backbone.pad_token_id
        ct = torch.full((len(comps), L), pad, dtype=torch.long)
        for b, c in enumerate(comps): ct[b, :len(c)] = torch.tensor(c)
        with torch.no_grad():
            enc = model.encode(batch)
            ps = model.answer_format.read_completions(model, batch, enc, ct, pil)
        for s, p in zip(chunk, ps):
            out.append(box_iou(torch.tensor([p.objects[0].box]), px(s.objects[0].box, load_image(s.image))).item() if p.objects else 0)
    return np.array(out)
for k, c, smp in [(5, None, "random"), (-1, None, "random"), (5, 0.5, "random"), (-1, 0.5, "random"), (2, 0.5, "random")]:
    x = tf_boxes(k, c, smp)
    print(f"(b) teacher-forced GT cells K={k} coverage={c or cov:.3f}: acc50 {np.mean(x >= .5):.3f} mean IoU {x.mean():.3f}")

# (c) OVD
with torch.no_grad():
    op = model.predict([s.image for s in ovd], [s.prompt for s in ovd], batch_size=16, progress=False)
n_gt = sum(len(s.objects) for s in ovd); n_pred = sum(len(p.objects) for p in op)
matched_any, matched_lab = 0, 0
scores_tp, scores_fp = [], []
for s, p in zip(ovd, op):
    if not p.objects: continue
    img = load_image(s.image); gtb = torch.cat([px(o.box, img) for o in s.objects]); pb = torch.tensor([o.box for o in p.objects])
    iou = box_iou(pb, gtb)
    used = set()
    for j in torch.argsort(torch.tensor([o.score or 0 for o in p.objects]), descending=True).tolist():
        best = [(iou[j, g].item(), g) for g in range(len(s.objects)) if g not in used]
        bi, bg = max(best) if best else (0, -1)
        if bi >= 0.5:
            used.add(bg); matched_any += 1; scores_tp.append(p.objects[j].score)
            if p.objects[j].label.strip() == s.objects[bg].label.strip(): matched_lab += 1
        else: scores_fp.append(p.objects[j].score)
print(f"(c) OVD: {len(ovd)} images, GT objects {n_gt}, predicted {n_pred}; label-agnostic matches IoU>=.5: {matched_any} (recall {matched_any/n_gt:.3f}, precision {matched_any/max(n_pred,1):.3f}); of those right label {matched_lab}")
print(f"    score TP mean {np.mean(scores_tp) if scores_tp else float('nan'):.3f} FP mean {np.mean(scores_fp) if scores_fp else float('nan'):.3f}")
for s, p in list(zip(ovd, op))[:4]:
    print("   GT:", [o.label for o in s.objects], "| PRED:", p.text[:200])
# label-agnostic mAP via evaluate with labels replaced
from padt_core.eval.evaluate import evaluate
import copy
r = evaluate(op, ovd, ["ovd"])
print("    ovd_map as scored:", {k: v for k, v in r.items() if 'ovd' in k})
op2 = copy.deepcopy(op); ovd2 = copy.deepcopy(ovd)
for p in op2:
    for o in p.objects: o.label = "shape"
for s in ovd2:
    for o in s.objects: o.label = "shape"
try:
    r2 = evaluate(op2, ovd2, ["ovd"]); print("    oracle-label (class-agnostic) ovd:", {k: v for k, v in r2.items() if 'ovd' in k})
except Exception as e: print("class-agnostic eval failed", e)
