"""What a valid value is, for every value the stack hands to hosts, k3s and Colima.

One module, used by both the stack check (components/config/, which reports the stack path)
and the host document (components/hosts/hostspec.py, the last line of defence before a host), so the
two cannot disagree: a value the stack check accepts never fails later in the plan. Each rule
returns the value (normalised where that is harmless) or raises ValueError with a message that
shows the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# --- names -----------------------------------------------------------------------------------

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$")


def dns_label(value: str) -> str:
    """A DNS-1123 label: host, cluster, pool and container names."""
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


# nixos-containers: the host end of the veth is 've-<name>', and interface names have at most
# 15 characters; the name must start with a letter.
MAX_CONTAINER_NAME = 11


def container_name(value: str) -> str:
    dns_label(value)
    if len(value) > MAX_CONTAINER_NAME or not value[0].isalpha():
        raise ValueError(
            f"{value!r}: a container name starts with a letter and has at most "
            f"{MAX_CONTAINER_NAME} characters (the host's veth is 've-<name>', 15 at most)"
        )
    return value


def dns_name(value: str) -> str:
    """A host name (RFC 1123): dot-separated labels of letters, digits and '-', <= 253 chars.

    A name whose last label is all digits is refused: it would be read as an IPv4 address.
    Returned in lowercase (DNS names compare case-insensitively).
    """
    labels = value.split(".")
    if (
        not value
        or len(value) > 253
        or not all(len(label) <= 63 and _HOST_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError(
            f"{value!r} is not a DNS name: dot-separated labels of letters, digits and '-' "
            "(at most 63 characters each, not starting or ending with '-', 253 in all), "
            "or an IP address"
        )
    return value.lower()


# --- Kubernetes labels and taints ------------------------------------------------------------

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def label_key(key: str) -> str:
    """A Kubernetes label (or taint) key: optional DNS-subdomain prefix, '/', name."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not LABEL_PREFIX.match(prefix)):
        raise ValueError(f"label key {key!r}: prefix {prefix!r} is not a DNS subdomain")
    if len(name) > 63 or not LABEL_NAME.match(name):
        raise ValueError(
            f"label key {key!r}: name {name!r} must be at most 63 characters of "
            "[A-Za-z0-9-_.], starting and ending alphanumeric"
        )
    return key


def label_value(value: str, what: str = "label value") -> str:
    """A Kubernetes label (or taint) value: empty, or <= 63 of [A-Za-z0-9-_.] (alnum ends)."""
    if value and (len(value) > 63 or not LABEL_NAME.match(value)):
        raise ValueError(
            f"{what} {value!r} must be empty or at most 63 characters of [A-Za-z0-9-_.], "
            "starting and ending alphanumeric"
        )
    return value


def taint(text: str) -> str:
    """k3s --node-taint's 'key[=value]:Effect'."""
    body, colon, effect = text.rpartition(":")
    if not colon or effect not in TAINT_EFFECTS:
        raise ValueError(
            f"{text!r} is not a taint 'key[=value]:Effect' (effects: {', '.join(TAINT_EFFECTS)})"
        )
    key, _, value = body.partition("=")
    label_key(key)
    label_value(value, "taint value")
    return text


# --- k3s -------------------------------------------------------------------------------------

