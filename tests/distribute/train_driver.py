"""Run ``detkeeper.train`` in a fresh process, optionally over logical CPU devices.

``python train_driver.py CONFIG [--logical-cpus N] [--set KEY=VALUE ...]`` prints the result as one JSON
line. The logical devices are configured before any TensorFlow op, which TensorFlow requires:
that is why multi-device runs happen in a subprocess, never in the test process (which has
usually initialised TensorFlow already). Multi-worker runs get their TF_CONFIG from the caller.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _curve_reporter_class():
    from detkeeper.training.progress import Reporter

    class CurveReporter(Reporter):
        """Keeps ``{step: running logs}`` and writes them when training ends."""

        def __init__(self, path: str) -> None:
            self.path, self.curve = path, {}

        def step(self, step, logs, images_per_second) -> None:
            self.curve[step] = {key: float(value) for key, value in logs.items()}

        def close(self) -> None:
            with open(self.path, "w", encoding="utf-8") as handle:
                json.dump(self.curve, handle)

    return CurveReporter


def _CurveReporter(path: str):
    return _curve_reporter_class()(path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--logical-cpus", type=int, default=0)
    parser.add_argument("--curve", help="write each step's running training logs here, as JSON")
    args = parser.parse_args()
    if args.logical_cpus:
        from detkeeper.training.distribution import use_logical_cpus

        use_logical_cpus(args.logical_cpus)  # before anything else touches TensorFlow
    from detkeeper.training.trainer import train

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    reporter = _CurveReporter(args.curve) if args.curve else None
    result = train(args.config, args.overrides, reporter=reporter)
    print(json.dumps({"status": result.status, "step": result.step, "run_dir": str(result.run_dir),
                      "best": result.best.name if result.best else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
