"""timm architectures: their names and weights, the input each expects, and the lists a sweep draws from."""

from __future__ import annotations

import difflib
import io
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
DEFAULT_EXCLUDE = ("tf_*", "hr*")  # the exercise's filter (TensorFlow ports and HRNets)


def list_archs(
    include: list[str] | None = None,
    exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE,
    max_params_m: float | None = None,
    limit: int | None = None,
) -> list[str]:
    """Architecture names (one per architecture, no weight tags) with pretrained weights in timm,
    matching any `include` pattern and no `exclude` pattern, with at most `max_params_m` million
    parameters (counted on a meta-device build: no memory, no download), sorted by name."""
    import timm

    names = timm.list_models(include or "*", pretrained=True, include_tags=False, exclude_filters=list(exclude))
    if max_params_m is not None:
        names = [n for n in names if _params_m(n) <= max_params_m]
    return names[:limit] if limit else names


def _params_m(name: str) -> float:
    try:
        return count_params_m(name)
    except Exception as e:  # noqa: BLE001 - a model that cannot be built is left out, and said so
        log.warning("skipping %s: cannot count its parameters (%s)", name, e)
        return float("inf")


def count_params_m(name: str, **model_kwargs: Any) -> float:
    """Million parameters of timm's `name` (its 1,000-class head included), built on the meta device: no
    memory for the weights and no download. Remembered per process for the default build: `list_archs
    --max-params --sizes` needs each count twice."""
    return _count_default(name) if not model_kwargs else _count(name, **model_kwargs)


@lru_cache(maxsize=None)
def _count_default(name: str) -> float:
    return _count(name)


def _count(name: str, **model_kwargs: Any) -> float:
    return sum(p.numel() for p in meta_model(name, **model_kwargs).parameters()) / 1e6


def meta_model(name: str, **model_kwargs: Any):
    """timm's `name` built on the meta device: its shapes, without memory for the weights or a download."""
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **model_kwargs)


def over_params_budget(arch: str, max_params_m: float | None, img_size: int | None) -> tuple[float | None, str | None]:
    """(million parameters, why `arch` is over the sweep.max_params_m budget, or None when it is not);
    (None, None) without a budget. Counted on the meta device, before anything is downloaded or trained."""
    if max_params_m is None:
        return None, None
    size = round(count_params_m(arch, **model_setup(arch, img_size)["model_kwargs"]), 4)
    if size <= max_params_m:
        return size, None
    return size, f"{size:.1f} M parameters > sweep.max_params_m = {max_params_m}"


def with_archs(params_text: str, archs: list[str]) -> str:
    """params.yaml's text with `sweep.archs` replaced by `archs`, comments and layout kept. When the entry named in
    `export.model` leaves the sweep, it becomes the first new architecture's entry (the export stage's dep must
    be a sweep entry), and the log says so."""
    from ruamel.yaml import YAML

    if not archs:
        raise PipelineError("no architecture matches those filters: nothing written.")
    yaml = YAML()
    doc = yaml.load(params_text)
    doc["sweep"]["archs"] = archs
    export = doc.get("export") or {}
    if str(export.get("model", "")).rsplit("-", 1)[0] not in archs:
        export["model"] = f"{archs[0]}-{doc['sweep']['seeds'][0]}"
        log.warning("export.model set to %s: the entry it named is no longer in the sweep", export["model"])
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()


@lru_cache(maxsize=1)
def _timm_names(pretrained: bool) -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models(pretrained=pretrained, include_tags=False))


def check_arch(arch: str, pretrained: bool) -> None:
    """Fail with close-match suggestions if timm does not know `arch` (or has no weights for it)."""
    import timm

    if not timm.is_model(arch.split(".")[0]):
        close = difflib.get_close_matches(arch, _timm_names(False), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PipelineError(
            f"unknown architecture {arch!r}: timm has no model of that name.{hint} "
            "`python -m stages.list_archs` lists the choices."
        )
    base, _, tag = arch.partition(".")
    if pretrained and base not in _timm_names(True):
        raise PipelineError(
            f"architecture {arch!r} has no pretrained weights in timm: pick another, or set train.pretrained: false."
        )
    if tag:
        tags = timm.list_models(base, pretrained=True)  # "resnet50.a1_in1k", ...
        if arch not in tags:
            raise PipelineError(f"{base} has no weights tagged {tag!r}; it has: {', '.join(tags) or 'none'}.")


def check_params(params: dict) -> None:
    """Raise PipelineError on the first architecture of params.yaml (the finetune's, its tasks', the sweep's) that
    timm does not know; the rest of params.yaml is validated on load. The check_params stage runs it, and so do
    `make sweep` and `make prune` before they touch anything: a misspelled name would make the entry of the right
    name look taken out."""
    pretrained = params["train"]["pretrained"]
    tasks = [t["arch"] for t in params["finetune"]["tasks"].values() if t["arch"]]
    for arch in [params["finetune"]["arch"], *tasks, *params["sweep"]["archs"]]:
        check_arch(arch, pretrained)


def model_setup(arch: str, img_size: int | None) -> dict[str, Any]:
    """The architecture's own normalization and input size from timm's pretrained config; `img_size`
    overrides the size, and fixed-size models (ViTs) are then built for it."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)  # with a tag ("resnet50.tv_in1k"), that tag's size and statistics
    native = cfg.input_size[-1] if cfg else 224
    size = img_size or native
    kwargs = {"img_size": size} if cfg and cfg.fixed_input_size and size != native else {}
    mean, std = (cfg.mean, cfg.std) if cfg else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return {"size": size, "mean": list(mean), "std": list(std), "model_kwargs": kwargs}


def decoded_size(params: dict) -> int:
    """The size the decode stage stores the sweep's images at: train.img_size, or when it is null, the largest
    input size among sweep.archs (each entry resizes down from it)."""
    return params["train"]["img_size"] or max(model_setup(a, None)["size"] for a in params["sweep"]["archs"])


def weights_file(weights: str | None, arch: str) -> Path | None:
    """A local weights file for `arch` from train.weights: a file, or a folder holding `<arch><suffix>`
    or `<arch>/model.safetensors` (the Hugging Face layout). None means: the hub."""
    if not weights:
        return None
    root = Path(weights)
    if root.is_file():
        return root
    candidates = [root / f"{arch}{s}" for s in WEIGHT_SUFFIXES] + [root / arch / "model.safetensors"]
    for c in candidates:
        if c.is_file():
            return c
    raise PipelineError(
        f"no weights for {arch!r} under train.weights={weights!r} (looked for "
        f"{', '.join(str(c) for c in candidates)}). Put the file there, set train.weights: null "
        "to use the Hugging Face hub, or train.pretrained: false."
    )
