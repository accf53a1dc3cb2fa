import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def digits():
    """scikit-learn's bundled 8x8 digits as float32 in [0, 1] (1797 x 64)."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
