"""Structured pruning of MLP blocks: remove whole hidden units so Linear layers really shrink.

Unstructured masks (``torch.nn.utils.prune``) keep dense weight shapes: on CPU they give
no size or speed gain. Here a hidden unit is removed from the Linear that produces it
(a row of its weight and its bias) and from the Linear that consumes it (a column), and
both layers are rebuilt as smaller ``nn.Linear``. Units are ranked by importance =
||row of producer (weight + bias)||_2 * ||column of consumer||_2 (scaled by a BatchNorm
in between, when there is one), which is cheap and data-free; a short fine-tune after
pruning recovers most of the loss.

Prunable = on the model's traced dataflow graph (torch.fx), a Linear whose output goes
only through element-wise ops (activations, dropout) or BatchNorm1d (sliced too) into
exactly one other Linear, each layer called once. Anything else in between (LayerNorm,
residual adds, concatenation, custom modules) ends the chain, so pruning never changes
what the model computes apart from the removed units. Models fx cannot trace fall back
to the same rule inside ``nn.Sequential`` containers.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

# modules that act on each feature independently: removing a unit upstream is safe through them
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Dropout, nn.AlphaDropout, nn.Identity,
)


@dataclass(frozen=True)
class PrunablePair:
    """Linear ``producer`` feeds Linear ``consumer`` only through element-wise ops / BatchNorm1d ``norms``.

    All three are dotted module paths (``model.get_submodule(path)``).
    """

    producer: str
    consumer: str
    norms: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.producer


_ELEMENTWISE_FUNCS = {
    torch.relu, torch.sigmoid, torch.tanh, torch.nn.functional.relu, torch.nn.functional.gelu,
    torch.nn.functional.silu, torch.nn.functional.leaky_relu, torch.nn.functional.elu,
    torch.nn.functional.dropout, torch.nn.functional.mish, torch.nn.functional.hardswish,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh"}


def _pairs_fx(model: nn.Module) -> list[PrunablePair]:
    """Pairs found on the traced dataflow graph: works whatever container holds the layers."""
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def module(node: torch.fx.Node) -> nn.Module | None:
        return model.get_submodule(node.target) if node.op == "call_module" else None

    pairs = []
    for node in graph.nodes:
        if not isinstance(module(node), nn.Linear) or calls[node.target] != 1:
            continue
        norms: list[str] = []
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            mod = module(nxt)
            if nxt.args[:1] != (cur,) or any(a is cur for a in list(nxt.args[1:]) + list(nxt.kwargs.values())):
                break  # `cur` must be the op's only tensor input
            if isinstance(mod, nn.Linear):
                if calls[nxt.target] == 1:
                    pairs.append(PrunablePair(node.target, nxt.target, tuple(norms)))
                break
            if isinstance(mod, nn.BatchNorm1d) and calls[nxt.target] == 1:
                norms.append(nxt.target)
            elif not (isinstance(mod, ELEMENTWISE) or (nxt.op == "call_function" and nxt.target in _ELEMENTWISE_FUNCS)
                      or (nxt.op == "call_method" and nxt.target in _ELEMENTWISE_METHODS)):
                break
            cur = nxt
    return pairs


def _pairs_sequential(model: nn.Module) -> list[PrunablePair]:
    """Fallback for models fx cannot trace: Linear -> element-wise/BN -> Linear inside an nn.Sequential."""
    pairs: list[PrunablePair] = []
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        prefix = f"{path}." if path else ""
        children = list(mod)
        for i, child in enumerate(children):
            if not isinstance(child, nn.Linear):
                continue
            norms: list[str] = []
            for j in range(i + 1, len(children)):
                nxt = children[j]
                if isinstance(nxt, nn.Linear):
                    pairs.append(PrunablePair(f"{prefix}{i}", f"{prefix}{j}", tuple(norms)))
                    break
                if isinstance(nxt, nn.BatchNorm1d):
                    norms.append(f"{prefix}{j}")
                elif not isinstance(nxt, ELEMENTWISE):
                    break
    return pairs


def find_pairs(model: nn.Module) -> list[PrunablePair]:
    """Every producer/consumer Linear pair whose hidden units can be removed."""
    try:
        return _pairs_fx(model)
    except Exception as exc:  # data-dependent control flow etc.: fall back to the structural scan
        log.info("fx trace of %s failed (%s): scanning nn.Sequential containers only", type(model).__name__, exc)
        return _pairs_sequential(model)


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def unit_importance(producer: nn.Linear, consumer: nn.Linear, norms: list[nn.BatchNorm1d]) -> torch.Tensor:
    """Importance of each of the producer's output units (higher = keep)."""
    w = producer.weight.detach()
    rows = w if producer.bias is None else torch.cat([w, producer.bias.detach()[:, None]], dim=1)
    score = rows.norm(dim=1) * consumer.weight.detach().norm(dim=0)
    for bn in norms:  # a BatchNorm rescales each unit by gamma / sqrt(var + eps)
        if bn.affine and bn.track_running_stats and bn.running_var is not None:
            score = score * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return score


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _slice_bn(bn: nn.BatchNorm1d, keep: torch.Tensor) -> nn.BatchNorm1d:
    new = nn.BatchNorm1d(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[keep])
            new.bias.copy_(bn.bias.detach()[keep])
        if bn.track_running_stats and bn.running_mean is not None:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _apply(model: nn.Module, pair: PrunablePair, keep: torch.Tensor) -> None:
    _set(model, pair.producer, _slice_linear(model.get_submodule(pair.producer), keep, None))
    _set(model, pair.consumer, _slice_linear(model.get_submodule(pair.consumer), None, keep))
    for path in pair.norms:
        _set(model, path, _slice_bn(model.get_submodule(path), keep))


def prune_model(model: nn.Module, ratio: float, min_units: int = 4) -> tuple[nn.Module, dict[str, int]]:
    """A pruned copy of `model` with `ratio` of each prunable hidden layer's units removed.

    Returns the copy and its widths ``{pair key: units kept}`` (enough to rebuild the
    shapes with :func:`resize` before loading a saved state_dict).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    pruned = copy.deepcopy(model)
    widths: dict[str, int] = {}
    for pair in find_pairs(pruned):
        producer: nn.Linear = pruned.get_submodule(pair.producer)
        units = producer.out_features
        kept = max(min(min_units, units), int(round(units * (1.0 - ratio))))
        if kept < units:
            score = unit_importance(producer, pruned.get_submodule(pair.consumer),
                                    [pruned.get_submodule(k) for k in pair.norms])
            keep = torch.topk(score, kept).indices.sort().values  # keep the original unit order
            _apply(pruned, pair, keep)
        widths[pair.key] = kept
    log.info("pruned %.0f%% of hidden units: widths %s", ratio * 100, widths)
    return pruned, widths


def resize(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Give a fresh model the pruned shapes recorded in `widths` (weights are to be loaded after)."""
    pairs = {p.key: p for p in find_pairs(model)}
    unknown = set(widths) - set(pairs)
    if unknown:
        raise ValueError(f"pruned widths name layers the model does not have: {sorted(unknown)}")
    for key, kept in widths.items():
        _apply(model, pairs[key], torch.arange(kept))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
