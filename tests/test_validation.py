"""Misuse is refused with a clear error: gradient accumulation with the layerwise optimizers,
hyper-parameters that are not (finite) numbers, and loading another optimizer's state."""
from __future__ import annotations

import copy
import io
import math
import re

import numpy as np
import pytest
import torch

import locoprop
from locoprop.optim import validation
from locoprop.models import deep_autoencoder, reconstruction_loss

SIZES = (8, 6, 3, 6, 8)
LAYERWISE = ["locoprop-m", "locoprop-s", "kfac"]
PACKAGE = ["locoprop-m", "locoprop-s", "kfac", "shampoo", "rmsprop"]  # optimizers of this package


def data(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(10, SIZES[0], generator=g) for _ in range(n)]


def build(name, sizes=SIZES, **hparams):
    model = deep_autoencoder(sizes, seed=0)
    if name == "kfac":
        hparams.setdefault("seed", 0)
    return model, locoprop.make_optimizer(name, model, **hparams)


def loss(model, x):
    return reconstruction_loss(model(x), x)


def closure_for(opt, model, x):
    return (lambda: loss(model, x)) if getattr(opt, "needs_loss_closure", False) else None


def train(model, opt, batches):
    for x in batches:
        opt.zero_grad()
        loss(model, x).backward()
        opt.step(closure_for(opt, model, x))


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# ---- one forward and one backward pass per step (LocoProp, K-FAC) ----------------------------------

def sum_of_two_forwards(opt, model, x1, x2):
    opt.zero_grad()
    (loss(model, x1) + loss(model, x2)).backward()


def two_forward_backward_pairs(opt, model, x1, x2):
    opt.zero_grad()
    loss(model, x1).backward()
    loss(model, x2).backward()


def backward_of_the_first_of_two_forwards(opt, model, x1, x2):
    opt.zero_grad()
    first = loss(model, x1)
    loss(model, x2)
    first.backward()


def gradients_discarded_before_step(opt, model, x1, x2):
    opt.zero_grad()
    loss(model, x1).backward()
    opt.zero_grad()


@pytest.mark.parametrize("name", LAYERWISE)
@pytest.mark.parametrize("misuse, message", [
    (sum_of_two_forwards, "exactly one forward and one backward pass per step"),
    (two_forward_backward_pairs, "exactly one forward and one backward pass per step"),
    (backward_of_the_first_of_two_forwards, "earlier forward pass"),
    (gradients_discarded_before_step, "no gradient was recorded"),
])
def test_step_needs_one_forward_and_one_backward_pass(name, misuse, message):
    """The layer records must belong to the one pass whose gradient is in ``.grad``; otherwise a step
    would pair one batch's inputs with another batch's gradients.  It raises and changes nothing."""
    model, opt = build(name)
    x1, x2, _ = data()
    before = params(model)
    misuse(opt, model, x1, x2)
    with pytest.raises(RuntimeError, match=message) as err:
        opt.step(closure_for(opt, model, x1))
    assert "\n" not in str(err.value)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


def plain_step(opt, model, x1, x2):
    opt.zero_grad()
    loss(model, x2).backward()


def forward_zero_grad_backward(opt, model, x1, x2):
    out = loss(model, x2)
    opt.zero_grad()
    out.backward()


def discarded_pass_then_pass(opt, model, x1, x2):
    loss(model, x1).backward()
    opt.zero_grad()
    loss(model, x2).backward()


def logged_forward_then_pass(opt, model, x1, x2):
    opt.zero_grad()
    loss(model, x1)  # e.g. a loss computed for logging, never backpropagated
    loss(model, x2).backward()


def refused_then_retried(opt, model, x1, x2):
    sum_of_two_forwards(opt, model, x1, x2)
    with pytest.raises(RuntimeError):
        opt.step(closure_for(opt, model, x2))
    plain_step(opt, model, x1, x2)


@pytest.mark.parametrize("name", LAYERWISE)
@pytest.mark.parametrize("order", [forward_zero_grad_backward, discarded_pass_then_pass, logged_forward_then_pass,
                                   refused_then_retried])
def test_valid_orders_take_the_step_of_the_backpropagated_pass(name, order):
    """Each of these leaves exactly the pass on x2 in ``.grad``: the step equals the plain one on x2."""
    x1, x2, _ = data()
    results = []
    for prepare in (plain_step, order):
        model, opt = build(name)
        prepare(opt, model, x1, x2)
        opt.step(closure_for(opt, model, x2))
        results.append(params(model))
    assert all(torch.equal(p, q) for p, q in zip(*results))


# ---- hyper-parameters ------------------------------------------------------------------------------

