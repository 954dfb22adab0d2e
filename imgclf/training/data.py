"""Training data decoded once: every image is decoded and resized a single time per stage run into a uint8
tensor, kept on the GPU when there is one (within runtime.data_on_device_max_mb), and cropped, flipped and
normalised per batch on the device. fastai's DataLoader drives the batches, so fastai's Learner, callbacks and
DVCLive work on top unchanged.

Aspect ratio: an image is stored with its shorter side resized to the input size and its aspect ratio kept (a
4:1 panorama at 224 px is stored as 224x896, four times the pixels of a square one). Training takes a square of
the input size from it: at a random place along the longer side (`crop`, the default), or a random-resized crop
(35-100% of the area, aspect 3:4 to 4:3) resized to the input size and flipped left-right half the time
(`rrc_flip`). Validation and `stages.predict` take the centre square, through the same functions
(`load_image`, `center_crop`, `normalize`), so a saved model predicts what validation measured.

The sweep's entries share one decoding: `stages.decode` writes the dataset at the input size into one file
(`write_decoded`), and each entry reads it (`read_decoded`) instead of decoding the folder again. With
train.img_size null, that file holds the largest input size among sweep.archs, and an entry whose model takes a
smaller one resizes every image down once (`resize_short`); its model.json records the stored size, so
`stages.predict` takes the same two steps.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from imgclf.common import PipelineError, is_valid_item

log = logging.getLogger(__name__)

AUGMENTS = ("crop", "rrc_flip")
RRC_SCALE, RRC_RATIO = (0.35, 1.0), (3 / 4, 4 / 3)
GPU_DECODE_CHUNK = 256  # JPEGs per batched nvjpeg call: bounds the full-size images held at once
DECODED_FORMAT = "imgclf-decoded-v1"


def stored_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of an image once stored: shorter side = `size`, aspect ratio kept."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def load_image(path: str | Path, size: int):
    """One image as a uint8 CHW tensor with its shorter side resized to `size` (PIL: JPEG draft decoding at
    the smallest scale that still covers the target, then a bilinear resize). Used for validation, predict,
    and training on CPU."""
    import torch
    from PIL import Image

    with Image.open(path) as im:
        tw, th = stored_size(*im.size, size)
        im.draft("RGB", (tw, th))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that is still >= target
        img = im.convert("RGB")
    if img.size != (tw, th):
        img = img.resize((tw, th), Image.Resampling.BILINEAR)
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(th, tw, 3).permute(2, 0, 1).contiguous()


def resize_short(x, size: int):
    """A stored CHW image with its shorter side resized to `size` (bilinear, antialiased), aspect ratio kept."""
    from torchvision.transforms.v2.functional import resize

    tw, th = stored_size(x.shape[2], x.shape[1], size)
    return x if tuple(x.shape[1:]) == (th, tw) else resize(x, [th, tw], antialias=True)


def center_crop(x, size: int):
    """The centre `size` x `size` square of a CHW (or NCHW) image tensor (a view, no copy)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def normalize(x, mean, std):
    """uint8 images (NCHW or CHW) -> float32, scaled to [0, 1], minus `mean`, divided by `std` (per channel)."""
    import torch

    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x.float().div_(255) - mean) / std


def decode_cpu(files: list[Path], size: int, threads: int) -> list:
    """`load_image` of every file, in order, on `threads` threads (Pillow releases the GIL while decoding)."""
    if threads <= 1:
        return [load_image(f, size) for f in files]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda f: load_image(f, size), files))


