"""What a Ray started by `wsrl-dist launch` exposes, and the little the project can tighten (issue 17).

Ray 2.60 on Linux cannot be confined to the loopback interface from ray.init: `_node_ip_address=
"127.0.0.1"` is turned into the node's routable IP (ray._private.services.resolve_ip_for_localhost),
and the GCS and raylets listen there. What protects a local run is Ray's token authentication
(introduced in Ray 2.52), which Ray 2.60 turns on by default for a new local ray.init() cluster: it
writes a random token to ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH) and every RPC and HTTP entry point
then requires it. The project keeps the dashboard on 127.0.0.1 explicitly, warns when
RAY_AUTH_MODE=disabled switches the protection off, and makes the token file readable by its owner
only (Ray writes it with the process umask, typically 0644).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
LOCAL_DASHBOARD_HOST = "127.0.0.1"


def token_path() -> Path:
    """Where Ray reads its token from (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def tighten_token_file(path: Path | None = None) -> Path | None:
    """chmod 0600 the token file when group or others may read it; returns it (None: no file)."""
    path = token_path() if path is None else Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


def warn_if_auth_disabled() -> bool:
    """A local Ray without token auth runs code for anyone who reaches its ports: say so."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        log.warning("RAY_AUTH_MODE=disabled: this local Ray accepts jobs from anyone who can reach its "
                    "ports on this host's network address; unset it to keep Ray's token auth")
        return True
    return False
