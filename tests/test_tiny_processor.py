"""Checks for the offline tiny Qwen2.5-VL processor in ``plugins/backbones/assets/tiny_qwen/``.

Regenerate the folder with ``python tools/make_tiny_qwen_processor.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
Image = pytest.importorskip("PIL.Image")

if TYPE_CHECKING:
    from transformers import ProcessorMixin

ASSETS = Path(__file__).resolve().parents[1] / "plugins" / "backbones" / "assets" / "tiny_qwen"

# Qwen2.5-VL added tokens in Qwen's order; ``True`` = special (the tool/fim/repo/file ones are not).
EXPECTED_ADDED: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]

TEMPLATE_SENTENCES = [
    'Please carefully check the image and detect the following objects: ["person", "car"].',
    'There are 3 "car" (<|Obj_0|>, <|Obj_1|>, <|Obj_2|>) in this image.',
    'In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).',
    'The "the small red circle on the left" refers to <|Obj_0|> in this image.',
    '{"bbox_2d": [12, 40, 96, 120], "label": "red circle"}',
    "No objects from the list are present in the image.",
    "Ünïcödé and emoji 🙂 still round-trip\nover lines.",
]


@pytest.fixture()
def processor(monkeypatch: pytest.MonkeyPatch) -> ProcessorMixin:
    """The processor loaded with the hub switched off (nothing may be downloaded)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoProcessor

    assert ASSETS.is_dir(), f"missing {ASSETS}; run tools/make_tiny_qwen_processor.py"
    return AutoProcessor.from_pretrained(str(ASSETS))


def test_folder_is_small() -> None:
    """The assets stay tiny (target < 150 KB)."""
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert size < 150_000, size


def test_loads_offline_with_expected_classes(processor: ProcessorMixin) -> None:
    """AutoProcessor resolves to the Qwen2.5-VL processor and its Qwen2 sub-processors."""
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
    assert type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    ip = processor.image_processor
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (14, 2, 2)
    assert (ip.size["shortest_edge"], ip.size["longest_edge"]) == (3136, 12845056)
    assert 600 <= len(processor.tokenizer) <= 1100


def test_special_tokens(processor: ProcessorMixin) -> None:
    """All Qwen2.5-VL added tokens exist, contiguous, in Qwen's order, with Qwen's special flags."""
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(text) for text, _ in EXPECTED_ADDED]
    print({text: i for (text, _), i in zip(EXPECTED_ADDED, ids, strict=True)})
    assert ids == list(range(ids[0], ids[0] + len(EXPECTED_ADDED)))
    assert ids[-1] == len(tok) - 1
    decoder = tok.added_tokens_decoder
    for (text, special), i in zip(EXPECTED_ADDED, ids, strict=True):
        assert decoder[i].content == text
        assert decoder[i].special is special, text
        assert tok.convert_ids_to_tokens(i) == text
        # Each one encodes to exactly its own id.
        assert tok.encode(text, add_special_tokens=False) == [i]
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == ids[0]
    assert tok.eos_token_id == ids[2]
    assert processor.image_token == "<|image_pad|>"
    assert processor.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert processor.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    # The <|Obj_k|> placeholders are plain text here, not added tokens.
    assert "<|Obj_0|>" not in tok.get_vocab()


@pytest.mark.parametrize("sentence", TEMPLATE_SENTENCES)
def test_round_trip(processor: ProcessorMixin, sentence: str) -> None:
    """decode(encode(s)) == s for template sentences (byte-level BPE is lossless)."""
    tok = processor.tokenizer
    ids = tok.encode(sentence, add_special_tokens=False)
    assert tok.decode(ids) == sentence


def test_digits_split_one_per_token(processor: ProcessorMixin) -> None:
    """As in Qwen, every digit is its own token and no vocab entry holds two digits."""
    tok = processor.tokenizer
    pieces = tok.convert_ids_to_tokens(tok.encode("1234567890", add_special_tokens=False))
    assert pieces == list("1234567890")
    pieces = tok.convert_ids_to_tokens(tok.encode("[12, 340]", add_special_tokens=False))
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "3", "4", "0"]
    assert not [t for t in tok.get_vocab() if sum(c in "0123456789" for c in t) > 1]


def test_chat_template_renders_qwen_format(processor: ProcessorMixin) -> None:
    """Image/text content lists, plain string contents, system default and generation prompt."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Please describe this image."}],
        },
        {"role": "assistant", "content": "a red circle"},
        {"role": "user", "content": "and now?"},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Please describe this image.<|im_end|>\n"
        "<|im_start|>assistant\na red circle<|im_end|>\n"
        "<|im_start|>user\nand now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = processor.apply_chat_template(with_system, tokenize=False, add_generation_prompt=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


def test_image_call_expands_image_pad(processor: ProcessorMixin) -> None:
    """One 100x60 image -> grid_thw.prod() // merge_size**2 image pads, plus mm_token_type_ids."""
    content = [{"type": "image"}, {"type": "text", "text": "detect the red circle"}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.new("RGB", (100, 60), (200, 30, 30))
    # Qwen2_5_VLProcessor sets the class attribute ``return_mm_token_type_ids = True``, so transformers 5
    # returns ``mm_token_type_ids`` by default (0 text, 1 image, 2 video). It can also be requested
    # explicitly as a top-level processor kwarg: ``processor(..., return_mm_token_type_ids=True)``
    # (passing it inside ``text_kwargs`` is deprecated, removal planned for v5.29).
    out = processor(text=[text], images=[image], return_tensors="pt")
    image_pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = out["image_grid_thw"]
    assert grid.shape == (1, 3)
    n_pad = int((out["input_ids"] == image_pad_id).sum())
    assert n_pad == int(grid.prod()) // 4
    assert out["pixel_values"].shape == (int(grid.prod()), 3 * 2 * 14 * 14)
    assert "mm_token_type_ids" in out
    mm = out["mm_token_type_ids"]
    assert mm.shape == out["input_ids"].shape
    assert ((mm == 1) == (out["input_ids"] == image_pad_id)).all()

    explicit = processor(text=[text], images=[image], return_tensors="pt", return_mm_token_type_ids=True)
    assert (explicit["mm_token_type_ids"] == mm).all()
    off = processor(text=[text], images=[image], return_tensors="pt", return_mm_token_type_ids=False)
    assert "mm_token_type_ids" not in off


def test_text_only_batch(processor: ProcessorMixin) -> None:
    """A padded text-only batch works and pads with <|endoftext|>."""
    texts = ["the small red circle on the left", "Please describe this image."]
    out = processor(text=texts, padding=True, return_tensors="pt")
    assert out["input_ids"].shape[0] == 2
    assert "pixel_values" not in out
    assert out["attention_mask"].sum(dim=1).tolist() == [
        len(processor.tokenizer.encode(t, add_special_tokens=False)) for t in texts
    ]
    pad_id = processor.tokenizer.pad_token_id
    assert ((out["input_ids"] == pad_id) == (out["attention_mask"] == 0)).all()
    assert "mm_token_type_ids" in out
    assert int(out["mm_token_type_ids"].sum()) == 0
