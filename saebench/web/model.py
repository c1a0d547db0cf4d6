"""The data behind the static web board, computed from results alone (docs/web.md).

Everything a page shows is computed here, in Python, from the same functions the markdown board
and ``saebench compare`` use: groups and rows (:func:`saebench.leaderboard.group_results`), table
columns (:func:`saebench.leaderboard.headline_columns`), cell text
(:func:`saebench.leaderboard.cell`, i.e. :func:`saebench.display.with_interval`), number text
(:func:`saebench.display.fmt`), paired comparisons (:func:`saebench.compare.compare`). The pages'
script only lays this data out (sorts by the stored values, filters, draws); it formats and
computes nothing of its own, so the site and the markdown board cannot disagree.

Every string here may be untrusted (SAE names, explanations, token text): the pages embed it as
JSON and render it with ``textContent``, never as HTML.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from saebench.compare import FAILING, compare, config_differences, diff_text
from saebench.display import ARROW, fmt, interval_ends
from saebench.errors import SaebenchError
from saebench.evaluators import Metric, metric_table
from saebench.io import slug
from saebench.leaderboard import (
    Group,
    Rows,
    cell,
    column_marks,
    evaluator_order,
    group_order,
    group_results,
    headline_columns,
    mixed_rows,
    resolution_flags,
    resolution_rows,
    row_order,
    summary_columns,
)
from saebench.reliability import icc_text
from saebench.results import Result, is_baseline, read_result, result_files
from saebench.significance import Marks

#: a details table longer than this is cut (the page says how many rows it left out)
MAX_DETAIL_ROWS = 400
#: sections with more SAEs than this get no precomputed comparisons (the compare page gives the command
#: instead): every pair is ~30 KB of page and ~0.3 s of build, and pairs grow as the square of the SAEs
MAX_COMPARE_SAES = 20
#: a nested value inside a details table cell is shown as compact JSON cut at this many characters
MAX_CELL_CHARS = 160
#: the evaluator whose per-latent records are the latent pages' contexts, histograms and output tokens
DASHBOARD = "dashboard"


def load(paths: list[str | Path]) -> tuple[list[tuple[Path, Result]], list[str]]:
    """Every readable result under ``paths`` with its file, and one line per file left out (damaged,
    hand-edited, foreign), as the markdown board reads them; an error when nothing is readable."""
    found, left_out = [], []
    for f in result_files(paths):
        try:
            found.append((f, read_result(f)))
        except SaebenchError as exc:
            left_out.append(str(exc))
    if not found:
        why = f": {left_out[0]}" if left_out else ""
        raise SaebenchError(
            f"no readable saebench results under {', '.join(map(str, paths))}{why}; run `saebench run` first or "
            "check the path"
        )
    for why in left_out:
        warnings.warn(f"skipping {why}", stacklevel=2)
    return found, left_out


def _num(v: Any) -> float | None:
    """A finite number as float (for sorting and plotting), else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return None


def metric_info(ev: str, m: Metric) -> dict[str, Any]:
    """A column's header: its label with the better direction's arrow, and the hover text."""
    better = {"up": "higher is better", "down": "lower is better"}.get(m.direction, "descriptive (no better direction)")
    unit = f" [{m.unit}]" if m.unit else ""
    return {
        "ev": ev,
        "metric": m.name,
        "label": m.column + ARROW.get(m.direction, ""),
        "direction": m.direction,
        "help": f"{ev}.{m.name}{unit}: {m.meaning} ({better})",
    }


def _value(r: Result | None, name: str) -> dict[str, Any]:
    """One cell: the board's text and the number the page sorts and plots by, with its interval ends."""
    if r is None or name not in r.metrics:
        return {"t": "", "v": None}
    v = r.metrics[name]
    ends = interval_ends(v, r.uncertainty.get(name))
    out: dict[str, Any] = {"t": cell(r, name), "v": _num(v)}
    if ends is not None:
        out["lo"], out["hi"] = ends
    return out


