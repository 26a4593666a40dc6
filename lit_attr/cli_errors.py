"""One error style for ``train.py``, ``attribute.py`` and ``evaluate.py``.

Every failure prints ONE line, ``error: <what went wrong>; <the fix>``, to stderr and exits non-zero:

- lit-attr's own errors (``lit_attr.errors.LitAttrError``, found anywhere in the exception chain,
  e.g. raised inside a config dataclass while jsonargparse parses it) and Lightning's
  ``MisconfigurationException``: their message, exit 2;
- argument errors of the parsers (unknown flag, wrong type, bad choice): the parser's message
  without the usage dump, exit 2;
- library errors the tools can foresee (allocator failures, failed eigendecompositions, file
  system errors): a translation naming the fix, exit 1;
- anything else: the exception type and first line, and a pointer to ``--debug``, exit 1.

``--debug`` (anywhere on the command line) or ``LIT_ATTR_DEBUG=1`` shows the full traceback instead.
The catalogue of messages is ``docs/errors.md``.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Iterator

import torch
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser

from lit_attr.errors import LitAttrError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LIT_ATTR_DEBUG"
EXIT_BAD_INPUT = 2
"""Exit status of refused input (as argparse uses)."""
EXIT_FAILURE = 1
"""Exit status of a run that failed for another reason."""
OOM_FIX = ("lower --data.batch_size (attribute.py: also --model.query_batch_size), or run on a device "
           "with more free memory")


def debug_enabled() -> bool:
    """Whether tracebacks are wanted (``--debug`` was given or ``LIT_ATTR_DEBUG`` is set)."""
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(args)`` and turn any failure into one ``error:`` line; returns the exit status.

    ``argv`` None means the real command line: ``--debug`` is removed from ``sys.argv`` and
    ``main(None)`` lets the parser read it (subprocesses started by DDP inherit ``LIT_ATTR_DEBUG``).
    """
    if argv is None:
        if DEBUG_FLAG in sys.argv:
            sys.argv[:] = [arg for arg in sys.argv if arg != DEBUG_FLAG]
            os.environ[DEBUG_ENV] = "1"
        args = None
    else:
        if DEBUG_FLAG in argv:
            os.environ[DEBUG_ENV] = "1"
        args = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        code = main(args)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print("error: interrupted; rerun the same command to resume where it stopped.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the point is to report every failure the same way
        if debug_enabled():
            raise
        status, message = explain(error)
        print(f"error: {message}", file=sys.stderr)
        return status
    return 0 if code is None else int(code)


def explain(error: BaseException) -> tuple[int, str]:
    """``(exit status, one-line message with the fix)`` for an exception."""
    ours = find_in_chain(error, LitAttrError)
    if ours is not None:
        return EXIT_BAD_INPUT, one_line(str(ours))
    lightning_config = find_in_chain(error, MisconfigurationException)
    if lightning_config is not None:
        return EXIT_BAD_INPUT, one_line(f"invalid trainer settings: {lightning_config}")
    for kind, translate in _TRANSLATIONS:
        found = find_in_chain(error, kind)
        if found is not None:
            message = translate(found)
            if message is not None:
                return EXIT_FAILURE, one_line(message)
    return EXIT_FAILURE, one_line(f"{type(error).__name__}: {_first_line(error)} (unexpected; rerun with "
                                  f"{DEBUG_FLAG} for the traceback and report it)")


def find_in_chain(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``error``'s cause/context chain, or None."""
    for link in _chain(error):
        if isinstance(link, kind):
            return link
    return None


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def one_line(text: str) -> str:
    """Collapse whitespace and newlines into single spaces."""
    return " ".join(str(text).split())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _out_of_memory(error: BaseException) -> str | None:
    text = str(error)
    allocator = ("DefaultCPUAllocator", "out of memory", "can't allocate memory", "Cannot allocate memory")
    if isinstance(error, MemoryError) or any(marker in text for marker in allocator):
        return f"out of memory ({_first_line(error)[:160]}); {OOM_FIX}."
    return None


def _eigh_failure(error: BaseException) -> str:
    return (f"an eigendecomposition of the curvature failed ({_first_line(error)}): the K-FAC factors hold NaN/Inf "
            "or are corrupt; rerun attribute.py with --model.overwrite true to refit them, and if it recurs check "
            "the model for NaN weights.")


def _file_system(error: OSError) -> str:
    path = error.filename if error.filename is not None else "a path"
    if isinstance(error, NotADirectoryError):
        return f"{path}: a file is in the way of an output folder; choose another output path or move the file."
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder where a file is expected; pass a file path."
    if isinstance(error, PermissionError):
        return f"no permission to access {path}; choose a folder you can write to."
    if isinstance(error, FileNotFoundError):
        return f"{path} does not exist; check the path."
    if error.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}; free space or choose another output folder."
    return f"{error.strerror or _first_line(error)}: {path}; check the path and the file system."


_TRANSLATIONS: list[tuple[type[BaseException], Callable[[BaseException], str | None]]] = [
    (torch.OutOfMemoryError, _out_of_memory),
    (MemoryError, _out_of_memory),
    (torch.linalg.LinAlgError, _eigh_failure),
    (OSError, _file_system),
    (RuntimeError, _out_of_memory),
]


class OneLineErrors:
    """Parser mixin: an argument error is one ``error:`` line (no usage dump), exit status 2."""

    def error(self, message: str, ex: Exception | None = None):  # noqa: ANN201 - NoReturn
        if not getattr(self, "exit_on_error", True) or debug_enabled():
            return super().error(message, ex)  # type: ignore[misc]
        ours = find_in_chain(ex, LitAttrError)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = str(getattr(parser, "prog", "")).replace(" [options]", "")
        text = str(ours) if ours else simplify_union_error(one_line(message))
        sys.stderr.write(f"error: {one_line(text)} (all options: {prog} --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def simplify_union_error(message: str) -> str:
    """jsonargparse's "Does not validate against any of the Union subtypes ..." reduced to the inner reason.

    ``Parser key "model.measurement": Does not validate ... Parser key "measurement": Expected a ... Got value:
    elbow - Expected a NoneType ...`` becomes ``Parser key "model.measurement.measurement": Expected a ...
    Got value: elbow``.
    """
    found = re.match(r'Parser key "([^"]+)": Does not validate against any of the Union subtypes.*?'
                     r'Parser key "([^"]+)": (Expected .*?Got value: \S+)', message)
    if found:
        outer, inner, reason = found.groups()
        return f'Parser key "{outer}.{inner}": {reason}'
    return simplify_class_error(message)


def simplify_class_error(message: str) -> str:
    """The error of a subclass-mode option (``train.py``'s ``--model``, whose class a config may name) reduced to
    the problem with the configured class.

    ``Parser key "model": Does not validate ... Problem with given class_path 'lit_attr.ddpm_module.DDPMModule':
    Option 'learning_rate' is not accepted - Expected a <class 'NoneType'> ...`` becomes ``--model.learning_rate
    is not an option of lit_attr.ddpm_module.DDPMModule``.
    """
    found = re.match(r'Parser key "([^"]+)": Does not validate against any of the Union subtypes.*?'
                     r"Problem with given class_path '([^']+)': (.*?)(?: - Expected a <class 'NoneType'>.*)?$", message)
    if not found:
        return message
    key, class_path, reason = found.groups()
    option = re.fullmatch(r"Option '([^']+)' is not accepted", reason.strip())
    if option:
        return f"--{key}.{option.group(1)} is not an option of {class_path}"
    return f'Parser key "{key}" ({class_path}): {reason.strip()}'



class OneLineArgumentParser(OneLineErrors, ArgumentParser):
    """jsonargparse ``ArgumentParser`` with one-line errors (``evaluate.py``)."""


class OneLineLightningArgumentParser(OneLineErrors, LightningArgumentParser):
    """``LightningArgumentParser`` with one-line errors (``train.py``, ``attribute.py``)."""
