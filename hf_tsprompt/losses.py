"""Regularisers on a soft prompt's point cloud: TSLoss (paper section IV) and the baselines.

A soft prompt is a matrix ``P`` (n x d): n virtual tokens, each a point in R^d. Everything here
is pure torch on that matrix: no Trainer, no I/O, differentiable end to end.

Symbols follow the paper ("Optimizing Soft Prompt Tuning via Structural Evolution", Eq. 1-6):

- ``D_ij = ||x_i - x_j||_2``, the Euclidean distance matrix.
- ``s_i = -tau * log sum_{j != i} exp(-D_ij / tau)`` (Eq. 1), a soft nearest-neighbour distance:
  a differentiable stand-in for the death time of x_i's H0 bar (supplement B).
- ``L_H0 = (1/n) sum_i (s_i - mean(s))^2`` (Eq. 2), the variance of the soft H0 death times.
- ``delta = sum w_low * D``, ``zeta = sum w_high * D`` with ``w_low = softmax(-alpha D)`` and
  ``w_high = softmax(alpha D)`` (Eq. 4-5): soft lower / upper quantiles of the distances.
- ``L_H1 = mean_{i != j} [lambda_repel relu(delta - D_ij)^2 + lambda_attract relu(D_ij - zeta)^2]``
  (Eq. 3): repel pairs closer than the local scale, attract pairs farther than the global one.
- ``L_ts = beta_H0 L_H0 + beta_H1 L_H1`` (Eq. 6 without lambda_ts; the trainer multiplies by
  lambda_ts once, where the paper's text applies it twice: identical for lambda_ts = 1).

**Diagonal.** The paper's sums run over all j, including j = i, where D_ii = 0. Then
``exp(-D_ii / tau) = 1`` dominates Eq. 1 and pins every s_i near ``-tau log(1 + ...)``, so L_H0
no longer measures nearest-neighbour distances; and in Eq. 4-5 the n zero diagonal entries make
``delta -> 0`` as alpha grows. Every sum here therefore runs over the n(n-1) ordered pairs
i != j, which is what the supplement's reading of s_i as a nearest-neighbour distance needs.

**Zero distances.** ``torch.cdist`` and ``sqrt`` have infinite/NaN gradients at 0 (duplicate
prompt rows). :func:`pairwise_distances` takes the square root only of strictly positive entries
and gives exactly 0 with gradient 0 elsewhere (the subgradient of the norm at 0).

**Precision.** The loss is computed in float32 (float64 if ``P`` is float64) whatever the
prompt's dtype, from exact row differences of the centred cloud (``P - mean(P)``), so bf16
prompts, near-duplicate rows and large translations do not lose the distances to
cancellation (the Gram-matrix shortcut does).

The exact variant (``variant="exact"``) computes the same two objectives on the true
persistence pairs; see :func:`exact_ts_terms`.

The hyperparameters' defaults and ranges are declared once, in
:data:`hf_tsprompt.hyperparams.TSLOSS_PARAMS`; the arguments here are checked against them.
As regularisers of the trainer these losses are the built-ins ``tsloss``, ``l2`` and
``pdloss`` of :mod:`hf_tsprompt.regularizers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .hyperparams import TSLOSS_PARAMS, param_defaults
from .topology import persistence_pairs

__all__ = [
    "SCALES",
    "VARIANTS",
    "Scale",
    "TSLoss",
    "TSLossOutput",
    "Variant",
    "check_prompt_matrix",
    "exact_ts_terms",
    "h0_loss",
    "h1_loss",
    "l2_loss",
    "pairwise_distance_loss",
    "pairwise_distances",
    "soft_nearest_neighbour",
    "soft_quantile_scales",
    "ts_loss",
]

Variant = Literal["soft", "exact"]
Scale = Literal["absolute", "mean"]
_PARAMS = {p.name: p for p in TSLOSS_PARAMS}
_DEFAULT = param_defaults(TSLOSS_PARAMS)
VARIANTS: tuple[str, ...] = _PARAMS["variant"].choices or ()
SCALES: tuple[str, ...] = _PARAMS["scale"].choices or ()


@dataclass
class TSLossOutput:
    """The result of :func:`ts_loss`. All fields are 0-d float tensors; ``total`` has a graph.

    Attributes:
        total: ``beta_h0 * h0 + beta_h1 * h1`` (Eq. 6 without lambda_ts).
        h0: L_H0, the variance of the (soft or exact) H0 death times (Eq. 2).
        h1: L_H1, the attract/repel hinge (Eq. 3); for ``variant="exact"`` the mean H1 lifespan.
        delta: the local scale: soft lower quantile of the distances (Eq. 4); for the exact
            variant the shortest H0 death time.
        zeta: the global scale: soft upper quantile (Eq. 4); exact: the longest H0 death time.
    """

    total: torch.Tensor
    h0: torch.Tensor
    h1: torch.Tensor
    delta: torch.Tensor
    zeta: torch.Tensor

    def detached(self) -> dict[str, float]:
        """Plain floats, for logging."""
        return {k: float(getattr(self, k).detach()) for k in ("total", "h0", "h1", "delta", "zeta")}


def check_prompt_matrix(P: torch.Tensor, *, min_rows: int = 3, name: str = "P") -> None:
    """Raise ``ValueError`` unless ``P`` is a finite 2-D float tensor with >= ``min_rows`` rows."""
    if not isinstance(P, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape (n_tokens, dim), got {type(P).__name__}; "
            "use hf_tsprompt.prompt_matrix(model) to get it from a peft model."
        )
    if P.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (n_tokens, dim), got shape {tuple(P.shape)}; a batch of prompts "
            "should be regularised one prompt at a time."
        )
    if not P.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {P.dtype}.")
    if P.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {P.shape[0]} rows; the topological loss needs at least {min_rows} points "
            "(use num_virtual_tokens >= 3)."
        )
    if not bool(torch.isfinite(P).all()):
        raise ValueError(
            f"{name} contains NaN or Inf values; training has diverged upstream (lower the "
            "learning rate or check the initialisation)."
        )


def _compute_dtype(P: torch.Tensor) -> torch.dtype:
    return torch.float64 if P.dtype == torch.float64 else torch.float32


class _SafeEuclidean(torch.autograd.Function):
    """``D = cdist(X, X)`` by direct differences, with the subgradient 0 where ``D_ij = 0``.

    Forward uses cdist's non-matmul path: exact differences, so duplicate rows give exactly 0
    (the Gram-matrix shortcut leaves ~1e-4 in float32). Backward is
    ``dL/dx_k = sum_j W_kj (x_k - x_j)`` with ``W = (G + G^T) / D`` (0 where D = 0), computed as
    ``rowsum(W) x - W X``: O(n^2 + n d) memory instead of autograd's n x n x d.
    """

    @staticmethod
    def forward(ctx, X: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        D = torch.cdist(X, X, compute_mode="donot_use_mm_for_euclid_dist")
        D.fill_diagonal_(0.0)
        ctx.save_for_backward(X, D)
        return D

    @staticmethod
    def backward(ctx, G: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        X, D = ctx.saved_tensors
        positive = D > 0
        W = torch.where(positive, (G + G.T) / torch.where(positive, D, torch.ones_like(D)), 0.0)
        return W.sum(dim=1, keepdim=True) * X - W @ X


def pairwise_distances(P: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix ``D`` (n x n) of the rows of ``P``, safe at zero distance.

    Computed on the centred cloud in float32 (float64 for float64 input) by exact differences.
    Where a distance is 0 (the diagonal, duplicate rows) the entry is exactly 0 and its
    gradient is 0 rather than NaN (``torch.cdist``'s own backward gives NaN there).
    """
    X = P.to(_compute_dtype(P))
    X = X - X.mean(dim=0, keepdim=True)
    return _SafeEuclidean.apply(X)


