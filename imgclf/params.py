"""The one place that says what params.yaml must contain: one pydantic model per section, every key required,
no unknown keys, no type coercion ("4" is not 4, true is not 1).

A typo, a wrong type or an impossible value fails here, before any work, with one message that names the
key (dotted: `sweep.archs[2]`), the value and the expected form. Each reusable form below carries that
expected form as its description. To add a key, add one line to its section's model (and to params.yaml).
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from imgclf.common import PipelineError
from imgclf.datasets import parse_classes

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_FORM = "a name of letters, digits, '_', '.', '-'"

# The forms a value can take; the description is what the error message says the value should be.
WholeNumber = Annotated[int, Field(ge=1, description="a whole number >= 1")]
Count = Annotated[int, Field(ge=0, description="a whole number >= 0")]
Positive = Annotated[float, Field(gt=0, description="a number > 0")]
NonNegative = Annotated[float, Field(ge=0, description="a number >= 0")]
Fraction = Annotated[float, Field(gt=0, lt=1, description="a number between 0 and 1 (exclusive)")]
Flag = Annotated[bool, Field(description="true or false")]
Text = Annotated[str, Field(pattern=r"\S", description="a non-empty string")]
Url = Annotated[str, Field(pattern=r"^https?://", description="an http:// or https:// URL")]
Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]+$", description="a hex digest")]
Name = Annotated[str, Field(pattern=NAME_RE.pattern, description=NAME_FORM)]
Arch = Annotated[str, Field(pattern=NAME_RE.pattern, description="a timm architecture name such as resnet34")]


class Invalid(ValueError):
    """Raised by a custom check: `expected` form, the offending `value`, and the sub-key `at` it sits under."""

    def __init__(self, expected: str, value: Any, at: str | None = None):
        super().__init__(expected)
        self.expected, self.value, self.at = expected, value, at


def no_repeats(names: list[Any]) -> list[Any]:
    """Refuse a list that names something twice (a sweep would train it twice under one output folder)."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise Invalid("a list without repeats", dupes)
    return names


class Section(BaseModel):
    """A params.yaml section: every key required, unknown keys refused, values never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Base(Section):
    seed: Count
    threads: Count


class Runtime(Section):
    num_workers: Count
    resume: Flag
    data_on_device_max_mb: NonNegative
    keep_weights: Flag


class DownloadPets(Section):
    url: Url
    size: WholeNumber
    md5_first_mb: Hex | None
    sha256: Hex | None
    image_size: WholeNumber
    allow_private: Flag


class Search(Section):
    engine: Literal["ddgs", "file"]
    backend: Literal["duckduckgo", "bing", "auto"]
    max_results: WholeNumber
    region: Text
    safesearch: Literal["on", "moderate", "off"]
    license: Literal["any", "Public", "Share", "ShareCommercially", "Modify", "ModifyCommercially"] | None
    retries: Count
    backoff_s: NonNegative


class Scrape(Section):
    threads: WholeNumber
    connect_timeout_s: Positive
    deadline_s: Positive
    max_bytes: WholeNumber
    max_redirects: Count
    allow_private: Flag
    image_size: WholeNumber
    min_side: Count
    max_aspect: Positive
    min_images: WholeNumber
    near_duplicates: Literal["report", "drop"]
    near_distance: Count


class Dataset(Section):
    # checked by imgclf.datasets.parse_classes in validate(), which names the dataset's key
    classes: Annotated[Any, Field(description="a list of class names or a mapping label -> search query")]


class Train(Section):
    valid_pct: Fraction
    batch_size: WholeNumber
    img_size: WholeNumber | None
    lr: Positive
    pretrained: Flag
    weights: Text | None
    precision: Literal["auto", "fp32", "fp16", "bf16"]
    augment: Literal["crop", "rrc_flip"]


class Task(Section):
    dataset: Text
    label: Literal["cat_vs_dog", "breed", "folder"]
    epochs: WholeNumber
    arch: Arch | None  # null: finetune.arch


class Finetune(Section):
    arch: Arch
    tasks: Annotated[
        dict[Name, Task], Field(min_length=1, description="a mapping of name -> {dataset, label, epochs, arch}")
    ]


class Sweep(Section):
    dataset: Text
    epochs: WholeNumber
    save_models: Flag
    max_params_m: Positive | None
    time_limit_s: Positive | None
    archs: Annotated[
        list[Arch],
        Field(min_length=1, description="a non-empty list of timm architecture names"),
        AfterValidator(no_repeats),
    ]
    seeds: Annotated[
        list[Count],
        Field(min_length=1, description="a non-empty list of whole numbers >= 0 (training seeds)"),
        AfterValidator(no_repeats),
    ]


class Report(Section):
    alpha: Fraction  # 1 - the confidence level of the set for the best (tied_with_best)


class Review(Section):
    top_n: WholeNumber


class Export(Section):
    model: Name  # a sweep entry, <arch>-<seed>


class Params(Section):
    """The whole file, one field per section."""

    base: Base
    runtime: Runtime
    download_pets: DownloadPets
    search: Search
    scrape: Scrape
    datasets: Annotated[dict[Name, Dataset], Field(min_length=1, description="a mapping of name -> {classes}")]
    train: Train
    finetune: Finetune
    sweep: Sweep
    review: Review
    report: Report
    export: Export


def _dotted(loc: tuple[Any, ...]) -> str:
    """('sweep', 'archs', 2) -> 'sweep.archs[2]'; a mapping key's own check ('[key]') names the key."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part != "[key]":
            key += f".{part}" if key else str(part)
    return key


