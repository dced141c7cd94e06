"""The ``padt`` command line: one subcommand per verb, each a plain function.

Subcommands live in :data:`COMMANDS` (``name -> Command``). A ``Command`` adds its arguments to its
own parser and points the parser at a handler ``fn(args) -> exit code``; a new verb adds one entry.
Verbs: ``plugins``, ``recipe``, ``data``, ``train``, ``eval``, ``predict``, ``convert``, ``bench``, ``demo``.
Handlers import the heavy modules (torch, transformers) themselves, so ``padt --help`` stays fast.

``padt train`` also runs under ``torchrun --nproc_per_node N -m padt_core.cli train …`` (or
``accelerate launch``); only rank 0 prints the summary.

Bad input (missing files, invalid recipes, unknown plugins, an unreachable hub, values our code
rejects) prints one ``padt: error: …`` message on stderr and exits with status 2; ``--traceback``
shows the full trace instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMMANDS",
    "Command",
    "Handler",
    "add_subcommand",
    "build_parser",
    "cmd_convert",
    "cmd_data_shapes",
    "cmd_demo",
    "cmd_eval",
    "cmd_predict",
    "cmd_train",
    "main",
]

EXIT_USAGE = 2  # argparse's own status for bad usage; bad input files/values are usage errors too
Handler = Callable[[argparse.Namespace], int]  # what `parser.set_defaults(handler=...)` stores


@dataclass(frozen=True)
class Command:
    """A top-level subcommand: ``configure(parser)`` adds arguments and sets ``handler`` defaults."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": reported in one line, not as a traceback."""
    from .backbone import HubUnreachableError
    from .plugins import UnknownPluginError
    from .recipe import RecipeError

    # RecipeError is a ValueError; listed for clarity. HubUnreachableError is an OSError.
    return (RecipeError, UnknownPluginError, HubUnreachableError, FileNotFoundError, FileExistsError, ValueError)


def _common_options() -> argparse.ArgumentParser:
    """Options every (sub)command accepts, so ``--traceback`` works before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subparser that did not see the flag must not reset what the main parser saw.
    common.add_argument(
        "--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors"
    )
    return common


