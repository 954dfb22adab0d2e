"""Budgets of a sweep entry: too many parameters skips it before anything loads, running past the time limit
stops it at an epoch boundary; both are recorded with their reason, the sweep goes on and the leaderboard lists
them. Tiny timm models on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgclf.common import PipelineError
from tests.conftest import class_images


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 8 images, 40x40 px, in class folders."""
    return class_images(tmp_path_factory.mktemp("imgs"), 8, [(40, 40)])


@pytest.fixture
def sweep_params(params, tmp_path) -> dict:
    """Project params for tiny CPU runs: no hub, 32 px, batch 8, three epochs, no budgets."""
    params["train"].update(batch_size=8, img_size=32, pretrained=False, lr=0.01)
    params["base"].update(threads=2)
    params["runtime"].update(num_workers=0)
    params["sweep"].update(epochs=3, max_params_m=None, time_limit_s=None, save_models=True)
    return params


def _run(arch, image_dir, params, root: Path) -> dict:
    from imgclf.training import sweep

    return sweep.run_arch(
        arch, image_dir, params, root / "models" / arch, root / "live" / arch, root / "confusion" / f"{arch}.csv"
    )


def test_over_the_size_budget_is_skipped_before_anything_loads(image_dir, sweep_params, tmp_path, monkeypatch):
    from imgclf.training import sweep

    def never(*args, **kwargs):
        raise AssertionError("a skipped entry must not train")

    monkeypatch.setattr(sweep, "train_model", never)
    monkeypatch.setattr(sweep, "labelled_items", never)  # nor read its images
    sweep_params["sweep"]["max_params_m"] = 0.05  # test_resnet: 0.47 M parameters (1,000-class head included)
    record = _run("test_resnet", image_dir, sweep_params, tmp_path)
    assert record["status"] == "skipped"
    assert record["reason"] == "0.5 M parameters > sweep.max_params_m = 0.05"
    import timm

    built = sum(p.numel() for p in timm.create_model("test_resnet").parameters()) / 1e6  # a real build counts the same
    assert record["params_m"] == pytest.approx(built, abs=1e-4) and record["accuracy"] is None
    # every output DVC declares exists, with nothing trained in it
    assert (tmp_path / "models/test_resnet/skipped.txt").read_text().startswith("0.5 M parameters")
    assert not list((tmp_path / "models/test_resnet").glob("model.*"))
    assert (tmp_path / "live/test_resnet").is_dir()
    assert (tmp_path / "confusion/test_resnet.csv").read_text() == "actual,predicted,image\n"


def test_within_the_size_budget_trains(image_dir, sweep_params, tmp_path):
    sweep_params["sweep"].update(max_params_m=0.5, epochs=1)
    record = _run("test_resnet", image_dir, sweep_params, tmp_path)
    assert record["status"] == "ok" and record["params_m"] < 0.5


@pytest.mark.parametrize("pretrained", [False, True], ids=["fit_one_cycle", "fine_tune"])
def test_past_the_time_limit_stops_at_the_first_epoch_boundary(
    pretrained, image_dir, sweep_params, weights_dir, tmp_path, monkeypatch
):
    from imgclf.training import callbacks

    epochs_run = []
    real_after_epoch = callbacks.TimeLimit.after_epoch

    def counting(self):
        epochs_run.append(self.epoch)
        real_after_epoch(self)

    monkeypatch.setattr(callbacks.TimeLimit, "after_epoch", counting)
    sweep_params["train"].update(pretrained=pretrained, weights=str(weights_dir))
    sweep_params["sweep"]["time_limit_s"] = 1e-6  # past it after the first epoch, whatever the machine
    record = _run("test_resnet", image_dir, sweep_params, tmp_path)
    assert record["status"] == "failed"
    assert record["reason"].startswith("time limit after 1 epoch on CPU"), record["reason"]
    # fine_tune is two fits (the frozen epoch, then 3 more): a stop in the first must not let the second start
    assert epochs_run == [0]
    assert record["accuracy"] is None
    assert "TimeLimitReached" in (tmp_path / "models/test_resnet/failure.txt").read_text()
    assert not (tmp_path / "models/test_resnet/model.safetensors").exists()


def test_past_the_time_limit_after_the_last_epoch_is_a_complete_result(image_dir, sweep_params, tmp_path):
    sweep_params["sweep"].update(time_limit_s=1e-6, epochs=1)  # fit_one_cycle: one epoch, nothing left to stop
    record = _run("test_resnet", image_dir, sweep_params, tmp_path)
    assert record["status"] == "ok" and record["accuracy"] is not None


