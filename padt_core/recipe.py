"""Recipes: YAML files validated by pydantic before anything runs.

A recipe names its plugins (``backbone``, ``decoder.trunk``, ``decoder.heads``, ...) and each plugin
section is validated against that plugin's own ``Config`` model, so a typo anywhere is an error that
names the file and the dotted key. ``extends:`` inherits from another recipe (path relative to the
file, or a bundled recipe name); dotted overrides (``train.lr=1e-5``) apply last.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .data.tasks import check_tasks
from .data.templates import TaskTemplates
from .plugins import PluginConfig, UnknownPluginError, get_plugin

__all__ = [
    "DecoderConfig",
    "GenerationConfig",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "VRTConfig",
    "apply_overrides",
    "bundled_recipes",
    "load_recipe",
    "parse_overrides",
    "recipe_schema",
    "resolve_recipe_path",
]


class RecipeError(ValueError):
    """A recipe could not be found, parsed or validated. The message names the file and key."""


def _describe(error: Mapping[str, Any]) -> str:
    """``key.sub: message (got value)``; no empty location, no echo of whole sections."""
    loc = ".".join(str(p) for p in error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    got = error.get("input")
    shown = (
        "" if isinstance(got, Mapping) or error["type"] in {"plugin_config", "unknown_plugin"} else f" (got {got!r})"
    )
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"


def _plugin_section(kind: str):
    """Annotated type of a recipe section validated against the named plugin's ``Config``."""

    def resolve(value: Any) -> Any:
        if isinstance(value, PluginConfig):
            return value
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or "name" not in value:
            raise PydanticCustomError(
                "plugin_section",
                "expected a mapping with a `name` key (a {kind} plugin), got {value}",
                {"kind": kind, "value": value},
            )
        try:
            cls = get_plugin(kind, value["name"])
        except UnknownPluginError as err:
            raise PydanticCustomError("unknown_plugin", "{msg}", {"msg": str(err)}) from None
        try:
            return cls.Config.model_validate(dict(value))
        except ValidationError as err:
            msg = "; ".join(_describe(e) for e in err.errors())
            raise PydanticCustomError(
                "plugin_config",
                "invalid options for {kind} '{name}': {msg}",
                {"kind": kind, "name": value["name"], "msg": msg},
            ) from None

    return Annotated[SerializeAsAny[PluginConfig], BeforeValidator(resolve)]


BackboneSection = _plugin_section("backbones")
TrunkSection = _plugin_section("trunks")
HeadSection = _plugin_section("heads")
DatasetSection = _plugin_section("datasets")
LogitsProcessorSection = _plugin_section("logits_processors")
AnswerFormatSection = _plugin_section("answer_formats")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class VRTConfig(_Section):
    """Visual prototypes (dynamic embedding)."""

    projection: bool = Field(True, description="zero-init LayerNorm + low-rank residual on merged tokens")
    rank: int = Field(64, ge=1, description="rank of the residual adapter")
    position: Literal["none", "learned", "sinusoidal"] = Field(
        "none", description="2-D position embedding added to prototypes (beyond the reference)"
    )
    max_grid: tuple[int, int] = Field((64, 64), description="(rows, cols) of the learned position tables")
    max_images: int = Field(
        0,
        ge=0,
        description="a learned embedding of the image's place in its sample (0, 1, ...) added to its prototypes, "
        "for this many images (0: none): without it, like cells of two images have like prototypes "
        "(docs/multi-image.md)",
    )


class DecoderConfig(_Section):
    """Decoder trunk and the heads that read it."""

    trunk: TrunkSection
    heads: list[HeadSection] = Field(min_length=1)
    layout: Literal["raster", "reference"] = "raster"
    compile: bool = Field(
        False,
        description="torch.compile the decoder's training math (the trunk's blocks, the heads' that support it): "
        "fused kernels instead of thousands of small ops. Pays compiles (tens of seconds each on CPU, needing a "
        "C++ compiler; the first step, then a few times as object counts and image sizes first vary), so it suits "
        "long runs; evaluation and generation stay eager",
    )


