"""params.yaml validation: every mistake fails before any work, naming the key and the expected form."""

from __future__ import annotations

import pytest

from imgclf.common import PipelineError
from imgclf.params import validate
from stages.check_params import check_params


def test_project_params_are_valid(params):
    validate(params)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["sweep"].update(epochs=-1), "`sweep.epochs` should be a whole number >= 1, got -1"),
        (lambda p: p["sweep"].update(epochs="4"), "`sweep.epochs` should be a whole number >= 1, got '4'"),
        (lambda p: p["sweep"].update(epoch=4), "unknown key `sweep.epoch` (typo?)"),
        (lambda p: p.update(swep=p.pop("sweep")), "unknown section `swep` (typo?)"),
        (lambda p: p["datasets"]["monuments"].update(classes={}), "at least two classes"),
        (lambda p: p["datasets"]["monuments"].update(classes={"a": "A"}), "at least two classes"),
        (lambda p: p["sweep"].update(archs=[]), "`sweep.archs` should be a non-empty list"),
        (lambda p: p["sweep"].update(archs=["resnet18", "resnet18"]), "a list without repeats"),
        (lambda p: p["sweep"].update(seeds=[]), "`sweep.seeds` should be a non-empty list of whole numbers >= 0"),
        (lambda p: p["sweep"].update(seeds=[42, 7, 42]), "`sweep.seeds` should be a list without repeats, got [42]"),
        (lambda p: p["sweep"].update(seeds=[42, -1]), "`sweep.seeds[1]` should be a whole number >= 0, got -1"),
        (lambda p: p["sweep"].update(seeds=["42"]), "`sweep.seeds[0]` should be a whole number >= 0, got '42'"),
        (lambda p: p["sweep"].update(seeds=42), "`sweep.seeds` should be a non-empty list of whole numbers >= 0"),
        (lambda p: p["report"].update(alpha=0), "`report.alpha` should be a number between 0 and 1 (exclusive), got 0"),
        (lambda p: p.pop("report"), "missing section `report`"),
        (lambda p: p["train"].update(valid_pct=1.5), "`train.valid_pct` should be a number between 0 and 1"),
        (lambda p: p["train"].update(pretrained="yes"), "`train.pretrained` should be true or false"),
        (lambda p: p["search"].update(engine="google"), "`search.engine` should be one of ddgs, file"),
        (lambda p: p["download_pets"].update(url="ftp://x/y.tgz"), "an http:// or https:// URL"),
        (lambda p: p["train"].pop("lr"), "missing key `train.lr`"),
        (lambda p: p["sweep"].update(dataset="nope"), "`sweep.dataset` should be a name under `datasets`"),
        # strict types: no coercion, and a bool is not a number
        (lambda p: p["base"].update(seed=True), "`base.seed` should be a whole number >= 0, got True"),
        (lambda p: p["train"].update(lr="0.1"), "`train.lr` should be a number > 0, got '0.1'"),
        (lambda p: p["train"].update(batch_size=64.0), "`train.batch_size` should be a whole number >= 1, got 64.0"),
        (lambda p: p["train"].update(lr=None), "`train.lr` should be a number > 0, got None"),
        # optional keys, choices, nested names and list items are named in full
        (lambda p: p["train"].update(img_size=0), "`train.img_size` should be a whole number >= 1 or null, got 0"),
        (
            lambda p: p["search"].update(license="free"),
            "`search.license` should be one of any, Public, Share, "
            "ShareCommercially, Modify, ModifyCommercially or null",
        ),
        (lambda p: p["download_pets"].update(sha256="xyz"), "`download_pets.sha256` should be a hex digest or null"),
        (
            lambda p: p["sweep"].update(archs=["resnet18", "convnext_tiny", "bad name"]),
            "`sweep.archs[2]` should be a timm architecture name such as resnet34, got 'bad name'",
        ),
        (
            lambda p: p["datasets"]["monuments"].update(classes="India Gate"),
            "`datasets.monuments.classes` should be a list of class names ([India Gate, Arc de Triomphe]) or a "
            "mapping label -> search query, got 'India Gate'",
        ),
        (
            lambda p: p["datasets"]["monuments"].update(classes=["India Gate", 1984]),
            "`datasets.monuments.classes[1]` should be a class name: non-empty text",
        ),
        (
            lambda p: p["datasets"]["monuments"]["classes"].update({"INDIA_GATE": "India Gate"}),
            "`datasets.monuments.classes`: classes 'india_gate' and 'INDIA_GATE' would share the folder",
        ),
        (
            lambda p: p["datasets"]["monuments"]["classes"].update(big_ben=" "),
            "`datasets.monuments.classes.big_ben` should be a non-empty search query, got ' '",
        ),
        (lambda p: p["datasets"].update({"my set": p["datasets"]["monuments"]}), "`datasets.my set` should be a name"),
        (lambda p: p["datasets"]["monuments"].update(clases={}), "unknown key `datasets.monuments.clases` (typo?)"),
        (
            lambda p: p["finetune"]["tasks"]["pets"].update(label="dog"),
            "`finetune.tasks.pets.label` should be one of cat_vs_dog, breed, folder, got 'dog'",
        ),
        (
            lambda p: p["finetune"]["tasks"]["pets"].update(dataset="nope"),
            "`finetune.tasks.pets.dataset` should be pets or a name under `datasets`",
        ),
        (
            lambda p: p["finetune"]["tasks"].pop("five_class"),
            "`finetune.tasks.five_class` should be a task on dataset five_class with label folder (review@five_class "
            "reviews its model), got None",
        ),
        (
            lambda p: p["finetune"]["tasks"]["monuments"].update(dataset="five_class"),
            "`finetune.tasks.monuments` should be a task on dataset monuments with label folder",
        ),
        (
            lambda p: p["finetune"]["tasks"]["pets"].update(arch="bad name"),
            "`finetune.tasks.pets.arch` should be a timm architecture name such as resnet34 or null, got 'bad name'",
        ),
        (lambda p: p["finetune"]["tasks"]["pets"].pop("arch"), "missing key `finetune.tasks.pets.arch`"),
        (lambda p: p.update(train=[1]), "`train` should be a section (mapping), got [1]"),
        (lambda p: p.pop("base"), "missing section `base`"),
    ],
)
def test_bad_params_name_the_key(params, edit, message):
    edit(params)
    with pytest.raises(PipelineError) as err:
        validate(params)
    assert message in str(err.value)
    assert "\n" not in str(err.value) and "pydantic" not in str(err.value)  # one sentence, no pydantic dump


