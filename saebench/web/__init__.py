"""The static web board: ``saebench leaderboard RESULTS --html DIR`` (docs/web.md).

:func:`write_site` builds a folder of HTML pages (board, frontier plots, one page per SAE, the
latents evaluators sampled, paired comparisons) from result files alone, with the same rows,
columns and cell text as the markdown board (:mod:`saebench.leaderboard`) and the comparisons of
``saebench compare`` (:mod:`saebench.compare`). It opens from disk: no server, no network.
"""

from saebench.web.site import DEFAULT_BUDGET, SiteReport, write_site

__all__ = ["DEFAULT_BUDGET", "SiteReport", "write_site"]