def add_subcommand(subparsers: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A (nested) subcommand parser with the common options; use it for every new verb."""
    return subparsers.add_parser(name, help=help, description=help, parents=[_common_options()])


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="dotted recipe overrides, values parsed as YAML (e.g. vrt.rank=8 train.lr=1e-5)",
    )


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … (default: cpu)")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the model (default: recipe's)"
    )


def _check_model_source(source: str, overrides: Sequence[str]) -> None:
    """Fail fast on a directory that is not a saved model, before images or data are read."""
    from .convert import is_released_checkpoint
    from .model import META_NAME

    path = Path(source)
    if path.is_dir():
        if not (path / META_NAME).is_file() and not is_released_checkpoint(path):
            raise FileNotFoundError(
                f"{path} is a directory but neither a padt model (no {META_NAME}) nor a released PaDT checkpoint"
            )
        if overrides:
            raise ValueError("recipe overrides apply to recipes, not to a saved model directory")


def _is_released_hub_id(source: str) -> bool:
    """``org/name`` that is no file, no bundled recipe: a released checkpoint on the hub (``padt_core.load``)."""
    from .convert import looks_like_hub_id
    from .recipe import bundled_recipes

    return looks_like_hub_id(source) and source not in bundled_recipes()


def _build_or_load(source: str, overrides: Sequence[str]) -> Any:
    """A model from a padt model directory, a released PaDT checkpoint (directory or hub id), or a recipe."""
    import padt_core

    _check_model_source(source, overrides)
    if Path(source).is_dir() or (not overrides and _is_released_hub_id(source)):
        return padt_core.load(source)
    return padt_core.build(recipe=source, overrides=list(overrides) or None)


def _prediction_json(prediction: Any, image: str | None = None, rle: bool = False) -> dict[str, Any]:
    """A prediction as JSON: boxes xyxy in pixels; masks as size + area, or as COCO RLE with ``rle``."""
    from .decoder import mask_rle

    objects = []
    for obj in prediction.objects:
        box = None if obj.box is None else [float(v) for v in obj.box]
        score = None if obj.score is None else float(obj.score)
        item: dict[str, Any] = {"label": obj.label, "vrt": [int(k) for k in obj.vrt], "box": box, "score": score}
        if obj.mask is None:
            item["mask"] = None
        elif rle:
            item["mask"] = mask_rle(obj.mask)
        else:  # full-resolution arrays: report their size here, not every pixel
            item["mask"] = {"shape": list(obj.mask.shape), "area": int(obj.mask.sum())}
        objects.append(item)
    out: dict[str, Any] = {} if image is None else {"image": image}
    out.update(text=prediction.text, objects=objects, skipped=prediction.skipped, truncated=prediction.truncated)
    return out


# ---------------------------------------------------------------------------------------------------
# padt plugins
# ---------------------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    """List registered plugins by kind."""
    from .plugins import get_registry, list_plugins

    plugins = list_plugins(args.kind)
    if args.json:
        _print_json(plugins)
        return 0
    rows = [("KIND", "NAME", "PROVIDED BY")]
    for kind, names in plugins.items():
        registry = get_registry(kind)
        rows += [(kind, name, registry.sources.get(name, "")) for name in names] or [(kind, "-", "")]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for kind, name, source in rows:
        print(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {source}".rstrip())
    return 0


def _configure_plugins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print {kind: [names]} as JSON")
    parser.add_argument("--kind", default=None, help="only this kind (backbones, trunks, heads, …)")
    parser.set_defaults(handler=cmd_plugins)


# ---------------------------------------------------------------------------------------------------
# padt recipe validate | schema
# ---------------------------------------------------------------------------------------------------


def cmd_recipe_validate(args: argparse.Namespace) -> int:
    """Load, merge and validate a recipe; optionally print the resolved YAML."""
    from .recipe import load_recipe

    recipe = load_recipe(args.file, args.overrides or None)
    print(f"OK {recipe.name}")
    if args.print:
        print(recipe.to_yaml(), end="")
    return 0


def cmd_recipe_schema(args: argparse.Namespace) -> int:
    """Print the recipe's JSON schema (plugin sections list the registered plugins' schemas)."""
    from .recipe import recipe_schema

    _print_json(recipe_schema())
    return 0


def cmd_recipe_params(args: argparse.Namespace) -> int:
    """Build a recipe (on the meta device with ``--meta``) and print its parameter counts by component as JSON."""
    import padt_core

    from .sizes import parameter_counts

    weights = "meta" if args.meta else "pretrained"
    model = padt_core.build(recipe=args.file, overrides=args.overrides or None, weights=weights)
    _print_json(parameter_counts(model))
    return 0


def _configure_recipe(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipe_command", metavar="{validate,schema,params}", required=True)
    validate = add_subcommand(sub, "validate", "validate a recipe file or bundled recipe name")
    validate.add_argument("file", help="recipe YAML path or bundled recipe name (e.g. tiny_qwen)")
    _add_overrides(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved recipe as YAML")
    validate.set_defaults(handler=cmd_recipe_validate)
    schema = add_subcommand(sub, "schema", "print the recipe JSON schema")
    schema.set_defaults(handler=cmd_recipe_schema)
    params = add_subcommand(sub, "params", "parameter counts by component (JSON)")
    params.add_argument("file", help="recipe YAML path or bundled recipe name (e.g. qwen_padt_pro)")
    _add_overrides(params)
    params.add_argument("--meta", action="store_true", help="build on the meta device: no weights, no download")
    params.set_defaults(handler=cmd_recipe_params)


# ---------------------------------------------------------------------------------------------------
# padt convert
# ---------------------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a released PaDT checkpoint into a padt model directory."""
    from .convert import convert

    out = convert(
        args.source,
        args.destination,
        recipe=args.recipe,
        overrides=args.overrides or None,
        revision=args.revision,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def _configure_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="hub id (PaDT-MLLM/PaDT_Pro_3B) or directory, published layout")
    parser.add_argument("destination", metavar="DST", help="padt model directory to write (padt_core.load reads it)")
    _add_overrides(parser)
    parser.add_argument(
        "--recipe", default=None, help="recipe to use as is (default: padt_pro_3b_released filled from config.json)"
    )
    parser.add_argument("--revision", default=None, help="hub revision of SRC")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in DST")
    parser.set_defaults(handler=cmd_convert)


# ---------------------------------------------------------------------------------------------------
# padt bench generate | decoder
# ---------------------------------------------------------------------------------------------------


def _write_result(result: dict[str, Any], output: str | None) -> None:
    text = json.dumps(result, indent=2)
    if output:
        Path(output).write_text(text + "\n")
    print(text)


