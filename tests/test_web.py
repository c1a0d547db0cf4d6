"""The static web board (``saebench leaderboard --html``, docs/web.md): built from a small copy of the
committed results, checked against the markdown board and ``saebench compare``, then read in a
real browser (headless Chromium from Debian's packages, driven by Selenium with the system
chromedriver): pages load with no console error, sorting and filtering change the rows, a plot's
hover names the SAE and its click opens the SAE's page, a latent page highlights tokens, a
planted ``<script>`` stays text. One screenshot per page kind is written to the folder the
browser tests print (``$SAEBENCH_WEB_ARTIFACTS``, else a pytest temp folder).

The browser tests fail (never skip) when Chromium, chromedriver or selenium is missing: CI must
not pass them unseen. ``bash setup.sh --crosscheck`` installs all three (the browser as root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from saebench.cli import main
from saebench.compare import compare
from saebench.errors import SaebenchError
from saebench.leaderboard import render
from saebench.results import load_results, read_result, write_result
from saebench.web import write_site

BOARD = Path(__file__).resolve().parent.parent / "leaderboard" / "results"
SAES = ("relu-2304-l0_32", "topk-2304-k16", "topk-2304-k32")
EVALS = ("core", "probing", "n2g", "autointerp", "absorption", "scr", "tpp", "ksweep", "dashboard")
PLANT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
PLANT_TOKEN = "</script><b onmouseover=window.__pwned=3>x</b>"
DAMAGED = "topk-2304-k16/tpp.json"
ODD = 'relu-at-layer-3 <img src=x onerror="window.__pwned = 5">'  # an SAE name is untrusted text too
INSTALL = (
    "install it: `apt-get install -y chromium chromium-driver` (as root; `bash setup.sh --crosscheck` does it) and "
    "`pip install selenium` (in the dev extras)"
)


def _results(tmp: Path) -> Path:
    """3 SAEs of the committed board (8 evaluators), one result rewritten under another hook (its own
    section), untrusted text planted with the project's writer, and one hand-edited file."""
    res = tmp / "results"
    for sae in SAES:
        for ev in EVALS:
            src = BOARD / sae / f"{ev}.json"
            if src.is_file():
                (res / sae).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, res / sae / src.name)
    r = read_result(res / "topk-2304-k32" / "autointerp.json")
    r.details["latents"][0]["explanation"] = PLANT
    write_result(r, res / "topk-2304-k32" / "autointerp.json")
    r = read_result(res / "topk-2304-k32" / "n2g.json")
    r.details["latents"][0]["explanation"][0]["pattern"] = '" the" ' + json.dumps(PLANT_TOKEN)
    write_result(r, res / "topk-2304-k32" / "n2g.json")
    r = read_result(res / "topk-2304-k32" / "dashboard.json")  # a context token and a promoted token
    ctx = r.details["latents"][0]["contexts"][0]
    ctx["tokens"][ctx["acts"].index(max(ctx["acts"]))] = PLANT_TOKEN
    r.details["latents"][0]["promoted"]["tokens"][0] = PLANT
    write_result(r, res / "topk-2304-k32" / "dashboard.json")
    r = read_result(res / "relu-2304-l0_32" / "core.json")
    r.config["hook"] = "blocks.3.hook_resid_post"
    r.sae.name = ODD
    write_result(r, res / "relu-at-layer-3" / "core.json")
    data = json.loads((res / DAMAGED).read_text())
    data["metrics"]["tpp_top_20"] = 0.99  # edited by hand: fails its checksum
    (res / DAMAGED).write_text(json.dumps(data))
    return res


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("web")
    res = _results(tmp)
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="fails its checksum"):
        report = write_site([res], tmp / "site")
    return {"res": res, "site": tmp / "site", "report": report, "seconds": time.perf_counter() - t0}


def page_data(path: Path) -> Any:
    text = path.read_text()
    m = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.S)
    assert m, f"{path} embeds no page data"
    return json.loads(m.group(1))


