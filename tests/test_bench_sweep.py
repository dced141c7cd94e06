"""Result benchmarks: the VRT cell numbers, a micro ablation sweep that resumes, plots, repro's pieces."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from padt_bench import sweep
from padt_bench.ablate import CONFIGS, bench_ablate, configuration_overrides
from padt_bench.repro import _comparison, bench_repro, best_lr, plan_budget, update_readme

from padt_core.data.sample import ObjectAnn
from padt_core.eval.vrt_cells import vrt_cell_stats
from padt_core.model import PredictedObject, Prediction

COVERAGE = 1 / 28  # Qwen2.5-VL's default: one pixel row of a 28-px cell


GRID = (8, 8)  # 224 x 224 px in 28-px cells


def rec_sample(sid: str, box: tuple[float, float, float, float], task: str = "rec") -> SimpleNamespace:
    return SimpleNamespace(id=sid, task=task, image_size=(224, 224), objects=[ObjectAnn("x", box)])


def answer(*runs: list[int]) -> Prediction:
    return Prediction(text="", objects=[PredictedObject(label="x", vrt=list(run)) for run in runs])


# ---------------------------------------------------------------------------------------------------
# distinct cells / on target
# ---------------------------------------------------------------------------------------------------


def test_vrt_cell_stats_on_a_hand_made_fixture():
    # Object 1 covers exactly cells (0,0),(0,1),(1,0),(1,1) = ids 0, 1, 8, 9; object 2 the cell (7,7) = 63.
    samples = [rec_sample("a", (0.0, 0.0, 0.25, 0.25)), rec_sample("b", (0.875, 0.875, 1.0, 1.0))]
    predictions = [
        answer([0, 1, 8, 9, 20]),  # 5 distinct, 4 on target
        answer([63, 63, 63, 5, 5]),  # 2 distinct, 3 on target (repeats count as emitted)
    ]
    stats = vrt_cell_stats(samples, predictions, lambda s: GRID, coverage=COVERAGE)
    assert stats["objects"] == 2 and stats["emitted"] == 10 and stats["on_target_emitted"] == 7
    assert stats["distinct_cells"] == pytest.approx(3.5)
    assert stats["on_target"] == pytest.approx(0.7)


def test_vrt_cell_stats_ignores_other_tasks_and_objects_without_vrts():
    samples = [rec_sample("a", (0.0, 0.0, 0.25, 0.25)), rec_sample("o", (0.0, 0.0, 1.0, 1.0), task="ovd")]
    text_only = [Prediction(text="", objects=[PredictedObject(label="x", vrt=[], box=[0, 0, 5, 5])]), answer([0])]
    stats = vrt_cell_stats(samples, text_only, lambda s: GRID, coverage=COVERAGE)
    assert stats["distinct_cells"] is None and stats["on_target"] is None and stats["objects"] == 0
    with_ovd = vrt_cell_stats(
        samples, [answer([0, 0]), answer([1, 2, 3])], lambda s: GRID, tasks=("rec", "ovd"), coverage=COVERAGE
    )
    assert with_ovd["distinct_cells"] == pytest.approx(2.0)  # (1 + 3) / 2 objects
    assert with_ovd["on_target"] == pytest.approx(1.0)  # on target is REC only
    with pytest.raises(ValueError, match="1 predictions for 2 samples"):
        vrt_cell_stats(samples, [answer([0])], lambda s: GRID, coverage=COVERAGE)


# ---------------------------------------------------------------------------------------------------
# a micro sweep: JSON, table, plot, resume
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_micro_ablation_writes_results_and_resumes(tmp_path, monkeypatch, one_thread):
    kwargs = dict(
        configs=["reference", "all"],
        seeds=1,
        steps=2,
        train_images=6,
        val_images=2,
        eval_points=2,
        eval_samples=2,
        jobs=1,
        work_dir=tmp_path / "work",
        command="padt bench ablate (test)",
    )
    results = bench_ablate(tmp_path / "out", **kwargs)
    saved = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert set(saved["runs"]) == {"reference/seed0", "all/seed0"}
    run = saved["runs"]["all/seed0"]
    assert [p["step"] for p in run["curve"]] == [1, 2]
    assert set(run["final"]) == set(sweep.CURVE_KEYS)
    assert "train.decoder_cell_subsets=true" in run["overrides"]
    assert set(saved["summary"]) == {"reference", "all"}
    assert set(saved["summary"]["all"]["rec_acc50"]) == {"mean", "std", "n"}
    assert saved["machine"]["dtype"] == "float32" and saved["command"] == "padt bench ablate (test)"
    assert results["runs"] == saved["runs"]
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| reference | 0 |" in table and "padt bench ablate (test)" in table
    assert (tmp_path / "out" / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any((tmp_path / "work" / "models").iterdir())  # run dirs removed

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep, "train_run", must_not_train)
    again = bench_ablate(tmp_path / "out", **kwargs)
    assert again["runs"] == saved["runs"]
    with pytest.raises(FileExistsError, match="other settings.*steps: 2 in the file, 3 now"):
        bench_ablate(tmp_path / "out", **{**kwargs, "steps": 3})


def test_failed_runs_are_reported_and_not_recorded(tmp_path, monkeypatch):
    def broken(spec, *args, **kwargs):
        raise RuntimeError(f"boom in {spec.key}")

    monkeypatch.setattr(sweep, "train_run", broken)
    monkeypatch.setattr(sweep.ShapesData, "ensure", lambda self: None)
    data = sweep.ShapesData(str(tmp_path / "data"), 4, 2)
    specs = [sweep.RunSpec("a", "tiny_qwen_shapes", 0, 2)]
    with pytest.raises(sweep.SweepError, match="1 of 1 runs failed"):
        sweep.run_sweep(specs, tmp_path / "r.json", {"x": 1}, data, work_dir=tmp_path / "w", log=lambda _: None)
    assert json.loads((tmp_path / "r.json").read_text())["runs"] == {}
    assert "boom in a/seed0" in (tmp_path / "w" / "logs" / "a-seed0.log").read_text()


def test_bad_sweep_input_names_the_value(tmp_path):
    with pytest.raises(ValueError, match="'nope'"):
        configuration_overrides("nope")
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        sweep.RunSpec("a", "tiny_qwen_shapes", 0, 0)
    with pytest.raises(ValueError, match="train images must be at least 1, got 0"):
        sweep.ShapesData("x", 0, 2)
    with pytest.raises(ValueError, match="runs listed twice"):
        spec = sweep.RunSpec("a", "tiny_qwen_shapes", 0, 2)
        sweep.run_sweep([spec, spec], tmp_path / "r.json", {}, sweep.ShapesData("x", 2, 2), work_dir=tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(FileExistsError, match="--overwrite"):
        sweep.load_results(tmp_path / "junk.json", {})
    assert sweep.eval_points(900, 4) == [225, 450, 675, 900]


def test_eval_cap_spreads_over_the_split_and_keeps_rec_and_res_paired():
    samples = [SimpleNamespace(task=t, id=i) for t, n in (("rec", 10), ("res", 10), ("ovd", 3)) for i in range(n)]
    kept = [(s.task, s.id) for s in sweep._cap_per_task(samples, 4)]
    rec_res = [(task, i) for task in ("rec", "res") for i in (0, 2, 5, 7)]  # evenly spaced, same positions
    assert kept == [*rec_res, ("ovd", 0), ("ovd", 1), ("ovd", 2)]  # fewer than the cap: all kept


def test_ablation_configurations_set_every_switch():
    for config in CONFIGS:
        overrides = configuration_overrides(config)
        assert any(o.startswith("generation.logits_processors=") for o in overrides)
        assert any(o.startswith("vrt.position=") for o in overrides)
        assert any(o.startswith("train.decoder_cell_subsets=") for o in overrides)
    assert "vrt.position=none" in configuration_overrides("reference")
    assert "vrt.position=learned" in configuration_overrides("positional")


# ---------------------------------------------------------------------------------------------------
# plots and repro's pieces
# ---------------------------------------------------------------------------------------------------


def test_plot_curves_writes_a_png(tmp_path):
    curves = {
        "padt": [[{"step": 10, "rec_acc50": 0.1}, {"step": 20, "rec_acc50": 0.3}]] * 2,
        "text": [[{"step": 10, "rec_acc50": 0.0, "ovd_map": None}, {"step": 20, "rec_acc50": 0.02}]],
    }
    path = sweep.plot_curves(curves, [("rec_acc50", "REC"), ("ovd_map", "OVD")], tmp_path / "p.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(rec: float, ovd: float, config: str = "padt@lr=0.001", seed: int = 0) -> dict:
    return {"config": config, "seed": seed, "final": {"rec_acc50": rec, "ovd_map": ovd}, "curve": []}


def test_best_lr_and_the_seed_by_seed_comparison():
    runs = {"padt@lr=0.001/seed0": _run(0.3, 0.1), "padt@lr=0.002/seed0": _run(0.3, 0.2, "padt@lr=0.002")}
    assert best_lr(runs, "padt", [1e-3, 2e-3]) == 2e-3  # tie on REC: OVD decides
    assert best_lr(runs, "padt", [1e-3, 3e-3]) is None  # the sweep is not finished
    summaries = {
        "padt": {"per_seed": {"0": {"final": {"rec_acc50": 0.3, "ovd_map": 0.1}}}},
        "text_coordinates": {"per_seed": {"0": {"final": {"rec_acc50": 0.0, "ovd_map": 0.0}}}},
    }
    result = _comparison(summaries)
    assert result["per_seed"]["0"] == {"rec_ratio": None, "rec_target_met": True, "ovd_higher": True}
    assert result["target_met_all_seeds"]
    assert _comparison({"padt": summaries["padt"]}) is None


def test_repro_plan_fits_its_budgets_and_the_readme_section_is_replaced():
    from padt_bench.repro import BUDGETS, TARGET_MINUTES

    for budget, (n_train, n_val, steps, points, samples) in BUDGETS.items():
        plan = plan_budget(
            methods=2, lrs=2, seeds=3, steps=steps, points=points, samples=samples,
            train_images=n_train, val_images=n_val, jobs=2,
        )  # fmt: skip
        assert plan["runs"] == 8 and plan["rounds_of_parallel_runs"] == 4
        assert plan["estimated_minutes"] <= TARGET_MINUTES[budget]
    first = update_readme("# Results\n\nintro\n", "<!-- padt bench repro: start -->\nA\n<!-- padt bench repro: end -->")
    second = update_readme(first, "<!-- padt bench repro: start -->\nB\n<!-- padt bench repro: end -->")
    assert "intro" in second and "B" in second and "A\n" not in second


def test_repro_checks_its_recipes_before_training(tmp_path):
    with pytest.raises(ValueError, match="no_such_recipe"):
        bench_repro(tmp_path, recipes={"text_coordinates": "no_such_recipe"}, work_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown method"):
        bench_repro(tmp_path, methods=["vrt"], work_dir=tmp_path)
