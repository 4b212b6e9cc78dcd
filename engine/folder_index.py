"""An embedding index of a folder of photos, cached on disk and updated incrementally.

Every image under the folder (recursive; ``IMAGE_EXTENSIONS``; hidden files and folders excluded) is
encoded once per model: its L2-normalised retrieval feature (E,) and its image tokens (1 + N, D), which
the re-ranking stage cross-attends to, both stored in fp16 (halves the file; scores are computed in fp32).
The cache is ``<folder>/.cada_index/<key>.pt`` with ``key`` = checkpoint sha256 + input size, and records
each file's relative path, size and modification time (ns). A later call reuses the rows whose three
values are unchanged, encodes only new or changed files, drops deleted ones, and rewrites the cache via a
temp file and ``os.replace`` so an interrupted write never leaves a broken index. A file edited without
changing its size or mtime is not detected.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.images import load_rgb
from engine.evaluator import encode_images
from utils.checkpoint import save_atomic
from utils.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
INDEX_DIR_NAME = ".cada_index"
INDEX_FORMAT = 1
MAX_NAMED_FILES = 5


class GalleryError(DataError):
    """A gallery folder that cannot be searched: no images, or images that cannot be decoded."""


@dataclass
class FolderIndex:
    """The encoded images of one folder, sorted by relative path.

    Attributes:
        files: relative POSIX paths of the indexed images; ``sizes`` (bytes) and ``mtimes_ns`` as indexed.
        features: (G, E) fp16 L2-normalised retrieval features.
        image_tokens: (G, 1 + N, D) fp16 image-encoder tokens.
        encoded: how many images the call that returned this index encoded (0: all from the cache).
        skipped: relative paths of unreadable files left out.
    """

    folder: Path
    files: list[str]
    sizes: list[int]
    mtimes_ns: list[int]
    features: torch.Tensor
    image_tokens: torch.Tensor
    encoded: int = 0
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[Path]:
        return [self.folder / name for name in self.files]


def index_key(checkpoint_sha256: str, image_size: Sequence[int]) -> str:
    """Cache key: embeddings depend on the weights and on the input size the images are resized to."""
    height, width = image_size
    return f"{checkpoint_sha256}_{height}x{width}"


def list_images(folder: str | Path) -> list[str]:
    """Relative POSIX paths of the images under ``folder``, sorted.

    Raises:
        GalleryError: ``folder`` is not a folder, or it holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise GalleryError(f"gallery folder not found: {folder}")
    found = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                   if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
                   and not any(part.startswith(".") for part in path.relative_to(folder).parts))
    if not found:
        raise GalleryError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in {folder} or its subfolders")
    return found


class _ImageFiles(Dataset):
    """Transformed images, or the error that reading one raised (reported in the main process)."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return index, self.transform(load_rgb(self.paths[index])), ""
        except (OSError, DataError) as error:
            return index, None, str(error)


def encode_files(model, paths: Sequence[Path], transform: Callable, device: torch.device, batch_size: int,
                 num_workers: int) -> tuple[list[int], torch.Tensor, torch.Tensor, list[str]]:
    """Encodes the readable images (:func:`engine.evaluator.encode_images`); collects the errors of the others.

    Returns ``(encoded, features, tokens, errors)``: positions in ``paths`` that were encoded, their (n, E) fp16
    features and (n, 1 + N, D) fp16 tokens on CPU, and one message per unreadable file. ``transform`` maps a PIL
    image to (3, H, W) (the evaluation transform); ``model`` is a CADA model in eval mode.
    """
    encoded, errors = [], []

    def readable_batches():
        loader = DataLoader(_ImageFiles(paths, transform), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=list)
        for items in tqdm(loader, desc="indexing", unit="batch", leave=False):
            errors.extend(message for _, image, message in items if image is None)
            readable = [(i, image) for i, image, _ in items if image is not None]
            if readable:
                encoded.extend(i for i, _ in readable)
                yield torch.stack([image for _, image in readable])  # (b, 3, H, W)

    features, tokens = encode_images(model, readable_batches(), device, "off", torch.float16, torch.device("cpu"))
    return encoded, features.half(), tokens, errors


def _load_cached(path: Path, key: str) -> dict | None:
    """The cached index at ``path`` if it is readable and made for ``key``; otherwise None (rebuilt)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the cache is disposable: whatever is wrong with it, rebuild it
        log.warning("ignoring unreadable index %s (%s); re-encoding the folder", path, error)
        return None
    if not isinstance(state, dict) or state.get("format") != INDEX_FORMAT or state.get("key") != key:
        log.warning("ignoring index %s: written by another version or for another model", path)
        return None
    return state


