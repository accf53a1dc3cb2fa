"""The book builds without a single warning, and its pages work in a browser, offline.

The book is built once per session (``jupyter-book build . -W -n --keep-going``, output in a temporary
folder, so the repository's ``_build`` is left alone).  The notebooks are not executed by the build:
their executed ``.ipynb`` files and the figures they wrote (``book/figures/``) must already exist,
as they do in a checkout.  The browser checks serve the built site on 127.0.0.1 and load every page
in headless Chromium with the network blocked; they are skipped when Chromium is not installed.
Every chapter page is also laid out at a desktop width (1400 px) and a phone width (420 px), and no
equation, table or code block may be cut off at either (see ``browser_check.math_layout``).  The
numerical checks of the exercises page are run here too, so that its numbers stay true.
"""
from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("browser_check", Path(__file__).with_name("browser_check.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)

HEADLINE_FIGURE = "book/figures/headline.png"
GLUE_KEYS = ("headline_dataset", "headline_profile", "headline_best_locoprop", "headline_best_first_order")
BUILD_TIMEOUT = 1800
#: A repository address that nothing confirms; no page, button or citation file may name it.
UNCONFIRMED_REPOSITORY = "github.com/locoprop-companion"
EXERCISES = ROOT / "book" / "exercises.md"
#: Window widths (CSS pixels) at which the math of every page is checked: a desktop and a phone.
WIDE, NARROW = 1400, 420
#: Notebook pages with hidden boilerplate, a "Run it yourself" box and both downloads (.py, .ipynb).
NOTEBOOK_PAGES = ("01_local_losses", "02_preconditioning", "03_benchmark", "04_ablations")


def _jupyter_book() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jupyter_book"]


@pytest.fixture(scope="session")
def book(tmp_path_factory):
    """(exit code, console output, path of the built html folder)."""
    out = tmp_path_factory.mktemp("book")
    cmd = [*_jupyter_book(), "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    return proc.returncode, proc.stdout + proc.stderr, out / "_build" / "html"


@pytest.fixture(scope="session")
def site(book):
    code, output, html = book
    if code != 0:
        pytest.fail(f"the book did not build (exit {code}); see test_book_builds_without_warnings:\n{output[-3000:]}")
    return html


@pytest.fixture(scope="session")
def pages(site) -> list[Path]:
    """The HTML pages of the book's chapters (the toc's files), not Sphinx's search/index pages."""
    found = sorted(p for p in site.rglob("*.html") if p.parent.name in {"book", "notebooks"})
    assert found, f"no chapter pages under {site}"
    return found


@pytest.fixture(scope="session")
def chromium():
    path = bc.find_chromium()
    if path is None:
        pytest.skip(bc.INSTALL_HINT)
    return path


@pytest.fixture(scope="session")
def server(site):
    with bc.serve(site) as url:
        yield url


def test_book_builds_without_warnings(book):
    code, output, _ = book
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert code == 0, f"jupyter-book exited with {code}:\n" + "\n".join(warnings or output.splitlines()[-40:])
    assert not warnings, "the build printed warnings:\n" + "\n".join(warnings)


def test_every_toc_entry_is_built(site):
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [ch["file"] for part in toc.get("parts", []) for ch in part.get("chapters", [])]
    missing = [f for f in files if not (site / f"{Path(f).with_suffix('')}.html").exists()]
    assert not missing, f"toc entries without a built page: {missing}"


def test_landing_page_shows_headline_figure_and_glued_numbers(site):
    html = (site / "book" / "index.html").read_text(encoding="utf-8")
    assert re.search(r"<img[^>]+src=\"[^\"]*headline\.png\"", html), "no headline figure <img> on index"
    text = re.sub(r"<[^>]+>", " ", html)
    for marker in ("{glue", "glue:text", "::headline_"):
        assert marker not in text, f"unresolved glue reference {marker!r} on the landing page"
    assert html.count('class="pasted-text"') >= len(GLUE_KEYS), "glued headline values missing on the landing page"


def test_pages_have_no_unresolved_roles(pages):
    for page in pages:
        text = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))
        for marker in ("{eq}", "{prf:ref}", "{cite", "{glue", "{doc}", "{numref}"):
            assert marker not in text, f"{page.name}: unresolved {marker}"
        substitution = re.search(r"\{\{\s*\w+\s*\}\}", text)  # a MyST substitution left as typed
        assert not substitution, f"{page.name}: unresolved substitution {substitution.group(0)}"


def test_no_glued_value_is_shown_as_a_python_object(pages):
    """A value glued in a notebook and pasted into another page shows its text/plain form where myst-nb cannot
    render its richer one (Markdown, for one): the reader would see ``<IPython.core.display.Markdown object>``."""
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))
        shown = re.search(r"<[\w.]+ object( at 0x[0-9a-f]+)?>", text)
        assert not shown, f"{page.name}: a glued value is shown as {shown.group(0)}"


