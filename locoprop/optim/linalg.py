"""Linear algebra shared by K-FAC and Shampoo: batched, failure-tolerant inverses and roots.

Every routine works on a stack of matrices (batch, n, n), never raises on a numerical failure and
never returns non-finite values: a float32 failure is retried in float64, and what still fails
keeps the caller's previous result.  (``check_hparam``, re-exported here, lives in
:mod:`locoprop.optim.validation`.)

**Host reads.**  Failures are handled on the device with ``torch.where`` (whose result is the
computed value wherever nothing failed), so the routines read nothing back to the host, with two
exceptions: :func:`damped_cholesky_inverses` reads one flag, for all its stacks together, to decide
whether a float64 retry is needed; and ``torch.linalg.eigh`` itself checks its convergence on the
host (a synchronisation per call on CUDA, which PyTorch does not let a caller skip).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .validation import check_hparam  # noqa: F401  (re-exported: the optimizers' hyper-parameter check)

__all__ = ["check_hparam", "by_shape", "eigh_with_retry", "inverse_root", "damped_cholesky_inverse",
           "damped_cholesky_inverses"]


def by_shape(mats: Sequence[Tensor], key: Callable[[int], Any] = lambda i: None) -> list[list[int]]:
    """Indices of ``mats`` grouped by (shape, dtype, device, ``key(i)``), so each group can be stacked."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, m in enumerate(mats):
        groups[(tuple(m.shape), m.dtype, m.device, key(i))].append(i)
    return list(groups.values())


def _eye_like(mats: Tensor) -> Tensor:
    return torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device).expand_as(mats)


def _finite(x: Tensor, dims: int) -> Tensor:
    """Per-matrix (or per-vector) all-finite flag over the last ``dims`` dimensions."""
    return torch.isfinite(x).flatten(-dims).all(-1)


