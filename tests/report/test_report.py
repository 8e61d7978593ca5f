"""The run report: what the page says about a real run, where each part comes from, the command."""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from detkeeper.cli.main import main
from detkeeper.report import build_report
from detkeeper.run.ledger import Ledger
from report_page import parse_report

SECTIONS = ["summary", "history", "checkpoints", "per-class", "samples", "exports"]


def _ledger(run_dir) -> Ledger:
    return Ledger.read(run_dir / "checkpoints" / "ledger.json")


def test_training_ends_by_writing_a_self_contained_report(report_run):
    result, html = report_run
    page = parse_report(html)
    best = result.best
    assert page.sections == SECTIONS
    assert "status finished at step 60" in page.text
    assert f"best val_mAP {best.monitor_value:.4f} @ step {best.step} ({best.name})" in page.text
    assert f"no export yet: run `detkeeper export {result.run_dir}`" in page.text
    source = ("the final evaluation of training" if best.step == result.step
              else "evaluated again at the end of training")
    assert f"Source: {source}" in page.text
    assert f"{best.name} (step {best.step}) on 8 images: mAP {best.metrics['val_mAP']:.4f}" in page.text
    classes = [cells[0] for _, cells in page.rows("per-class")]
    assert classes == ["circle", "cross", "square", "triangle"]
    # metric history, loss, learning rate, PR curves, then 4 validation images twice (truth, prediction)
    pictures = page.decoded_images()
    assert len(pictures) == 3 + 1 + 2 * 4
    assert all(picture.width >= 600 and picture.height >= 350 for picture in pictures[:3])
    assert [alt for _, alt in page.images[4:6]] == ["shapes_val_00000 ground truth", "shapes_val_00000 prediction"]
    for forbidden in ("http://", "https://", "<script", "<link", "src=\"file:", "url("):
        assert forbidden not in html, forbidden
    assert "Content-Security-Policy" in html and "default-src 'none'; img-src data:" in html


def test_the_checkpoint_table_marks_the_best_and_what_was_pruned(report_run):
    result, html = report_run
    ledger = _ledger(result.run_dir)
    rows = parse_report(html).rows("checkpoints")
    assert [int(cells[0]) for _, cells in rows] == [row["step"] for row in ledger.history] == [20, 40, 60]
    best_rows = [cells for css, cells in rows if css == "best"]
    assert len(best_rows) == 1 and best_rows[0][1] == ledger.best_name
    assert best_rows[0][2] == f"{ledger.best.monitor_value:.4f}" and best_rows[0][-1].startswith("★ best")
    kept = {entry.name for entry in ledger.entries}
    pruned = [cells[1] for css, cells in rows if cells[-1] == "pruned"]
    assert pruned == [row["checkpoint"] for row in ledger.history if row["checkpoint"] not in kept]
    assert pruned and all(css == "pruned" for css, cells in rows if cells[1] in pruned)
    assert {cells[1] for _, cells in rows if cells[-1].startswith(("kept", "★"))} == kept


