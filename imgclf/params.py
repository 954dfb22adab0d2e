"""The one place that says what params.yaml must contain: every key, its type and its range.

A typo, a wrong type or an impossible value fails here, before any work, with a message that names the
key and the expected form.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from imgclf.common import PipelineError
from imgclf.datasets import parse_classes

# A spec is a type name, or a dict of key -> spec for a section. Type names:
#   int+ (>= 1), int0 (>= 0), float+ (> 0), float01 (0 < x < 1), bool, str, str? (or null), choice:a|b,
#   classes (list of names or mapping label -> query, >= 2; see imgclf.datasets.parse_classes),
#   archs (non-empty list of names), tasks (finetune tasks)
SCHEMA: dict[str, Any] = {
    "base": {"seed": "int0", "num_workers": "int0", "threads": "int0"},
    "download_pets": {
        "url": "url", "size": "int+", "md5_first_mb": "hex?", "sha256": "hex?",
        "image_size": "int+", "allow_private": "bool",
    },
    "search": {
        "engine": "choice:ddgs|file", "max_results": "int+", "region": "str",
        "safesearch": "choice:on|moderate|off",
        "license": "choice?:any|Public|Share|ShareCommercially|Modify|ModifyCommercially",
        "retries": "int0", "backoff_s": "float0",
    },
    "scrape": {
        "threads": "int+", "connect_timeout_s": "float+", "deadline_s": "float+", "max_bytes": "int+",
        "max_redirects": "int0", "allow_private": "bool", "image_size": "int+", "min_side": "int0",
        "max_aspect": "float+", "min_images": "int+", "near_duplicates": "choice:report|drop",
        "near_distance": "int0",
    },
    "datasets": "datasets",
    "train": {
        "valid_pct": "float01", "batch_size": "int+", "img_size": "int+?", "lr": "float+",
        "pretrained": "bool", "weights": "str?", "precision": "choice:auto|fp32|fp16|bf16",
        "resume": "bool",
    },
    "finetune": {"arch": "arch", "tasks": "tasks"},
    "sweep": {"dataset": "str", "epochs": "int+", "archs": "archs"},
}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TASK_SPEC = {"dataset": "str", "label": "choice:cat_vs_dog|breed|folder", "epochs": "int+"}
DATASET_SPEC = {"classes": "classes"}
NAMED_SECTIONS = {"datasets": DATASET_SPEC, "tasks": TASK_SPEC}


def _fail(key: str, expected: str, value: Any) -> None:
    raise PipelineError(f"params.yaml: `{key}` should be {expected}, got {value!r}. Fix it in params.yaml.")


def _check_section(key: str, spec: dict[str, Any], value: Any) -> None:
    if not isinstance(value, dict):
        _fail(key, "a section (mapping)", value)
    unknown = sorted(set(value) - set(spec))
    if unknown:
        raise PipelineError(
            f"params.yaml: unknown key `{key}.{unknown[0]}` (typo?). Known keys in `{key}`: {', '.join(spec)}."
        )
    for name, sub in spec.items():
        if name not in value:
            raise PipelineError(f"params.yaml: missing key `{key}.{name}`; add it (see the project's params.yaml).")
        _check(f"{key}.{name}", sub, value[name])


def _check(key: str, spec: Any, value: Any) -> None:  # noqa: C901 - one flat dispatch reads best here
    if isinstance(spec, dict):
        return _check_section(key, spec, value)
    optional = spec.endswith("?") or spec.startswith("choice?")
    if value is None:
        if not optional:
            _fail(key, f"a value ({spec.rstrip('?')})", value)
        return
    kind = spec.rstrip("?")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = (is_int or isinstance(value, float)) and not isinstance(value, bool)
    if kind == "int+" and not (is_int and value >= 1):
        _fail(key, "a whole number >= 1", value)
    elif kind == "int0" and not (is_int and value >= 0):
        _fail(key, "a whole number >= 0", value)
    elif kind == "float+" and not (is_num and value > 0):
        _fail(key, "a number > 0", value)
    elif kind == "float0" and not (is_num and value >= 0):
        _fail(key, "a number >= 0", value)
    elif kind == "float01" and not (is_num and 0 < value < 1):
        _fail(key, "a number between 0 and 1 (exclusive)", value)
    elif kind == "bool" and not isinstance(value, bool):
        _fail(key, "true or false", value)
    elif kind in ("str", "url") and not (isinstance(value, str) and value.strip()):
        _fail(key, "a non-empty string", value)
    elif kind == "url" and not re.match(r"^https?://", value):
        _fail(key, "an http:// or https:// URL", value)
    elif kind == "hex" and not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]+", value)):
        _fail(key, "a hex digest or null", value)
    elif kind.startswith("choice"):
        choices = kind.split(":", 1)[1].split("|")
        if value not in choices:
            _fail(key, "one of " + ", ".join(choices) + (" or null" if optional else ""), value)
    elif kind == "arch" and not (isinstance(value, str) and NAME_RE.match(value)):
        _fail(key, "a timm architecture name such as resnet34", value)
    elif kind == "archs":
        _check_archs(key, value)
    elif kind == "classes":
        _check_classes(key, value)
    elif kind in NAMED_SECTIONS:
        _check_named_sections(key, NAMED_SECTIONS[kind], value)
    return None


def _check_named_sections(key: str, spec: dict[str, str], value: Any) -> None:
    """A non-empty mapping of user-chosen names to sections of `spec` (datasets, finetune tasks)."""
    if not isinstance(value, dict) or not value:
        _fail(key, f"a mapping of name -> {{{', '.join(spec)}}}", value)
    for name, section in value.items():
        _check_name(f"{key}.{name}", name)
        _check_section(f"{key}.{name}", spec, section)


def _check_name(key: str, name: Any) -> None:
    if not (isinstance(name, str) and NAME_RE.match(name)):
        _fail(key, "a name of letters, digits, '_', '.', '-'", name)


def _check_archs(key: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        _fail(key, "a non-empty list of timm architecture names", value)
    for i, name in enumerate(value):
        if not (isinstance(name, str) and NAME_RE.match(name)):
            _fail(f"{key}[{i}]", "a timm architecture name such as resnet34", name)
    dupes = sorted({n for n in value if value.count(n) > 1})
    if dupes:
        _fail(key, "a list without repeats", dupes)


def _check_classes(key: str, value: Any) -> None:
    parse_classes(value, key)  # the one definition of the forms `classes` accepts


def validate(params: dict[str, Any]) -> None:
    """Raise PipelineError naming the first key of `params` that does not fit SCHEMA."""
    if not isinstance(params, dict):
        _fail("params.yaml", "a mapping of sections", params)
    unknown = sorted(set(params) - set(SCHEMA))
    if unknown:
        raise PipelineError(f"params.yaml: unknown section `{unknown[0]}` (typo?). Known: {', '.join(SCHEMA)}.")
    for name, spec in SCHEMA.items():
        if name not in params:
            raise PipelineError(f"params.yaml: missing section `{name}`; add it (see the project's params.yaml).")
        _check(name, spec, params[name])
    for task, cfg in params["finetune"]["tasks"].items():
        if cfg["dataset"] != "pets" and cfg["dataset"] not in params["datasets"]:
            _fail(f"finetune.tasks.{task}.dataset", "pets or a name under `datasets`", cfg["dataset"])
    if params["sweep"]["dataset"] not in params["datasets"]:
        _fail("sweep.dataset", "a name under `datasets`", params["sweep"]["dataset"])


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml and validate it; raise PipelineError naming the first problem."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the stages from the project root (dvc repro does).")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"{path} is not valid YAML: {e}") from None
    validate(params)
    return params
