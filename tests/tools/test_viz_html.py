"""The HTML graph viewer: self-contained, and rendered by a real headless browser (Debian chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from graphpeft.tools.viz_html import to_html
from shared_models import llama_with_lora

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
)
Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("viewer") / "graph.html"
    path.write_text(to_html(llama_with_lora()), encoding="utf-8")
    return path


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,900",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, check=False, text=True, timeout=120)


def _rendered_dom(tmp_path: Path, url: str) -> str:
    done = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_needs_no_network(page):
    text = page.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text), "every script and style is inline"
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text


def test_page_embeds_graph_data_with_adapter_nodes_and_diff(page):
    text = page.read_text()
    assert '"role": "lora_down"' in text
    assert '"added": true' in text
    assert "rewrite diff: 24 added, 4 rewired" in text


@needs_chromium
def test_browser_renders_the_module_overview_without_errors(page, tmp_path):
    dom = _rendered_dom(tmp_path, page.as_uri())
    assert '<div id="gp-errors"></div>' in dom, re.findall(r'class="gp-error">([^<]*)', dom)
    rendered = int(re.search(r'data-rendered="(\d+)"', dom).group(1))
    assert 5 <= rendered <= 30, "the overview shows modules, not every op"
    assert "layers.0 (LlamaDecoderLayer)" in dom
    assert "2 adapted sites: lora" in dom
    svg = re.search(r'<svg id="graph".*?</svg>', dom, flags=re.DOTALL).group(0)
    assert "lora_down" not in svg, "adapter ops stay folded inside their modules until expanded"


@needs_chromium
def test_browser_expands_a_module_to_its_adapter_nodes_and_diff(page, tmp_path):
    dom = _rendered_dom(tmp_path, page.as_uri() + f"?expand={Q0}&diff=1")
    assert '<div id="gp-errors"></div>' in dom, re.findall(r'class="gp-error">([^<]*)', dom)
    svg = re.search(r'<svg id="graph".*?</svg>', dom, flags=re.DOTALL).group(0)
    adapter_items = re.findall(r'<g class="item adapter added"[^>]*data-key="n:([^"]+)"', svg)
    assert sorted(adapter_items) == sorted(
        f"model_layers_0_self_attn_q_proj_lora_{r}" for r in ("a_default", "b_default", "down", "up", "scale", "add")
    )
    assert 'class="edge adapter rewired"' in svg or 'class="edge rewired"' in svg


@needs_chromium
def test_browser_search_highlights_matching_modules(page, tmp_path):
    dom = _rendered_dom(tmp_path, page.as_uri() + "?q=v_proj")
    assert '<div id="gp-errors"></div>' in dom
    results = re.search(r'<div id="results">(.*?)</div>\s*<div class="section">', dom, flags=re.DOTALL).group(1)
    assert "model.layers.0.self_attn.v_proj" in results
    assert "model.layers.1.self_attn.v_proj" in results


@needs_chromium
def test_browser_screenshot_of_the_viewer(page, tmp_path):
    shot = tmp_path / "viewer.png"
    done = _chromium(tmp_path, "--virtual-time-budget=5000", f"--screenshot={shot}", page.as_uri() + f"?expand={Q0}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
