r"""Datasets for the autoencoder benchmark, verified and placed on the device once.

``load(name, split)`` returns the images of one split as a float32 tensor of shape
``(n, pixels)`` with values in :math:`[0, 1]` (labels are never needed: the autoencoder
reconstructs its input).

* ``"mnist"`` and ``"fashion-mnist"``: the IDX files ``train-images-idx3-ubyte.gz`` /
  ``t10k-images-idx3-ubyte.gz`` (60,000 / 10,000 images of 28 x 28 = 784 pixels), pixels / 255.
  They are looked for, in this order, under ``<root>/<name>/`` for the roots

  1. the ``data_dir`` argument,
  2. the environment variable ``LOCOPROP_DATA_DIR``,
  3. the download cache ``data/cache/`` of the project,

  and, when absent everywhere, downloaded (with a progress bar, trying the public mirrors in turn)
  into the cache.  ``LOCOPROP_DATA_DIR``, when set, must be a folder.  A file that is found is
  verified before use: by the SHA-256 of its **decompressed** IDX payload (independent of how the
  gzip was compressed), except for the MNIST train images, for which only the MD5 of the canonical
  gzip file is pinned.  It is decompressed as a stream: the shape its IDX header declares is
  compared with the expected one before the data are read, and no more than that many bytes are
  ever inflated.  A file that fails verification is never used, moved, overwritten or deleted: the
  error says what to do.  A file verified once is not hashed again by the same process while its
  size, modification time and inode stay the same (:func:`shape` checks the files of a run before
  it trains, :func:`load` reads them then).
* ``"digits"``: scikit-learn's bundled 8 x 8 handwritten digits (1,797 images, 64 pixels, grey
  levels 0..16), pixels / 16.  No file and no network is needed.  The split is fixed and
  deterministic: the **first 1,500 images are "train", the remaining 297 are "test"**.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .provenance import PROJECT_ROOT

__all__ = [
    "DATASETS",
    "DIGITS_TRAIN_SIZE",
    "DataError",
    "cache_dir",
    "find_file",
    "load",
    "parse_idx",
    "read_idx",
    "search_dirs",
    "shape",
    "verify_file",
]

ENV_VAR = "LOCOPROP_DATA_DIR"
SPLITS = ("train", "test")
DIGITS_TRAIN_SIZE = 1500


class DataError(Exception):
    """A dataset is missing, fails verification, or is not a valid IDX file."""


@dataclass(frozen=True)
class FileSpec:
    """One IDX image file: its name, the mirrors that serve it, and its pinned checksum.

    ``sha256`` is the SHA-256 of the decompressed IDX payload; ``gzip_md5`` (used only where the
    payload hash is unknown) is the MD5 of the canonical ``.gz`` file.
    """

    filename: str
    mirrors: tuple[str, ...]
    shape: tuple[int, ...]
    sha256: str | None = None
    gzip_md5: str | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(m + self.filename for m in self.mirrors)


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

#: Image files per dataset and split.  The payload SHA-256 values were computed from the files
#: in ``shared/data`` (whose gzip files match the canonical MD5s where those are known); the MNIST
#: train-image MD5 is the canonical one that torchvision also pins.
DATASETS: dict[str, dict[str, FileSpec]] = {
    "mnist": {
        "train": FileSpec(
            "train-images-idx3-ubyte.gz", _MNIST_MIRRORS, (60000, 28, 28),
            gzip_md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        "test": FileSpec(
            "t10k-images-idx3-ubyte.gz", _MNIST_MIRRORS, (10000, 28, 28),
            sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
    },
    "fashion-mnist": {
        "train": FileSpec(
            "train-images-idx3-ubyte.gz", _FASHION_MIRRORS, (60000, 28, 28),
            sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "test": FileSpec(
            "t10k-images-idx3-ubyte.gz", _FASHION_MIRRORS, (10000, 28, 28),
            sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
    },
}
NAMES = ("digits", *DATASETS)

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- IDX format
_CHUNK = 1 << 20


def _payload(path: Path, expected: tuple[int, ...] | None = None) -> bytes:
    """The IDX bytes of ``path`` (gunzipped, as a stream, when it starts with the gzip magic bytes).

    The header is read first: with ``expected``, a declared shape other than that is refused before
    any data is read; then exactly the declared number of bytes is read, and more data is an error.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            packed = handle.read(2) == b"\x1f\x8b"
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err}); check its permissions or replace it") from None
    try:
        with (gzip.open(path, "rb") if packed else path.open("rb")) as stream:
            return _read_stream(stream, str(path), expected)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: not a readable gzip file ({type(err).__name__}: {err}); "
                        f"replace it with an intact copy, or remove it to download it again") from None
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err}); check its permissions or replace it") from None


