"""SAEBench 0.6.0's classification probes, replayed draw for draw (model-free).

SAEBench's SCR, TPP and sparse-probing evaluations (``evals/sparse_probing/probe_training.py``)
build every probe's data and train every torch probe from torch's global random generator,
seeded once per SAE (``torch.manual_seed(random_seed)``). The numbers therefore depend on every
``torch.randperm`` drawn before them, in order. Here the same draws come from an explicit
:class:`torch.Generator` seeded the same way (the same Mersenne-Twister stream), so that a caller
who repeats SAEBench's calls in SAEBench's order gets SAEBench's selections, shuffles,
initialisations and mini-batches exactly:

- :func:`select` is ``prepare_probe_data``: every positive of a class, negatives from its paired
  key (SCR) or drawn evenly from the other classes (TPP, sparse probing: ``ceil(n / #others)``
  per class, then ``n`` of those), then a shuffle; it returns which rows, in which order, never
  the activations;
- :func:`train_torch_probe` is ``train_probe_gpu``: a ``Linear(d, 1)`` initialised as
  ``nn.Linear`` does, AdamW (torch defaults but ``lr``), ``BCEWithLogitsLoss`` plus
  ``l1 * Σ|w|``, a fresh permutation per epoch, and the epoch with the best *test* accuracy kept
  (strictly better than all before, starting from 0);
- :func:`accuracy` is ``test_probe_gpu``: the mean of ``(logit > 0) == label``, computed in the
  same batches;
- :func:`train_sklearn_probe` and :func:`top_k_mean_diff` are the sparse-probing parts that
  need no random draw: sklearn's ``LogisticRegression`` (L2, C = 1, ``max_iter`` 1000) and the k
  inputs with the largest gap between class means (``get_top_k_mean_diff_mask``);
- :func:`pool_mean` is ``create_meaned_model_activations``: each text's activations summed over
  its full padded row (masked positions hold exact zeros) and divided by its kept-token count.

Written from SAEBench's code as read, not copied; ``tests/test_saebench_mode.py`` runs SAEBench's
own functions on the same inputs and holds the results to ours.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from saebench.errors import SaebenchError

POSITIVE, NEGATIVE = 1, 0
# SAEBench's dataset_info.PAIRED_CLASS_KEYS: each SCR probe's positive key and its negative key
PAIRED_KEYS = {
    "male / female": "female_data_only",
    "professor / nurse": "nurse_data_only",
    "male_professor / female_nurse": "female_nurse_data_only",
}


def generator(seed: int) -> torch.Generator:
    """The stream ``torch.manual_seed(seed)`` starts on the CPU generator."""
    return torch.Generator().manual_seed(int(seed))


@dataclass
class Selection:
    """One probe's data as SAEBench's ``prepare_probe_data`` builds it: ``rows[i] = (key, index)``
    into the per-key activations, ``labels[i]`` its label, in SAEBench's shuffled order."""

    rows: list[tuple[str, int]]
    labels: torch.Tensor  # int32

    def gather(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The selected rows of ``acts[key]`` stacked in order."""
        return torch.stack([acts[k][i] for k, i in self.rows]) if self.rows else torch.zeros(0)

    def positives(self) -> list[tuple[str, int]]:
        return [r for r, y in zip(self.rows, self.labels.tolist(), strict=True) if y == POSITIVE]

    def negatives(self) -> list[tuple[str, int]]:
        return [r for r, y in zip(self.rows, self.labels.tolist(), strict=True) if y == NEGATIVE]


def select(sizes: dict[str, int], cls: str, perform_scr: bool, gen: torch.Generator) -> Selection:
    """SAEBench's ``prepare_probe_data`` for class ``cls`` of a dataset whose keys have
    ``sizes[key]`` rows (dict order matters: it is the order negatives are drawn in)."""
    n_pos = sizes[cls]
    if perform_scr:
        if cls in PAIRED_KEYS:
            neg_key = PAIRED_KEYS[cls]
        elif cls in PAIRED_KEYS.values():
            neg_key = next(k for k, v in PAIRED_KEYS.items() if v == cls)
        else:
            raise SaebenchError(f"scr: {cls!r} is not one of SAEBench's paired class keys")
        pool = [(neg_key, i) for i in range(sizes[neg_key])]
    else:
        others = [k for k in sizes if k != cls]
        if not others:
            raise SaebenchError(f"probe data for {cls!r}: a one-vs-rest probe needs at least one other class")
        per = math.ceil(n_pos / len(others))
        pool = []
        for k in others:
            take = torch.randperm(sizes[k], generator=gen)[:per]
            pool += [(k, int(i)) for i in take]
    keep = torch.randperm(len(pool), generator=gen)[:n_pos]
    negatives = [pool[int(i)] for i in keep]
    if len(negatives) != n_pos:
        raise SaebenchError(
            f"probe data for {cls!r}: {n_pos} positives but only {len(negatives)} negatives available "
            "(SAEBench asserts equal counts)"
        )
    rows = [(cls, i) for i in range(n_pos)] + negatives
    labels = torch.empty(len(rows), dtype=torch.int)
    labels[:n_pos] = POSITIVE
    labels[n_pos:] = NEGATIVE
    order = torch.randperm(len(rows), generator=gen)
    return Selection([rows[int(i)] for i in order], labels[order])


def _linear(d: int, dtype: torch.dtype, gen: torch.Generator) -> torch.nn.Linear:
    """``nn.Linear(d, 1)`` initialised exactly as its constructor does, from ``gen``."""
    lin = torch.nn.Linear(d, 1, bias=True, dtype=dtype, device="meta").to_empty(device="cpu")
    torch.nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=gen)
    bound = 1 / math.sqrt(d) if d > 0 else 0.0
    torch.nn.init.uniform_(lin.bias, -bound, bound, generator=gen)
    return lin


@dataclass
class TorchProbe:
    """A trained ``Linear(d, 1)``: ``logits = x @ w + b``; ``test_accuracy`` is the best epoch's."""

    net: torch.nn.Linear
    test_accuracy: float
    best_epoch: int

    @property
    def w(self) -> torch.Tensor:
        return self.net.weight.detach()[0]

    @property
    def b(self) -> float:
        return float(self.net.bias.detach()[0])

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.net.weight.dtype)).squeeze(-1)


