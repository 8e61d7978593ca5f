"""`detkeeper config ...`: show a resolved config, list presets, import a TF OD API pipeline.config."""

from __future__ import annotations

import argparse
from pathlib import Path

from detkeeper.config import config_to_yaml, list_presets, load_config, preset_summary
from detkeeper.config.reference import render_reference
from detkeeper.errors import ConfigError, DetkeeperError
from detkeeper.files import atomic_write_text
from detkeeper.tfod.importer import import_pipeline_config, write_imported_config

SHOW_EXAMPLES = """\
examples:
  detkeeper config show demo                               the demo preset, every key resolved
  detkeeper config show my_run.yaml --set train.steps=500 --set data.bad_records=strict
  detkeeper config presets"""


REFERENCE_EXAMPLES = """\
examples:
  detkeeper config reference | less
  detkeeper config reference --out docs/config-reference.md     what `make docs` runs"""


IMPORT_EXAMPLES = """\
examples:
  detkeeper config import pipeline.config                  writes run.yaml here; prints what mapped to what
  detkeeper config import models/my_ssd/pipeline.config --out my_ssd.yaml --run-dir runs/my_ssd
  detkeeper config import pipeline.config --base-dir workspace/training_demo --force
  detkeeper train run.yaml                                 then train it

Relative paths in the pipeline config (TFRecords, label map, checkpoint) are resolved from the
current directory, as model_main_tf2.py resolved them, or from --base-dir; run.yaml names them
relative to its own folder. Fields that do not carry over are listed, with the reason, on the
screen and as comments at the top of the YAML."""


def register(commands, common) -> None:
    config = commands.add_parser("config", help="show resolved configs and list presets",
                                 description="Inspect run configs: YAML files, presets and --set overrides.")
    sub = config.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    show = sub.add_parser("show", parents=[common], formatter_class=fmt, epilog=SHOW_EXAMPLES,
                          help="validate a config and print it with every default filled in",
                          description="Load a config (a YAML file or a preset name), apply overrides, "
                                      "validate it and print the resolved YAML a run would record.")
    show.add_argument("config", help="YAML file or preset name")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override, e.g. train.optimizer.learning_rate=0.001 (repeatable)")
    show.set_defaults(handler=run_show)
    presets = sub.add_parser("presets", parents=[common], formatter_class=fmt, epilog=SHOW_EXAMPLES,
                             help="list the named presets",
                             description="List the presets shipped with detkeeper, each with what it is for.")
    presets.set_defaults(handler=run_presets, uses_tensorflow=False)
    reference = sub.add_parser("reference", parents=[common], formatter_class=fmt, epilog=REFERENCE_EXAMPLES,
                               help="print the config reference (every key, type, default, meaning) as Markdown",
                               description="Render the config reference from the config dataclasses: one table "
                                           "per section with every key's dotted path, type, default and help.")
    reference.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    reference.set_defaults(handler=run_reference, uses_tensorflow=False)
    importer = sub.add_parser("import", parents=[common], formatter_class=fmt, epilog=IMPORT_EXAMPLES,
                              help="turn a TF Object Detection API pipeline.config into a detkeeper config",
                              description="Read a TF OD API pipeline.config (protobuf text) and write the "
                                          "equivalent detkeeper YAML: model kind, backbone, input size, batch "
                                          "size, steps, optimizer and learning rate, augmentation, TFRecord "
                                          "inputs, label map, fine-tune checkpoint, post-processing. Prints "
                                          "what each field became and the fields it could not carry over.")
    importer.add_argument("pipeline_config", metavar="PIPELINE_CONFIG", help="the pipeline.config file")
    importer.add_argument("--out", metavar="FILE", default="run.yaml",
                          help="the YAML to write (default: run.yaml in the current directory)")
    importer.add_argument("--run-dir", metavar="DIR",
                          help="run_dir of the new config (default: runs/<name of the pipeline config>)")
    importer.add_argument("--base-dir", metavar="DIR",
                          help="folder the pipeline's relative paths start from (default: the current directory)")
    importer.add_argument("--force", action="store_true", help="replace FILE when it exists")
    importer.set_defaults(handler=run_import, uses_tensorflow=False)


def run_show(args) -> int:
    """The config as `detkeeper train` would check it before reading data, registries included."""
    from detkeeper.training.preflight import TRAINING_CHECKS  # light: the model registry imports Keras

    print(config_to_yaml(load_config(args.config, args.set, checks=TRAINING_CHECKS)), end="")
    return 0


def run_presets(args) -> int:
    names = list_presets()
    width = max(map(len, names))
    for name in names:
        print(f"{name:{width}s}  {preset_summary(name)}")
    return 0


def run_reference(args) -> int:
    text = render_reference()
    if args.out is None:
        print(text, end="")
        return 0
    try:
        path = atomic_write_text(args.out, text)
    except OSError as error:
        raise DetkeeperError(f"--out {args.out}: cannot write the config reference ({error.strerror or error})") from None
    if not args.quiet:
        print(f"config reference written to {path}")
    return 0


def run_import(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out}: already exists; choose another --out or pass --force to replace it")
    if args.base_dir is not None and not Path(args.base_dir).is_dir():
        raise ConfigError(f"--base-dir {args.base_dir}: no such folder")
    result = import_pipeline_config(args.pipeline_config, out_dir=out.absolute().parent,
                                    base_dir=args.base_dir, run_dir=args.run_dir)
    path = write_imported_config(result, out, force=args.force)
    print(f"wrote {path} from {result.source}")
    if not args.quiet:
        print(f"\nmapped ({len(result.mapped)}):")
        print("\n".join(f"  {entry.describe()}" for entry in result.mapped))
    print(f"\nnot carried over ({len(result.not_carried)}):")
    print("\n".join(f"  {note.describe()}" for note in result.not_carried) or "  nothing")
    if result.placeholders:
        print(f"\nplaceholders to fill in ({len(result.placeholders)}; the sample config's, not a real location):")
        print("\n".join(f"  {placeholder}" for placeholder in result.placeholders))
    if result.missing_files:
        print(f"\nnot found yet ({len(result.missing_files)}; `detkeeper train {path}` needs them):")
        print("\n".join(f"  {missing}" for missing in result.missing_files))
    first = f"fill in the {len(result.placeholders)} placeholder(s) in {path}, then " if result.placeholders else ""
    print(f"\nnext: {first}detkeeper config show {path}    then    detkeeper train {path}")
    return 0
