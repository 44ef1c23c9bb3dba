"""The ``graphpeft`` command: look at a rewrite without writing Python.

    graphpeft inspect path/to/llama --rules lora           # what would be adapted (dry run)
    graphpeft viz path/to/llama --rules lora -o graph.html  # the graph viewer (or graph.dot)
    graphpeft diff path/to/llama --rules lora              # nodes the rewrite adds, per site

MODEL is a local directory holding ``config.json`` (no weights needed: the model
is built on the meta device) or ``package.module:function`` returning an
``nn.Module``. Exit status: 0 ok, 1 graphpeft error (or problems found by
``inspect``), 2 usage error (bad arguments, a MODEL that cannot be built, an
output name without a known format), 3 internal error (a bug: please report
it), 130 interrupted. Every error is one line on stderr; --debug (or the
environment variable GRAPHPEFT_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from torch import nn

from ..errors import GraphPeftError, UsageError
from ..io.output_file import check_output_path, write_text
from ..runtime.wrap import apply
from .explain import explain
from .graph_records import diff_of
from .viz import write
from .viz_html import to_html

# config.architectures suffix -> transformers auto class
_AUTO_CLASSES = (
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForConditionalGeneration", "AutoModelForSeq2SeqLM"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
)


def load_model(spec: str) -> Any:
    """Build the model MODEL names: a config directory (on the meta device) or ``module:function``."""
    path = Path(spec)
    if path.is_dir():
        return _from_config_dir(path)
    if ":" in spec and not path.exists():
        return _from_function(spec)
    raise UsageError(
        f"MODEL {spec!r} is neither a directory with config.json nor module:function; "
        "pass e.g. ./my-llama or mypkg.models:build"
    )


def _from_config_dir(path: Path) -> Any:
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} has no config.json; MODEL must be a transformers model directory")
    # whatever a hostile config.json makes transformers raise is a bad MODEL argument
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise UsageError(f"cannot read {path / 'config.json'} as a transformers config: {_summary(exc)}") from exc
    architecture = (getattr(config, "architectures", None) or [""])[0]
    auto_name = next((auto for suffix, auto in _AUTO_CLASSES if architecture.endswith(suffix)), "AutoModel")
    with torch.device("meta"):
        try:
            return getattr(transformers, auto_name).from_config(config)
        except Exception as exc:
            raise UsageError(f"cannot build a model from {path}: {_summary(exc)}") from exc


def _from_function(spec: str) -> Any:
    module_name, _, function_name = spec.rpartition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import {module_name!r} (from MODEL {spec!r}): {_summary(exc)}") from exc
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise UsageError(f"{module_name!r} has no function {function_name!r} (from MODEL {spec!r})")
    try:
        model = builder()
    except Exception as exc:
        raise UsageError(f"MODEL {spec} raised {type(exc).__name__}: {_summary(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _summary(exc: BaseException, limit: int = 300) -> str:
    """Another library's error message on one line, cut at ``limit`` characters (theirs can run to paragraphs)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["r=16", "dropout=0.1", "init=gaussian"]`` -> ``{"r": 16, "dropout": 0.1, "init": "gaussian"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text.strip()
    return out


# ---------------------------------------------------------------------- commands
def _inspect(args: argparse.Namespace) -> int:
    report = explain(load_model(args.model), args.rules, adapter_name=args.adapter_name, **parse_overrides(args.set))
    Console(width=args.width, soft_wrap=False).print(report.renderable())
    if not report.ok:
        print("graphpeft inspect: apply would fail with these rules (see the problems above)", file=sys.stderr)
        return 1
    return 0


def _applied(args: argparse.Namespace) -> Any:
    return apply(load_model(args.model), args.rules, adapter_name=args.adapter_name, **parse_overrides(args.set))


def _checked_output(path: str, suffixes: tuple[str, ...], formats: str) -> None:
    """Refuse an output name of the wrong format or a path that cannot be written, before any work."""
    if Path(path).suffix not in suffixes:
        raise UsageError(f"cannot tell the format of {path!r}: name the output {formats}")
    check_output_path(path)


def _viz(args: argparse.Namespace) -> int:
    _checked_output(args.output, (".html", ".htm", ".dot"), "*.html or *.dot")
    written = write(_applied(args), args.output, level=args.level)
    print(f"wrote {written}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    if args.output:
        _checked_output(args.output, (".html", ".htm"), "*.html (diff writes the HTML viewer)")
    model = _applied(args)
    print(diff_of(model).text())
    if args.output:
        write_text(args.output, to_html(model, open_diff=True))
        print(f"wrote {args.output}")
    return 0


class _ArgumentError(UsageError):
    """A command line argparse rejects; ``prog`` names the (sub)command it was given to."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse that hands a bad command line to :func:`main` (one line on stderr) instead of
    printing the usage text and exiting."""

    def error(self, message: str) -> Any:
        raise _ArgumentError(self.prog, f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graphpeft",
        description="Inspect and visualize graphpeft rewrites.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    specs = (
        ("inspect", _inspect, "show which sites the rules adapt (dry run: the model is not changed)"),
        ("viz", _viz, "write the rewritten graph as a self-contained HTML viewer or DOT"),
        ("diff", _diff, "list the nodes the rewrite adds and the edges it rewires"),
    )
    for name, run, summary in specs:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("model", metavar="MODEL", help="directory with config.json, or module:function")
        sub.add_argument("--rules", required=True, help="rule name (e.g. lora), rule file, or file.toml#rule")
        sub.add_argument("--adapter-name", default="default", help="adapter name (default: %(default)s)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option override, e.g. r=16")
        if name == "inspect":
            sub.add_argument("--width", type=int, default=120, help="output width (default: %(default)s)")
        if name == "viz":
            sub.add_argument("-o", "--output", required=True, help="graph.html or graph.dot")
            sub.add_argument("--level", choices=("op", "module"), default="op", help="DOT detail (default: op)")
        if name == "diff":
            sub.add_argument("-o", "--output", help="also write the HTML viewer opened on the diff")
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
        )
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graphpeft`` command; returns the exit status (see the module docstring)."""
    args = None
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            raise _ArgumentError("graphpeft", "name a command: inspect, viz or diff (see graphpeft --help)")
        return args.run(args)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("graphpeft: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False) or os.environ.get("GRAPHPEFT_DEBUG", "") not in ("", "0"):
            raise
        prog = getattr(exc, "prog", None) or (f"graphpeft {args.command}" if args and args.command else "graphpeft")
        code, message = _status(exc)
        print(f"{prog}: " + " ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
        return code


def _status(exc: Exception) -> tuple[int, str]:
    """Exit status and message of an error ``main`` caught."""
    if isinstance(exc, UsageError):
        return 2, str(exc)
    if isinstance(exc, GraphPeftError):
        return 1, str(exc)
    return (
        3,
        f"internal error: {type(exc).__name__}: {_summary(exc)}; rerun with --debug for the traceback and report it",
    )


if __name__ == "__main__":
    sys.exit(main())
