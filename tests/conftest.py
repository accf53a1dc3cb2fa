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


def train_steps(model, opt, batches):
    """The training loop every optimizer of the package shares (autoencoder loss; the loss
    closure for optimizers that ask for one)."""
    from locoprop.models import reconstruction_loss

    for x in batches:
        opt.zero_grad()
        reconstruction_loss(model(x), x).backward()
        wants = getattr(opt, "needs_loss_closure", False)
        opt.step((lambda x=x: reconstruction_loss(model(x), x)) if wants else None)


@pytest.fixture
def train_on_digits(digits):
    """``train(model, opt, epochs=3, batch_size=100, data=None) -> (initial loss, final loss)``
    on shuffled batches of the digits; losses are over the whole set."""
    from locoprop.models import reconstruction_loss

    def train(model, opt, epochs=3, batch_size=100, data=None):
        x_all = digits if data is None else data
        with torch.no_grad():
            initial = reconstruction_loss(model(x_all), x_all).item()
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            perm = torch.randperm(len(x_all), generator=g)
            train_steps(model, opt, [x_all[perm[i:i + batch_size]]
                                     for i in range(0, len(x_all) - batch_size + 1, batch_size)])
        with torch.no_grad():
            final = reconstruction_loss(model(x_all), x_all).item()
        return initial, final

    return train


@pytest.fixture
def recorded_pass():
    """``record(model, x, y, loss_fn) -> (linears, inputs, preacts, grads)``: each linear layer's input
    X, pre-activation A and gradient G = dL/dA of ``loss_fn(model(x), y)``, computed without the
    package's capture, on a copy so that ``model`` keeps no gradients."""
    import copy

    def record(model, x, y, loss_fn):
        model = copy.deepcopy(model)
        inputs, preacts, h = [], [], x
        for m in model:
            if isinstance(m, torch.nn.Linear):
                inputs.append(h.detach())
                h = m(h)
                h.retain_grad()
                preacts.append(h)
            else:
                h = m(h)
        loss_fn(h, y).backward()
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        return linears, inputs, [a.detach() for a in preacts], [a.grad for a in preacts]
    return record


@pytest.fixture
def resumes_bit_identically():
    """``check(make, batches, split) -> bool``: train ``make(fresh=False)`` on ``batches[:split]``,
    save model and optimizer state, train on the rest; a new ``make(fresh=True)`` (which may
    start from other weights and seeds) loaded with the saved state and trained on the rest must
    end with bit-identical parameters."""
    import copy

    def check(make, batches, split):
        model, opt = make(fresh=False)
        train_steps(model, opt, batches[:split])
        saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        train_steps(model, opt, batches[split:])
        resumed, resumed_opt = make(fresh=True)
        resumed.load_state_dict(saved_model)
        resumed_opt.load_state_dict(saved_opt)
        train_steps(resumed, resumed_opt, batches[split:])
        return all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))

    return check