def cmd_bench_generate(args: argparse.Namespace) -> int:
    """Per-token decode time of PaDT generation vs the plain backbone."""
    from .bench.generate import bench_generate

    result = bench_generate(
        args.recipe,
        batch_sizes=tuple(args.batch_sizes),
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        overrides=args.overrides or None,
        image_size=args.image_size,
        vrt_mode=args.vrt_mode,
        threads=args.threads,
        clock=args.clock,
    )
    _write_result(result, args.output)
    return 0


def cmd_bench_decoder(args: argparse.Namespace) -> int:
    """Decoder benchmark (``padt_core.bench.decoder``); options other than device/dtype use its defaults."""
    try:
        from .bench.decoder import bench_decoder
    except ModuleNotFoundError as err:
        if err.name not in {"padt_core.bench.decoder", "padt_core.bench"}:
            raise  # a dependency of the module is missing: that is a real error, keep its trace
        raise ValueError(
            "the decoder benchmark is not available in this installation (padt_core/bench/decoder.py is missing)"
        ) from None
    kwargs: dict[str, Any] = {
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        "memory": args.memory,
        "object_counts": tuple(args.objects),
        "one_by_one": not args.no_one_by_one,
    }
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    result = bench_decoder(**kwargs)
    _write_result(result, args.output)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    """PaDT training step vs a plain next-token SFT step of the same backbone (``padt_core.bench.train``)."""
    from .bench.train import bench_train

    result = bench_train(
        args.recipe,
        batch_size=args.batch_size,
        steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        overrides=args.overrides or None,
        threads=args.threads,
        clock=args.clock,
    )
    _write_result(result, args.output)
    return 0


def _configure_bench(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="{generate,decoder,train,ablate,repro}", required=True)
    gen = add_subcommand(sub, "generate", "PaDT vs plain backbone decode speed (ms per token)")
    gen.add_argument("--recipe", required=True, help="recipe path or bundled name")
    gen.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B")
    gen.add_argument("--new-tokens", type=int, default=32, metavar="N", help="tokens per timed generation")
    gen.add_argument("--repeats", type=int, default=3, metavar="K", help="timed repeats (median)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--image-size", type=int, default=224, metavar="PX", help="side of the noise images")
    gen.add_argument(
        "--vrt-mode",
        choices=["random", "init"],
        default="random",
        help="random: non-zero prototypes so VRTs are emitted (default); init: weights as built",
    )
    gen.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    gen.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time (default) or this process's CPU time (CPU only; steadier on a shared machine)",
    )
    gen.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    _add_device(gen)
    _add_overrides(gen)
    gen.set_defaults(handler=cmd_bench_generate)
    dec = add_subcommand(sub, "decoder", "decoder trunk + heads speed")
    dec.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    dec.add_argument("--repeats", type=int, default=1, help="timed calls per mode and case (median)")
    dec.add_argument("--memory", choices=["factored", "dense", "auto"], default="factored", help="trunk memory kind")
    dec.add_argument("--objects", type=int, nargs="+", default=[1, 10, 100], help="object counts on one image")
    dec.add_argument("--no-one-by-one", action="store_true", help="skip the one-object-at-a-time baseline")
    dec.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    _add_device(dec)
    dec.set_defaults(handler=cmd_bench_decoder)
    tr = add_subcommand(sub, "train", "PaDT training step vs plain SFT step (samples/s, peak memory, ratio)")
    tr.add_argument("--recipe", default="recipes/tiny_qwen_shapes.yaml", help="recipe path or bundled name")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--steps", type=int, default=5, help="timed steps")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall or this process's CPU time")
    tr.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    _add_device(tr)
    _add_overrides(tr)
    tr.set_defaults(handler=cmd_bench_train)
    _configure_bench_sweeps(sub)


