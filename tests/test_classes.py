"""Class names as written: the list and mapping forms of `datasets.<name>.classes`, safe and unique folders, and
labels with spaces, accents, other scripts, commas, quotes and newlines carried through every stage and CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

import demo.run
from demo.synthetic import draw, jpeg_bytes
from imgclf.common import PipelineError, csv_text
from imgclf.datasets import CLASS_MAP, class_folder, labelled_items, parse_classes
from imgclf.params import validate
from imgclf.sources.manifest import read_manifest

LANDMARKS = ["Notre-Dame de Paris", "Sagrada Família", "東京タワー"]
# Labels that a hand-rolled CSV writer or reader would split, merge or mangle.
TRICKY = ["Rock, Paper", 'Say "cheese"', "two\nlines"]
SAFE_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------------------------- parse_classes


def test_list_form_names_are_labels_and_queries():
    parsed = parse_classes(["India Gate", "Arc de Triomphe"])
    assert [(c.label, c.query) for c in parsed] == [
        ("India Gate", "India Gate"),
        ("Arc de Triomphe", "Arc de Triomphe"),
    ]


def test_mapping_form_is_label_to_query():
    parsed = parse_classes({"Tour Eiffel": "Eiffel Tower Paris", "Big Ben": "Big Ben London"})
    assert [(c.label, c.query) for c in parsed] == [
        ("Tour Eiffel", "Eiffel Tower Paris"),
        ("Big Ben", "Big Ben London"),
    ]


def test_existing_params_keep_their_folders(project_params):
    """Today's params files (identifier -> query) give the folders they always gave: the identifiers."""
    for name, ds in project_params["datasets"].items():
        parsed = parse_classes(ds["classes"], f"datasets.{name}.classes")
        assert [(c.label, c.folder, c.query) for c in parsed] == [(k, k, q) for k, q in ds["classes"].items()]


def test_folders_are_safe_and_distinct_for_any_label():
    labels = (
        LANDMARKS
        + TRICKY
        + [
            "AC/DC",
            "..",
            "con",
            "NUL.txt",
            "lpt1",
            "trailing.",
            "classes.json",
            "a" * 150,
            "C:\\x",
            "tab\there",
            "ok_name",
            "Ok-Name.v2",
            "😀",
        ]
    )
    folders = [c.folder for c in parse_classes(labels)]
    for label, folder in zip(labels, folders):
        assert SAFE_FOLDER.fullmatch(folder), (label, folder)
        assert len(folder) <= 100 and not folder.endswith(".")
        assert folder.split(".")[0].casefold() not in {"con", "nul", "lpt1"} and folder != CLASS_MAP
    assert len({f.casefold() for f in folders}) == len(labels)
    assert folders[labels.index("ok_name")] == "ok_name" and folders[labels.index("Ok-Name.v2")] == "Ok-Name.v2"
    assert class_folder("Sagrada Família").startswith("Sagrada_Familia-")  # readable where it can be


def test_labels_are_nfc_and_stripped():
    decomposed = unicodedata.normalize("NFD", "Sagrada Família")
    assert decomposed != "Sagrada Família"
    (first, _) = parse_classes([f"  {decomposed} ", "Big Ben"])
    assert first.label == "Sagrada Família" and first.folder == class_folder("Sagrada Família")


@pytest.mark.parametrize(
    "classes, named",
    [
        (["Big Ben", "big ben"], ("'Big Ben'", "'big ben'")),  # case: one folder on Windows and macOS
        (["Big_Ben", "BIG_BEN"], ("'Big_Ben'", "'BIG_BEN'")),  # plain names too
        (["Família", unicodedata.normalize("NFD", "Família")], ("'Família'", "share the folder")),  # NFC
        (["Eiffel", "Louvre", "Eiffel"], ("'Eiffel'", "share the folder")),
    ],
)
def test_labels_that_would_share_a_folder_fail_naming_both(classes, named):
    with pytest.raises(PipelineError) as err:
        parse_classes(classes, "datasets.x.classes")
    msg = str(err.value)
    assert "`datasets.x.classes`" in msg and "would share the folder" in msg and "ignoring case" in msg
    assert all(n in msg for n in named), msg