def test_per_class_ap_is_read_from_an_evaluation_on_disk_else_computed_once(report_run, tmp_path):
    result, _ = report_run
    run, best = result.run_dir, result.best
    shutil.rmtree(run / "eval", ignore_errors=True)

    skipped = build_report(run, tmp_path / "a.html", evaluate=False)
    page = parse_report(skipped.path.read_text())
    hint = f"no evaluation of {best.name} on data.val in RUN/eval/; `detkeeper report {run}` computes it"
    assert hint in page.text and any(line.startswith(hint) for line in skipped.missing)
    assert len(page.images) == 3 and not page.rows("per-class")

    computed = build_report(run, tmp_path / "b.html")
    metrics = json.loads((run / "eval" / f"{best.name}-val" / "metrics.json").read_text())
    assert computed.evaluation_source.startswith(f"RUN/eval/{best.name}-val (evaluated for this report")
    assert metrics["stats"]["mAP"] == pytest.approx(best.metrics["val_mAP"], abs=1e-9)
    table = parse_report(computed.path.read_text()).rows("per-class")
    assert {cells[0]: float(cells[1]) for _, cells in table} == pytest.approx(metrics["per_class_ap"], abs=5e-4)

    reused = build_report(run, tmp_path / "c.html", evaluate=False)
    assert reused.evaluation_source == f"RUN/eval/{best.name}-val (detkeeper evaluate)"
    reread = parse_report(reused.path.read_text())
    assert reread.rows("per-class") == table and len(reread.decoded_images()) == 3 + 1 + 2 * 4

    moved = tmp_path / "moved"  # the run without its checkpoints, its validation images gone
    (moved / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "label_map.pbtxt", moved)
    shutil.copy(run / "checkpoints" / "ledger.json", moved / "checkpoints")
    shutil.copytree(run / "eval", moved / "eval")
    (moved / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(run.parent.parent), "/gone"))
    without_images = build_report(moved, evaluate=False)
    page = parse_report(without_images.path.read_text())
    assert page.rows("per-class") == table
    assert [alt for _, alt in page.images] == [  # no logs/ copied: the loss comes from the ledger
        "Validation mAP and mAP50 at each evaluation (checkpoints/ledger.json); dashed: the best checkpoint",
        "Training loss per evaluation interval (checkpoints/ledger.json: no TensorBoard logs)",
        "precision-recall curves"]
    assert "no TensorBoard event files in logs/train: loss from the ledger, no learning rate" in without_images.missing
    assert any(line.startswith("no sample images: data.val cannot be read") for line in without_images.missing)

    metrics_path = run / "eval" / f"{best.name}-val" / "metrics.json"
    kept = metrics_path.read_text()
    stale = dict(metrics, stats=dict(metrics["stats"], mAP=metrics["stats"]["mAP"] + 0.1))  # another run's
    metrics_path.write_text(json.dumps(stale))
    assert build_report(run, tmp_path / "d.html", evaluate=False).evaluation_source is None
    metrics_path.write_text(kept)


def test_the_samples_are_the_scored_detections_at_or_above_the_drawing_score():
    """The end of training draws the detections its last validation pass kept (no detector run of
    its own): the first ``num_detections`` rows, real classes, scores at or above SAMPLE_MIN_SCORE."""
    from detkeeper.report.best_evaluation import SAMPLE_MIN_SCORE, samples_from

    kept = {"a": {"boxes": np.arange(16, dtype=np.float64).reshape(4, 4),
                  "scores": np.array([0.9, SAMPLE_MIN_SCORE - 0.01, 0.5, 0.8]),
                  "classes": np.array([1, 2, -1, 3]), "num_detections": np.int32(3)},
            "b": {"boxes": np.zeros((4, 4)), "scores": np.full(4, SAMPLE_MIN_SCORE),
                  "classes": np.array([4, 4, 4, 4]), "num_detections": np.int32(0)}}
    first, second = samples_from([SimpleNamespace(image_id="a"), SimpleNamespace(image_id="b")], kept)
    assert first.boxes.tolist() == [[0, 1, 2, 3]] and first.boxes.dtype == np.float32
    assert first.scores.tolist() == pytest.approx([0.9]) and first.classes.tolist() == [1]
    assert second.boxes.shape == (0, 4) and second.scores.size == second.classes.size == 0


