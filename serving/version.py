"""The one version of the project, as ``serving`` names it: :mod:`export.entry`'s (the installed package's
metadata, ``pyproject.toml``'s ``version``).

``python -m serving --version``, ``serve --version``, the OpenAPI document and ``/metrics``'s build info read
it here, so a release changes one line in ``pyproject.toml``.
"""

from __future__ import annotations

from export.entry import DISTRIBUTION, package_version, version_string

__all__ = ["DISTRIBUTION", "package_version", "version_string"]