def eigh_with_retry(mats: Tensor, retry_float64: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    r"""Batched symmetric eigendecomposition :math:`M = Q\,\mathrm{diag}(\lambda)\,Q^\top` that does not raise.

    ``mats`` is (batch, n, n); only its lower triangle is read (as ``torch.linalg.eigh`` does), so a
    product like :math:`X^\top X` needs no symmetrisation.  A matrix with a non-finite entry (tested
    through the sum of its entries, so also one whose entries are large enough that their sum
    overflows, about :math:`10^{38}` in float32: an eigendecomposition would overflow too) is replaced by
    :math:`I` and flagged; a float32 ``torch.linalg.eigh`` failure is retried in float64 (if
    ``retry_float64``).  Returns ``(eigenvalues, eigenvectors, ok)`` in the input dtype, where ``ok``
    (batch,) is False for matrices whose decomposition failed or is not finite: the caller must not use
    those.  When nothing fails, the cost is that of one ``eigh`` plus elementwise checks and copies.
    """
    finite_in = torch.isfinite(mats.sum((-2, -1)))  # a non-finite entry makes the sum non-finite
    sym = torch.where(finite_in[:, None, None], mats, _eye_like(mats))  # ``mats`` itself where finite
    try:
        vals, vecs = torch.linalg.eigh(sym)
    except torch.linalg.LinAlgError:
        if not retry_float64 or sym.dtype == torch.float64:
            return sym.new_zeros(sym.shape[:-1]), _eye_like(sym).clone(), torch.zeros_like(finite_in)
        try:
            vals, vecs = (t.to(sym.dtype) for t in torch.linalg.eigh(sym.double()))
        except torch.linalg.LinAlgError:
            return sym.new_zeros(sym.shape[:-1]), _eye_like(sym).clone(), torch.zeros_like(finite_in)
    ok = finite_in & torch.isfinite(vals.sum(-1)) & torch.isfinite(vecs.sum((-2, -1)))
    return vals, vecs, ok


def inverse_root(
    mats: Tensor,
    exponent: float,
    epsilon: float,
    relative: bool,
    previous: Tensor,
    retry_float64: bool = True,
) -> Tensor:
    r"""Batched :math:`(M + \epsilon I)^{-1/p}` by ``eigh`` in float64, keeping ``previous`` where it fails.

    Eigenvalues are clamped at 0; with ``relative`` the shift is :math:`\epsilon\lambda_{\max}(M)`;
    directions with :math:`\lambda + \epsilon = 0` get 0 (pseudo-inverse).  The decomposition and the
    root are taken in float64 and rounded once to the input dtype: a float32 ``eigh`` has absolute
    eigenvalue errors of about :math:`n\,2^{-24}\lambda_{\max}`, as large as a relative shift
    :math:`\epsilon = 10^{-6}`, so the root of the smallest directions would swing with the rounding of
    the decomposition; in float64 the root's relative error is at most about
    :math:`n\,2^{-53}/(p\,\epsilon)` before that one rounding (:math:`f(\lambda) = (\lambda + s)^{-1/p}` has
    :math:`|f'|/f \le 1/(p s)`).  (``retry_float64`` is kept for the signature; float64 is always used.)
    """
    dtype = mats.dtype
    vals, vecs, ok = eigh_with_retry(mats.double(), retry_float64)
    vals = vals.clamp_min(0.0)
    shifted = vals + (epsilon * vals.amax(-1, keepdim=True) if relative else epsilon)
    scale = torch.where(shifted > 0, shifted, 1.0).pow(-1.0 / exponent)
    scale = torch.where(shifted > 0, scale, 0.0)
    root = ((vecs * scale[..., None, :]) @ vecs.transpose(-1, -2)).to(dtype)
    ok = ok & _finite(root, 2)
    return torch.where(ok[:, None, None], root, previous)


def damped_cholesky_inverse(
    mats: Tensor, shifts: Tensor, previous: Tensor | None = None, retry_float64: bool = True
) -> Tensor:
    r"""Batched :math:`(M_i + s_i I)^{-1}` by Cholesky, never non-finite: :func:`damped_cholesky_inverses`
    of one stack."""
    return damped_cholesky_inverses([(mats, shifts, previous)], retry_float64)[0]


def damped_cholesky_inverses(
    stacks: Sequence[tuple[Tensor, Tensor, Tensor | None]], retry_float64: bool = True
) -> list[Tensor]:
    r"""Batched :math:`(M_i + s_i I)^{-1}` by Cholesky for several stacks ``(mats, shifts, previous)``.

    ``mats`` (batch, n, n) symmetric PSD (only the lower triangle is read), ``shifts`` (batch,).  The
    inverse is ``torch.cholesky_inverse`` of the factor (LAPACK ``potri``: no triangular solve against
    the identity, half the work).  If a float32 factorisation of any stack failed, every float32 stack
    is refactorised in float64 (``retry_float64``) and the float64 inverse replaces the failed ones
    only; deciding this takes one host read of the failure flags, for all stacks together (none with
    ``retry_float64=False``).  Matrices that still fail, or give non-finite inverses, get
    ``previous`` (default identity).
    """
    def attempt(m: Tensor) -> tuple[Tensor, Tensor]:
        # Failed factors are swapped for I first, so that cholesky_inverse only sees valid factors.
        chol, info = torch.linalg.cholesky_ex(m)
        chol = torch.where((info == 0)[:, None, None], chol, torch.eye(m.shape[-1], dtype=m.dtype, device=m.device))
        inv = torch.cholesky_inverse(chol)
        return inv, (info == 0) & _finite(inv, 2)

    damped = [mats + shifts[:, None, None] * torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device)
              for mats, shifts, _ in stacks]
    results = [attempt(m) for m in damped]
    lower = [i for i, m in enumerate(damped) if m.dtype != torch.float64]
    if retry_float64 and lower and not bool(torch.stack([results[i][1].all() for i in lower]).all()):  # the host read
        for i in lower:
            inv, ok = results[i]
            inv64, ok64 = attempt(damped[i].double())
            results[i] = torch.where(ok[:, None, None], inv, inv64.to(inv.dtype)), ok | ok64
    out = []
    for (mats, _, previous), (inv, ok) in zip(stacks, results):
        fallback = torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device).expand_as(mats) \
            if previous is None else previous
        out.append(torch.where(ok[:, None, None], inv, fallback))
    return out
