"""Phase-1 shim, for edgekit/results.py and report.py only: the errors live in edgekit/core/errors.py.

Those two files are being turned into the results/ package on another branch, so the house move left
them untouched; delete this file once that package lands and imports edgekit.core.errors.
"""

from .core.errors import *  # noqa: F403
