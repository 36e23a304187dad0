"""Every shell script the project ships, and the stand-ins here, pass shellcheck."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from components.scripts import SCRIPTS_DIR

HERE = Path(__file__).parent
NIXOS_MODULES = HERE.parents[1] / "nixos" / "modules"


def shell_files() -> list[Path]:
    stand_ins = [*(HERE / "fakebin").iterdir(), *(HERE / "fake-system").iterdir()]
    shipped = [*SCRIPTS_DIR.glob("*.sh"), *NIXOS_MODULES.glob("*.sh")]
    return sorted(shipped) + sorted(stand_ins)


def test_there_are_scripts_to_check() -> None:
    names = {path.name for path in shell_files()}
    assert {
        "deploy.sh",
        "host-activate.sh",
        "install.sh",
        "nixos-rebuild",
        "k3s-pre-pull.sh",
        "k3s-cni-fetch.sh",
    } <= names


@pytest.mark.parametrize("path", shell_files(), ids=lambda path: path.name)
def test_shellcheck_clean(path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "--external-sources", "--shell=bash", "--severity=style", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout
