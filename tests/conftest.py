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


@pytest.fixture
def train_on_digits(digits):
    """``train(model, opt, epochs=3, batch_size=100, data=None) -> (initial loss, final loss)``.

    The training loop every optimizer of the package shares (with the loss closure for those that
    ask for one), on shuffled batches of the digits; losses are over the whole set.
    """
    from locoprop.models import reconstruction_loss

    def train(model, opt, epochs=3, batch_size=100, data=None):
        x_all = digits if data is None else data
        with torch.no_grad():
            initial = reconstruction_loss(model(x_all), x_all).item()
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            perm = torch.randperm(len(x_all), generator=g)
            for i in range(0, len(x_all) - batch_size + 1, batch_size):
                x = x_all[perm[i:i + batch_size]]
                opt.zero_grad()
                reconstruction_loss(model(x), x).backward()
                wants = getattr(opt, "needs_loss_closure", False)
                opt.step((lambda x=x: reconstruction_loss(model(x), x)) if wants else None)
        with torch.no_grad():
            final = reconstruction_loss(model(x_all), x_all).item()
        return initial, final

    return train
