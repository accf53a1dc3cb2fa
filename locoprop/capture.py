r"""The layerwise view shared by LocoProp and K-FAC.

For every ``nn.Linear`` layer :math:`k` of an ``nn.Sequential`` MLP, one ordinary forward and one
ordinary backward pass of the training loop record

* the layer input :math:`X_{k-1}` (batch × d_in),
* the pre-activation :math:`A_k = X_{k-1}W_k^\top + b_k` (batch × d_out),
* its gradient :math:`G_k = \partial\mathcal L/\partial A_k` (batch × d_out),

and the layer's transfer function :math:`f_k`, read from the activation module that follows the
layer (the last layer's comes from ``output_activation`` when the model emits pre-activations,
e.g. logits whose sigmoid lives in the loss).  The capture uses a forward hook that puts a tensor
hook on the layer's output, so it works with the user's own ``loss.backward()`` and with in-place
activations.  Forward passes without gradient (evaluation under ``torch.no_grad()``) are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .transfer import Transfer, get_transfer, transfer_of_module

__all__ = ["CapturedLayer", "LayerCapture", "linear_layers"]


@dataclass(eq=False)
class CapturedLayer:
    """One linear layer, its transfer function, and what the last training pass recorded."""

    index: int
    module: nn.Linear
    transfer: Transfer
    inputs: Tensor | None = field(default=None, repr=False)
    preact: Tensor | None = field(default=None, repr=False)
    grad: Tensor | None = field(default=None, repr=False)

    @property
    def params(self) -> list[nn.Parameter]:
        """The layer's weight, then its bias if it has one."""
        return [p for p in (self.module.weight, self.module.bias) if p is not None]


def linear_layers(model: nn.Module, output_activation: str | None = None) -> list[tuple[nn.Linear, Transfer]]:
    """The ``(nn.Linear, transfer)`` pairs of an MLP written as ``nn.Sequential``.

    A Linear layer's transfer function is the activation module right after it (identity if
    another Linear follows directly).  For the last layer, an activation module after it wins;
    otherwise ``output_activation`` names the function the loss applies to the output
    (``"sigmoid"`` for logits trained with sigmoid cross-entropy), identity if None.
    ``nn.Flatten`` is allowed before the first layer.  Anything else raises ``ValueError``.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"expected an nn.Sequential of nn.Linear layers and activations, got {type(model).__name__}"
        )
    modules = list(model)
    pairs: list[tuple[nn.Linear, Transfer]] = []
    pending: nn.Linear | None = None
    for position, module in enumerate(modules):
        if isinstance(module, nn.Linear):
            if pending is not None:
                pairs.append((pending, get_transfer("identity")))
            pending = module
            continue
        if isinstance(module, nn.Flatten) and not pairs and pending is None:
            continue
        transfer = transfer_of_module(module)
        if transfer is None:
            raise ValueError(
                f"module {position} of the model ({module!r}) is not supported: LocoProp and K-FAC "
                "handle nn.Sequential models of nn.Linear layers, each followed by at most one of "
                "nn.Identity, nn.Tanh, nn.Sigmoid, nn.ReLU, nn.Softmax(dim=-1)"
            )
        if pending is None:
            raise ValueError(
                f"module {position} of the model ({module!r}) does not follow an nn.Linear layer"
            )
        pairs.append((pending, transfer))
        pending = None
    if pending is not None:
        pairs.append((pending, get_transfer(output_activation or "identity")))
    elif output_activation is not None and pairs and pairs[-1][1].name != output_activation:
        raise ValueError(
            f"output_activation={output_activation!r} but the model already ends with "
            f"{pairs[-1][1].name}; pass output_activation=None"
        )
    if not pairs:
        raise ValueError("the model has no nn.Linear layer")
    return pairs


class LayerCapture:
    """Records :math:`(X_{k-1}, A_k, G_k)` of every linear layer of ``model`` during training passes."""

    def __init__(self, model: nn.Module, output_activation: str | None = None):
        self.layers = [
            CapturedLayer(k, module, transfer)
            for k, (module, transfer) in enumerate(linear_layers(model, output_activation))
        ]
        self._handles = [layer.module.register_forward_hook(self._hook(layer)) for layer in self.layers]

    @staticmethod
    def _hook(layer: CapturedLayer):
        def record_grad(grad: Tensor) -> None:
            layer.grad = grad.reshape(-1, grad.shape[-1])

        def forward_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            x = inputs[0]
            layer.inputs = x.detach().reshape(-1, x.shape[-1])
            layer.preact = output.detach().reshape(-1, output.shape[-1])
            layer.grad = None
            output.register_hook(record_grad)

        return forward_hook

    def require_backward(self) -> None:
        """Raise a clear error unless a training forward and backward pass were recorded."""
        missing = [layer.index for layer in self.layers if layer.grad is None]
        if missing:
            raise RuntimeError(
                "no gradient was recorded for linear layer(s) "
                f"{missing}: call optimizer.step() after a forward pass with gradients enabled and "
                "loss.backward()"
            )

    def clear(self) -> None:
        """Forget the recorded tensors (frees their memory)."""
        for layer in self.layers:
            layer.inputs = layer.preact = layer.grad = None

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def backpropagate(self, output_grad: Tensor) -> list[Tensor]:
        r"""Pre-activation gradients of another loss through the recorded forward pass.

        Given :math:`\partial\mathcal L'/\partial A_K` (``output_grad``), returns
        :math:`\partial\mathcal L'/\partial A_k` for every layer by the chain rule
        :math:`G_{k-1} = (G_k W_k) \odot f'_{k-1}(A_{k-1})`: a second backward pass that needs no
        autograd graph (K-FAC uses it for gradients of labels sampled from the model).
        """
        grads = [output_grad]
        for below, above in zip(reversed(self.layers[:-1]), reversed(self.layers[1:])):
            if not below.transfer.elementwise:
                raise ValueError(f"cannot backpropagate through a hidden {below.transfer.name} layer")
            grads.append((grads[-1] @ above.module.weight) * below.transfer.derivative(below.preact))
        return grads[::-1]
