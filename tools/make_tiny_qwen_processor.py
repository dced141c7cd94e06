"""Regenerate the tiny offline Qwen2.5-VL processor in ``plugins/backbones/assets/tiny_qwen/``.

The tokenizer is a small byte-level BPE trained (deterministically) on a built-in corpus of the
English texts our tasks use, with exactly Qwen2's pre-tokenization (NFC normalizer, Qwen2 split
regex that isolates every digit, ByteLevel with ``use_regex=False``, ByteLevel decoder), followed
by the 22 Qwen2.5-VL added tokens in Qwen's order and with Qwen's ``special`` flags. Everything is
written by transformers' own ``Qwen2_5_VLProcessor.save_pretrained``.

Usage::

    python tools/make_tiny_qwen_processor.py [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "plugins" / "backbones" / "assets" / "tiny_qwen"

# Target size of the trained BPE vocabulary (256 byte symbols + merges); added tokens come on top.
BPE_VOCAB_SIZE = 800
SEED = 1234

# Same regex as transformers' Qwen2Tokenizer (``\p{N}`` alone -> one token per digit).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

# Qwen2.5-VL added tokens, in Qwen's order (ids base+0 .. base+21), with Qwen's ``special`` flag.
QWEN25VL_ADDED_TOKENS: list[tuple[str, bool]] = [
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
# Qwen2.5-VL's ``additional_special_tokens`` (``extra_special_tokens`` in transformers 5).
QWEN25VL_EXTRA_SPECIAL = [tok for tok, _ in QWEN25VL_ADDED_TOKENS[1:14]]

# Qwen2.5-VL-Instruct chat template (default system message, vision placeholders, add_vision_id).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DETECT_PROMPT = "Please carefully check the image and detect the following objects"
REFER_PROMPT = "Please carefully check the image and detect the object this sentence describes"

COLOURS = [
    "red", "green", "blue", "yellow", "orange", "purple", "white", "black", "gray", "pink", "brown", "cyan",
]  # fmt: skip
SHAPES = ["circle", "square", "triangle", "star", "rectangle", "ellipse", "hexagon", "cross", "diamond"]
SIZES = ["small", "large", "big", "tiny", "medium"]
POSITIONS = ["left", "right", "top", "bottom", "middle"]
RELATIONS = ["above", "below", "left of", "right of", "next to", "near", "under", "over", "between"]

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

CHAT_WORDS = [
    "system", "user", "assistant", "You are a helpful assistant.", "Picture 1: ", "Video 1: ",
    "Please describe this image.", "What is in this image?", "Answer:", "Yes", "No", "image", "picture",
]  # fmt: skip


def _shape_phrase(rng: random.Random) -> str:
    """A random noun phrase like ``small red circle`` (size optional)."""
    words = []
    if rng.random() < 0.6:
        words.append(rng.choice(SIZES))
    words.append(rng.choice(COLOURS))
    words.append(rng.choice(SHAPES))
    return " ".join(words)


def _referring_expression(rng: random.Random) -> str:
    """A short referring expression about coloured shapes."""
    kind = rng.randrange(4)
    if kind == 0:
        return f"the {_shape_phrase(rng)} on the {rng.choice(POSITIONS)}"
    if kind == 1:
        return f"the {_shape_phrase(rng)} {rng.choice(RELATIONS)} the {_shape_phrase(rng)}"
    if kind == 2:
        return f"the {rng.choice(POSITIONS)} {_shape_phrase(rng)}"
    return f"the {_shape_phrase(rng)}"


def _caption(rng: random.Random) -> str:
    """A short caption about coloured shapes."""
    kind = rng.randrange(4)
    if kind == 0:
        return f"a {_shape_phrase(rng)} {rng.choice(RELATIONS)} a {_shape_phrase(rng)}"
    if kind == 1:
        return f"A {_shape_phrase(rng)} at the {rng.choice(POSITIONS)} of the image."
    if kind == 2:
        n = rng.randint(2, 9)
        a, b, c = (_shape_phrase(rng) for _ in range(3))
        return f"There are {n} shapes: a {a}, a {b} and a {c}."
    a, b = _shape_phrase(rng), _shape_phrase(rng)
    return f"An image with a {a} and a {b} on a {rng.choice(COLOURS)} background."


def _category(rng: random.Random) -> str:
    """A category name: a COCO class or a shape phrase."""
    return rng.choice(COCO_NAMES) if rng.random() < 0.6 else _shape_phrase(rng)


def _obj_list(start: int, count: int) -> str:
    """``<|Obj_0|>, <|Obj_1|>`` style placeholder list (plain text here, never added tokens)."""
    return ", ".join(f"<|Obj_{k}|>" for k in range(start, start + count))


def _detection_answer(rng: random.Random) -> str:
    """An answer in the detection template, with 0..3 categories."""
    n_cat = rng.choice([0, 1, 1, 2, 3])
    if n_cat == 0:
        return "No objects from the list are present in the image."
    if n_cat == 1:
        cat, count = _category(rng), rng.randint(1, 5)
        if count == 1:
            return f'There is 1 "{cat}" (<|Obj_0|>) in this image.'
        return f'There are {count} "{cat}" ({_obj_list(0, count)}) in this image.'
    parts, start = [], 0
    for _ in range(n_cat):
        count = rng.randint(1, 3)
        parts.append(f'{count} "{_category(rng)}" ({_obj_list(start, count)})')
        start += count
    return f"In this image, there are {', '.join(parts)}."


def _bbox_json(rng: random.Random) -> str:
    """Qwen-style grounding JSON (single object or a list)."""

    def one() -> str:
        x0, y0 = rng.randint(0, 500), rng.randint(0, 500)
        x1, y1 = x0 + rng.randint(5, 400), y0 + rng.randint(5, 400)
        label = _shape_phrase(rng) if rng.random() < 0.5 else rng.choice(COCO_NAMES)
        return json.dumps({"bbox_2d": [x0, y0, x1, y1], "label": label})

    if rng.random() < 0.5:
        return one()
    return "[" + ", ".join(one() for _ in range(rng.randint(2, 3))) + "]"


def build_corpus(seed: int = SEED) -> list[str]:
    """The deterministic training corpus (a list of short texts)."""
    rng = random.Random(seed)
    texts: list[str] = list(CHAT_WORDS)
    texts += COCO_NAMES + [name.capitalize() for name in COCO_NAMES]
    texts += [" ".join(t) for t in itertools.product(SIZES, COLOURS, SHAPES)]
    texts += ["0 1 2 3 4 5 6 7 8 9", "10, 20, 30, 40, 50, 60, 70, 80, 90, 100"]
    # The verbatim examples from the prompt/answer templates.
    texts += [
        'Please carefully check the image and detect the following objects: ["person", "car"].',
        'There is 1 "person" (<|Obj_0|>) in this image.',
        'There are 3 "car" (<|Obj_0|>, <|Obj_1|>, <|Obj_2|>) in this image.',
        'In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).',
        "No objects from the list are present in the image.",
        'Please carefully check the image and detect the object this sentence describes: "the red circle".',
        'The "the red circle" refers to <|Obj_0|> in this image.',
        "Please describe this image.",
        '{"bbox_2d": [12, 40, 96, 120], "label": "red circle"}',
        "You are a helpful assistant.",
    ]
    for _ in range(400):
        texts.append(_referring_expression(rng))
        texts.append(_caption(rng))
        cats = [_category(rng) for _ in range(rng.randint(1, 4))]
        texts.append(f"{DETECT_PROMPT}: {json.dumps(cats)}.")
        texts.append(_detection_answer(rng))
        expr = _referring_expression(rng)
        texts.append(f'{REFER_PROMPT}: "{expr}".')
        texts.append(f'The "{expr}" refers to <|Obj_{rng.randint(0, 9)}|> in this image.')
        cat = _category(rng)
        texts.append(f"Locate the {cat} in the image and output the bbox coordinates in JSON format.")
        texts.append(_bbox_json(rng))
        # Role headers as rendered by the chat template (the special tokens themselves stay out).
        texts.append("system\nYou are a helpful assistant.")
        texts.append(f"user\n{_caption(rng)}")
        texts.append(f"assistant\n{_referring_expression(rng)}")
    return texts


def train_bpe(corpus: list[str], vocab_size: int = BPE_VOCAB_SIZE) -> Tokenizer:
    """Train a Qwen2-style byte-level BPE and append the Qwen2.5-VL added tokens."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False, add_prefix_space=False, use_regex=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN25VL_ADDED_TOKENS])
    return tok


