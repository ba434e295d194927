"""Pure tensor functions: priorities from scores, importance weights, sampling, tau, gradient-norm bounds, sequences.

Sequences (per-token losses, their weighted mean, Rho-1's token choice) are ``lightning_per.functional.sequences``.
Nothing here holds state or touches Lightning; the stateful classes call these. Probabilities and cumulative
sums are computed in float64 so that a table of 10^8 scores keeps its resolution.
"""

from __future__ import annotations

from lightning_per.functional.bounds import (
    autograd_grad_norm,
    margin_score,
    mse_grad_norm,
    prediction_deviation,
    sigmoid_bce_grad_norm,
    softmax_ce_grad_norm,
)
from lightning_per.functional.priorities import (
    class_frequency_factor,
    effective_sample_size,
    fill_unseen,
    importance_weights,
    mix_uniform,
    proportional_priorities,
    prune_keep_mask,
    rank_priorities,
    sampled_quantile,
    smallest_and_top_mass,
    to_probabilities,
)
from lightning_per.functional.sampling import (
    draw_from_cdf,
    draw_importance_sample,
    inverse_cdf_sample,
    percentile_keep,
    sorted_uniforms,
    top_k_positions,
)
from lightning_per.functional.variance import tau, tau_ema, tau_from_sums

__all__ = [
    "autograd_grad_norm",
    "class_frequency_factor",
    "draw_from_cdf",
    "draw_importance_sample",
    "effective_sample_size",
    "fill_unseen",
    "importance_weights",
    "inverse_cdf_sample",
    "margin_score",
    "mix_uniform",
    "mse_grad_norm",
    "percentile_keep",
    "prediction_deviation",
    "proportional_priorities",
    "prune_keep_mask",
    "rank_priorities",
    "sampled_quantile",
    "sigmoid_bce_grad_norm",
    "smallest_and_top_mass",
    "softmax_ce_grad_norm",
    "sorted_uniforms",
    "tau",
    "tau_ema",
    "tau_from_sums",
    "to_probabilities",
    "top_k_positions",
]
