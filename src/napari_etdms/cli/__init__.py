"""`etdms` command line: one module per command group, each adding its commands to the parser.

- `infer`: infer, demo, info (frames through the pipeline; what a run would use)
- `train`: train, adapt, export (the models; stage 1 adapted to a microscope; bioimage.io)
- `evaluate`: eval, degrade (measuring on degraded clean frames)

Exit codes: 0 success, 1 an error (for a batch: any file failed), 2 usage error, 3 `adapt`
kept nothing (the base weights fit the frames better).
"""

from __future__ import annotations

import sys

from napari_etdms import __version__
from napari_etdms.cli import evaluate, infer, train
from napari_etdms.cli.common import EXIT_ERROR, EXIT_NOT_KEPT, EXIT_OK, EXIT_USAGE, Parser, run_options

COMMAND_GROUPS = (infer, train, evaluate)

__all__ = ["EXIT_ERROR", "EXIT_NOT_KEPT", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="etdms",
                    description="ETDMS: denoise and 4x super-resolve SEM frames; train and evaluate the models.")
    parser.add_argument("--version", action="version", version=f"napari-etdms {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from napari_etdms import Cancelled, InputError, WeightsError
    from napari_etdms.config import ConfigError
    from napari_etdms.engine import RunSettings

    if hasattr(args, "no_sr"):  # a command that runs the pipeline: its settings checked once, before any work
        try:
            args.settings = RunSettings(seed=args.seed, **run_options(args))
        except ValueError as err:
            parser.error(str(err))  # a usage error: exit 2
    try:
        return args.run(args)
    except (WeightsError, ConfigError, InputError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"etdms {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled):
        print("interrupted", file=sys.stderr)
        return EXIT_ERROR
