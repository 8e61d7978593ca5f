"""`detkeeper demo`: the main job on the built-in dataset, as far as detkeeper goes today.

Generates the shapes dataset, checks every split, records the resolved config and label map in
the run directory, and draws a training batch as the input pipeline makes it.
"""

from __future__ import annotations

import argparse

from detkeeper.cli.console import progress

EXAMPLES = """\
examples:
  detkeeper demo
  detkeeper demo --run-dir /tmp/demo --set data.synthetic.num_train=100"""


def register(commands, common) -> None:
    demo = commands.add_parser("demo", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=EXAMPLES, help="run the main job on the built-in dataset",
                               description="Generate the built-in shapes dataset, check it, and show a "
                                           "training batch, using the `demo` preset.")
    demo.add_argument("--run-dir", help="run directory (default: the preset's run_dir, runs/demo)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key of the demo preset (repeatable)")
    demo.set_defaults(handler=run_demo)


def run_demo(args) -> int:
    from detkeeper.cli.data_commands import write_batch_picture
    from detkeeper.config import load_config
    from detkeeper.data.sources import DataSources
    from detkeeper.rundir import RunDirectory

    overrides = list(args.set) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    config = load_config("demo", overrides)
    run = RunDirectory(config.run_dir)
    sources = DataSources(config.data)
    print(f"1/4 built-in dataset: {config.data.train.path}")
    label_map = sources.label_map
    print(f"    classes: {', '.join(label_map.names)}")
    print("2/4 checking every split")
    for split in sources.configured_splits:
        readout = sources.readout(split)
        with progress(len(readout.records), f"checking {split}", args.quiet) as update:
            prepared = sources.prepare(split, progress=update)
        verdict = "no problems" if not prepared.report.problems else f"{len(prepared.report.problems)} problem(s)"
        print(f"    {split:5s} {len(prepared.records):5,} images  {prepared.num_boxes:6,} boxes  {verdict}")
    print(f"3/4 run directory: {run.path}")
    run.write_config(config)
    run.write_label_map(label_map)
    print(f"    {run.config_path.name} (resolved config), {run.label_map_path.name}")
    print("4/4 a training batch through the tf.data pipeline (augmented)")
    picture = write_batch_picture(sources, "train", run.train_batch_path, count=8,
                                  image_size=config.model.image_size, augment=True,
                                  augment_config=config.data.augment, seed=config.train.seed,
                                  max_boxes=config.data.max_boxes)
    print(f"    {picture}")
    print("\nNext:")
    print(f"  detkeeper data check {run.config_path}")
    print(f"  detkeeper data show {run.config_path} --split val --no-augment --out val_batch.png")
    print(f"  detkeeper config show {run.config_path}")
    return 0
