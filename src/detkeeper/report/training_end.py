"""The report written when training ends, from what training holds in memory.

When ``train`` ends, the model holds the best checkpoint's weights (restored from disk, EMA
averages included) and the evaluation callback holds the last validation pass, which ran at the
final step. So:

- when the best checkpoint is the final step's, its per-class AP and precision-recall curves are
  that last pass: nothing is recomputed;
- otherwise (e.g. a run that stopped early) the callback evaluates the restored best weights once
  more, through the same compiled detector, dataset and ground truth training used (no model is
  rebuilt or restored, nothing is traced again): the numbers the ledger recorded for it;
- the sample predictions are the detections that same pass kept of the first few validation
  images (:attr:`~detkeeper.evaluation.callback.CocoEvaluationCallback.kept_detections`, EMA
  weights swapped in when the run keeps them): what was scored, with no detector run of its own.

Under a tf.distribute strategy (the callback's ``distributed``) a validation pass is a collective
every worker joins, so none is added here: only the chief writes the report, with the final
evaluation when it is the best's, else the page says how to add it (``detkeeper report RUN``).

Nothing is written to ``RUN/eval/``: that folder holds ``detkeeper evaluate``'s outputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from detkeeper.report.best_evaluation import DEFAULT_SAMPLES, BestEvaluation, samples_from
from detkeeper.report.build import WrittenReport, build_report
from detkeeper.training.trainer import TrainingEnd

#: The end of training's log, so its lines go where training's do (console and train.log).
logger = logging.getLogger("detkeeper.training")


def report_at_training_end(end: TrainingEnd) -> WrittenReport | None:
    """The `on_end` hook the CLI and ``detkeeper.train`` pass to ``train``: write ``RUN/report.html``.

    A report that cannot be written is logged, never raised: the run is complete and committed."""
    try:
        written = write_training_report(end.run_dir, evaluation_callback=end.evaluation_callback,
                                        final_step=end.final_step, best=end.best)
    except Exception as error:  # noqa: BLE001 - any failure: the run itself is complete and committed
        logger.warning("the run report was not written (%s: %s); training is complete, the checkpoints are "
                       "intact. Write it with `detkeeper report %s`.", type(error).__name__, error, end.run_dir)
        logger.debug("report failure", exc_info=True)
        return None
    if written is not None:  # None: a distributed worker that is not the chief
        # Debug: the run's last line stays how it ended; `detkeeper train` prints where the report is.
        logger.debug("report written to %s in %.1f s", written.path, written.seconds)
    return written


def write_training_report(run_dir: str | os.PathLike, *, evaluation_callback, final_step: int, best,
                          samples: int = DEFAULT_SAMPLES) -> WrittenReport | None:
    """``RUN/report.html`` at the end of ``train``. The model `evaluation_callback` (the run's
    :class:`~detkeeper.evaluation.callback.CocoEvaluationCallback`, its last pass at `final_step`)
    evaluates holds the weights of `best` (a :class:`~detkeeper.run.ledger.LedgerEntry`, or None).
    The sample images are the first `samples` of data.val whose detections the callback kept.
    None on a distributed worker that is not the chief (it writes no report)."""
    distributed = getattr(evaluation_callback, "distributed", None)  # under a tf.distribute strategy
    if distributed is not None and not distributed.is_chief:
        return None  # the chief writes the run's report; this worker's run_dir is not the run's
    evaluation = None
    if best is not None:
        last, source = evaluation_callback.last, "the final evaluation of training"
        if best.step != final_step or last is None:
            last, source = None, "evaluated again at the end of training, with the restored best weights"
            if distributed is None:
                last = evaluation_callback.evaluate()  # the restored best weights, as training evaluated them
    if best is not None and last is not None:
        kept = evaluation_callback.kept_detections  # of `last`, the pass just scored
        records = [record for record in list(evaluation_callback.ground_truth or [])[:samples]
                   if record.image_id in kept]
        evaluation = BestEvaluation(best.name, best.step, last.result, samples_from(records, kept), source)
    return build_report(Path(run_dir), evaluate=False, samples=samples, best_evaluation=evaluation)
