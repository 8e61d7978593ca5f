"""The report as one self-contained HTML page: inline CSS, images as ``data:image/png;base64`` URIs,
no scripts and no external URL. A Content-Security-Policy meta tag makes the browser refuse
anything else, so a page that needed the network would show errors instead of quietly loading.

Every piece of text from the run (paths, class names, problems) is HTML-escaped here.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from typing import Any

from detkeeper.config.schema import SPLITS
from detkeeper.report.best_evaluation import SAMPLE_MIN_SCORE, BestEvaluation
from detkeeper.run.exports import ExportRecord
from detkeeper.report.rundata import RunContents, dataset_text, format_number, model_text

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1500px; margin: 0 auto; padding: 1.2em 2em 3em; background: #fafafa; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
code { background: #eee; padding: 0 0.25em; border-radius: 3px; }
table { border-collapse: collapse; margin: 0.6em 0; background: #fff; }
th, td { border: 1px solid #d5d5d5; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff2cc; font-weight: 600; }
tr.pruned td { color: #888; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1em; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 0.8em; margin-bottom: 1em; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 0.5em; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
.missing { background: #eef4fb; border-left: 4px solid #5b8fd6; padding: 0.4em 0.8em; }
.passed { color: #1a7f37; font-weight: 700; }
.failed { color: #c62828; font-weight: 700; }
.export { background: #fff; border: 1px solid #ddd; padding: 0.4em 1em 0.8em; margin: 0.8em 0; }
"""