def test_budgets_are_recorded_the_sweep_goes_on_and_the_leaderboard_lists_them(image_dir, sweep_params, tmp_path):
    """Three entries in one sweep: one skipped by size, one stopped by time, one trained; then the report."""
    from imgclf.reporting.report import make_report

    records = []
    for arch, budget in [
        ("test_convnext", {"max_params_m": 0.01}),
        ("test_resnet", {"time_limit_s": 1e-6}),
        ("test_efficientnet", {"epochs": 1}),
    ]:
        params = json.loads(json.dumps(sweep_params))
        params["sweep"].update(budget)
        records.append(_run(arch, image_dir, params, tmp_path))
    assert [r["status"] for r in records] == ["skipped", "failed", "ok"]
    summary = make_report(records, tmp_path / "report")
    assert summary["best_arch"] == "test_efficientnet"
    board = (tmp_path / "report/leaderboard.md").read_text()
    table = [line for line in board.splitlines() if line.startswith("|")][2:]  # below the header and its rule
    rows = {line.split("|")[2].strip(): line for line in table}
    assert set(rows) == {"test_convnext", "test_resnet", "test_efficientnet"}
    assert "skipped" in rows["test_convnext"] and "> sweep.max_params_m = 0.01" in rows["test_convnext"]
    assert "failed" in rows["test_resnet"] and "time limit after 1 epoch on CPU" in rows["test_resnet"]


def test_save_models_false_keeps_metrics_curves_and_confusion_but_no_weights(image_dir, sweep_params, tmp_path):
    from imgclf.training.artifacts import load_model

    sweep_params["sweep"].update(save_models=False, epochs=1)
    record = _run("test_resnet", image_dir, sweep_params, tmp_path)
    assert record["status"] == "ok" and record["accuracy"] is not None
    out = tmp_path / "models/test_resnet"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "most_confused.csv"]
    assert json.loads((out / "model.json").read_text())["weights"] is None
    assert (tmp_path / "confusion/test_resnet.csv").read_text().count("\n") > 1
    assert list((tmp_path / "live/test_resnet").rglob("*.tsv"))
    with pytest.raises(PipelineError, match="sweep.save_models: false"):
        load_model(out)


def test_fit_time_is_a_line_in_the_parameters_or_the_mean_time_per_parameter():
    from imgclf.zoo import fit_time_line

    on_a_line = [{"params_m": p, "train_time_s": 10 + 2 * p} for p in (1, 3, 10)]
    a, b, how = fit_time_line(on_a_line)
    assert (round(a, 6), round(b, 6), how) == (10, 2, "least-squares line")
    # a negative fixed cost is no estimate: fall back to total time / total parameters
    a, b, how = fit_time_line([{"params_m": 1, "train_time_s": 1}, {"params_m": 2, "train_time_s": 5}])
    assert (a, b, how) == (0.0, 2.0, "mean time per parameter")


def test_list_archs_prints_sizes_and_estimates_the_sweep_from_measured_entries(tmp_path, capsys):
    from imgclf.training.archs import count_params_m
    from imgclf.zoo import arch_sizes, estimate, measured
    from stages.list_archs import main

    metrics = tmp_path / "records"
    metrics.mkdir()
    for arch, params_m, seconds in [("a", 1, 12), ("b", 3, 16), ("c", 10, 30)]:
        (metrics / f"{arch}.json").write_text(
            json.dumps({"arch": arch, "status": "ok", "params_m": params_m, "train_time_s": seconds, "device": "cuda"})
        )
    (metrics / "d.json").write_text(
        json.dumps({"arch": "d", "status": "failed", "params_m": None, "train_time_s": None})
    )
    assert len(measured(metrics)) == 3  # the failed entry measures nothing

    main(["--include", "test_resnet", "test_convnext", "--sizes", "--estimate", "--records-dir", str(metrics)])
    out = capsys.readouterr().out
    resnet, convnext = count_params_m("test_resnet"), count_params_m("test_convnext")
    assert f"{resnet:.2f} M params" in out and f"{resnet * 4:.1f} MB est." in out  # offline: 4 bytes a parameter
    assert "estimate for 2 architectures (2 with a parameter count), from 3 measured entries on cuda" in out
    assert "least-squares line" in out and "10.0 s + 2.000 s per million parameters" in out
    e = estimate(arch_sizes(["test_resnet", "test_convnext"], online=False), measured(metrics))
    assert e["time_s"] == pytest.approx(2 * 10 + 2 * (resnet + convnext), abs=1e-3)
    assert e["peak_weights_bytes"] == int(max(resnet, convnext) * 1e6 * 4)

    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(PipelineError, match="no measured entries"):
        main(["--include", "test_resnet", "--estimate", "--records-dir", str(empty)])


def test_a_sample_spreads_over_the_sizes():
    from imgclf.zoo import sample_by_size

    sizes = [{"arch": f"m{i:02d}", "params_m": float(i)} for i in range(10)] + [{"arch": "broken", "params_m": None}]
    assert sample_by_size(sizes, 4) == ["m00", "m03", "m06", "m09"]  # smallest, largest, evenly between
    assert sample_by_size(sizes, 20) == [f"m{i:02d}" for i in range(10)]
