"""Gradient variance: why importance sampling does or does not pay off on the time-to-quality set-up.

Protocol. The uniform run of ``benchmarks/time_to_quality.py`` (MNIST-1D 4000 training signals with augmentation,
the examples' 1D CNN, SGD with momentum 0.9, batch ``b`` = 100, cosine learning rate from 0.1, the compute of
``--epochs`` uniform epochs). At ``--probes`` evenly spaced points of the run (the first after one epoch), the
training pauses (nothing is trained on the probes) and ``--presamples`` presamples of ``B = presample * b`` training
points are drawn uniformly with replacement and augmented as in training, as the importance callback draws them.
For every point of a presample the exact per-sample gradient ``G_i`` of its cross-entropy over all parameters is
computed (``torch.func``), with its score: the callback's upper bound ``||softmax(z_i) - onehot(y_i)||`` (``ce``),
the loss (``loss``), or the true gradient norm ``||G_i||`` (``optimal``, the variance-minimising distribution, which
no method can afford).

For a draw of ``b`` points with replacement with probabilities ``p`` and weights ``1 / (B p_i)``, the weighted mean
gradient is an unbiased estimate of the presample's mean gradient ``Ḡ``, with total variance (the trace of its
covariance) ``V(p) = (sum_i ||G_i||² / (B² p_i) - ||Ḡ||²) / b``, computed exactly, not sampled (points with a score
of exactly 0, never drawn, add their squared bias instead). Reported per probe:

* ``reduction[score] = V(uniform) / V(p ∝ score)``: the variance an importance step removes. An importance step
  costs ``(B + 3b) / (3b)`` = 2 uniform steps, and two uniform steps (or one of twice the batch) halve the
  variance too, so the reduction must exceed 2 before it pays, and even then only where the variance matters;
* ``noise_share = V(uniform) / (V(uniform) + ||Ḡ||²)``: the share of a uniform step's squared length that is
  noise. Where it is small, a step is mostly signal, and two steps move about twice as far as one step with less
  noise, so importance sampling cannot win at equal cost whatever its reduction;
* ``tau``: the callback's variance-reduction estimate ``sqrt(B sum g_i²)`` (``g`` the normalised scores) from the
  bound and from the true norms, and the reduction it stands for (``tau²`` is the reduction of the second moment
  ``E||w G||²``, which ignores ``||Ḡ||²``);
* ``spearman``: the rank correlation of each score with the true gradient norm.

Mean and spread over ``--seeds`` seeds; the test split is not used.

    python -m benchmarks.gradient_variance --out bench_out/gradient_variance.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.func import functional_call, grad, vmap
from torch.utils.data import TensorDataset

from benchmarks.common import median, protocol, quiet, save_figure, save_json, spread
from benchmarks.common import parser as make_parser
from benchmarks.protocol.budget import ComputeBudget
from benchmarks.protocol.data import Augment
from benchmarks.time_to_quality import run, splits
from lightning_per import functional as PF

SCORES = ("ce", "loss", "optimal")


def per_sample_gradients(model: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Every point's gradient of its cross-entropy over all parameters, flattened ``(n, P)``, and the logits."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_of_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, x, y)
    with torch.no_grad():
        logits = model(x)
    return torch.cat([g.reshape(x.shape[0], -1) for g in grads.values()], 1), logits


def mean_squared_error(gradients: Tensor, p: Tensor, draws: int) -> float:
    """``E||ĝ - Ḡ||²`` of the mean of ``draws`` weighted draws (``w = 1 / (B p)``), ``Ḡ`` the mean gradient.

    The total variance where every point can be drawn; points with ``p = 0`` (a score of exactly 0, which the
    callback never draws) add their share of ``Ḡ`` as a squared bias.
    """
    size = gradients.shape[0]
    drawn = p > 0
    kept = gradients[drawn].double()
    expected = kept.sum(0) / size  # E[ĝ]
    second = (kept.pow(2).sum(1) / (size**2 * p[drawn])).sum()  # E||w G||² of one draw
    bias = expected - gradients.double().mean(0)
    return float((second - expected.pow(2).sum()) / draws + bias.pow(2).sum())


def spearman(a: Tensor, b: Tensor) -> float:
    """Rank correlation of two 1-D tensors (ties share their mean rank)."""
    ra, rb = PF.rank_priorities(a.double(), alpha=1.0), PF.rank_priorities(b.double(), alpha=1.0)
    ra, rb = 1.0 / ra, 1.0 / rb  # the ranks themselves
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def tau_of(scores: Tensor) -> float:
    """The callback's ``tau_step`` of one set of scores: ``sqrt(n sum g²)``, ``g`` the normalised scores."""
    g = scores.double() / scores.double().sum()
    return float((g.numel() * g.pow(2).sum()).sqrt())


