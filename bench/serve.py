"""Load test of ``padt serve`` on loopback: many clients, answers checked, batching against one at a time.

Two servers on 127.0.0.1 serve the same model in turn, each sent the same bounded load (``clients``
threads × ``requests`` each, every client waiting for its answer before its next request):

- ``one_at_a_time``: ``max_batch_size=1``, every answer its own ``generate`` call: the reference;
- ``batched``: ``max_batch_size`` and ``max_wait_ms`` as given.

The requests cycle through a fixed set of distinct jobs (shapes scenes and noise images of several
sizes; REC, OVD, RIC and free prompts), so each answer has a one-at-a-time answer to equal. Reported
per server: answered, lost (no answer), errors, wall time, requests per second, latency quantiles and
the batch sizes the server ran; then ``mismatches`` (batched answers that differ from the reference,
byte for byte as JSON) and ``speedup`` (batched / one-at-a-time throughput). The run stops by itself:
the count is bounded and every request has a timeout. Wall clock: a server's throughput is what its
clients see.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# numpy, torch and the model are imported where used: `padt --help` builds this parser
__all__ = ["add_serve_command", "bench_serve", "load_jobs"]


def load_jobs(count: int, examples: list[Any], seed: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct requests (``Client.predict`` keyword arguments) over the examples and noise images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    jobs: list[dict[str, Any]] = []
    for i in range(count):
        name = f"job{i:03d}.png"
        if examples and i % 2 == 0:
            example = examples[(i // 2) % len(examples)]
            kind = (i // 2) % 3
            image = example.png
            if kind == 0:
                jobs.append(dict(image=image, task="rec", prompt=example.sentence, image_name=name))
            elif kind == 1:
                jobs.append(dict(image=image, task="ovd", labels=list(example.labels), image_name=name))
            else:
                jobs.append(dict(image=image, task="ric", image_name=name))
            continue
        height, width = (int(v) for v in rng.integers(56, 320, size=2))
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
        words = " ".join(["where is the object"] * int(rng.integers(1, 5)))
        jobs.append(dict(image=buffer.getvalue(), prompt=f"{words}?", image_name=name))
    return jobs


def _load(url: str, jobs: list[dict[str, Any]], clients: int, requests: int, timeout: float) -> dict[str, Any]:
    """Send ``clients`` × ``requests`` requests; answers by request index, errors, latencies, wall time."""
    import numpy as np

    from padt_core.serve import Client

    client = Client(url, timeout=timeout)
    answers: dict[int, str] = {}
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def run_client(c: int) -> None:
        barrier.wait()
        for r in range(requests):
            index = c * requests + r
            start = time.perf_counter()
            try:
                record = client.predict(**jobs[index % len(jobs)])
            except Exception as err:  # counted and reported, not raised: the load goes on
                with lock:
                    errors.append(f"request {index}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                answers[index] = json.dumps(record, sort_keys=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run_client, range(clients)))
    wall = time.perf_counter() - start
    batches = client.info()["batch_sizes"]
    total = clients * requests
    return {
        "answers": answers,
        "summary": {
            "requests": total,
            "answered": len(answers),
            "lost": total - len(answers) - len(errors),
            "errors": len(errors),
            "error_messages": errors[:5],
            "wall_s": round(wall, 3),
            "requests_per_s": round(len(answers) / wall, 3),
            "latency_s": {
                "p50": round(statistics.median(latencies), 3) if latencies else None,
                "p95": round(float(np.quantile(latencies, 0.95)), 3) if latencies else None,
                "max": round(max(latencies), 3) if latencies else None,
            },
            "batch_sizes": batches,
        },
    }


def bench_serve(
    model: str | Any = "tiny_qwen",
    clients: int = 16,
    requests: int = 8,
    distinct: int = 24,
    max_batch_size: int = 8,
    max_wait_ms: float = 10.0,
    max_new_tokens: int = 16,
    threads: int | None = 1,
    device: str = "cpu",
    dtype: str | None = None,
    vrt_mode: str = "random",
    timeout: float = 300.0,
    overrides: list[str] | None = None,
    batch_read: bool = False,
) -> dict[str, Any]:
    """Load-test ``padt serve`` on loopback: one-at-a-time reference, then batched; the JSON result.

    Args:
        model: a saved model directory, a recipe path or bundled name, or a loaded ``PaDTModel``.
        clients: concurrent clients (threads).
        requests: requests per client, each sent after the previous one's answer.
        distinct: distinct jobs the requests cycle through (each has one reference answer).
        max_batch_size: the batched server's ``--max-batch-size``.
        max_wait_ms: the batched server's ``--max-wait-ms``.
        max_new_tokens: tokens per answer (both servers).
        threads: torch CPU threads (``None``: torch's choice).
        device: torch device of the model.
        dtype: cast the model (``float32``, ``bfloat16`` ...); ``None``: the recipe's.
        vrt_mode: ``random`` (a model built from a recipe gets non-zero prototypes, so its answers point
            at cells, as ``padt bench generate`` does), or ``init`` (weights as built or saved).
        timeout: seconds per request.
        overrides: recipe overrides (``key.sub=value``) for a recipe source.
        batch_read: the batched server decodes boxes in one pass per batch (``padt serve --batch-read``).

    Example:
        >>> result = bench_serve("tiny_qwen", clients=16, requests=8)
        >>> result["mismatches"], result["batched"]["errors"], result["speedup"]
        (0, 0, 2.9)
    """
    import torch

    import padt_core
    from padt_core.cli._common import _build_or_load
    from padt_core.dtypes import torch_dtype
    from padt_core.serve import PaDTEngine, ServeLimits, create_app, shapes_examples, start_server

    from .generate import machine_info, model_summary, torch_threads

    if min(clients, requests, distinct, max_batch_size) < 1:
        raise ValueError("clients, requests, distinct and max_batch_size must be at least 1")
    with torch_threads(threads):
        if isinstance(model, padt_core.PaDTModel):
            loaded = model
        else:
            loaded = _build_or_load(str(model), overrides or [])
            if vrt_mode == "random" and getattr(loaded.projection, "enabled", False) and not _is_saved(model):
                with torch.no_grad():
                    loaded.projection.norm.weight.fill_(1.0)  # non-zero prototypes: the answers emit VRTs
        loaded.to(device=torch.device(device), dtype=torch_dtype(dtype) if dtype else None).eval()
        engines = {
            "one_at_a_time": PaDTEngine(loaded, max_new_tokens=max_new_tokens),
            "batched": PaDTEngine(loaded, max_new_tokens=max_new_tokens, batch_read=batch_read),
        }
        jobs = load_jobs(distinct, shapes_examples(3))
        # room for every client: this load test measures batching, not refusals (tests/test_serve.py does those)
        runs = {}
        for name, batch in (("one_at_a_time", 1), ("batched", max_batch_size)):
            limits = ServeLimits(max_batch_size=batch, max_wait_ms=max_wait_ms, max_queue=clients, timeout_s=timeout)
            with start_server(create_app(engines[name], limits)) as running:
                runs[name] = _load(running.url, jobs, clients, requests, timeout)
    reference: dict[int, str] = {}
    inconsistent = 0  # repeats of one job that the one-at-a-time server answered differently
    for index, answer in runs["one_at_a_time"]["answers"].items():
        job = index % len(jobs)
        if reference.setdefault(job, answer) != answer:
            inconsistent += 1
    batched = runs["batched"]["answers"]
    compared = [i for i in batched if i % len(jobs) in reference]
    mismatches = [i for i in compared if batched[i] != reference[i % len(jobs)]]
    one, many = runs["one_at_a_time"]["summary"], runs["batched"]["summary"]
    pointing = sum(1 for a in reference.values() if any(obj["vrt"] for obj in json.loads(a)["objects"]))
    return {
        "benchmark": "serve",
        "model": loaded.recipe.name,
        "model_summary": model_summary(loaded),
        "machine": machine_info(torch.device(device), next(loaded.parameters()).dtype),
        "settings": {
            "clients": clients,
            "requests_per_client": requests,
            "distinct_jobs": len(jobs),
            "max_batch_size": max_batch_size,
            "max_wait_ms": max_wait_ms,
            "max_new_tokens": max_new_tokens,
            "threads": threads,
            "batch_read": batch_read,
            "clock": "wall",
        },
        "one_at_a_time": one,
        "batched": many,
        "compared": len(compared),
        "mismatches": len(mismatches),
        "mismatched_requests": mismatches[:10],
        "reference_inconsistent": inconsistent,
        "jobs_with_vrt_answers": pointing,
        "speedup": round(many["requests_per_s"] / one["requests_per_s"], 3) if one["requests_per_s"] else None,
    }


def _is_saved(source: Any) -> bool:
    from pathlib import Path

    return Path(str(source)).is_dir()


def cmd_bench_serve(args: argparse.Namespace) -> int:
    """``padt bench serve``: the load test's JSON on stdout (and in ``--output``)."""
    from padt_core.cli import write_result

    result = bench_serve(
        args.model,
        clients=args.clients,
        requests=args.requests,
        distinct=args.distinct,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads or None,
        device=args.device,
        dtype=args.dtype,
        vrt_mode=args.vrt_mode,
        timeout=args.timeout,
        overrides=args.overrides or None,
        batch_read=args.batch_read,
    )
    write_result(result, args.output)
    return 0 if result["mismatches"] == 0 and not result["batched"]["errors"] and not result["batched"]["lost"] else 1


def add_serve_command(sub: Any) -> None:
    """Add ``serve`` to ``padt bench``'s subcommands (``bench/cli.py``)."""
    from padt_core.cli import add_device, add_overrides, add_subcommand

    sv = add_subcommand(sub, "serve", "load test of padt serve on loopback: batched vs one at a time, answers checked")
    sv.add_argument("--model", default="tiny_qwen", help="model directory, recipe path or bundled name")
    sv.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    sv.add_argument("--requests", type=int, default=8, help="requests per client (default: 8)")
    sv.add_argument("--distinct", type=int, default=24, help="distinct jobs the requests cycle through")
    sv.add_argument("--max-batch-size", type=int, default=8, help="the batched server's (default: 8)")
    sv.add_argument("--max-wait-ms", type=float, default=10.0, help="the batched server's (default: 10)")
    sv.add_argument("--max-new-tokens", type=int, default=16, help="tokens per answer (default: 16)")
    sv.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; 0: torch's choice)")
    sv.add_argument(
        "--vrt-mode",
        choices=["random", "init"],
        default="random",
        help="random: a recipe's model gets non-zero prototypes so answers point (default); init: as built",
    )
    sv.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    sv.add_argument("--batch-read", action="store_true", help="the batched server as padt serve --batch-read")
    sv.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    add_device(sv)
    add_overrides(sv)
    sv.set_defaults(handler=cmd_bench_serve)