@pytest.mark.parametrize(
    "value, message",
    [
        ("Eiffel Tower", "should be a list of class names"),
        (["Eiffel Tower"], "at least two classes"),
        ({}, "at least two classes"),
        ([1984, "Big Ben"], "`datasets.x.classes[0]` should be a class name: non-empty text (quote one YAML"),
        (["Big Ben", "  "], "`datasets.x.classes[1]` should be a class name: non-empty text"),
        (
            {"Big Ben": "", "Louvre": "Louvre"},
            "`datasets.x.classes.Big Ben` should be a non-empty search query, got ''",
        ),
    ],
)
def test_bad_classes_name_the_key(value, message):
    with pytest.raises(PipelineError) as err:
        parse_classes(value, "datasets.x.classes")
    assert message in str(err.value) and "`datasets.x.classes" in str(err.value)


def test_the_schema_accepts_both_forms_and_refuses_a_collision(params):
    params["datasets"]["monuments"]["classes"] = ["India Gate", "Arc de Triomphe"]
    params["datasets"]["five_class"]["classes"] = {"Tour Eiffel": "Eiffel Tower", "東京タワー": "Tokyo Tower"}
    validate(params)
    params["datasets"]["monuments"]["classes"] = ["India Gate", "india gate"]
    with pytest.raises(PipelineError, match=r"`datasets.monuments.classes`: classes 'India Gate' and 'india gate'"):
        validate(params)


def test_labelled_items_reads_labels_from_the_class_map(tmp_path):
    images = tmp_path / "images"
    for c in parse_classes(LANDMARKS):
        (images / c.folder).mkdir(parents=True)
        draw(c.label, 0, size=(20, 20)).save(images / c.folder / "a.jpg")
    (images / CLASS_MAP).write_text(json.dumps({c.folder: c.label for c in parse_classes(LANDMARKS)}))
    files, labels = labelled_items(images, "folder")
    assert len(files) == 3 and sorted(labels) == sorted(LANDMARKS)
    (images / "stray").mkdir()
    draw("stray", 0, size=(20, 20)).save(images / "stray" / "b.jpg")
    with pytest.raises(PipelineError, match=r"class folder\(s\) stray are not in its classes.json"):
        labelled_items(images, "folder")


# ------------------------------------------------------------------------------- through the stages' code


def _workspace(
    tmp_path: Path, params: dict, classes: list[str], url_class: dict[str, str], per_class: int, monkeypatch
) -> tuple[Path, int]:
    """A project folder with params.yaml (dataset `landmarks` with `classes`, URL-list search, loopback scrape,
    tiny from-scratch training), generated images under www/ and a URL list whose `class` column holds
    url_class.get(label, label): the labels as written (through a real CSV writer)."""
    params["datasets"]["landmarks"] = {"classes": classes}
    params["finetune"]["tasks"]["landmarks"] = {"dataset": "landmarks", "label": "folder", "epochs": 1, "arch": None}
    params["search"]["engine"] = "file"
    params["scrape"].update(allow_private=True, image_size=32, min_side=16, min_images=2, deadline_s=5, threads=4)
    params["train"].update(batch_size=8, img_size=32, pretrained=False, lr=0.01)
    params["base"].update(threads=2)
    params["runtime"].update(num_workers=0)
    params["sweep"].update(dataset="landmarks", epochs=1, archs=["test_resnet"])
    params["export"]["model"] = "test_resnet-42"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    www = tmp_path / "www"
    rows = []
    for i, label in enumerate(classes):
        for n in range(per_class):
            name = f"{i}-{n}.jpg"  # URL paths need not look like labels
            (www / name).parent.mkdir(parents=True, exist_ok=True)
            (www / name).write_bytes(jpeg_bytes(draw(f"{label}/{n}", i, size=(40, 40))))
            rows.append((url_class.get(label, label), name))
    monkeypatch.chdir(tmp_path)
    return www, len(rows)


def _url_list(path: Path, rows: list[tuple[str, str]], port: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        csv_text([{"class": c, "url": f"http://127.0.0.1:{port}/{p}"} for c, p in rows], ["class", "url"]),
        encoding="utf-8",
    )


def _search_and_scrape(www: Path, classes: list[str], url_class: dict[str, str], per_class: int) -> None:
    from stages.scrape import main as scrape_main
    from stages.search import main as search_main

    with demo.run.serve(www, 0) as port:
        rows = [
            (url_class.get(label, label), f"{i}-{n}.jpg") for i, label in enumerate(classes) for n in range(per_class)
        ]
        _url_list(Path("urls/landmarks.csv"), rows, port)
        search_main(["--dataset", "landmarks", "--url-list", "urls/landmarks.csv", "--out", "manifests/landmarks.csv"])
        scrape_main(
            [
                "--dataset",
                "landmarks",
                "--manifest",
                "manifests/landmarks.csv",
                "--cache",
                "downloads",
                "--out",
                "data/images",
                "--report",
                "data/report.csv",
                "--record",
                "records/scrape.json",
                "--metrics",
                "metrics/scrape.json",
            ]
        )


