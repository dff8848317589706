"""Stage 1 `tart generate`: determinism, idempotence, atomicity, manifest, bad inputs.

Ray tests use the module-scoped `ray_local` fixture (tests/conftest.py) and tiny
episodes (d=4, points=8) so the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import generate as gen
from pipeline.config import load_config
from pipeline.storage import StorageError

REPO = Path(__file__).resolve().parents[1]
# cpus_per_task=1: at most 2 Ray worker processes on the 2 test CPUs, so only 2 cold starts per module
# (each cold worker imports pipeline -> torch, several seconds on a loaded 2-core box).
SMALL = ["episodes=50", "shards=4", "task.d=4", "task.points=8", "cpus_per_task=1"]


def cfg_for(output, *overrides, base=SMALL):
    return load_config(gen.GenerateConfig, None, [f"output={output}", *base, *overrides])


def quiet(*_a, **_k):
    pass


def shard_files(d: Path) -> list[Path]:
    return sorted(d.glob("part-*.parquet"))


def digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shard_files(d)}


def snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir())}


# ---------------------------------------------------------------- config


def test_yaml_configs_load_and_validate():
    for name in ("default", "small"):
        cfg = load_config(gen.GenerateConfig, REPO / "configs" / "generate" / f"{name}.yaml")
        assert cfg.shards <= cfg.episodes and cfg.compression == "zstd"
    small = load_config(gen.GenerateConfig, REPO / "configs/generate/small.yaml", ["seed=7"])
    assert small.seed == 7


@pytest.mark.parametrize(
    "override, needle",
    [
        ("bogus=1", "bogus"),
        ("task.bogus=1", "task.bogus"),
        ("shards=0", "shards=0"),
        ("shards=51", "shards=51 exceeds episodes=50"),
        ("task.points=1", "points=1"),
        ("episodes=0", "episodes=0"),
        ("compression=lz5", "compression='lz5'"),
        ("executor=dask", "executor='dask'"),
        ("seed=abc", "seed"),
    ],
)
def test_bad_config_is_rejected_before_any_write(tmp_path, capsys, override, needle):
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:  # ConfigError is a ValueError
        cfg_for(out, override)
    assert needle in str(e.value)
    # the CLI: exit status 2, message on stderr, nothing created
    rc = gen.main([f"output={out}", *SMALL, "executor=local", override])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_split_is_fixed_and_covers_all_episodes():
    bounds = [gen.shard_bounds(50, 4, i) for i in range(4)]
    assert bounds == [(0, 13), (13, 13), (26, 12), (38, 12)]


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        gen.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--config", "--address", "key=value"):
        assert opt in text
    for key in ("output=", "seed=0", "episodes=32768", "shards=32", "task.d=16", "task.points=258",
                "task.weight_multiplier=10.0", "task.variable_multiplier=false", 'compression="zstd"',
                "overwrite=false", 'executor="ray"', "cpus_per_task=0.5", "verify=true"):
        assert key in text, key


# ---------------------------------------------------------------- local (no Ray) behaviour


def test_manifest_schema_and_labels(tmp_path):
    out = tmp_path / "ep"
    report = gen.generate(cfg_for(out, "executor=local", "task.variable_multiplier=true"), log=quiet)
    assert len(report["written"]) == 4 and report["skipped"] == []
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_manifest.json"] + [f"part-0000{i}-of-00004.parquet" for i in range(4)]  # no _tmp/_probe

    man = json.loads((out / "_manifest.json").read_text())
    assert man["complete"] is True and man["format"] == "tart-episodes" and man["format_version"] == 1
    assert man["config"]["output"] == str(out) and man["data_config"]["seed"] == 0
    assert man["digest"] == report["digest"] and man["task"] == {"d": 4, "points": 8, "weight_multiplier": 10.0,
                                                                 "variable_multiplier": True}
    assert man["created"] and man["code_version"]["numpy"] == np.__version__
    assert [s["rows"] for s in man["shards"]] == [13, 13, 12, 12]
    assert [s["episode_start"] for s in man["shards"]] == [0, 13, 26, 38]
    for s in man["shards"]:
        data = (out / s["name"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["bytes"] == len(data)

    pf = pq.ParquetFile(out / "part-00001-of-00004.parquet")
    schema = pf.schema_arrow
    assert schema.remove_metadata().equals(gen.episode_schema(4, 8))
    xt = schema.field("x").type  # row-major (points, d) flattened
    assert pa.types.is_fixed_size_list(xt) and xt.list_size == 32 and xt.value_type == pa.float32()
    assert schema.metadata[b"tart.format_version"] == b"1"
    assert json.loads(schema.metadata[b"tart.config"])["task"]["points"] == 8
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    table = pf.read()
    assert table.column("episode_id").to_pylist() == list(range(13, 26))

    # labels stored in y agree with u and sigmoid(x . w), recomputed independently in float64
    ep, spec = gen.read_episodes(str(out))
    assert (spec.d, spec.points, spec.variable_multiplier) == (4, 8, True)
    assert ep.x.shape == (50, 8, 4) and ep.w.shape == (50, 4) and ep.u.shape == (50, 8) and ep.x.flags.writeable
    y_file = np.concatenate([pq.read_table(p).column("y").combine_chunks().flatten().to_numpy()
                             for p in shard_files(out)]).reshape(50, 8)
    assert y_file.dtype == np.int8
    np.testing.assert_array_equal(y_file, ep.y)
    p = 1.0 / (1.0 + np.exp(-np.einsum("npd,nd->np", ep.x.astype(np.float64), ep.w.astype(np.float64))))
    y64 = (ep.u < p).astype(np.int8)
    borderline = np.abs(ep.u - p) < 1e-4
    assert np.all((y64 == y_file) | borderline)
    assert 0.2 < y_file.mean() < 0.8
    # per-episode multiplier in {1..10}; w is N(0,1) * scale
    assert set(np.unique(ep.scale)) <= set(np.arange(1, 11, dtype=np.float32))
    assert np.all(np.isin(ep.scale, np.arange(1, 11)))


def test_unwritable_output_is_rejected_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "plainfile"
    blocker.write_text("not a directory")
    # A path under a regular file can never be created, even as root (chmod does not stop root).
    for out in (blocker / "ep", blocker):
        with pytest.raises(StorageError) as e:
            gen.generate(cfg_for(out, "executor=local"), log=quiet)
        assert str(out) in str(e.value)
        assert gen.main([f"output={out}", *SMALL, "executor=local"]) == 2
        assert str(out) in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"
    with pytest.raises(StorageError, match="nosuchproto"):
        gen.generate(cfg_for("nosuchproto://bucket/ep", "executor=local"), log=quiet)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores chmod 0o500")
def test_read_only_directory_is_rejected(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            gen.generate(cfg_for(ro / "ep", "executor=local"), log=quiet)
    finally:
        ro.chmod(0o700)


def test_different_config_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "ep"
    gen.generate(cfg_for(out, "executor=local"), log=quiet)
    before = snapshot(out)
    with pytest.raises(gen.GenerateError) as e:
        gen.generate(cfg_for(out, "executor=local", "seed=1"), log=quiet)
    msg = str(e.value)
    assert "seed: existing 0 vs requested 1" in msg and "overwrite=true" in msg and str(out) in msg
    assert snapshot(out) == before  # nothing touched

    report = gen.generate(cfg_for(out, "executor=local", "seed=1", "shards=2", "overwrite=true"), log=quiet)
    assert sorted(p.name for p in shard_files(out)) == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    man = json.loads((out / "_manifest.json").read_text())
    assert man["digest"] == report["digest"] != json.loads(before["_manifest.json"][1])["digest"]


def test_foreign_directory_is_refused(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(gen.GenerateError, match="thesis.tex"):
        gen.generate(cfg_for(out, "executor=local"), log=quiet)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_corrupt_truncated_or_foreign_shard_on_read(tmp_path):
    out = tmp_path / "ep"
    gen.generate(cfg_for(out, "executor=local"), log=quiet)
    target = out / "part-00002-of-00004.parquet"
    good = target.read_bytes()
    manifest_path = out / "_manifest.json"
    man = json.loads(manifest_path.read_text())

    target.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(gen.ShardError, match=r"part-00002-of-00004\.parquet: \d+ bytes, the manifest expects"):
        gen.read_episodes(str(out))

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, corrupt content
    target.write_bytes(bytes(flipped))
    with pytest.raises(gen.ShardError, match=r"part-00002-of-00004\.parquet: sha256 differs"):
        gen.read_episodes(str(out))

    def forge(data: bytes) -> None:  # a file the manifest vouches for (size, sha) but that is wrong inside
        target.write_bytes(data)
        m = json.loads(json.dumps(man))
        m["shards"][2].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        manifest_path.write_text(json.dumps(m))

    forge(b"PAR1 this is not parquet PAR1")
    with pytest.raises(gen.ShardError, match=r"part-00002-of-00004\.parquet: not a readable Parquet file"):
        gen.read_episodes(str(out))

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"a": [1, 2, 3]}), sink)
    forge(sink.getvalue().to_pybytes())
    with pytest.raises(gen.ShardError, match=r"part-00002-of-00004\.parquet: foreign schema; expected"):
        gen.read_episodes(str(out))

    manifest_path.write_text(json.dumps(man))
    target.unlink()
    with pytest.raises(gen.ShardError, match=r"part-00002-of-00004\.parquet: missing"):
        gen.read_episodes(str(out))
    with pytest.raises(gen.ShardError, match="no _manifest.json"):
        gen.read_episodes(str(tmp_path / "nothing"))


# ---------------------------------------------------------------- through Ray


@pytest.mark.timeout(120)
def test_bytes_identical_across_parallelism(tmp_path, ray_local):
    plain = tmp_path / "plain"
    gen.generate(cfg_for(plain, "executor=local"), log=quiet)
    ref = digests(plain)
    assert len(ref) == 4
    # 2 concurrent tasks (1 CPU each on 2 CPUs) and 1 task at a time (2 CPUs each)
    for cpus in (1, 2):
        out = tmp_path / f"ray-{cpus}"
        report = gen.generate(cfg_for(out, "executor=ray", f"cpus_per_task={cpus}"), log=quiet)
        assert len(report["written"]) == 4
        assert digests(out) == ref
    m1 = json.loads((plain / "_manifest.json").read_text())
    m2 = json.loads((tmp_path / "ray-1" / "_manifest.json").read_text())
    assert m1["shards"] == m2["shards"] and m1["digest"] == m2["digest"]
    # a different seed gives different data
    other = tmp_path / "seed1"
    gen.generate(cfg_for(other, "executor=local", "seed=1"), log=quiet)
    assert set(digests(other).values()).isdisjoint(ref.values())


@pytest.mark.timeout(120)
def test_rerun_skips_complete_shards_and_repairs_the_rest(tmp_path, ray_local):
    out = tmp_path / "ep"
    gen.generate(cfg_for(out, "executor=ray"), log=quiet)
    ref, before = digests(out), snapshot(out)

    again = gen.generate(cfg_for(out, "executor=ray"), log=quiet)
    assert again["written"] == [] and len(again["skipped"]) == 4
    assert snapshot(out) == before  # no file rewritten, manifest included (mtime_ns unchanged)

    (out / "part-00000-of-00004.parquet").unlink()  # lost
    bad = out / "part-00003-of-00004.parquet"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))  # silently corrupted, same size
    repair = gen.generate(cfg_for(out, "executor=ray"), log=quiet)
    assert repair["written"] == ["part-00000-of-00004.parquet", "part-00003-of-00004.parquet"]
    assert repair["skipped"] == ["part-00001-of-00004.parquet", "part-00002-of-00004.parquet"]
    after = snapshot(out)
    for name in repair["skipped"]:
        assert after[name] == before[name]
    assert digests(out) == ref
    gen.read_episodes(str(out))


@pytest.mark.timeout(120)
def test_crashed_task_leaves_no_partial_shard_and_resume_finishes(tmp_path, ray_local):
    out = tmp_path / "ep"
    with pytest.raises(gen.GenerateError, match=r"shard 1: .*injected failure"):
        gen.generate(cfg_for(out, "executor=ray", "fail_at_shard=1"), log=quiet)
    assert not (out / "part-00001-of-00004.parquet").exists()  # never visible under its final name
    assert any(p.name.startswith("_tmp-") for p in out.iterdir())  # the half-written temp file
    man = json.loads((out / "_manifest.json").read_text())
    assert man["complete"] is False and len(man["shards"]) == 3
    with pytest.raises(gen.ShardError, match="incomplete"):
        gen.read_episodes(str(out))

    report = gen.generate(cfg_for(out, "executor=ray"), log=quiet)  # fail_at_shard is not part of the data
    assert report["written"] == ["part-00001-of-00004.parquet"] and len(report["skipped"]) == 3
    assert not [p.name for p in out.iterdir() if p.name.startswith(("_tmp-", "_probe-"))]
    ref = tmp_path / "ref"
    gen.generate(cfg_for(ref, "executor=local"), log=quiet)
    assert digests(out) == digests(ref)


@pytest.mark.timeout(120)
def test_memory_uri_round_trip(tmp_path, ray_local):
    # memory:// is private to each process: Ray tasks return the bytes and the driver writes them.
    uri = f"memory://tart-test-{uuid.uuid4().hex[:8]}/ep"
    try:
        report = gen.generate(cfg_for(uri, "executor=ray"), log=quiet)
        assert len(report["written"]) == 4
        fs = fsspec.filesystem("memory")
        names = sorted(n.rsplit("/", 1)[-1] for n in fs.ls(uri, detail=False))
        assert names[0] == "_manifest.json" and len(names) == 5
        ep, spec = gen.read_episodes(uri)
        assert ep.x.shape == (50, 8, 4) and spec.points == 8
        local = tmp_path / "local"
        gen.generate(cfg_for(local, "executor=local"), log=quiet)
        ep2, _ = gen.read_episodes(str(local))
        np.testing.assert_array_equal(ep.x, ep2.x)
        np.testing.assert_array_equal(ep.u, ep2.u)
        for name, sha in digests(local).items():
            assert hashlib.sha256(fs.cat_file(f"{uri}/{name}")).hexdigest() == sha
        assert gen.generate(cfg_for(uri, "executor=local"), log=quiet)["written"] == []
    finally:
        fsspec.filesystem("memory").rm(uri.split("/ep")[0], recursive=True)


@pytest.mark.timeout(120)
def test_cli_end_to_end(tmp_path, ray_local, capsys):
    out = tmp_path / "cli"
    rc = gen.main(["--config", str(REPO / "configs/generate/small.yaml"), f"output={out}", "episodes=20",
                   "shards=2", "task.points=8", "cpus_per_task=1"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["written"] == 2 and printed["episodes_written"] == 20
    ep, spec = gen.read_episodes(str(out))
    assert len(ep.w) == 20 and spec.points == 8