@dataclasses.dataclass(frozen=True)
class PageParts:
    """Everything the page shows, already read and drawn (PNG bytes)."""

    contents: RunContents
    generated: str
    history_figures: tuple[tuple[str, bytes], ...]  # (caption, PNG)
    history_missing: tuple[str, ...]
    exports: tuple[ExportRecord, ...]
    evaluation: BestEvaluation | None
    evaluation_missing: str | None
    precision_recall_png: bytes | None
    samples: tuple[tuple[str, bytes, bytes, int, int], ...]  # (image id, truth PNG, prediction PNG, #truth, #found)
    version: str


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _figure(png: bytes, caption: str, alt: str) -> str:
    return (f'<figure><img src="{data_uri(png)}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def render_page(parts: PageParts) -> str:
    contents = parts.contents
    title = f"detkeeper report: {contents.run.path.name}"
    body = [_header(parts), _history(parts), _ledger(contents), _per_class(parts), _samples(parts),
            _exports(parts)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _header(parts: PageParts) -> str:
    contents = parts.contents
    facts = [("run directory", f"<code>{_e(contents.run.path)}</code>"),
             ("model", _e(model_text(contents))),
             ("status", _e(contents.status())),
             ("best", _e(contents.best_text()))]
    classes = contents.label_map.names if contents.label_map is not None else None
    facts.append(("classes", _e(f"{len(classes)}: {', '.join(classes)}") if classes is not None else "unknown"))
    for split in SPLITS:
        text = dataset_text(contents, split)
        if text:
            facts.append((f"data.{split}", f"<code>{_e(text)}</code>"))
    facts.append(("written", _e(f"{parts.generated} by detkeeper {parts.version}")))
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    problems = "".join(_missing(problem) for problem in contents.problems)
    return (f'<header id="summary"><h1>{_e(contents.run.path.name)}</h1>'
            f'<dl class="facts">{rows}</dl>{problems}</header>')


def _history(parts: PageParts) -> str:
    figures = "".join(_figure(png, caption, caption) for caption, png in parts.history_figures)
    missing = "".join(_missing(text) for text in parts.history_missing)
    return (f'<section id="history"><h2>Metric history</h2>{missing}'
            f'<div class="grid">{figures}</div></section>')


def _ledger(contents: RunContents) -> str:
    ledger = contents.ledger
    head = '<section id="checkpoints"><h2>Checkpoints</h2>'
    if ledger is None or not (ledger.history or ledger.entries):
        return head + _missing("no checkpoint ledger yet: training writes checkpoints/ledger.json at its first "
                               "evaluation") + "</section>"
    monitor = ledger.policy.monitor
    best_k, last = ledger.best_names(), ledger.last_names()
    rows = {row["step"]: row for row in ledger.history}
    for entry in ledger.entries:  # a kept checkpoint always has its history row; older ledgers may not
        rows.setdefault(entry.step, {"step": entry.step, "checkpoint": entry.name, "metrics": entry.metrics,
                                     "monitor_value": entry.monitor_value})
    stats = [name for name in ("val_mAP", "val_mAP50", "val_mAP75") if name != monitor]
    header = "".join(f"<th>{_e(name)}</th>" for name in
                     ["step", "checkpoint", f"{monitor} (monitor)", *stats, "loss", "state"])
    lines = []
    for step in sorted(rows):
        row = rows[step]
        name = row.get("checkpoint") or f"step {step}"
        kept = ledger.by_name(name) is not None
        reasons = [reason for reason, names in (("best-k", best_k), ("latest", last)) if name in names]
        is_best = name == ledger.best_name
        why = ", ".join(reasons) or "an older ledger named it best"
        state = "★ best, kept" if is_best else f"kept ({why})" if kept else "pruned"
        css = "best" if is_best else "" if kept else "pruned"
        cells = [f'<td class="num">{step}</td>', f"<td>{_e(name)}</td>",
                 f'<td class="num">{format_number(row.get("monitor_value"))}</td>',
                 *(f'<td class="num">{format_number(row["metrics"].get(stat))}</td>' for stat in stats),
                 f'<td class="num">{format_number(row["metrics"].get("loss"))}</td>', f"<td>{_e(state)}</td>"]
        lines.append(f'<tr class="{css}">{"".join(cells)}</tr>')
    policy = ledger.policy
    note = (f"<p>Kept: the {policy.keep_best} best by {_e(monitor)} ({policy.mode}; ★ the top of this ranking) "
            f"and the {policy.keep_last} latest; every evaluation is listed, pruned ones included "
            "(checkpoints/ledger.json).</p>")
    return head + note + f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(lines)}</tbody></table></section>"


def _per_class(parts: PageParts) -> str:
    head = '<section id="per-class"><h2>Per-class AP of the best checkpoint (data.val)</h2>'
    evaluation = parts.evaluation
    if evaluation is None:
        return head + _missing(parts.evaluation_missing or "no evaluation of the best checkpoint") + "</section>"
    result = evaluation.result
    rows = "".join(f'<tr><td>{_e(name)}</td><td class="num">{format_number(ap, 3)}</td>'
                   f'<td class="num">{format_number(result.per_class_ap50[name], 3)}</td></tr>'
                   for name, ap in result.per_class_ap.items())
    stats = ", ".join(f"{name} {format_number(result.stats[name], 4)}" for name in ("mAP", "mAP50", "mAP75"))
    text = (f"<p>{_e(evaluation.checkpoint)} (step {evaluation.step}) on {result.num_images} images: {_e(stats)}. "
            f"Source: {_e(evaluation.source)}. n/a: no ground truth of that class.</p>")
    table = f"<table><thead><tr><th>class</th><th>AP</th><th>AP50</th></tr></thead><tbody>{rows}</tbody></table>"
    figure = (_figure(parts.precision_recall_png, "Precision-recall at IoU 0.5, per class (COCO interpolation)",
                      "precision-recall curves") if parts.precision_recall_png else "")
    return head + text + f'<div class="grid"><div>{table}</div>{figure}</div></section>'


def _samples(parts: PageParts) -> str:
    head = '<section id="samples"><h2>Sample predictions next to the ground truth (data.val)</h2>'
    if not parts.samples:
        reason = parts.evaluation_missing or "no sample images asked for (samples 0)"
        return head + _missing(reason) + "</section>"
    pairs = []
    for image_id, truth, found, num_truth, num_found in parts.samples:
        pairs.append('<div class="pair">'
                     + _figure(truth, f"{image_id}: ground truth ({num_truth} boxes)", f"{image_id} ground truth")
                     + _figure(found, f"{image_id}: prediction ({num_found} with score >= {SAMPLE_MIN_SCORE})",
                               f"{image_id} prediction") + "</div>")
    return head + "".join(pairs) + "</section>"


def _exports(parts: PageParts) -> str:
    head = '<section id="exports"><h2>Exports</h2>'
    run = parts.contents.run.path
    if not parts.exports:
        return head + _missing(f"no export yet: run `detkeeper export {run}` (a verified SavedModel of the best "
                               "checkpoint, in RUN/exports/)") + "</section>"
    best = parts.contents.best
    return head + "".join(_export(record, best.step if best else None) for record in parts.exports) + "</section>"


def _export(record: ExportRecord, best_step: int | None) -> str:
    verification = record.verification
    passed = record.passed
    verdict = ('<span class="passed">verification passed</span>' if passed else
               '<span class="failed">verification FAILED: not published</span>' if passed is False else
               '<span class="failed">no verification record</span>')
    lines = [f"<h3>{_e(record.name)}: {verdict}</h3>", f"<p><code>{_e(record.path)}</code></p>"]
    if record.step is not None and best_step is not None and record.step != best_step:
        lines.append(_missing(f"exported from step {record.step}; the best checkpoint is now step {best_step}"))
    facts = []
    metadata = record.metadata or {}
    if metadata:
        source, thresholds = metadata.get("source") or {}, metadata.get("thresholds") or {}
        facts.append(("checkpoint", f"{source.get('checkpoint')} (step {source.get('step')}"
                                    f"{', EMA weights' if source.get('ema') else ''})"))
        facts.append(("thresholds", ", ".join(f"{key} {value}" for key, value in thresholds.items())))
    if verification:
        checked = ", ".join(verification.get("checked", []))
        facts += [("images compared", f"{verification.get('num_images')} ({checked})"),
                  ("max box difference", f"{_small(verification.get('max_box_difference'))} "
                                         f"(tolerance {_small((verification.get('tolerance') or {}).get('box'))})"),
                  ("max score difference", f"{_small(verification.get('max_score_difference'))} "
                                           f"(tolerance {_small((verification.get('tolerance') or {}).get('score'))})"),
                  ("mAP checkpoint vs export", f"{format_number(verification.get('map_checkpoint'))} vs "
                                               f"{format_number(verification.get('map_export'))}"),
                  ("verified at", str(verification.get("verified_at", "-")))]
        if verification.get("keras_archive_difference") is not None:
            facts.append((".keras archive difference", _small(verification["keras_archive_difference"])))
    rows = "".join(f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in facts)
    lines.append(f'<dl class="facts">{rows}</dl>')
    problems = list(record.problems) + list((verification or {}).get("problems") or [])
    if problems:
        lines.append("<p>Problems:</p><ul>" + "".join(f"<li>{_e(problem)}</li>" for problem in problems) + "</ul>")
    lines.append(_tflite(record.tflite_models))
    return f'<div class="export">{"".join(lines)}</div>'


def _tflite(models: dict[str, dict[str, Any]]) -> str:
    if not models:
        return "<p>TFLite: not exported (<code>detkeeper export --tflite</code> adds it).</p>"
    rows = []
    for variant, model in models.items():
        size = model.get("size_bytes")
        rows.append(f"<tr><td>{_e(model.get('quantization') or variant)}</td><td>{_e(model.get('status'))}</td>"
                    f'<td class="num">{"-" if size is None else f"{size / 1e6:.2f} MB"}</td>'
                    f'<td class="num">{format_number(model.get("map"))}</td>'
                    f'<td class="num">{format_number(model.get("map_drop"))}</td>'
                    f"<td>{_e(model.get('reason') or '')}</td></tr>")
    return ("<table><thead><tr><th>TFLite</th><th>status</th><th>size</th><th>mAP</th><th>mAP drop</th>"
            f"<th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _small(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2g}"