def _sweep_json(results: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """What ``padt bench ablate|repro`` print: machine, torch, dtype and the figures (not every curve)."""
    machine = results.get("machine", {})
    return {
        "machine": machine,
        "torch": machine.get("torch"),
        "dtype": machine.get("dtype"),
        **{k: results[k] for k in keys if k in results},
    }


def cmd_bench_ablate(args: argparse.Namespace) -> int:
    """Issue 8's ablation of the switches beyond the reference (``padt_core.bench.ablate``)."""
    from .bench.ablate import bench_ablate
    from .bench.sweep import SweepError

    try:
        results = bench_ablate(
            args.out,
            configs=args.configs,
            seeds=args.seeds,
            **_sweep_kwargs(args),
        )
    except SweepError as err:
        # Finished runs are saved; the message says how to retry the failed ones (no traceback needed).
        print(f"padt: error: {err}", file=sys.stderr)
        return 1
    _print_json(_sweep_json(results, ["settings", "summary", "wall_seconds"]))
    return 0


def _sweep_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The budget, data and evaluation options ``padt bench ablate`` and ``repro`` share."""
    names = ("steps", "train_images", "val_images", "quick", "difficulty", "jobs", "overwrite", "work_dir")
    return {
        **{name: getattr(args, name) for name in (*names, "eval_points", "eval_samples")},
        "command": "padt " + " ".join(sys.argv[1:]),
    }


def cmd_bench_repro(args: argparse.Namespace) -> int:
    """Issue 9's PaDT vs text-coordinate comparison (``padt_core.bench.repro``)."""
    from .bench.repro import bench_repro
    from .bench.sweep import SweepError

    try:
        results = bench_repro(
            args.out,
            methods=args.methods,
            recipes={"padt": args.padt_recipe, "text_coordinates": args.text_recipe},
            lrs=args.lrs,
            seeds=args.seeds,
            **_sweep_kwargs(args),
        )
    except SweepError as err:
        # Finished runs are saved; the message says how to retry the failed ones (no traceback needed).
        print(f"padt: error: {err}", file=sys.stderr)
        return 1
    summary = {m: {k: v for k, v in results[m].items() if k != "per_seed"} for m in results["settings"]["methods"]}
    _print_json(_sweep_json(results, ["settings", "plan", "comparison", "wall_seconds"]) | summary)
    return 0


def _add_sweep_options(parser: argparse.ArgumentParser, jobs: int, work_dir: str) -> None:
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the budget's)")
    parser.add_argument("--train-images", type=int, default=None, help="shapes train images (default: budget's)")
    parser.add_argument("--val-images", type=int, default=None, help="held-out shapes images (default: budget's)")
    parser.add_argument("--difficulty", choices=["full", "easy"], default="full", help="shapes split (default: full)")
    parser.add_argument("--eval-points", type=int, default=None, help="evaluations per run (default: budget's)")
    parser.add_argument("--eval-samples", type=int, default=None, help="held-out samples per task per evaluation")
    parser.add_argument("--jobs", type=int, default=jobs, help=f"runs in parallel, one thread each (default: {jobs})")
    parser.add_argument("--quick", action="store_true", help="the small budget (pipeline check, minutes)")
    parser.add_argument("--out", default="docs/results", help="folder of the JSON, table and plot")
    parser.add_argument("--work-dir", default=work_dir, help=f"data, logs and run dirs (default: {work_dir})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results file")


def _configure_bench_sweeps(sub: Any) -> None:
    from .bench.ablate import CONFIGS, DEFAULT_CONFIGS

    ab = add_subcommand(sub, "ablate", "issue 8 ablation: no-repeat / positional / cell-geometry switches, seeds")
    ab.add_argument(
        "--configs",
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        choices=list(CONFIGS),
        metavar="NAME",
        help=f"configurations among {', '.join(CONFIGS)} (default: {', '.join(DEFAULT_CONFIGS)})",
    )
    ab.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: 3, --quick 1)")
    _add_sweep_options(ab, jobs=2, work_dir="runs/ablation")
    ab.set_defaults(handler=cmd_bench_ablate)
    rp = add_subcommand(sub, "repro", "issue 9: PaDT vs text coordinates, equal budget and lr search, seeds")
    rp.add_argument("--methods", nargs="+", default=["padt", "text_coordinates"],
                    choices=["padt", "text_coordinates"], help="arms to train (default: both)")  # fmt: skip
    rp.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-3, 2e-3], help="lr sweep on seed 0 (default: 1e-3 2e-3)"
    )
    rp.add_argument("--seeds", type=int, default=3, help="seeds at the best lr (default: 3)")
    rp.add_argument("--padt-recipe", default="tiny_qwen_shapes", help="recipe of the PaDT arm")
    rp.add_argument("--text-recipe", default="tiny_qwen_shapes_textbox", help="recipe of the text-coordinate arm")
    _add_sweep_options(rp, jobs=2, work_dir="runs/repro")
    rp.set_defaults(handler=cmd_bench_repro)


# ---------------------------------------------------------------------------------------------------
# padt data shapes
# ---------------------------------------------------------------------------------------------------


