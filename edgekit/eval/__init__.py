"""``edgekit eval``: what a build costs in quality, measured against a reference model.

Two passes share this package. The KL pass (text.py, engines.py, refcache.py, metrics.py, run.py) scores
every artifact on the same token windows of a text against a reference's log-probabilities, with the
figures ``llama-perplexity --kl-divergence`` prints. Task suites (suite.py, scorers.py) render chat
prompts, generate greedily and score the answers.
"""

from ..results import QualityRecord
from .metrics import KLStats, kl_stats
from .run import EvalOptions, evaluate

__all__ = ["EvalOptions", "KLStats", "QualityRecord", "evaluate", "kl_stats"]