def test_no_table_cell_is_cut_short(pages):
    """pandas ends a cell longer than ``display.max_colwidth`` with "...": the reader would miss its end."""
    for page in pages:
        cut = re.findall(r"<td>([^<]*\.\.\.)</td>", page.read_text(encoding="utf-8"))
        assert not cut, f"{page.name}: table cells cut short: {cut[:3]}"


def _html_files(site: Path) -> list[Path]:
    """Every HTML page of the site (the theme's template fragments under _static/ are not pages)."""
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def test_site_loads_nothing_from_the_internet(site):
    offenders = {}
    for page in _html_files(site):
        ext = bc.external_resources(page.read_text(encoding="utf-8"))
        if ext:
            offenders[page.relative_to(site).as_posix()] = ext
    assert not offenders, f"pages load external resources (the book must work offline): {offenders}"


def test_no_local_link_is_broken(site, server):
    urls: dict[str, str] = {}
    for page in _html_files(site):
        for url in bc.page_refs(page, site, server):
            urls.setdefault(url, page.relative_to(site).as_posix())
    assert urls
    broken = {}
    for url, page in sorted(urls.items()):
        status, _ = bc.http_get(url)
        if status != 200:
            broken[url] = (status, page)
    assert not broken, f"local references that do not return 200: {broken}"


def test_favicon_is_served(site, server):
    html = (site / "book" / "index.html").read_text(encoding="utf-8")
    match = re.search(r"<link[^>]+rel=\"icon\"[^>]+href=\"([^\"]+)\"|<link[^>]+href=\"([^\"]+)\"[^>]+rel=\"icon\"", html)
    assert match, "no favicon <link rel=icon> (the browser would request /favicon.ico and get 404)"
    href = match.group(1) or match.group(2)
    status, body = bc.http_get(bc.urllib.parse.urljoin(server + "book/index.html", href))
    assert status == 200 and body, f"favicon {href} returned HTTP {status}"


def test_headline_figure_is_served_as_an_image(site, server):
    html = (site / "book" / "index.html").read_text(encoding="utf-8")
    src = re.search(r"<img[^>]+src=\"([^\"]*headline\.png)\"", html).group(1)
    status, body = bc.http_get(bc.urllib.parse.urljoin(server + "book/index.html", src))
    assert status == 200, f"headline figure {src} returned HTTP {status}"
    width, height = bc.png_size(body)
    assert width > 0 and height > 0


