"""The reference lines of the loss plots, checked against the loss itself."""
import torch

from locoprop.models import entropy_floor, mean_image_loss, reconstruction_loss


def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 20, generator=g, dtype=torch.float64)
    x[:, :3] = (x[:, :3] > 0.5).double()  # some pixels exactly 0 or 1, as in real images
    return x


def test_the_floor_is_the_loss_of_the_perfect_reconstruction():
    x = images()
    inner = (x > 0) & (x < 1)
    # logits = logit(x) reproduce x exactly where 0 < x < 1; saturated pixels contribute 0 (logit ±40).
    logits = torch.where(inner, torch.logit(x.clamp(1e-12, 1 - 1e-12)), (2 * x - 1) * 40.0)
    assert abs(entropy_floor(x) - float(reconstruction_loss(logits, x))) < 1e-9 * x.shape[1]


def test_the_mean_image_is_the_best_constant_prediction():
    x = images()
    m = x.mean(dim=0).clamp(1e-12, 1 - 1e-12)
    loss = mean_image_loss(x)
    assert abs(loss - float(reconstruction_loss(torch.logit(m).expand_as(x), x))) < 1e-9 * x.shape[1]
    for sign in (-1, 1):  # any other constant image does worse (the loss is convex in the prediction)
        assert mean_image_loss(x, (m + sign * 0.01).clamp(0.001, 0.999)) > loss
    assert entropy_floor(x) < loss