def _read_stream(stream, source: str, expected: tuple[int, ...] | None) -> bytes:
    """IDX bytes from a binary stream, reading no more than the header declares (see :func:`_payload`)."""
    head = stream.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        return parse_idx(head, source)  # raises the error of a wrong magic number
    sizes = stream.read(4 * head[3])
    if len(sizes) < 4 * head[3]:
        return parse_idx(head + sizes, source)  # raises the error of a truncated header
    shape = tuple(int(d) for d in np.frombuffer(sizes, ">u4"))
    if expected is not None and shape != tuple(expected):
        raise DataError(f"{source}: its IDX header declares shape {shape}, expected {tuple(expected)}; it is not the "
                        f"file it is named as: replace it with an intact copy")
    size = int(np.prod(shape, dtype=object)) * np.dtype(_IDX_DTYPES[head[2]]).itemsize
    body = bytearray()
    while len(body) < size:
        chunk = stream.read(min(_CHUNK, size - len(body)))
        if not chunk:
            break
        body += chunk
    if len(body) == size and stream.read(1):
        raise DataError(f"{source}: it holds more data than its IDX header declares (shape {shape}, {size} data "
                        f"bytes); the file is corrupt or not what it is named: replace it with an intact copy")
    payload = head + sizes + bytes(body)
    if len(body) < size:
        parse_idx(payload, source)  # raises the error of a truncated file
    return payload


def parse_idx(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes: magic ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, data.

    Raises :class:`DataError` on a wrong magic number, an unknown type code, or a data section whose
    length does not match the product of the sizes in the header.
    """
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0 or payload[2] not in _IDX_DTYPES:
        raise DataError(
            f"{source}: not an IDX file (magic number {payload[:4].hex() or 'missing'}, expected "
            f"00 00 <type> <ndim> with type in {{{', '.join(f'{t:02x}' for t in _IDX_DTYPES)}}})"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[payload[2]]), payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{source}: IDX header truncated ({len(payload)} bytes, the header needs {header})")
    shape = tuple(int(d) for d in np.frombuffer(payload, ">u4", ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(payload) - header != expected:
        raise DataError(
            f"{source}: IDX size mismatch: header says shape {shape} ({expected} data bytes), "
            f"the file has {len(payload) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(payload, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a native-endian numpy array.

    ``shape``: the shape the file must declare (checked before its data are read).
    """
    return parse_idx(_payload(Path(path), shape), str(path))


# --------------------------------------------------------------------------- locating and verifying
def cache_dir() -> Path:
    """The download cache, ``data/cache/`` under the project root (git ignores it)."""
    return PROJECT_ROOT / "data" / "cache"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The roots searched, in order: ``data_dir``, ``$LOCOPROP_DATA_DIR``, the cache."""
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get(ENV_VAR):
        folder = Path(os.environ[ENV_VAR]).expanduser()
        if not folder.is_dir():
            raise DataError(f"{ENV_VAR}={os.environ[ENV_VAR]} is {'a file' if folder.exists() else 'missing'}, not a "
                            f"folder: point it at a folder holding <dataset>/<file>.gz (e.g. fashion-mnist/), or unset it")
        roots.append(folder)
    roots.append(cache_dir())
    return [r.expanduser() for r in roots]


def find_file(name: str, spec: FileSpec, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first ``<root>/<name>/<filename>`` that exists, or None."""
    for root in search_dirs(data_dir):
        if (root / name / spec.filename).is_file():
            return root / name / spec.filename
    return None


def verify_file(path: Path, spec: FileSpec) -> bytes:
    """Return the IDX payload of ``path`` after checking it against the pinned checksum.

    A mismatch raises :class:`DataError` (expected vs actual); the file is left untouched.
    """
    if spec.sha256 is None:
        actual = _file_md5(path)
        if actual != spec.gzip_md5:
            raise _checksum_error(path, "MD5 of the gzip file", spec.gzip_md5, actual)
        payload = _payload(path, spec.shape)
    else:
        payload = _payload(path, spec.shape)
        actual = hashlib.sha256(payload).hexdigest()
        if actual != spec.sha256:
            raise _checksum_error(path, "SHA-256 of the decompressed IDX payload", spec.sha256, actual)
    _verified.add(_state(path, spec))
    return payload


#: Files this process has verified, by :func:`_state`.
_verified: set[tuple] = set()


def _state(path: Path, spec: FileSpec) -> tuple:
    """What identifies a verified file: where it is, its size, modification time and inode, and what it was checked against."""
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, spec)


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    try:
        with Path(path).open("rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err}); check its permissions or replace it") from None
    return digest.hexdigest()


def _verified_payload(path: Path, spec: FileSpec) -> bytes:
    """The payload of ``path``, verified (unless this process verified the same file already)."""
    try:
        known = _state(path, spec) in _verified
    except OSError:
        known = False
    return _payload(path, spec.shape) if known else verify_file(path, spec)


def _checksum_error(path: Path, what: str, expected: str | None, actual: str) -> DataError:
    return DataError(
        f"checksum mismatch for {path}: {what} is {actual}, expected {expected}. The file was not used "
        f"and has not been changed; replace it with an intact copy (or remove it to download it again)"
    )


