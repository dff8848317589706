"""Property-based tests (hypothesis) of the pipeline's pure building blocks.

Covered: config overrides / digests (pipeline.config on TrainConfig and GenerateConfig),
grid cell ids, the generate stage's shard split, whitening and the few-shot methods on
degenerate inputs, class-balanced nested context sets, and the synthetic task sampler.
Everything here is CPU-only, loads no model and starts no Ray; each property runs a
bounded number of examples with no deadline (the test box is small and busy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, config_digest, from_dict, load_config, parse_overrides, to_dict
from pipeline.datasets import context_sets
from pipeline.generate import GenerateConfig, shard_bounds
from pipeline.grid import Cell
from pipeline.methods import DEFAULT_EPS, MethodError, fit_whitening, run_method
from pipeline.synthetic import TaskSpec, apply_curriculum, sample_episodes_np
from pipeline.train import TrainConfig

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# =============================================================================== 1. config

def _ints(lo, hi):
    return st.integers(lo, hi)


def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


# Numeric fields (dotted path -> strategy of values that pass the config's validate()).
TRAIN_FIELDS = {
    "seed": _ints(-(2**40), 2**40),
    "steps": _ints(1, 10**7),
    "batch_size": _ints(1, 4096),  # workers=1, micro_batch=0: always divisible
    "lr": _floats(1e-12, 10.0),
    "warmup_steps": _ints(0, 10**5),
    "min_lr_ratio": _floats(0.0, 1.0),
    "weight_decay": _floats(0.0, 1.0),
    "grad_clip": _floats(0.0, 1e3),
    "checkpoint_every": _ints(1, 10**5),
    "eval_every": _ints(1, 10**5),
    "eval_episodes": _ints(1, 10**5),
    "log_every": _ints(1, 10**5),
    "cpus_per_worker": _floats(1e-3, 64.0),
    "keep_checkpoints": _ints(1, 100),
    "time_budget_s": _floats(0.0, 1e7),
    "curriculum.dims_start": _ints(1, 64),
    "curriculum.dims_step": _ints(0, 64),
    "curriculum.points_start": _ints(1, 512),
    "curriculum.points_step": _ints(0, 512),
    "curriculum.interval": _ints(1, 10**6),
    "model.n_layer": _ints(1, 48),
    "task.weight_multiplier": _floats(1e-3, 1e3),
}

GENERATE_FIELDS = {
    "seed": _ints(0, 2**62),
    "row_group_size": _ints(1, 10**6),
    "cpus_per_task": _floats(1e-3, 64.0),
    "compression_level": _ints(-5, 22),
    "task.d": _ints(1, 4096),
    "task.points": _ints(2, 10**5),
    "task.weight_multiplier": _floats(1e-3, 1e3),
}


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _override(key, value):
    # repr(float) round-trips through YAML (or, for "1e-05"-style strings, through the
    # config's str->float coercion); str(int) is a YAML int.
    return f"{key}={'null' if value is None else repr(value)}"


def _overrides(fields):
    return st.dictionaries(st.sampled_from(sorted(fields)), st.none(), min_size=1, max_size=len(fields)).flatmap(
        lambda chosen: st.fixed_dictionaries({k: fields[k] for k in chosen})
    )


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for dotted, v in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


@pytest.mark.parametrize("cls,fields", [(TrainConfig, TRAIN_FIELDS), (GenerateConfig, GENERATE_FIELDS)],
                         ids=["TrainConfig", "GenerateConfig"])
@FAST
@given(data=st.data())
def test_overrides_round_trip_into_the_dataclass(cls, fields, data):
    """Valid dotted overrides land in the right (nested) field with the right value and type;
    parse_overrides builds the nested tree; a YAML file with the same tree gives the same
    config; to_dict/from_dict round-trips; untouched fields keep their defaults."""
    values = data.draw(_overrides(fields))
    overrides = [_override(k, v) for k, v in values.items()]
    tree = parse_overrides(overrides)
    assert set(tree) == {k.split(".")[0] for k in values}
    cfg = load_config(cls, overrides=overrides)
    default = cls()
    for key in fields:
        got = _get(cfg, key)
        if key in values:
            want = values[key]
            assert type(got) is type(want), (key, got, want)
            assert got == want, (key, got, want)
        else:
            assert got == _get(default, key), key
    # same tree from a YAML file, and file + overrides: overrides win
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cfg.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(_nest(values), f)
        assert load_config(cls, path) == cfg
        key0 = next(iter(values))
        assert load_config(cls, path, [_override(key0, _get(default, key0))]) == load_config(
            cls, overrides=[_override(k, (_get(default, k) if k == key0 else v)) for k, v in values.items()]
        )
    assert from_dict(cls, to_dict(cfg)) == cfg
    assert config_digest(from_dict(cls, to_dict(cfg))) == config_digest(cfg)


@pytest.mark.parametrize("key", ["steps", "batch_size", "curriculum.interval", "model.n_layer"])
@FAST
@given(v=st.integers(1, 10**6))
def test_integral_floats_are_accepted_for_int_fields(key, v):
    cfg = load_config(TrainConfig, overrides=[f"{key}={float(v)!r}"])
    got = _get(cfg, key)
    assert type(got) is int and got == v


_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


def _field_names(cls):
    return {f.name for f in dataclasses.fields(cls)}


@FAST
@given(ident=_IDENT, value=st.integers(-100, 100),
       section=st.sampled_from([None, "task", "model", "curriculum"]))
def test_unknown_keys_are_rejected_by_name(ident, value, section):
    """Any identifier that is not a field (top level or in a nested section) -> ConfigError
    naming exactly the dotted key."""
    sub = {None: TrainConfig, "task": TaskSpec, "curriculum": type(TrainConfig().curriculum),
           "model": type(TrainConfig().model)}[section]
    assume(ident not in _field_names(sub))
    full = ident if section is None else f"{section}.{ident}"
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, overrides=["steps=10", f"{full}={value}"])
    msg = str(err.value)
    assert f"unknown config key(s) {full} for {sub.__name__}" in msg, msg


@FAST
@given(ident=_IDENT.filter(lambda s: s not in _field_names(GenerateConfig)), value=st.integers())
def test_unknown_keys_are_rejected_by_name_generate(ident, value):
    with pytest.raises(ConfigError, match=re.escape(f"unknown config key(s) {ident} for GenerateConfig")):
        load_config(GenerateConfig, overrides=[f"{ident}={value}"])
    # an unknown section given as a dotted key
    with pytest.raises(ConfigError, match=re.escape(f"unknown config key(s) {ident} ")):
        load_config(GenerateConfig, overrides=[f"{ident}.x={value}"])


def _is_yaml_str(s):
    try:
        return isinstance(yaml.safe_load(s), str)
    except yaml.YAMLError:
        return False


def _not_a_float(s):
    try:
        float(s)
    except ValueError:
        return True
    return False


_WORD = st.from_regex(r"[A-Za-z][A-Za-z_]{0,12}", fullmatch=True).filter(_is_yaml_str)

INT_KEYS_TRAIN = ["seed", "steps", "batch_size", "warmup_steps", "checkpoint_every", "eval_every", "log_every",
                  "keep_checkpoints", "curriculum.dims_start", "curriculum.interval", "model.n_layer"]
INT_KEYS_GEN = ["seed", "episodes", "shards", "row_group_size", "compression_level", "task.d", "task.points"]
FLOAT_KEYS = ["lr", "min_lr_ratio", "grad_clip", "task.weight_multiplier", "cpus_per_worker"]


@FAST
@given(data=st.data(), word=_WORD)
def test_wrongly_typed_values_are_rejected_by_name(data, word):
    """A (YAML) string where a number is expected -> ConfigError whose message starts with
    the dotted key. Strings Python can read as a float ('inf', 'nan', 'infinity') are a
    number for float fields by design (PyYAML reads '3e-4' as a string), so excluded there."""
    cls, key = data.draw(st.one_of(
        st.tuples(st.just(TrainConfig), st.sampled_from(INT_KEYS_TRAIN)),
        st.tuples(st.just(GenerateConfig), st.sampled_from(INT_KEYS_GEN)),
        st.tuples(st.just(TrainConfig), st.sampled_from(FLOAT_KEYS)).filter(lambda _: _not_a_float(word)),
    ))
    with pytest.raises(ConfigError) as err:
        load_config(cls, overrides=[f"{key}={word}"])
    assert str(err.value).startswith(f"{key}: "), str(err.value)
    # a boolean is not a number either
    with pytest.raises(ConfigError, match=re.escape(f"{key}: ")):
        load_config(cls, overrides=[f"{key}=true"])


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**9), _floats(-1e9, 1e9),
                       st.text(max_size=8))
_JSON = st.recursive(
    st.dictionaries(st.text(max_size=6), _JSON_LEAF, max_size=5),
    lambda inner: st.dictionaries(st.text(max_size=6), st.one_of(_JSON_LEAF, inner, st.lists(_JSON_LEAF, max_size=3)),
                                  max_size=5),
    max_leaves=20,
)


def _reorder(obj, rnd):
    if isinstance(obj, dict):
        keys = list(obj)
        rnd.shuffle(keys)
        return {k: _reorder(obj[k], rnd) for k in keys}
    return obj


def _leaf_paths(obj, prefix=()):
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from _leaf_paths(v, prefix + (k,))
    else:
        yield prefix


@FAST
@given(tree=_JSON.filter(lambda t: len(t) > 0), rnd=st.randoms(use_true_random=False), data=st.data())
def test_config_digest_ignores_key_order_and_sees_every_value(tree, rnd, data):
    d0 = config_digest(tree)
    assert re.fullmatch(r"[0-9a-f]{16}", d0)
    assert config_digest(_reorder(tree, rnd)) == d0
    path = data.draw(st.sampled_from(list(_leaf_paths(tree))))
    changed = json.loads(json.dumps(tree))
    node = changed
    for p in path[:-1]:
        node = node[p]
    old = node[path[-1]]
    new = data.draw(_JSON_LEAF.filter(lambda v: json.dumps(v) != json.dumps(old)))
    node[path[-1]] = new
    assert config_digest(changed) != d0


@FAST
@given(values=_overrides(GENERATE_FIELDS), rnd=st.randoms(use_true_random=False), data=st.data())
def test_config_digest_of_dataclass_is_stable_across_override_order(values, rnd, data):
    items = [_override(k, v) for k, v in values.items()]
    cfg = load_config(GenerateConfig, overrides=items)
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert config_digest(load_config(GenerateConfig, overrides=shuffled)) == config_digest(cfg)
    assert config_digest(cfg) == config_digest(to_dict(cfg))
    key = data.draw(st.sampled_from(sorted(GENERATE_FIELDS)))
    new = data.draw(GENERATE_FIELDS[key].filter(lambda v: v != _get(cfg, key)))
    assert config_digest(load_config(GenerateConfig, overrides=items + [_override(key, new)])) != config_digest(cfg)


# =============================================================================== 2. grid cell ids

_NAME = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_CELL = st.builds(
    Cell,
    dataset=_NAME,
    dataset_options=st.dictionaries(st.text(max_size=5), st.integers(0, 1000), max_size=3).map(
        lambda d: json.dumps(d, sort_keys=True)),
    backbone=_NAME,
    protocol=st.sampled_from(["stream", "vanilla", "loo", "prompt"]),
    method=st.sampled_from(["tart", "lr_probe", "lr_full", "icl"]),
    reasoner=_NAME,
    reasoner_digest=st.from_regex(r"[0-9a-f]{16}|-", fullmatch=True),
    k=st.integers(1, 1024),
    seed=st.integers(0, 10**6),
)
_FIELD_STRATS = {
    "dataset": _NAME, "dataset_options": st.text(max_size=20), "backbone": _NAME,
    "protocol": _NAME, "method": _NAME, "reasoner_digest": st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    "k": st.integers(1, 1024), "seed": st.integers(0, 10**6),
}


@FAST
@given(cell=_CELL, data=st.data())
def test_cell_id_is_deterministic_and_sees_every_result_field(cell, data):
    cid = cell.cell_id
    assert re.fullmatch(r"[0-9a-f]{20}", cid)
    assert Cell(**dataclasses.asdict(cell)).cell_id == cid  # deterministic, value-based
    for name, strat in _FIELD_STRATS.items():
        new = data.draw(strat.filter(lambda v, old=getattr(cell, name): v != old), label=name)
        assert dataclasses.replace(cell, **{name: new}).cell_id != cid, name
    # the reasoner *path* does not decide the result (its weights digest does)
    other = data.draw(_NAME, label="reasoner")
    assert dataclasses.replace(cell, reasoner=other).cell_id == cid


# =============================================================================== 3. shard split

@FAST
@example(n=1, s=1)
@example(n=32768, s=32)
@example(n=33, s=32)
@given(n=st.integers(1, 10**7), s=st.integers(1, 400))
def test_shard_bounds_partition_the_episodes(n, s):
    assume(s <= n)  # GenerateConfig.validate rejects shards > episodes
    bounds = [shard_bounds(n, s, i) for i in range(s)]
    counts = [c for _, c in bounds]
    assert sum(counts) == n
    assert max(counts) - min(counts) <= 1
    assert min(counts) >= 1
    assert bounds[0][0] == 0
    for (a, ca), (b, _) in zip(bounds, bounds[1:]):
        assert a + ca == b  # contiguous and disjoint
    assert bounds[-1][0] + bounds[-1][1] == n
    # as documented: shard i gets N//S (+1 for i < N%S)
    assert counts == [n // s + (1 if i < n % s else 0) for i in range(s)]


# =============================================================================== 4. whitening / methods

@st.composite
def degenerate_context(draw, max_k=40, max_D=24):
    """(Xc, d): a random context with some of: constant columns, duplicate rows, a huge or
    tiny overall scale, widely spread column scales, D < d. k > d always.

    Offsets (column means, constants) stay within 1e3 x the data scale and the context is
    never all-identical rows: see the xfail tests below for the centring bug beyond that."""
    k = draw(st.integers(3, max_k))
    d = draw(st.integers(1, k - 1))
    D = draw(st.integers(1, max_D))
    seed = draw(st.integers(0, 2**32 - 1))
    log_scale = draw(st.floats(-8, 8))
    col_spread = draw(st.sampled_from([0.0, 2.0, 6.0]))  # decades of per-column scale spread
    n_const = draw(st.integers(0, D))
    n_dup = draw(st.integers(0, k - 2))
    rng = np.random.default_rng(seed)
    s = 10.0**log_scale
    col_scale = 10.0 ** rng.uniform(-col_spread, 0, D)
    X = rng.normal(size=(k, D)) * col_scale * s + rng.uniform(-1e3, 1e3, D) * s
    const_cols = rng.choice(D, n_const, replace=False)
    X[:, const_cols] = rng.uniform(-1e3, 1e3, n_const) * s
    if n_dup:
        src = rng.integers(0, k, n_dup)
        dst = rng.choice(k, n_dup, replace=False)
        X[dst] = X[src]
    return X, d


@FEW
@given(ctx=degenerate_context(), q_seed=st.integers(0, 2**32 - 1))
# found by hypothesis: a column near 989.805 with a spread of ~1e-6 (the centring tolerance)
@example(ctx=(989.80501 + np.random.default_rng(3).uniform(-2e-6, 2e-6, (31, 1)), 1), q_seed=0)
def test_whitening_is_finite_d_wide_and_white_on_data_directions(ctx, q_seed):
    Xc, d = ctx
    k, D = Xc.shape
    # an all-identical context hits the fit_whitening centring bug (xfail tests below)
    assume(np.ptp(Xc, axis=0).max() > 0)
    w = fit_whitening(Xc, d=d)
    Z = w.transform(Xc)
    assert Z.shape == (k, d) and np.isfinite(Z).all()
    Xq = np.random.default_rng(q_seed).normal(size=(5, D)) * np.abs(Xc).max() * 10 + Xc.mean(0)
    Zq = w.transform(Xq)
    assert Zq.shape == (5, d) and np.isfinite(Zq).all()
    info = w.scale > 0
    assert int(info.sum()) == w.n_informative <= min(d, D, k - 1)
    # directions without data map everything (context and queries) to exactly 0
    assert (Z[:, ~info] == 0).all() and (Zq[:, ~info] == 0).all()
    # informative directions come first and are sorted by variance
    assert (np.diff(info.astype(int)) <= 0).all()
    assert (np.diff(w.variances[info]) <= 1e-12 * w.variances.max()).all()
    # whitened context: centred, diagonal covariance var/(var + eps*vmax) -> ~1 where the
    # direction carries a non-negligible share of the variance
    if w.n_informative:
        vmax = w.variances.max()
        # centring leaves ~eps*|x| per value; whitening divides it by the smallest kept std
        # (inputs like 989.805 +- 1e-6 make that 1.6e-7: float64 cancellation, not a bug)
        resid = 50 * np.finfo(float).eps * np.abs(Xc).max() / np.sqrt(w.variances[info].min())
        np.testing.assert_allclose(Z.mean(0), 0, atol=max(1e-7, resid))
        C = np.cov(Z, rowvar=False, ddof=1).reshape(d, d)
        want = np.zeros(d)
        want[info] = w.variances[info] / (w.variances[info] + DEFAULT_EPS * vmax)
        np.testing.assert_allclose(C, np.diag(want), atol=1e-6)
        big = w.variances >= 1e-3 * vmax
        np.testing.assert_allclose(np.diag(C)[big], 1.0, atol=2e-3)
    # determinism
    np.testing.assert_array_equal(fit_whitening(Xc, d=d).transform(Xq), Zq)


_WHITENING_BUG = (
    "BUG pipeline/methods.py fit_whitening: centring is one-pass (C = Xc - Xc.mean(0)); when a column is "
    "constant (or all context rows are identical) and its value is not exactly reproduced by the mean's "
    "rounding (e.g. 825.51115456 over 3 rows: mean - value = -1.1e-13), the centred column is a nonzero "
    "constant. The SVD turns that rounding residue into an 'informative' direction (var ~1e-26 > "
    "RANK_RTOL*vmax, or the top direction itself when all rows are identical); its whitened context "
    "column is constant (variance 0, not ~1) and its scale is huge (~7e12), so a query that differs "
    "in that feature is mapped to ~1e11-1e13 instead of 0 as the module docstring promises. Fix: "
    "zero the centred columns whose context range np.ptp(Xc, 0) is 0 (or centre twice)."
)


@settings(max_examples=20, deadline=None)
@example(v=[825.51115456], k=3)
@given(v=st.lists(_floats(-1e3, 1e3), min_size=1, max_size=64), k=st.integers(2, 40))
def test_whitening_of_identical_rows_maps_everything_to_zero(v, k):
    """Docstring: 'all-identical rows ... are mapped to 0'. Fails whenever mean(v) != v in floats."""
    X = np.tile(np.asarray(v), (k, 1))
    w = fit_whitening(X, d=1)
    assert w.n_informative == 0
    assert (w.transform(X + 0.01) == 0).all()


@settings(max_examples=20, deadline=None)
@example(const=123456.789, log_scale=-8.0)
@given(const=_floats(1e3, 1e7), log_scale=st.floats(-9, -7))
def test_whitening_constant_column_with_large_offset_is_not_a_direction(const, log_scale):
    base = np.array([[1, 2], [-2, 1], [0.5, -1], [3, 0], [-1, 0.7]], dtype=float) * 10.0**log_scale
    X = np.hstack([base, np.full((5, 1), const)])
    w = fit_whitening(X, d=3)
    assert w.n_informative == fit_whitening(base, d=3).n_informative == 2
    q = X[:1].copy()
    q[0, 2] += 1.0
    assert w.transform(q)[0, 2] == 0.0


class _DummyReasoner:
    """Stands in for a loaded reasoner; must never be asked to predict in these tests."""

    d = 16
    max_k = 256

    def predict_proba(self, *a, **kw):  # pragma: no cover - reaching it is a failure
        raise AssertionError("the reasoner must not run")


@FAST
@given(k=st.integers(1, 60), D=st.integers(1, 20), q=st.integers(0, 7), c=st.sampled_from([0, 1]),
       method=st.sampled_from(["tart", "lr_probe", "lr_full"]), seed=st.integers(0, 2**32 - 1))
def test_one_class_contexts(k, D, q, c, method, seed):
    rng = np.random.default_rng(seed)
    Xc, Xq = rng.normal(size=(k, D)), rng.normal(size=(q, D))
    yc = np.full(k, c)
    reasoner = _DummyReasoner() if method == "tart" else None
    with pytest.raises(MethodError, match="one-class context"):
        run_method(method, Xc, yc, Xq, reasoner=reasoner)
    p = run_method(method, Xc, yc, Xq, reasoner=reasoner, one_class="constant")
    assert p.shape == (q,)
    assert np.all(p == ((k + 1) / (k + 2) if c == 1 else 1 / (k + 2)))


@FAST
@given(d=st.integers(1, 16), data=st.data())
def test_k_not_above_d_is_rejected(d, data):
    k = data.draw(st.integers(2, d), label="k") if d >= 2 else 2
    assume(k <= d)
    D = data.draw(st.integers(1, 30), label="D")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    Xc, Xq = rng.normal(size=(k, D)), rng.normal(size=(3, D))
    yc = np.arange(k) % 2  # both classes present
    with pytest.raises(MethodError, match=f"k={k} context points for d={d}"):
        fit_whitening(Xc, d=d)
    for method, reasoner in (("lr_probe", None), ("tart", _DummyReasoner())):  # the registry's k limits
        with pytest.raises(MethodError, match=rf"k={k} <= d={d}: .* needs k > d"):
            run_method(method, Xc, yc, Xq, reasoner=reasoner, d=d)
    # allow_small_k: still d columns, finite, at most k-1 directions carry data
    w = fit_whitening(Xc, d=d, allow_small_k=True)
    Z = w.transform(Xq)
    assert Z.shape == (3, d) and np.isfinite(Z).all()
    assert w.n_informative <= k - 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctx=degenerate_context(max_k=30, max_D=12), method=st.sampled_from(["lr_probe", "lr_full"]),
       seed=st.integers(0, 2**32 - 1))
def test_linear_methods_give_probabilities_on_degenerate_contexts(ctx, method, seed):
    Xc, d = ctx
    k = len(Xc)
    rng = np.random.default_rng(seed)
    yc = rng.permutation(np.arange(k) % 2)
    Xq = np.vstack([Xc[:2], Xc.mean(0, keepdims=True)])
    opts = {"d": d} if method == "lr_probe" else {}
    p = run_method(method, Xc, yc, Xq, **opts)
    assert p.shape == (3,) and np.isfinite(p).all() and ((0 <= p) & (p <= 1)).all()


# =============================================================================== 5. context sets

@st.composite
def labels_and_ks(draw):
    ks = sorted(draw(st.lists(st.integers(1, 40).map(lambda x: 2 * x), min_size=1, max_size=5, unique=True)))
    half = ks[-1] // 2
    n0 = draw(st.integers(half, half + 30))
    n1 = draw(st.integers(half, half + 30))
    perm_seed = draw(st.integers(0, 2**32 - 1))
    y = np.random.default_rng(perm_seed).permutation(np.r_[np.zeros(n0, int), np.ones(n1, int)])
    return y, ks


@FAST
@given(lk=labels_and_ks(), seed=st.integers(0, 2**32 - 1), rnd=st.randoms(use_true_random=False))
def test_context_sets_are_balanced_nested_unique_and_deterministic(lk, seed, rnd):
    y, ks = lk
    sets = context_sets(y, ks, seed)
    assert list(sets) == ks
    prev = np.zeros(0, dtype=np.int64)
    for k in ks:
        idx = sets[k]
        assert idx.dtype == np.int64 and idx.shape == (k,)
        assert len(np.unique(idx)) == k
        assert ((0 <= idx) & (idx < len(y))).all()
        assert (y[idx] == 0).sum() == k // 2 and (y[idx] == 1).sum() == k // 2
        np.testing.assert_array_equal(idx[: len(prev)], prev)  # nested as prefixes
        prev = idx
    again = context_sets(y.tolist(), ks, seed)
    for k in ks:
        np.testing.assert_array_equal(again[k], sets[k])
    # the order ks are given in does not change the sets (only the dict order)
    shuffled = list(ks)
    rnd.shuffle(shuffled)
    other = context_sets(y, shuffled, seed)
    assert list(other) == shuffled
    for k in ks:
        np.testing.assert_array_equal(other[k], sets[k])


@FAST
@given(lk=labels_and_ks(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_context_sets_stay_in_the_pool(lk, seed, data):
    y, ks = lk
    # a pool that still has enough of each class; everything else is "test"
    half = ks[-1] // 2
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    pool = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y == c), data.draw(st.integers(half, int((y == c).sum()))), replace=False)
        for c in (0, 1)
    ]))
    test = np.setdiff1d(np.arange(len(y)), pool)
    sets = context_sets(y, ks, seed, pool_ids=pool, exclude=test)
    for k in ks:
        assert np.isin(sets[k], pool).all()
        assert not np.isin(sets[k], test).any()


# =============================================================================== 6. synthetic task

_SPEC = st.builds(
    TaskSpec,
    d=st.integers(1, 8),
    points=st.integers(2, 40),
    weight_multiplier=_floats(1.0, 20.0),
    variable_multiplier=st.booleans(),
)


def _sigmoid64(z):
    return 1.0 / (1.0 + np.exp(-z))


@FAST
@given(spec=_SPEC, n=st.integers(1, 8), seed=st.integers(0, 2**63))
def test_episode_labels_are_u_below_sigmoid(spec, n, seed):
    ep = sample_episodes_np(spec, n, np.random.default_rng(seed))
    assert ep.w.shape == (n, spec.d) and ep.x.shape == (n, spec.points, spec.d) and ep.u.shape == (n, spec.points)
    y = ep.y
    assert y.dtype == np.int8 and set(np.unique(y)) <= {0, 1}
    s = _sigmoid64(np.einsum("npd,nd->np", ep.x.astype(np.float64), ep.w.astype(np.float64)))
    clear = np.abs(ep.u - s) > 1e-4  # float32 vs float64 only matters right at the boundary
    np.testing.assert_array_equal(y[clear], (ep.u < s)[clear].astype(np.int8))
    if spec.variable_multiplier:
        assert set(np.unique(ep.scale)) <= set(range(1, int(spec.weight_multiplier) + 1))
    else:
        assert (ep.scale == np.float32(spec.weight_multiplier)).all()


@FAST
@given(spec=_SPEC, n=st.integers(1, 6), seed=st.integers(0, 2**63), data=st.data())
def test_curriculum_with_all_dims_reproduces_labels(spec, n, seed, data):
    import torch

    ep = sample_episodes_np(spec, n, np.random.default_rng(seed))
    P = data.draw(st.integers(1, spec.points), label="points")
    w, x, u = (torch.from_numpy(a) for a in (ep.w, ep.x, ep.u))
    xc, yc = apply_curriculum(w, x, u, active_dims=spec.d, points=P)
    assert tuple(xc.shape) == (n, P, spec.d) and tuple(yc.shape) == (n, P)
    np.testing.assert_array_equal(xc.numpy(), ep.x[:, :P])
    s = _sigmoid64(np.einsum("npd,nd->np", ep.x.astype(np.float64), ep.w.astype(np.float64)))[:, :P]
    clear = np.abs(ep.u[:, :P] - s) > 1e-4  # torch vs numpy sigmoid/einsum rounding at the boundary
    np.testing.assert_array_equal(yc.numpy()[clear], ep.y[:, :P][clear].astype(np.float32))
    # fewer active dims: the inactive coordinates are zeroed and labels follow the restricted task
    a = data.draw(st.integers(0, spec.d), label="active_dims")
    xa, ya = apply_curriculum(w, x, u, active_dims=a, points=P)
    assert (xa.numpy()[:, :, a:] == 0).all()
    np.testing.assert_array_equal(xa.numpy()[:, :, :a], ep.x[:, :P, :a])
    sa = _sigmoid64(np.einsum("npd,nd->np", ep.x[:, :P, :a].astype(np.float64), ep.w[:, :a].astype(np.float64)))
    clear = np.abs(ep.u[:, :P] - sa) > 1e-4
    np.testing.assert_array_equal(ya.numpy()[clear], (ep.u[:, :P] < sa)[clear].astype(np.float32))
    # the inputs are not modified in place
    np.testing.assert_array_equal(x.numpy(), ep.x)
    np.testing.assert_array_equal(w.numpy(), ep.w)


@FAST
@given(spec=_SPEC, n=st.integers(1, 8), seed=st.integers(0, 2**63))
def test_numpy_sampler_is_byte_exact_per_seed(spec, n, seed):
    a = sample_episodes_np(spec, n, np.random.default_rng(seed))
    b = sample_episodes_np(spec, n, np.random.default_rng(seed))
    for name in ("w", "x", "u", "scale"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
        assert getattr(a, name).dtype == np.float32
    assert a.y.tobytes() == b.y.tobytes()
    c = sample_episodes_np(spec, n, np.random.default_rng(seed + 1))
    assert c.x.tobytes() != a.x.tobytes()