def index_folder(model, folder: str | Path, transform: Callable, key: str, device: torch.device,
                 batch_size: int = 32, num_workers: int = 0, skip_bad_images: bool = False,
                 index_dir: str | Path | None = None) -> FolderIndex:
    """Returns the folder's index, encoding only what the cache for ``key`` lacks, and updates the cache.

    Args:
        model: the model the index belongs to (eval mode).
        transform: the evaluation transform of ``model``.
        key: from :func:`index_key`; names the cache file.
        batch_size: images per forward pass.
        num_workers: image-decoding worker processes.
        skip_bad_images: leave unreadable files out (counted and logged) instead of raising.
        index_dir: folder of the cache file (default ``<folder>/.cada_index``).

    Raises:
        GalleryError: ``folder`` does not exist; no images; unreadable images without ``skip_bad_images``
            (named; the readable ones are still cached); or no readable image at all.
    """
    folder = Path(folder)
    files = list_images(folder)
    signatures = {}
    for name in files:
        stat = (folder / name).stat()
        signatures[name] = (stat.st_size, stat.st_mtime_ns)
    cache_path = Path(index_dir or folder / INDEX_DIR_NAME) / f"{key}.pt"
    cached = _load_cached(cache_path, key)
    reused = _unchanged_rows(cached, signatures)
    pending = [name for name in files if name not in reused]
    positions, new_features, new_tokens, errors = encode_files(
        model, [folder / name for name in pending], transform, device, batch_size, num_workers)

    encoded_names = [pending[i] for i in positions]
    names = list(reused) + encoded_names
    if not names:
        raise GalleryError(f"none of the {len(files)} images in {folder} could be read, e.g. {errors[0]}")
    feature_parts, token_parts = [], []
    if reused:
        rows = torch.tensor(list(reused.values()))
        feature_parts.append(cached["features"][rows])
        token_parts.append(cached["image_tokens"][rows])
    if positions:
        feature_parts.append(new_features)
        token_parts.append(new_tokens)
    order = sorted(range(len(names)), key=names.__getitem__)  # by relative path
    index = FolderIndex(folder, [names[i] for i in order], [signatures[names[i]][0] for i in order],
                        [signatures[names[i]][1] for i in order], torch.cat(feature_parts)[order],
                        torch.cat(token_parts)[order], encoded=len(positions),
                        skipped=sorted(set(pending) - set(encoded_names)))
    if cached is None or positions or len(reused) != len(cached["files"]):
        _save(index, key, cache_path)
    log.info("%s: %d images indexed, %d encoded now, %d from the cache", folder, len(index), index.encoded,
             len(reused))
    if errors:
        _report_unreadable(errors, folder, skip_bad_images)
    return index


def _unchanged_rows(cached: dict | None, signatures: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Name → row in the cache, for the files whose (size, mtime) are those the cache recorded."""
    if cached is None:
        return {}
    return {name: row for row, (name, size, mtime) in enumerate(zip(cached["files"], cached["sizes"],
                                                                   cached["mtimes_ns"]))
            if signatures.get(name) == (size, mtime)}


def _report_unreadable(errors: list[str], folder: Path, skip_bad_images: bool) -> None:
    """Raises naming the unreadable files, or (``skip_bad_images``) logs them as skipped."""
    if not skip_bad_images:
        shown = "\n  ".join(errors[:MAX_NAMED_FILES])
        more = f"\n  ... and {len(errors) - MAX_NAMED_FILES} more" if len(errors) > MAX_NAMED_FILES else ""
        raise GalleryError(f"{len(errors)} unreadable image(s) in {folder}:\n  {shown}{more}\n"
                           "fix or remove them, or skip them with --skip-bad-images")
    log.warning("skipped %d unreadable image(s) in %s: %s", len(errors), folder, "; ".join(errors[:MAX_NAMED_FILES]))


def _save(index: FolderIndex, key: str, path: Path) -> None:
    state = {"format": INDEX_FORMAT, "key": key, "files": index.files, "sizes": index.sizes,
             "mtimes_ns": index.mtimes_ns, "features": index.features, "image_tokens": index.image_tokens}
    try:
        save_atomic(state, path)
    except OSError as error:  # a read-only gallery still gets searched, just without a cache
        log.warning("could not write the index %s (%s); the next search will encode again", path, error)