def build_processor(tok: Tokenizer, workdir: Path) -> Qwen2_5_VLProcessor:
    """Wrap the trained tokenizer into a ``Qwen2_5_VLProcessor`` with default Qwen2.5-VL vision settings."""
    from transformers import AddedToken as HFAddedToken
    from transformers import Qwen2_5_VLProcessor, Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    base = tok.get_vocab_size(with_added_tokens=False)
    tok_file = workdir / "tokenizer.json"
    tok.save(str(tok_file))
    added = {
        base + i: HFAddedToken(t, special=s, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for i, (t, s) in enumerate(QWEN25VL_ADDED_TOKENS)
    }
    tokenizer = Qwen2Tokenizer(
        tokenizer_file=str(tok_file),
        added_tokens_decoder=added,
        extra_special_tokens=QWEN25VL_EXTRA_SPECIAL,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=131072,
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    image_processor = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    video_processor = Qwen2VLVideoProcessor()
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def main() -> None:
    """Train the tokenizer, build the processor and save it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (recreated)")
    args = parser.parse_args()

    tok = train_bpe(build_corpus())
    readme = args.out / "README.md"
    readme_text = readme.read_text() if readme.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        processor = build_processor(tok, Path(tmp))
        if args.out.exists():
            shutil.rmtree(args.out)
        processor.save_pretrained(str(args.out))
    if readme_text is not None:
        readme.write_text(readme_text)

    t = processor.tokenizer
    ids = {name: t.convert_tokens_to_ids(name) for name, _ in QWEN25VL_ADDED_TOKENS}
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size} bytes), len(tokenizer)={len(t)}")
    print(json.dumps(ids, indent=1))


if __name__ == "__main__":
    main()
