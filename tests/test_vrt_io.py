"""The prepared VRT input/output (``padt_core/vrt_io.py``): same values as the hook version it replaced,
no extra operations per decoding step, modules restored, and never-generate ids masked."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import TINY_RECIPES
from helpers import noise_image
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LogitsProcessor

import padt_core
import padt_core.vrt_io as vrt_io_module
from padt_core.embedding import embed_with_bank
from padt_core.head import extend_logits

pytestmark = pytest.mark.usefixtures("one_thread")


@contextmanager
def hooked(model, bank):
    """The forward-hook implementation ``vrt_io`` had before it was prepared per call (the reference)."""
    hf = model.backbone.hf_model
    emb, head, vocab = hf.get_input_embeddings(), hf.get_output_embeddings(), model.backbone.vocab_rows
    pending = []

    def embed_pre(_module, args):
        pending.append(args[0])
        return (args[0].masked_fill(args[0] >= vocab, 0),)

    handles = [
        emb.register_forward_pre_hook(embed_pre),
        emb.register_forward_hook(lambda _m, _a, out: embed_with_bank(out, pending.pop(), vocab, bank)),
        head.register_forward_hook(lambda _m, args, out: extend_logits(out, args[0], bank)),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _generate(model, batch, encoded, io):
    hf = model.backbone.hf_model
    config = model.generation_config(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with io:
        out = hf.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            generation_config=config,
            output_logits=True,
            return_dict_in_generate=True,
            **model.backbone.model_inputs(batch),
            **padt_core.model._fresh(encoded.model_kwargs),
        )
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("recipe", TINY_RECIPES)
@pytest.mark.parametrize("fused_bytes", [None, 0], ids=["fused", "general"])
def test_prepared_io_equals_the_hooks(tiny_models, recipe, fused_bytes):
    """Generated ids, their logits and teacher-forced logits against the hook version, bit for bit, at
    batch 1 and 2 (two image sizes: a padded bank; one size: none), on both paths."""
    model = tiny_models(recipe)
    hf, vocab = model.backbone.hf_model, model.backbone.vocab_rows
    images = [noise_image(140, 252, 1), noise_image(90, 60, 2), noise_image(140, 252, 3)]
    for chosen in ([0], [0, 1], [0, 2]):  # batch 1; batch 2 with a padded bank (baddbmm); without padding (bmm)
        n = len(chosen)
        batch = model.prepare([images[i] for i in chosen], ["find the red circle", "hi"][:n])
        encoded = model.encode(batch)
        ref_ids, ref_logits = _generate(model, batch, encoded, hooked(model, encoded.bank))
        io = vrt_io_module.vrt_io(hf, encoded.bank, vocab, fused_bytes=fused_bytes)
        ids, logits = _generate(model, batch, encoded, io)
        assert torch.equal(ids, ref_ids)
        assert (ids[:, batch["input_ids"].shape[1] :] >= vocab).any()  # the VRT path ran
        assert torch.equal(logits, ref_logits)
        completion = ids[:, batch["input_ids"].shape[1] :]
        with torch.no_grad():
            padt = model.forward(batch, completion, encoded=encoded).logits
            model.vrt_io = lambda bank, capture=None, suppress=(): hooked(model, bank)  # the instance's, for one pass
            try:
                reference = model.forward(batch, completion, encoded=encoded).logits
            finally:
                del model.vrt_io
        assert torch.equal(padt, reference)


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _step_ops(model, bank, n: int, padt: bool) -> int:
    """Aten operations of one decoding step's embedding + classifier (ids [n, 1] -> logits)."""
    hf = model.backbone.hf_model
    emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    ids = torch.full((n, 1), model.backbone.vocab_rows + 1 if padt else 5)
    io = vrt_io_module.vrt_io(hf, bank, model.backbone.vocab_rows) if padt else contextmanager(lambda: (yield))()
    with torch.no_grad(), io:
        emb(ids)  # first call of a batch size prepares the tables (once per call, not per step)
        head(torch.randn(n, 1, model.backbone.hidden_size))
        with _Count() as count:
            head(emb(ids))
    return count.ops


def test_a_step_costs_the_plain_backbones_operations(tiny_model):
    """Batch 1: exactly the plain step's aten operations; batch n: one more. The embedding adds the
    per-sample row offset; the classifier's ``addmm`` + ``bmm`` + ``copy_`` into one logits buffer
    take the place of the plain ``t`` + ``view`` + ``mm`` + ``_unsafe_view`` (no ``cat``: one fused
    classifier per sample would read n weight copies per step)."""
    images = [noise_image(56, 56, i) for i in range(3)]
    for n in (1, 3):
        encoded = tiny_model.encode(tiny_model.prepare(images[:n], ["hi"] * n))
        plain, padt = _step_ops(tiny_model, encoded.bank, n, False), _step_ops(tiny_model, encoded.bank, n, True)
        assert padt == plain + (0 if n == 1 else 1), (n, plain, padt)