def test_pages_render_math_in_chromium(pages, site, server, chromium, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    failures = []
    for page in pages:
        rel = page.relative_to(site).as_posix()
        html = page.read_text(encoding="utf-8")
        n_math = len(re.findall(r"class=\"math notranslate nohighlight\"", html))
        dom = bc.dump_dom(chromium, server + rel, profile)
        n_rendered = dom.count("<mjx-container")
        if "<mjx-merror" in dom:
            failures.append(f"{rel}: MathJax reported an error (mjx-merror)")
        if n_math and n_rendered < n_math:
            failures.append(f"{rel}: {n_math} math elements but only {n_rendered} rendered by MathJax")
        if rel == "book/index.html":
            if not re.search(r"<img[^>]+headline\.png", dom):
                failures.append("book/index.html: headline <img> missing from the rendered page")
    assert not failures, "\n".join(failures)


def test_method_page_has_math(pages):
    method = next(p for p in pages if p.name == "method.html")
    html = method.read_text(encoding="utf-8")
    assert html.count("class=\"math notranslate nohighlight\"") > 50
    assert re.search(r"class=\"eqno\">\(\d+\)", html), "numbered equations missing on the method page"


def test_screenshots(site, server, chromium, tmp_path_factory):
    """Screenshots of the landing page, the two derivation chapters and the four notebook pages,
    at a desktop and a phone width, for a human to look at (path printed)."""
    out = tmp_path_factory.mktemp("screenshots")
    profile = tmp_path_factory.mktemp("chromium-shots")
    pages = (["book/index", "book/method", "book/baselines", "book/exercises", "book/notation", "book/status"]
             + [f"notebooks/{n}" for n in NOTEBOOK_PAGES])
    for page in pages:
        for width in (WIDE, NARROW):
            name = f"{page.replace('/', '_')}_{width}.png"
            shot = bc.screenshot(chromium, f"{server}{page}.html", out / name, profile, size=(width, 2400))
            assert bc.png_size(shot.read_bytes()) == (width, 2400)
            assert shot.stat().st_size > 20_000, f"{shot} looks blank"
    print(f"screenshots in {out}")


@pytest.fixture(scope="session")
def math_layouts(pages, site, server, chromium, tmp_path_factory) -> dict[str, list[dict]]:
    """``{page: [layout at WIDE, layout at NARROW]}`` for every chapter page (``bc.math_layout``)."""
    bc.install_math_probe(site)
    profile = tmp_path_factory.mktemp("chromium-math")
    return {
        page.relative_to(site).as_posix(): bc.math_layout(
            chromium, server, page.relative_to(site).as_posix(), (WIDE, NARROW), profile)
        for page in pages
    }


def test_no_equation_is_cut_off(math_layouts):
    """At both widths no inline equation is clipped and no equation runs off the page; at the desktop
    width every display equation fits without scrolling (at the phone width a wide one may scroll in
    its own box); the page never scrolls sideways."""
    failures = []
    for page, layouts in math_layouts.items():
        for layout in layouts:
            where = f"{page} at {layout['width']} px"
            for item in layout["clipped"]:
                failures.append(f"{where}: inline math cut off by {item['over']} px: {item['tex']}")
            for item in layout["off_page"]:
                failures.append(f"{where}: math runs {item['past']} px off the page: {item['tex']}")
            if layout["width"] >= WIDE:
                for item in layout["scrolled"]:
                    failures.append(f"{where}: display equation {item['label'] or item['tex']} is "
                                    f"{item['over']} px too wide")
            if layout["page_width"] > layout["viewport"] + 1:
                failures.append(f"{where}: the page is {layout['page_width']} px wide, wider than the window; "
                                f"widest content: {layout['page_overflow']}")
    assert not failures, "\n".join(failures)


def test_no_table_or_code_is_cut_off(math_layouts):
    """At both widths every table fits its text column or scrolls inside it, and no code block, code
    cell, output or inline code is wider than its box unless the box scrolls; code blocks wrap."""
    failures = []
    for page, layouts in math_layouts.items():
        for layout in layouts:
            where = f"{page} at {layout['width']} px"
            for item in layout["wide_tables"]:
                failures.append(f"{where}: table {item['over']} px wider than the column: {item['text']}")
            for item in layout["clipped_code"]:
                failures.append(f"{where}: {item['tag']}.{item['cls']} cut off by {item['over']} px "
                                f"(overflow {item['overflow']}): {item['text']}")
            for item in layout["scrolled_code"]:
                failures.append(f"{where}: code scrolls {item['over']} px instead of wrapping: {item['text']}")
    assert not failures, "\n".join(failures)
    status = math_layouts["book/status.html"]
    assert all(layout["n_tables"] >= 2 for layout in status), "the status page's tables were not measured"
    # the collapsed code cells of the notebooks were unfolded and measured too
    benchmark = math_layouts["notebooks/03_benchmark.html"]
    assert all(layout["unfolded"] >= 10 for layout in benchmark), "the benchmark notebook's cells were not unfolded"


def test_math_is_laid_out_at_both_widths(math_layouts):
    for layouts in (math_layouts["book/method.html"], math_layouts["book/baselines.html"]):
        assert [layout["width"] for layout in layouts] == [WIDE, NARROW]
        assert all(layout["viewport"] == layout["width"] and layout["n_math"] > 50 for layout in layouts)


def test_no_unconfirmed_repository_is_named(site):
    """No public repository is confirmed, so no page, button or citation names one (not even Jupyter
    Book's default, its own repository)."""
    for page in _html_files(site):
        html = page.read_text(encoding="utf-8")
        for address in (UNCONFIRMED_REPOSITORY, "github.com/executablebooks/jupyter-book"):
            assert address not in html, f"{page.relative_to(site)} names {address}"
    html = (site / "book" / "index.html").read_text(encoding="utf-8")
    assert "issues/new" not in html and "btn-source-repository" not in html, "repository or issue button"
    cff = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert UNCONFIRMED_REPOSITORY not in cff and "repository-code" not in cff


def test_footer_gives_build_date_and_commit(site):
    for name in ("book/index.html", "book/method.html", "notebooks/01_local_losses.html"):
        html = (site / name).read_text(encoding="utf-8")
        match = re.search(r"Built on (\d{4}-\d{2}-\d{2}) from commit <code>([0-9a-f]{7,40}|unknown)</code>", html)
        assert match, f"{name}: no build date and commit in the footer"
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    assert match.group(2) == head


def test_no_general_index_and_no_raw_proof_labels(site):
    """The general index (empty) and sphinx-proof's index (raw labels) are not built; the notation
    page lists the results by number and title instead."""
    assert not (site / "genindex.html").exists() and not (site / "prf-prf.html").exists()
    for page in _html_files(site):
        html = page.read_text(encoding="utf-8")
        assert "genindex.html" not in html and "prf-prf.html" not in html, f"{page.relative_to(site)} links an index"
    text = re.sub(r"<[^>]+>", " ", (site / "book" / "notation.html").read_text(encoding="utf-8"))
    for title in ("Theorem 2 (First local step equals BackProp)", "Proposition 1 (Implicit damping)",
                  "Algorithm 1 (LocoProp (one outer step))"):
        assert title in re.sub(r"\s+", " ", text), f"the list of results lacks {title!r}"


def test_status_page_has_one_row_per_notebook(site):
    import json

    html = (site / "book" / "status.html").read_text(encoding="utf-8")
    table = re.search(r'<table[^>]*execution-status.*?</table>', html, re.S)
    assert table, "no execution-status table"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(0), re.S)[1:]
    notebooks = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert len(rows) == len(notebooks) > 0
    for row, path in zip(rows, notebooks):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]["papermill"]
        assert cells[0] == path.stem and cells[1] == meta["parameters"]["profile"] and "executor" not in cells[2]
        assert cells[3].startswith(meta["start_time"][:10]) and cells[5] in ("yes", "no")


