"""etcd snapshots to S3: stack fields, secrets delivered as a 0600 file, NixOS flags (nixlite)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components import config
from components.config import ConfigError
from components.hosts import render
from components.stack import parse_cluster
from tests.conftest import PROJECT_DIR, run_plan, stack_data
from tooling import plan

ACCESS_KEY = "AKIAPLANTEDKEYID4711"
SECRET_KEY = "planted/S3+secret=value-0815"
S3 = {"endpoint": "fsn1.your-objectstorage.com", "bucket": "prod-etcd", "region": "fsn1"}
SECRETS = {config.ETCD_S3_ACCESS_KEY: ACCESS_KEY, config.ETCD_S3_SECRET_KEY: SECRET_KEY}
NIXLITE = PROJECT_DIR.parent / "shared/nixlite/eval-project-host.sh"


def with_s3(**fields: Any) -> dict[str, Any]:
    data = stack_data("prod")
    data["k3s"]["etcdSnapshots"]["s3"] = {**S3, **fields}
    return data


@pytest.fixture(scope="module")
def s3_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s3") / "plan"
    result = run_plan(with_s3(), stack="prod", extra=SECRETS, secret_keys=frozenset(SECRETS))
    plan.write_plan(result, out)
    return out


def host(plan_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((plan_dir / "hosts" / f"{name}.json").read_text())


def test_servers_upload_to_the_bucket_and_agents_do_not(s3_plan: Path) -> None:
    for name in ("prod-control-1", "prod-control-2", "prod-control-3"):
        assert host(s3_plan, name)["k3s"]["etcdSnapshots"]["s3"] == {
            "endpoint": "fsn1.your-objectstorage.com",
            "bucket": "prod-etcd",
            "folder": "prod",  # default: the cluster name
            "region": "fsn1",
            "environmentFile": render.ETCD_S3_ENV_FILE,
        }
    assert host(s3_plan, "prod-workers-1")["k3s"]["etcdSnapshots"]["s3"] is None


def test_keys_are_secret_everywhere_in_the_plan(s3_plan: Path) -> None:
    for file in s3_plan.rglob("*"):
        if file.is_file():
            text = file.read_text()
            assert ACCESS_KEY not in text and SECRET_KEY not in text, file
            encoded = base64.b64encode(f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}".encode()).decode()
            assert encoded[:20] not in text
    document = json.loads((s3_plan / "plan.json").read_text())
    by_name = {r["name"]: r for r in document["resources"]}
    assert by_name["prod-control-2-secrets"]["inputs"]["stdin"] == "[secret]"


def test_the_server_secret_bundle_carries_the_key_file() -> None:
    result = run_plan(with_s3(), stack="prod", extra=SECRETS, secret_keys=frozenset(SECRETS))
    bundles = {
        reg.name: reg.secret_paths.get("stdin")
        for reg in result.registrations
        if reg.name.endswith("-secrets")
    }
    server_lines = str(bundles["prod-control-1-secrets"]).splitlines()
    [line] = [x for x in server_lines if x.startswith(render.ETCD_S3_ENV_FILE)]
    path, mode, content = line.split("\t")
    assert path == render.ETCD_S3_ENV_FILE
    assert mode == "0600"
    assert base64.b64decode(content).decode() == (
        f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
    )
    agent_bundle = str(bundles["prod-workers-1-secrets"])
    assert render.ETCD_S3_ENV_FILE not in agent_bundle


def test_folder_region_and_endpoint_are_checked_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cluster(with_s3(endpoint="https://fsn1.your-objectstorage.com", folder="/x/"))
    text = str(caught.value)
    assert "k3s.etcdSnapshots.s3.endpoint" in text and "without a scheme" in text
    assert "k3s.etcdSnapshots.s3.folder" in text
    with pytest.raises(ConfigError) as caught:
        parse_cluster(with_s3(bucket="Prod_Etcd"))
    assert "k3s.etcdSnapshots.s3.bucket" in str(caught.value)


def test_s3_needs_scheduled_snapshots() -> None:
    data = with_s3()
    data["k3s"]["etcdSnapshots"]["enabled"] = False
    with pytest.raises(ConfigError) as caught:
        parse_cluster(data)
    assert [p.path for p in caught.value.problems] == ["k3s.etcdSnapshots.s3"]
    assert "needs k3s.etcdSnapshots.enabled: true" in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "secret_keys", "expected"),
    [
        ({}, frozenset(), "k3s.etcdSnapshots.s3 is set but this is not"),
        (SECRETS, frozenset(), "is stored in plain text in the stack file"),
        (
            {**SECRETS, config.ETCD_S3_SECRET_KEY: "with space"},
            frozenset(SECRETS),
            "has characters an S3 key does not have",
        ),
    ],
    ids=["missing", "plain-text", "bad-characters"],
)
def test_key_problems_stop_the_plan_without_echoing_them(
    tmp_path: Path, extra: dict[str, str], secret_keys: frozenset[str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        run_plan(with_s3(), stack="prod", extra=extra, secret_keys=secret_keys)
    text = str(caught.value)
    assert expected in text
    assert "pulumi config set --secret nixos-k3s:etcdS3" in text
    assert ACCESS_KEY not in text and SECRET_KEY not in text and "with space" not in text


@pytest.mark.skipif(
    shutil.which("nix-instantiate") is None or not NIXLITE.exists(),
    reason="needs nix-instantiate and ../shared/nixlite",
)
@pytest.mark.parametrize("name", ["prod-control-1", "prod-control-2", "prod-workers-1"])
def test_hosts_evaluate_with_real_nixpkgs_modules(s3_plan: Path, name: str) -> None:
    done = subprocess.run(
        [str(NIXLITE), ".", str(s3_plan / "hosts" / f"{name}.json")],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    warnings = [
        line
        for line in done.stderr.splitlines()
        if line.startswith("warning:") and "agentToken" not in line
    ]
    assert warnings == []
    k3s = json.loads(done.stdout)["host"]["k3s"]
    flags = k3s["execStart"]
    if name.startswith("prod-control"):
        assert k3s["environmentFile"] == render.ETCD_S3_ENV_FILE
        for flag in (
            "--etcd-s3 ",
            "--etcd-s3-endpoint=fsn1.your-objectstorage.com",
            "--etcd-s3-bucket=prod-etcd",
            "--etcd-s3-folder=prod",
            "--etcd-s3-region=fsn1",
        ):
            assert flag in flags
    else:
        assert k3s["environmentFile"] is None and "--etcd-s3" not in flags
    assert "access-key" not in flags and "secret-key" not in flags
