"""Only result-changing params are deps: each stage's `params:` in dvc.yaml lists the keys that can change its
outputs, and a knob that only changes how a result is reached (retries, backoff, download threads, resume, ...)
reruns check_params and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_dvc, stages_run

# Keys that change no stage's outputs: deps of check_params only (which checks the whole file). Each is
# explained in dvc.yaml's header. A new params key must be listed by a stage or added here, with its reason.
NON_RESULT = {
    "search.retries": 5,  # how hard to try; a search that gives up fails and records nothing
    "search.backoff_s": 0.5,
    "scrape.threads": 1,  # parallel downloads; outcomes are kept per URL, in manifest order
    "scrape.min_images": 1,  # a threshold that fails the stage, never changes what it writes
    "download_pets.allow_private": False,  # permits a private host or fails (the demo needs true: a rerun fails)
    "runtime.resume": True,  # resuming gives the same result as an uninterrupted run
    "runtime.data_on_device_max_mb": 16,  # where decoded images are kept (GPU or CPU memory), not what they are
    "runtime.keep_weights": True,  # whether downloaded hub weights stay in the cache after a sweep entry
    "runtime.num_workers": 2,  # threads that decode the images once: the same weights (tests/test_training.py)
}


def leaves(params: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted key of every value in `params` (a dataset's `classes` counts as one value, whatever its form)."""
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not path.endswith(".classes"):
            yield from leaves(value, path + ".")
        else:
            yield path


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        params = params[part]
    return params


def stage_params(params: dict[str, Any]) -> dict[str, list[str]]:
    """Stage -> the params keys dvc.yaml lists for it, `${key}` expanded over its foreach source ("" = the whole
    file)."""
    out: dict[str, list[str]] = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        keys = []
        for item in stage.get("do", stage).get("params", []):
            if isinstance(item, dict):  # `params.yaml:` with no keys: the whole file
                keys.append("")
            elif "${key}" in item:
                source = stage["foreach"].removeprefix("${").removesuffix("}")
                keys += [item.replace("${key}", k) for k in _lookup(params, source)]
            else:
                keys.append(item)
        out[name] = keys
    return out


def covers(listed: str, leaf: str) -> bool:
    """Whether the listed params key ("" = the whole file) includes the dotted key `leaf`."""
    return listed == "" or leaf == listed or leaf.startswith(listed + ".")


def test_check_params_reads_the_whole_file_and_every_listed_key_exists(project_params):
    listed = stage_params(project_params)
    assert listed["check_params"] == [""]
    for keys in listed.values():
        for key in keys:
            if key:
                _lookup(project_params, key)  # KeyError: a typo DVC would only report at `dvc repro`


# Sections a stage may list whole: every key in them can change the outputs of the stages that list them (one
# params key instead of 8 or 2: DVC walks the whole parsed params.yaml for each key of each stage). Never `sweep`:
# its `archs` list would rerun every entry when one is added.
WHOLE_SECTIONS = {"base", "train"}


def test_no_other_stage_lists_a_non_result_knob_or_a_whole_section_but_base_and_train(project_params):
    for stage, keys in stage_params(project_params).items():
        if stage == "check_params":
            continue
        whole = {k for k in keys if "." not in k}
        assert whole <= WHOLE_SECTIONS, f"{stage} lists the whole of {sorted(whole - WHOLE_SECTIONS)}"
        knobs = [leaf for leaf in NON_RESULT for key in keys if covers(key, leaf)]
        assert not knobs, f"{stage} depends on {knobs}, which change no result: a change would rerun it"


def test_every_other_key_is_a_dep_of_some_stage(project_params):
    listed = [k for stage, keys in stage_params(project_params).items() if stage != "check_params" for k in keys]
    assert set(NON_RESULT) <= set(leaves(project_params))
    orphans = [
        leaf for leaf in leaves(project_params) if leaf not in NON_RESULT and not any(covers(k, leaf) for k in listed)
    ]
    assert not orphans, (
        f"{orphans}: list each under the stages whose outputs it can change (dvc.yaml), or, if "
        "it changes no result, in NON_RESULT here with the reason in dvc.yaml's header"
    )


def _edit_params(ws, changes: dict[str, Any]) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        section = _lookup(params, ".".join(parents))
        assert section[last] != value, f"{dotted} is already {value!r} in the demo: pick another value"
        section[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def _changed_stages(ws) -> set[str]:
    return set(json.loads(run_dvc(ws, "status", "--json").stdout))


@pytest.mark.slow
def test_changing_every_non_result_knob_reruns_only_check_params(copy_workspace):
    """All knobs in one edit (one repro instead of one per knob): `dvc status` names check_params alone, so no
    other stage depends on any of them, and `dvc repro` runs only check_params (its output never changes)."""
    ws, _ = copy_workspace
    assert _changed_stages(ws) == set()
    _edit_params(ws, NON_RESULT)
    assert _changed_stages(ws) == {"check_params"}
    res = run_dvc(ws, "repro")
    assert stages_run(res.stdout) == ["check_params"], res.stdout
    assert _changed_stages(ws) == set()
    # and the check can see other stages: a result key reruns the stages that read it
    _edit_params(ws, {"scrape.near_distance": 3})
    assert _changed_stages(ws) == {"check_params", "scrape@monuments", "scrape@five_class"}
