"""On-disk cache of LLM responses, keyed by the full content of the request.

The key is the SHA-256 of the canonical JSON of everything that determines a reply: model name,
messages, max_tokens, temperature, seed and, for log-probability requests, ``logprobs`` /
``top_logprobs``. The endpoint URL is deliberately *not* part of the key (the same model served
from another host or port gives the same cached answers), and the API key never is. The in-process
scorer uses the same cache with its own model id (``embedded:<folder>``) in the key. An entry holds
the request, the reply text, the token usage and, for log-probability requests, the top
candidates of the first reply token (``[[token, logprob], ...]``); a rerun of the same evaluation
therefore sends zero requests, costs nothing and gives the same numbers. Entries are written
atomically (temp file + ``os.replace``); an unreadable entry is treated as missing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from saebench.io import atomic_write_json


def request_key(request: dict[str, Any]) -> str:
    """Stable hash of a request dict (sorted keys, no whitespace)."""
    raw = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


class ResponseCache:
    """A folder of ``ab/abcdef....json`` entries, one per request."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The cached entry for ``request``, or None."""
        path = self._path(request_key(request))
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and "content" in entry else None

    def put(
        self,
        request: dict[str, Any],
        content: str,
        usage: dict[str, int],
        **extra: Any,
    ) -> None:
        """Store a successful reply (failed requests are never cached); ``extra`` holds log-probabilities
        (``top_logprobs=[(token, logprob), ...]``, ``token_logprobs=[...]``)."""
        entry: dict[str, Any] = {"request": request, "content": content, "usage": usage}
        for k, v in extra.items():
            entry[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        atomic_write_json(self._path(request_key(request)), entry, indent=None)