def _off_diagonal(D: torch.Tensor) -> torch.Tensor:
    """The n(n-1) entries D_ij, i != j, as a flat vector (row-major order)."""
    n = D.shape[0]
    mask = ~torch.eye(n, dtype=torch.bool, device=D.device)
    return D[mask]


def soft_nearest_neighbour(D: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 1 over j != i: ``s_i = -tau * logsumexp_{j != i}(-D_ij / tau)``, shape (n,).

    As tau -> 0 this tends to the nearest-neighbour distance min_{j != i} D_ij from below
    (it is never larger than it).
    """
    n = D.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=D.device)
    logits = (-D / tau).masked_fill(eye, float("-inf"))
    return -tau * torch.logsumexp(logits, dim=1)


def soft_quantile_scales(D: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4-5 over the off-diagonal pairs: ``(delta, zeta)``, the soft min and soft max of D.

    ``delta -> min_{i != j} D_ij`` and ``zeta -> max D_ij`` as alpha -> infinity; both are
    weighted means, so ``min <= delta <= mean <= zeta <= max`` for every alpha > 0.
    """
    d = _off_diagonal(D)
    delta = (torch.softmax(-alpha * d, dim=0) * d).sum()
    zeta = (torch.softmax(alpha * d, dim=0) * d).sum()
    return delta, zeta


def h0_loss(D: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 2: population variance of the soft nearest-neighbour distances s_i."""
    s = soft_nearest_neighbour(D, tau)
    return ((s - s.mean()) ** 2).mean()


def h1_loss(
    D: torch.Tensor,
    delta: torch.Tensor,
    zeta: torch.Tensor,
    *,
    lambda_repel: float = 1.0,
    lambda_attract: float = 1.0,
) -> torch.Tensor:
    """Eq. 3, averaged over the n(n-1) ordered pairs i != j."""
    d = _off_diagonal(D)
    repel = torch.relu(delta - d) ** 2
    attract = torch.relu(d - zeta) ** 2
    return (lambda_repel * repel + lambda_attract * attract).mean()


def _check_hyperparameters(**values: object) -> None:
    """Raise :class:`~hf_tsprompt.errors.ConfigError` (a ``ValueError``) naming the first
    value outside its declared range (:data:`~hf_tsprompt.hyperparams.TSLOSS_PARAMS`)."""
    for name, value in values.items():
        _PARAMS[name].check(value)


def ts_loss(
    P: torch.Tensor,
    *,
    tau: float,
    alpha: float,
    beta_h0: float = _DEFAULT["beta_h0"],
    beta_h1: float = _DEFAULT["beta_h1"],
    lambda_repel: float = _DEFAULT["lambda_repel"],
    lambda_attract: float = _DEFAULT["lambda_attract"],
    variant: Variant = _DEFAULT["variant"],
    scale: Scale = _DEFAULT["scale"],
) -> TSLossOutput:
    """The Topological Soft Prompt Loss of prompt matrix ``P`` (n x d), Eq. 1-6.

    Args:
        P: the soft prompt, one virtual token per row (see :func:`hf_tsprompt.prompt_matrix`).
        tau: temperature of the soft nearest-neighbour distance (Eq. 1). It is in the units of
            D: tau well below the typical nearest-neighbour distance makes s_i close to the true
            one. Used by ``variant="soft"`` only.
        alpha: sharpness of the soft quantiles (Eq. 5), in units of 1/D; large alpha recovers
            the minimum and maximum off-diagonal distance. Used by ``variant="soft"`` only.
        beta_h0: weight of L_H0 (beta_H0 in Eq. 6).
        beta_h1: weight of L_H1 (beta_H1 in Eq. 6).
        lambda_repel: weight of the repulsion term of Eq. 3.
        lambda_attract: weight of the attraction term of Eq. 3.
        variant: ``"soft"`` (the paper's form, default) or ``"exact"`` (true persistence pairs,
            :func:`exact_ts_terms`).
        scale: ``"absolute"`` (the paper: D as is, so tau and alpha are in the prompt's distance
            units) or ``"mean"`` (scale-free: D divided by its mean off-diagonal entry, held
            constant for the gradient, so tau and alpha are relative to the typical distance
            and the loss does not vanish for small-norm prompts such as N(0, 0.02^2) ones).

    Returns:
        :class:`TSLossOutput`; ``total = beta_h0 * h0 + beta_h1 * h1``.

    Raises:
        ValueError: ``P`` is not a finite 2-D floating tensor with >= 3 rows, or a
            hyperparameter is out of range.
    """
    check_prompt_matrix(P)
    _check_hyperparameters(
        beta_h0=beta_h0,
        beta_h1=beta_h1,
        tau=tau,
        alpha=alpha,
        lambda_repel=lambda_repel,
        lambda_attract=lambda_attract,
        variant=variant,
        scale=scale,
    )

    D = pairwise_distances(P)
    if scale == "mean":
        # A constant factor for the gradient: the loss then shapes the cloud, not its size.
        mean = _off_diagonal(D).mean().detach()
        D = D / mean.clamp_min(torch.finfo(D.dtype).tiny)
    if variant == "exact":
        h0, h1, delta, zeta = exact_ts_terms(D)
    else:
        delta, zeta = soft_quantile_scales(D, alpha)
        h0 = h0_loss(D, tau)
        h1 = h1_loss(D, delta, zeta, lambda_repel=lambda_repel, lambda_attract=lambda_attract)
    total = beta_h0 * h0 + beta_h1 * h1
    return TSLossOutput(total=total, h0=h0, h1=h1, delta=delta, zeta=zeta)


def exact_ts_terms(
    D: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TSLoss's two objectives on the true Vietoris-Rips persistence pairs of ``D``.

    Persistence is differentiable almost everywhere: each finite bar's birth and death is one
    entry of ``D`` (the construction of pytorch-topological). The pairs are found on the
    detached matrix (:func:`hf_tsprompt.topology.persistence_pairs`); the torch ``D`` is then
    indexed at their edges, so gradients flow only through those edges.

    Returns ``(h0, h1, delta, zeta)``:

    - ``h0``: population variance of the n-1 finite H0 death times, i.e. of the minimum
      spanning tree's edge lengths: the quantity Eq. 2 approximates (supplement B, Eq. 11).
      Equals ``persistence(P).summary()["h0_death_variance"]``.
    - ``h1``: the mean H1 lifespan ``mean_k (death_k - birth_k)`` (0 with no H1 bar). Its
      gradient shortens every loop, i.e. removes the short-lived H1 bars the paper calls
      redundancy. Equals ``summary()["h1_mean_lifespan"]``. There is no hinge, so
      ``lambda_repel`` / ``lambda_attract`` do not apply to this variant.
    - ``delta`` / ``zeta``: the shortest and the longest H0 death time, the exact scales at
      which the cloud starts and finishes connecting (what Eq. 4's soft quantiles stand for).

    At ties (edges of equal length) one edge is chosen (see ``persistence_pairs``) and the
    gradient is that edge's: a valid subgradient, always finite. Duplicate points give
    zero-length H0 bars, whose distance (and gradient) is exactly 0.
    """
    pairs = persistence_pairs(D.detach().cpu().double().numpy())
    zero = D.sum() * 0.0
    h0_idx = torch.as_tensor(pairs.h0_death_edges, dtype=torch.long, device=D.device)
    if h0_idx.numel():
        deaths = D[h0_idx[:, 0], h0_idx[:, 1]]
        h0 = ((deaths - deaths.mean()) ** 2).mean()
        delta, zeta = deaths.min(), deaths.max()
    else:
        h0 = delta = zeta = zero
    if len(pairs.h1_birth_edges):
        b_idx = torch.as_tensor(pairs.h1_birth_edges, dtype=torch.long, device=D.device)
        d_idx = torch.as_tensor(pairs.h1_death_edges, dtype=torch.long, device=D.device)
        h1 = (D[d_idx[:, 0], d_idx[:, 1]] - D[b_idx[:, 0], b_idx[:, 1]]).mean()
    else:
        h1 = zero
    return h0, h1, delta, zeta


class TSLoss(nn.Module):
    """:func:`ts_loss` as a module with its hyperparameters fixed at construction.

    Example::

        reg = TSLoss(tau=0.1, alpha=10.0)
        out = reg(prompt_matrix(peft_model))
        loss = ce + lambda_ts * out.total
    """

    def __init__(
        self,
        *,
        tau: float,
        alpha: float,
        beta_h0: float = _DEFAULT["beta_h0"],
        beta_h1: float = _DEFAULT["beta_h1"],
        lambda_repel: float = _DEFAULT["lambda_repel"],
        lambda_attract: float = _DEFAULT["lambda_attract"],
        variant: Variant = _DEFAULT["variant"],
        scale: Scale = _DEFAULT["scale"],
    ) -> None:
        super().__init__()
        _check_hyperparameters(
            beta_h0=beta_h0,
            beta_h1=beta_h1,
            tau=tau,
            alpha=alpha,
            lambda_repel=lambda_repel,
            lambda_attract=lambda_attract,
            variant=variant,
            scale=scale,
        )
        self.tau = tau
        self.alpha = alpha
        self.beta_h0 = beta_h0
        self.beta_h1 = beta_h1
        self.lambda_repel = lambda_repel
        self.lambda_attract = lambda_attract
        self.variant: Variant = variant
        self.scale: Scale = scale

    def forward(self, P: torch.Tensor) -> TSLossOutput:
        return ts_loss(
            P,
            tau=self.tau,
            alpha=self.alpha,
            beta_h0=self.beta_h0,
            beta_h1=self.beta_h1,
            lambda_repel=self.lambda_repel,
            lambda_attract=self.lambda_attract,
            variant=self.variant,
            scale=self.scale,
        )

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, alpha={self.alpha}, beta_h0={self.beta_h0}, beta_h1={self.beta_h1}, "
            f"lambda_repel={self.lambda_repel}, lambda_attract={self.lambda_attract}, "
            f"variant={self.variant!r}, scale={self.scale!r}"
        )


def l2_loss(P: torch.Tensor) -> torch.Tensor:
    """The "+L2-Reg" baseline of Table III: ``(1/n) sum_i ||p_i||^2``.

    The mean (not the sum) over rows keeps the weight comparable across prompt lengths; it is
    an explicit L2 penalty on the prompt, separate from the optimiser's weight decay.
    """
    check_prompt_matrix(P, min_rows=1)
    X = P.to(_compute_dtype(P))
    return (X * X).sum(dim=1).mean()


def pairwise_distance_loss(P: torch.Tensor) -> torch.Tensor:
    """The "+PDLoss" baseline of Table III: ``mean_{i != j} D_ij^2``.

    The paper names PDLoss without defining it. We use the standard pairwise-distance
    (dispersion) penalty: the mean squared Euclidean distance over ordered pairs, which equals
    ``2n/(n-1)`` times the total variance ``(1/n) sum_i ||p_i - mean(p)||^2`` of the cloud
    (the identity behind Ward's criterion; see e.g. Hastie, Tibshirani and Friedman, *The
    Elements of Statistical Learning*, Eq. 14.28). It pulls the prompt together uniformly,
    without TSLoss's topology: the natural ablation of "compactness without structure".
    """
    check_prompt_matrix(P, min_rows=2)
    D = pairwise_distances(P)
    return (_off_diagonal(D) ** 2).mean()
