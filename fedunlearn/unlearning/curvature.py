"""Client side of TIS: the diagonal curvature of the mean cross-entropy over some samples.

A TIS client reports ``diag(H)`` of the mean loss over its forget samples and over its
retained samples (paper Eq. 29). "H" is, depending on ``estimator``:

- ``diag_hessian``: the exact Hessian diagonal (BackPACK ``DiagHessian``; BackPACK models).
- ``diag_ggn_exact``: the exact generalized Gauss-Newton (GGN) diagonal (BackPACK
  ``DiagGGNExact``; BackPACK models).
- ``diag_ggn_mc``: a Monte-Carlo GGN diagonal from ``mc_samples`` labels drawn from the
  model's softmax per sample (BackPACK ``DiagGGNMC``; BackPACK models).
- ``exact_func``: the exact GGN diagonal via ``torch.func`` (vmap over samples; any model).
- ``mc_fisher``: a Monte-Carlo Fisher/GGN diagonal via ``torch.func``: per sample,
  ``mc_samples`` labels drawn from the model's own softmax, the per-sample gradient of
  the loss at each drawn label (``vmap(grad)``), squared and averaged. For the
  cross-entropy ``E_y[g g^T] = J^T (diag p - p p^T) J``, the GGN, so the estimate is
  unbiased for the GGN diagonal and non-negative by construction, for any model
  (LayerNorm, ResNet, ViT); its cost is about one per-sample backward per label.
- ``hutchinson``: Hutchinson's estimate of the Hessian diagonal, ``E[z * (H z)]`` with
  Rademacher probes ``z`` and Hessian-vector products (double backward; any model).
- ``auto``: ``diag_ggn_exact`` where BackPACK supports the model (the exact GGN diagonal
  at ~9x a forward+backward); else ``mc_fisher`` with at least
  :data:`AUTO_MC_SAMPLES` labels, which met correlation >= 0.95 with the exact diagonal
  on the LayerNorm CNN (``bench/CURVATURE_COST.md``), where the exact ``exact_func`` costs
  ~50x. The choice is logged with its reason.

The GGN of the cross-entropy is ``J^T H_out J`` (``J`` the Jacobian of the logits w.r.t.
the parameters, ``H_out = diag(p) - p p^T`` the Hessian of the loss w.r.t. the logits),
i.e. the Hessian without the term that carries the network's own second derivatives. For
networks that are piecewise linear in each single parameter (ReLU, max-pool, conv, linear,
no normalization) that term has a zero diagonal, so there the GGN diagonal equals the
Hessian diagonal; with LayerNorm, BatchNorm in training mode, attention, GELU ... it does
not. The GGN is positive semi-definite, so its diagonal estimators never produce negative
entries; the Hessian's diagonal, and Hutchinson's estimate of it, can.

BackPACK supports a model when every operation on the path from input to loss is a module
it has an extension for: no LayerNorm/GroupNorm (no extension), BatchNorm only in eval mode
(DiagHessian has none for it at all), functional operations such as ResNet's residual add
only after BackPACK's converter has turned them into modules (DiagHessian has no extension
for the resulting ``SumModule``). See :func:`supported_estimators`.

Every estimator runs on a deep copy of the model in ``eval()`` mode, so the caller's model
(weights, gradients, mode, device) is untouched. Eval mode is a requirement, not a detail:
BackPACK refuses BatchNorm in training mode, per-sample Jacobians (``exact_func``) need
each sample's output to depend on that sample only, which training-mode BatchNorm breaks,
and dropout would make the curvature random. The curvature is thus that of the model as
it is evaluated.

Why one module of ~440 lines: every curvature estimator behind one interface, each
checked against the same exact references; their docstrings carry the definitions.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from backpack import backpack, extend
from backpack.custom_module.graph_utils import convert_module_to_backpack
from backpack.extensions import DiagGGNExact, DiagGGNMC, DiagHessian
from backpack.extensions.backprop_extension import BackpropExtension
from backpack.utils.module_classification import is_no_op
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

# Shared with local training so that data checks and seeding behave the same everywhere.
from fedunlearn.training import Device, _check_data, _private_rng

LOG = logging.getLogger("fedunlearn")

ESTIMATORS: tuple[str, ...] = (
    "auto",
    "diag_ggn_exact",
    "diag_ggn_mc",
    "diag_hessian",
    "exact_func",
    "hutchinson",
    "mc_fisher",
)
"""Accepted values of ``estimator`` (config values)."""

NONNEGATIVE: frozenset[str] = frozenset({"auto", "diag_ggn_exact", "diag_ggn_mc", "exact_func",
                                         "mc_fisher"})
"""Estimators that cannot produce negative entries (GGN diagonals are sums of squares).

