"""Correlations between the layers' mapped centres and widths (a Gaussian copula).

The quantile maps of :mod:`caloforge.models.layer_moments` move each layer's moments
onto the training distribution one layer at a time and keep each shower's rank among the
generated ones, so the correlations between layers stay the generator's: a hadron
shower's core that wanders coherently from layer to layer in the simulation wanders
independently in a generator whose occupancy cuts fill its layers with scattered hits.
This module moves a shower's normal scores (one per layer and moment: z = Phi^-1 of its
rank under the generated distribution of its bin) by the linear map that takes their
second-moment matrix onto the training showers' and moves them least, the
optimal-transport map between centred Gaussians,

    z' = A z,    A = S^-1/2 (S^1/2 R S^1/2)^1/2 S^-1/2,

S and R the second moments of the generated and of the training scores, a layer without
the maps' minimum number of hits counting as 0 (the scores' mean) in both.  The layers'
energies stay as they are but take part: the scores of the moments are moved given
those of the layer energies e (Gaussian conditionals), from the generated conditional
mean K_S e and spread onto the training ones,

    z' = K_R e + A (z - K_S e),    K = C_ze C_ee^-1,

A the map above between the conditional second moments.  Everything is fitted pooled
over the theta and energy bins: the scores are standardised per bin already.  The maps
then read the moved scores back through the training quantiles.

Per shower a product with a fixed matrix, as elementwise products and a reduction over
a fixed axis (the same arithmetic for every row whatever the batch), so generation stays
independent of the batch and exports to ONNX.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

RIDGE = 1e-3  # added to both second-moment matrices: scores that (nearly) never vary
CHUNK = 128  # showers per product in eager mode (bounds the (B, n, n) temporary)


def knot_scores(n_knots: int) -> Tensor:
    """Normal scores of the maps' knots (quantile levels 0, 1/(K-1), ..., 1), the outer
    two at a quarter of a knot spacing inside the distribution instead of at +-inf."""
    levels = torch.linspace(0.0, 1.0, n_knots, dtype=torch.float64)
    edge = 0.25 / (n_knots - 1)
    return torch.special.ndtri(levels.clamp(edge, 1.0 - edge)).float()


def transport_matrix(source: Tensor, target: Tensor) -> Tensor:
    """The symmetric A with A S A = R that moves centred Gaussian samples least (S, R:
    symmetric positive-definite second-moment matrices, float64)."""

    def power(m: Tensor, p: float) -> Tensor:
        val, vec = torch.linalg.eigh(m)
        return (vec * val.clamp_min(1e-12) ** p) @ vec.T

    half, inv_half = power(source, 0.5), power(source, -0.5)
    middle = power(half @ target @ half, 0.5)
    a = inv_half @ middle @ inv_half
    return 0.5 * (a + a.T)


class ScoreMixing(nn.Module):
    """The fitted (z, e) -> z' of ``n_moved`` scores z given ``n_given`` scores e that
    stay; the identity until fitted."""

    def __init__(self, n_moved: int, n_given: int = 0) -> None:
        super().__init__()
        self.n_moved, self.n_given = int(n_moved), int(n_given)
        self.register_buffer("matrix", self._identity())

    def _identity(self) -> Tensor:
        return torch.cat([torch.eye(self.n_moved), torch.zeros(self.n_moved, self.n_given)], 1)

    def reset(self) -> None:
        self.matrix.copy_(self._identity())

    @torch.no_grad()
    def fit(self, generated: Tensor, reference: Tensor) -> None:
        """Fit from scores (N, n_moved + n_given) of generated and of training showers."""
        m = self.n_moved

        def conditional(z: Tensor) -> tuple[Tensor, Tensor]:
            """Second moment of the moved scores given the others, and K."""
            z = z.double()
            c = z.T @ z / max(len(z), 1) + RIDGE * torch.eye(z.shape[1], dtype=z.dtype)
            if self.n_given == 0:
                return c, c[:m, m:]
            k = torch.linalg.solve(c[m:, m:], c[m:, :m]).T  # C_ze C_ee^-1
            return c[:m, :m] - k @ c[m:, :m], k

        s, k_gen = conditional(generated)
        r, k_ref = conditional(reference)
        a = transport_matrix(s, r)
        self.matrix.copy_(torch.cat([a, k_ref - a @ k_gen], 1).to(self.matrix))

    def forward(self, z: Tensor) -> Tensor:
        """z' for every row of ``z`` (B, n_moved + n_given): (B, n_moved)."""
        m = self.matrix.to(z)
        if torch.jit.is_tracing():
            return (z[:, None, :] * m[None]).sum(-1)
        return torch.cat([(part[:, None, :] * m[None]).sum(-1)
                          for part in z.split(CHUNK)]) if len(z) else z[:, :self.n_moved]
