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

**One pass per step.**  The optimizers that read the capture (LocoProp, K-FAC) pair each layer's
:math:`X_{k-1}, A_k` with its :math:`G_k`, so they need exactly one forward pass with gradients
and one backward pass through it per step.  Every training forward pass gets a serial number and
every recorded gradient the number of the pass it belongs to; :meth:`LayerCapture.require_backward`
refuses a step unless, since the last step (and the last ``optimizer.zero_grad()``, which discards
the gradients recorded so far), exactly one gradient arrived and it belongs to the last forward
pass.  Gradient accumulation (several forward/backward passes, or one backward through the sum of
several forward passes) therefore raises instead of pairing one batch's inputs with another's
gradients.  Forward passes that are never backpropagated (e.g. a loss computed for logging) are
harmless.

**Precision.**  The recorded tensors are kept in the dtype of the layer's weight: under
``torch.autocast`` (bfloat16 products) they are upcast once, so that the statistics and targets the
optimizers build from them are float32 (``Tensor.to`` is a no-op when the dtype already matches).
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
    forward_pass: int | None = field(default=None, repr=False)  # serial number of the recorded pass
    # What require_backward checks, kept up to date by the hooks so that the check reads no serial
    # number (a compiled step then sees the same values at every step):
    grad_count: int = field(default=0, repr=False)  # gradients arrived (since the last step or zero_grad)
    recorded: bool = field(default=False, repr=False)  # a forward pass was recorded since the last step
    stale: bool = field(default=False, repr=False)  # the first gradient is not of the last forward pass

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
        self._passes = 0  # training forward passes seen (serial numbers)
        self._handles = [layer.module.register_forward_hook(self._hook(layer)) for layer in self.layers]

    def _hook(self, layer: CapturedLayer):
        def forward_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            self._passes += 1
            number = self._passes
            x = inputs[0]
            dtype = module.weight.dtype  # under autocast, activations may be in a lower precision
            layer.inputs = x.detach().reshape(-1, x.shape[-1]).to(dtype)
            layer.preact = output.detach().reshape(-1, output.shape[-1]).to(dtype)
            layer.grad = None
            layer.forward_pass = number
            layer.recorded = True
            layer.stale = layer.grad_count > 0  # a gradient already recorded belongs to an earlier pass

            def record_grad(grad: Tensor) -> None:
                if layer.grad_count == 0:
                    layer.stale = number != layer.forward_pass
                layer.grad_count += 1
                if number == layer.forward_pass:
                    layer.grad = grad.reshape(-1, grad.shape[-1]).to(dtype)

            output.register_hook(record_grad)

        return forward_hook

    def require_backward(self, owner: str = "this optimizer") -> None:
        """Raise a clear ``RuntimeError`` unless exactly one forward and one backward pass through it were recorded.

        Counted since the last :meth:`clear` (the end of a step) and, for gradients, the last
        :meth:`forget_gradients` (``optimizer.zero_grad()``).
        """
        missing = []
        for layer in self.layers:
            passes = layer.grad_count
            if passes > 1:
                raise RuntimeError(
                    f"{owner} needs exactly one forward and one backward pass per step, but linear layer "
                    f"{layer.index} received {passes} gradients since the last step() or zero_grad() "
                    "(gradient accumulation is not supported: concatenate the micro-batches into one batch)"
                )
            if passes and not layer.recorded:
                raise RuntimeError(
                    f"{owner}: linear layer {layer.index} received a gradient but no forward pass was recorded "
                    "since the last step(): run a new forward pass with gradients enabled before loss.backward()"
                )
            if passes and layer.stale:
                raise RuntimeError(
                    f"{owner}: the gradient of linear layer {layer.index} belongs to an earlier forward pass than "
                    "the last one recorded: step() needs the backward pass of the last forward pass with "
                    "gradients (run other forward passes under torch.no_grad())"
                )
            if layer.grad is None:
                missing.append(layer.index)
        if missing:
            raise RuntimeError(
                f"{owner}: no gradient was recorded for linear layer(s) {missing} since the last step() or "
                "zero_grad(): call optimizer.step() after a forward pass with gradients enabled and loss.backward()"
            )

    def forget_gradients(self) -> None:
        """Forget the recorded gradients, keep the recorded forward pass (``optimizer.zero_grad()`` calls it)."""
        for layer in self.layers:
            layer.grad = None
            layer.grad_count = 0
            layer.stale = False

    def clear(self) -> None:
        """Forget the recorded tensors and passes (frees their memory; the end of every step)."""
        for layer in self.layers:
            layer.inputs = layer.preact = layer.grad = None
            layer.forward_pass = None
            layer.grad_count = 0
            layer.recorded = layer.stale = False

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