def decode_cuda(files: list[Path], size: int) -> list:
    """Decode JPEGs on the GPU with nvjpeg (batched calls), resize there with antialiasing; other formats
    go through `load_image` and are copied over."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    out: list[Any] = [None] * len(files)
    jpegs = [i for i, f in enumerate(files) if Path(f).suffix.lower() in (".jpg", ".jpeg")]
    for i in set(range(len(files))) - set(jpegs):
        out[i] = load_image(files[i], size).cuda()
    for start in range(0, len(jpegs), GPU_DECODE_CHUNK):
        chunk = jpegs[start : start + GPU_DECODE_CHUNK]
        data = [torch.frombuffer(bytearray(Path(files[i]).read_bytes()), dtype=torch.uint8) for i in chunk]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
        except RuntimeError as e:  # a JPEG nvjpeg cannot read (CMYK, progressive on old drivers, ...)
            log.warning("GPU JPEG decoding failed (%s): decoding %d files on the CPU", e, len(chunk))
            decoded = [load_image(files[i], size).cuda() for i in chunk]
        for i, img in zip(chunk, decoded):
            tw, th = stored_size(img.shape[2], img.shape[1], size)
            out[i] = img if img.shape[1:] == (th, tw) else resize(img, [th, tw], antialias=True)
    return out


class Decoded(NamedTuple):
    """A dataset decoded once (`stages.decode`): each image's path under the dataset folder, label and file size
    in bytes, and the uint8 CHW image with its shorter side at `size` (`load_image`)."""

    names: list[str]
    labels: list[str]
    file_bytes: list[int]
    size: int
    images: list


def write_decoded(path: Path, images_dir: Path, files: list[Path], labels: list[str], size: int, threads: int) -> int:
    """Decode `files` with `load_image` at `size` and write them, with their names, labels and sizes, to one
    safetensors file at `path` (atomically): the pixels of every image end to end, and each one's height and
    width. Returns the bytes of pixels written."""
    import torch
    from safetensors.torch import save_file

    if not files:
        raise PipelineError(f"no images found in {images_dir}: run the data stages first (`dvc repro`).")
    images = decode_cpu(files, size, threads)
    tensors = {
        "pixels": torch.cat([x.reshape(-1) for x in images]),
        "shapes": torch.tensor([list(x.shape[1:]) for x in images], dtype=torch.int64),
    }
    meta = {
        "format": DECODED_FORMAT,
        "size": size,
        "names": [Path(f).relative_to(images_dir).as_posix() for f in files],
        "labels": labels,
        "file_bytes": [Path(f).stat().st_size for f in files],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    # one metadata key: safetensors writes its metadata map in random order, and DVC needs the same bytes
    # from the same images on every machine (or each clone's sweep entries would depend on another file)
    save_file(tensors, str(tmp), metadata={"dataset": json.dumps(meta, ensure_ascii=False, sort_keys=True)})
    os.replace(tmp, path)
    return tensors["pixels"].numel()


def read_decoded(path: Path) -> Decoded:
    """A `write_decoded` file; its images are views of one buffer in CPU memory. Read once per process: a warm
    sweep worker (imgclf/pool.py) trains entry after entry on the same file, and gets the same object back as long
    as the file is the same one (path, inode, size and modification time). Nothing writes into these images:
    batches are crops copied by `torch.stack`, and resizing or moving them to the GPU makes new tensors."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _READ:
        _READ.clear()  # one file at a time: a new decode replaces the old one
        _READ[key] = _read_decoded(path)
    return _READ[key]


_READ: dict[tuple, Decoded] = {}


def _read_decoded(path: Path) -> Decoded:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dataset", "{}"))
            if meta.get("format") != DECODED_FORMAT:
                raise PipelineError(
                    f"{path} is not a decoded dataset of this version (format {meta.get('format')!r}): "
                    "rerun `dvc repro -f decode`."
                )
            pixels, shapes = f.get_tensor("pixels"), f.get_tensor("shapes").tolist()
    except SafetensorError as e:
        raise PipelineError(f"{path} cannot be read ({e}): rerun `dvc repro -f decode`.") from e
    images, start = [], 0
    for h, w in shapes:
        images.append(pixels[start : start + 3 * h * w].view(3, h, w))
        start += 3 * h * w
    return Decoded(meta["names"], meta["labels"], meta["file_bytes"], meta["size"], images)


