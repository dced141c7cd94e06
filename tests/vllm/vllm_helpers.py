"""What the vLLM tests share: the tiny PaDT model and the engine settings (imported by name, not via conftest)."""

from __future__ import annotations

import torch

DECODER = {
    "trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2},
    "heads": ["box", "score", "mask"],
}
# Small engine settings that force what the tests are about: prompts longer than one step's token budget
# (chunked prefill) and more prompts than sequences at once (queued, continuously batched requests).
ENGINE_ARGS = {
    "enforce_eager": True,
    "max_num_batched_tokens": 64,
    "max_num_seqs": 3,
    "max_model_len": 1024,
    "distributed_executor_backend": "uni",
}


def padt_vrt_model(seed: int = 0, recipe: str = "tiny_qwen", **sections):
    """A tiny recipe (Qwen2.5-VL by default) with box/score/mask heads and no_repeat_vrt, sharpened so it emits
    VRT runs."""
    from helpers import sharpen

    import padt_core

    torch.manual_seed(seed)
    overrides = {"decoder": DECODER, "generation": {"logits_processors": ["no_repeat_vrt"]}, **sections}
    model = padt_core.build(recipe, overrides).eval()
    sharpen(model, seed)
    return model
