"""TF1 RMSProp against a hand-computed sequence of steps (paper.md §2.3)."""
import numpy as np
import pytest
import torch

from locoprop import TFRMSProp


def test_matches_hand_computed_steps_with_changing_lr():
    rho, mu, eps = 0.9, 0.999, 1e-5
    w0 = np.array([0.5, -1.0, 2.0])
    grads = [np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -4.0]), np.array([-1.0, 1.0, 1.0])]
    lrs = [0.1, 0.05, 0.2]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = TFRMSProp([p], lr=lrs[0], decay=rho, momentum=mu, eps=eps)
    w, ms, mom = w0.copy(), np.ones(3), np.zeros(3)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
        ms = rho * ms + (1 - rho) * g * g
        mom = mu * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
        # float64, three steps of a handful of correctly rounded operations each on O(1) values (|w| > 0.28,
        # |mom| < 0.3, so w - mom loses at most a factor 2): the error is a few tens of units of roundoff,
        # whatever the vectorised (foreach/FMA) kernels do; rtol = 1e-13 is ~450 eps
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-13)
    # by hand, first step: ms = 0.9 + 0.1 g^2, so the first update is lr g / sqrt(0.9 + 0.1 g^2 + eps)
    first = w0 - 0.1 * grads[0] / np.sqrt(0.9 + 0.1 * grads[0] ** 2 + eps)
    q = torch.nn.Parameter(torch.tensor(w0))
    one = TFRMSProp([q], lr=0.1)
    q.grad = torch.tensor(grads[0])
    one.step()
    np.testing.assert_allclose(q.detach().numpy(), first, rtol=1e-13)


def test_differs_from_torch_rmsprop():
    p, q = (torch.nn.Parameter(torch.ones(3)) for _ in range(2))
    a, b = TFRMSProp([p], lr=0.1, momentum=0.0), torch.optim.RMSprop([q], lr=0.1, alpha=0.9, eps=1e-5)
    p.grad = q.grad = torch.tensor([1.0, 2.0, 3.0])
    a.step(), b.step()
    assert not torch.allclose(p, q)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(decay=1.0), dict(momentum=-0.1), dict(eps=-1.0)])
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TFRMSProp([torch.nn.Parameter(torch.ones(1))], **kwargs)
