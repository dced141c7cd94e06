"""``padt bench generate | decoder | train | engine | ablate | repro | serve``: the benchmarks' command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from padt_core.cli import Command, add_device, add_overrides, add_subcommand, print_json, write_result


def cmd_bench_generate(args: argparse.Namespace) -> int:
    """Per-token decode time of PaDT generation vs the plain backbone."""
    from .generate import bench_generate

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
        threads=args.threads or None,
        clock=args.clock,
        warmup=args.warmup,
    )
    write_result(result, args.output)
    return 0


def cmd_bench_decoder(args: argparse.Namespace) -> int:
    """Decoder benchmark (``padt_bench.decoder``); options other than device/dtype use its defaults."""
    try:
        from .decoder import bench_decoder
    except ModuleNotFoundError as err:
        if err.name not in {"padt_bench.decoder", "padt_bench"}:
            raise  # a dependency of the module is missing: that is a real error, keep its trace
        raise ValueError(
            "the decoder benchmark is not available in this installation (module padt_bench.decoder is missing)"
        ) from None
    kwargs: dict[str, Any] = {
        "device": args.device,
        "threads": args.threads or None,
        "clock": args.clock,
        "repeats": args.repeats,
        "memory": args.memory,
        "object_counts": tuple(args.objects),
        "one_by_one": not args.no_one_by_one,
    }
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    result = bench_decoder(**kwargs)
    write_result(result, args.output)
    return 0


def cmd_bench_engine(args: argparse.Namespace) -> int:
    """HF generate vs vLLM requests/s and tokens/s (``padt_bench.engine``)."""
    from padt_core.cli.predict import parse_engine_args

    from .engine import bench_engine

    result = bench_engine(
        args.recipe,
        prompts=args.prompts,
        new_tokens=args.new_tokens,
        batch_size=args.batch_size,
        image_sizes=tuple(args.image_sizes),
        repeats=args.repeats,
        device=args.device,
        seed=args.seed,
        overrides=args.overrides or None,
        engine_args=parse_engine_args(args.engine_arg),
        threads=args.threads or None,
    )
    write_result(result, args.output)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    """PaDT training step vs a plain next-token SFT step of the same backbone (``padt_bench.train``)."""
    from .train import bench_train

    result = bench_train(
        args.recipe,
        batch_size=args.batch_size,
        steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        overrides=args.overrides or None,
        threads=args.threads or None,
        clock=args.clock,
        warmup=args.warmup,
    )
    write_result(result, args.output)
    return 0


def _add_timing_options(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--clock`` with the defaults that give a steady ratio (``bench/timing.py``)."""
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: 1, steadiest; 0: torch's choice)"
    )
    parser.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="auto (default): this process's CPU time on a CPU (time waiting for a core is not counted), "
        "wall time on an accelerator",
    )