def _markdown_tables(md: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """{(section heading, table heading): {SAE: cells}} from the markdown board."""
    out: dict[tuple[str, str], dict[str, list[str]]] = {}
    section = table = ""
    for line in md.splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("### "):
            table = line[4:]
        elif line.startswith("| ") and not line.startswith("| SAE "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.setdefault((section, table), {})[cells[0]] = cells[1:]
    return out


# ---- the site's data (no browser) ------------------------------------------------------------
def test_tables_equal_the_markdown_board_cell_for_cell(built: dict[str, Any]) -> None:
    board = page_data(built["site"] / "index.html")
    with pytest.warns(UserWarning):
        md = _markdown_tables(render(load_results([built["res"]])))
    seen = 0
    for sec in board["sections"]:
        heading = f"{sec['model']} · `{sec['hook']}`"
        for t in sec["tables"]:
            rows = md[(heading, t["title"])] if len(sec["tables"]) > 1 else md[(heading, "")]
            assert sorted(rows) == sorted(r["sae"] for r in t["rows"])
            for r in t["rows"]:
                assert rows[r["sae"]] == [r["architecture"], str(r["d_sae"])] + [_marked(c) for c in r["cells"]]
                seen += 1
    assert seen > 20


def _marked(c: dict[str, Any]) -> str:
    """A web cell as the markdown board writes it: bold when tied with the best, ★ on the best."""
    return c["t"] if not c.get("b") else f"**{c['t']}**" + (" ★" if c["b"] == 2 else "")


def test_other_hooks_get_their_own_section_and_the_damaged_file_is_named(built: dict[str, Any]) -> None:
    board = page_data(built["site"] / "index.html")
    hooks = {s["hook"]: {r["name"] for r in s["saes"]} for s in board["sections"]}
    assert hooks == {"blocks.6.hook_resid_post": set(SAES), "blocks.3.hook_resid_post": {ODD}}
    assert len(board["left_out"]) == 1 and DAMAGED in board["left_out"][0] and "checksum" in board["left_out"][0]
    assert built["report"].left_out == board["left_out"]
    tpp = next(t for t in board["sections"][1]["tables"] if t["title"] == "tpp")  # built from the others
    assert {r["sae"]: bool(r["cells"][0]["t"]) for r in tpp["rows"]} == {
        "relu-2304-l0_32": True,
        "topk-2304-k16": False,
        "topk-2304-k32": True,
    }


def test_untrusted_text_reaches_the_page_as_json_text_only(built: dict[str, Any]) -> None:
    path = built["site"] / "latents" / "topk-2304-k32.html"
    raw = path.read_text()
    assert "<script>window" not in raw and "<img" not in raw and "</script><b" not in raw
    assert "Content-Security-Policy" in raw and "script-src 'self'" in raw
    lats = {lat["id"]: lat for lat in page_data(path)["latents"]}
    assert any(lat.get("autointerp", {}).get("explanation") == PLANT for lat in lats.values())
    toks = [t["t"] for lat in lats.values() for p in lat.get("n2g", {}).get("patterns", []) for t in p["tokens"] or []]
    assert PLANT_TOKEN in toks
    assert any(PLANT_TOKEN in c["t"] for lat in lats.values() for c in lat.get("contexts", []))
    assert any(PLANT in lat.get("dashboard", {}).get("promoted", {}).get("t", []) for lat in lats.values())


def test_latent_pages_join_n2g_autointerp_and_the_dashboard_by_latent_id(built: dict[str, Any]) -> None:
    for sae in ("topk-2304-k16", "relu-2304-l0_32"):
        lats = {lat["id"]: lat for lat in page_data(built["site"] / "latents" / f"{sae}.html")["latents"]}
        dash = {r["latent"]: r for r in read_result(built["res"] / sae / "dashboard.json").details["latents"]}
        n2g = {r["latent"] for r in read_result(built["res"] / sae / "n2g.json").details["latents"]}
        ai = read_result(built["res"] / sae / "autointerp.json").details
        auto = {r["latent"] for r in ai["latents"]}
        # the dashboard holds every latent n2g and autointerp sampled (autointerp's skipped ones too)
        assert set(lats) == set(dash) == n2g | auto | set(ai["skipped_latents"])
        for i, row in dash.items():
            lat = lats[i]
            assert ("n2g" in lat) == (i in n2g) and ("autointerp" in lat) == (i in auto)
            assert [c["t"] for c in lat["contexts"]] == [c["tokens"] for c in row["contexts"]]
            assert lat["histogram"]["counts"] == row["histogram"]["counts"]
            assert lat["dashboard"]["promoted"]["t"] == row["promoted"]["tokens"]
    d = page_data(built["site"] / "sae" / "topk-2304-k16.html")
    ev = next(e for e in d["evaluators"] if e["name"] == "dashboard")  # its records live on the latent page
    assert "latents" not in {t["title"] for t in ev["details"]["tables"]}
    assert "latent page" in ev["details"]["settings"]["latents"]


def test_comparisons_are_saebench_compare_s(built: dict[str, Any]) -> None:
    sec = next(s for s in page_data(built["site"] / "compare.html")["sections"] if len(s["saes"]) == 3)
    pair = next(p for p in sec["pairs"] if p["a"] == "relu-2304-l0_32" and p["b"] == "topk-2304-k32")
    res = built["res"]
    evs = sorted(p.stem for p in (res / "relu-2304-l0_32").glob("*.json") if (res / "topk-2304-k32" / p.name).is_file())
    c = compare(
        [res / "relu-2304-l0_32" / f"{e}.json" for e in evs],
        [res / "topk-2304-k32" / f"{e}.json" for e in evs],
        direct=True,
    )
    words = {"WORSE": "relu-2304-l0_32 worse", "better": "relu-2304-l0_32 better"}  # as `compare A B` prints them
    assert [(r["ev"], r["metric"].split()[0], r["verdict"]) for r in pair["rows"]] == [
        (r.evaluator, r.metric, words.get(r.verdict, r.verdict)) for r in c.rows
    ]
    assert any(r["diff"].endswith(" p") for r in pair["rows"])  # paired intervals reach the page
    assert "only topk-2304-k32 has it" in " ".join(pair["notes"])  # ksweep: TopK only


def test_sae_page_holds_every_metric_and_the_per_unit_tables(built: dict[str, Any]) -> None:
    d = page_data(built["site"] / "sae" / "topk-2304-k32.html")
    evs = {e["name"]: e for e in d["evaluators"]}
    core = read_result(built["res"] / "topk-2304-k32" / "core.json")
    assert {m["metric"] for m in evs["core"]["metrics"]} == set(core.metrics)
    assert d["fingerprints"] == [core.sae.fingerprint]
    tables = {(e, t["title"]): t for e, ev in evs.items() for t in ev["details"]["tables"]}
    for ev, key in (("probing", "tasks"), ("absorption", "letters"), ("scr", "pairs"), ("tpp", "datasets")):
        stored = read_result(built["res"] / "topk-2304-k32" / f"{ev}.json").details[key]
        assert len(tables[(ev, key)]["rows"]) == len(stored) >= 1, (ev, key)  # one row per task / letter / pair
    assert len(tables[("absorption", "letters")]["rows"]) == 26
    per_class = read_result(built["res"] / "topk-2304-k32" / "tpp.json").details["datasets"][0]["per_class"]
    assert [r[1]["t"] for r in tables[("tpp", "datasets → per_class")]["rows"]] == list(per_class)  # TPP per class
    assert set(evs["ksweep"]["details"]["curves"]) >= {"fvu", "delta_ce"}


def test_over_budget_is_refused_and_the_cli_writes_the_site(
    built: dict[str, Any], tmp_path: Path, capsys, monkeypatch
) -> None:
    with pytest.warns(UserWarning), pytest.raises(SaebenchError, match="over its budget"):
        write_site([built["res"]], tmp_path / "small", budget=100_000)
    assert not (tmp_path / "small").exists()
    monkeypatch.chdir(tmp_path)
    code = main(["leaderboard", str(built["res"]), "--html", "site"])
    out, err = capsys.readouterr()
    assert code == 0 and "pages" in out and (tmp_path / "site" / "index.html").is_file()
    assert not (tmp_path / "LEADERBOARD.md").exists()  # --html alone writes no markdown
    assert DAMAGED.split("/")[0] in err and "checksum" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["leaderboard", str(built["res"]), "--html", str(tmp_path / "mine")]) == 2  # never wiped
    assert "holds no saebench site" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").is_file()


def test_a_sweep_gets_no_quadratic_compare_page(built: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    from saebench.web import model

    monkeypatch.setattr(model, "MAX_COMPARE_SAES", 2)
    with pytest.warns(UserWarning):
        write_site([built["res"]], tmp_path / "site")
    pairs = {len(s["saes"]): s["pairs"] for s in page_data(tmp_path / "site" / "compare.html")["sections"]}
    assert pairs == {3: [], 1: []}


# ---- in a real browser -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed: {INSTALL}")
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    if chrome is None or driver_path is None:
        pytest.fail(f"headless Chromium and chromedriver are needed for the web board's tests: {INSTALL}")
    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.binary_location = chrome
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("SAEBENCH_WEB_ARTIFACTS") or tmp_path_factory.mktemp("web-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nweb board screenshots: {out}")
    return out


def _open(d: Any, site: Path, rel: str) -> list[str]:
    """Open a page from disk; the browser's console errors so far (after it rendered)."""
    d.get_log("browser")  # drop what earlier pages logged
    d.get((site / rel).as_uri() if "#" not in rel else (site / rel.split("#")[0]).as_uri() + "#" + rel.split("#")[1])
    assert d.find_elements("css selector", "#app > *"), f"{rel} rendered nothing"
    return [e["message"] for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def _latent_with_patterns(site: Path, sae: str) -> int:
    lats = page_data(site / "latents" / f"{sae}.html")["latents"]
    return next(lat["id"] for lat in lats if lat.get("n2g", {}).get("patterns"))


def test_every_page_loads_with_no_console_error(built: dict[str, Any], browser: Any, artifacts: Path) -> None:
    site = built["site"]
    lat = _latent_with_patterns(site, "topk-2304-k16")
    pages = {
        "board": "index.html",
        "plots": "plots.html",
        "compare": "compare.html",
        "search": "latents.html",
        "sae": "sae/topk-2304-k32.html",
        "latent": f"latents/topk-2304-k16.html#{lat}",
    }
    every = [p.relative_to(site).as_posix() for p in sorted(site.rglob("*.html"))]
    assert len(every) == 4 + 4 + 3  # 4 SAE pages, 3 of them with sampled latents
    for rel in every:
        assert _open(browser, site, rel) == [], rel
        assert browser.execute_script("return window.__pwned === undefined"), rel
    _open(browser, site, "index.html")
    assert ODD in [a.text for a in browser.find_elements("css selector", "table a")]  # shown as text
    for kind, rel in pages.items():
        assert _open(browser, site, rel) == [], rel
        browser.save_screenshot(str(artifacts / f"{kind}.png"))
        assert (artifacts / f"{kind}.png").stat().st_size > 10_000


def _rows(table: Any) -> list[Any]:
    return [r for r in table.find_elements("css selector", "tbody tr") if r.is_displayed()]


def test_sorting_and_filtering_change_the_rows(built: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.support.ui import Select

    site = built["site"]
    _open(browser, site, "index.html")
    sec = page_data(site / "index.html")["sections"][1]
    core = next(t for t in sec["tables"] if t["title"] == "core")
    col = next(i for i, c in enumerate(core["columns"]) if c["metric"] == "fvu")
    fvu = {r["sae"]: r["cells"][col]["v"] for r in core["rows"]}
    table = browser.find_element("css selector", f"section#{sec['id']} table[data-table='core']")
    header = table.find_elements("css selector", "thead th")[3 + col]
    assert "lower is better" in header.get_attribute("title") and "fvu" in header.get_attribute("title")
    header.click()
    assert [r.get_attribute("data-sae") for r in _rows(table)] == sorted(fvu, key=fvu.get)
    best = _rows(table)[0].find_elements("css selector", "td")[3 + col]  # the lowest FVU: bold, starred
    assert best.find_element("css selector", "strong").text and best.text.endswith("★")
    header.click()
    assert [r.get_attribute("data-sae") for r in _rows(table)] == sorted(fvu, key=fvu.get, reverse=True)
    Select(browser.find_element("id", "filter-architecture")).select_by_value("topk")
    assert sorted(r.get_attribute("data-sae") for r in _rows(table)) == ["topk-2304-k16", "topk-2304-k32"]
    Select(browser.find_element("id", "filter-architecture")).select_by_value("")
    assert len(_rows(table)) == 3
    Select(browser.find_element("id", "filter-hook")).select_by_value("blocks.3.hook_resid_post")
    assert not browser.find_element("id", sec["id"]).is_displayed()
    assert browser.find_element("id", page_data(site / "index.html")["sections"][0]["id"]).is_displayed()


def test_a_plot_renders_its_hover_names_the_sae_and_a_click_opens_its_page(built: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    site = built["site"]
    _open(browser, site, "plots.html")
    sec = page_data(site / "plots.html")["sections"][1]
    points = browser.find_elements("css selector", f"section#{sec['id']} svg.chart circle.point")
    assert sorted(p.get_attribute("data-sae") for p in points) == sorted(SAES)  # core FVU against L0
    assert browser.find_elements("css selector", f"section#{sec['id']} svg.chart line.errbar")
    target = next(p for p in points if p.get_attribute("data-sae") == "relu-2304-l0_32")
    ActionChains(browser).move_to_element(target).perform()
    tip = browser.find_element("id", "tooltip")
    assert tip.is_displayed() and tip.text.splitlines()[0] == "relu-2304-l0_32" and "FVU" in tip.text
    target.click()
    assert browser.current_url.endswith("/sae/relu-2304-l0_32.html")
    assert browser.find_element("css selector", "h1").text == "relu-2304-l0_32"


def test_a_latent_page_highlights_the_activating_tokens(built: dict[str, Any], browser: Any) -> None:
    site = built["site"]
    lat = _latent_with_patterns(site, "topk-2304-k16")
    assert _open(browser, site, f"latents/topk-2304-k16.html#{lat}") == []
    detail = browser.find_element("id", "latent-detail")
    assert detail.get_attribute("data-latent") == str(lat)
    active = detail.find_elements("css selector", ".patterns .tok.active")
    assert active and all("rgba(255, 120, 0" in a.value_of_css_property("background-color") for a in active)
    search = browser.find_element("id", "latent-search")
    search.send_keys(str(lat))
    table = browser.find_element("css selector", "table.data")
    assert [r.find_element("css selector", "td").text for r in _rows(table)] == [str(lat)]


def test_a_latent_page_shows_real_contexts_a_histogram_and_output_tokens(built: dict[str, Any], browser: Any) -> None:
    site = built["site"]
    rows = read_result(built["res"] / "topk-2304-k16" / "dashboard.json").details["latents"]
    row = next(r for r in rows if "autointerp" in r["sampled_by"] and len(r["contexts"]) >= 3)
    assert _open(browser, site, f"latents/topk-2304-k16.html#{row['latent']}") == []
    detail = browser.find_element("id", "latent-detail")
    items = detail.find_elements("css selector", ".contexts li")
    assert len(items) == len(row["contexts"]) >= 3
    for li, c in zip(items, row["contexts"], strict=True):
        shown = li.find_elements("css selector", ".tok")
        assert [t.get_attribute("textContent") for t in shown] == c["tokens"]
        active = [t for t, a in zip(shown, c["acts"], strict=True) if a]
        assert active and all("active" in t.get_attribute("class") for t in active)
        assert all("rgba(255, 120, 0" in t.value_of_css_property("background-color") for t in active)
        top = c["acts"].index(max(c["acts"]))
        assert shown[top].get_attribute("title") == f"activation {c['acts'][top]}"
    promoted = [t.get_attribute("textContent") for t in detail.find_elements("css selector", ".logits.promoted .tok")]
    suppressed = [
        t.get_attribute("textContent") for t in detail.find_elements("css selector", ".logits.suppressed .tok")
    ]
    assert promoted == row["promoted"]["tokens"] and suppressed == row["suppressed"]["tokens"] and len(promoted) == 10
    assert detail.find_elements("css selector", "svg.chart")  # the activation histogram


def test_a_planted_script_is_shown_as_text_and_never_runs(built: dict[str, Any], browser: Any) -> None:
    site = built["site"]
    lats = page_data(site / "latents" / "topk-2304-k32.html")["latents"]
    planted = next(lat["id"] for lat in lats if lat.get("autointerp", {}).get("explanation") == PLANT)
    token = next(
        lat["id"] for lat in lats if any(PLANT_TOKEN in p["text"] for p in lat.get("n2g", {}).get("patterns", []))
    )
    in_context = next(lat["id"] for lat in lats if any(PLANT_TOKEN in c["t"] for c in lat.get("contexts", [])))
    for lid in (planted, in_context, token):
        assert _open(browser, site, f"latents/topk-2304-k32.html#{lid}") == []
        for el in browser.find_elements("css selector", "#latent-detail .tok, #latent-detail .explanation"):
            browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))", el)
        assert browser.execute_script("return window.__pwned === undefined")
        if lid == in_context:  # the planted context token is the highlighted one, as text; the promoted one too
            active = browser.find_elements("css selector", "#latent-detail .contexts li:first-child .tok.active")
            assert PLANT_TOKEN in [a.text for a in active]
            assert browser.find_element("css selector", "#latent-detail .logits.promoted .tok").text == PLANT
            assert not browser.find_elements("css selector", "#app img, #app b")
    assert browser.find_element("css selector", "#latent-detail .patterns li .tok.active").text == PLANT_TOKEN
    _open(browser, site, f"latents/topk-2304-k32.html#{planted}")
    assert browser.find_element("css selector", "#latent-detail .explanation").text == PLANT
    assert not browser.find_elements("css selector", "#app img, #app script")
    _open(browser, site, "latents.html")
    browser.find_element("id", "latent-search").send_keys("onerror")
    assert len(_rows(browser.find_element("css selector", "table.data"))) == 1
    pats = [p["text"] for lat in lats for p in lat.get("n2g", {}).get("patterns", []) if '" the" "' in p["text"]]
    assert pats  # the planted pattern ` the</script>...`: found by its plain text, quotes and all
    search = browser.find_element("id", "latent-search")
    search.clear()
    search.send_keys(" the</script>")
    assert [
        r.find_elements("css selector", "td")[1].text for r in _rows(browser.find_element("css selector", "table.data"))
    ] == [str(token)]
    assert browser.execute_script("return window.__pwned === undefined")


def test_the_compare_page_shows_the_chosen_pair(built: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.support.ui import Select

    site = built["site"]
    sec = next(s for s in page_data(site / "compare.html")["sections"] if len(s["saes"]) == 3)
    assert _open(browser, site, "compare.html") == []
    Select(browser.find_element("id", f"{sec['id']}-a")).select_by_value("relu-2304-l0_32")
    Select(browser.find_element("id", f"{sec['id']}-b")).select_by_value("topk-2304-k32")
    pair = next(p for p in sec["pairs"] if p["a"] == "relu-2304-l0_32" and p["b"] == "topk-2304-k32")
    box = browser.find_element("css selector", f"section#{sec['id']} .compare-out")
    assert box.find_element("css selector", ".summary").text == pair["summary"]
    table = box.find_element("css selector", "table.compare")
    assert len(_rows(table)) == len(pair["rows"])
    browser.find_element("id", f"{sec['id']}-only").click()
    table = browser.find_element("css selector", f"section#{sec['id']} table.compare")
    shown = [r.find_elements("css selector", "td")[-1].text for r in _rows(table)]
    assert shown and len(shown) < len(pair["rows"]) and all("noise" not in v and v != "same" for v in shown)


def test_the_pages_policy_blocks_inline_script_should_escaping_ever_fail(built: dict[str, Any], browser: Any) -> None:
    site = built["site"]
    text = (site / "index.html").read_text().replace("</body>", "<script>window.__pwned = 9</script></body>")
    (site / "csp-check.html").write_text(text)
    try:
        errors = _open(browser, site, "csp-check.html")
        assert browser.execute_script("return window.__pwned === undefined")
        assert any("Content Security Policy" in e for e in errors)
        assert browser.find_elements("css selector", "table.data")  # our own script still ran
    finally:
        (site / "csp-check.html").unlink()