@torch.no_grad()
def accuracy(net: torch.nn.Linear, x: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """SAEBench's ``test_probe_gpu``: mean of ``(logit > 0) == label`` over batches of ``batch_size``."""
    correct = []
    for i in range(0, len(labels), batch_size):
        logits = net(x[i : i + batch_size]).squeeze(-1)
        correct.append(((logits > 0.0).long() == labels[i : i + batch_size]).float())
    if not correct:
        raise SaebenchError("probe accuracy on no examples; the split is empty")
    return torch.cat(correct).mean().item()


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The same accuracy from precomputed logits (float32 mean, as ``test_probe_gpu``)."""
    return ((logits > 0.0).long() == labels.long()).float().mean().item()


def train_torch_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    gen: torch.Generator,
    batch_size: int,
    epochs: int,
    lr: float,
    l1_penalty: float | None,
    early_stopping_patience: int,
) -> TorchProbe:
    """SAEBench's ``train_probe_gpu`` on inputs already in ``prepare_probe_data``'s order."""
    dtype = x_train.dtype
    net = _linear(x_train.shape[1], dtype, gen)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    bce = torch.nn.BCEWithLogitsLoss()
    best, best_net, best_epoch, patience = 0.0, None, -1, 0
    with torch.enable_grad():
        for epoch in range(epochs):
            order = torch.randperm(len(x_train), generator=gen)
            for i in range(0, len(x_train), batch_size):
                idx = order[i : i + batch_size]
                logits = net(x_train[idx]).squeeze(-1)
                loss = bce(logits, y_train[idx].clone().detach().to(dtype=dtype))
                if l1_penalty is not None:
                    loss += l1_penalty * torch.sum(torch.abs(net.weight))
                opt.zero_grad()
                loss.backward()
                opt.step()
            test_acc = accuracy(net, x_test, y_test, batch_size)
            if test_acc > best:
                best, best_net, best_epoch, patience = test_acc, copy.deepcopy(net), epoch, 0
            else:
                patience += 1
            if patience >= early_stopping_patience:
                break
    if best_net is None:
        raise SaebenchError("a SAEBench probe reached test accuracy 0 in every epoch (SAEBench stops here)")
    return TorchProbe(best_net, best, best_epoch)


@torch.no_grad()
def pool_mean(
    acts: torch.Tensor,
    mask: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    budget: int = 1 << 25,
    rows: int | None = None,
) -> torch.Tensor:
    """``[n, d_out]``: SAEBench's mean pool (``create_meaned_model_activations``; with ``fn`` the
    SAE's ``get_sae_meaned_activations``) of rows whose kept positions are ``mask [n, ctx]`` and
    whose kept activations are ``acts [mask.sum(), d]`` (row by row): each row rebuilt at full
    width with exact zeros at masked positions, summed over positions, divided by its kept count,
    float32 like SAEBench. ``fn`` sees the full rebuilt rows ``[b, ctx, d]`` (masked positions
    too, zeroed after, as SAEBench encodes them), ``rows`` at a time (SAEBench's ``sae_batch_size``)
    or as many as fit ``budget`` floats."""
    n, ctx = mask.shape
    starts = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(dim=1).cumsum(0)])
    out: torch.Tensor | None = None
    s = 0
    while s < n:
        if rows is not None:
            e = min(n, s + rows)
        elif out is None:  # one row first: its output width sizes the chunks
            e = s + 1
        else:
            e = min(n, s + max(1, budget // max(1, ctx * max(out.shape[1], acts.shape[1]))))
        m = mask[s:e]
        full = torch.zeros(e - s, ctx, acts.shape[1], dtype=acts.dtype)
        full[m] = acts[int(starts[s]) : int(starts[e])]
        z = (fn(full.to(device)) if fn is not None else full).float().cpu() * m[:, :, None].float()
        if out is None:
            out = torch.zeros(n, z.shape[-1], dtype=torch.float32)
        out[s:e] = z.sum(dim=1) / m.to(torch.float32).sum(dim=1)[:, None]
        s = e
    assert out is not None
    return out


def train_sklearn_probe(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor
) -> tuple[object, float]:
    """SAEBench's ``train_sklearn_probe`` (L2, C = 1, max_iter 1000, float32 inputs): the fitted
    ``LogisticRegression`` and its test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    xtr = x_train.to(torch.float32).cpu().numpy()
    xte = x_test.to(torch.float32).cpu().numpy()
    probe = LogisticRegression(penalty="l2", C=1.0, max_iter=1000, verbose=0)
    probe.fit(xtr, y_train.cpu().numpy())
    return probe, float(accuracy_score(y_test.cpu().numpy(), probe.predict(xte)))


def top_k_mean_diff(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` inputs with the largest ``|mean_pos - mean_neg|`` in SAEBench's order
    (``get_top_k_mean_diff_mask`` + ``apply_topk_mask_reduce_dim`` keep them in index order)."""
    gap = (x[labels == POSITIVE].mean(dim=0) - x[labels == NEGATIVE].mean(dim=0)).abs()
    keep = torch.zeros(x.shape[1], dtype=torch.bool)
    keep[torch.argsort(gap, descending=True)[:k]] = True
    return torch.nonzero(keep).flatten()