def cmd_data_shapes(args: argparse.Namespace) -> int:
    """Write the synthetic shapes dataset (or reuse an identical one); print a JSON summary."""
    import time

    from .data.shapes import MANIFEST, ShapesMismatchError, ShapesParams, ensure_shapes

    params = ShapesParams(
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        image_size=args.image_size,
        difficulty=args.difficulty,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
    )
    root = Path(args.out_dir)
    previous = _read_json(root / MANIFEST)
    start = time.perf_counter()
    try:
        manifest = ensure_shapes(root, params, regenerate=args.overwrite, workers=args.workers)
    except ShapesMismatchError as err:
        raise _shapes_conflict(root, previous, params.to_json()) if previous else err from None
    reused = previous is not None and previous == manifest
    summary = {
        "root": str(root),
        "generated": not reused,
        "seconds": round(time.perf_counter() - start, 2),
        "params": manifest["params"],
        "counts": manifest["counts"],
        "files": manifest["files"],
        "images": str(root / "images"),
    }
    _print_json(summary)
    return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def _shapes_conflict(root: Path, previous: dict[str, Any], asked: dict[str, Any]) -> FileExistsError:
    """The error for a folder holding shapes data made with other parameters, naming what differs."""
    old = previous.get("params") or {}
    differ = [f"{key}={old.get(key)!r} (asked {value!r})" for key, value in asked.items() if old.get(key) != value]
    what = ", ".join(differ) or f"format version {previous.get('version')!r}"
    return FileExistsError(
        f"{root} already holds shapes data generated with other parameters: {what}; "
        "pass --overwrite to regenerate it, or choose another OUT_DIR"
    )


def _configure_data(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="{shapes}", required=True)
    shapes = add_subcommand(sub, "shapes", "write the synthetic shapes dataset (COCO, RefCOCO and RIC formats)")
    shapes.add_argument("out_dir", metavar="OUT_DIR", help="dataset root (a recipe's `root:`)")
    shapes.add_argument("--n-train", type=int, required=True, metavar="N", help="images of the train split")
    shapes.add_argument("--n-val", type=int, required=True, metavar="M", help="images of the val split")
    shapes.add_argument("--seed", type=int, required=True, metavar="S", help="the same seed gives identical files")
    shapes.add_argument("--image-size", type=int, default=224, metavar="PX", help="image side (default: 224)")
    shapes.add_argument(
        "--difficulty",
        choices=["easy", "full"],
        default="full",
        help="full: distractors, size and spatial expressions (default); easy: colour + shape only",
    )
    shapes.add_argument("--min-objects", type=int, default=1, metavar="K", help="fewest objects per image (1-6)")
    shapes.add_argument("--max-objects", type=int, default=6, metavar="K", help="most objects per image (1-6)")
    shapes.add_argument(
        "--workers", type=int, default=1, metavar="K", help="processes that render images (0 = all cores; default: 1)"
    )
    shapes.add_argument(
        "--overwrite", action="store_true", help="regenerate a dataset made with other parameters in OUT_DIR"
    )
    shapes.set_defaults(handler=cmd_data_shapes)


