r"""Counting what a training step does: aten operations, multi-tensor calls and host reads.

* :class:`OpCounter` counts the aten operations that reach the dispatcher (a ``TorchDispatchMode``):
  the operations a step launches, one kernel or more each on CUDA.  ``torch._foreach_*`` calls are
  counted once each although they update a whole list of tensors (a few kernel launches on CUDA).
* :func:`host_reads` counts the operations that copy a value from the device to the host, which on
  CUDA wait for every queued kernel (a synchronisation): ``Tensor.item``, ``bool``, ``float``,
  ``int``, ``index`` (all of which reach the dispatcher as ``aten._local_scalar_dense``),
  ``Tensor.tolist``, ``.cpu()``, ``.numpy()``, and the aten operations whose output size depends on
  the data (``nonzero``, ``masked_select``, ``unique``, indexing with a boolean mask).  It
  works on the CPU, where none of these waits for anything, so a CPU run measures what a CUDA run
  would synchronise on.  Calls nested in a counted call are not counted again.  Separately it
  counts ``torch.linalg.eigh`` calls (``"eigh"``): each checks its convergence on the host, a
  synchronisation per call on CUDA that PyTorch does not let the caller skip.

  Reads of the step counters that ``torch.optim``'s own optimizers keep on the CPU by design (their
  ``state["step"]`` when not ``capturable``, also when the parameters are on CUDA) are no device
  synchronisation; pass the optimizer as ``optimizer`` to leave them out (also those of its
  ``inner`` optimizer).
"""
from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "host_reads", "host_side_tensors", "reads_of", "READS", "SYNCING_OPS"]

#: Tensor methods that copy values to the host.
READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "__array__")
#: aten operations that read values to the host (scalars, or the size of a data-dependent output).
SYNCING_OPS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
                         "unique_consecutive"})


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as ops:`` counts aten operations by name in ``ops.counts``."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """Operations counted."""
        return sum(self.counts.values())

    @property
    def foreach(self) -> int:
        """``torch._foreach_*`` calls counted."""
        return sum(n for name, n in self.counts.items() if name.startswith("_foreach"))


def host_side_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The CPU step counters of ``torch.optim``'s own optimizers (not ``capturable``): host-side by design.

    Those of an optimizer's ``inner`` optimizer (LocoProp's) too."""
    if optimizer is None:
        return []
    if not type(optimizer).__module__.startswith("torch.optim"):
        return host_side_tensors(getattr(optimizer, "inner", None))
    if any(group.get("capturable") or group.get("fused") for group in optimizer.param_groups):
        return []
    return [state["step"] for state in optimizer.state.values()
            if isinstance(state, dict) and torch.is_tensor(state.get("step")) and state["step"].device.type == "cpu"]


@contextlib.contextmanager
def host_reads(optimizer: torch.optim.Optimizer | None = None) -> Iterator[Counter]:
    """``with host_reads(opt) as reads: opt.step()``: host reads by kind in ``reads`` (see the module docstring).

    ``sum(reads[k] for k in reads if k != "eigh")`` is the number of host reads.
    """
    counts: Counter[str] = Counter()
    depth = [0]
    originals = {name: getattr(torch.Tensor, name) for name in READS if hasattr(torch.Tensor, name)}

    def counted(name, method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if depth[0] == 0 and not any(self is t for t in host_side_tensors(optimizer)):
                counts[name] += 1
            depth[0] += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if depth[0] == 0 and (name in SYNCING_OPS or (name in ("index", "index_put", "index_put_")
                                                          and _has_mask(args))):
                counts["aten." + name] += 1
            if name == "_linalg_eigh":
                counts["eigh"] += 1
            return func(*args, **(kwargs or {}))

    for name, method in originals.items():
        setattr(torch.Tensor, name, counted(name, method))
    try:
        with Mode():
            yield counts
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def _has_mask(args) -> bool:
    """Whether an indexing operation's indices hold a boolean mask (whose selected size is read to the host)."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def reads_of(counts: Counter) -> int:
    """The host reads in a :func:`host_reads` count (``eigh``'s own checks left out)."""
    return sum(n for kind, n in counts.items() if kind != "eigh")
