"""Visual Reference Tokens: ids, strings, VRT-aware decoding and the completion parser.

VRT ``k`` names cell ``k`` (raster order) of *the sample's own* image and has token id ``V + k``,
where ``V`` is the number of rows of the LLM input embedding table; a sample with several images
numbers the concatenation of their cells (image 0's first, ``docs/multi-image.md``). Ids are local to
a sample: there are no batch-global offsets anywhere in padt. Tokenizers know nothing of ids ``>= V``, so turning
generated ids into text is done here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "VRT_PATTERN",
    "ParsedCompletion",
    "ParsedObject",
    "VRTCodec",
    "vrt_string",
    "vrt_strings",
]

VRT_PATTERN = re.compile(r"<\|VRT_(\d+)\|>")
_QUOTED = re.compile(r'"([^"]*)"')


def vrt_string(k: int) -> str:
    """``<|VRT_k|>``."""
    return f"<|VRT_{int(k)}|>"


def vrt_strings(cells: Iterable[int]) -> str:
    """VRT strings written back to back, no separators (the format the model learns)."""
    return "".join(vrt_string(k) for k in cells)


@dataclass
class ParsedObject:
    """One run of consecutive VRTs and the quoted label before it.

    ``vrt`` are the VRT numbers as emitted (``<|VRT_k|>``: over the concatenation of the sample's images'
    cells); ``image`` is the image of the sample they lie in (0 for a single image) and ``cells`` their
    raster cells in that image's grid (``vrt`` minus the image's offset; ``vrt`` itself for one image).
    ``steps`` are the positions of the VRTs in the parsed id sequence; the decoder reads the LLM
    hidden state that emitted each of them.
    """

    label: str
    vrt: list[int]
    steps: list[int]
    image: int = 0
    cells: list[int] | None = None  # None: the same as ``vrt`` (filled in)

    def __post_init__(self) -> None:
        if self.cells is None:
            self.cells = list(self.vrt)


@dataclass
class ParsedCompletion:
    text: str
    objects: list[ParsedObject] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what the parser ignored, and why
    truncated: bool = False  # no end-of-sequence token was found


class VRTCodec:
    """Maps between text, token ids and VRTs for one tokenizer and one embedding table size ``V``.

    Prompts may contain ``<|VRT_k|>`` strings: they are registered in the tokenizer as added tokens
    (lazily, only the ones used) and remapped to ``V + k`` after tokenisation.
    """

    def __init__(self, tokenizer, vocab_rows: int, eos_token_ids: Sequence[int], pad_token_id: int | None = None):
        self.tokenizer = tokenizer
        self.vocab_rows = int(vocab_rows)
        self.eos_token_ids = {int(i) for i in eos_token_ids}
        self.pad_token_id = pad_token_id

    # --- prompts with VRTs -----------------------------------------------------------------------
    def _added_vrt_ids(self) -> dict[int, int]:
        """``{tokenizer id: k}`` of the VRT strings registered in the tokenizer."""
        out = {}
        for text, tid in self.tokenizer.get_added_vocab().items():
            m = VRT_PATTERN.fullmatch(text)
            if m:
                out[tid] = int(m.group(1))
        return out

    def register_prompt_vrts(self, texts: Iterable[str]) -> None:
        """Make every ``<|VRT_k|>`` in ``texts`` a single token of the tokenizer."""
        from tokenizers import AddedToken

        wanted = {int(k) for t in texts for k in VRT_PATTERN.findall(t)}
        missing = wanted - set(self._added_vrt_ids().values())
        if missing:
            self.tokenizer.add_tokens(
                [AddedToken(vrt_string(k), normalized=False, special=False) for k in sorted(missing)]
            )

    def to_model_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Replace tokenizer ids of registered VRT strings by ``V + k``."""
        mapping = self._added_vrt_ids()
        if not mapping:
            return input_ids
        out = input_ids.clone()
        for tid, k in mapping.items():
            out[input_ids == tid] = self.vocab_rows + k
        return out

    # --- decoding --------------------------------------------------------------------------------
    def _segments(self, ids: Sequence[int]) -> Iterable[tuple[bool, list[int], int]]:
        """Split ids into runs: ``(is_vrt, ids, start)``."""
        start = 0
        while start < len(ids):
            vrt = ids[start] >= self.vocab_rows
            end = start
            while end < len(ids) and (ids[end] >= self.vocab_rows) == vrt:
                end += 1
            yield vrt, list(ids[start:end]), start
            start = end

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ids, VRTs rendered as ``<|VRT_k|>``; stops at the first EOS, drops padding."""
        ids = self._until_eos(ids)[0]
        parts = []
        for vrt, run, _ in self._segments(ids):
            if vrt:
                parts.append(vrt_strings(i - self.vocab_rows for i in run))
            else:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=skip_special_tokens))
        return "".join(parts)

    def _until_eos(self, ids: Sequence[int] | torch.Tensor) -> tuple[list[int], bool]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if i in self.eos_token_ids:
                return out, True
            if i == self.pad_token_id or i < 0:
                continue
            out.append(i)
        return out, False

    def parse(
        self,
        ids: Sequence[int] | torch.Tensor,
        num_cells: int | None = None,
        image_cells: Sequence[int] | None = None,
    ) -> ParsedCompletion:
        """Group each run of consecutive VRTs into one object, labelled by the last quoted text before it.

        Never raises: out-of-image VRTs, runs without a label and truncated output are reported in
        ``skipped``/``truncated`` and parsing goes on. ``steps`` index into ``ids`` as given
        (padding and the EOS included), so they address generation steps directly.

        Args:
            ids: the completion's ids.
            num_cells: the sample's VRT vocabulary (VRTs at or past it are skipped); ``None``: no limit.
            image_cells: the cells of each of the sample's images, in order (several images: VRT ``k``
                numbers their concatenation). Each object then gets its image and its cells in that
                image; a run whose VRTs lie in two images is rejected whole and reported in ``skipped``
                (``docs/multi-image.md``). Implies ``num_cells = sum(image_cells)``.
        """
        if image_cells is not None:
            num_cells = sum(int(n) for n in image_cells)
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        # positions of kept ids in the original sequence (padding is dropped, EOS ends parsing)
        kept: list[int] = []
        positions: list[int] = []
        truncated = True
        for pos, i in enumerate(ids):
            i = int(i)
            if i in self.eos_token_ids:
                truncated = False
                break
            if i == self.pad_token_id or i < 0:
                continue
            kept.append(i)
            positions.append(pos)

        result = ParsedCompletion(text="", truncated=truncated)
        text_so_far: list[str] = []
        label: str | None = None
        for vrt, run, start in self._segments(kept):
            if not vrt:
                piece = self.tokenizer.decode(run, skip_special_tokens=False)
                text_so_far.append(piece)
                if '"' in piece:  # only a new quote can change the label (no re-scan per segment)
                    quoted = _QUOTED.findall("".join(text_so_far))
                    if quoted:
                        label = quoted[-1].strip()
                continue
            cells = [i - self.vocab_rows for i in run]
            text_so_far.append(vrt_strings(cells))
            keep = [j for j, k in enumerate(cells) if num_cells is None or k < num_cells]
            for j in range(len(cells)):
                if j not in keep:
                    result.skipped.append(
                        f"VRT {cells[j]} at step {positions[start + j]} is outside the image ({num_cells} cells)"
                    )
            if not keep:
                continue
            image, local = 0, None
            if image_cells is not None and len(image_cells) > 1:
                images = [_image_of(cells[j], image_cells) for j in keep]
                if len(set(images)) > 1:
                    result.skipped.append(
                        f"VRT run at step {positions[start]} crosses images {min(images)} and {max(images)}: "
                        "rejected (an object lies in one image)"
                    )
                    continue
                image = images[0]
                local = [cells[j] - sum(image_cells[:image]) for j in keep]
            if label is None:
                result.skipped.append(f"VRT run at step {positions[start]} has no quoted label before it")
            result.objects.append(
                ParsedObject(
                    label=label or "",
                    vrt=[cells[j] for j in keep],
                    steps=[positions[start + j] for j in keep],
                    image=image,
                    cells=local,
                )
            )
        result.text = "".join(text_so_far)
        return result


def _image_of(k: int, image_cells: Sequence[int]) -> int:
    """The image whose cells VRT ``k`` (over the concatenation) falls in."""
    for image, n in enumerate(image_cells):
        if k < n:
            return image
        k -= n
    return len(image_cells) - 1
