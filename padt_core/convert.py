"""Released PaDT checkpoints → padt model directories (reference §10).

The published checkpoints (``PaDT-MLLM/PaDT_{OVD,REC,RIC,Pro}_{3B,7B}``) keep the reference code's
layout::

    config.json                 the base model's config (transformers 4.50) + "vl_decoder": {...}
                                + "use_visual_prototype_projection"
    model.safetensors           or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    generation_config.json, processor/tokenizer files (the tokenizer may hold <|empty_token_*|> fillers
                                and <|VRT_*|> tokens: both are tolerated, VRT k stays id V + k)

    keys   <multimodal LLM, transformers-4.50 names>   -> the backbone plugin's ``released_key_prefixes``
           vis_norm.{weight,bias}, vis_proj.{0,1}.weight -> projection.{norm, down, up}   (this module)
           vl_decoder.*                                  -> the trunk plugin's ``released_state_dict``

Every key is accounted for: a key nothing maps (``unmapped``), a model key nothing fills
(``missing``), a mapped key the model lacks (``unexpected``) or a shape that differs is an error
listing all of them at once; nothing is dropped. A tied output embedding stored anyway must equal the
input embedding. Converted models default to ``decoder.layout: reference`` (``layout.py``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .backbone import HubUnreachableError
from .dtypes import DTYPES
from .recipe import Recipe, load_recipe, parse_overrides

if TYPE_CHECKING:
    from .model import PaDTModel

__all__ = [
    "DEFAULT_TEMPLATE",
    "ConversionError",
    "ReleasedCheckpoint",
    "convert",
    "convert_state_dict",
    "is_released_checkpoint",
    "load_released",
    "released_recipe",
    "resolve_checkpoint",
]

DEFAULT_TEMPLATE = "padt_pro_3b_released"  # bundled recipe the converter fills from the checkpoint's config
_PROJECTION_KEYS = {  # released key -> PaDTModel key (reference §3.1: LN(e) + vis_proj(LN(e)))
    "vis_norm.weight": "projection.norm.weight",
    "vis_norm.bias": "projection.norm.bias",
    "vis_proj.0.weight": "projection.down.weight",
    "vis_proj.1.weight": "projection.up.weight",
}
_PADT_CONFIG_KEYS = ("vl_decoder", "use_visual_prototype_projection")  # PaDT's additions to config.json
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


class ConversionError(ValueError):
    """A released checkpoint does not match the model it should fill; the message lists every problem."""


# ---------------------------------------------------------------------------------------------------
# Finding and reading a checkpoint
# ---------------------------------------------------------------------------------------------------


def is_released_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint in the published layout (``config.json`` with ``vl_decoder``)."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    try:
        return "vl_decoder" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def looks_like_hub_id(source: str | os.PathLike) -> bool:
    """``org/name`` that is not a path on this machine."""
    return not Path(source).exists() and bool(_HUB_ID.match(str(source)))


def resolve_checkpoint(source: str | os.PathLike, revision: str | None = None) -> Path:
    """The local directory of a released checkpoint: ``source`` itself, or its hub snapshot (downloaded).

    Raises ``HubUnreachableError`` when a hub id cannot be fetched, ``FileNotFoundError`` for a missing
    path, ``ConversionError`` for a directory that is not in the published layout.
    """
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory (a released PaDT checkpoint is a directory)")
        if not is_released_checkpoint(path):
            raise ConversionError(
                f"{path} is not a released PaDT checkpoint: its config.json is missing or has no 'vl_decoder' "
                f"entry (reference §10.1)"
            )
        return path
    if not looks_like_hub_id(source):
        raise FileNotFoundError(f"{source} is neither a directory nor a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(str(source), revision=revision)
    except OSError as err:
        raise HubUnreachableError(
            f"could not fetch {str(source)!r}: the Hugging Face hub cannot be reached from here or the id is "
            f"wrong ({type(err).__name__}: {(str(err).splitlines() or [''])[0]}); no local directory of that "
            f"name exists either. Download it on a connected machine (`hf download {source} --local-dir DIR`) "
            f"and pass DIR instead."
        ) from err
    return resolve_checkpoint(local)


class ReleasedCheckpoint(Mapping[str, torch.Tensor]):
    """The tensors of a checkpoint directory (single or sharded safetensors), read on access.

    ``read`` records every key that was accessed, so the converter can name the keys nothing used.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.read: set[str] = set()
        self._handles: dict[Path, Any] = {}
        index = self.directory / _INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index}: no 'weight_map' (key -> shard file)")
            self._files = {key: self.directory / name for key, name in weight_map.items()}
            absent = sorted({str(f) for f in self._files.values() if not f.is_file()})
            if absent:
                raise ConversionError(f"{index} names shard files that do not exist: {absent}")
        elif (self.directory / _SINGLE).is_file():
            single = self.directory / _SINGLE
            self._files = dict.fromkeys(self._open(single).keys(), single)
        else:
            found = sorted(p.name for p in self.directory.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
            extra = f"; found {found} (only safetensors are read)" if found else ""
            raise ConversionError(f"{self.directory} has neither {_SINGLE} nor {_INDEX}{extra}")

    def _open(self, file: Path) -> Any:
        """The file's safetensors handle (opened once); ``ConversionError`` for a damaged file."""
        if file not in self._handles:
            from safetensors import SafetensorError, safe_open

            try:
                self._handles[file] = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError) as err:
                reason = (str(err).splitlines() or [type(err).__name__])[0]
                raise ConversionError(
                    f"{file} is not a complete safetensors file ({reason}): truncated or corrupted; download it again"
                ) from None
        return self._handles[file]

    def __getitem__(self, key: str) -> torch.Tensor:
        handle = self._open(self._files[key])
        self.read.add(key)
        return handle.get_tensor(key)

    def __contains__(self, key: object) -> bool:  # Mapping's default would read (and mark) the tensor
        return key in self._files

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key`` without loading it (and without marking it read)."""
        return tuple(self._open(self._files[key]).get_slice(key).get_shape())


class _Prefixed(Mapping[str, torch.Tensor]):
    """The keys of ``base`` under ``prefix``, prefix removed (reads go through ``base``)."""

    def __init__(self, base: Mapping[str, torch.Tensor], prefix: str) -> None:
        self.base, self.prefix = base, prefix
        self._keys = {k[len(prefix) :]: None for k in base if k.startswith(prefix)}  # ordered set

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self.base[self.prefix + key]

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


# ---------------------------------------------------------------------------------------------------
# The recipe of a converted checkpoint
# ---------------------------------------------------------------------------------------------------


def released_recipe(
    directory: str | os.PathLike,
    *,
    source: str | None = None,
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> Recipe:
    """The recipe for a released checkpoint in ``directory``.

    Without ``recipe``, the bundled ``padt_pro_3b_released`` template is filled from the checkpoint:
    decoder widths from ``vl_decoder``, ``vrt.projection`` from ``use_visual_prototype_projection``,
    ``vrt.rank`` from ``vis_proj.0.weight``, the dtype from ``config.json``. A given ``recipe`` is used
    as it is (the weights must then fit it). Either way ``backbone.pretrained`` points at ``directory``
    (its architecture and processor) and ``released_checkpoint`` at ``source``; ``overrides`` apply last.
    """
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    source = str(source or directory)
    auto: dict[str, Any] = {"backbone.pretrained": str(directory), "released_checkpoint": source}
    if recipe is None:
        recipe = DEFAULT_TEMPLATE
        auto.update(_settings_from_config(directory, config))
        auto["name"] = Path(source).name
        auto["description"] = f"released PaDT checkpoint {source}, converted (reference layout)"
    given = parse_overrides(overrides)
    return load_recipe(recipe, {**auto, **given})


def _settings_from_config(directory: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    dec = config.get("vl_decoder")
    if not isinstance(dec, Mapping):
        raise ConversionError(f"{directory / 'config.json'}: 'vl_decoder' must be a mapping, got {dec!r}")
    out: dict[str, Any] = {}
    for ours, theirs in (("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size")):
        if theirs in dec:
            out[f"decoder.trunk.{ours}"] = int(dec[theirs])
    if "num_heads" in dec:
        out["decoder.trunk.num_heads"] = int(dec["num_heads"])
    projection = bool(config.get("use_visual_prototype_projection", True))  # the reference's default (§5.1)
    out["vrt.projection"] = projection
    checkpoint = ReleasedCheckpoint(directory)
    if projection and "vis_proj.0.weight" in checkpoint:
        out["vrt.rank"] = checkpoint.shape("vis_proj.0.weight")[0]
    dtype = config.get("torch_dtype", config.get("dtype"))
    if dtype in DTYPES:  # a torch_dtype padt can load in
        out["backbone.dtype"] = dtype
    return out


def _check_config(directory: Path, config: Mapping[str, Any], recipe: Recipe) -> None:
    """Facts of ``config.json`` the recipe must agree with (decoder LLM width, reference layout geometry)."""
    problems = []
    dec = config.get("vl_decoder") or {}
    text = config.get("text_config") or config
    llm = dec.get("llm_hidden_state")
    if llm is not None and text.get("hidden_size") is not None and int(llm) != int(text["hidden_size"]):
        problems.append(f"vl_decoder.llm_hidden_state {llm} != LLM hidden_size {text['hidden_size']}")
    if recipe.decoder is not None and recipe.decoder.layout == "reference":
        from .layout import ReferenceLayout

        layout = ReferenceLayout()
        vision = config.get("vision_config") or {}
        merge = int(vision.get("spatial_merge_size", dec.get("spatial_merge_size", layout.merge)))
        window = int(vision.get("window_size", 112)) // int(vision.get("patch_size", 14)) // max(merge, 1)
        if (merge, window) != (layout.merge, layout.window):
            problems.append(
                f"decoder.layout 'reference' reproduces merge {layout.merge} / windows of {layout.window} cells "
                f"(Qwen2.5-VL); the checkpoint's vision_config gives merge {merge} / windows of {window}"
            )
    if problems:
        raise ConversionError(f"{directory / 'config.json'}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------------


def convert_state_dict(checkpoint: ReleasedCheckpoint, model: PaDTModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict (every key, tied aliases included) from a released checkpoint.

    ``model`` may live on the meta device: only its keys, shapes, dtypes and ties are used. Raises
    ``ConversionError`` listing every unmapped, missing or unexpected key and every shape mismatch.
    """
    from .plugins import get_plugin

    backbone_cls = type(model.backbone)
    rules = backbone_cls.released_key_prefixes
    if not rules:
        raise ConversionError(f"backbone {backbone_cls.name!r} cannot read released PaDT checkpoints")
    produced: dict[str, torch.Tensor] = {}
    for key in checkpoint:
        for source, target in rules:
            if key.startswith(source):
                produced[f"backbone.{target}{key[len(source) :]}"] = checkpoint[key]
                break
    if model.recipe.vrt.projection:
        for key, target in _PROJECTION_KEYS.items():
            if key in checkpoint:
                produced[target] = checkpoint[key]
    if model.decoder is not None:
        trunk_cls = get_plugin("trunks", model.recipe.decoder.trunk.name)
        decoder = trunk_cls.released_state_dict(_Prefixed(checkpoint, "vl_decoder."), list(model.decoder.heads))
        produced.update({f"decoder.{k}": v for k, v in decoder.items()})

    targets = model.state_dict(keep_vars=True)
    canonical: dict[str, str] = {}  # every key -> the first key holding the same tensor (tied weights)
    first: dict[int, str] = {}
    for key, tensor in targets.items():
        canonical[key] = first.setdefault(id(tensor), key)
    problems: list[str] = []
    for alias, owner in canonical.items():
        if alias == owner or alias not in produced:
            continue
        if owner in produced and not torch.equal(produced[alias], produced[owner]):
            problems.append(f"{alias} differs from {owner}, but the model ties them")
        produced.setdefault(owner, produced.pop(alias))
        produced.pop(alias, None)

    unmapped = sorted(set(checkpoint) - checkpoint.read)
    missing = sorted(k for k, owner in canonical.items() if k == owner and k not in produced)
    unexpected = sorted(set(produced) - set(canonical))
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(targets[k].shape)}"
        for k, v in sorted(produced.items())
        if k in targets and tuple(v.shape) != tuple(targets[k].shape)
    ]
    for title, items in (
        ("unmapped checkpoint keys (nothing in the model takes them)", unmapped),
        ("missing model keys (nothing in the checkpoint fills them)", missing),
        ("unexpected keys (mapped, but the model has no such key)", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            problems.append(f"{len(items)} {title}: {', '.join(items)}")
    if problems:
        raise ConversionError(
            f"{checkpoint.directory} does not fit recipe {model.recipe.name!r}:\n  " + "\n  ".join(problems)
        )
    # One cast per tied group: a cast per alias (checkpoint bf16, model fp32) would make two tensors of one
    # tied weight, saved twice and refused on load ("unexpected keys [...embed_tokens.weight]").
    cast: dict[str, torch.Tensor] = {}
    for owner in dict.fromkeys(canonical.values()):
        cast[owner] = produced[owner].to(targets[owner].dtype)
    return {k: cast[owner] for k, owner in canonical.items()}


# ---------------------------------------------------------------------------------------------------
# Converting and loading
# ---------------------------------------------------------------------------------------------------


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a released checkpoint (hub id or directory) into a padt model directory at ``destination``.

    The result (safetensors + resolved recipe + processor files) loads with ``padt_core.load``.
    """
    from .model import PaDTModel

    directory = resolve_checkpoint(source, revision)
    resolved = released_recipe(directory, source=str(source), recipe=recipe, overrides=overrides)
    config = json.loads((directory / "config.json").read_text())
    _check_config(directory, config, resolved)
    model = PaDTModel.from_recipe(resolved, meta=True)  # structure only; the tensors come from the checkpoint
    for cfg in (model.backbone.hf_model.config, model.backbone.hf_model.config.get_text_config()):
        for key in _PADT_CONFIG_KEYS:  # consumed into the recipe; the backbone's config stays a plain HF one
            if hasattr(cfg, key):
                delattr(cfg, key)
    checkpoint = ReleasedCheckpoint(directory)
    state = convert_state_dict(checkpoint, model)
    model.load_state_dict(state, strict=True, assign=True)
    _retie(model)
    # The saved recipe names the source (hub id or path), not a local snapshot folder.
    model.recipe = load_recipe(resolved, {"backbone.pretrained": str(source)})
    return model.save_pretrained(destination, overwrite=overwrite)


def _retie(model: PaDTModel) -> None:
    """Tie again what the architecture ties: ``assign=True`` wraps every key in its own ``Parameter``, so the
    tied output embedding would be a separate parameter sharing storage (and drift apart once trained)."""
    model.backbone.hf_model.tie_weights()


def load_released(
    source: str | os.PathLike,
    *,
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    revision: str | None = None,
    map_location: str | torch.device = "cpu",
) -> PaDTModel:
    """A released checkpoint, converted into a temporary directory and loaded (``padt convert`` keeps the result)."""
    from .model import PaDTModel

    with tempfile.TemporaryDirectory(prefix="padt-convert-") as tmp:
        out = convert(source, Path(tmp) / "model", recipe=recipe, overrides=overrides, revision=revision)
        return PaDTModel.from_pretrained(out, map_location=map_location)