def _strip(tp: Any) -> Any:
    """The type inside `Annotated[...]` and `X | None`."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _node(loc: tuple[Any, ...]) -> tuple[Any, FieldInfo | None]:
    """The type (and, for a model field, its FieldInfo) that validates the value at `loc`; the deepest one
    found when `loc` goes where the models do not."""
    tp: Any = Params
    info: FieldInfo | None = None
    for i, part in enumerate(loc):
        inner = _strip(tp)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and part in inner.model_fields:
            info = inner.model_fields[part]
            tp = info.annotation
        elif get_origin(inner) is dict:
            key_type, value_type = get_args(inner)
            tp, info = (key_type if loc[i + 1 : i + 2] == ("[key]",) else value_type), None
        elif get_origin(inner) is list and isinstance(part, int):
            tp, info = get_args(inner)[0], None
        elif part != "[key]":
            break
    return tp, info


def _form(tp: Any, info: FieldInfo | None = None) -> str:
    """What a value of type `tp` should be, in words ('' when the type does not say)."""
    if info is not None and info.description:
        return info.description
    origin = get_origin(tp)
    if origin is Annotated:
        described = [m.description for m in get_args(tp)[1:] if isinstance(m, FieldInfo) and m.description]
        return described[0] if described else _form(get_args(tp)[0])
    if origin in (Union, types.UnionType) and type(None) in get_args(tp):
        return _form(next(a for a in get_args(tp) if a is not type(None))) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a section (mapping)"
    return ""


def _should(key: str, expected: str, value: Any) -> str:
    return f"params.yaml: `{key}` should be {expected}, got {value!r}. Fix it in params.yaml."


def _message(error: dict[str, Any]) -> str:
    """One sentence for one pydantic error: the key, the value and what it should be."""
    loc, kind = tuple(error["loc"]), error["type"]
    key, where = _dotted(loc), _dotted(loc[:-1])
    if kind == "extra_forbidden":
        known = ", ".join(_strip(_node(loc[:-1])[0]).model_fields)
        if not where:
            return f"params.yaml: unknown section `{key}` (typo?). Known: {known}."
        return f"params.yaml: unknown key `{key}` (typo?). Known keys in `{where}`: {known}."
    if kind == "missing":
        what = "key" if where else "section"
        return f"params.yaml: missing {what} `{key}`; add it (see the project's params.yaml)."
    custom = (error.get("ctx") or {}).get("error")
    if isinstance(custom, Invalid):
        key = f"{key}.{custom.at}" if custom.at is not None else key
        expected, value = custom.expected, custom.value
    else:
        expected = _form(*_node(loc)) or error["msg"].removeprefix("Input should be ")
        value = error["input"]
    return _should(key, expected, value)


def validate(params: dict[str, Any]) -> None:
    """Raise PipelineError naming the first key of `params` that does not fit the `Params` model."""
    if not isinstance(params, dict):
        raise PipelineError(_should("params.yaml", "a mapping of sections", params))
    try:
        Params.model_validate(params)
    except ValidationError as e:
        errors = e.errors()
        # a renamed key is both unknown and missing: the unknown one points at the typo
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
        raise PipelineError(_message(first)) from None
    for name, dataset in params["datasets"].items():  # the one definition of the forms `classes` accepts
        parse_classes(dataset["classes"], f"datasets.{name}.classes")
    # references between sections
    for task, cfg in params["finetune"]["tasks"].items():
        if cfg["dataset"] != "pets" and cfg["dataset"] not in params["datasets"]:
            raise PipelineError(
                _should(f"finetune.tasks.{task}.dataset", "pets or a name under `datasets`", cfg["dataset"])
            )
    for name in params["datasets"]:  # review@<dataset> reads the model of the task named after the dataset
        task = params["finetune"]["tasks"].get(name)
        if task is None or (task["dataset"], task["label"]) != (name, "folder"):
            expected = f"a task on dataset {name} with label folder (review@{name} reviews its model)"
            raise PipelineError(_should(f"finetune.tasks.{name}", expected, task))
    if params["sweep"]["dataset"] not in params["datasets"]:
        raise PipelineError(_should("sweep.dataset", "a name under `datasets`", params["sweep"]["dataset"]))
    entries = [f"{arch}-{seed}" for arch in params["sweep"]["archs"] for seed in params["sweep"]["seeds"]]
    if params["export"]["model"] not in entries:  # the export stage's dep is models/sweep/<export.model>
        some = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise PipelineError(_should("export.model", f"a sweep entry <arch>-<seed> ({some})", params["export"]["model"]))


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml and validate it; raise PipelineError naming the first problem."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the stages from the project root (dvc repro does).")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PipelineError(f"{path} is not valid YAML{where}: {what}. Fix it in {path}.") from None
    validate(params)
    return params
