"""stages.download_pets and the Pets labels: checksums, refused tarball members, extraction, download over loopback."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from demo.run import serve
from demo.synthetic import draw, jpeg_bytes, pets_tarball
from imgclf.common import PipelineError, sha256_file
from imgclf.datasets import labelled_items, pet_breed, pet_is_cat, pet_label
from imgclf.sources import pets as dp
from imgclf.sources.pets import download_pets, extract_images, verify_tarball

PER_BREED = 3  # demo.synthetic has 8 breeds (4 cat, 4 dog): 24 images
SIZE = 32


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "name, is_cat, breed",
    [
        ("Abyssinian_1.jpg", True, "Abyssinian"),
        ("great_pyrenees_12.jpg", False, "great_pyrenees"),
        ("Egyptian_Mau_3.jpg", True, "Egyptian_Mau"),
        ("shiba_inu_200.jpg", False, "shiba_inu"),
    ],
)
def test_pet_labels(name: str, is_cat: bool, breed: str) -> None:
    assert pet_is_cat(name) is is_cat
    assert pet_breed(name) == breed
    assert pet_label(name, "cat_vs_dog") == ("cat" if is_cat else "dog")
    assert pet_label(name, "breed") == breed


def test_pet_label_refuses_other_labels() -> None:
    with pytest.raises(ValueError, match="folder"):
        pet_label("Abyssinian_1.jpg", "folder")


def test_labelled_items(tmp_path: Path) -> None:
    pets = tmp_path / "pets"
    pets.mkdir()
    for name in ("shiba_inu_2.jpg", "Egyptian_Mau_3.jpg", "great_pyrenees_12.jpg", "Abyssinian_1.jpg"):
        (pets / name).write_bytes(b"x")
    (pets / "Abyssinian_100.mat").write_bytes(b"x")  # not an image: ignored
    files, labels = labelled_items(pets, "cat_vs_dog")
    assert [f.name for f in files] == [
        "Abyssinian_1.jpg",
        "Egyptian_Mau_3.jpg",
        "great_pyrenees_12.jpg",
        "shiba_inu_2.jpg",
    ]
    assert labels == ["cat", "cat", "dog", "dog"]
    assert labelled_items(pets, "breed")[1] == ["Abyssinian", "Egyptian_Mau", "great_pyrenees", "shiba_inu"]

    web = tmp_path / "web"
    for rel in ("taj_mahal/b.jpg", "big_ben/z.png", "taj_mahal/a.JPEG", "big_ben/notes.txt"):
        (web / rel).parent.mkdir(parents=True, exist_ok=True)
        (web / rel).write_bytes(b"x")
    files, labels = labelled_items(web, "folder")
    assert [f.relative_to(web).as_posix() for f in files] == ["big_ben/z.png", "taj_mahal/a.JPEG", "taj_mahal/b.jpg"]
    assert labels == ["big_ben", "taj_mahal", "taj_mahal"]


# ---------------------------------------------------------------- verify_tarball


def _checks(path: Path) -> dict:
    data = path.read_bytes()
    return {
        "size": len(data),
        "md5_first_mb": hashlib.md5(data[: 2**20]).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    """The synthetic Pets-style tarball (read-only: tests copy it before changing it)."""
    path = tmp_path_factory.mktemp("pets") / "oxford-iiit-pet.tgz"
    pets_tarball(path, per_breed=PER_BREED)
    return path


def test_verify_tarball_accepts_the_right_file(tarball: Path) -> None:
    c = _checks(tarball)
    assert verify_tarball(tarball, c["size"], c["md5_first_mb"], c["sha256"]) == c["sha256"]
    # Upper-case digests from a web page are accepted; without a pinned sha256 it is still computed.
    assert verify_tarball(tarball, c["size"], c["md5_first_mb"].upper(), c["sha256"].upper()) == c["sha256"]
    assert verify_tarball(tarball, c["size"], None, None) == c["sha256"]


@pytest.mark.parametrize(
    "key, change",
    [
        ("size", lambda c: {**c, "size": c["size"] + 1}),
        ("md5_first_mb", lambda c: {**c, "md5_first_mb": "0" * 32}),
        ("sha256", lambda c: {**c, "sha256": "f" * 64}),
    ],
)
def test_verify_tarball_names_the_failing_check(tarball: Path, key: str, change) -> None:
    c = change(_checks(tarball))
    before = sha256_file(tarball)
    with pytest.raises(PipelineError, match=rf"download_pets\.{key}\b"):
        verify_tarball(tarball, c["size"], c["md5_first_mb"], c["sha256"])
    assert sha256_file(tarball) == before  # nothing lost: the user decides whether to delete it


# ---------------------------------------------------------------- refused members


def _info(name: str, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


GOOD_JPEG = jpeg_bytes(draw("good", 0))


def _evil_tar(path: Path, evil: tarfile.TarInfo, payload: bytes = b"") -> None:
    """A tarball with one good image, then `evil`."""
    with tarfile.open(path, "w") as tar:
        tar.addfile(_info("oxford-iiit-pet/images/Abyssinian_1.jpg", size=len(GOOD_JPEG)), io.BytesIO(GOOD_JPEG))
        evil.size = len(payload) if evil.isfile() else 0
        tar.addfile(evil, io.BytesIO(payload) if evil.isfile() else None)


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or the link target / 'dir') of everything under `root`."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


EVIL = {
    "dotdot": lambda root: (_info("../evil.jpg"), [root / "evil.jpg"]),
    "dotdot_via_images": lambda root: (_info("oxford-iiit-pet/images/../../../evil.jpg"), [root / "evil.jpg"]),
    "absolute": lambda root: (_info(str(root / "x" / "evil.jpg")), [root / "x" / "evil.jpg"]),
    "symlink": lambda root: (
        _info("oxford-iiit-pet/images/link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        [root / "out" / "link.jpg"],
    ),
    "hardlink": lambda root: (
        _info("oxford-iiit-pet/images/hard.jpg", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
        [root / "out" / "hard.jpg"],
    ),
    "chardev": lambda root: (
        _info("oxford-iiit-pet/images/null.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
        [root / "out" / "null.jpg"],
    ),
}


@pytest.mark.parametrize("kind", sorted(EVIL))
def test_extract_refuses_escaping_members_and_keeps_the_old_output(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "work"  # the output folder's parent
    root.mkdir()
    evil, targets = EVIL[kind](root)
    tar_path = tmp_path / "evil.tar"
    _evil_tar(tar_path, evil, payload=b"pwned")
    with tarfile.open(tar_path) as tar:  # the member really is in the archive as written
        assert evil.name in tar.getnames()
    out = root / "out"
    out.mkdir()
    (out / "Bengal_1.jpg").write_bytes(GOOD_JPEG)  # an earlier run's good output
    before = _tree(tmp_path)

    with pytest.raises(PipelineError, match="refusing the tarball") as err:
        extract_images(tar_path, out, SIZE, workers=1)

    assert repr(evil.name) in str(err.value)
    assert _tree(tmp_path) == before  # old output intact, no temp folder, nothing written anywhere
    for target in targets:
        assert not target.exists() and not target.is_symlink()


def test_extract_refuses_a_tarball_that_does_not_read(tmp_path: Path, tarball: Path) -> None:
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    garbage = tmp_path / "garbage.tgz"
    garbage.write_bytes(b"<html>not a tarball</html>" * 40)
    out = tmp_path / "out"
    for bad in (truncated, garbage):
        with pytest.raises(PipelineError, match="not a readable tarball"):
            extract_images(bad, out, SIZE, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.tgz", "truncated.tgz"]


# ---------------------------------------------------------------- extraction


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    draw("png", 0).save(buf, "PNG")
    return buf.getvalue()


def test_extract_images_counts_and_sizes(tmp_path: Path, tarball: Path) -> None:
    # The synthetic tarball plus two members the real one has too: a JPEG that does not decode and
    # PNG bytes under a .jpg name (a real image: kept, re-encoded as JPEG).
    extra = {
        "oxford-iiit-pet/images/beagle_99.jpg": b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50,
        "oxford-iiit-pet/images/Bengal_77.jpg": _png_bytes(),
    }
    tar_path = tmp_path / "mixed.tar"
    with tarfile.open(tarball) as src, tarfile.open(tar_path, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        for name, data in extra.items():
            dst.addfile(_info(name, size=len(data)), io.BytesIO(data))
    out = tmp_path / "images"

    stats = extract_images(tar_path, out, SIZE, workers=2)

    n = 8 * PER_BREED
    assert stats == {"images": n + 1, "cats": n // 2 + 1, "dogs": n // 2, "breeds": 8, "skipped": 1}
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == n + 1
    assert "beagle_99.jpg" not in names and "Bengal_77.jpg" in names
    assert not any(name.endswith(".mat") for name in names)  # images/Abyssinian_100.mat is not an image
    for p in out.iterdir():
        assert p.read_bytes()[:3] == b"\xff\xd8\xff"  # all JPEG now, the PNG included
        with Image.open(p) as img:
            assert img.mode == "RGB" and min(img.size) == SIZE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "mixed.tar"]  # no temp folder left


def test_an_image_member_over_the_cap_is_skipped_unread(tmp_path: Path, tarball: Path, monkeypatch) -> None:
    """A member's bytes are read whole into memory, 256 members at a time: one past MAX_MEMBER_BYTES is skipped
    and counted, never read."""
    import numpy as np

    from imgclf.sources import pets

    big, buf = "oxford-iiit-pet/images/beagle_98.jpg", io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG", quality=95)  # a real image: without the cap it would be kept
    data = buf.getvalue()
    tar_path = tmp_path / "big.tar"
    with tarfile.open(tarball) as src, tarfile.open(tar_path, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        dst.addfile(_info(big, size=len(data)), io.BytesIO(data))
    largest = max(m.size for m in tarfile.open(tarball).getmembers() if m.name.endswith(".jpg"))
    assert largest < len(data) - 1
    monkeypatch.setattr(pets, "MAX_MEMBER_BYTES", len(data) - 1)
    stats = extract_images(tar_path, tmp_path / "images", SIZE, workers=1)
    assert stats["images"] == 8 * PER_BREED and stats["skipped"] == 1
    assert not (tmp_path / "images" / "beagle_98.jpg").exists()


# ---------------------------------------------------------------- download over loopback


def _cfg(port: int, tarball: Path, allow_private: bool = True) -> dict:
    return {
        "url": f"http://127.0.0.1:{port}/oxford-iiit-pet.tgz",
        **_checks(tarball),
        "image_size": SIZE,
        "allow_private": allow_private,
    }


def test_download_pets_end_to_end(tmp_path: Path, tarball: Path, monkeypatch) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "oxford-iiit-pet.tgz").write_bytes(tarball.read_bytes())
    dest, out = tmp_path / "data" / "pets.tgz", tmp_path / "data" / "images"

    with serve(www, 0) as port:
        cfg = _cfg(port, tarball)
        first = download_pets(cfg, dest, out)
        assert sha256_file(dest) == cfg["sha256"]

    n = 8 * PER_BREED
    assert first == {"images": n, "cats": n // 2, "dogs": n // 2, "breeds": 8, "skipped": 0, "sha256": cfg["sha256"]}
    assert len(list(out.glob("*.jpg"))) == n
    images_before = _tree(out)

    # Server gone, and any download attempt fails loudly: the verified tarball is reused.
    def no_network(*args, **kwargs):
        raise AssertionError("download_pets downloaded a tarball it already had")

    monkeypatch.setattr(dp, "fetch_to_file", no_network)
    assert download_pets(cfg, dest, out) == first
    assert _tree(out) == images_before  # deterministic re-encode


def test_download_pets_blocks_private_addresses(tmp_path: Path, tarball: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "oxford-iiit-pet.tgz").write_bytes(tarball.read_bytes())
    dest, out = tmp_path / "pets.tgz", tmp_path / "images"
    with serve(www, 0) as port:
        with pytest.raises(PipelineError, match=r"127\.0\.0\.1.*loopback.*blocked_address"):
            download_pets(_cfg(port, tarball, allow_private=False), dest, out)
    assert not dest.exists() and not out.exists()


def test_download_pets_replaces_a_truncated_tarball(tmp_path: Path, tarball: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "oxford-iiit-pet.tgz").write_bytes(tarball.read_bytes())
    dest, out = tmp_path / "pets.tgz", tmp_path / "images"
    dest.write_bytes(tarball.read_bytes()[:1000])  # an interrupted earlier download
    with serve(www, 0) as port:
        cfg = _cfg(port, tarball)
        stats = download_pets(cfg, dest, out)
    assert sha256_file(dest) == cfg["sha256"]
    assert stats["images"] == 8 * PER_BREED
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