# No whitespace, quotes, '$', '%' or '\\': flags land unquoted in a systemd ExecStart= line.
K3S_FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*(=[^\s\"'$%\\]*)?$")


def k3s_flag(flag: str) -> str:
    if not K3S_FLAG.match(flag):
        raise ValueError(
            f"{flag!r} is not one k3s flag '--name=value': the name in lowercase a-z, 0-9 "
            "and '-', the value without whitespace, quotes, '$', '%' or '\\' (each flag is "
            "one item; they land unquoted in k3s's systemd ExecStart=)"
        )
    return flag


# robfig/cron's standard parser, which k3s uses for --etcd-snapshot-schedule-cron, with the
# numeric subset the host document allows (no names, no '?', no @descriptors).
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_CRON_ITEM = re.compile(r"^(\*|([0-9]{1,2})(-([0-9]{1,2}))?)(/([0-9]{1,2}))?$")


def _cron_field(item_list: str, name: str, low: int, high: int) -> None:
    for item in item_list.split(","):
        match = _CRON_ITEM.match(item)
        if not match:
            raise ValueError(f"{name} {item!r} is not '*', N, N-M, optionally with /STEP")
        if match.group(6) is not None and int(match.group(6)) == 0:
            raise ValueError(f"{name} {item!r}: the step must be at least 1")
        if match.group(2) is None:
            continue
        start = int(match.group(2))
        end = int(match.group(4)) if match.group(4) is not None else start
        if not low <= start <= high or not low <= end <= high:
            raise ValueError(f"{name} {item!r} is outside {low}-{high}")
        if start > end:
            raise ValueError(f"{name} {item!r}: the range runs backwards")


def cron(expression: str) -> str:
    """A five-field numeric cron schedule (minute hour day-of-month month day-of-week)."""
    fields = expression.split()
    try:
        if len(fields) != len(CRON_FIELDS):
            raise ValueError(f"it has {len(fields)} field(s), not 5")
        for text, (name, low, high) in zip(fields, CRON_FIELDS, strict=True):
            _cron_field(text, name, low, high)
    except ValueError as exc:
        raise ValueError(
            f"{expression!r} is not a 5-field numeric cron schedule like '0 */12 * * *' ({exc})"
        ) from None
    return " ".join(fields)


def tls_san(value: str) -> str:
    """A name in the API server certificate: a DNS name or an IP address (no brackets)."""
    try:
        if "%" not in value:  # no IPv6 zone: it means nothing in a certificate
            return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        return dns_name(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a DNS name (letters, digits, '-' and '.') nor an IP address"
        ) from None


# --- the API endpoint ------------------------------------------------------------------------

API_PORT = 6443
API_ENDPOINT_GRAMMAR = (
    "[https://]HOST[:PORT]: HOST a DNS name, an IPv4 address or an IPv6 address in brackets "
    "([2001:db8::1]), PORT 1-65535 (default 6443), nothing after it"
)


@dataclass(frozen=True)
class ApiEndpoint:
    """Where users reach the Kubernetes API: host (IPv6 unbracketed) and port."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def tls_san(self) -> str:
        return self.host


def _endpoint_error(text: str, why: str) -> ValueError:
    return ValueError(f"{text!r} {why}; write {API_ENDPOINT_GRAMMAR}")


def parse_api_endpoint(text: str) -> ApiEndpoint:
    """The one parser of apiEndpoint; kubeconfig.sh implements the same grammar."""
    rest = text.removeprefix("https://")
    if "://" in rest:
        raise _endpoint_error(text, "has a scheme other than https://")
    if any(ch in rest for ch in "/?#@") or any(ch.isspace() for ch in rest):
        raise _endpoint_error(text, "has a path, query, user or whitespace")
    if rest.startswith("["):
        close = rest.find("]")
        try:
            inside = rest[1:close] if close > 0 and "%" not in rest else "!"
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise _endpoint_error(text, "does not hold an IPv6 address in brackets") from None
        port = rest[close + 1 :]
    elif rest.count(":") > 1:
        try:
            ipaddress.IPv6Address(rest)
        except ValueError:
            raise _endpoint_error(text, "has more than one ':'") from None
        raise _endpoint_error(text, "is an IPv6 address without brackets")
    else:
        name, colon, digits = rest.partition(":")
        try:
            host = str(ipaddress.IPv4Address(name))
        except ValueError:
            if name.replace(".", "").isdigit():
                raise _endpoint_error(text, f"has {name!r}, which is no IPv4 address") from None
            try:
                host = dns_name(name)
            except ValueError:
                raise _endpoint_error(text, f"has {name!r}, which is no DNS name") from None
        port = colon + digits
    if port and (not re.fullmatch(r":[1-9][0-9]{0,4}", port) or int(port[1:]) > 65535):
        raise _endpoint_error(text, f"has port {port[1:]!r}, not 1-65535")
    return ApiEndpoint(host=host, port=int(port[1:]) if port else API_PORT)


def endpoint_of_address(address: str) -> ApiEndpoint:
    """The API endpoint of a machine address (the first server's), on the API port."""
    return ApiEndpoint(host=str(ipaddress.ip_address(address)), port=API_PORT)


def api_endpoint(text: str) -> str:
    """Stack check of apiEndpoint: the text is kept as written once it parses."""
    parse_api_endpoint(text)
    return text


# --- login users -----------------------------------------------------------------------------

# Users NixOS itself creates on these hosts (nixpkgs nixos/modules/misc/ids.nix, users-groups.nix,
# services/networking/ssh/sshd.nix, services/system/{dbus,nscd}.nix, security/polkit.nix, the
# systemd modules, nix-daemon.nix's nixbld1..N): an admin user of the same name would merge into
# that account (for root: replace its authorized keys, dropping the deploy key).
RESERVED_USERS = frozenset(
    {
        "root",
        "nobody",
        "sshd",
        "messagebus",
        "nscd",
        "polkituser",
        "dhcpcd",
        "systemd-coredump",
        "systemd-network",
        "systemd-oom",
        "systemd-resolve",
        "systemd-timesync",
    }
)
RESERVED_USER_PREFIXES = ("nixbld",)
# nixpkgs users-groups.nix: "Username '...' is longer than 31 characters which is not allowed!"
MAX_USER_NAME = 31
_USER_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def admin_user_name(name: str) -> str:
    if len(name) > MAX_USER_NAME or not _USER_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a login name: lowercase letters, digits and '-', starting with a "
            f"letter, not ending with '-', at most {MAX_USER_NAME} characters"
        )
    if name in RESERVED_USERS or name.startswith(RESERVED_USER_PREFIXES):
        raise ValueError(
            f"{name!r} is a user NixOS creates itself (reserved: "
            f"{', '.join(sorted(RESERVED_USERS))}, nixbld*); root's keys come from sshKeys"
        )
    return name


# --- Colima ----------------------------------------------------------------------------------

# Colima config/profile.go: profile NAME is the Lima instance "colima-NAME"; "", "default" and
# "colima" are the user's own default VM, and a "colima-" prefix is stripped (so it would clash).
COLIMA_RESERVED_PROFILES = ("default", "colima")
COLIMA_INSTANCE_PREFIX = "colima-"
# Lima pkg/instance/create.go: len(<LIMA_HOME>/<instance>/<filenames.LongestSock>) must stay
# below osutil.UnixPathMax, 104 on macOS (sun_path); ssh appends 16 characters to ssh.sock.
LIMA_LONGEST_SOCKET = "ssh.sock.1234567890123456"
MACOS_UNIX_PATH_MAX = 104
# Lima pkg/identifiers: instance names are at most 76 characters.
LIMA_IDENTIFIER_MAX = 76
_PROFILE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


# Planning off the Mac (a CI runner, a Linux laptop) checks the socket path against this
# typical Mac home rather than the machine's own, so the same stack is accepted alike everywhere;
# on macOS, or with LIMA_HOME / COLIMA_HOME set, the real directory is used.
REFERENCE_MAC_HOME = "/Users/operator"


def lima_home(
    env: Mapping[str, str] = os.environ,
    is_dir: Callable[[str], bool] = os.path.isdir,
    resolve: Callable[[str], str] = os.path.realpath,
    platform: str = sys.platform,
) -> str:
    """Where Colima keeps its Lima instances (Colima config/files.go limaDir), with symlinks
    resolved once it exists, as Lima's dirnames.LimaDir does."""
    if platform != "darwin" and not (env.get("LIMA_HOME") or env.get("COLIMA_HOME")):
        return f"{REFERENCE_MAC_HOME}/.colima/_lima"
    home = env.get("HOME") or os.path.expanduser("~")
    colima_home = env.get("COLIMA_HOME", "")
    if env.get("LIMA_HOME"):
        lima = env["LIMA_HOME"]
    elif colima_home and is_dir(colima_home):
        lima = f"{colima_home}/_lima"
    elif not is_dir(f"{home}/.colima") and env.get("XDG_CONFIG_HOME"):
        lima = f"{env['XDG_CONFIG_HOME']}/colima/_lima"
    else:
        lima = f"{home}/.colima/_lima"
    return resolve(lima) if is_dir(lima) else lima


def lima_socket_path(profile: str, lima_dir: str) -> str:
    return f"{lima_dir}/{COLIMA_INSTANCE_PREFIX}{profile}/{LIMA_LONGEST_SOCKET}"


def colima_profile(profile: str, lima_dir: str) -> str:
    """A Colima profile name that is ours alone and that Lima can create an instance for."""
    if not _PROFILE.match(profile):
        raise ValueError(f"colima profile {profile!r}: use lowercase letters, digits and '-'")
    if profile in COLIMA_RESERVED_PROFILES or profile.startswith(COLIMA_INSTANCE_PREFIX):
        raise ValueError(
            f"colima profile {profile!r} is, or clashes with, the user's own Colima VMs "
            f"({', '.join(COLIMA_RESERVED_PROFILES)} and names starting "
            f"{COLIMA_INSTANCE_PREFIX!r}, which Colima strips)"
        )
    instance = COLIMA_INSTANCE_PREFIX + profile
    if len(instance) > LIMA_IDENTIFIER_MAX:
        raise ValueError(
            f"colima profile {profile!r}: Lima instance {instance!r} is longer than "
            f"{LIMA_IDENTIFIER_MAX} characters"
        )
    socket = lima_socket_path(profile, lima_dir)
    if len(socket) >= MACOS_UNIX_PATH_MAX:
        longest = MACOS_UNIX_PATH_MAX - 1 - len(lima_socket_path("", lima_dir))
        raise ValueError(
            f"colima profile {profile!r} is too long for Lima: its socket {socket} would be "
            f"{len(socket)} characters, and macOS allows {MACOS_UNIX_PATH_MAX - 1}; with "
            f"Lima in {lima_dir} a profile may have at most {longest} characters"
        )
    return profile


# --- field names -----------------------------------------------------------------------------


def camel(name: str) -> str:
    """snake_case -> camelCase, the key style of the stack file and the host document; unlike
    pydantic's to_camel, 'k3s_token' gives 'k3sToken'."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


# --- SSH -------------------------------------------------------------------------------------

# One OpenSSH public key line: the key types OpenSSH 9 offers, base64, an optional comment.
SSH_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$"
)


def ssh_public_key(value: str) -> str:
    """One OpenSSH public key line, without surrounding whitespace. The message never quotes
    the value: a private key pasted by mistake must not end up in a log."""
    value = value.strip()
    if not SSH_PUBLIC_KEY.fullmatch(value):
        if "PRIVATE KEY" in value:
            raise ValueError("this is a private key: give the public key (the .pub file)")
        raise ValueError(
            "not an OpenSSH public key: expected 'ssh-ed25519 AAAA... comment' "
            "(or ssh-rsa / ecdsa-sha2-nistp256 / sk-ssh-ed25519@openssh.com)"
        )
    return value


# A kubelet duration as k3s and the KubeletConfiguration take it: '30s', '2m', '1h30m'.
DURATION = re.compile(r"^([0-9]+(h|m|s))+$")


def duration(value: str) -> str:
    if not DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration like '30s', '2m' or '1h30m'")
    return value


# A nixpkgs k3s attribute: the release's default 'k3s' or a pinned minor 'k3s_1_NN'.
K3S_PACKAGE = re.compile(r"^k3s(_1_[0-9]+)?$")


def k3s_package(value: str) -> str:
    if not K3S_PACKAGE.match(value):
        raise ValueError(f"{value!r} is not a nixpkgs k3s attribute: use 'k3s' or 'k3s_1_NN'")
    return value


def cidr(value: str) -> str:
    """A network address with prefix length, returned in canonical form."""
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR network address ({exc})") from None
    return str(network)


# etcd snapshots in S3 (k3s --etcd-s3-*).
S3_ENDPOINT = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
S3_FOLDER = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
S3_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def s3_endpoint(value: str) -> str:
    if "://" in value:
        raise ValueError(
            f"{value!r}: give the host name without a scheme (k3s always uses HTTPS), "
            "e.g. 'fsn1.your-objectstorage.com'"
        )
    if not S3_ENDPOINT.match(value):
        raise ValueError(f"{value!r} is not a host name[:port] like 'fsn1.your-objectstorage.com'")
    return value


def s3_bucket(value: str) -> str:
    if not S3_BUCKET.match(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not an S3 bucket name: 3-63 lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def s3_folder(value: str) -> str:
    if not S3_FOLDER.match(value):
        raise ValueError(
            f"{value!r} is not a folder: path segments of letters, digits, '.', '_' and '-' "
            "separated by '/', no leading or trailing '/'"
        )
    return value


def s3_region(value: str) -> str:
    if not S3_REGION.match(value):
        raise ValueError(f"{value!r} is not a region name like 'fsn1' or 'eu-central-1'")
    return value
