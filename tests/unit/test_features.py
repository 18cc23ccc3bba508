"""Feature statistics (mergeable, deterministic) and the one transform."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from tasks.prep import features
from tasks.spec import spec_for

SPEC = spec_for("events")


def _table(n: int, seed: int, price_shift: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1e6)
    devices = np.array(["desktop", "mobile", "tablet", "rare"])
    return pa.table({
        "event_ts": pa.array(start + rng.integers(0, 86_400_000_000, n)).cast(pa.timestamp("us", tz="UTC")),
        "price": pa.array(rng.lognormal(3, 1, n) + price_shift),
        "quantity": pa.array(rng.integers(1, 5, n)),
        "session_events": pa.array(rng.integers(1, 50, n)),
        "event_type": pa.array(rng.choice(["view", "cart", "checkout"], n)),
        "category": pa.array(rng.choice(["books", "home"], n)),
        "device": pa.array(np.where(np.arange(n) < 3, "rare", devices[rng.integers(0, 3, n)])),
        "country": pa.array(rng.choice(["US", "DE"], n)),
        "purchased": pa.array(rng.random(n) < 0.3),
    })


def test_merged_partials_equal_single_pass_exact_stats():
    parts = [_table(30_000, s) for s in range(4)]
    whole = pa.concat_tables(parts)
    merged = features.finalize(features.merge(*[features.partial_fit(p, SPEC, seed=i) for i, p in enumerate(parts)]),
                               SPEC)
    price = whole.column("price").to_numpy()
    st = merged["numeric"]["price"]
    assert st["mean"] == pytest.approx(price.mean(), rel=1e-12)
    assert st["std"] == pytest.approx(price.std(), rel=1e-9)
    assert st["min"] == price.min() and st["max"] == price.max() and st["count"] == 120_000
    # quantiles come from a 20k uniform sample: close to exact ones
    for q in ("0.01", "0.5", "0.99"):
        exact = np.quantile(price, float(q))
        rank = (price <= st["quantiles"][q]).mean()
        assert abs(rank - float(q)) < 0.01, (q, st["quantiles"][q], exact)
    assert st["median"] == st["quantiles"]["0.5"]
    assert st["iqr"] == pytest.approx(st["quantiles"]["0.75"] - st["quantiles"]["0.25"])
    # merge order does not change the result; reruns are identical
    rev = features.finalize(features.merge(*[features.partial_fit(p, SPEC, seed=i) for i, p in
                                             reversed(list(enumerate(parts)))]), SPEC)
    assert rev["numeric"]["price"]["quantiles"] == st["quantiles"]
    assert rev["categorical"] == merged["categorical"]
    # derived hour was computed
    assert 0 <= merged["numeric"]["hour"]["min"] <= merged["numeric"]["hour"]["max"] <= 23


def test_dictionary_encoded_categories_give_the_same_statistics():
    """The clean reduce fits on category columns still dictionary-encoded, one dictionary per map chunk,
    which may repeat a value (unknowns mapped) and hold nulls: the statistics must equal the plain ones."""
    plain = _table(20_000, 5)
    chunks = []
    for lo in range(0, plain.num_rows, 7_000):
        part = plain.slice(lo, 7_000)
        cols = {}
        for name in part.column_names:
            col = part.column(name).combine_chunks()
            if name in SPEC.features.categorical:
                enc = col.dictionary_encode()
                # append a repeated dictionary entry and point some rows at it, plus a null index
                dictionary = pa.concat_arrays([enc.dictionary, enc.dictionary.slice(0, 1)])
                idx = enc.indices.to_numpy().copy()
                idx[::4] = np.where(idx[::4] == 0, len(enc.dictionary), idx[::4])
                mask = np.zeros(len(idx), dtype=bool)
                mask[5] = True
                col = pa.DictionaryArray.from_arrays(pa.array(idx, mask=mask, type=pa.int32()), dictionary)
                plain_col = col.dictionary_decode()
                cols[name] = (col, plain_col)
            else:
                cols[name] = (col, col)
        chunks.append(cols)
    encoded = pa.Table.from_batches([pa.record_batch({k: v[0] for k, v in c.items()}) for c in chunks])
    decoded = pa.Table.from_batches([pa.record_batch({k: v[1] for k, v in c.items()}) for c in chunks])
    assert pa.types.is_dictionary(encoded.schema.field("device").type) and encoded.column("device").num_chunks == 3
    a, b = features.partial_fit(encoded, SPEC, seed=3), features.partial_fit(decoded, SPEC, seed=3)
    assert a["categorical"] == b["categorical"] and a["categorical"]["device"]
    assert features.finalize(a, SPEC) == features.finalize(b, SPEC)


def test_bottom_k_is_the_k_smallest_in_order():
    rng = np.random.default_rng(0)
    for n, k in ((10, 3), (1_000, 1), (100_000, 40_000), (50_000, 49_999), (5, 9)):
        p = rng.random(n)
        assert features._bottom_k(p, k).tolist() == np.argsort(p, kind="stable")[:k].tolist()


def test_vocab_respects_min_count_and_contract_keys():
    st = features.fit(_table(5_000, 1), SPEC)
    assert st["categorical"]["device"]["vocab"] == ["desktop", "mobile", "tablet"]  # "rare" seen 3 < 5 times
    assert st["label"] == "purchased" and st["task"] == "classification"
    assert st["numeric_features"] == ["price", "quantity", "session_events", "hour"]
    assert st["categorical_features"] == ["event_type", "category", "device", "country"]
    for key in ("mean", "std", "median", "iqr", "min", "max", "quantiles"):
        assert key in st["numeric"]["price"]


def test_transform_standardizes_maps_oov_and_nulls_to_zero():
    t = _table(10_000, 2)
    st = features.fit(t, SPEC)
    x_num, x_cat, y = features.transform(t, st)
    assert x_num.dtype == np.float32 and x_num.shape == (10_000, 4)
    assert x_cat.dtype == np.int64 and x_cat.shape == (10_000, 4)
    assert y.dtype == np.float32 and set(np.unique(y)) == {0.0, 1.0}
    assert abs(x_num[:, 0].mean()) < 1e-3 and abs(x_num[:, 0].std() - 1) < 1e-3
    dev = np.asarray(t.column("device").to_pylist())
    vocab = st["categorical"]["device"]["vocab"]
    assert (x_cat[dev == "mobile", 2] == vocab.index("mobile") + 1).all()
    assert (x_cat[dev == "rare", 2] == 0).all()
    # serving-style input: nulls, unseen values, noisy case, no label, no derived column
    raw = pa.table({
        "event_ts": pa.array([0, None], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "price": pa.array([None, 10.0]), "quantity": pa.array([1, 2]), "session_events": pa.array([3, None]),
        "event_type": pa.array(["VIEW ", None]), "category": pa.array(["books", "garden"]),
        "device": pa.array([" Mobile", "watch"]), "country": pa.array(["us", "DE"]),
    })
    xn, xc, yy = features.transform(raw, st)
    assert xn[0, 0] == 0.0 and xn[1, 2] == 0.0 and xn[1, 3] == 0.0  # nulls -> 0 after standardizing
    assert xc[0, 0] == st["categorical"]["event_type"]["vocab"].index("view") + 1
    assert xc[1, 0] == 0 and xc[1, 1] == 0 and xc[1, 2] == 0  # null / OOV -> 0
    assert xc[0, 2] == vocab.index("mobile") + 1 and xc[0, 3] == st["categorical"]["country"]["vocab"].index("US") + 1
    assert np.isnan(yy).all()


def test_transform_names_missing_or_bad_columns():
    st = features.fit(_table(1_000, 3), SPEC)
    with pytest.raises(features.FeatureError, match="price"):
        features.transform(_table(10, 4).drop_columns(["price"]), st)
    bad = _table(10, 4).drop_columns(["event_ts"])
    with pytest.raises(features.FeatureError, match="event_ts"):
        features.transform(bad, st)