``auto`` is included because both of its choices are GGN diagonals. A server refuses
replies with negative entries from these estimators.
"""

# BackPACK extension of each BackPACK estimator; the argument is ``mc_samples``.
_BACKPACK: dict[str, Callable[[int], BackpropExtension]] = {
    "diag_ggn_exact": lambda mc_samples: DiagGGNExact(),
    "diag_ggn_mc": lambda mc_samples: DiagGGNMC(mc_samples=mc_samples),
    "diag_hessian": lambda mc_samples: DiagHessian(),
}
# Estimators built on plain autograd / torch.func, which work for any differentiable model.
_UNIVERSAL = ("exact_func", "hutchinson", "mc_fisher")
# Labels per sample ``auto`` gives ``mc_fisher`` (at least): the fewest that reached
# correlation >= 0.95 with the exact GGN diagonal on the LayerNorm CNN.
AUTO_MC_SAMPLES = 4
# Floats of per-sample gradients one mc_fisher vmap call may hold (~128 MB in float32).
_MC_FISHER_FLOATS = 2**25


@dataclass
class _BackpackView:
    """A model prepared for BackPACK: an eval-mode deep copy, converted if needed.

    ``module`` is None when the model cannot be converted; ``reason`` then says why.
    """

    module: nn.Module | None
    reason: str = ""


def _needs_converter(model: nn.Module) -> bool:
    """Whether BackPACK can only see the model's operations after conversion.

    BackPACK passes its quantities from module to module; that is only the true data path
    when every container is an ``nn.Sequential`` (a custom ``forward`` may add tensors or
    call functions in between) and no module works in place (BackPACK stores each
    module's input and output, which an in-place op overwrites).
    """
    for module in model.modules():
        if getattr(module, "inplace", False):
            return True
        if next(module.children(), None) is not None and not isinstance(module, nn.Sequential):
            return True
    return False


def _backpack_view(model: nn.Module) -> _BackpackView:
    """Deep-copy ``model`` into eval mode and, where needed, through BackPACK's converter."""
    module = copy.deepcopy(model).eval()
    if not _needs_converter(module):
        return _BackpackView(module)
    try:
        # The converter only warns about graph nodes that are not module calls (functional
        # ops, parameters read directly); those break second-order extensions, so they
        # are refused below instead of letting the warning pass.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = convert_module_to_backpack(module, False)
    except Exception as error:  # fx tracing fails in many ways, none of them ours to raise
        reason = f"BackPACK's converter cannot trace it ({type(error).__name__}: {error})"
        return _BackpackView(None, reason=reason.splitlines()[0])
    others = sorted(
        f"{node.op} {node.target}"
        for node in converted.graph.nodes
        if node.op not in ("call_module", "placeholder", "output")
    )
    if others:
        return _BackpackView(None, reason=f"its graph has non-module operations ({others[0]})")
    return _BackpackView(converted)


def _missing_extensions(module: nn.Module, extension: BackpropExtension) -> list[str]:
    """Class names of the operations in ``module`` that ``extension`` has no handler for."""
    # BackPACK keeps its module-to-handler map private; with fail_mode "ERROR" it would
    # only tell us mid-backward. Reading it lets us refuse a model before any compute.
    handled = extension._BackpropExtension__module_extensions  # type: ignore[attr-defined]
    return sorted(
        {
            type(leaf).__name__
            for leaf in module.modules()
            if next(leaf.children(), None) is None
            and not is_no_op(leaf)
            and type(leaf) not in handled
        }
    )


def _support(model: nn.Module) -> tuple[_BackpackView, dict[str, str]]:
    """The BackPACK view of ``model`` and, per concrete estimator, why it cannot run ("" = ok)."""
    view = _backpack_view(model)
    reasons = dict.fromkeys(_UNIVERSAL, "")
    for name, make in _BACKPACK.items():
        if view.module is None:
            reasons[name] = view.reason
            continue
        missing = _missing_extensions(view.module, make(1))
        reasons[name] = (
            f"BackPACK has no {name} extension for {', '.join(missing)}" if missing else ""
        )
    return view, reasons


def supported_estimators(model: nn.Module) -> tuple[str, ...]:
    """The estimators that work for ``model``, in :data:`ESTIMATORS` order.

    ``auto``, ``exact_func`` and ``hutchinson`` work for every model; the BackPACK ones
    where every operation of the model (in eval mode, after BackPACK's converter where
    the model is not a plain ``nn.Sequential`` chain) has an extension.

    Parameters
    ----------
    model
        The model; not modified (the check runs on a deep copy).

    Returns
    -------
    tuple of str
    """
    _, reasons = _support(model)
    return tuple(name for name in ESTIMATORS if not reasons.get(name))


def supports_backpack(model: nn.Module) -> bool:
    """Whether BackPACK's ``diag_ggn_exact`` (hence ``auto``'s first choice) runs on ``model``.

    False for any LayerNorm or GroupNorm (no extension), for models BackPACK's converter
    cannot trace, and for graphs with operations other than module calls. BatchNorm is
    fine (the curvature is computed in eval mode), and so are in-place ReLUs and residual
    adds: the converter (used automatically) turns them into out-of-place modules.

    Parameters
    ----------
    model
        The model; not modified.

    Returns
    -------
    bool
    """
    return "diag_ggn_exact" in supported_estimators(model)


def _resolve(estimator: str, model: nn.Module) -> tuple[str, nn.Module | None]:
    """The concrete estimator, and for BackPACK ones the prepared (unextended) copy."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if estimator in _UNIVERSAL:
        return estimator, None  # no need to copy and convert the model to check
    view, reasons = _support(model)
    if estimator == "auto":
        if not reasons["diag_ggn_exact"]:
            estimator = "diag_ggn_exact"
            LOG.info("curvature: auto -> diag_ggn_exact (BackPACK supports %s: the exact "
                     "GGN diagonal at ~9x a backward)", type(model).__name__)
        else:
            estimator = "mc_fisher"
            LOG.info("curvature: auto -> mc_fisher (BackPACK cannot: %s; the exact "
                     "exact_func costs ~50x a backward, mc_fisher with >= %d labels "
                     "correlates >= 0.95 with it)", reasons["diag_ggn_exact"],
                     AUTO_MC_SAMPLES)
    if reasons[estimator]:
        works = ", ".join(name for name in ESTIMATORS if not reasons.get(name))
        raise ValueError(
            f"estimator {estimator!r} does not work for {type(model).__name__}: "
            f"{reasons[estimator]}; estimators that work for it: {works}"
        )
    return estimator, view.module if estimator in _BACKPACK else None


def resolve_estimator(model: nn.Module, estimator: str) -> str:
    """The concrete estimator that ``estimator`` means for ``model``.

    Parameters
    ----------
    model
        The model; not modified.
    estimator
        One of :data:`ESTIMATORS`.

    Returns
    -------
    str
        ``estimator`` itself, or for ``auto``: ``diag_ggn_exact`` where
        :func:`supports_backpack`, else ``exact_func``.

    Raises
    ------
    ValueError
        Unknown estimator, or one that does not work for this model (the message lists
        those that do).
    """
    return _resolve(estimator, model)[0]


def _batches(
    images: Tensor, labels: Tensor, batch_size: int, device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(images), batch_size):
        yield (
            images[start : start + batch_size].to(device, dtype),
            labels[start : start + batch_size].to(device).long(),
        )


def _backpack_batch(
    module: nn.Module, loss_fn: nn.Module, extension: BackpropExtension, x: Tensor, y: Tensor
) -> list[Tensor]:
    """BackPACK's diagonal for the mean loss over one batch, in ``named_parameters`` order."""
    module.zero_grad(set_to_none=True)
    loss = loss_fn(module(x), y)
    with backpack(extension), warnings.catch_warnings():
        # The input needs no gradient, so torch warns that the first module's full
        # backward hook sees only output gradients: all BackPACK needs there.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    return [getattr(param, extension.savefield) for param in module.parameters()]


def _ggn_batch(module: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """Exact GGN diagonal of the mean loss over one batch via ``torch.func``.

    Per sample n, with ``p`` the softmax of its logits, ``H_out = S S^T`` where
    ``S = diag(sqrt p) - p sqrt(p)^T`` (since ``sum p = 1``). Then
    ``diag(J^T H_out J) = sum_k (J^T S[:, k])**2``: one vector-Jacobian product per
    logit, all vectorised, and a sum of squares, hence never negative.
    """
    del y  # the GGN of the cross-entropy does not depend on the labels
    params = {name: param.detach() for name, param in module.named_parameters()}

    def sample_diag(sample: Tensor) -> dict[str, Tensor]:
        def logits_of(p: dict[str, Tensor]) -> Tensor:
            return functional_call(module, p, (sample.unsqueeze(0),)).squeeze(0)

        logits, pullback = vjp(logits_of, params)
        prob = torch.softmax(logits, dim=0)
        root = prob.sqrt()
        sqrt_h = torch.diag(root) - torch.outer(prob, root)
        # Rows of sqrt_h.T are the columns S[:, k]: the cotangents of the K products.
        (rows,) = vmap(pullback)(sqrt_h.T)
        return {name: row.square().sum(0) for name, row in rows.items()}

    per_sample = vmap(sample_diag)(x)
    return [per_sample[name].mean(0) for name in params]


def _mc_fisher_batch(
    module: nn.Module, x: Tensor, y: Tensor, *, samples: int, generator: torch.Generator
) -> list[Tensor]:
    """Monte-Carlo Fisher diagonal of the mean loss over one batch via ``torch.func``.

    For each of ``samples`` draws: a label per sample from the model's softmax (on the
    CPU generator, so that the result does not depend on the device), the per-sample
    gradients of the loss at those labels in one ``vmap(grad)``, squared; the squares
    are averaged over samples and draws.
    """
    del y  # the Fisher of the model's own predictive distribution ignores the labels
    params = {name: param.detach() for name, param in module.named_parameters()}

    def loss_of(p: dict[str, Tensor], sample: Tensor, label: Tensor) -> Tensor:
        logits = functional_call(module, p, (sample.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    per_sample_grad = vmap(grad(loss_of), in_dims=(None, 0, 0))
    with torch.no_grad():
        probs = torch.softmax(module(x).double(), dim=1).cpu()
    # All draws of a sample at once, as long as the per-sample gradients stay within
    # about 128 MB: one vmap over (draws x samples) instead of a Python loop of draws.
    size = sum(param.numel() for param in params.values())
    per_call = max(1, min(samples, _MC_FISHER_FLOATS // max(1, len(x) * size)))
    drawn = torch.multinomial(probs, samples, replacement=True, generator=generator)
    totals = {name: torch.zeros_like(param) for name, param in params.items()}
    for start in range(0, samples, per_call):
        labels = drawn[:, start:start + per_call].T.reshape(-1).to(x.device)  # draw-major
        repeats = labels.numel() // len(x)
        grads = per_sample_grad(params, x.repeat(repeats, *([1] * (x.dim() - 1))), labels)
        for name, g in grads.items():
            totals[name].add_(g.square().sum(0), alpha=1 / (samples * len(x)))
    return [totals[name] for name in params]


def _hutchinson_batch(
    module: nn.Module, x: Tensor, y: Tensor, *, probes: int, generator: torch.Generator
) -> list[Tensor]:
    """Hutchinson estimate of the Hessian diagonal of the mean loss over one batch."""
    params = list(module.parameters())
    loss = F.cross_entropy(module(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
    estimate = [torch.zeros_like(param) for param in params]
    for probe in range(probes):
        # Drawn on the CPU generator so the probes, hence the result, do not depend on
        # the device.
        zs = [
            (torch.randint(0, 2, param.shape, generator=generator) * 2 - 1).to(param)
            for param in params
        ]
        hz = torch.autograd.grad(
            grads, params, zs, retain_graph=probe < probes - 1, materialize_grads=True
        )
        for total, z, h in zip(estimate, zs, hz, strict=True):
            total.add_(z * h, alpha=1 / probes)
    return estimate


def diagonal_curvature(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    estimator: str,
    batch_size: int,
    device: Device,
    seed: int,
    mc_samples: int = 1,
    hutchinson_samples: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Tensor]:
    """Diagonal curvature of the mean cross-entropy over ``(images, labels)``.

    Computed at the model's current weights, batch by batch; each batch's diagonal (of
    its own mean loss) is weighted by its size, so the result is the diagonal for the
    mean loss over all samples whatever ``batch_size`` is (up to rounding, and to the
    random draws of the Monte-Carlo estimators, which follow the batches).

    Parameters
    ----------
    model
        The model; not modified (a deep copy in eval mode does the work, see the module
        docstring for why eval mode).
    images, labels
        ``(N, C, H, W)`` floating-point images and ``(N,)`` integer labels, N >= 1.
    estimator
        One of :data:`ESTIMATORS` (see the module docstring for what each computes).
    batch_size
        Samples per pass. Only speed and memory depend on it: ``exact_func`` holds
        ``batch_size * num_classes`` parameter-sized tensors at once, so lower it for big
        models.
    device
        Where to compute.
    seed
        Seed of the random draws of ``diag_ggn_mc`` (sampled labels) and ``hutchinson``
        (probes); the same seed gives the same result. Unused by the exact estimators.
    mc_samples
        Sampled labels per sample for ``diag_ggn_mc`` and ``mc_fisher`` (``auto``
        raises it to at least :data:`AUTO_MC_SAMPLES` when it picks ``mc_fisher``).
    hutchinson_samples
        Rademacher probes per batch for ``hutchinson`` (fresh probes in every batch).
    progress
        Called as ``progress(batches_done, total_batches)`` after each batch.

    Returns
    -------
    dict of str to torch.Tensor
        One float32 CPU tensor per name of ``model.named_parameters()``, of that
        parameter's shape (every parameter, whether it requires gradients or not).

    Raises
    ------
    ValueError
        Unknown estimator or one that does not work for this model (one line, listing
        those that do), bad sample counts, or empty data.
    """
    _check_data(images, labels, batch_size)
    if mc_samples < 1 or hutchinson_samples < 1:
        raise ValueError(
            f"mc_samples and hutchinson_samples must be positive, got {mc_samples} and "
            f"{hutchinson_samples}"
        )
    asked = estimator
    estimator, backpack_module = _resolve(estimator, model)
    if asked == "auto" and estimator == "mc_fisher":
        mc_samples = max(mc_samples, AUTO_MC_SAMPLES)
    device = torch.device(device)
    names = [name for name, _ in model.named_parameters()]
    step: Callable[[Tensor, Tensor], list[Tensor]]
    if backpack_module is not None:
        module = extend(backpack_module).to(device)
        step = functools.partial(
            _backpack_batch,
            module,
            extend(nn.CrossEntropyLoss(reduction="mean")),
            _BACKPACK[estimator](mc_samples),
        )
    else:
        module = copy.deepcopy(model).eval().to(device)
        if estimator == "exact_func":
            step = functools.partial(_ggn_batch, module)
        elif estimator == "mc_fisher":
            step = functools.partial(
                _mc_fisher_batch, module, samples=mc_samples,
                generator=torch.Generator().manual_seed(seed))
        else:
            generator = torch.Generator().manual_seed(seed)
            step = functools.partial(
                _hutchinson_batch, module, probes=hutchinson_samples, generator=generator
            )
    module.requires_grad_(True)  # frozen parameters get a curvature too
    module_names = [name for name, _ in module.named_parameters()]
    # The converter may reorder parameters (results are matched by name below), but it
    # must keep their names.
    if sorted(module_names) != sorted(names):
        raise RuntimeError(
            f"BackPACK's converter renamed parameters of {type(model).__name__}; "
            "use estimator 'exact_func'"
        )
    dtype = next(module.parameters()).dtype
    totals = [torch.zeros_like(p, dtype=torch.float64) for p in module.parameters()]
    num_batches = math.ceil(len(images) / batch_size)
    # The math SDPA kernel: the fused CPU attention kernel has neither a double backward
    # (hutchinson) nor a vmap rule (exact_func); BackPACK never gets attention models.
    with _private_rng(device, seed), sdpa_kernel(SDPBackend.MATH):
        for done, (x, y) in enumerate(_batches(images, labels, batch_size, device, dtype), 1):
            for total, part in zip(totals, step(x, y), strict=True):
                total.add_(part.detach(), alpha=len(x))
            if progress is not None:
                progress(done, num_batches)
    by_name = {
        name: (total / len(images)).to("cpu", torch.float32)
        for name, total in zip(module_names, totals, strict=True)
    }
    return {name: by_name[name] for name in names}
