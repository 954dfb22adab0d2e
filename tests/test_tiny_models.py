"""Every tiny test model in timm through one sweep entry: each trains and is recorded ok, or its failure names the
step, the cause and the file with the traceback. A model that trained is never recorded as failed by what runs
after training (timm's test_vit3 once was, by the FLOP count)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import class_images


@pytest.mark.slow
def test_every_tiny_timm_model_trains_or_says_where_it_failed(params, tmp_path_factory):
    import timm

    from imgclf.training import sweep

    images = class_images(tmp_path_factory.mktemp("imgs"), 6, [(40, 40)])
    params["train"].update(pretrained=False, img_size=32, batch_size=16)
    params["base"].update(threads=2)
    params["runtime"].update(num_workers=0)
    params["sweep"].update(epochs=1, time_limit_s=None, max_params_m=None)
    out = tmp_path_factory.mktemp("out")
    records = {arch: sweep.run_arch(arch, images, params, out / arch) for arch in timm.list_models("test_*")}
    failed = {a: r for a, r in records.items() if r["status"] != "ok"}
    for arch, record in failed.items():
        assert record["status"] == "failed" and record["cause"] and record["failed_step"], (arch, record)
        assert Path(record["failure_log"]).is_file() and "Traceback" in Path(record["failure_log"]).read_text()
    assert records["test_vit3"]["status"] == "ok", records["test_vit3"]
    assert all(r["gmacs"] for r in records.values() if r["status"] == "ok"), records
