"""report.html (one self-contained file: plots embedded as base64 PNG, inline style, no script, no
network) and report.md, written beside results.json by every compare, train and study run, and
rebuilt from a run folder by `transferlab report DIR`.

Everything comes from the run folder: results.json, and the Trainer log history of each run that
compare writes to strategies/NAME/log-fold*-seed*.jsonl.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from transferlab.data.checks import describe as describe_checks
from transferlab.report import plots
from transferlab.report.table import CALIBRATION_COLUMNS, has_forgetting, row_cells, shown_metrics
from transferlab.results import describe_settings, load_results, ranked_trials
from transferlab.runio import atomic_write_bytes, atomic_write_text

STUDY_PLOT = "study.png"
SAVED_PLOTS = {"study": STUDY_PLOT, "search": "search.png"}  # figures also written beside the report as PNG files

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9rem; } th, td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; } tr.best td { font-weight: bold; }
.meta { color: #555; font-size: 0.9rem; } .held { background: #e7f6e7; } .refuted { background: #fbe9e9; } .undecided { background: #f3f3f3; }
.verdict { padding: 0.7rem 1rem; border-radius: 6px; } img { max-width: 100%; height: auto; }
"""


def load_histories(directory: Path, names: list[str]) -> dict[str, list[list[dict[str, Any]]]]:
    """Each row's Trainer log histories (one list per fold x seed run), where the run wrote them."""
    histories: dict[str, list[list[dict[str, Any]]]] = {}
    for name in names:
        runs = []
        for path in sorted((Path(directory) / "strategies" / name).glob("log-*.jsonl")):
            runs.append([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])
        histories[name] = runs
    return histories


def rows_in_order(results: dict[str, Any]) -> list[str]:
    """A study keeps its points' order; a comparison ranks by the headline metric, skipped rows last."""
    names = list(results["strategies"])
    if "study" in results:
        return names
    primary = results.get("primary_metric", "accuracy")
    ok = [n for n in names if results["strategies"][n].get("status") == "ok"]
    ranked = sorted(ok, key=lambda n: -results["strategies"][n]["metrics"][primary]["mean"])
    return ranked + [n for n in names if n not in ok]


