"""Host reads per optimizer step, counted on the CPU (locoprop.experiments.counting.host_reads).

Every read of a device value by the host (``.item()``, ``bool``, ``float``, ``.tolist()``, ``.cpu()``,
a data-dependent output size ...) waits on CUDA for all queued work.  The training loop must make
none on an ordinary step and at most one on a step that recomputes inverses or roots; the
eigendecompositions' own convergence checks (one host synchronisation per ``torch.linalg.eigh`` call
on CUDA) are counted apart, as the K-FAC and Shampoo docstrings say.
"""
import numpy as np
import pytest
import torch

from locoprop.experiments.counting import host_reads, reads_of
from locoprop.models import deep_autoencoder, reconstruction_loss
from locoprop.optim import FIRST_ORDER, make_optimizer
from locoprop.schedules import warmup_linear_decay

SIZES = (12, 9, 5, 9, 12)
FREQ = 3  # inverse / root update every 3 steps, from the first
STEPS = 7
CASES = {
    **{name: (name, {}) for name in FIRST_ORDER},
    "locoprop-s": ("locoprop-s", {}),
    "locoprop-m": ("locoprop-m", {}),
    "locoprop-m bf16": ("locoprop-m", {"precision": "bf16"}),
    "locoprop-m adam inside": ("locoprop-m", {"inner": "adam"}),
    "kfac": ("kfac", {"inverse_update_freq": FREQ}),
    "kfac without retry": ("kfac", {"inverse_update_freq": FREQ, "retry_float64": False}),
    "kfac adaptive, kl-clipped": ("kfac", {"inverse_update_freq": FREQ, "adaptive_damping": True,
                                           "damping_adaptation_interval": 2, "kl_clip": 1e-3}),
    "kfac exact": ("kfac", {"inverse_update_freq": FREQ, "damping_mode": "exact"}),
    "shampoo": ("shampoo", {"precondition_frequency": FREQ, "start_preconditioning_step": 1}),
}


def counts_per_step(name, hparams, steps=STEPS):
    """The host reads of each ``opt.step()`` of a short training run with the lr scheduler attached."""
    model = deep_autoencoder(SIZES, seed=0)
    opt = make_optimizer(name, model, **hparams)
    scheduler = warmup_linear_decay(opt, 2, 10)
    x = torch.rand(steps * 20, SIZES[0], generator=torch.Generator().manual_seed(0))
    out = []
    for xb in x.split(20):
        opt.zero_grad(set_to_none=True)
        reconstruction_loss(model(xb), xb).backward()
        closure = (lambda xb=xb: reconstruction_loss(model(xb), xb)) if getattr(opt, "needs_loss_closure", False) else None
        with host_reads(opt) as counts:
            opt.step(closure)
        scheduler.step()
        out.append(counts)
    return out


def factor_sizes(sizes):
    """K-FAC's factor sizes (d_in + 1 and d_out per layer) and Shampoo's statistic sizes (d_out and d_in)."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    return {n for d_in, d_out in layers for n in (d_in + 1, d_out)}, {n for layer in layers for n in layer}


@pytest.mark.parametrize("label", CASES)
def test_host_reads_per_step(label):
    name, hparams = CASES[label]
    kfac_sizes, shampoo_sizes = factor_sizes(SIZES)
    pi_with_retry = name == "kfac" and hparams.get("damping_mode", "pi") == "pi" and hparams.get("retry_float64", True)
    eigh_calls = {"kfac": len(kfac_sizes) if hparams.get("damping_mode") == "exact" else 0,
                  "shampoo": len(shampoo_sizes)}.get(name, 0)
    torch_optim_inside = "inner" in hparams  # reads the layers' learning rates as numbers, once per step
    for t, counts in enumerate(counts_per_step(name, hparams)):
        update = name in ("kfac", "shampoo") and t % FREQ == 0
        assert reads_of(counts) == (1 if (update and pi_with_retry) or torch_optim_inside else 0), (t, dict(counts))
        assert counts["eigh"] == (eigh_calls if update else 0), (t, dict(counts))


def test_one_host_read_for_all_factor_sizes_when_a_factorisation_fails(monkeypatch):
    """A float32 Cholesky failure in one size group: still one read, and that group retried in float64."""
    real = torch.linalg.cholesky_ex
    dtypes = []

    def fails_for_size_6_in_float32(m, *args, **kwargs):
        dtypes.append((m.shape[-1], m.dtype))
        chol, info = real(m, *args, **kwargs)
        if m.shape[-1] == 6 and m.dtype == torch.float32:
            info = torch.ones_like(info)
        return chol, info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", fails_for_size_6_in_float32)
    counts = counts_per_step("kfac", {"inverse_update_freq": FREQ}, steps=1)[0]
    assert reads_of(counts) == 1
    assert (6, torch.float64) in dtypes


def test_the_counter_sees_every_kind_of_host_read():
    x = torch.tensor([1.5, -2.0, 0.0])
    reads = [
        lambda: x[0].item(), lambda: bool(x[0]), lambda: float(x[0]), lambda: int(x[1]),
        lambda: [0, 1, 2][x[1].long()], lambda: x.tolist(), lambda: x.cpu(), lambda: x.numpy(),
        lambda: np.asarray(x), lambda: f"{x[0]:.2f}", lambda: x.nonzero(), lambda: x[x > 0],
        lambda: torch.unique(x), lambda: x.masked_select(x > 0), lambda: torch.linalg.eigh(torch.eye(2)),
    ]
    for read in reads:
        with host_reads() as counts:
            read()
        assert reads_of(counts) + counts["eigh"] == 1, dict(counts)
    with host_reads() as counts:
        (x * 2 + 1).sum()
        torch.where(x > 0, x, 0.0)
    assert not counts


def test_only_torch_optims_own_cpu_step_counters_are_left_out():
    """``torch.optim`` keeps ``state["step"]`` on the CPU unless ``capturable``: reading it is no device sync."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    step = opt.state[p]["step"]
    with host_reads(opt) as counts:
        step.item()
    assert not counts
    with host_reads() as counts:  # without the optimizer, a read like any other
        step.item()
    assert reads_of(counts) == 1
    with host_reads(opt) as counts:
        p.sum().item()
    assert reads_of(counts) == 1
