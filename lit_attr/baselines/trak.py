"""TRAK scores for diffusion models in closed form (Georgiev et al. 2023; Zheng et al. 2024; App. G.3-G.4).

With projected training features Phi (N, d) (rows phi_j = P grad f(x_j), f the training function:
the loss for TRAK, the squared output norm for D-TRAK) and projected query features phi_q, the
Hessian of the mean loss is approximated by the projected empirical Fisher H = Phi^T Phi / N (eq. 11)
and

    score[j, q] = phi_q^T (Phi^T Phi / N + lambda I)^{-1} phi_j                      (App. G.4)

lambda is in the paper's units (the GGN of the *mean* loss); TRAK's code adds lambda_TRAK = N * lambda
to Phi^T Phi, which gives N times these scores (same rankings). Computed exactly through the thin SVD
Phi = U S V^T in float64: phi_j lies in the row space of Phi, so

    score[j, q] = sum_k (V^T phi_j)_k (V^T phi_q)_k / (s_k^2 / N + lambda).

lambda = 0 gives the pseudo-inverse (TRAK's recommended "no damping"); small lambda amplifies the
directions with small s_k, which is where TRAK is known to collapse (paper Fig. 8, 10).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_attr.errors import ConfigError

RANK_TOLERANCE = 1e-12
"""Singular values below this times the largest are treated as zero (left out of the pseudo-inverse)."""


def trak_scores(train_features: Tensor, query_features: Tensor, dampings: Sequence[float]) -> Tensor:
    """Scores for each damping.

    Args:
        train_features: Phi, (N, d).
        query_features: (Q, d).
        dampings: lambda values (>= 0), paper units.

    Returns:
        float64 (len(dampings), N, Q).
    """
    if train_features.dim() != 2 or query_features.dim() != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ConfigError(f"Need features (N, d) and (Q, d); got {tuple(train_features.shape)}, "
                          f"{tuple(query_features.shape)}.")
    if any(d < 0 for d in dampings):
        raise ConfigError(f"TRAK dampings must be >= 0; got {list(dampings)}.")
    phi, queries = train_features.double(), query_features.double()
    num_train = phi.shape[0]
    u, s, vh = torch.linalg.svd(phi, full_matrices=False)
    keep = s > RANK_TOLERANCE * s.max().clamp(min=1e-300)
    u, s, vh = u[:, keep], s[keep], vh[keep]
    train_coords = u * s  # (N, r) = Phi V
    query_coords = queries @ vh.T  # (Q, r)
    out = []
    for damping in dampings:
        inverse = 1.0 / (s * s / num_train + damping)
        out.append(train_coords @ (query_coords * inverse).T)
    return torch.stack(out)
