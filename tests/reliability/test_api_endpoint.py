"""apiEndpoint has one grammar: the stack check, the TLS SANs, the stack output and kubeconfig.sh
all read it the same way."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from components import rules
from components.scripts import SCRIPTS_DIR
from tests.conftest import Plan, run_plan, stack_data

ACCEPTED = {
    "10.0.0.5": "https://10.0.0.5:6443",
    "api.example.com": "https://api.example.com:6443",
    "api.example.com:443": "https://api.example.com:443",
    "https://api.example.com": "https://api.example.com:6443",
    "https://lb.example.com:6443": "https://lb.example.com:6443",
    "API.Example.COM": "https://api.example.com:6443",
    "[2001:db8::1]": "https://[2001:db8::1]:6443",
    "https://[2001:db8::1]:8443": "https://[2001:db8::1]:8443",
    "[1:2:3:4:5:6:7:8]:1": "https://[1:2:3:4:5:6:7:8]:1",
    "[2001:db8::abcd]": "https://[2001:db8::abcd]:6443",
    "[::1]:65535": "https://[::1]:65535",
    "k8s-1.internal": "https://k8s-1.internal:6443",
    "203.0.113.7:6443": "https://203.0.113.7:6443",
}
REFUSED = [
    "",
    "https://",
    "999.999.999.999/99",
    "999.999.999.999",
    "010.0.0.1",
    "1.2.3",
    "2001:db8::1",
    "2001:db8::1:6443",
    "api.example.com:443:6443",
    "http://api.example.com",
    "HTTPS://api.example.com",
    "https://api.example.com/",
    "https://api.example.com/k8s",
    "user@api.example.com",
    "api.example.com:0",
    "api.example.com:070",
    "api.example.com:70000",
    "api.example.com:",
    "api example.com",
    "api.example.com\n",
    " api.example.com",
    "Bad_Name!",
    "-api.example.com",
    "api..example.com",
    "api.example.com.",
    "[2001:db8::1",
    "[2001:db8::1]x",
    "[2001:db8::1]:",
    "[1::2::3]",
    "[1:2:3:4:5:6:7:8:9]",
    "[12345::1]",
    "[fe80::1%eth0]",
    "[api.example.com]",
    "a" * 64 + ".example.com",
]


def kubeconfig_server(endpoint: str, tmp_path: Path) -> tuple[int, str]:
    """kubeconfig.sh's server URL for `endpoint` (run locally on a k3s-shaped kubeconfig)."""
    source = tmp_path / "k3s.yaml"
    source.write_text(
        "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\n"
        "  name: default\ncurrent-context: default\n"
    )
    done = subprocess.run(
        ["bash", str(SCRIPTS_DIR / "kubeconfig.sh"), endpoint, "prod"],
        env={"K3S_KUBECONFIG": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    servers = [
        line.split("server: ", 1)[1] for line in done.stdout.splitlines() if "server: " in line
    ]
    return done.returncode, servers[0] if servers else done.stderr


@pytest.mark.parametrize(("endpoint", "url"), ACCEPTED.items())
def test_accepted_endpoints_give_one_url_in_python_and_kubeconfig_sh(
    endpoint: str, url: str, tmp_path: Path
) -> None:
    parsed = rules.parse_api_endpoint(endpoint)
    assert parsed.url == url
    assert rules.parse_api_endpoint(parsed.url) == parsed, "the URL reads back the same"
    assert rules.tls_san(parsed.tls_san) == parsed.tls_san
    assert "[" not in parsed.tls_san
    assert kubeconfig_server(endpoint, tmp_path) == (0, url)
    assert kubeconfig_server(parsed.url, tmp_path) == (0, url)


@pytest.mark.parametrize("endpoint", REFUSED)
def test_refused_endpoints_are_refused_by_both(endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[https://\]HOST\[:PORT\]"):
        rules.parse_api_endpoint(endpoint)
    code, message = kubeconfig_server(endpoint, tmp_path)
    assert code == 2
    assert "invalid API endpoint" in message


def test_machine_addresses_are_endpoints_too() -> None:
    assert rules.endpoint_of_address("203.0.113.7").url == "https://203.0.113.7:6443"
    assert rules.endpoint_of_address("2001:db8::7").url == "https://[2001:db8::7]:6443"


def test_plan_uses_the_endpoint_in_sans_output_and_kubeconfig() -> None:
    data = stack_data("prod")
    data["apiEndpoint"] = "https://[2001:DB8::10]:8443"
    data["k3s"]["tlsSans"] = ["API.example.com"]
    plan = Plan(run_plan(data))
    url = "https://[2001:db8::10]:8443"
    assert plan.result.outputs["apiEndpoint"] == url
    kubeconfig = plan["prod-kubeconfig"]
    assert url in kubeconfig.inputs["create"]
    for name, (host_json, _) in plan.result.hosts.items():
        sans = json.loads(host_json)["k3s"]["tlsSans"]
        if "control" in name:
            assert {"2001:db8::10", "api.example.com"} <= set(sans), sans
            assert sans == sorted(set(sans))


def test_plan_without_endpoint_points_at_the_first_server(dev_plan: Plan) -> None:
    output = dev_plan.result.outputs["apiEndpoint"]
    address = rules.parse_api_endpoint(output)
    assert output == f"https://{address.host}:6443"
    assert output in dev_plan["dev-kubeconfig"].inputs["create"]