class GenerationConfig(_Section):
    """Defaults for ``generate``/``predict``; call-time keyword arguments override them."""

    max_new_tokens: int = Field(1024, ge=1)
    do_sample: bool = False
    num_beams: int = Field(1, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    use_checkpoint_config: bool = Field(
        False, description="start from the checkpoint's generation_config.json instead of plain defaults"
    )
    logits_processors: list[LogitsProcessorSection] = Field(default_factory=list)
    engine: str = Field(
        "hf",
        min_length=1,
        description="what generates for predict / padt predict / padt serve: hf (Hugging Face generate) or a "
        "padt.engines entry point (vllm: docs/vllm.md); the call's engine= / --engine wins",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="arguments that build the engine (vllm: tensor_parallel_size, max_num_batched_tokens, dtype, "
        "...); the call's engine_args= / --engine-arg update them key by key. Empty for hf",
    )

    @model_validator(mode="after")
    def _args_need_an_engine(self) -> GenerationConfig:
        if self.engine == "hf" and self.engine_args:
            raise ValueError(
                f"engine_args {sorted(self.engine_args)} configure another engine than hf; set generation.engine "
                "(e.g. vllm)"
            )
        return self


class LoRAConfig(_Section):
    """LoRA on the LLM through ``peft`` (the rest of the LLM is frozen)."""

    r: int = Field(16, ge=1)
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class TrainConfig(_Section):
    """Optimisation settings (defaults = the reference's)."""

    output_dir: str | None = None
    init_from: str | None = Field(
        None,
        description="a padt model directory (save_pretrained / padt train output) whose weights fill the freshly "
        "built model before training: every tensor of its model.safetensors must exist in this recipe's model "
        "with the same shape; model tensors it lacks (tables this recipe adds, e.g. vrt.max_images) keep their "
        "initialisation and are listed in the log and the summary's init_from.new. Ignored by --resume: a "
        "resumed run restores its checkpoint's weights",
    )
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "linear"
    warmup_steps: int = Field(0, ge=0)
    epochs: float = Field(4, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(16, ge=1, description="per device")
    grad_accum: int = Field(1, ge=1)
    sampling: Literal["random", "length"] = Field(
        "random",
        description="random: the Trainer's shuffle; length: batches of similar length, less padding "
        "(padt_core/train/sampler.py)",
    )
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    max_grad_norm: float = 1.0
    seed: int = 42
    save_steps: int = Field(100, ge=1)
    logging_steps: int = Field(1, ge=1)
    vrt_per_object: int = Field(5, description="K VRT targets per object; < 0 = all cells")
    vrt_sampling: Literal["random", "five_point"] = "random"
    token_loss: Literal["per_sample", "per_token"] = "per_sample"
    robust_vrt_ce: bool = True
    prototype_warmup_steps: int = Field(300, ge=0)
    freeze_vision: bool = False
    freeze_llm: bool = False
    token_loss_weight: float = Field(1.0, ge=0)
    decoder_cell_subsets: bool = Field(
        False, description="decoder sees a random 1..K subset of each object's VRTs (robust to fewer cells)"
    )
    lora: LoRAConfig | None = None
    deepspeed: str | dict[str, Any] | None = Field(None, description="DeepSpeed config (path or dict), passed through")
    fsdp: str | None = Field(None, description="FSDP option string, passed through (e.g. 'full_shard auto_wrap')")
    fsdp_config: dict[str, Any] | None = None
    num_workers: int = Field(0, ge=0)
    save_total_limit: int | None = None


class EvalConfig(_Section):
    batch_size: int = Field(16, ge=1)


class DataConfig(_Section):
    train: list[DatasetSection] = Field(default_factory=list)
    val: list[DatasetSection] = Field(default_factory=list)
    coverage: float | None = Field(
        None,
        gt=0,
        le=1,
        description="a cell is foreground if the object covers this fraction of it; None: the backbone's "
        "default (one pixel row of its cell, 1/cell_size: 1/28 for Qwen2.5-VL)",
    )
    relative_coverage: float = Field(
        0.0,
        ge=0,
        le=1,
        description="training targets: a cell must also cover this fraction of the object's best cell's coverage "
        "(0: off; 0.5 drops the cells a small object barely touches)",
    )
    templates: TaskTemplates = Field(default_factory=TaskTemplates, description="prompt/answer wording per task")
    task_weights: dict[str, float] = Field(
        default_factory=dict,
        description="per-epoch draws of each task's training samples relative to once (e.g. {ovd: 3}); 0 drops a "
        "task, fractions draw a seeded share per epoch; unlisted tasks 1. Keys: tasks the registered dataset "
        "plugins declare",
    )

    @field_validator("task_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, float]) -> dict[str, float]:
        check_tasks(value, "task names")  # the field's location prefixes the message
        bad = {t: w for t, w in value.items() if not (w >= 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"task weights must be finite numbers >= 0, got {bad}")
        return value


class Recipe(_Section):
    """A validated recipe. ``padt recipe schema`` prints its JSON schema."""

    name: str
    description: str = ""
    released_checkpoint: str | None = Field(
        None,
        description="a published PaDT checkpoint (hub id or local dir, reference layout §10) whose weights "
        "build() converts and loads; None: the backbone's pretrained weights + a fresh projection/decoder",
    )
    backbone: BackboneSection
    answer_format: AnswerFormatSection = Field(
        {"name": "vrt"},
        validate_default=True,
        description="how objects are written in answers: vrt (PaDT, the default) or text_box (coordinates as text)",
    )
    vrt: VRTConfig = Field(default_factory=VRTConfig)
    decoder: DecoderConfig | None = None
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _fits_answer_format(self) -> Recipe:
        # The format knows what it needs of the other sections (e.g. a text format: no decoder).
        get_plugin("answer_formats", self.answer_format.name).check_recipe(self)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def bundled_recipes() -> dict[str, Path]:
    """Recipes shipped with the package: ``{name: path}``."""
    root = importlib.resources.files("padt_recipes")
    return {p.name.removesuffix(".yaml"): Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_recipe_path(source: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe file: an existing path (relative to ``relative_to`` first), else a bundled recipe name."""
    source = str(source)
    candidates = [Path(source)]
    if relative_to is not None:
        candidates.insert(0, relative_to / source)
    for cand in candidates:
        if cand.is_file():
            return cand
    bundled = bundled_recipes()
    name = Path(source).name.removesuffix(".yaml")
    if name in bundled and (source == name or source.endswith(".yaml")):
        return bundled[name]
    raise RecipeError(
        f"recipe {source!r} is neither a file nor a bundled recipe. Bundled recipes: {', '.join(sorted(bundled))}."
    )


def _deep_merge(base: dict, over: Mapping) -> dict:
    """Merge ``over`` into ``base``; a plugin section naming a different plugin replaces the old one."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        same_plugin = (
            isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name")
            if isinstance(value, Mapping)
            else False
        )
        out[key] = _deep_merge(old, value) if same_plugin else copy.deepcopy(value)
    return out


def _read_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise RecipeError(f"{path}: `extends` forms a cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is not None:
        base = _read_raw(_extends_path(parent, path), (*chain, path))
        raw = _deep_merge(base, raw)
    return raw


def _extends_path(parent: Any, path: Path | None) -> Path:
    """The recipe ``extends: parent`` names (in ``path``, relative to its folder); errors name the file."""
    where = f"{path}: " if path is not None else ""
    if not isinstance(parent, (str, Path)):
        raise RecipeError(f"{where}`extends` must be a recipe path or bundled name, got {parent!r}")
    try:
        return resolve_recipe_path(parent, relative_to=path.parent if path is not None else None)
    except RecipeError as err:
        raise RecipeError(f"{where}`extends: {parent}`: {err}") from None


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """``["train.lr=1e-5"]`` or ``{"train.lr": 1e-5}`` → ``{"train.lr": 1e-05}`` (string values parsed as YAML)."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    items = {}
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key.sub=value")
        key, value = item.split("=", 1)
        items[key.strip()] = _parse_value(value)
    return items


def apply_overrides(raw: dict, overrides: Mapping[str, Any] | Sequence[str] | None) -> dict:
    """Apply dotted overrides: ``{"train.lr": 1e-5}`` or ``["train.lr=1e-5"]`` (values parsed as YAML).

    List items are addressed by index (``decoder.heads.0.loss_weight=2``).
    """
    items = list(parse_overrides(overrides).items())
    if not items:
        return raw
    out = copy.deepcopy(raw)
    for key, value in items:
        parts = key.split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_index(node, parts, i, key)]
                continue
            _check_section(node, parts, i, key)
            if node.get(part) is None:
                node[part] = {}
            elif isinstance(node[part], str) and i + 1 < len(parts):
                node[part] = {"name": node[part]}  # a plugin given by name only
            node = node[part]
        if isinstance(node, list):
            node[_index(node, parts, len(parts) - 1, key)] = value
        else:
            _check_section(node, parts, len(parts) - 1, key)
            node[parts[-1]] = value
    return out


def _check_section(node: Any, parts: Sequence[str], i: int, key: str) -> None:
    """``node`` (what ``parts[:i]`` addresses) must be a section to set ``parts[i]`` in."""
    if not isinstance(node, dict):
        where = ".".join(parts[:i])
        raise RecipeError(f"override {key!r}: {where} is {node!r}, not a section with keys")


def _index(node: list, parts: Sequence[str], i: int, key: str) -> int:
    """``parts[i]`` as an index into the list ``node`` (what ``parts[:i]`` addresses), checked."""
    where, part = ".".join(parts[:i]), parts[i]
    if not part.lstrip("-").isdigit():
        raise RecipeError(f"override {key!r}: {where} is a list; {part!r} must be an index (0 to {len(node) - 1})")
    index = int(part)
    if not -len(node) <= index < len(node):
        valid = f"indices 0 to {len(node) - 1}" if node else "no index"
        raise RecipeError(f"override {key!r}: {where} has {len(node)} item(s) ({valid}); add items in the recipe file")
    return index


def load_recipe(
    source: str | Path | Mapping[str, Any] | Recipe,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> Recipe:
    """Load, merge (``extends``), override and validate a recipe.

    ``source`` is a path, a bundled recipe name, a raw mapping or an already validated ``Recipe``.
    """
    if isinstance(source, Recipe):
        if not overrides:
            return source
        source = source.model_dump(mode="json")
    origin = "<recipe>"
    if isinstance(source, Mapping):
        raw = dict(source)
        parent = raw.pop("extends", None)
        if parent is not None:
            raw = _deep_merge(_read_raw(_extends_path(parent, None)), raw)
    else:
        path = resolve_recipe_path(source)
        origin = str(path)
        raw = _read_raw(path)
    raw = apply_overrides(raw, overrides)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        keys = set(parse_overrides(overrides))
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            blamed = [k for k in keys if loc.startswith(k) or k.startswith(loc + ".")] if loc else []
            origin_note = f" (from override {', '.join(sorted(blamed))})" if blamed else ""
            lines.append(f"  {_describe(e) if loc else '<top>: ' + _describe(e)}{origin_note}")
        raise RecipeError(f"{origin}: invalid recipe:\n" + "\n".join(lines)) from None


def recipe_schema() -> dict:
    """JSON schema of the recipe; plugin sections list the registered plugins' own schemas."""
    from .plugins import get_registry

    schema = Recipe.model_json_schema()
    plugin_kinds = {"backbone": "backbones", "answer_format": "answer_formats"}
    for field, kind in plugin_kinds.items():
        schema["properties"][field] = {
            "oneOf": [cls.Config.model_json_schema() for cls in get_registry(kind).entries.values()]
        }
    for kind, key in (("trunks", "trunk"), ("heads", "heads")):
        subs = [cls.Config.model_json_schema() for cls in get_registry(kind).entries.values()]
        schema.setdefault("$defs", {}).setdefault("DecoderConfig", {}).setdefault("properties", {})
        target = schema["$defs"]["DecoderConfig"]["properties"]
        target[key] = {"oneOf": subs} if key == "trunk" else {"type": "array", "items": {"oneOf": subs}}
    json.dumps(schema)  # fail here, not in the CLI, if something is not serialisable
    return schema
