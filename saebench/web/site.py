"""Write the static web board: HTML pages that embed their data as JSON and one script and one
style sheet of our own (``saebench/web/assets``), so the site opens from disk with no server and
no network (docs/web.md).

Pages: ``index.html`` (the board), ``plots.html`` (frontier plots), ``compare.html`` (paired
comparisons of any two SAEs of a section), ``latents.html`` (search over every sampled latent),
``sae/<name>.html`` (one per SAE) and ``latents/<name>.html`` (the latents of one SAE; ``#123``
opens latent 123).

Untrusted text never reaches HTML: page data sits in ``<script type="application/json">`` with
``<``, ``>`` and ``&`` escaped as JSON unicode escapes (so no text can close the element), the
script renders it with ``textContent``, and every page carries a Content-Security-Policy that
allows scripts from the site's own files only (no inline script, no network).
"""

from __future__ import annotations

import html
import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError
from saebench.io import atomic_write_text
from saebench.results import is_baseline
from saebench.web.model import Site, load

#: the size budget of a site (bytes); `saebench leaderboard --html` refuses to finish above it
#: unless --html-budget says otherwise. The committed board (14 SAEs, 7 floors, 20 synthetic) is ~21 MB (docs/web.md).
DEFAULT_BUDGET = 25_000_000
ASSETS = ("site.js", "site.css")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'none'; form-action 'none'; base-uri 'none'"
)
NAV = (
    ("index.html", "Board"),
    ("plots.html", "Frontier plots"),
    ("compare.html", "Compare"),
    ("latents.html", "Latents"),
)


@dataclass
class SiteReport:
    """What was written: the folder, page count, total bytes, seconds, and the files left out."""

    out: Path
    pages: int
    bytes: int
    seconds: float
    left_out: list[str] = field(default_factory=list)


def embed(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``
    survive (each becomes its ``\\u`` escape, which JSON.parse turns back into the character)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def page(kind: str, title: str, data: Any, root: str = "") -> str:
    """One HTML page of ``kind`` (the script's renderer), its data embedded, assets linked relatively."""
    nav = "".join(f'<a href="{root}{href}">{html.escape(text)}</a>' for href, text in NAV)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{root}assets/site.css"></head>\n'
        f'<body data-page="{kind}" data-root="{root}"><nav>{nav}</nav><main id="app"></main>'
        '<div id="tooltip" role="tooltip" hidden></div>\n'
        f'<script type="application/json" id="page-data">{embed(data)}</script>\n'
        f'<script src="{root}assets/site.js"></script></body></html>\n'
    )


def write_site(
    paths: list[str | Path],
    out: str | Path,
    title: str = "saebench leaderboard",
    budget: int | None = DEFAULT_BUDGET,
    reliability: str | Path | None = None,
) -> SiteReport:
    """Build the site for the results under ``paths`` into the folder ``out`` (replaced wholesale:
    a page of an SAE no longer present does not linger). Damaged files are left out and named on
    the index page. Raises SaebenchError when the site exceeds ``budget`` bytes (None: no budget)."""
    t0 = time.perf_counter()
    loaded, left_out = load(list(paths))
    from saebench.reliability import load_reliability

    site = Site(loaded, left_out, title, load_reliability(reliability) if reliability is not None else None)
    out = Path(out).resolve()
    if out.exists() and not (out / "index.html").is_file() and any(out.iterdir()):
        raise SaebenchError(
            f"--html {out} is a non-empty folder that holds no saebench site; pass a new or empty folder"
        )
    tmp = out.with_name(out.name + ".tmp-site")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "assets").mkdir(parents=True)
    (tmp / "sae").mkdir()
    (tmp / "latents").mkdir()
    for name in ASSETS:
        (tmp / "assets" / name).write_bytes(resources.files("saebench.web").joinpath("assets", name).read_bytes())
    n = 0

    def write(rel: str, kind: str, title_: str, data: Any, root: str = "") -> None:
        nonlocal n
        atomic_write_text(tmp / rel, page(kind, title_, data, root))
        n += 1

    board = site.board()
    write("index.html", "board", title, board)
    write("plots.html", "plots", f"{title}: frontier plots", board)
    sections, search = [], []
    for key in site.keys:
        model, hook, cfg = key
        names = sorted(site.groups[key])
        sections.append(
            {
                "id": site.gid[key],
                "model": model,
                "hook": hook,
                "config": cfg,
                "saes": [s for s in names if not is_baseline(s)],  # floors are not compared (the gate skips them)
                "pages": [site.page[(key, s)] for s in names if not is_baseline(s)],
                "pairs": site.comparisons(key),
            }
        )
        for name in names:
            slug_ = site.page[(key, name)]
            write(f"sae/{slug_}.html", "sae", f"{name}: {title}", site.sae_page(key, name), "../")
            lats = site.latents(key, name)
            if lats:
                write(
                    f"latents/{slug_}.html",
                    "latents",
                    f"{name} latents: {title}",
                    {"sae": name, "page": slug_, "section": f"{model} · {hook}", "latents": lats},
                    "../",
                )
                for lat in lats:
                    text = [lat.get("autointerp", {}).get("explanation") or ""]
                    text += [p["text"] for p in lat.get("n2g", {}).get("patterns", [])]
                    search.append(
                        {
                            "sae": name,
                            "page": slug_,
                            "id": lat["id"],
                            "text": " | ".join(t for t in text if t),
                            "f1": lat.get("n2g", {}).get("f1"),
                            "q": lat["q"],
                        }
                    )
    write("compare.html", "compare", f"{title}: compare", {"sections": sections})
    write("latents.html", "search", f"{title}: latents", {"latents": search})
    size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    if budget is not None and size > budget:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaebenchError(
            f"the site would be {size:,} bytes, over its budget of {budget:,}: pass --html-budget BYTES to allow it "
            "(or build it from fewer results)"
        )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return SiteReport(out, n, size, time.perf_counter() - t0, left_out)
