"""Single-image behaviour is what it was before multi-image samples (issue 20): same ids, same boxes.

``tests/data/single_image_baseline.json`` was recorded on every tiny recipe *before* the multi-image
change (``PADT_RECORD_BASELINE=1 pytest tests/test_multi_image_single.py`` rewrites it): generated ids
of a mixed batch (two images of different sizes, a prompt with a VRT, a text-only sample) and the
boxes/scores the decoder gives for generated and for fixed completions. The ``tiny_shapes_pretrained``
entry was recorded again after 5c9c431 (channels-last input to the CNN tower, a rounding change of
~1e-5 in its features); with that one line undone, the multi-image code gives the first recording exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPES
from helpers import noise_image, sharpen

import padt_core

pytestmark = pytest.mark.usefixtures("one_thread")

BASELINE = Path(__file__).parent / "data" / "single_image_baseline.json"
PROMPTS = ["find the red circle", "what is at <|VRT_3|>?", "hi"]
DECODER = {"trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}}
# Every backbone's tiny recipe with a small decoder, and the pretrained-tower recipe as it is.
CASES = (*TINY_RECIPES, "tiny_shapes_pretrained")


def _build(name: str) -> padt_core.PaDTModel:
    torch.manual_seed(0)
    overrides = {} if name == "tiny_shapes_pretrained" else {"decoder": {**DECODER, "heads": ["box", "score", "mask"]}}
    model = padt_core.build(name, overrides).eval()
    sharpen(model)
    return model


def _images():
    return [noise_image(140, 252, 1), noise_image(90, 60, 2), None]


def _objects(predictions) -> list[list[dict]]:
    return [
        [
            {
                "label": o.label,
                "vrt": [int(k) for k in o.vrt],
                "box": None if o.box is None else [float(v) for v in o.box],
                "score": None if o.score is None else float(o.score),
                "mask_area": None if o.mask is None else int(o.mask.sum()),
            }
            for o in p.objects
        ]
        for p in predictions
    ]


def _record(model) -> dict:
    torch.manual_seed(0)
    predictions = model.predict(_images(), PROMPTS, max_new_tokens=12)
    # A fixed completion per sample: a label and three VRTs (text only for the text-only sample), so the
    # decoder runs whatever the random model generates.
    vocab = model.backbone.vocab_rows
    label = model.backbone.tokenizer.encode('"a" ', add_special_tokens=False)
    eos = model.backbone.eos_token_ids[0]
    pad = model.backbone.pad_token_id
    completion = torch.tensor([[*label, vocab + 0, vocab + 1, vocab + 5, eos]] * 2 + [[*label, eos, pad, pad, pad]])
    images = [im for im in _images()]
    batch = model.prepare(images, PROMPTS)
    encoded = model.encode(batch)
    forced = model.answer_format.read_completions(model, batch, encoded, completion, images)
    return {
        "ids": [p.ids for p in predictions],
        "text": [p.text for p in predictions],
        "skipped": [p.skipped for p in predictions],
        "objects": _objects(predictions),
        "forced_objects": _objects(forced),
        "forced_skipped": [p.skipped for p in forced],
    }


@pytest.mark.parametrize("recipe", CASES)
def test_single_image_outputs_unchanged(recipe):
    got = _record(_build(recipe))
    if os.environ.get("PADT_RECORD_BASELINE") == "1":
        data = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
        data[recipe] = got
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        pytest.skip("baseline recorded")
    want = json.loads(BASELINE.read_text())[recipe]
    assert all(o["box"] is not None for objs in want["forced_objects"] for o in objs)
    assert any(objs for objs in want["forced_objects"]), "the fixed completions must reach the decoder"
    assert got == want
