"""vLLM PaDT generation equals Hugging Face PaDT generation: ids (greedy) and decoded boxes, on the tiny
Qwen2.5-VL and the tiny Qwen3-VL (DeepStack).

One engine per recipe (an ``LLM`` start is the expensive part). Prompts of different image sizes,
with prompt VRTs, under chunked prefill (64-token steps, prompts up to ~100 tokens), 3 sequences at once
for 6 prompts, and staggered finishes; the recipe's ``no_repeat_vrt`` runs in both engines.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm.sampling_params", reason="needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"
)

import torch
from helpers import noise_image
from vllm_helpers import ENGINE_ARGS, padt_vrt_model

SIZES = [(56, 84), (224, 224), (140, 56), (84, 168), (200, 120), (60, 300)]
PROMPTS = ["Where is the red square?", "Find <|VRT_1|> again.", "Describe.", "Count the shapes",
           "<|VRT_3|> and <|VRT_0|>?", "hi"]  # fmt: skip
NEW = 20


@pytest.fixture(scope="module", params=["tiny_qwen", "tiny_qwen3_vl"])
def model(request):
    return padt_vrt_model(recipe=request.param)


@pytest.fixture(scope="module")
def images():
    return [noise_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def engine(model):
    from padt_plugins.engines.vllm import VLLMEngine

    with VLLMEngine(model, **ENGINE_ARGS) as engine:
        yield engine


@pytest.fixture(scope="module")
def hf(model, images):
    return model.predict(images, PROMPTS, max_new_tokens=NEW)


def _runs(ids, vocab):
    runs, current = [], []
    for i in ids:
        if i >= vocab:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_setting_forces_chunked_prefill_and_queued_requests(model, images):
    batch = model.prepare(images, PROMPTS)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert max(lengths) > ENGINE_ARGS["max_num_batched_tokens"]  # at least one prompt is prefilled in chunks
    assert len(PROMPTS) > ENGINE_ARGS["max_num_seqs"]


def test_ids_and_boxes_equal_hf(model, images, engine, hf):
    out = model.predict(images, PROMPTS, max_new_tokens=NEW, engine=engine)
    vocab = model.backbone.vocab_rows
    assert [p.ids for p in out] == [p.ids for p in hf]
    assert sum(len(p.objects) for p in hf) >= len(PROMPTS)  # the sharpened model points
    for a, b in zip(hf, out):
        assert a.text == b.text and a.truncated == b.truncated
        assert [o.vrt for o in a.objects] == [o.vrt for o in b.objects]
        for oa, ob in zip(a.objects, b.objects):
            torch.testing.assert_close(torch.tensor(oa.box), torch.tensor(ob.box))
            assert oa.score == pytest.approx(ob.score, abs=1e-6)
            assert (oa.mask == ob.mask).all()
        # no_repeat_vrt acted in vLLM too: no cell twice within a run (the model alone repeats its favourite)
        for run in _runs(b.ids, vocab):
            assert len(run) == len(set(run))
    assert any(i >= vocab for p in out for i in p.ids)


def test_staggered_finishes_equal_hf_prefixes(model, images, engine, hf):
    """Requests that stop at different steps (1..20 new tokens) while queued ones are scheduled."""
    budgets = [3, 17, 8, 20, 1, 11]
    batch = model.prepare(images, PROMPTS)
    pairs = engine.requests(batch, images)
    params = [engine.sampling_params(max_new_tokens=n) for n in budgets]
    outputs = engine.llm.generate([r for r, _ in pairs], params, use_tqdm=False)
    for n, output, reference in zip(budgets, outputs, hf):
        assert list(output.outputs[0].token_ids) == reference.ids[:n]


def test_prototypes_are_released_when_requests_finish(model, images, engine):
    for _ in range(2):
        engine.predict(images, PROMPTS, max_new_tokens=4)
    kept = engine.llm.apply_model(lambda m: len(m.padt_prototypes))
    # Finished requests are released at the runner's next step: at most the last step's requests remain.
    assert kept[0] <= ENGINE_ARGS["max_num_seqs"]