def test_bibliography_labels_are_plain_text_in_order(site):
    html = (site / "book" / "bibliography.html").read_text(encoding="utf-8")
    labels = [re.sub(r"<[^>]+>", "", label) for label in
              re.findall(r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<span class="fn-bracket">', html)]
    assert labels and not any("{" in label or "\\" in label for label in labels), labels
    assert "von Rütte 2023" in labels
    surnames = [re.sub(r"^von ", "", label).split()[0].replace("ü", "u").casefold() for label in labels]
    assert surnames == sorted(surnames), labels


def _exercise_checks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", EXERCISES.read_text(encoding="utf-8"), re.S | re.M)


def test_every_exercise_has_a_check():
    sections = re.findall(r"^## ", EXERCISES.read_text(encoding="utf-8"), re.M)
    assert len(_exercise_checks()) == len(sections) > 0


@pytest.mark.parametrize("number", range(len(_exercise_checks())))
def test_exercise_check_holds(number):
    """Each exercise's check runs in a fresh interpreter from the repository root and must not fail."""
    code = _exercise_checks()[number]
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, f"check {number + 1} of book/exercises.md failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"


def test_how_to_cite_gives_bibtex_and_citation_file(site, server):
    html = (site / "book" / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    assert "@inproceedings{amid2022locoprop" in text and "@misc{locoprop_companion" in text
    href = re.search(r'href="([^"]*_downloads/[^"]*/CITATION\.cff)"', html)
    assert href, "no download link to CITATION.cff"
    status, body = bc.http_get(bc.urllib.parse.urljoin(server + "book/index.html", href.group(1)))
    assert status == 200 and body == (ROOT / "CITATION.cff").read_bytes()


@pytest.mark.parametrize("name", NOTEBOOK_PAGES)
def test_notebook_page_offers_downloads_and_hides_boilerplate(site, server, name):
    html = (site / "notebooks" / f"{name}.html").read_text(encoding="utf-8")
    page_url = f"{server}notebooks/{name}.html"
    assert re.search(rf'href="[^"]*_sources/notebooks/{name}\.ipynb"', html), "no .ipynb download button"
    for suffix in ("py", "ipynb"):
        href = re.search(rf'href="([^"]*_downloads/[^"]*/{name}\.{suffix})"', html)
        assert href, f"no download link to {name}.{suffix}"
        status, body = bc.http_get(bc.urllib.parse.urljoin(page_url, href.group(1)))
        assert status == 200 and body, f"{name}.{suffix} download returned HTTP {status}"
        if suffix == "py":
            assert body == (ROOT / "notebooks" / f"{name}.py").read_bytes()
    text = re.sub(r"<[^>]+>", "", html)
    assert "Run it yourself" in text and f"--notebook {name}" in text
    # the header box: what it needs, how long it runs, what it found, what comes next
    assert "At a glance" in text and all(word in text for word in ("Needs", "Runs", "Finds", "Next"))
    # the papermill "parameters" cell is removed (the injected one shows the values used); imports,
    # helpers and plotting code are collapsed
    assert "tag_parameters" not in html
    assert html.count("tag_hide-input") >= 2
