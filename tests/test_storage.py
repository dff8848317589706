"""pipeline/storage.py on object-store URIs: a missing driver or missing credentials is one clear
error, raised by the stages' storage probes before any work (and no secret is ever printed).

s3fs / gcsfs are not part of the project's install, so the missing-driver path runs for real
here; the credentials path needs s3fs and is skipped without it. No network: the S3 endpoint
is 127.0.0.1:9 and botocore fails while signing, before any request.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from pipeline import embed as E
from pipeline import generate as gen
from pipeline import storage
from pipeline.storage import StorageError

pytestmark = pytest.mark.timeout(300)

SMALL = ["episodes=50", "shards=4", "task.d=4", "task.points=8", "executor=local"]
DRIVERS = [("s3://some-bucket/x", "s3fs"), ("gs://some-bucket/x", "gcsfs"), ("gcs://some-bucket/x", "gcsfs"),
           ("az://container/x", "adlfs"), ("abfs://container/x", "adlfs")]


def _needs_missing(pkg: str) -> None:
    if importlib.util.find_spec(pkg) is not None:
        pytest.skip(f"{pkg} is installed here")


@pytest.mark.parametrize("uri,pkg", DRIVERS, ids=[u.split(":")[0] for u, _ in DRIVERS])
def test_missing_driver_names_the_package_to_install(uri, pkg):
    _needs_missing(pkg)
    with pytest.raises(StorageError) as e:
        storage.resolve(uri)
    msg = str(e.value)
    assert uri in msg and f"pip install {pkg}" in msg and "driver is not installed" in msg


@pytest.mark.parametrize("stage", ["generate", "tart generate"])
def test_generate_to_s3_without_the_driver_fails_fast_writing_nothing(tmp_path, monkeypatch, capsys, stage):
    _needs_missing("s3fs")
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    argv = ["output=s3://bucket/x", *SMALL]
    rc = gen.main(argv) if stage == "generate" else cli.main(["generate", *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tart generate: error:" in err and "'s3://bucket/x'" in err and "pip install s3fs" in err
    assert list(tmp_path.iterdir()) == []


def test_grid_to_s3_without_the_driver_fails_fast_writing_nothing(tmp_path, monkeypatch, capsys):
    _needs_missing("s3fs")
    from pipeline import grid

    monkeypatch.chdir(tmp_path)
    rc = grid.main(["storage=s3://b/x", "datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[lr_full]",
                    "ks=[18]", "seeds=[0]", "executor=local", "test_size=20", "train_size=40",
                    f"cache_uri={tmp_path}/emb", f"mlflow_uri=sqlite:///{tmp_path}/mlflow.db"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tart grid: error:" in err and "pip install s3fs" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no cache, no MLflow db, no results


def test_embed_probes_its_cache_before_ray_or_any_dataset(tmp_path, monkeypatch, capsys, no_ray):
    _needs_missing("gcsfs")
    import ray

    monkeypatch.chdir(tmp_path)
    assert E.main(["cache_uri=gs://bucket/emb", "executor=ray"]) == 2  # the default executor starts Ray
    assert "pip install gcsfs" in capsys.readouterr().err
    assert not ray.is_initialized()
    # the library entry too: a bad dataset would raise DatasetError if anything ran before the probe
    cfg = E.EmbedConfig(dataset="nope", cache_uri="gs://bucket/emb", executor="local")
    with pytest.raises(StorageError, match="pip install gcsfs"):
        E.embed(cfg, log=lambda _m: None)
    assert list(tmp_path.iterdir()) == []


def test_secrets_in_a_uri_are_not_printed():
    with pytest.raises(StorageError) as e:
        storage.resolve("nosuchproto://user:hunter2@host/x")
    assert "hunter2" not in str(e.value) and "***@host/x" in str(e.value)


def test_a_local_error_is_not_called_a_credentials_problem(tmp_path):
    blocker = tmp_path / "403"  # "403" in a local path is not an HTTP status
    blocker.write_text("a file")
    out = str(blocker / "out")
    fs, path = storage.resolve(out)
    with pytest.raises(StorageError, match="is not writable") as e:
        storage.check_writable(fs, path, out)
    assert "credentials" not in str(e.value)


@pytest.fixture
def no_aws_credentials(tmp_path, monkeypatch):
    """No AWS credentials anywhere botocore looks: env, config files, instance metadata."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}}


def _assert_credentials_message(msg: str, uri: str) -> None:
    assert uri in msg and "credentials" in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg and "AWS_PROFILE" in msg and "IAM role" in msg


def test_missing_s3_credentials_are_one_clear_error(no_aws_credentials, tmp_path, monkeypatch, capsys):
    pytest.importorskip("s3fs")
    uri = "s3://some-bucket/x"
    fs, path = storage.resolve(uri, no_aws_credentials)
    with pytest.raises(StorageError) as e:
        storage.check_writable(fs, path, uri)
    _assert_credentials_message(str(e.value), uri)

    monkeypatch.chdir(tmp_path)
    opts = [f"storage_options.client_kwargs.{k}={v}" for k, v in no_aws_credentials["client_kwargs"].items()]
    assert gen.main([f"output={uri}", *SMALL, *opts]) == 2
    _assert_credentials_message(capsys.readouterr().err, uri)
