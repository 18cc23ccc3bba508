"""The tabular network: shapes from stats, hparams parsing, losses, rebuild from the recorded arch."""

from __future__ import annotations

import pytest
import torch

from tasks.training.model import build_model, embedding_dim, loss_fn, model_arch, parse_hidden, to_prediction
from tests.train_data import fit_stats, make_events


@pytest.fixture(scope="module")
def stats() -> dict:
    return fit_stats(make_events(500, 2))


def test_build_from_stats_and_forward(stats):
    model = build_model(stats, {"hidden": "16,8", "dropout": 0.0})
    # one embedding per categorical, sized vocab + 1 (index 0 = OOV/null)
    assert [e.num_embeddings for e in model.embeddings] == [len(stats["categorical"][c]["vocab"]) + 1
                                                            for c in stats["categorical_features"]]
    assert model.arch["hidden"] == [16, 8] and model.arch["n_numeric"] == 4
    x_num = torch.randn(5, 4)
    x_cat = torch.tensor([[0, 1, 2, 3]] * 5)
    out = model(x_num, x_cat)
    assert out.shape == (5,)
    with pytest.raises(IndexError):
        model(x_num, torch.full((5, 4), 99))  # an index outside a vocabulary is a bug upstream, not silent


def test_rebuild_from_arch_loads_the_same_weights(stats):
    a = build_model(stats, {"hidden": [12], "dropout": 0.2})
    b = build_model(stats, {"hidden": a.arch["hidden"], "dropout": a.arch["dropout"]})
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x_num, x_cat = torch.randn(3, 4), torch.zeros(3, 4, dtype=torch.long)
    assert torch.equal(a(x_num, x_cat), b(x_num, x_cat))


def test_hparams_and_errors(stats):
    assert parse_hidden(32) == [32] and parse_hidden("64, 32") == [64, 32] and parse_hidden([8, 4]) == [8, 4]
    for bad in (0, "", [3, -1], 1.5):
        with pytest.raises(ValueError, match="hidden"):
            parse_hidden(bad)
    with pytest.raises(ValueError, match="feature stats lack"):
        model_arch({"numeric_features": []}, {})
    assert 2 <= embedding_dim(2) <= embedding_dim(50) <= 32


def test_losses_and_predictions_per_task():
    out, y = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.0])
    assert isinstance(loss_fn("classification"), torch.nn.BCEWithLogitsLoss)
    assert isinstance(loss_fn("regression"), torch.nn.MSELoss)
    assert torch.allclose(to_prediction(out, "classification"), torch.sigmoid(out))
    assert torch.equal(to_prediction(out, "regression"), out)
    with pytest.raises(ValueError, match="classification or regression"):
        loss_fn("ranking")
    assert loss_fn("regression")(out, y).item() == pytest.approx(0.5)


def test_a_model_learns_the_synthetic_signal(stats):
    """A few hundred full-batch steps separate the classes: the network and the transform fit together."""
    from sklearn.metrics import roc_auc_score

    from tasks.training.stream import transform

    table = make_events(1500, 5)
    x_num, x_cat, y = (torch.from_numpy(a) for a in transform(table, stats))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP spin-waits crawl on a shared, oversubscribed CPU
    torch.manual_seed(0)
    model = build_model(stats, {"hidden": [16], "dropout": 0.0})
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn("classification")(model(x_num, x_cat), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(model(x_num, x_cat)).numpy()
    torch.set_num_threads(threads)
    assert roc_auc_score(y.numpy(), p) > 0.75
