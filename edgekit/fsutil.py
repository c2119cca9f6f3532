"""Phase-1 shim, for edgekit/report.py only: the file helpers live in edgekit/core/fsutil.py.

report.py is being moved into the results/ package on another branch, so the house move left it
untouched; delete this file once that package lands and imports edgekit.core.fsutil.
"""

from .core.fsutil import *  # noqa: F403
