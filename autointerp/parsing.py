"""Parsers for the LLM's replies. Each returns the parsed value, or None when the reply is malformed
(the caller then retries once with a stricter instruction and finally marks the item unparseable).
"""

from __future__ import annotations

import re

_PREFIXES = re.compile(
    r"^(?:explanation\s*:|answer\s*:|the\s+latent\s+(?:fires|activates|responds)\s+(?:on|to)|"
    r"this\s+(?:latent|neuron|feature)\s+(?:fires|activates|responds)\s+(?:on|to)|"
    r"(?:it\s+)?(?:fires|activates|responds)\s+(?:on|to))\s*",
    re.IGNORECASE,
)
MAX_EXPLANATION_CHARS = 300


def parse_explanation(reply: str | None) -> str | None:
    """The first non-empty line, without a leading "Explanation:" / "This latent fires on" and quotes.

    Malformed: empty, or longer than ``MAX_EXPLANATION_CHARS`` (a rambling reply is not one explanation).
    """
    if not reply:
        return None
    line = next((ln.strip() for ln in reply.strip().splitlines() if ln.strip()), "")
    line = line.strip("*#>- \t")
    for _ in range(2):
        line = _PREFIXES.sub("", line).strip()
    for _ in range(2):
        line = line.strip("\"'`“”‘’ ").rstrip(".").strip()
    if not line or len(line) > MAX_EXPLANATION_CHARS:
        return None
    return line


def parse_detection(reply: str | None, n: int) -> list[int] | None:
    """Example numbers (1..n) the scorer says activate; [] for "None"; None when malformed."""
    if reply is None:
        return None
    text = reply.strip().strip("`").strip()
    text = re.sub(r"^(?:answer|excerpts?)\s*:\s*", "", text, flags=re.IGNORECASE).strip().rstrip(".").strip()
    if text.lower() in ("none", "none of them", "[]", ""):
        return [] if text else None
    parts = [p for p in re.split(r"\s*(?:,|;|\band\b|\s)\s*", text.strip("[]()")) if p]
    if not parts or not all(p.isdigit() for p in parts):
        return None
    nums = sorted({int(p) for p in parts})
    if any(k < 1 or k > n for k in nums):
        return None
    return nums


_LINE = re.compile(r"^\s*(?:excerpt\s*)?(\d+)\s*[:.)\-]\s*(.*)$", re.IGNORECASE)
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def parse_simulation(reply: str | None, lengths: list[int]) -> list[list[float]] | None:
    """Per-excerpt lists of predicted activations (0..10), one per token; None when malformed.

    Every excerpt must have a line ``N: a, b, ...`` with exactly ``lengths[N-1]`` numbers in 0..10.
    """
    if not reply:
        return None
    found: dict[int, list[float]] = {}
    for raw in reply.splitlines():
        m = _LINE.match(raw.strip().strip("`*"))
        if not m:
            continue
        k = int(m.group(1))
        if 1 <= k <= len(lengths) and k not in found:
            found[k] = [float(v) for v in _NUM.findall(m.group(2))]
    out = []
    for k, n in enumerate(lengths, start=1):
        vals = found.get(k)
        if vals is None or len(vals) != n or any(v < 0 or v > 10 for v in vals):
            return None
        out.append(vals)
    return out
