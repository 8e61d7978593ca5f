"""`detkeeper config ...`: show a resolved config, list presets."""

from __future__ import annotations

import argparse

SHOW_EXAMPLES = """\
examples:
  detkeeper config show demo                               the demo preset, every key resolved
  detkeeper config show my_run.yaml --set train.steps=500 --set data.bad_records=strict
  detkeeper config presets"""


REFERENCE_EXAMPLES = """\
examples:
  detkeeper config reference | less
  detkeeper config reference --out docs/config-reference.md     what `make docs` runs"""


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
    show.set_defaults(handler=run_show, uses_tensorflow=False)
    presets = sub.add_parser("presets", parents=[common], formatter_class=fmt, epilog=SHOW_EXAMPLES,
                             help="list the named presets", description="List the presets shipped with detkeeper.")
    presets.set_defaults(handler=run_presets, uses_tensorflow=False)
    reference = sub.add_parser("reference", parents=[common], formatter_class=fmt, epilog=REFERENCE_EXAMPLES,
                               help="print the config reference (every key, type, default, meaning) as Markdown",
                               description="Render the config reference from the config dataclasses: one table "
                                           "per section with every key's dotted path, type, default and help.")
    reference.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    reference.set_defaults(handler=run_reference, uses_tensorflow=False)


def run_show(args) -> int:
    from detkeeper.config import config_to_yaml, load_config

    print(config_to_yaml(load_config(args.config, args.set)), end="")
    return 0


def run_presets(args) -> int:
    from detkeeper.config import list_presets

    for name in list_presets():
        print(name)
    return 0


def run_reference(args) -> int:
    from detkeeper.config.reference import render_reference
    from detkeeper.errors import DetkeeperError
    from detkeeper.files import atomic_write_text

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