def probe(model: LightningModule, data: TensorDataset, presample: int, batch: int, generator: torch.Generator) -> Any:
    """The figures of one presample at the model's current parameters (see the protocol)."""
    size = presample * batch
    positions = torch.randint(len(data), (size,), generator=generator)
    x, y = Augment()([data[i] for i in positions.tolist()])
    was_training = model.training
    model.eval()  # no BatchNorm or Dropout in this model: the same function as in training
    gradients, logits = per_sample_gradients(model, x.to(model.device), y.to(model.device))
    model.train(was_training)
    gradients, logits, y = gradients.cpu(), logits.cpu(), y.cpu()
    norms = gradients.norm(dim=1)
    scores = {
        "ce": PF.softmax_ce_grad_norm(logits, y),
        "loss": F.cross_entropy(logits, y, reduction="none"),
        "optimal": norms,
    }
    uniform = mean_squared_error(gradients, torch.full((size,), 1.0 / size, dtype=torch.float64), batch)
    signal = float(gradients.mean(0).double().pow(2).sum())
    out: dict[str, Any] = {"noise_share": uniform / (uniform + signal), "var_uniform": uniform, "signal": signal}
    for name, s in scores.items():
        positive = torch.where(s > 0, s.double(), 0.0)  # as the callback draws: a score of 0 (or -0.0) never
        out[f"reduction_{name}"] = uniform / mean_squared_error(gradients, positive / positive.sum(), batch)
        out[f"tau_{name}"] = tau_of(s)
        out[f"spearman_{name}"] = spearman(s, norms)
    return out


class Probes(Callback):
    """Pauses the run at evenly spaced points of its compute budget and probes the gradient variance there."""

    def __init__(self, args: argparse.Namespace, train: TensorDataset, seed: int) -> None:
        self.args = args
        self.train = train
        self.generator = torch.Generator().manual_seed(10_000 + seed)
        self.points: list[dict[str, Any]] = []
        self._budget: ComputeBudget | None = None
        self._next = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._budget = next(c for c in trainer.callbacks if isinstance(c, ComputeBudget))  # type: ignore[attr-defined]

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self._budget is not None
        fraction = self._budget.cost / self._budget.budget
        first = 1.0 / self.args.epochs  # after one epoch: the network has left its random start
        due = first + self._next * (1.0 - first) / max(1, self.args.probes - 1)
        if self._next >= self.args.probes or fraction < due - 1e-9:
            return
        self._next += 1
        found = [
            probe(pl_module, self.train, self.args.presample, self.args.batch_size, self.generator)
            for _ in range(self.args.presamples)
        ]
        point = {k: median([f[k] for f in found]) for k in found[0]}
        point["progress"] = fraction
        point["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.points.append(point)
        print(
            f"  progress {fraction:4.2f}  lr {point['lr']:.3f}  noise share {point['noise_share']:.2f}  reduction "
            + "  ".join(f"{s} {point[f'reduction_{s}']:.2f}" for s in SCORES)
            + f"  tau ce {point['tau_ce']:.2f}  spearman ce {point['spearman_ce']:.2f}",
            flush=True,
        )


def plot(points: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Variance reduction per score, noise share and tau against the run's progress (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = list(points.values())
    progress = np.array([p["progress"] for p in runs[0]])

    def mean(key: str) -> Any:
        return np.mean([[p[key] for p in r] for r in runs], axis=0)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for score in SCORES:
        axes[0].plot(progress, mean(f"reduction_{score}"), marker="o", label=f"p ∝ {score}")
    axes[0].axhline(2.0, color="black", ls="--", lw=1, label="cost of an importance step (2)")
    axes[0].set_ylabel("V(uniform) / V(p)")
    axes[0].set_title("variance reduction of one step")
    axes[0].legend()
    axes[1].plot(progress, mean("noise_share"), marker="o")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("noise share of a uniform step")
    axes[2].plot(progress, mean("tau_ce"), marker="o", label="tau from the bound")
    axes[2].plot(progress, mean("tau_optimal"), marker="o", label="tau from true norms")
    axes[2].plot(progress, np.sqrt(mean("reduction_optimal")), marker="x", ls=":", label="sqrt(best reduction)")
    axes[2].set_title("tau")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("fraction of the compute budget")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out/gradient_variance.json"))
    parser.add_argument("--epochs", type=int, default=88, help="budget: the compute of this many uniform epochs")
    parser.add_argument("--probes", type=int, default=8, help="probe points per run")
    parser.add_argument("--presamples", type=int, default=5, help="presamples per probe point (median taken)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--presample", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--evals", type=int, default=4, help="evaluation points of the training run")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.probes < 1 or args.presamples < 1 or args.seeds < 1 or args.epochs < 2:
        parser.error("--probes, --presamples and --seeds must be >= 1 and --epochs >= 2.")
    quiet()
    data = splits(args.data_dir)
    points: dict[str, list[dict[str, Any]]] = {}
    for seed in range(args.seeds):
        print(f"seed {seed}", flush=True)
        probes = Probes(args, data["train"], seed)
        run("uniform", seed, args, data, args.epochs, extra_callbacks=[probes])
        points[str(seed)] = probes.points
    keys = [k for k in points["0"][0] if k not in ("progress", "lr")]
    summary = [
        {
            "progress": points["0"][i]["progress"],
            "lr": points["0"][i]["lr"],
            **{k: spread([points[s][i][k] for s in points]) for k in keys},
        }
        for i in range(len(points["0"]))
    ]
    payload = {
        "summary": summary,
        "points": points,
        "settings": {**vars(args), "out": str(args.out)},
        "protocol": protocol(__doc__),
    }
    save_json(args.out, payload)
    plot(points, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