def figures(directory: Path, results: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(id, title, PNG) for each plot the results allow."""
    order = rows_in_order(results)
    primary = results.get("primary_metric", "accuracy")
    out: list[tuple[str, str, bytes]] = []
    if "study" in results:
        out.append(("study", f"Study: {results['study']['name']}", plots.study_plot(results)))
    if results.get("search", {}).get("trials"):
        out.append(("search", "Search: each trial's validation score", plots.search_plot(results["search"])))
    curves = plots.training_curves(load_histories(directory, order), primary)
    if curves:
        out.append(("curves", "Training curves", curves))
    ok = [n for n in order if results["strategies"][n].get("status") == "ok"]
    if "study" in results:  # many points: the best one and the worst one
        ok = sorted(ok, key=lambda n: -results["strategies"][n]["metrics"][primary]["mean"])
        ok = ok[:1] + ok[-1:] if len(ok) > 1 else ok
    matrices = plots.confusion_matrices(results, ok)
    if matrices:
        out.append(("confusion", "Confusion matrices (test set, summed over runs)", matrices))
    reliability = None if "study" in results else plots.reliability_diagrams(results, ok)  # a study's plot is its question's
    if reliability:
        out.append(
            (
                "reliability",
                "Reliability (test set, first run): accuracy per confidence bin (multi-label: how often a label is there per bin of its "
                "probability), before and after temperature scaling",
                reliability,
            )
        )
    return out


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]], str | None]:
    metrics = shown_metrics(results)
    forgetting = has_forgetting(results)
    header = [
        "point" if "study" in results else "strategy",
        *metrics,
        "vs best",
        *CALIBRATION_COLUMNS,
        "trainable",
        "%",
        "train s",
        "peak MB",
    ]
    header += ["forgetting"] if forgetting else []
    comparison = results.get("comparison", {})
    rows = []
    for name in rows_in_order(results):
        r = results["strategies"][name]
        if r.get("status") != "ok":
            rows.append([name, f"{r.get('status')}: {r.get('reason', '')}"] + [""] * (len(header) - 2))
            continue
        rows.append([name, *row_cells(name, r, metrics, comparison, forgetting)])
    return header, rows, comparison.get("best")


def search_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """`auto`'s trials, best validation score first: what each tried and how it ended."""
    search = results["search"]
    header = ["trial", "strategy", "settings", f"validation {search['metric']}", "ended", "evaluations", "s"]
    rows = [
        [
            str(r["trial"]),
            r["strategy"] or "",
            describe_settings(r["settings"]),
            "" if r["validation"] is None else f"{r['validation']:.4f}",
            r["state"] + (f": {r['reason']}" if r.get("reason") else ""),
            str(r["evaluations"]),
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
        ]
        for r in ranked_trials(search)
    ]
    return header, rows


def describe(results: dict[str, Any]) -> list[str]:
    evaluation = results.get("evaluation", {})
    seeds = evaluation.get("seeds", [results.get("seed", 0)])
    points = results.get("study", {}).get("points", [])
    sizes = sorted({p["n_train"] for p in points if "n_train" in p})
    backbones = [p["backbone"] for p in points if "backbone" in p]
    labelled = (
        f"{', '.join(map(str, sizes))} labelled examples by point (10% of each validate)"
        if sizes
        else f"{results.get('n_train')} labelled examples ({results.get('n_fit')} train, {results.get('n_val')} validation)"
    )
    lines = [
        f"backbone {' and '.join(backbones) or results.get('backbone')}, dataset {results.get('dataset')}: {labelled}, "
        f"{results.get('n_test')} test",
        f"{evaluation.get('folds', 1)} fold(s) x {len(seeds)} seed(s); headline metric {results.get('primary_metric')}; "
        f"mean ± std over runs"
        + (f"; trained in {precision}, evaluated in fp32" if (precision := results.get("training_precision")) else ""),
        f"command: transferlab {results.get('command')}; created {results.get('created')}; status {results.get('status')}",
    ]
    if comparison := results.get("comparison"):
        lines.append(f"'vs best': {comparison.get('test')}")
    if (search := results.get("search")) and "none_because" in search:
        lines.append(f"{search['none_because']}; the test set was read once")
    elif search:
        winner = search["winner"]
        lines.append(
            f"search: {len(search['trials'])} trial(s) in {search['seconds'] / 60:.1f} of {search['budget_seconds'] / 60:.1f} budgeted "
            f"minutes over {', '.join(search['strategies'])}; winner trial {winner['trial']} ({winner['strategy']}), chosen on "
            f"{search['validation_examples']} validation examples; the test set was read by the winner only"
        )
        if search.get("decided_by") is not None:
            lines.append(f"the search stopped early: trial {search['decided_by']} reached the maximum validation {search['metric']}, 1.0")
    if recommendation := results.get("recommendation"):
        lines.append(f"recommendation: {recommendation.get('verdict')}")
    return lines


def verdict(results: dict[str, Any]) -> tuple[str, str] | None:
    """(css class, sentence) of a study's expectation."""
    study = results.get("study")
    if not study:
        return None
    expectation = study.get("expectation", {})
    held = expectation.get("held")
    word = expectation.get("outcome") or {True: "held", False: "did not hold", None: "undecided"}[held]  # older records: no outcome
    css = {"held": "held", "did not hold": "refuted"}.get(word, "undecided")
    quick = " (--quick: one seed, smaller budget)" if study.get("quick") else ""
    expected = study.get("expected_result", study.get("seed_expectation"))  # the older key, in results.json written before the rename
    return css, f"The expected result: {expected}. On this data it {word}{quick}: {expectation.get('verdict', '')}."


def render_html(results: dict[str, Any], images: list[tuple[str, str, bytes]]) -> str:
    e = html.escape
    title = f"transferlab {results.get('command', '')}: {results.get('backbone')} on {results.get('dataset')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *(f'<p class="meta">{e(line)}</p>' for line in describe(results)),
    ]
    if v := verdict(results):
        parts.append(f'<p class="verdict {v[0]}">{e(v[1])}</p>')
    header, rows, best = table_rows(results)
    parts.append("<h2>Comparison</h2>" + _html_table(header, rows, best))
    if results.get("search", {}).get("trials"):
        parts.append("<h2>Search</h2>" + _html_table(*search_rows(results)))
    if checks := results.get("data_checks"):
        parts.append("<h2>Data checks</h2><ul>" + "".join(f"<li>{e(line)}</li>" for line in describe_checks(checks)) + "</ul>")
    for ident, heading, data in images:
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f'<h2 id="{ident}">{e(heading)}</h2><img alt="{e(heading)}" src="data:image/png;base64,{encoded}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(results: dict[str, Any], images: list[tuple[str, str, bytes]]) -> str:
    title = f"transferlab {results.get('command', '')}: {results.get('backbone')} on {results.get('dataset')}"
    lines = [f"# {title}", "", *(f"- {line}" for line in describe(results)), ""]
    if v := verdict(results):
        lines += [f"**{v[1]}**", ""]
    header, rows, _ = table_rows(results)
    lines += [*_markdown_table(header, rows), ""]
    if results.get("search", {}).get("trials"):
        header, rows = search_rows(results)
        lines += ["## Search", "", *_markdown_table(header, rows), ""]
    if checks := results.get("data_checks"):
        lines += ["## Data checks", "", *(f"- {line.strip().replace('|', '/')}" for line in describe_checks(checks)), ""]
    lines += [f"![{ident} plot]({SAVED_PLOTS[ident]})\n" for ident, _, _ in images if ident in SAVED_PLOTS]
    lines.append(f"Plots ({', '.join(heading.lower() for _, heading, _ in images)}): report.html")
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], rows: list[list[str]], best: str | None = None) -> str:
    """A table whose row named `best` (first cell) is marked."""
    e = html.escape
    cells = ["<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows:
        css = ' class="best"' if best is not None and row[0] == best else ""
        cells.append(f"<tr{css}>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
    return "\n".join(cells) + "\n</tbody></table>"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]


def write_report(directory: Path, results: dict[str, Any]) -> Path:
    """report.html, report.md and (for a study or a search) its plot as a PNG beside results.json, each written atomically."""
    directory = Path(directory)
    images = figures(directory, results)
    for ident, _, data in images:
        if ident in SAVED_PLOTS:
            atomic_write_bytes(directory / SAVED_PLOTS[ident], data)
    atomic_write_text(directory / "report.md", render_markdown(results, images))
    atomic_write_text(directory / "report.html", render_html(results, images))
    return directory / "report.html"


def rebuild_report(directory: Path) -> Path:
    """`transferlab report DIR`: the report again from results.json and the logs, without retraining."""
    return write_report(directory, load_results(directory))