# ---------------------------------------------------------------------------------------------------
# padt train
# ---------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """Train a recipe (``padt_core.train.run.train``); rank 0 prints a JSON summary (and writes ``--summary``)."""
    from contextlib import redirect_stdout

    from .train.run import train

    with redirect_stdout(sys.stderr):  # the Trainer's log lines go to stderr: stdout is the JSON summary alone
        summary = train(
            args.recipe,
            args.overrides or None,
            output_dir=args.output_dir,
            overwrite=args.overwrite,
            resume=args.resume,
        )
    if _is_main_process():
        if args.summary:
            Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
            Path(args.summary).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        _print_json(_train_summary(summary))
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """End a ``torchrun`` job's process group before exit: a rank whose gloo threads are still alive when
    the interpreter shuts down can abort ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _is_main_process() -> bool:
    """Whether this is rank 0 of a ``torchrun`` / ``accelerate launch`` job (or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _train_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The training summary without the full log history: first and last logged value of each loss term."""
    history = summary.get("log_history", [])
    losses: dict[str, dict[str, Any]] = {}
    for entry in history:
        for key, value in entry.items():
            if key == "loss" or key.startswith("loss_"):
                term = losses.setdefault(key, {"first": value, "first_step": entry.get("step")})
                term.update(last=value, last_step=entry.get("step"))
    out = {key: value for key, value in summary.items() if key != "log_history"}
    output_dir = Path(summary["output_dir"])
    steps = sorted(int(p.name[11:]) for p in output_dir.glob("checkpoint-*") if p.name[11:].isdigit())
    out["checkpoints"] = [f"checkpoint-{step}" for step in steps]
    out["logged_steps"] = sum(1 for entry in history if "loss" in entry)
    out["losses"] = losses
    return out


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="recipe path or bundled name (e.g. tiny_qwen_shapes)")
    _add_overrides(parser)
    parser.add_argument(
        "--output-dir", default=None, metavar="DIR", help="default: the recipe's train.output_dir, else runs/NAME"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a training run already in the output dir")
    mode.add_argument("--resume", action="store_true", help="continue from the output dir's latest checkpoint")
    parser.add_argument(
        "--summary", default=None, metavar="FILE", help="also write the summary with the full log history"
    )
    parser.epilog = "Multi-process: torchrun --nproc_per_node N -m padt_core.cli train RECIPE ..."
    parser.set_defaults(handler=cmd_train)


# ---------------------------------------------------------------------------------------------------
# padt eval
# ---------------------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    """Predict over evaluation samples, score them, write the report JSON and print the metrics."""
    import torch

    from .demo import format_table

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if args.data is not None and not Path(args.data).is_file():
        raise FileNotFoundError(f"evaluation data not found: {args.data}")
    model = _build_or_load(args.model, ())
    model.to(device=torch.device(args.device)).eval()
    report = _evaluate(model, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_strict_json(report), indent=2) + "\n")
    print(format_table(report))
    for task, counts in report["counts"].items():
        print(f"{task}: {json.dumps(counts, default=str)}")
    print(f"report: {out}")
    return 0


def _evaluate(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate_model`` with the command's options; the report gains an ``eval`` entry saying what ran."""
    import time
    from collections import Counter

    from .eval.run import evaluate_model

    data = args.data if args.data is not None else _recipe_val(model)
    generation = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    batch_size = args.batch_size or model.recipe.eval.batch_size
    start = time.perf_counter()
    report, _, samples = evaluate_model(model, data, args.task, batch_size, args.max_samples, **generation)
    report["eval"] = {
        "model": args.model,
        "data": args.data or "the model recipe's data.val",
        "tasks": list(report["counts"]),
        "samples": dict(sorted(Counter(str(s.task) for s in samples).items())),
        "batch_size": batch_size,
        "generation": generation,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return report


def _recipe_val(model: Any) -> list[Any]:
    """The ``data.val`` sections of the model's own (resolved) recipe: ``padt eval``'s default data."""
    sections = list(model.recipe.data.val)
    if not sections:
        raise ValueError(f"recipe {model.recipe.name!r} of the model has no data.val datasets; pass --data")
    return sections


def _strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (standard JSON has no NaN) and numpy scalars as numbers."""
    import math

    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="saved model directory (or a recipe path or name)")
    parser.add_argument(
        "--data",
        default=None,
        metavar="YAML",
        help="a recipe (its data.val), or a YAML dataset section {name: ..., ...} or list of them "
        "(default: the data.val of the model's own recipe)",
    )
    parser.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="TASK",
        help="metric to compute (repeat: --task rec --task ovd); default: every task in the data",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="N", help="default: the recipe's eval.batch_size"
    )
    parser.add_argument(
        "--max-samples", type=int, default=None, metavar="N", help="only the first N samples of each task"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="default: the recipe's")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the report JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(handler=cmd_eval)


# ---------------------------------------------------------------------------------------------------
# padt predict
# ---------------------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer one prompt about each image; print JSON, or write ``<stem>.json`` + ``<stem>.png`` per image."""
    import torch

    from .data.templates import DEFAULT_TEMPLATES
    from .model import load_image

    _task_prompt(args, DEFAULT_TEMPLATES)  # bad flag combinations fail before the model loads
    for path in args.image:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
    _check_model_source(args.model, args.overrides)
    images = [load_image(path) for path in args.image]
    outputs = _output_paths(args.image, Path(args.out), args.overwrite) if args.out else None
    model = _build_or_load(args.model, args.overrides)
    model.to(device=torch.device(args.device))
    model.eval()
    prompt = _task_prompt(args, model.recipe.data.templates)
    kwargs = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    predictions = model.predict(images, prompt, batch_size=args.batch_size, **kwargs)
    if outputs is None:
        _print_json([_prediction_json(p, image) for p, image in zip(predictions, args.image)])
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    written = [
        _write_prediction(model, path, image, prediction, prompt, files)
        for path, image, prediction, files in zip(args.image, images, predictions, outputs)
    ]
    _print_json(written)
    return 0


def _task_prompt(args: argparse.Namespace, templates: Any) -> str:
    """The prompt sent to the model: ``--prompt`` verbatim, or ``--task``'s template (``TaskTemplates``)."""
    from .data.templates import ovd_prompt, rec_prompt, ric_prompt

    if args.labels is not None and args.task != "ovd":
        raise ValueError("--labels names the categories of --task ovd; add --task ovd")
    if args.task is None:
        if args.prompt is None:
            raise ValueError("pass --prompt, or --task rec|ovd|ric to use a task's prompt template")
        return args.prompt
    if args.task == "rec":
        if args.prompt is None:
            raise ValueError('--task rec needs --prompt with the referring sentence (e.g. --prompt "the red square")')
        return rec_prompt(args.prompt, templates)
    if args.prompt is not None:
        raise ValueError(
            f"--task {args.task} writes its own prompt; drop --prompt (or drop --task to send it verbatim)"
        )
    if args.task == "ric":
        return ric_prompt(templates)
    labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
    if not labels:
        raise ValueError("--task ovd needs --labels with the categories to detect (e.g. --labels cat,dog)")
    return ovd_prompt(labels, templates)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` if ``path`` exists and ``--overwrite`` was not given."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def _output_paths(images: Sequence[str], out: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """``(json, png)`` per image in ``out``, named after the image's stem; checked before any work is done."""
    from collections import Counter

    stems = [Path(image).stem for image in images]
    repeated = sorted(stem for stem, n in Counter(stems).items() if n > 1)
    if repeated:
        raise ValueError(f"images with the same file name would write the same files in {out}: {', '.join(repeated)}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    paths = [(out / f"{stem}.json", out / f"{stem}.png") for stem in stems]
    for pair in paths:
        for path in pair:
            _refuse_existing(path, overwrite)
    return paths


def _write_prediction(
    model: Any, source: str, image: Any, prediction: Any, prompt: str, files: tuple[Path, Path]
) -> dict[str, Any]:
    """Write one image's prediction as JSON (masks as COCO RLE) and as a drawing; return what was written."""
    from .viz import draw_prediction

    grid = _vrt_grid(model, image)
    record = {"image": source, "width": image.width, "height": image.height, "vrt_grid": list(grid), "prompt": prompt}
    record.update(_prediction_json(prediction, rle=True))
    json_file, png_file = files
    json_file.write_text(json.dumps(_strict_json(record), indent=2) + "\n")
    draw_prediction(image, prediction, grid).save(png_file)
    return {"image": source, "json": str(json_file), "png": str(png_file), "objects": len(prediction.objects)}


def _vrt_grid(model: Any, image: Any) -> tuple[int, int]:
    """The ``(h, w)`` VRT grid of ``image`` as the model's processor sees it."""
    batch = model.backbone.process([model.backbone.format_prompt("x", True)], [image])
    rows, cols = (int(v) for v in batch["image_grids"][0])
    return rows, cols


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR_OR_RECIPE", help="saved model directory, recipe path or name")
    parser.add_argument("--image", action="append", required=True, help="image file (repeat for several)")
    parser.add_argument(
        "--prompt", default=None, help="the question asked of every image (with --task rec: the sentence)"
    )
    parser.add_argument(
        "--task",
        choices=["rec", "ovd", "ric"],
        default=None,
        help="use the model's prompt template: rec (--prompt is the referring sentence; RES masks come with it), "
        "ovd (--labels), ric (captioning)",
    )
    parser.add_argument("--labels", default=None, metavar="A,B,C", help="categories to detect, with --task ovd")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="write <stem>.json (masks as COCO RLE) and <stem>.png per image"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    _add_overrides(parser)
    parser.set_defaults(handler=cmd_predict)


# ---------------------------------------------------------------------------------------------------
# padt demo
# ---------------------------------------------------------------------------------------------------

_DEMO_OUT = "runs/demo"
_SMOKE_ONLY = ("recipe", "prompt", "max_new_tokens")
_FULL_ONLY = ("out", "seed", "quick", "long", "overwrite")


def cmd_demo(args: argparse.Namespace) -> int:
    """Shapes → train → eval → ``report.json`` + ``gallery.png`` (``padt_core.demo``); ``--smoke``: instant check."""
    unused = _FULL_ONLY if args.smoke else _SMOKE_ONLY
    given = [name for name in unused if getattr(args, name) is not None and getattr(args, name) is not False]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(
            f"{flags} {'do' if len(given) > 1 else 'does'} not apply {'with' if args.smoke else 'without'} --smoke"
        )
    if args.smoke:
        return _demo_smoke(args)
    from .demo import format_table, run_demo

    out = Path(args.out or _DEMO_OUT)
    budget = "quick" if args.quick else "long" if args.long else "default"
    report = run_demo(
        out, budget=budget, overwrite=args.overwrite, seed=args.seed or 0, overrides=args.overrides or None
    )
    print(format_table(report))
    info = report.get("budget", {})
    if info:
        print(
            f"budget {info.get('name')}: {info.get('train_images')} train images, {info.get('steps')} steps, "
            f"trained in {info.get('train_seconds')}s, {info.get('total_seconds')}s in all"
        )
    print(f"report:  {out / 'report.json'}")
    print(f"gallery: {out / 'gallery.png'}")
    return 0


def _demo_image(size: int = 224) -> Any:
    """A grey image with a red square and a blue disc: something to point at, made without files."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle((size // 8, size // 8, size // 2, size // 2), fill=(220, 30, 30))
    draw.ellipse((size // 2, size // 2, size - size // 8, size - size // 8), fill=(30, 30, 220))
    return image


def _demo_smoke(args: argparse.Namespace) -> int:
    """Build a recipe, predict on a generated image, print completion and objects (every stage runs)."""
    import time

    import padt_core

    recipe = args.recipe or "tiny_qwen"
    prompt = args.prompt or "Please find the red square."
    start = time.perf_counter()
    model = padt_core.build(recipe=recipe, overrides=args.overrides or None)
    model.eval()
    built = time.perf_counter()
    params = sum(p.numel() for p in model.parameters())
    print(f"built {model.recipe.name!r} in {built - start:.1f}s ({params:,} parameters)")
    max_new_tokens = 24 if args.max_new_tokens is None else args.max_new_tokens
    prediction = model.predict(_demo_image(), prompt, max_new_tokens=max_new_tokens)[0]
    print(f"prompt: {prompt}")
    print(f"completion ({len(prediction.ids)} tokens, {time.perf_counter() - built:.1f}s): {prediction.text!r}")
    _print_json(_prediction_json(prediction)["objects"])
    if model.recipe.name == "tiny_qwen":
        print("(tiny_qwen is randomly initialised: the text is noise; this checks that every stage runs)")
    return 0


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR", help=f"output folder (default: {_DEMO_OUT})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", help="a small budget: fewer images and steps")
    budget.add_argument("--long", action="store_true", help="a larger budget: more data and steps, better numbers")
    parser.add_argument("--seed", type=int, default=None, help="data and training seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a demo run already in --out")
    smoke = parser.add_argument_group("smoke run (--smoke)")
    smoke.add_argument("--smoke", action="store_true", help="only build a recipe and predict on a drawn image")
    smoke.add_argument("--recipe", default=None, help="recipe path or bundled name (default: tiny_qwen)")
    smoke.add_argument("--prompt", default=None, help='default: "Please find the red square."')
    smoke.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="default: 24")
    _add_overrides(parser)
    parser.set_defaults(handler=cmd_demo)


# ---------------------------------------------------------------------------------------------------
# Registry of subcommands and the entry point
# ---------------------------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "plugins": Command("list registered plugins", _configure_plugins),
    "recipe": Command("validate recipes, print the recipe schema", _configure_recipe),
    "data": Command("write datasets (synthetic shapes)", _configure_data),
    "train": Command(
        "train a recipe (Hugging Face Trainer; torchrun / accelerate for several processes)", _configure_train
    ),
    "eval": Command("evaluate a model on a recipe's or a dataset's samples; write a report JSON", _configure_eval),
    "predict": Command("predict objects in images with a saved model or a recipe", _configure_predict),
    "convert": Command("convert a released PaDT checkpoint into a padt model directory", _configure_convert),
    "bench": Command("benchmarks (JSON on stdout)", _configure_bench),
    "demo": Command(
        "end-to-end demo: shapes -> train -> eval -> report + gallery (--smoke: instant check)", _configure_demo
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``padt`` parser with every subcommand in :data:`COMMANDS`."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="padt",
        description="PaDT: let a multimodal LLM point at image patches (visual reference tokens).",
        parents=[_common_options()],
    )
    parser.add_argument("--version", action="version", version=f"padt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        command.configure(add_subcommand(sub, name, command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``padt``; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    show_trace = getattr(args, "traceback", False)
    from .runtime import tune_cpu_allocator

    tune_cpu_allocator()  # large CPU tensors stay on the heap (padt_core/runtime.py); PADT_MALLOC_TUNING=0 opts out
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("padt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `padt … | head`: the reader left; stay quiet, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit, which would fail again
        return 141
    except _user_errors() as err:
        if show_trace:
            raise
        print(f"padt: error: {str(err) or type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