BAD_HPARAMS = [
    # numbers given as JSON strings
    ("kfac", "lr", "0.1"), ("kfac", "damping", "1"), ("shampoo", "lr", "0.1"), ("shampoo", "epsilon", "1e-6"),
    ("locoprop-m", "lr", "1e-5"), ("locoprop-m", "gamma", "10"), ("locoprop-m", "lr_floor", "0.5"),
    ("rmsprop", "lr", "0.1"),
    # booleans are not numbers
    ("kfac", "lr", True), ("shampoo", "lr", True), ("locoprop-m", "lr", True), ("locoprop-m", "gamma", True),
    ("rmsprop", "eps", True),
    # NaN and infinity
    ("locoprop-m", "lr", math.nan), ("locoprop-m", "lr", math.inf), ("locoprop-m", "gamma", math.inf),
    ("locoprop-s", "gamma", math.nan), ("locoprop-m", "eta", math.inf),
    ("kfac", "lr", math.inf), ("kfac", "damping", math.inf), ("kfac", "weight_decay", math.inf),
    ("kfac", "kl_clip", math.inf), ("kfac", "max_damping", math.nan),
    ("shampoo", "lr", math.inf), ("shampoo", "epsilon", math.inf), ("shampoo", "weight_decay", math.inf),
    ("shampoo", "exponent", math.inf), ("shampoo", "grafting_epsilon", math.inf),
    ("rmsprop", "lr", math.inf), ("rmsprop", "eps", math.inf), ("rmsprop", "lr", -math.inf),
    # counts are integers: nothing is truncated
    ("locoprop-m", "local_iters", 2.9), ("locoprop-m", "local_iters", 3.0),
    ("kfac", "inverse_update_freq", 2.9), ("kfac", "factor_update_freq", 2.9),
    ("kfac", "damping_adaptation_interval", 2.9), ("kfac", "seed", 2.5),
    ("shampoo", "precondition_frequency", 2.9), ("shampoo", "start_preconditioning_step", 2.9),
    ("shampoo", "max_preconditioner_dim", 2.9),
]


@pytest.mark.parametrize("name, key, value", BAD_HPARAMS)
def test_invalid_hyper_parameter_is_a_one_line_value_error(name, key, value):
    with pytest.raises(ValueError) as err:
        build(name, **{key: value})
    message = str(err.value)
    assert "\n" not in message
    assert f"{key}={value!r}" in message  # names the parameter and the value
    assert "expected" in message  # and says what is allowed


@pytest.mark.parametrize("name, hparams", [
    ("kfac", dict(lr=np.float32(0.1), damping=1, inverse_update_freq=np.int64(3), seed=np.int64(7))),
    ("shampoo", dict(lr=np.float64(1e-3), precondition_frequency=np.int32(2), exponent=4)),
    ("locoprop-m", dict(lr=np.float32(1e-5), gamma=10, local_iters=np.int64(2), eta=1)),
    ("rmsprop", dict(lr=np.float64(1e-4), eps=0)),
])
def test_numbers_of_any_numeric_type_are_accepted(name, hparams):
    model, opt = build(name, **hparams)
    train(model, opt, data(1))
    assert all(torch.isfinite(p).all() for p in model.parameters())



@pytest.mark.parametrize("rule, good, bad", [
    (validation.POSITIVE, [1e-300, 3, np.float32(0.5)], [0, -1e-300, True, "0.1", math.nan, math.inf]),
    (validation.NON_NEGATIVE, [0, 0.0, np.int64(2)], [-1e-300, False, math.inf]),
    (validation.FRACTION, [0, 0.999], [1, 1.0, -0.1, math.nan]),  # [0, 1): a decay of 1 never forgets
    (validation.COUNT, [1, np.int32(7)], [0, 1.0, 2.9, True]),
    (validation.FLAG, [True, False], [0, 1, "True"]),
    (validation.one_of("mc", "empirical"), ["mc", "empirical"], ["MC", None, ["mc"]]),
])
def test_shared_rules_accept_exactly_the_values_their_words_allow(rule, good, bad):
    for value in good:
        validation.check_hparam("Test", "x", value, rule.test, rule.allowed)
    for value in bad:
        with pytest.raises(ValueError, match=re.escape(f"expected {rule.allowed}")):
            validation.check_hparam("Test", "x", value, rule.test, rule.allowed)


def test_check_hparams_names_the_first_invalid_parameter_in_the_rules_order():
    rules = {"momentum": validation.FRACTION, "nesterov": validation.nesterov_needs(0.0),
             "fisher": validation.one_of("mc", "empirical")}
    assert validation.one_of("mc", "empirical").allowed == "'mc' or 'empirical'"
    assert validation.POSITIVE.about("the step").allowed == "a finite number > 0 (the step)"
    validation.check_hparams("Test", {"momentum": 0.0, "nesterov": False, "fisher": "mc"}, rules)
    with pytest.raises(ValueError, match=r"^Test: invalid nesterov=True \(bool\); expected .*needs momentum > 0$"):
        validation.check_hparams("Test", {"momentum": 0.0, "nesterov": True, "fisher": "x"}, rules)