def _configure_bench(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="bench_command", metavar="{generate,decoder,train,engine,ablate,repro,serve}", required=True
    )
    gen = add_subcommand(sub, "generate", "PaDT vs plain backbone decode speed (ms per token)")
    gen.add_argument("--recipe", required=True, help="recipe path or bundled name")
    gen.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B")
    gen.add_argument("--new-tokens", type=int, default=32, metavar="N", help="tokens per timed generation")
    gen.add_argument(
        "--repeats", type=int, default=40, metavar="K", help="timed PaDT/plain pairs, interleaved (default: 40)"
    )
    gen.add_argument("--warmup", type=int, default=2, metavar="K", help="untimed calls per side first (default: 2)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--image-size", type=int, default=224, metavar="PX", help="side of the noise images")
    gen.add_argument(
        "--vrt-mode",
        choices=["random", "init"],
        default="random",
        help="random: non-zero prototypes so VRTs are emitted (default); init: weights as built",
    )
    _add_timing_options(gen)
    gen.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    add_device(gen)
    add_overrides(gen)
    gen.set_defaults(handler=cmd_bench_generate)
    dec = add_subcommand(sub, "decoder", "decoder trunk + heads speed")
    _add_timing_options(dec)
    dec.add_argument(
        "--repeats", type=int, default=3, help="timed (one-by-one, packed) pairs per case, interleaved (default: 3)"
    )
    dec.add_argument("--memory", choices=["factored", "dense", "auto"], default="factored", help="trunk memory kind")
    dec.add_argument("--objects", type=int, nargs="+", default=[1, 10, 100], help="object counts on one image")
    dec.add_argument("--no-one-by-one", action="store_true", help="skip the one-object-at-a-time baseline")
    dec.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    add_device(dec)
    dec.set_defaults(handler=cmd_bench_decoder)
    tr = add_subcommand(sub, "train", "PaDT training step vs plain SFT step (samples/s, peak memory, ratio)")
    tr.add_argument("--recipe", default="recipes/tiny_qwen_shapes.yaml", help="recipe path or bundled name")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--steps", type=int, default=11, help="timed PaDT/plain step pairs, interleaved (default: 11)")
    tr.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (default: 2)")
    tr.add_argument("--seed", type=int, default=0)
    _add_timing_options(tr)
    tr.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    add_device(tr)
    add_overrides(tr)
    tr.set_defaults(handler=cmd_bench_train)
    eng = add_subcommand(sub, "engine", "HF generate vs vLLM on the same model and prompts (requests/s, tokens/s)")
    eng.add_argument("--recipe", default="tiny_qwen", help="recipe path or bundled name (default: tiny_qwen)")
    eng.add_argument("--prompts", type=int, default=16, metavar="N", help="requests per timed run (default: 16)")
    eng.add_argument("--new-tokens", type=int, default=32, metavar="N", help="tokens generated per request")
    eng.add_argument("--batch-size", type=int, default=8, metavar="B", help="HF batch size (vLLM batches itself)")
    eng.add_argument("--image-sizes", type=int, nargs="+", default=[112, 168, 224], metavar="PX")
    eng.add_argument("--repeats", type=int, default=1, help="timed runs per engine (best reported)")
    eng.add_argument("--seed", type=int, default=0)
    eng.add_argument("--threads", type=int, default=1, help="torch CPU threads of this process (0: torch's choice)")
    eng.add_argument("--engine-arg", action="append", metavar="KEY=VALUE", help="vllm.LLM option, repeatable")
    eng.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    add_device(eng)
    add_overrides(eng)
    eng.set_defaults(handler=cmd_bench_engine)
    _configure_bench_sweeps(sub)
    from .serve import add_serve_command  # bench/serve.py: the load test of padt serve

    add_serve_command(sub)


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
    """Issue 8's ablation of the switches beyond the reference (``padt_bench.ablate``)."""
    from .ablate import bench_ablate
    from .sweep import SweepError

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
    print_json(_sweep_json(results, ["settings", "summary", "wall_seconds"]))
    return 0


def _sweep_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The budget, data and evaluation options ``padt bench ablate`` and ``repro`` share."""
    names = ("steps", "train_images", "val_images", "quick", "difficulty", "jobs", "overwrite", "work_dir")
    return {
        **{name: getattr(args, name) for name in (*names, "eval_points", "eval_samples")},
        "command": "padt " + " ".join(sys.argv[1:]),
    }


def cmd_bench_repro(args: argparse.Namespace) -> int:
    """Issue 9's PaDT vs text-coordinate comparison (``padt_bench.repro``)."""
    from .repro import bench_repro
    from .sweep import SweepError

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
    print_json(_sweep_json(results, ["settings", "plan", "comparison", "wall_seconds"]) | summary)
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
    from .ablate import CONFIGS, DEFAULT_CONFIGS

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


#: ``padt bench``, registered under the ``padt.commands`` entry-point group.
COMMAND = Command("benchmarks (JSON on stdout)", _configure_bench)
