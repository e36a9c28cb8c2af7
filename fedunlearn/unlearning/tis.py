"""Server side of TIS: aggregate the clients' curvature, score, select, reset, recover.

The server collects from every client ``c`` the curvature diagonals of the mean loss over
its forget samples ``h_f,c`` and its retained samples ``h_r,c``, with their counts, and
forms (paper Eq. 30)::

    h  = (1 / N)   sum_c (N_f,c h_f,c + N_r,c h_r,c)     N   = all samples
    h' = (1 / N_T) sum_c  N_f,c h_f,c                     N_T = all forget samples

then ``TIS_i = (h'_i / h_i)^2`` (Eq. 28; the paper's ``h'`` carries a factor ``N_T / N``
that is the same for every parameter, so it changes no per-layer selection). Per
parameter tensor ("layer"), the smallest set of entries, highest TIS first, holding a
fraction ``gamma`` of the tensor's total TIS is reset to its initial (pre-training) value.

Eq. 28 assumes curvature in the Fisher sense, non-negative. A signed estimate (a Hessian
diagonal, Hutchinson's) never reaches it unguarded: entries with a negative or near-zero
``h`` or a negative ``h'`` score 0 (:func:`tis_scores`), and a statistic that is 0
everywhere, or scores that are NaN or infinite, are refused rather than resetting nothing
or something arbitrary.

Recovery (TRIM, paper Appendix 2) then fine-tunes only the reset entries on retained data:
:func:`trim_mask` gives the mask for ``fedunlearn.training.train(trainable_mask=...)``.

Why one module of ~500 lines: the TIS algorithm end to end (Eq. 28-30, selection,
reset, TRIM's mask) with the paper's equations in the docstrings.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

Shapes = Mapping[str, Sequence[int]]

#: The near-zero floor of a signed statistic, relative to a tensor's mean ``|h|``: there,
#: entries with ``h_i <= SIGNED_FLOOR * mean_l |h|`` score 0 (see :func:`tis_scores`).
SIGNED_FLOOR = 1e-3


def _require_usable(h: Mapping[str, Tensor], h_prime: Mapping[str, Tensor]) -> None:
    """Refuse ``(h, h')`` that is 0 for every parameter: TIS would then reset nothing.

    Raises
    ------
    ValueError
        ``h`` or ``h'`` holds no nonzero entry (one line).
    """
    for label, stat in (("h", h), ("h'", h_prime)):
        if not any(bool(tensor.any()) for tensor in stat.values()):
            why = "no curvature at all" if label == "h" else "no curvature on the forget samples"
            raise ValueError(
                f"{label} is 0 for every parameter ({why}): an unusable curvature statistic, "
                "with which TIS would reset nothing"
            )


class CurvatureReplyError(ValueError):
    """A client's curvature reply was refused (the message says why, in one line)."""


class CurvatureAccumulator:
    """Streaming aggregation of the clients' curvature replies (paper Eq. 30).

    Keeps two running sums (``sum_c N_f,c h_f,c`` and ``sum_c N_r,c h_r,c``, in float64)
    and the counts, so memory is O(parameters) whatever the number of clients, and the
    result does not depend on the order of the replies beyond rounding.

    Parameters
    ----------
    shapes
        The expected signature: ``{parameter name: shape}``; every reply must carry
        exactly these names with these shapes. See :meth:`for_model`.
    nonnegative
        Refuse replies with negative entries: set it when the clients use an estimator of
        :data:`fedunlearn.unlearning.curvature.NONNEGATIVE`, for which a negative entry
        means a broken or dishonest client.
    """

    def __init__(self, shapes: Shapes, *, nonnegative: bool = False) -> None:
        self._shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        if not self._shapes:
            raise ValueError("CurvatureAccumulator needs at least one parameter shape")
        self._nonnegative = nonnegative
        self._forget = {n: torch.zeros(s, dtype=torch.float64) for n, s in self._shapes.items()}
        self._retain = {n: torch.zeros(s, dtype=torch.float64) for n, s in self._shapes.items()}
        self._n_forget = 0
        self._n_retain = 0
        self._replies = 0

    @classmethod
    def for_model(cls, model: nn.Module, *, nonnegative: bool = False) -> CurvatureAccumulator:
        """An accumulator expecting one entry per ``model.named_parameters()``.

        Parameters
        ----------
        model
            The global model whose curvature the clients report.
        nonnegative
            As in the constructor.

        Returns
        -------
        CurvatureAccumulator
        """
        shapes = {name: tuple(param.shape) for name, param in model.named_parameters()}
        return cls(shapes, nonnegative=nonnegative)

    @property
    def num_replies(self) -> int:
        """Replies accepted so far."""
        return self._replies

    @property
    def num_forget(self) -> int:
        """``N_T``: forget samples over all accepted replies."""
        return self._n_forget

    @property
    def num_samples(self) -> int:
        """``N``: forget and retained samples over all accepted replies."""
        return self._n_forget + self._n_retain

    def _check(self, what: str, diag: Mapping[str, Tensor] | None, count: int) -> None:
        """Raise CurvatureReplyError unless ``diag`` fits the signature (None iff unused)."""
        # numbers.Integral admits numpy integers; bool is an int but never a count.
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise CurvatureReplyError(f"{what}: count must be a non-negative int, got {count!r}")
        if diag is None:
            if count > 0:
                raise CurvatureReplyError(f"{what}: {count} samples but no curvature")
            return
        if set(diag) != set(self._shapes):
            missing = sorted(set(self._shapes) - set(diag))
            extra = sorted(set(diag) - set(self._shapes))
            raise CurvatureReplyError(
                f"{what}: parameter names differ (missing {missing[:3]}, unexpected {extra[:3]})"
            )
        for name, expected in self._shapes.items():
            tensor = diag[name]
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                raise CurvatureReplyError(f"{what}: {name} is not a floating-point tensor")
            if tuple(tensor.shape) != expected:
                raise CurvatureReplyError(
                    f"{what}: {name} has shape {tuple(tensor.shape)}, expected {expected}"
                )
            if not torch.isfinite(tensor).all():
                raise CurvatureReplyError(f"{what}: {name} has NaN or infinite entries")
            if self._nonnegative and (tensor < 0).any():
                raise CurvatureReplyError(
                    f"{what}: {name} has negative entries (min {tensor.min().item():.3g}) "
                    "from an estimator that cannot produce them"
                )

    def add(
        self,
        h_forget: Mapping[str, Tensor] | None,
        n_forget: int,
        h_retain: Mapping[str, Tensor] | None,
        n_retain: int,
    ) -> None:
        """Fold one client's reply in, or refuse it and change nothing.

        Parameters
        ----------
        h_forget
            Curvature diagonal of the mean loss over the client's forget samples; may be
            None when ``n_forget`` is 0 (such a client contributes only to ``h``).
        n_forget
            The client's forget samples ``N_f,c``.
        h_retain
            Curvature diagonal of the mean loss over its retained samples; may be None
            when ``n_retain`` is 0.
        n_retain
            The client's retained samples ``N_r,c``.

        Raises
        ------
        CurvatureReplyError
            Wrong names or shapes, non-float, NaN/Inf, negative or non-int counts, a
            positive count without curvature, or negative entries when the accumulator
            was built with ``nonnegative=True``. Everything is checked before anything is
            added, so a refused reply leaves the accumulator unchanged.
        """
        self._check("forget", h_forget, n_forget)
        self._check("retain", h_retain, n_retain)
        for sums, diag, count in (
            (self._forget, h_forget, n_forget),
            (self._retain, h_retain, n_retain),
        ):
            if diag is None or count == 0:
                continue
            for name, total in sums.items():
                total.add_(diag[name].detach().to("cpu", torch.float64), alpha=int(count))
        self._n_forget += int(n_forget)
        self._n_retain += int(n_retain)
        self._replies += 1

    def result(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(h, h')`` of paper Eq. 30, float32 CPU tensors per parameter name.

        Returns
        -------
        tuple of two dicts
            ``h`` (curvature of the mean loss over all samples) and ``h'`` (over all
            forget samples).

        Raises
        ------
        ValueError
            No forget samples were reported (``N_T = 0``): there is nothing to unlearn; or
            ``h`` or ``h'`` is 0 for every parameter, an unusable statistic with which TIS
            would silently reset nothing (the server fails the request then).
        """
        if self._n_forget == 0:
            raise ValueError(
                f"no forget samples among {self._replies} curvature replies (N_T = 0): "
                "nothing to unlearn"
            )
        total = self.num_samples
        h = {
            name: ((self._forget[name] + self._retain[name]) / total).float()
            for name in self._shapes
        }
        h_prime = {name: (self._forget[name] / self._n_forget).float() for name in self._shapes}
        _require_usable(h, h_prime)
        return h, h_prime


def tis_scores(
    h: Mapping[str, Tensor],
    h_prime: Mapping[str, Tensor],
    *,
    signed_floor: float = SIGNED_FLOOR,
) -> dict[str, Tensor]:
    """Target Information Score per parameter entry (paper Eq. 28), guarded.

    ``TIS_i = (h'_i / h_i)^2``, except that an entry scores 0 where

    - ``h_i <= 0``: a parameter the loss is flat in carries no information the paper's
      model can measure, and a negative curvature is no Fisher information;
    - ``h'_i < 0``: squaring would turn it into information;
    - the statistic is signed (any entry of ``h`` or ``h'`` is negative: a Hessian
      diagonal or a Hutchinson estimate) and ``h_i <= signed_floor * mean_l |h|``, the
      mean over the entry's tensor ``l``: a near-zero ``h_i`` of such an estimate is
      noise, and dividing by it would make TIS explode (5.5e16 at ``h_i = -4e-9`` before
      this guard) and win the selection.

    A non-negative statistic needs no floor: there ``h >= (N_T / N) h'`` entry by entry
    (Eq. 30, each client's ``h_f`` is part of ``h``), so TIS is at most ``(N / N_T)^2``,
    and its tiny ``h_i`` are the parameters only the forget samples move, the ones TIS is
    after (a floor of even 1e-8 of the mean changed the exact mask of a digits CNN, Jaccard
    0.91). Its scores are Eq. 28's, unchanged.

    Parameters
    ----------
    h, h_prime
        As returned by :meth:`CurvatureAccumulator.result` (same names and shapes).
    signed_floor
        The near-zero floor of a signed statistic, relative to each tensor's mean ``|h|``.

    Returns
    -------
    dict of str to torch.Tensor
        The guarded ``(h'_i / h_i)^2`` as float32, non-negative and finite.

    Raises
    ------
    ValueError
        Names or shapes differ, ``h`` or ``h'`` holds NaN or Inf (the message names the
        tensor), either is 0 for every parameter (TIS would reset nothing), or a score
        overflows float32 (a signed ``h'`` far above ``h``'s floor).
    """
    if set(h) != set(h_prime):
        raise ValueError("h and h_prime name different parameters")
    for name, curvature in h.items():
        target = h_prime[name]
        if curvature.shape != target.shape:
            raise ValueError(
                f"{name}: h has shape {tuple(curvature.shape)}, h_prime {tuple(target.shape)}"
            )
        for label, stat in (("h", curvature), ("h'", target)):
            if torch.isnan(stat).any():
                raise ValueError(f"{label} of {name!r} holds NaN")
            if torch.isinf(stat).any():
                raise ValueError(f"{label} of {name!r} holds Inf")
    _require_usable(h, h_prime)
    signed = any(bool((h[name] < 0).any() or (h_prime[name] < 0).any()) for name in h)
    scores = {}
    for name, curvature in h.items():
        curvature, target = curvature.double(), h_prime[name].double()
        floor = signed_floor * float(curvature.abs().mean()) if signed else 0.0
        usable = (curvature > floor) & (target >= 0)
        ratio = target / torch.where(usable, curvature, torch.ones_like(curvature))
        score = torch.where(usable, ratio.square(), torch.zeros_like(ratio)).float()
        if not torch.isfinite(score).all():
            raise ValueError(f"{name}: TIS overflows float32 (h' is far above h's floor)")
        scores[name] = score
    return scores


def select(scores: Mapping[str, Tensor], gamma: float) -> dict[str, Tensor]:
    """Per tensor, the smallest set of entries, highest TIS first, holding ``gamma`` of its TIS.

    Entries are ranked by descending TIS with a stable sort, so ties go to the lower flat
    index and the selection is deterministic. The set is the shortest prefix of that
    ranking whose TIS sum reaches ``gamma`` times the tensor's total TIS (the paper's
    "reset them one by one until gamma percent of the layer TIS has been reset").

    Parameters
    ----------
    scores
        TIS per entry, as from :func:`tis_scores` (non-negative).
    gamma
        The fraction of each tensor's TIS to remove, in ``[0, 1]``: ``0.7`` is the paper's
        "gamma = 70 %". 0 selects nothing; 1 selects every entry with positive TIS.

    Returns
    -------
    dict of str to torch.Tensor
        A bool mask per tensor of ``scores`` (True = reset). A tensor whose total TIS is
        0 selects nothing.

    Raises
    ------
    ValueError
        ``gamma`` outside ``[0, 1]`` (e.g. given as a percentage), or scores that are
        negative, NaN or infinite (the message names the tensor): a NaN compares false
        with everything, so it would slip past the sign check and into the ranking.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma is a fraction in [0, 1] (0.7 for 70 %), got {gamma}")
    masks = {}
    for name, score in scores.items():
        flat = score.detach().flatten().to("cpu", torch.float64)
        if not torch.isfinite(flat).all():
            raise ValueError(f"TIS of {name!r} holds NaN or Inf")
        if (flat < 0).any():
            raise ValueError(f"{name}: TIS must be non-negative")
        ranked, order = torch.sort(flat, descending=True, stable=True)
        # Reaching the total is judged on the same running sum it is compared with, in
        # float64, so rounding cannot move the boundary by more than a tie.
        running = torch.cumsum(ranked, 0)
        positive = int((ranked > 0).sum())
        if gamma == 1.0:
            # Reaching all of the TIS takes every positive entry, even ones too small to
            # change a float64 running sum.
            count = positive
        elif positive == 0 or gamma == 0.0:
            count = 0
        else:
            target = torch.tensor(gamma, dtype=torch.float64) * running[-1]
            count = min(int(torch.searchsorted(running, target)) + 1, positive)
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[order[:count]] = True
        masks[name] = mask.view(score.shape)
    return masks


def reset(
    state: Mapping[str, Tensor], initial: Mapping[str, Tensor], mask: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Reset the selected entries to their initial values.

    Parameters
    ----------
    state
        The trained model's state (parameters and buffers).
    initial
        The initial (pre-training) state; needs every tensor ``mask`` names.
    mask
        Bool masks by name (True = reset), e.g. from :func:`select`; each must name a
        floating-point tensor of ``state`` and have its shape.

    Returns
    -------
    dict of str to torch.Tensor
        A new dict of new tensors (clones of ``state``'s, so the input is never aliased):
        selected entries hold ``initial``'s values, every other entry, tensor and buffer
        is bit-identical to ``state``.

    Raises
    ------
    ValueError
        A mask names an unknown or non-float tensor, has the wrong shape or dtype, or
        ``initial`` lacks it.
    """
    for name, selected in mask.items():
        if name not in state or name not in initial:
            raise ValueError(f"mask names {name!r}, which state or initial lacks")
        if not state[name].is_floating_point():
            raise ValueError(f"mask names {name!r}, which is not a floating-point tensor")
        if selected.dtype != torch.bool or selected.shape != state[name].shape:
            raise ValueError(
                f"mask[{name!r}] must be a bool tensor of shape {tuple(state[name].shape)}"
            )
        if initial[name].shape != state[name].shape:
            raise ValueError(f"initial[{name!r}] has another shape than state[{name!r}]")
    result = {}
    for name, tensor in state.items():
        if name in mask:
            # torch.where copies the unselected entries as they are: bit-identical.
            start = initial[name].to(tensor.device, tensor.dtype)
            result[name] = torch.where(mask[name].to(tensor.device), start, tensor)
        else:
            result[name] = tensor.clone()
    return result


def random_mask(mask: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """The Random Reset baseline: per tensor, as many entries as ``mask``, chosen at random.

    Parameters
    ----------
    mask
        Bool masks by name, e.g. from :func:`select`.
    seed
        Seed of the draw; tensors draw in ``mask``'s order from one generator.

    Returns
    -------
    dict of str to torch.Tensor
        Bool masks of the same shapes, each selecting ``mask[name].sum()`` entries
        uniformly at random without replacement.
    """
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, selected in mask.items():
        count = int(selected.sum())
        chosen = torch.zeros(selected.numel(), dtype=torch.bool)
        chosen[torch.randperm(selected.numel(), generator=generator)[:count]] = True
        result[name] = chosen.view(selected.shape)
    return result


def reset_fraction(mask: Mapping[str, Tensor]) -> float:
    """Share of the entries ``mask`` covers that it selects.

    :func:`select` returns a mask for every scored tensor, i.e. every parameter, so for
    its masks this is the share of all model parameters that are reset.

    Parameters
    ----------
    mask
        Bool masks by name.

    Returns
    -------
    float
        In ``[0, 1]``; 0 for an empty mask.
    """
    total = sum(selected.numel() for selected in mask.values())
    chosen = sum(int(selected.sum()) for selected in mask.values())
    return chosen / total if total else 0.0


def trim_mask(mask: Mapping[str, Tensor], shapes: Shapes) -> dict[str, Tensor]:
    """TRIM recovery's trainable mask for ``fedunlearn.training.train(trainable_mask=...)``.

    TRIM (paper Appendix 2, Algorithms 1-2) fine-tunes only the reset entries, starting
    from their reset values, with everything else frozen. ``train`` already does exactly
    that given a mask (frozen entries stay bit-identical: no gradient, weight decay or
    momentum reaches them), so recovery is: :func:`reset`, then FedAvg rounds on retained
    data in which every client trains with this mask. The one thing to add is that
    ``train`` leaves parameters it is not given a mask for fully trainable, whereas TRIM
    freezes them: parameters absent from ``mask`` get an all-False mask here. Buffers
    (BatchNorm running statistics) still update in training mode, as in TRIM's wrapper.

    Parameters
    ----------
    mask
        The reset mask (True = reset, hence trainable), e.g. from :func:`select`.
    shapes
        ``{parameter name: shape}`` of the model to train, covering every parameter.

    Returns
    -------
    dict of str to torch.Tensor
        A bool mask for every name in ``shapes``: ``mask``'s where given, else all False.

    Raises
    ------
    ValueError
        ``mask`` names a parameter not in ``shapes``, or has another shape.
    """
    unknown = sorted(set(mask) - set(shapes))
    if unknown:
        raise ValueError(f"mask names parameters the model lacks: {unknown[:3]}")
    result = {}
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        if name not in mask:
            result[name] = torch.zeros(shape, dtype=torch.bool)
        elif tuple(mask[name].shape) != shape:
            raise ValueError(f"mask[{name!r}] has shape {tuple(mask[name].shape)}, not {shape}")
        else:
            result[name] = mask[name].to(torch.bool).clone()
    return result
