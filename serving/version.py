"""The one version of the project: the installed package's metadata (``pyproject.toml``'s ``version``).

``python -m serving --version``, ``serve --version``, the OpenAPI document and ``/metrics``'s build info all
read it here, so a release changes one line in ``pyproject.toml``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

DISTRIBUTION = "xmreid"


@lru_cache
def package_version() -> str:
    """The installed ``xmreid`` version, or ``0+unknown`` when running from a checkout that was never installed
    (``pip install -e .`` fixes that; a PEP 440 local version, so tools that parse it still can)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def version_string(prog: str) -> str:
    """``--version`` output: ``<prog> <version>``."""
    return f"{prog} {package_version()}"
