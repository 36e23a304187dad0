"""The stdin bundle of install.sh, install-secrets.sh and hcloud-image.py: a header line with the
record count and the SHA-256 of the records, then `path<TAB>mode<TAB>base64` lines.

Standard library only: components/scripts/hcloud-image.py, which runs with the operator's plain
python3, imports it too.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

SECRET_MODE = "0600"
BUNDLE_FORMAT = "nixos-k3s-bundle v1"


def secret_bundle(files: Mapping[str, str], special: Mapping[str, str] | None = None) -> str:
    """The bundle of `files` (path -> content) and `special` (@name -> content) records. The
    scripts refuse a bundle that is cut short, altered or longer than its header says, before
    writing a file."""
    records = [
        f"{path}\t{SECRET_MODE}\t{base64.b64encode(content.encode()).decode()}\n"
        for path, content in sorted({**(special or {}), **files}.items())
    ]
    body = "".join(records)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f"{BUNDLE_FORMAT} {len(records)} {digest}\n{body}"
