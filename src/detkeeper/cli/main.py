"""`detkeeper` command line: parse, call the library, print. User errors exit non-zero, no traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from detkeeper import __version__
from detkeeper.cli import (config_commands, data_commands, demo, evaluate_command, export_command, predict_command,
                           report_command, train_commands)
from detkeeper.cli.console import import_tensorflow_quietly
from detkeeper.errors import DetkeeperError, wrapped_data_error

EXAMPLES = """\
examples:
  detkeeper demo                                   train, export, predict, evaluate and report on the
                                                   built-in dataset (runs/demo/report.html)
  detkeeper data check path/to/VOC2012             count every problem in a dataset
  detkeeper data convert path/to/VOC --split train --to tfrecord --out records/train
  detkeeper config import pipeline.config          a TF OD API pipeline.config as a detkeeper config
  detkeeper config show demo --set train.steps=500 print a resolved config
  detkeeper train demo                             train, keeping the best checkpoints by mAP
  detkeeper checkpoints runs/demo                  the kept checkpoints, best first
  detkeeper evaluate runs/demo --data test         COCO mAP of the best checkpoint on a split
  detkeeper export runs/demo                       a verified SavedModel of the best checkpoint
  detkeeper predict runs/demo/exports/step-0000800 photos/ --out predictions
  detkeeper report runs/demo                       an HTML report of a run

Every command takes --quiet and --debug (tracebacks); those with results a script reads take
--json. Exit status 0 on success, non-zero on failure. Run `detkeeper COMMAND --help` for each
command's options and examples."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detkeeper", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="TensorFlow object detection that keeps the best model: train with COCO mAP evaluation, "
                    "keep the best checkpoints by it, stop early, resume exactly after a crash, export a "
                    "verified SavedModel with the TF OD API's outputs, predict, evaluate and report. Reads "
                    "VOC, COCO and TF OD API TFRecords, and imports TF OD API pipeline.config files.")
    parser.add_argument("--version", action="version", version=f"detkeeper {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's logs")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.register(commands, common)
    data_commands.register(commands, common)
    train_commands.register(commands, common)
    evaluate_command.register(commands, common)
    export_command.register(commands, common)
    predict_command.register(commands, common)
    report_command.register(commands, common)
    config_commands.register(commands, common)
    return parser


def configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not debug:
        # Before TensorFlow is imported. Level 3 also hides its C++ "error" lines that are not
        # errors for us (e.g. cuInit failing on a machine without a GPU); real failures still
        # reach us as Python exceptions.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.WARNING)  # per-save "Sharding callback" lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.debug, args.quiet)
    try:
        if getattr(args, "uses_tensorflow", True) and not args.debug:
            import_tensorflow_quietly()
        return int(args.handler(args) or 0)
    except DetkeeperError as error:
        if args.debug:
            raise
        print(f"detkeeper {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("detkeeper: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `detkeeper ... | head` closed our stdout: stop quietly, as Unix tools do, and keep
        # Python from complaining again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # noqa: BLE001 - re-raised unless it is a DataError that tf.data wrapped
        wrapped = wrapped_data_error(getattr(error, "message", ""))  # a shard changed under evaluate, export...
        if wrapped is None or args.debug or type(error).__module__.split(".")[0] != "tensorflow":
            raise
        print(f"detkeeper {args.command}: error: {wrapped}", file=sys.stderr)
        return wrapped.exit_code


if __name__ == "__main__":
    sys.exit(main())
