"""Choosing architectures: the exercise's filter, and writing sweep.archs without losing comments."""

from __future__ import annotations

import shutil

import pytest

from imgclf.common import PipelineError
from imgclf.training.archs import list_archs
from stages.list_archs import main
from tests.conftest import ROOT


def test_exercise_filter_drops_tf_and_hr():
    names = list_archs()
    assert len(names) > 1000
    assert not [n for n in names if n.startswith(("tf_", "hr"))]
    assert "resnet34" in names and "." not in "".join(names)  # one name per architecture, no weight tags


def test_patterns_params_and_limit():
    names = list_archs(include=["resnet1*", "resnet3*"], max_params_m=25, limit=3)
    assert names == sorted(names) and len(names) == 3
    assert all(n.startswith(("resnet1", "resnet3")) for n in names)
    assert "resnet34" in list_archs(include=["resnet34"], max_params_m=22)
    assert list_archs(include=["resnet34"], max_params_m=21) == []  # 21.8 M parameters


def test_write_keeps_comments_and_validates(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    main(["--include", "resnet18", "convnext_tiny", "--write"])
    text = (tmp_path / "params.yaml").read_text()
    assert "# Knobs only" in text and "# fastai's URLs.PETS" in text
    from imgclf.params import load_params

    assert load_params()["sweep"]["archs"] == ["convnext_tiny", "resnet18"]
    with pytest.raises(PipelineError, match="no architecture matches"):
        main(["--include", "no_such_arch_*", "--write"])


def test_a_default_count_is_built_once_per_process(monkeypatch):
    """`list_archs --max-params --sizes` asks for each count twice: the second comes from memory (half the
    ~2 minutes of counting the zoo); a count with model options is built each time."""
    import timm

    from imgclf.training import archs

    built, real = [], timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: built.append(name) or real(name, **kw))
    archs._count_default.cache_clear()
    first = archs.count_params_m("test_resnet")
    assert archs.count_params_m("test_resnet") == first and built == ["test_resnet"]
    assert archs.count_params_m("test_resnet", num_classes=5) < first and built == ["test_resnet"] * 2
