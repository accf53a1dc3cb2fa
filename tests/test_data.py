"""The dataset loader: real files (when present), hand-built IDX files, errors, digits."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from locoprop.experiments import data
from locoprop.experiments.data import DataError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ["LOCOPROP_DATA_DIR"]) if os.environ.get("LOCOPROP_DATA_DIR") else REPO.parent / "shared" / "data"


def shared_file(name: str, filename: str) -> Path:
    path = SHARED / name / filename
    if not path.is_file():
        pytest.skip(f"{path} not available (set LOCOPROP_DATA_DIR to a folder with mnist/ and fashion-mnist/)")
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written out by hand: 0x00 0x00 0x08 ndim, big-endian sizes, the bytes."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def pixel_entropy(images: np.ndarray) -> float:
    """Mean over images of the summed Bernoulli entropy of the grey levels (nats)."""
    p = images.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log(1 - p), 0.0))
    return float(h.sum(axis=1).mean())


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty download cache and no LOCOPROP_DATA_DIR, so only what a test puts there is found."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(data, "cache_dir", lambda: cache)
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return cache


# --------------------------------------------------------------------------- real files
def test_mnist_test_split_matches_raw_bytes_and_entropy_floor(monkeypatch):
    path = shared_file("mnist", "t10k-images-idx3-ubyte.gz")
    monkeypatch.setenv(data.ENV_VAR, str(SHARED))
    x = data.load("mnist", "test", download=False)
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    raw = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=16).reshape(10000, 784)
    np.testing.assert_array_equal(x.numpy(), raw.astype(np.float32) / 255.0)
    assert pixel_entropy(raw / 255.0) == pytest.approx(45.53, abs=0.05)


def test_fashion_mnist_train_split(monkeypatch):
    shared_file("fashion-mnist", "train-images-idx3-ubyte.gz")
    x = data.load("fashion-mnist", "train", data_dir=SHARED, download=False)
    assert x.shape == (60000, 784) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert pixel_entropy(x.numpy()) == pytest.approx(188.3, abs=0.2)


def test_subset_keeps_the_first_images():
    shared_file("fashion-mnist", "t10k-images-idx3-ubyte.gz")
    full = data.load("fashion-mnist", "test", data_dir=SHARED, download=False)
    part = data.load("fashion-mnist", "test", data_dir=SHARED, download=False, subset=7)
    assert torch.equal(part, full[:7])
    with pytest.raises(ValueError, match="subset"):
        data.load("fashion-mnist", "test", data_dir=SHARED, download=False, subset=10001)


# --------------------------------------------------------------------------- missing files, downloads
def test_missing_mnist_train_without_download_names_files_dirs_and_url(isolated_cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(DataError) as info:
        data.load("mnist", "train", data_dir=elsewhere, download=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert str(elsewhere / "mnist") in msg and str(isolated_cache / "mnist") in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in msg
    assert not isolated_cache.exists()


def test_failed_download_is_a_clear_error_and_leaves_no_file(isolated_cache, monkeypatch):
    def offline(url, output_file, pooch):
        raise OSError(f"network unreachable for {url}")

    monkeypatch.setattr(data, "_downloader", lambda url: offline)
    with pytest.raises(DataError) as info:
        data.load("mnist", "train")
    msg = str(info.value)
    assert "download failed" in msg and "network unreachable" in msg
    assert all(url in msg for url in data.DATASETS["mnist"]["train"].urls)
    assert not (isolated_cache / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_download_goes_into_the_cache_after_verification(isolated_cache, monkeypatch):
    source = shared_file("fashion-mnist", "t10k-images-idx3-ubyte.gz")
    calls = []

    def fake(url, output_file, pooch):
        calls.append(url)
        shutil.copyfile(source, output_file)

    monkeypatch.setattr(data, "_downloader", lambda url: fake)
    x = data.load("fashion-mnist", "test")
    assert x.shape == (10000, 784)
    assert calls == [data.DATASETS["fashion-mnist"]["test"].urls[0]]
    assert (isolated_cache / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").read_bytes() == source.read_bytes()
    data.load("fashion-mnist", "test")  # found in the cache now: no second download
    assert len(calls) == 1


def test_download_with_wrong_content_is_rejected(isolated_cache, monkeypatch):
    bogus = gzip.compress(idx_bytes(np.zeros((10000, 28, 28), np.uint8)))
    monkeypatch.setattr(data, "_downloader", lambda url: lambda u, out, p: Path(out).write_bytes(bogus))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load("fashion-mnist", "test")
    assert not (isolated_cache / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").exists()


# --------------------------------------------------------------------------- IDX files written here
def test_idx_round_trip_exact(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    raw = tmp_path / "a.idx"
    raw.write_bytes(idx_bytes(array))
    packed = tmp_path / "a.idx.gz"
    packed.write_bytes(gzip.compress(idx_bytes(array)))
    for path in (raw, packed):
        out = data.read_idx(path)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, array)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x00\x01\x08\x03" + struct.pack(">3I", 1, 2, 2) + bytes(4))
    with pytest.raises(DataError, match="magic number"):
        data.read_idx(path)


def test_idx_truncated(tmp_path):
    path = tmp_path / "short.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((3, 2, 2), np.uint8))[:-1]))
    with pytest.raises(DataError, match="size mismatch"):
        data.read_idx(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(b"x" * 1000)[:20])
    with pytest.raises(DataError, match="gzip"):
        data.read_idx(path)


def test_checksum_mismatch_keeps_the_file_and_does_not_fall_back(isolated_cache, tmp_path, monkeypatch):
    root = tmp_path / "mine"
    path = root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    path.parent.mkdir(parents=True)
    content = gzip.compress(idx_bytes(np.full((10000, 28, 28), 7, np.uint8)))
    path.write_bytes(content)
    monkeypatch.setattr(data, "_downloader", lambda url: pytest.fail("must not download"))
    with pytest.raises(DataError) as info:
        data.load("fashion-mnist", "test", data_dir=root)
    msg = str(info.value)
    actual = hashlib.sha256(gzip.decompress(content)).hexdigest()
    assert str(path) in msg and actual in msg and data.DATASETS["fashion-mnist"]["test"].sha256 in msg
    assert path.read_bytes() == content


def test_gzip_md5_is_checked_where_no_payload_hash_is_pinned(tmp_path, isolated_cache):
    root = tmp_path / "mine"
    path = root / "mnist" / "train-images-idx3-ubyte.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((60000, 28, 28), np.uint8))))
    with pytest.raises(DataError, match="MD5 of the gzip file .* expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        data.load("mnist", "train", data_dir=root, download=False)
    assert path.exists()


# --------------------------------------------------------------------------- digits and arguments
def test_digits_split():
    from sklearn.datasets import load_digits

    images = load_digits().data / 16.0
    train = data.load("digits", "train")
    test = data.load("digits", "test")
    assert train.shape == (1500, 64) and test.shape == (297, 64) and train.dtype == torch.float32
    np.testing.assert_allclose(train.numpy(), images[:1500], rtol=0, atol=1e-7)
    np.testing.assert_allclose(test.numpy(), images[1500:], rtol=0, atol=1e-7)
    assert float(train.min()) == 0.0 and float(train.max()) == 1.0
    assert torch.equal(data.load("digits", "train", subset=10), train[:10])


@pytest.mark.parametrize("name, split", [("cifar", "train"), ("digits", "validation")])
def test_bad_arguments(name, split):
    with pytest.raises(ValueError, match="unknown"):
        data.load(name, split)