# --------------------------------------------------------------------------- downloading
def _downloader(url: str):
    """The pooch downloader for ``url`` (HTTP(S), with a progress bar on a terminal)."""
    import pooch

    progress = sys.stderr.isatty() and os.environ.get("TQDM_DISABLE", "") in ("", "0")
    return pooch.HTTPDownloader(progressbar=progress)


def _download(name: str, spec: FileSpec, data_dir=None) -> Path:
    """Download ``spec`` into the cache, verify it, then move it into place atomically.

    Mirrors are tried in order.  The download goes to ``<file>.download`` first; only a verified
    file is renamed to its final name, so the cache never holds an unverified file under that name.
    A ``.download`` file that failed verification is kept for inspection until the next attempt.
    """
    import pooch

    target_dir = cache_dir() / name
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        probe = target_dir / f".write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise DataError(_missing_message(name, spec, data_dir, f"the download cache {target_dir} is not "
                                         f"writable ({err.strerror or err})")) from None
    partial = target_dir / (spec.filename + ".download")
    failures = []
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # pooch logs a hint about known_hash when none is given
    try:
        for url in spec.urls:
            partial.unlink(missing_ok=True)  # an earlier unverified attempt: pooch would reuse it
            try:
                pooch.retrieve(url, known_hash=None, fname=partial.name, path=target_dir,
                               downloader=_downloader(url))
                verify_file(partial, spec)
            except Exception as err:  # network errors, HTTP errors, checksum mismatch: next mirror
                failures.append(f"{url}: {(str(err).strip().splitlines() or [type(err).__name__])[0][:200]}")
                continue
            final = target_dir / spec.filename
            try:
                os.replace(partial, final)
            except OSError as err:
                raise DataError(f"cannot move the verified download {partial} to {final} ({err})") from None
            return final
    finally:
        logger.setLevel(level)
    raise DataError(_missing_message(name, spec, data_dir, "download failed: " + "; ".join(failures)))


def _missing_message(name: str, spec: FileSpec, data_dir, reason: str) -> str:
    searched = ", ".join(str(root / name) for root in search_dirs(data_dir))
    return (
        f"{name} image file {spec.filename} not found (searched {searched}); {reason}. "
        f"Fix: download {' or '.join(spec.urls)} into {cache_dir() / name}, "
        f"or point {ENV_VAR} (or data_dir) at a folder holding {name}/{spec.filename}"
    )


# --------------------------------------------------------------------------- the loader
def _locate(name: str, split: str, data_dir=None, download: bool = True) -> tuple[Path, FileSpec]:
    """The file of ``name``/``split`` (downloaded into the cache when absent and ``download``) and its spec."""
    spec = DATASETS[name][split]
    path = find_file(name, spec, data_dir)
    if path is None:
        if not download:
            raise DataError(_missing_message(name, spec, data_dir, "downloading is disabled"))
        path = _download(name, spec, data_dir)
    return path, spec


def _check_arguments(name: str, split: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose 'train' or 'test'")


def shape(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
          download: bool = True) -> tuple[int, int]:
    """``(images, pixels)`` of ``split`` of dataset ``name``, its file found (or downloaded) and verified as
    :func:`load` does, without making a tensor; raises what :func:`load` would."""
    _check_arguments(name, split)
    if name == "digits":
        return _digits_shape(split)
    path, spec = _locate(name, split, data_dir, download)
    try:
        known = _state(path, spec) in _verified
    except OSError:
        known = False
    if not known:
        verify_file(path, spec)
    n, *rest = spec.shape
    return n, int(np.prod(rest))


@functools.lru_cache(maxsize=None)
def _digits_shape(split: str) -> tuple[int, int]:
    return tuple(_digits(split).shape)


def _digits(split: str) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float32) / 16.0
    return images[:DIGITS_TRAIN_SIZE] if split == "train" else images[DIGITS_TRAIN_SIZE:]


def load(
    name: str,
    split: str = "train",
    *,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = None,
    subset: int | None = None,
    download: bool = True,
) -> torch.Tensor:
    """Images of ``split`` ("train" or "test") of dataset ``name``, as float32 ``(n, pixels)`` in [0, 1].

    ``subset`` keeps the first ``subset`` images.  The tensor is created on ``device`` once (bytes
    are moved, then scaled there).  ``download=False`` turns a missing file into an error instead of
    a download.  Raises :class:`DataError` for missing, corrupt or mismatching files and
    ``ValueError`` for bad arguments.
    """
    _check_arguments(name, split)
    if name == "digits":
        array = _digits(split)
    else:
        path, spec = _locate(name, split, data_dir, download)
        array = parse_idx(_verified_payload(path, spec), str(path))
        if array.shape != spec.shape or array.dtype != np.uint8:
            raise DataError(f"{path}: expected uint8 images of shape {spec.shape}, got {array.dtype} {array.shape}")
        array = array.reshape(array.shape[0], -1)
    if subset is not None:
        if not 1 <= int(subset) <= array.shape[0]:
            raise ValueError(f"subset must be between 1 and {array.shape[0]} for {name}/{split}, got {subset}")
        array = array[: int(subset)]
    images = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return images if name == "digits" else images.to(torch.float32).div_(255.0)
