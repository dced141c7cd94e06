"""Several images in one conversation on vLLM: a request's VRTs number its images' cells back to back
(``docs/multi-image.md``), each image's prototypes with its place embedding (``vrt.max_images``)."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm.sampling_params", reason="needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"
)

import torch
from helpers import noise_image
from vllm_helpers import ENGINE_ARGS, padt_vrt_model


def test_multi_image_ids_and_boxes_equal_hf():
    from padt_plugins.engines.vllm import VLLMEngine

    model = padt_vrt_model(seed=3, vrt={"max_images": 2})
    with torch.no_grad():
        model.projection.image_embed.normal_()  # the two places differ: a swapped or missing one shows
    im = [noise_image(h, w, seed=20 + i) for i, (h, w) in enumerate([(84, 140), (168, 112), (112, 112), (56, 196)])]
    samples = [[im[0], im[1]], im[2], [im[3], im[1]]]
    prompts = ["Which has the red one, <|img|> or <|img|>? See <|VRT_9|>.", "Where is it?", "<|img|> then <|img|>"]
    hf = model.predict(samples, prompts, max_new_tokens=16)
    with VLLMEngine(model, **ENGINE_ARGS) as engine:
        out = engine.predict(samples, prompts, max_new_tokens=16)
    assert [p.ids for p in out] == [p.ids for p in hf]
    # objects in a second image: VRT ids past the first image's cells, read from the concatenated bank
    assert any(o.image == 1 for o in hf[0].objects + hf[2].objects)
    for a, b in zip(hf, out):
        assert [(o.image, o.vrt) for o in a.objects] == [(o.image, o.vrt) for o in b.objects]
        for oa, ob in zip(a.objects, b.objects):
            torch.testing.assert_close(torch.tensor(oa.box), torch.tensor(ob.box))
