"""Docker HEALTHCHECK for the openhqm image: exit 0 when a local /health answers 200.

The image runs `openhqm serve` or `openhqm listener` (HTTP on OPENHQM_SERVER__PORT, default 8000) or
`openhqm worker` (health port OPENHQM_WORKER__HEALTH_PORT, default 8081); the first port that
answers decides. Standard library only: the slim base image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = float(os.environ.get("OPENHQM_HEALTHCHECK_TIMEOUT_S", "3"))


def ports() -> list[str]:
    return [
        os.environ.get("OPENHQM_SERVER__PORT", "8000"),
        os.environ.get("OPENHQM_WORKER__HEALTH_PORT", "8081"),
    ]


def healthy(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    for port in ports():
        if healthy(port):
            return 0
    print(f"no /health answered 200 on 127.0.0.1 ports {', '.join(ports())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