class Site:
    """Everything the pages need, from loaded results: groups (sections), SAE pages, latents,
    comparisons. ``left_out`` names the files that could not be read."""

    def __init__(
        self,
        loaded: list[tuple[Path, Result]],
        left_out: list[str],
        title: str,
        reliability: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self.title = title
        self.reliability = reliability
        self.left_out = left_out
        self.results = [r for _, r in loaded]
        self.files = {id(r): f for f, r in loaded}
        self.groups = group_results(self.results)
        self.keys: list[Group] = group_order(self.groups)  # transcoders after SAEs, in their own sections
        self.gid = {k: f"g{i + 1}" for i, k in enumerate(self.keys)}
        self.decl = {k: metric_table(self._evs(k), self.results) for k in self.keys}
        taken: set[str] = set()
        self.page: dict[tuple[Group, str], str] = {}
        for k in self.keys:  # one page per (section, SAE); slugs made unique
            for name in sorted(self.groups[k]):
                base = slug(name)
                s, i = base, 1
                while s.lower() in taken:
                    i += 1
                    s = f"{base}-{i}"
                taken.add(s.lower())
                self.page[(k, name)] = s

    def _evs(self, key: Group) -> list[str]:
        return evaluator_order({e for row in self.groups[key].values() for e in row["results"]})

    # ---- the board -------------------------------------------------------------------------
    def _table(
        self, rows: Rows, key: Group, title: str, cols: list[tuple[str, Metric]], mk: dict[tuple[str, str], Marks]
    ) -> dict[str, Any]:
        flags = resolution_flags(rows, cols)
        mixed = mixed_rows(rows)
        columns = []
        for ev, m in cols:
            c = metric_info(ev, m)
            if (ev, m.name) in flags:
                c["label"] += " ⚠"
                c["help"] += f" ⚠ not resolved at this profile: {flags[(ev, m.name)]}"
            rel = (self.reliability or {}).get((ev, m.name))
            if rel is not None:
                c["verdict"] = rel.verdict
                c["help"] += f" Training-seed reliability: {rel.verdict} (ICC {icc_text(rel)})."
            columns.append(c)
        body = []
        for name in row_order(rows):
            row = rows[name]
            cells = []
            for ev, m in cols:
                c = _value(row["results"].get(ev), m.name)
                marks = mk[(ev, m.name)]
                if c["t"] and marks.bold(name):
                    c["b"] = 2 if name == marks.best else 1  # 2: the best, 1: not distinguishable from it
                cells.append(c)
            body.append(
                {
                    "sae": name,
                    "page": self.page[(key, name)],
                    "mixed": mixed.get(name),
                    "baseline": is_baseline(name),
                    "architecture": str(row["architecture"]),
                    "d_sae": row["d_sae"],
                    "cells": cells,
                }
            )
        return {"title": title, "columns": columns, "rows": body, "flags": sorted(set(flags.values()))}

    def board(self) -> dict[str, Any]:
        """The sections (one per model, hook and run config) with the markdown board's tables, and
        every numeric metric of every SAE for the frontier plots."""
        sections = []
        for key in self.keys:
            model, hook, cfg = key
            rows = self.groups[key]
            evs = self._evs(key)
            decl = self.decl[key]
            heads = headline_columns(rows, evs, decl)
            all_cols = [(ev, m) for ev in evs for m in heads[ev]]
            mk = column_marks(rows, all_cols)
            tables = []
            if len(evs) > 1:
                tables.append(self._table(rows, key, "Summary", summary_columns(evs, heads), mk))
            tables += [self._table(rows, key, ev, [(ev, m) for m in heads[ev]], mk) for ev in evs if heads[ev]]
            sections.append(
                {
                    "id": self.gid[key],
                    "model": model,
                    "hook": hook,
                    "config": cfg,
                    "mixed": mixed_rows(rows),
                    "saes": [self._sae_summary(key, name) for name in sorted(rows)],
                    "tables": tables,
                    "resolution": resolution_rows(rows, all_cols, mk, self.reliability),
                    "metrics": self._plot_metrics(key),
                }
            )
        return {"title": self.title, "sections": sections, "left_out": self.left_out, "n_results": len(self.results)}

    def _sae_summary(self, key: Group, name: str) -> dict[str, Any]:
        row = self.groups[key][name]
        core = row["results"].get("core")
        return {
            "name": name,
            "page": self.page[(key, name)],
            "architecture": str(row["architecture"]),
            "baseline": is_baseline(name),
            "d_sae": row["d_sae"],
            "l0": _num(core.metrics.get("l0")) if core else None,
        }

    def _plot_metrics(self, key: Group) -> list[dict[str, Any]]:
        """Every metric of the section that some SAE reports as a number (headline ones first), with
        each SAE's value and interval ends: what the frontier plot can put on its y axis."""
        rows, decl = self.groups[key], self.decl[key]
        out = []
        for ev in self._evs(key):
            names = sorted({m for row in rows.values() if ev in row["results"] for m in row["results"][ev].metrics})
            ms = [decl.get(ev, {}).get(n) or Metric(n, "(not declared by the evaluator)") for n in names]
            ms.sort(key=lambda m: (not m.headline, m.name))
            for m in ms:
                pts = {}
                for name, row in rows.items():
                    c = _value(row["results"].get(ev), m.name)
                    if c["v"] is not None:
                        pts[name] = c
                if pts:
                    out.append({**metric_info(ev, m), "headline": m.headline, "points": pts})
        return out

    # ---- one page per SAE ------------------------------------------------------------------
    def sae_page(self, key: Group, name: str) -> dict[str, Any]:
        """Every metric of every evaluator with its interval and meaning, each result's details as
        tables, curves, config, fingerprint and provenance."""
        row = self.groups[key][name]
        decl = self.decl[key]
        evals = []
        for ev in evaluator_order(set(row["results"])):
            r: Result = row["results"][ev]
            d = decl.get(ev, {})
            metrics = []
            for m in sorted(r.metrics, key=lambda n: (not (d.get(n) and d[n].headline), n)):
                info = metric_info(ev, d.get(m) or Metric(m, "(not declared by the evaluator)"))
                u = r.uncertainty.get(m) or {}
                unit = u.get("cluster_unit") or u.get("unit")
                n_units = u.get("n_clusters", u.get("n"))
                metrics.append({**info, **_value(r, m), "units": f"{n_units} {unit}s" if unit and n_units else ""})
            evals.append(
                {
                    "name": ev,
                    "file": str(self.files.get(id(r), "")),
                    "fingerprint": r.sae.fingerprint,
                    "run_key": r.run_key,
                    "created_at": r.created_at,
                    "metrics": metrics,
                    "notes": list(r.notes),
                    "details": details_view(dashboard_settings(r.details) if ev == DASHBOARD else r.details),
                    "config": _json_text(r.config),
                    "timing": {k: fmt(v) for k, v in r.timing.items()},
                    "env": _json_text(r.env),
                }
            )
        fps = sorted({r.sae.fingerprint for r in row["results"].values()})
        first = next(iter(row["results"].values()))
        model, hook, cfg = key
        return {
            "name": name,
            "section": f"{model} · {hook}",
            "config": cfg,
            "architecture": str(row["architecture"]),
            "d_sae": row["d_sae"],
            "d_in": first.sae.d_in,
            "source": first.sae.source,
            "fingerprints": fps,
            "mixed": mixed_rows({name: row}).get(name),
            "evaluators": evals,
            "has_latents": bool(self.latents(key, name)),
        }

    # ---- latents ---------------------------------------------------------------------------
    def latents(self, key: Group, name: str) -> list[dict[str, Any]]:
        """The latents an evaluator sampled for this SAE (N2G, autointerp), one entry per latent id
        with what each result holds about it (docs/web.md says what is not stored)."""
        row = self.groups[key][name]
        by_id: dict[int, dict[str, Any]] = {}
        for ev, r in sorted(row["results"].items()):
            for lat in r.details.get("latents") or []:
                if not isinstance(lat, dict) or not isinstance(lat.get("latent"), int):
                    continue
                entry = by_id.setdefault(lat["latent"], {"id": lat["latent"]})
                if ev == "n2g":
                    entry["n2g"] = n2g_view(lat)
                elif ev == "autointerp":
                    entry["autointerp"] = autointerp_view(lat)
                elif ev == DASHBOARD:
                    entry["dashboard"] = dashboard_view(lat)
                else:
                    entry.setdefault("other", {})[ev] = {k: _cell_text(v) for k, v in lat.items() if k != "latent"}
                ctx = contexts_view(lat)
                if ctx:
                    entry.setdefault("contexts", []).extend(ctx)
                hist = lat.get("histogram")
                if isinstance(hist, dict) and isinstance(hist.get("counts"), list):
                    entry["histogram"] = {"edges": hist.get("edges"), "counts": hist["counts"]}
        for entry in by_id.values():  # what search matches: explanation, patterns as written and as plain text
            pats = entry.get("n2g", {}).get("patterns", [])
            words = [entry.get("autointerp", {}).get("explanation") or ""] + [p["text"] for p in pats]
            words += ["".join(t["t"] if t["kind"] == "tok" else " … " for t in p["tokens"] or []) for p in pats]
            entry["q"] = " | ".join([name, *words]).lower()
        return [by_id[i] for i in sorted(by_id)]

    # ---- comparisons -----------------------------------------------------------------------
    def comparisons(self, key: Group) -> list[dict[str, Any]]:
        """Every pair of SAEs of one section, compared as ``saebench compare A B`` does (A the
        earlier name), over the evaluators both have with comparable configurations. Baselines
        (floors) are left out: they are not SAEs under test, and the gate skips them too."""
        rows = self.groups[key]
        names = sorted(n for n in rows if not is_baseline(n))
        out: list[dict[str, Any]] = []
        if len(names) > MAX_COMPARE_SAES:  # n(n-1)/2 comparisons: a sweep's would not fit any budget
            return out
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                out.append(self.compare_pair(rows[a]["results"], rows[b]["results"], a, b))
        return out

    def compare_pair(self, ra: dict[str, Result], rb: dict[str, Result], a: str, b: str) -> dict[str, Any]:
        both = sorted(set(ra) & set(rb))
        skipped = []
        files_a, files_b = [], []
        for ev in both:
            diffs = config_differences(ra[ev], rb[ev])
            if diffs:
                skipped.append(f"{ev}: not compared, made with different configurations ({', '.join(diffs)})")
            else:
                files_a.append(self.files[id(ra[ev])])
                files_b.append(self.files[id(rb[ev])])
        skipped += [f"{ev}: only {a} has it" for ev in sorted(set(ra) - set(rb))]
        skipped += [f"{ev}: only {b} has it" for ev in sorted(set(rb) - set(ra))]
        rows: list[dict[str, Any]] = []
        summary = "nothing comparable"
        if files_a:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # damaged files were named once, when loading
                    c = compare(files_a, files_b, direct=True)
            except SaebenchError as exc:  # incomparable configurations are caught above; anything else is named
                skipped.append(f"not compared: {exc}")
            else:
                words = {"WORSE": f"{a} worse", "better": f"{a} better"}
                for r in c.rows:
                    rows.append(
                        {
                            "ev": r.evaluator,
                            "metric": r.metric + (" " + ARROW[r.direction].strip() if r.direction else ""),
                            "a": fmt(r.new),
                            "b": fmt(r.baseline),
                            "diff": diff_text(r),
                            "min_effect": "" if r.min_effect is None else f"{r.min_effect:.3g}",
                            "verdict": words.get(r.verdict, r.verdict),
                            "kind": r.verdict if r.verdict in ("better", "WORSE", *FAILING) else "",
                            "basis": r.basis,
                        }
                    )
                better = sum(r.verdict == "better" for r in c.rows)
                worse = sum(r.verdict == "WORSE" for r in c.rows)
                summary = f"A = {a} vs B = {b}: A better on {better}, worse on {worse} metric(s) beyond noise"
                skipped += c.notes
        return {"a": a, "b": b, "rows": rows, "summary": summary, "notes": skipped}


def _json_text(v: Any) -> str:
    return json.dumps(v, indent=1, sort_keys=True, default=str, ensure_ascii=False)


def _cell_text(v: Any) -> str:
    """A details value as table text: numbers as the board writes them, nested values as compact
    JSON (cut at :data:`MAX_CELL_CHARS`)."""
    if v is None or isinstance(v, (bool, int, float)):
        return fmt(v)
    if isinstance(v, str):
        return v
    s = json.dumps(v, separators=(",", ":"), default=str, ensure_ascii=False)
    return s if len(s) <= MAX_CELL_CHARS else s[: MAX_CELL_CHARS - 1] + "…"


def details_view(details: dict[str, Any]) -> dict[str, Any]:
    """A result's details as the SAE page shows them: lists of records as tables (per-task probing,
    absorption per letter, SCR/TPP per pair or class, per-latent rows, ...), ``curves`` as plots,
    tables of scalars keyed by name (``*_by_task``) as two-column tables, the rest as settings."""
    settings, tables, curves = {}, [], {}
    for k, v in details.items():
        if k == "curves" and isinstance(v, dict):
            for c, spec in v.items():
                if isinstance(spec, dict) and isinstance(spec.get("x"), list) and isinstance(spec.get("y"), list):
                    curves[c] = {
                        "x": [_num(x) for x in spec["x"]],
                        "y": [_num(y) for y in spec["y"]],
                        "x_label": str(spec.get("x_label", "x")),
                        "y_label": str(spec.get("y_label", c)),
                        "direction": str(spec.get("direction", "")),
                    }
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols: list[str] = []
            for x in v:
                cols += [c for c in x if c not in cols]
            body = [[{"t": _cell_text(x.get(c)), "v": _num(x.get(c))} for c in cols] for x in v[:MAX_DETAIL_ROWS]]
            tables.append({"title": k, "columns": cols, "rows": body, "cut": max(0, len(v) - MAX_DETAIL_ROWS)})
            tables += _nested_tables(k, v, cols)
        elif isinstance(v, dict) and v and all(v2 is None or isinstance(v2, (int, float, str)) for v2 in v.values()):
            body = [[{"t": str(n), "v": None}, {"t": _cell_text(x), "v": _num(x)}] for n, x in v.items()]
            tables.append({"title": k, "columns": ["name", "value"], "rows": body[:MAX_DETAIL_ROWS], "cut": 0})
        else:
            settings[k] = _cell_text(v)
    return {"settings": settings, "tables": tables, "curves": curves}


def _nested_tables(k: str, records: list[dict[str, Any]], cols: list[str]) -> list[dict[str, Any]]:
    """Records nested in a table's cells (TPP's ``per_class``: name -> record) as tables of their
    own, one row per (parent row, name), the parent named by its first column."""
    out = []
    for c in cols[1:]:
        nested = [(x, x.get(c)) for x in records]
        if not any(isinstance(n, dict) and n and all(isinstance(r, dict) for r in n.values()) for _, n in nested):
            continue
        sub: list[str] = []
        rows = []
        for x, n in nested:
            if not isinstance(n, dict):
                continue
            for name, rec in n.items():
                if isinstance(rec, dict):
                    sub += [f for f in rec if f not in sub]
                    rows.append((x.get(cols[0]), name, rec))
        body = [
            [{"t": _cell_text(p), "v": None}, {"t": str(name), "v": None}]
            + [{"t": _cell_text(rec.get(f)), "v": _num(rec.get(f))} for f in sub]
            for p, name, rec in rows
        ]
        out.append(
            {
                "title": f"{k} → {c}",
                "columns": [cols[0], c, *sub],
                "rows": body[:MAX_DETAIL_ROWS],
                "cut": max(0, len(body) - MAX_DETAIL_ROWS),
            }
        )
    return out


def parse_pattern(pattern: str) -> list[dict[str, Any]] | None:
    """An N2G pattern as rendered by :func:`saebench.probes.n2g.render` (``^`` after a BOS, ``*``
    any token, tokens JSON-quoted, the activating token last) as a token list; None if it does
    not parse."""
    dec = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    i, s = 0, pattern.strip()
    while i < len(s):
        if s[i] == " ":
            i += 1
        elif s[i] == "^":
            out.append({"kind": "bos", "t": "^"})
            i += 1
        elif s[i] == "*":
            out.append({"kind": "wild", "t": "*"})
            i += 1
        else:
            try:
                tok, i = dec.raw_decode(s, i)
            except json.JSONDecodeError:
                return None
            if not isinstance(tok, str):
                return None
            out.append({"kind": "tok", "t": tok})
    return out or None


def n2g_view(lat: dict[str, Any]) -> dict[str, Any]:
    """N2G's record of one latent: scores, and each pattern as tokens with the activating (last)
    token carrying the pattern's stored activation (a fraction of the latent's maximum)."""
    patterns = []
    for p in lat.get("explanation") or []:
        if not isinstance(p, dict):
            continue
        text = str(p.get("pattern", ""))
        toks = parse_pattern(text)
        act = _num(p.get("act"))
        if toks is not None:
            toks[-1]["a"] = act
        patterns.append({"text": text, "tokens": toks, "act": act, "act_text": fmt(p.get("act"))})
    scores = {
        k: fmt(lat.get(k))
        for k in ("f1", "precision", "recall", "n_true", "n_pred", "tp", "base_rate", "max_act", "n_patterns")
        if k in lat
    }
    return {"f1": _num(lat.get("f1")), "scores": scores, "patterns": patterns}


def autointerp_view(lat: dict[str, Any]) -> dict[str, Any]:
    """Autointerp's record of one latent: its explanation (untrusted text) and scores."""
    scores = {}
    for kind in ("detection", "fuzzing", "simulation"):
        s = lat.get(kind)
        if isinstance(s, dict):
            scores[kind] = {k: fmt(v) for k, v in s.items() if v is None or isinstance(v, (int, float))}
        elif s is not None:
            scores[kind] = {"status": str(s)}
    expl = lat.get("explanation")
    return {
        "explanation": None if expl is None else str(expl),
        "status": str(lat.get("status", "")),
        "n_active_tokens": fmt(lat.get("n_active_tokens")),
        "max_act": fmt(lat.get("max_act")),
        "scores": scores,
    }


def contexts_view(lat: dict[str, Any]) -> list[dict[str, Any]]:
    """Activating contexts stored with a latent (``contexts`` or ``examples``: records with token
    strings ``tokens`` and activations ``acts``; the dashboard evaluator stores them), compact:
    ``{"t": [token text], "a": [activation]}`` (the page script makes the highlighted tokens)."""
    out = []
    for c in (lat.get("contexts") or lat.get("examples") or [])[:20]:
        if isinstance(c, dict) and isinstance(c.get("tokens"), list) and isinstance(c.get("acts"), list):
            n = min(len(c["tokens"]), len(c["acts"]))
            acts = [_num(a) for a in c["acts"][:n]]
            out.append({"t": [str(t) for t in c["tokens"][:n]], "a": [0 if not a else a for a in acts]})
    return out


def dashboard_view(lat: dict[str, Any]) -> dict[str, Any]:
    """The dashboard evaluator's record of one latent, beyond its contexts and histogram (which
    the generic keys carry): firing count, density, maximum, who sampled it, and the promoted and
    suppressed output tokens with their logit-lens values."""
    out: dict[str, Any] = {
        k: fmt(lat.get(k)) for k in ("n_fire", "density", "max_act") if isinstance(lat.get(k), (int, float))
    }
    by = lat.get("sampled_by")
    if isinstance(by, list):
        out["sampled_by"] = ", ".join(str(x) for x in by)
    for key in ("promoted", "suppressed"):
        rec = lat.get(key)
        if isinstance(rec, dict) and isinstance(rec.get("tokens"), list) and isinstance(rec.get("logits"), list):
            out[key] = {"t": [str(t) for t in rec["tokens"]], "v": [fmt(v) for v in rec["logits"]]}
    return out


def dashboard_settings(details: dict[str, Any]) -> dict[str, Any]:
    """The dashboard result's details for its SAE page: the per-latent records (contexts,
    histograms, output tokens) live on the latent page, so the SAE page names their count only."""
    lats = details.get("latents")
    if not isinstance(lats, list):
        return details
    return {**details, "latents": f"{len(lats)} latents: contexts, histograms and output tokens on the latent page"}