def test_step_logits_held_by_a_caller_are_never_overwritten(tiny_model):
    """The batch-n step classifier writes into a buffer reused from step to step, but only while nobody
    holds the last step's logits: a kept result (or only a view of it) stays as it was."""
    hf, vocab = tiny_model.backbone.hf_model, tiny_model.backbone.vocab_rows
    head = hf.get_output_embeddings()
    encoded = tiny_model.encode(tiny_model.prepare([noise_image(56, 56, i) for i in range(2)], ["hi"] * 2))
    h1, h2 = torch.randn(2, 2, 1, tiny_model.backbone.hidden_size).unbind(0)
    with torch.no_grad():
        expected = [extend_logits(torch.nn.functional.linear(h, head.weight), h, encoded.bank) for h in (h1, h2)]
        with vrt_io_module.vrt_io(hf, encoded.bank, vocab):
            first = head(h1)
            second = head(h2)  # `first` is held: a new buffer
            assert torch.equal(first, expected[0]) and torch.equal(second, expected[1])
            row = second[:, -1]
            del second
            third = head(h1)  # only a view of `second` is held: still a new buffer
            assert torch.equal(row, expected[1][:, -1]) and torch.equal(third, expected[0])
            if vrt_io_module._USE_COUNT is not None:
                address = third.data_ptr()
                del third
                assert head(h2).data_ptr() == address  # released: the same buffer again


def test_modules_are_restored_even_after_an_error(tiny_model):
    hf = tiny_model.backbone.hf_model
    emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    encoded = tiny_model.encode(tiny_model.prepare([noise_image(56, 56)], ["hi"]))
    with pytest.raises(RuntimeError, match="boom"), tiny_model.vrt_io(encoded.bank):
        assert "forward" in emb.__dict__ and "forward" in head.__dict__
        raise RuntimeError("boom")
    assert "forward" not in emb.__dict__ and "forward" not in head.__dict__
    ids = torch.tensor([[3, 4]])
    assert torch.equal(emb(ids), emb.weight[ids])  # the stock module again


class _Script(LogitsProcessor):
    """Forces ``tokens`` as the first generated ids (after PaDT's logits, so the model's own choice is
    overridden only there); later steps are the model's."""

    def __init__(self, prompt_len: int, tokens: list[int]):
        self.prompt_len, self.tokens = prompt_len, tokens

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        if step < len(self.tokens):
            scores = torch.full_like(scores, -1e9)
            scores[:, self.tokens[step]] = 0.0
        return scores


def test_predict_never_generates_the_image_placeholder(monkeypatch):
    """A model whose classifier prefers ``<|image_pad|>`` at every step: unmasked, the decoder's
    teacher-forced pass of ``predict`` crashes on the extra image token; with the backbone's
    ``never_generate_ids`` (the default) it never emits one and predict answers."""
    torch.manual_seed(0)
    model = padt_core.build("tiny_qwen_shapes").eval()
    backbone = model.backbone
    pad = backbone.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert pad in backbone.never_generate_ids
    with torch.no_grad():
        model.projection.norm.weight.fill_(1.0)
        old = backbone.hf_model.lm_head
        head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[pad] = 1e4  # the placeholder wins every unforced step
    backbone.hf_model.lm_head = head
    image = noise_image(112, 112)
    prompt = "find the red circle"
    prompt_len = model.prepare([image], [prompt])["input_ids"].shape[1]
    label = backbone.tokenizer.encode("circle", add_special_tokens=False)
    script = _Script(prompt_len, [*label, backbone.vocab_rows + 3, backbone.vocab_rows + 4])

    with monkeypatch.context() as patch:
        patch.setattr(type(backbone), "never_generate_ids", property(lambda self: []))
        with pytest.raises(ValueError, match="[Ii]mage features and image tokens do not match"):
            model.predict(image, prompt, max_new_tokens=8, logits_processor=[script])

    (prediction,) = model.predict(image, prompt, max_new_tokens=8, logits_processor=[script])
    assert pad not in prediction.ids and len(prediction.ids) == 8
    assert len(prediction.objects) == 1 and prediction.objects[0].vrt[:2] == [3, 4]
    assert prediction.objects[0].box is not None  # the decoder pass ran