# ---- state_dict: whose state is it? ---------------------------------------------------------------

def trained_state(name, sizes=SIZES, **hparams):
    model, opt = build(name, sizes, **hparams)
    train(model, opt, data(2))
    return copy.deepcopy(opt.state_dict())


def without_signature(state):
    """The state_dict as this package wrote it before signatures existed (everything else is unchanged)."""
    state = {k: v for k, v in state.items() if k != "signature"}
    if isinstance(state.get("inner"), dict):
        state["inner"] = without_signature(state["inner"])
    return state


@pytest.mark.parametrize("source, target, message", [
    ("locoprop-m", "kfac", "belongs to LocoProp-M"),
    ("adam", "shampoo", "not Shampoo's .*Adam"),
    ("kfac", "shampoo", "belongs to KFAC"),
    ("locoprop-m", "locoprop-s", "belongs to LocoProp-M .*not to LocoProp-S"),
    ("shampoo", "kfac", "belongs to Shampoo"),
    ("kfac", "locoprop-m", "belongs to KFAC"),
    ("adam", "rmsprop", "not TF-RMSProp's .*Adam"),
    ("shampoo", "rmsprop", "belongs to Shampoo"),
    ("rmsprop", "shampoo", "belongs to TFRMSProp"),
])
def test_loading_another_optimizers_state_is_refused(source, target, message):
    state = trained_state(source)
    model, opt = build(target)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=message) as err:
        opt.load_state_dict(state)
    assert "\n" not in str(err.value)
    assert str(opt.state_dict()) == str(before)  # nothing was loaded


def test_loading_the_state_of_another_inner_optimizer_is_refused():
    state = trained_state("locoprop-m", inner="adam")
    model, opt = build("locoprop-m")
    with pytest.raises(ValueError, match="inner=Adam.*inner=TFRMSProp"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("name", PACKAGE)
def test_loading_the_state_of_a_model_of_other_widths_is_refused(name):
    state = trained_state(name, sizes=(8, 5, 3, 5, 8))
    model, opt = build(name)
    with pytest.raises(ValueError, match=r"other widths \(parameter 0 has shape \[5, 8\] there and \[6, 8\] here\)"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("source, target, message", [
    ("adam", "shampoo", "Adam"), ("kfac", "shampoo", "KFAC"), ("adam", "rmsprop", "Adam"),
    ("locoprop-m", "kfac", "no 'kfac' entry"), ("kfac", "locoprop-m", "no inner-optimizer state"),
])
def test_state_without_signature_is_checked_by_its_structure(source, target, message):
    model, opt = build(target)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(without_signature(trained_state(source)))


def resumed_parameters(name, state_of, **hparams):
    """Train 2 steps, save (through ``state_of``), train 1 more; a fresh optimizer on a fresh model
    loaded with the saved state and trained on the same last batch must end bit-identically."""
    batches = data(3)
    model, opt = build(name, **hparams)
    train(model, opt, batches[:2])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), state_of(copy.deepcopy(opt.state_dict()))
    train(model, opt, batches[2:])
    resumed, resumed_opt = build(name, **hparams)
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    train(resumed, resumed_opt, batches[2:])
    return params(model), params(resumed)


def through_weights_only_file(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name, hparams", [(name, {}) for name in PACKAGE] + [
    ("kfac", dict(adaptive_damping=True, damping_adaptation_interval=1)),
    ("shampoo", dict(start_preconditioning_step=1, precondition_frequency=1)),
    ("locoprop-m", dict(inner="adam", eta=1.0)),
])
@pytest.mark.parametrize("state_of", [through_weights_only_file, without_signature],
                         ids=["weights_only_file", "saved_without_signature"])
def test_checkpoints_resume_bit_identically(name, hparams, state_of):
    """A signed state_dict survives ``torch.load(weights_only=True)``, and one written before
    signatures existed still loads; both continue exactly as the uninterrupted run."""
    uninterrupted, resumed = resumed_parameters(name, state_of, **hparams)
    assert all(torch.equal(p, q) for p, q in zip(uninterrupted, resumed))


@pytest.mark.parametrize("name, owner", [
    ("locoprop-m", "LocoProp-M"), ("locoprop-s", "LocoProp-S"), ("kfac", "KFAC"), ("shampoo", "Shampoo"),
    ("rmsprop", "TFRMSProp"), ("adam", None), ("sgd", None),
])
def test_state_dict_owner_names_the_optimizer(name, owner):
    """What to check before loading a checkpoint into a torch.optim optimizer, which checks nothing."""
    from locoprop.optim.validation import state_dict_owner

    assert state_dict_owner(trained_state(name)) == owner
