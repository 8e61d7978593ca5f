"""`detkeeper report`: one self-contained HTML page describing a run."""

from __future__ import annotations

import argparse

from detkeeper.errors import DetkeeperError

EXAMPLES = """\
examples:
  detkeeper report runs/demo                        writes runs/demo/report.html
  detkeeper report runs/demo --out demo.html        somewhere else
  detkeeper report runs/demo --no-evaluate          only what the run directory already holds
  detkeeper report runs/demo --samples 6

The page: status and best checkpoint, metric history, loss and learning-rate plots, the checkpoint
ledger with the best marked, per-class AP and precision-recall curves of the best checkpoint,
sample predictions next to the ground truth, and each export with its verification result. It
is one file (images embedded, no scripts, nothing fetched): mail it or attach it as it is.
Training writes it at its end too; rerun this after `detkeeper export` to add the export."""


def register(commands, common) -> None:
    parser = commands.add_parser(
        "report", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        help="write a run's HTML report: metric history, checkpoints, per-class AP, samples, exports",
        description="Write one self-contained HTML page about a run directory. Per-class AP, precision-recall "
                    "curves and sample predictions come from an evaluation of the best checkpoint on data.val: "
                    "the one `detkeeper evaluate` wrote into RUN/eval/ when there is one, else it is evaluated "
                    "now (one pass over data.val, kept in RUN/eval/ for the next time). Parts the run does not "
                    "have yet are listed on the page with the command that adds them.")
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory (the run_dir `detkeeper train` wrote)")
    parser.add_argument("--out", metavar="FILE", help="where to write the page (default RUN_DIR/report.html)")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="do not evaluate the best checkpoint when RUN_DIR/eval/ has no evaluation of it; "
                             "the page then says how to add it")
    parser.add_argument("--samples", type=int, default=4, metavar="N",
                        help="validation images drawn with their predictions next to the ground truth (default 4)")
    parser.set_defaults(handler=run_report)


def run_report(args) -> int:
    from detkeeper.report import build_report  # light: imports TensorFlow

    if args.samples < 0:
        raise DetkeeperError(f"--samples: expected 0 or more images, got {args.samples}")
    if not args.quiet:
        print(f"writing the report of {args.run} ...", flush=True)
    written = build_report(args.run, args.out, evaluate=args.evaluate, samples=args.samples)
    if args.quiet:
        return 0
    if written.evaluation_source:
        print(f"per-class AP and samples from {written.evaluation_source}")
    if written.missing:
        print("not on the page yet:")
        for line in written.missing:
            print(f"  - {line}")
    print(f"written to {written.path} ({written.path.stat().st_size / 1e6:.1f} MB); open it in a browser: "
          f"{written.path.resolve().as_uri()}")
    return 0