def test_training_end_evaluates_an_earlier_best_again_and_scores_what_the_ledger_recorded(report_run):
    from detkeeper.data.pipeline import evaluation_dataset
    from detkeeper.evaluation.callback import CocoEvaluationCallback
    from detkeeper.run.restore import restore_run_checkpoint
    from detkeeper.report.best_evaluation import validation_records
    from detkeeper.report.training_end import write_training_report
    from detkeeper.run.layout import RunDirectory

    result, _ = report_run
    restored = restore_run_checkpoint(RunDirectory(result.run_dir), "best", keep_split="val")
    config, records = restored.config, validation_records(RunDirectory(result.run_dir))
    callback = CocoEvaluationCallback(
        evaluation_dataset(records, restored.label_map, image_size=config.model.image_size,
                           batch_size=config.train.batch_size, max_boxes=config.data.max_boxes),
        restored.label_map, ground_truth=records, max_detections=config.evaluation.max_detections,
        keep_detections_of=[record.image_id for record in records[:4]])  # as the trainer's sample batch
    callback.set_model(restored.model)
    written = write_training_report(result.run_dir, evaluation_callback=callback,
                                    final_step=result.best.step + 20, best=result.best)
    assert callback.last is not None  # the best was not the final evaluation: evaluated once more
    assert callback.last.result.stats["mAP"] == pytest.approx(result.best.metrics["val_mAP"], abs=1e-9)
    assert written.evaluation_source == "evaluated again at the end of training, with the restored best weights"
    page = parse_report(written.path.read_text())
    assert len(page.decoded_images()) == 3 + 1 + 2 * 4


def test_a_verified_export_and_a_failed_one_are_both_on_the_page(exported_run, tmp_path):
    written = build_report(exported_run, tmp_path / "report.html", evaluate=False)
    html = written.path.read_text()
    page = parse_report(html)
    assert not any(line.startswith("no export yet") for line in written.missing)
    exports = exported_run / "exports"
    verification = json.loads((exports / "step-0000060" / "verification.json").read_text())
    failed = json.loads((exports / "step-0000060.verification-failed.json").read_text())
    assert "step-0000060: verification passed" in page.text
    assert "step-0000060: verification FAILED: not published" in page.text
    assert f"max box difference {verification['max_box_difference']:.2g} (tolerance 0.002)" in page.text
    assert (f"mAP checkpoint vs export {verification['map_checkpoint']:.4f} vs {verification['map_export']:.4f}"
            in page.text)
    assert failed["passed"] is False and failed["problems"][0] in page.text
    assert "TFLite: not exported (detkeeper export --tflite adds it)." in page.text


def test_a_run_directory_before_its_first_evaluation_reports_what_is_missing(shapes_dataset, tmp_path):
    from detkeeper.config import load_config
    from detkeeper.data.label_map import LabelMap
    from detkeeper.run.layout import RunDirectory

    run = RunDirectory(tmp_path / "fresh")
    run.write_config(load_config("demo", [f"run_dir={run.path}"]))  # as `detkeeper demo` leaves it
    run.write_label_map(LabelMap.read(shapes_dataset / "label_map.pbtxt"))
    written = build_report(run.path)
    page = parse_report(written.path.read_text())
    assert page.sections == SECTIONS and page.images == []
    assert "status not evaluated yet" in page.text
    assert "no checkpoint ledger yet" in page.text and "no export yet" in page.text
    assert "no best checkpoint to evaluate (no best checkpoint yet)" in written.missing


def test_training_curves_are_merged_across_resumes_and_cut_short_files(tmp_path):
    import tensorflow as tf

    from detkeeper.report.history import read_training_curves

    folder = tmp_path / "train"
    for values in ({20: 1.0, 40: 2.0, 60: 3.0, 80: 4.0}, {40: 20.0, 60: 30.0}):  # killed after 80, resumed at 20
        writer = tf.summary.create_file_writer(str(folder))
        with writer.as_default():
            for step, value in values.items():
                tf.summary.scalar("loss", value, step=step)
        writer.close()
    curves = read_training_curves(folder, last_step=60)  # the ledger's last evaluation
    assert curves.files == 2 and curves.problems == ()
    np.testing.assert_array_equal(curves.losses["loss"].steps, [20, 40, 60])
    np.testing.assert_array_equal(curves.losses["loss"].values, [1.0, 20.0, 30.0])

    newest = max(folder.iterdir(), key=lambda path: path.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[:-7])  # a writer killed mid-record
    cut = read_training_curves(folder, last_step=60)
    assert len(cut.problems) == 1 and "cut short" in cut.problems[0]
    np.testing.assert_array_equal(cut.losses["loss"].values, [1.0, 20.0, 3.0])


