"""report.html and report.md from results.json: self-contained (embedded PNGs, no network), rebuilt by
`transferlab report DIR`, and rendered by headless Chromium with every plot loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.synthetic_results import curve, record, study_record, write_run_folder
from transferlab.errors import UserError
from transferlab.report import rebuild_report, write_report

IMAGE = '<img alt="'
DATA_PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


class _References(HTMLParser):
    """Every src/href attribute and every tag, to check that nothing points outside the file."""

    def __init__(self):
        super().__init__()
        self.references: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.references += [value or "" for name, value in attrs if name in ("src", "href")]


def _self_contained(page: str) -> _References:
    parser = _References()
    parser.feed(page)
    assert all(ref.startswith("data:image/png;base64,") for ref in parser.references), parser.references
    assert not {"script", "link", "iframe", "object"} & parser.tags
    assert "http" not in DATA_PNG.sub("", page)  # no address anywhere outside the embedded images
    return parser


def _study(tmp_path: Path) -> Path:
    points = [{"label": f"r={r}", "x": r, "strategy": "lora", "curves": [curve([0.7, 0.6, 0.5])]} for r in (1, 8, 64)]
    results = study_record("lora-rank", points, {"r=1": [0.79, 0.80, 0.79], "r=8": [0.80, 0.81, 0.80], "r=64": [0.80, 0.80, 0.81]})
    return write_run_folder(tmp_path / "study", results)


def test_a_comparison_report_is_self_contained(tmp_path):
    results = record({"full": [0.80, 0.82], "lora": [0.79, 0.80], "head": [0.72, 0.73]})
    write_report(write_run_folder(tmp_path / "run", results), results)
    folder = tmp_path / "run"
    page = (folder / "report.html").read_text()
    parser = _self_contained(page)
    assert page.count(IMAGE) == len(parser.references) == 2  # training curves, confusion matrices
    assert page.index("<td>full</td>") < page.index("<td>lora</td>") < page.index("<td>head</td>")  # ranked
    assert "0.8100 ± 0.0141" in page and '<tr class="best"><td>full</td>' in page
    markdown = (folder / "report.md").read_text()
    assert "| full | 0.8100 ± 0.0141 |" in markdown and not (folder / "study.png").exists()


def test_a_study_report_states_the_expectation_and_keeps_the_point_order(tmp_path):
    folder = _study(tmp_path)
    rebuild_report(folder)
    page = (folder / "report.html").read_text()
    _self_contained(page)
    assert page.count(IMAGE) == 3  # the study's plot, training curves, confusion matrices
    assert page.index("<td>r=1</td>") < page.index("<td>r=8</td>") < page.index("<td>r=64</td>")
    assert "The expected result: diminishing returns after r of about 8" in page and "On this data it held (--quick" in page
    assert (folder / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert "![study plot](study.png)" in (folder / "report.md").read_text()


def test_a_study_results_json_with_the_older_expectation_key_still_reports(tmp_path):
    points = [{"label": f"r={r}", "x": r, "strategy": "lora", "curves": [curve([0.7, 0.6, 0.5])]} for r in (1, 8, 64)]
    results = study_record("lora-rank", points, {"r=1": [0.79], "r=8": [0.80], "r=64": [0.80]})
    results["study"]["seed_expectation"] = results["study"].pop("expected_result")  # as results.json was written before the rename
    folder = write_run_folder(tmp_path / "old", results)
    rebuild_report(folder)
    assert "The expected result: diminishing returns after r of about 8" in (folder / "report.html").read_text()


def test_without_logs_the_report_has_no_training_curves(tmp_path):
    folder = write_run_folder(tmp_path / "run", record({"head": [0.7]}), with_logs=False)
    rebuild_report(folder)
    assert (folder / "report.html").read_text().count(IMAGE) == 1  # the confusion matrix only


def test_rebuild_needs_a_results_file(tmp_path):
    with pytest.raises(UserError, match="results.json does not exist"):
        rebuild_report(tmp_path)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


# Appended to a copy of the report, never shipped in it: after the load event, count images that did not decode.
PROBE = """<script>window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  document.body.setAttribute('data-probe', 'images=' + images.length + ' broken=' + broken);
});</script></body>"""


def _probe(page: Path) -> tuple[str, str]:
    """What the probe saw, and Chromium's log."""
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, done.stdout[-2000:]
    return found.group(1), done.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it: apt-get install chromium)")
def test_chromium_renders_every_plot(tmp_path):
    from PIL import Image

    folder = _study(tmp_path)
    rebuild_report(folder)
    report = folder / "report.html"
    shot = tmp_path / "report.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500, "the screenshot is (nearly) blank"  # text alone gives a few dozen greys
    background = max(colours)[0] / (image.width * image.height)
    assert background < 0.9, f"{background:.0%} of the screenshot is one colour"

    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE))
    seen, log = _probe(probed)
    assert seen == "images=3 broken=0"
    assert not re.search(r"Failed to load|net::ERR_|Not allowed to load", log), log[-2000:]
    # the probe can fail: one image's data cut short does not decode
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"(data:image/png;base64,)[A-Za-z0-9+/=]{64}", r"\1AAAA", probed.read_text(), count=1))
    assert _probe(broken)[0] == "images=3 broken=1"


def test_the_report_is_built_without_torch(tmp_path):
    """The results layer and the report read results.json in a process that never loads a model."""
    reading = {"meter": "cka", "before": 1.0, "after": 0.9, "per_layer": [0.95, 0.85], "mitigations": []}
    folder = write_run_folder(tmp_path / "run", record({"full": [0.8, 0.82], "lora": [0.79, 0.8]}, full={"forgetting": reading}))
    code = (
        "import sys; from transferlab.report import rebuild_report; rebuild_report(sys.argv[1]); "
        "loaded = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; print(loaded); sys.exit(bool(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CKA 0.9000" in (folder / "report.md").read_text()
