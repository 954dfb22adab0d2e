"""The review of a dataset (imgclf.reporting.review): every image scored as validation scores it, marked with the
split training used, the worst shown first with thumbnails beside the page, and copy lines the exclusion file
reads back."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from imgclf.common import PipelineError, csv_text
from imgclf.datasets import labelled_items
from imgclf.reporting.review import THUMB, review
from imgclf.sources.exclude import read_exclusions
from imgclf.sources.scrape import REPORT_FIELDS
from imgclf.training.data import split_items
from tests.conftest import class_images

# labels that need escaping on the page (folders circle/square/triangle, mapped by classes.json)
LABELS = {"circle": 'Tour "Eiffel" <b>', "square": "Big Ben & co", "triangle": "東京タワー"}
SEED, VALID_PCT, TOP_N = 42, 0.3, 4
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _model(folder: Path, classes: list[str]) -> Path:
    """A test_resnet with random weights (seeded), saved as the finetune stage saves its model."""
    import torch
    from fastai.vision.learner import create_timm_model

    from imgclf.training.archs import model_setup
    from imgclf.training.artifacts import save_model

    torch.manual_seed(3)
    model, _ = create_timm_model("test_resnet", len(classes), pretrained=False)
    save_model(model.eval(), folder, arch="test_resnet", classes=classes, setup=model_setup("test_resnet", 32))
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """images/ (3 classes x 7, labels mapped by classes.json), its scrape-style report.csv, and a model."""
    root = tmp_path_factory.mktemp("review")
    (root / "images").mkdir()
    images = class_images(root / "images", 7, [(40, 32), (32, 48), (36, 36)])
    for f in list(images.rglob("*.jpg")):  # named as the scrape stage names them: by content
        f.rename(f.with_name(hashlib.sha256(f.read_bytes()).hexdigest()[:16] + ".jpg"))
    (images / "classes.json").write_text(json.dumps(LABELS, ensure_ascii=False))
    files, labels = labelled_items(images, "folder")
    rows = [
        {
            "class": label,
            "query": f"{label} query",
            "rank": str(n),
            "url": f"https://example.org/{f.parent.name}/{n}.jpg",
            "status": "ok",
            "reason": "",
            "file": f.relative_to(images).as_posix(),
        }
        for n, (f, label) in enumerate(zip(files, labels))
    ]
    (root / "report.csv").write_text(csv_text(rows, REPORT_FIELDS), encoding="utf-8")
    _model(root / "model", sorted(LABELS.values()))
    return root


@pytest.fixture(scope="module")
def reviewed(dataset: Path) -> tuple[Path, dict]:
    out = dataset / "review"
    summary = review(
        dataset / "model",
        dataset / "images",
        dataset / "report.csv",
        out,
        dataset="tiny",
        top_n=TOP_N,
        seed=SEED,
        valid_pct=VALID_PCT,
    )
    return out, summary


def _losses(out: Path) -> list[dict[str, str]]:
    with open(out / "losses.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_image_is_scored_as_validation_and_predict_score_it(dataset: Path, reviewed) -> None:
    from imgclf.deploy.predict import predict

    out, summary = reviewed
    files, labels = labelled_items(dataset / "images", "folder")
    _, valid_idx = split_items(files, VALID_PCT, SEED)
    rows = _losses(out)
    assert len(rows) == len(files) == 21
    split = {f.relative_to(dataset / "images").as_posix(): i in valid_idx for i, f in enumerate(files)}
    assert {r["file"]: r["split"] == "valid" for r in rows} == split  # the split training used
    assert summary["n_valid"] == len(valid_idx) and summary["n_train"] == 21 - len(valid_idx)
    ranked = [r["file"] for r in rows]
    for f, label, ranking in zip(files, labels, predict(dataset / "model", files, top=3)):
        row = rows[ranked.index(f.relative_to(dataset / "images").as_posix())]
        probs = dict(ranking)
        assert row["label"] == label and row["predicted"] == ranking[0][0]
        assert float(row["probability"]) == pytest.approx(ranking[0][1], rel=1e-4)
        assert float(row["label_probability"]) == pytest.approx(probs[label], rel=1e-4)
        assert float(row["loss"]) == pytest.approx(-math.log(probs[label]), rel=1e-4)
        assert row["url"].startswith("https://example.org/") and row["query"] == f"{label} query"
    valid = [r for r in rows if r["split"] == "valid"]
    assert summary["valid_accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in valid) / len(valid))
    # valid first, then train; each worst first and ranked from 1
    assert [r["split"] for r in rows] == ["valid"] * len(valid) + ["train"] * (21 - len(valid))
    for part in ("valid", "train"):
        losses = [float(r["loss"]) for r in rows if r["split"] == part]
        assert losses == sorted(losses, reverse=True)
        assert [int(r["rank"]) for r in rows if r["split"] == part] == list(range(1, len(losses) + 1))


def test_the_page_shows_the_worst_first_with_small_thumbnails_beside_it(reviewed) -> None:
    out, summary = reviewed
    page = (out / "index.html").read_text(encoding="utf-8")
    rows = _losses(out)
    shown = [r for part in ("valid", "train") for r in [r for r in rows if r["split"] == part][:TOP_N]]
    stems = re.findall(r'<img src="thumbs/([0-9a-f]{16})\.jpg"', page)
    assert stems == [Path(r["file"]).stem for r in shown]  # in the order of losses.csv, per split
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == sorted(f"{s}.jpg" for s in stems)
    for thumb in (out / "thumbs").iterdir():
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and max(im.size) <= THUMB
        assert thumb.stat().st_size < 20_000
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<img src="confusion.png"' in page
    assert not re.search(r'(src|href)="(?!https://example\.org/|thumbs/|confusion\.png)', page), "loads something"
    assert len(page.encode()) < 100_000  # thumbnails are files, not inlined
    # labels as written, escaped
    assert "Tour &quot;Eiffel&quot; &lt;b&gt;" in page and "Big Ben &amp; co" in page and "東京タワー" in page
    assert 'Tour "Eiffel" <b>' not in page
    assert f"{summary['n_valid']} validation images" in page


def test_the_copy_lines_are_exclusion_lines_for_the_shown_images(tmp_path: Path, reviewed) -> None:
    out, _ = reviewed
    page = (out / "index.html").read_text(encoding="utf-8")
    rows = {Path(r["file"]).stem: r for r in _losses(out)}
    lines = [html.unescape(line) for line in re.findall(r'data-line="([^"]*)"', page)]
    excludes = [line for line in lines if "->" not in line]
    relabels = [line for line in lines if "->" in line]
    assert len(excludes) == 2 * TOP_N
    assert len(relabels) == sum(
        1 for s in re.findall(r"thumbs/(\w+)\.jpg", page) if rows[s]["label"] != rows[s]["predicted"]
    )
    for lines_, name in ((excludes, "drop.txt"), (relabels, "move.txt")):
        path = tmp_path / name
        path.write_text("\n".join(lines_) + "\n", encoding="utf-8")
        for ex in read_exclusions(path, list(LABELS.values())):
            row = rows[ex.target]
            assert ex.label == (None if name == "drop.txt" else row["predicted"])
            assert row["label"] in ex.reason and f"p={float(row['probability']):.2f}" in ex.reason


def test_a_model_of_other_classes_is_refused(dataset: Path, tmp_path: Path) -> None:
    model = _model(tmp_path / "model", ["cat", "dog", LABELS["circle"]])
    with pytest.raises(PipelineError, match=r"class\(es\) .*Big Ben & co.* that \S+ was not trained on: rerun"):
        review(
            model,
            dataset / "images",
            dataset / "report.csv",
            tmp_path / "out",
            dataset="tiny",
            top_n=TOP_N,
            seed=SEED,
            valid_pct=VALID_PCT,
        )
    assert not (tmp_path / "out").exists()


HARNESS = """<!doctype html><html><body><div id="out">pending</div><iframe id="page" src="PAGE"></iframe><script>
document.getElementById("page").addEventListener("load", () => {
  const page = document.getElementById("page").contentWindow, out = document.getElementById("out");
  page.prompt = (message, line) => { out.textContent = "prompt: " + line; };  // the no-clipboard fallback
  const button = page.document.querySelector("button[data-line]");
  button.click();  // no user gesture here: the clipboard refuses, and the page falls back to the prompt
  setTimeout(() => { if (out.textContent === "pending") out.textContent = "button: " + button.textContent; }, 500);
});
</script></body></html>
"""


def _chromium(tmp_path: Path, url: str, *args: str) -> str:
    res = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}", *args]
        + ["--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(not CHROMIUM, reason="needs chromium (apt-get install chromium)")
def test_the_page_renders_and_its_button_gives_the_line_without_a_server(reviewed, tmp_path: Path) -> None:
    out, _ = reviewed
    dom = _chromium(tmp_path, (out / "index.html").as_uri())
    assert dom.count("<figure") == 2 * TOP_N and "copy exclude line" in dom
    first = html.unescape(re.search(r'data-line="([^"]*)"', (out / "index.html").read_text()).group(1))
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS.replace("PAGE", (out / "index.html").as_uri()))
    dom = _chromium(tmp_path, harness.as_uri(), "--allow-file-access-from-files", "--virtual-time-budget=5000")
    shown = html.unescape(re.search(r'<div id="out">([^<]*)</div>', dom).group(1))
    assert shown in (f"prompt: {first}", "button: copied"), shown