def test_a_report_that_cannot_be_written_does_not_fail_training(report_run, monkeypatch, caplog):
    from detkeeper.config import load_config
    from detkeeper.report import training_end
    from detkeeper.run.layout import RunDirectory
    from detkeeper.training.trainer import TrainingEnd, _Training

    result, _ = report_run

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training_end, "write_training_report", full_disk)
    config = load_config(RunDirectory(result.run_dir).config_path)
    end = TrainingEnd(run_dir=result.run_dir, model=None, weight_average=None, config=config,
                      evaluation_callback=None, final_step=result.step, best=result.best)
    with caplog.at_level(logging.WARNING, logger="detkeeper.training"):
        assert training_end.report_at_training_end(end) is None
    assert "the run report was not written (OSError: [Errno 28] No space left on device)" in caplog.text
    assert f"`detkeeper report {result.run_dir}`" in caplog.text

    def failing_hook(end):
        raise RuntimeError("hook broke")

    training = SimpleNamespace(rundir=RunDirectory(result.run_dir), config=config, evaluation=None,
                               on_end=failing_hook)  # what _end_hook reads of the training it ends
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detkeeper.training"):
        _Training._end_hook(training, None, None, result)
    assert "the end-of-training step failed (RuntimeError: hook broke)" in caplog.text


def test_report_command(report_run, tmp_path, capsys):
    result, _ = report_run
    out = tmp_path / "page.html"
    assert main(["report", str(result.run_dir), "--out", str(out), "--no-evaluate", "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"written to {out}" in printed and out.is_file()
    assert parse_report(out.read_text()).sections == SECTIONS
    assert main(["report", "-q", str(result.run_dir), "--out", str(out), "--no-evaluate"]) == 0
    assert capsys.readouterr().out == ""

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"detkeeper report: error: {tmp_path / 'nowhere'}: no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a run directory (no config.yaml inside)" in capsys.readouterr().err
    assert main(["report", str(result.run_dir / "checkpoints")]) == 2
    assert f"give its parent, {result.run_dir}" in capsys.readouterr().err
    assert main(["report", str(result.run_dir), "--samples", "-1"]) == 2
    assert "--samples: expected 0 or more images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as help_exit:
        main(["report", "--help"])
    assert help_exit.value.code == 0 and "examples:\n  detkeeper report runs/demo" in capsys.readouterr().out


def test_tflite_results_of_an_export_are_tabled(tmp_path):
    from detkeeper.export.tflite import TFLiteModel, TFLiteReport
    from detkeeper.run.exports import ExportRecord
    from detkeeper.report.page import _export

    verified = TFLiteModel("float32", "verified", None, "model_float32.tflite", 2_915_088, 2.6, 0.6340, 0.0,
                           1.6e-7, 6.3e-7, None, 2.6)
    unconverted = TFLiteModel("int8_dynamic", "did not convert", "ConverterError: op not supported", None, None, 1.0,
                              None, None, None, None, None, None)
    tflite = TFLiteReport((verified, unconverted), {}, 0.6340, 8, 9.5).to_json_dict()
    assert tflite["models"]["int8_dynamic"]["quantization"] == "dynamic-range int8 (int8 weights, float32 activations)"
    # Exports written before tflite.json named the quantization are tabled the same way.
    older = {**tflite, "models": {variant: {key: value for key, value in model.items() if key != "quantization"}
                                  for variant, model in tflite["models"].items()}}
    for written in (tflite, older):
        record = ExportRecord("step-0000060", tmp_path, True, None, {"passed": True, "tflite": written}, 0.0)
        rows = parse_report(f'<section id="exports">{_export(record, 60)}</section>').rows("exports")
        assert [cells for _, cells in rows] == [
            ["float32 (not quantized)", "verified", "2.92 MB", "0.6340", "0.0000", ""],
            ["dynamic-range int8 (int8 weights, float32 activations)", "did not convert", "-", "-", "-",
             "ConverterError: op not supported"]]