def _column(path: Path, name: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row[name] for row in csv.DictReader(f)]


def test_landmarks_go_through_search_scrape_training_and_predict_as_written(tmp_path, params, monkeypatch, capsys):
    """The acceptance case: [Notre-Dame de Paris, Sagrada Família, 東京タワー], URL list written with one label
    in another Unicode normal form, through the stages' own main functions."""
    from stages.predict import main as predict_main
    from stages.sweep import main as sweep_main

    nfd = {"Sagrada Família": unicodedata.normalize("NFD", "Sagrada Família")}  # as a Mac may save it
    www, _ = _workspace(tmp_path, params, LANDMARKS, nfd, 8, monkeypatch)
    _search_and_scrape(www, LANDMARKS, nfd, 8)

    manifest = read_manifest(Path("manifests/landmarks.csv"))
    assert [r["class"] for r in manifest] == [c for c in LANDMARKS for _ in range(8)]
    assert all(r["query"] == r["class"] for r in manifest)  # list form: the name is the query
    assert _column(Path("data/report.csv"), "class") == [c for c in LANDMARKS for _ in range(8)]
    assert set(_column(Path("data/report.csv"), "status")) == {"ok"}
    folders = {c.label: c.folder for c in parse_classes(LANDMARKS)}
    assert sorted(p.name for p in Path("data/images").iterdir()) == sorted([*folders.values(), CLASS_MAP])
    assert json.loads(Path("data/images", CLASS_MAP).read_text(encoding="utf-8")) == {f: c for c, f in folders.items()}
    scraped = json.loads(Path("records/scrape.json").read_text())
    assert json.loads(Path("metrics/scrape.json").read_text()) == {"kept": 24, "excluded": 0, "relabelled": 0}
    assert {c: n["kept"] for c, n in scraped["classes"].items()} == dict.fromkeys(LANDMARKS, 8)

    sweep_main(
        [
            "--arch",
            "test_resnet",
            "--data",
            "data/images",
            "--out",
            "models/test_resnet",
            "--record",
            "records/test_resnet.json",
            "--metrics",
            "metrics/test_resnet.json",
            "--curves",
            "plots/live",
            "--confusion",
            "plots/confusion.csv",
        ]
    )
    assert json.loads(Path("records/test_resnet.json").read_text())["status"] == "ok"
    assert list(json.loads(Path("metrics/test_resnet.json").read_text())) == ["accuracy"]
    meta = json.loads(Path("models/test_resnet/model.json").read_text(encoding="utf-8"))
    assert meta["classes"] == sorted(LANDMARKS)
    assert "東京タワー" in Path("models/test_resnet/model.json").read_text(
        encoding="utf-8"
    )  # readable, not \\u escapes
    pairs = _column(Path("plots/confusion.csv"), "actual") + _column(Path("plots/confusion.csv"), "predicted")
    assert pairs and set(pairs) <= set(LANDMARKS)

    image = next(Path("data/images", folders["東京タワー"]).glob("*.jpg"))
    capsys.readouterr()
    predict_main(["models/test_resnet", str(image), "--top", "3"])
    out = capsys.readouterr().out
    ranked = re.findall(r"(?:^|, )(.+?) (\d\.\d{3})", out.split(": ", 1)[1])
    assert sorted(label for label, _ in ranked) == sorted(LANDMARKS), out


def test_labels_with_commas_quotes_and_newlines_survive_every_csv(tmp_path, params, monkeypatch):
    www, _ = _workspace(tmp_path, params, TRICKY, {}, 3, monkeypatch)
    _search_and_scrape(www, TRICKY, {}, 3)

    expected = [c for c in TRICKY for _ in range(3)]
    assert [r["class"] for r in read_manifest(Path("manifests/landmarks.csv"))] == expected
    assert _column(Path("data/report.csv"), "class") == expected
    report = list(csv.DictReader(io.StringIO(Path("data/report.csv").read_text(encoding="utf-8"))))
    assert all(r["file"].split("/")[0] == class_folder(r["class"]) for r in report)
    files, labels = labelled_items(Path("data/images"), "folder")
    assert sorted(set(labels)) == sorted(TRICKY) and len(files) == 9
