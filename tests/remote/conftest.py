"""Fixtures of the remote-script tests; the machinery lives in harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.remote.harness import FakeHost, SshServer, start_sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from start_sshd(tmp_path_factory)


@pytest.fixture
def host(sshd: SshServer) -> FakeHost:
    fake = FakeHost(sshd)
    fake.reset()
    return fake