class ImageSet:
    """Decoded images of one split with their labels; `batch(indices)` makes one uint8 NCHW batch on the
    images' device. fastai's DataLoader indexes it (an item is its index) and calls `batch` to collate."""

    def __init__(
        self, images: list, labels: list[int], vocab: list[str], size: int, augment: str | None, files: list[Path]
    ):
        import torch

        self.images, self.vocab, self.size, self.augment, self.files = images, vocab, size, augment, files
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.c = len(vocab)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < len(self.images):
            raise IndexError(i)
        return i

    def batch(self, idxs: list[int]):
        """(images, labels) for `idxs`: augmented crops in training (`augment` set), centre crops otherwise."""
        import torch

        imgs = [self.images[i] for i in idxs]
        if self.augment is None:
            crops = [center_crop(x, self.size) for x in imgs]
        elif self.augment == "crop":
            crops = self._random_crops(imgs)
        else:
            crops = self._resized_crops_flipped(imgs)
        x = torch.stack(crops)
        return x, self.labels[idxs].to(x.device)

    def _random_crops(self, imgs: list) -> list:
        """A size x size square at a uniformly random place along each image's longer side."""
        import torch

        s = self.size
        u = torch.rand(len(imgs)).tolist()  # torch's CPU generator: seeded, and saved in checkpoints
        out = []
        for x, r in zip(imgs, u):
            h, w = x.shape[-2:]
            off = min(int(r * (max(h, w) - s + 1)), max(h, w) - s)
            out.append(x[:, off : off + s, :s] if h > w else x[:, :s, off : off + s])
        return out

    def _resized_crops_flipped(self, imgs: list) -> list:
        """torchvision's random-resized-crop box per image, resized to size x size, then a left-right flip
        with probability 1/2."""
        import torch
        from torchvision.transforms import RandomResizedCrop
        from torchvision.transforms.v2.functional import resized_crop

        s = self.size
        out = []
        for x in imgs:
            top, left, h, w = RandomResizedCrop.get_params(x, list(RRC_SCALE), list(RRC_RATIO))
            out.append(resized_crop(x, top, left, h, w, [s, s], antialias=True))
        flip = (torch.rand(len(imgs)) < 0.5).tolist()
        return [x.flip(-1) if f else x for x, f in zip(out, flip)]


def split_items(files: list[Path], valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the training and validation items: a stable hash split by file stem."""
    if not files:
        raise PipelineError("no images found: run the data stages first (`dvc repro`).")
    valid = [is_valid_item(Path(f).stem, seed, valid_pct) for f in files]
    n_valid = sum(valid)
    if n_valid == 0 or n_valid == len(files):
        raise PipelineError(
            f"{len(files)} images cannot be split into train and valid with "
            f"train.valid_pct={valid_pct}: add images or change valid_pct."
        )
    return [i for i, v in enumerate(valid) if not v], [i for i, v in enumerate(valid) if v]


def split_by_group(
    files: list[str], labels: list[str], groups: list[str], valid_pct: float, seed: int
) -> tuple[list[dict[str, str]], int]:
    """The split of duplicate groups (rows path, label, split, group) and the number of images left out.

    A group is the file stem of its first image; a group goes to validation as that stem would alone (the
    stable hash split of `split_items`, so an image without copies lands where it did before). A group whose
    images carry different labels is `conflict`: neither trained on nor scored. Validation keeps a group's first
    image only, so its count is of distinct images; the group's other images are left out."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    rows, left_out = [], 0
    for g, idx in members.items():
        if len({labels[i] for i in idx}) > 1:
            split = "conflict"
        else:
            split = "valid" if is_valid_item(g, seed, valid_pct) else "train"
        if split == "valid":
            left_out += len(idx) - 1
            idx = idx[:1]
        rows += [dict(path=files[i], label=labels[i], split=split, group=g) for i in idx]
    for label in sorted(set(labels)):
        for side in ("train", "valid"):
            if not any(r["label"] == label and r["split"] == side for r in rows):
                raise PipelineError(
                    f"class {label!r} has no {side} image once its copies are grouped: add distinct images of "
                    f"{label!r} or change train.valid_pct ({valid_pct})."
                )
    return rows, left_out


def decoded_splits(
    files: list[Path],
    labels: list[str],
    *,
    size: int,
    valid_pct: float,
    seed: int,
    augment: str,
    device: str,
    max_mb: float,
    threads: int,
    decoded: Decoded | None = None,
) -> tuple[ImageSet, ImageSet]:
    """Decode every image once into (training set, validation set). On CUDA the training images are decoded
    on the GPU and stay there when all images fit in `max_mb` MiB; otherwise they stay in CPU memory (each
    batch is then pinned and copied). Validation images are always decoded by `load_image`, as predict does.
    With `decoded` (the same files, read from `stages.decode`'s file) nothing is decoded: its images are
    resized to `size` when stored at another size, and moved to the GPU on the same terms."""

    if augment not in AUGMENTS:
        raise PipelineError(f"train.augment is {augment!r}: use one of {', '.join(AUGMENTS)}.")
    train_idx, valid_idx = split_items(files, valid_pct, seed)
    vocab = sorted(set(labels))
    code = {c: i for i, c in enumerate(vocab)}
    if decoded is not None:
        train_imgs, valid_imgs = _stored_images(decoded, (train_idx, valid_idx), size, device, max_mb)
    else:
        on_device = device == "cuda" and _stored_mb(files, size) <= max_mb
        if device == "cuda" and not on_device:
            _log_in_cpu_memory(max_mb)
        train_files = [files[i] for i in train_idx]
        train_imgs = decode_cuda(train_files, size) if on_device else decode_cpu(train_files, size, threads)
        valid_imgs = decode_cpu([files[i] for i in valid_idx], size, threads)
        if on_device:
            valid_imgs = [x.to(device) for x in valid_imgs]
    sets = [
        ImageSet(imgs, [code[labels[i]] for i in idx], vocab, size, aug, [files[i] for i in idx])
        for imgs, idx, aug in ((train_imgs, train_idx, augment), (valid_imgs, valid_idx, None))
    ]
    return sets[0], sets[1]


def _stored_images(
    decoded: Decoded, split: tuple[list[int], list[int]], size: int, device: str, max_mb: float
) -> tuple[list, list]:
    """(training images, validation images) from a `read_decoded` file: resized to `size` when stored at
    another size, on the GPU when they fit in `max_mb` MiB."""
    images = _prepared(decoded, size, device, max_mb)
    return [[images[i] for i in idx] for idx in split]


def _prepared(decoded: Decoded, size: int, device: str, max_mb: float) -> list:
    """Every image of `decoded` at `size`, on `device` when they fit in `max_mb` MiB. Kept for the next call with
    the same arguments (one set at a time), so a warm sweep worker resizes and moves the dataset to the GPU once,
    not once per entry; the same tensors either way."""
    if _PREPARED and _PREPARED[0] is decoded and _PREPARED[1] == (size, device, max_mb):
        return _PREPARED[2]
    _PREPARED.clear()  # frees the previous set (its GPU memory) before making this one
    if decoded.size < size:
        log.warning("the decoded images are %d px and the model takes %d px: scaling them up", decoded.size, size)
    images = [resize_short(x, size) for x in decoded.images] if decoded.size != size else decoded.images
    if device == "cuda":
        if sum(x.numel() for x in images) / 2**20 <= max_mb:
            images = [x.to(device) for x in images]
        else:
            _log_in_cpu_memory(max_mb)
    _PREPARED.extend([decoded, (size, device, max_mb), images])
    return images


_PREPARED: list = []  # [the Decoded it was made from, (size, device, max_mb), the images]


def _log_in_cpu_memory(max_mb: float) -> None:
    log.info(
        "the decoded images need more than runtime.data_on_device_max_mb=%s MiB: keeping them in CPU "
        "memory (each batch pinned and copied)",
        max_mb,
    )


def _stored_mb(files: list[Path], size: int) -> float:
    """MiB the decoded images will take (header reads only)."""
    from PIL import Image

    total = 0
    for f in files:
        with Image.open(f) as im:
            w, h = stored_size(*im.size, size)
        total += 3 * w * h
    return total / 2**20


def dataloaders(train: ImageSet, valid: ImageSet, *, batch_size: int, mean: list[float], std: list[float], device: str):
    """fastai DataLoaders over decoded sets: shuffled, drop_last training batches; uint8 batches become
    normalised floats on `device` (fastai's `after_batch`)."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    def to_float(b):
        x, y = b
        return normalize(x, mean, std), y

    pin = device == "cuda" and train.images[0].device.type == "cpu"
    bs = min(batch_size, len(train))
    # create_batch as a partial, not the bound method: DataLoader.new (get_preds uses it) drops bound methods
    loaders = [
        DataLoader(
            ds,
            bs=bs,
            shuffle=ds is train,
            drop_last=ds is train,
            device=device,
            pin_memory=pin,
            create_batch=partial(ImageSet.batch, ds),
            retain=_keep,
            after_batch=to_float,
        )
        for ds in (train, valid)
    ]
    return DataLoaders(*loaders, device=device)


def _keep(res, b):
    """fastai's `retain` hook: our batches already have their final types."""
    return res
