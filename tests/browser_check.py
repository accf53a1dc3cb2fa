"""Helpers to check the built book as a reader's browser sees it, offline.

* :func:`serve` serves a folder on 127.0.0.1 (a free port, a background thread);
* :func:`find_chromium`, :func:`dump_dom` and :func:`screenshot` drive a headless Chromium with all
  network access except loopback blocked, so a page that needs the internet (a CDN MathJax, a remote
  font) shows it;
* :func:`page_refs` lists the local ``href``/``src`` references of an HTML file, and :func:`http_get`
  requests them;
* :func:`math_layout` loads a page at given window widths (in an iframe of a probe page that
  :func:`install_math_probe` writes into the site) and reports every equation that is cut off,
  every table wider than the text column and every block of code that is clipped.

Only the standard library is used.  Debian: ``apt-get install chromium``.
"""
from __future__ import annotations

import contextlib
import functools
import html as html_lib
import http.server
import json
import re
import shutil
import struct
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "chromium not installed: apt-get install chromium"

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 and a free port; yields the base URL (ends in '/')."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _run_chromium(chromium: str, args: list[str], profile_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(chromium: str, url: str, profile_dir: Path, budget_ms: int = 15000, timeout: float = 180) -> str:
    """The page's DOM after scripts ran for ``budget_ms`` of virtual time (MathJax included)."""
    proc = _run_chromium(chromium, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], profile_dir, timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"chromium --dump-dom {url} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(
    chromium: str, url: str, out: Path, profile_dir: Path, size: tuple[int, int] = (1280, 2400),
    budget_ms: int = 15000, timeout: float = 180,
) -> Path:
    """Save a PNG screenshot of ``url`` (window ``size``) to ``out``."""
    args = [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", url]
    proc = _run_chromium(chromium, args, profile_dir, timeout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium --screenshot {url} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return out


class _RefParser(HTMLParser):
    ATTRS = {"href", "src"}

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in self.ATTRS and value:
                self.refs.append((tag, name, value))
            elif name == "srcset" and value:
                for part in value.split(","):
                    if part.strip():
                        self.refs.append((tag, name, part.strip().split()[0]))


def all_refs(html: str) -> list[tuple[str, str, str]]:
    """Every ``(tag, attribute, value)`` of ``href``/``src``/``srcset`` in ``html``."""
    parser = _RefParser()
    parser.feed(html)
    return parser.refs


def is_local(value: str) -> bool:
    """A reference to the site itself (relative or root-relative), not an external or special URL."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme or value.startswith("//"):
        return False
    return bool(parsed.path)  # a bare "#anchor" or "?query" stays on the same page


def page_refs(page: Path, site_root: Path, base_url: str) -> set[str]:
    """Absolute URLs (without fragment) of the local references of the HTML file ``page``."""
    rel = page.relative_to(site_root).as_posix()
    page_url = urllib.parse.urljoin(base_url, rel)
    urls = set()
    for _tag, _attr, value in all_refs(page.read_text(encoding="utf-8")):
        if is_local(value):
            url = urllib.parse.urljoin(page_url, value)
            urls.add(urllib.parse.urldefrag(url)[0])
    return urls


def external_resources(html: str) -> list[str]:
    """External URLs the page would *load* by itself (scripts, stylesheets, images, frames)."""
    out = []
    for tag, attr, value in all_refs(html):
        if is_local(value) or value.startswith(("#", "mailto:", "data:", "javascript:")):
            continue
        if tag in {"script", "img", "iframe", "source", "video", "audio"} and attr in {"src", "srcset"}:
            out.append(value)
        elif tag == "link" and attr == "href":
            out.append(value)
    return out


def http_get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    """(status, body) of a GET request; HTTP errors give their status and an empty body."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk; ValueError if ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


# --- Equations that do not fit -------------------------------------------------------------------
#
# MathJax 3 does not break lines.  The book theme shows display equations (``div.math``) in a box that
# scrolls sideways, and clips inline math (``span.math { overflow: hidden }``) at the edge of its box.
# So an equation is *cut off* when inline math is wider than its box (the reader cannot see the
# rest), or when any math reaches past the window without a sideways-scrolling box around it.  A
# display equation that only fits by scrolling its own box is reported separately: a wide window
# should need no scrolling, a phone-sized one may.

MATH_PROBE = "_static/_math_probe.html"

_MATH_PROBE_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>math layout probe</title></head>
<body style="margin:0"><pre id="result">pending</pre>
<script>
async function measure(page, width) {
  const frame = document.createElement("iframe");
  frame.style.cssText = `width:${width}px;height:900px;border:0`;
  const loaded = new Promise(r => frame.addEventListener("load", r));
  frame.src = page;
  document.body.appendChild(frame);
  await loaded;
  const w = frame.contentWindow, d = frame.contentDocument;
  for (let i = 0; i < 200 && !(w.MathJax && w.MathJax.startup && w.MathJax.startup.promise); i++)
    await new Promise(r => setTimeout(r, 50));
  if (w.MathJax && w.MathJax.startup) await w.MathJax.startup.promise;
  await d.fonts.ready;
  await new Promise(r => setTimeout(r, 200));
  // what a reader can unfold is measured unfolded: collapsed code cells, outputs and admonitions
  let unfolded = 0;
  for (const det of d.querySelectorAll("details:not([open])")) { det.open = true; unfolded++; }
  for (const el of d.querySelectorAll(".toggle-hidden")) { el.classList.remove("toggle-hidden"); unfolded++; }
  await new Promise(r => setTimeout(r, 100));
  const tex = new Map();
  try { for (const item of w.MathJax.startup.document.math) tex.set(item.typesetRoot, item.math); } catch (e) {}
  const scrollsX = el => ["auto", "scroll"].includes(w.getComputedStyle(el).overflowX);
  const inScroller = el => { for (let a = el.parentElement; a && a !== d.body; a = a.parentElement)
                               if (scrollsX(a)) return true; return false; };
  const out = {width, viewport: w.innerWidth, page_width: d.documentElement.scrollWidth, n_math: 0, unfolded,
               clipped: [], off_page: [], scrolled: [], page_overflow: [],
               n_tables: 0, wide_tables: [], n_code: 0, clipped_code: [], scrolled_code: []};
  for (const el of d.querySelectorAll("mjx-container")) {
    out.n_math++;
    const display = el.getAttribute("display") === "true";
    const rect = el.getBoundingClientRect();
    const eq = el.closest("[id^=equation-]");
    const info = {display, label: eq ? eq.id : "", width: Math.round(rect.width),
                  tex: (tex.get(el) || "").trim().replace(/\\s+/g, " ").slice(0, 90)};
    if (display) {
      const over = el.scrollWidth - el.clientWidth;
      if (over > 1) out.scrolled.push({...info, over});
    } else {
      const box = (el.closest("span.math") || el.parentElement).getBoundingClientRect();
      const over = Math.max(rect.right - box.right, box.left - rect.left);
      if (over > 1) out.clipped.push({...info, over: Math.round(over)});
    }
    if (rect.right > w.innerWidth + 1 && !inScroller(el))
      out.off_page.push({...info, past: Math.round(rect.right - w.innerWidth)});
  }
  // Tables: the box that holds a table (the table itself, or the nearest ancestor that scrolls
  // sideways) must end inside the text column.  Code: a block whose content is wider than the block
  // must scroll (and code blocks should wrap instead, so a scrolling <pre> is reported too).
  const article = d.querySelector("article.bd-article") || d.querySelector("main") || d.body;
  const column = article.getBoundingClientRect().right - parseFloat(w.getComputedStyle(article).paddingRight || "0");
  const scroller = el => { for (let a = el; a && a !== article; a = a.parentElement) if (scrollsX(a)) return a;
                           return null; };
  const snippet = el => (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 70);
  for (const table of article.querySelectorAll("table")) {
    if (!table.getClientRects().length) continue;  // not displayed at all
    out.n_tables++;
    const over = (scroller(table) || table).getBoundingClientRect().right - column;
    if (over > 1) out.wide_tables.push({text: snippet(table), over: Math.round(over)});
  }
  const code = "pre, div.highlight, div.cell_input, div.cell_output, div.output, div.pasted-block, code.literal";
  for (const el of article.querySelectorAll(code)) {
    if (!el.clientWidth) continue;  // not displayed, or an inline element
    out.n_code++;
    const over = el.scrollWidth - el.clientWidth;
    if (over <= 1) continue;
    const info = {tag: el.tagName.toLowerCase(), cls: String(el.className).slice(0, 50), text: snippet(el), over};
    if (!scrollsX(el)) out.clipped_code.push({...info, overflow: w.getComputedStyle(el).overflowX});
    else if (el.tagName === "PRE") out.scrolled_code.push(info);
  }
  if (d.documentElement.scrollWidth > w.innerWidth + 1) {
    for (const el of d.body.querySelectorAll("*")) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > w.innerWidth + 1 && !el.children.length && !inScroller(el)) {
        out.page_overflow.push({tag: el.tagName.toLowerCase(), text: (el.textContent || "").trim().slice(0, 60)});
        if (out.page_overflow.length >= 5) break;
      }
    }
  }
  frame.remove();
  return out;
}
(async () => {
  const q = new URLSearchParams(location.search);
  const results = [];
  for (const width of q.get("widths").split(",").map(Number)) results.push(await measure(q.get("page"), width));
  document.getElementById("result").textContent = "RESULT" + JSON.stringify(results) + "END";
})().catch(e => { document.getElementById("result").textContent = "ERROR " + e; });
</script></body></html>
"""


def install_math_probe(site: Path) -> str:
    """Write the probe page into the built ``site``; returns its path relative to the site root."""
    path = Path(site) / MATH_PROBE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_MATH_PROBE_HTML, encoding="utf-8")
    return MATH_PROBE


def math_layout(
    chromium: str, base_url: str, page: str, widths: tuple[int, ...], profile_dir: Path,
    budget_ms: int = 40000, timeout: float = 240,
) -> list[dict]:
    """For each window width, how the math of ``page`` (a path relative to the site root) is laid out.

    Needs :func:`install_math_probe` run on the served site.  Each result has ``clipped`` (inline math
    wider than its box, hence cut), ``off_page`` (math past the window edge with no sideways-scrolling
    box around it), ``scrolled`` (display equations that fit only by scrolling their own box),
    ``page_overflow`` (elements that make the whole page scroll sideways), ``n_math`` and
    ``page_width``/``viewport`` in CSS pixels; and, for tables and code, ``wide_tables`` (a table
    whose box, or the sideways-scrolling box around it, ends past the text column), ``clipped_code``
    (a code block, code cell, output or inline code whose content is wider than its box while the
    box does not scroll: cut off, or spilling over its neighbours), ``scrolled_code`` (a ``<pre>``
    that scrolls sideways instead of wrapping), ``n_tables`` and ``n_code``.
    """
    url = f"{base_url}{MATH_PROBE}?widths={','.join(map(str, widths))}&page=/{page}"
    dom = dump_dom(chromium, url, profile_dir, budget_ms=budget_ms, timeout=timeout)
    match = re.search(r"RESULT(.*?)END", dom, re.S)
    if not match:
        found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
        raise RuntimeError(f"math probe gave no result for {page}: {found.group(1)[:500] if found else dom[:500]}")
    return json.loads(html_lib.unescape(match.group(1)))
