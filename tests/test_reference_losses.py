"""The reference lines of the loss plots, checked against the loss itself."""
import math

import torch

from locoprop.models import entropy_floor, mean_image_loss, reconstruction_loss


def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 20, generator=g, dtype=torch.float64)
    x[:, :3] = (x[:, :3] > 0.5).double()  # some pixels exactly 0 or 1, as in real images
    return x


def rounding_bound(logits):
    """Float64 rounding of a summed binary cross-entropy: a pixel's term softplus(z) - z x takes about five
    correctly rounded operations on values of size at most 1 + |z| (with cancellation where x -> 1), so its
    error is below 8u(1 + |z|); summing the d pixels of an image adds at most d u times the same sizes, and
    a saturated pixel (|z| = 40) contributes exp(-40) that the floor counts as 0."""
    u = torch.finfo(torch.float64).eps / 2
    d = logits.shape[1]
    return float(((8 + d) * u * (1 + logits.abs())).sum(1).mean()) + d * math.exp(-40)


def test_the_floor_is_the_loss_of_the_perfect_reconstruction():
    x = images()
    inner = (x > 0) & (x < 1)
    # logits = logit(x) reproduce x exactly where 0 < x < 1; saturated pixels contribute 0 (logit ±40).
    logits = torch.where(inner, torch.logit(x.clamp(1e-12, 1 - 1e-12)), (2 * x - 1) * 40.0)
    assert abs(entropy_floor(x) - float(reconstruction_loss(logits, x))) <= 2 * rounding_bound(logits)


def test_the_mean_image_is_the_best_constant_prediction():
    x = images()
    m = x.mean(dim=0).clamp(1e-12, 1 - 1e-12)
    loss = mean_image_loss(x)
    logits = torch.logit(m).expand_as(x)
    assert abs(loss - float(reconstruction_loss(logits, x))) <= 2 * rounding_bound(logits)
    for sign in (-1, 1):  # any other constant image does worse (the loss is convex in the prediction)
        assert mean_image_loss(x, (m + sign * 0.01).clamp(0.001, 0.999)) > loss
    assert entropy_floor(x) < loss