def test_a_renamed_key_is_reported_as_the_typo_not_as_missing(params):
    params["train"]["batchsize"] = params["train"].pop("batch_size")
    with pytest.raises(
        PipelineError,
        match=r"unknown key `train.batchsize` \(typo\?\). Known keys in `train`: "
        r"valid_pct, batch_size, img_size",
    ):
        validate(params)


def test_whole_numbers_are_accepted_where_a_number_is_expected(params):
    params["train"]["lr"] = 1
    params["scrape"]["connect_timeout_s"] = 5
    validate(params)


def test_unknown_architecture_is_named_with_suggestions(params):
    params["sweep"]["archs"] = ["resnet18", "resnett50"]
    params["export"]["model"] = "resnet18-42"
    with pytest.raises(PipelineError) as err:
        check_params(params)
    assert "unknown architecture 'resnett50'" in str(err.value)
    assert "resnet50" in str(err.value)


def test_a_tasks_own_architecture_is_checked(params):
    params["finetune"]["tasks"]["five_class"]["arch"] = "resnett34"
    with pytest.raises(PipelineError, match="unknown architecture 'resnett34'"):
        check_params(params)


def test_architecture_without_weights_is_refused_when_pretrained(params):
    params["sweep"]["archs"] = ["botnet50ts_256"]  # known to timm, but no pretrained weights
    params["export"]["model"] = "botnet50ts_256-42"
    with pytest.raises(PipelineError) as err:
        check_params(params)
    assert "'botnet50ts_256' has no pretrained weights" in str(err.value)
    params["train"]["pretrained"] = False
    check_params(params)  # fine when training from scratch


def test_weight_tags_are_checked(params):
    params["sweep"]["archs"] = ["resnet50.a1_in1k", "vit_base_patch16_384.augreg_in21k_ft_in1k"]
    params["export"]["model"] = "resnet50.a1_in1k-42"
    check_params(params)
    params["sweep"]["archs"] = ["resnet50.no_such_tag"]
    params["export"]["model"] = "resnet50.no_such_tag-42"
    with pytest.raises(PipelineError) as err:
        check_params(params)
    assert "resnet50 has no weights tagged 'no_such_tag'" in str(err.value) and "resnet50.a1_in1k" in str(err.value)


def test_tagged_architecture_gets_that_tags_input_size():
    from imgclf.training.archs import model_setup

    assert model_setup("vit_base_patch16_384.augreg_in21k_ft_in1k", None)["size"] == 384
    assert model_setup("vit_base_patch16_224", None)["size"] == 224


def test_dvc_parses_yaml_with_the_c_parser():
    """DVC reads params.yaml once per stage with ruamel.yaml's safe loader: with 1,102 architectures in the list
    the pure-Python parser dominates `dvc status` (requirements.txt pins ruamel.yaml.clib for this)."""
    from dvc.utils.serialize._yaml import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is missing: pip install -r requirements.txt"
    assert YAML(typ="safe").Parser is CParser
    assert parse_yaml("a: [1, 2]\n", "params.yaml") == {"a": [1, 2]}
