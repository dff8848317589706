"""What a person sees when a stage runs: our lines, one live progress display, no library noise.

Library modules log through stdlib `logging` (loggers under `pipeline.`); only the CLI calls
`setup()`, which decides where those lines and everyone else's go:

- `pipeline.*` INFO and above: to stdout, one line each (what `ray job logs` and a log
  file show: redirected output stays line-based).
- Ray, Ray Data, Ray Train, MLflow, alembic, transformers ... (their INFO lines, known-benign
  warnings, Ray Data's progress bars): to a log file (named at the end by `log_file_note()`),
  unless `verbose`; their errors still reach the terminal.
- `Progress(what, total, unit)`: on a terminal one line redrawn in place with count, rate
  and ETA; otherwise a plain line at most every `every_s` seconds and at the end.

Without `setup()` (library use, tests) nothing is configured: `Progress` writes plain lines
through the `pipeline.progress` logger and the host application decides.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional, TextIO

logger = logging.getLogger(__name__)

# Loggers of the libraries we drive; their INFO lines are for a log file, not for people.
THIRD_PARTY = ("ray", "ray.native", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow", "alembic", "sqlalchemy", "huey",
               "urllib3", "filelock", "transformers", "httpx", "datasets", "fsspec", "py.warnings")


_FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class _State:
    configured = False
    verbose = False
    log_file: Optional[Path] = None
    file_handler: Optional[logging.Handler] = None
    stack: list = []  # live progress displays, innermost last: only the innermost is drawn

    @classmethod
    def top(cls) -> Optional["Progress"]:
        return cls.stack[-1] if cls.stack else None
    native_filter = False
    lock = threading.RLock()


def is_configured() -> bool:
    return _State.configured


def verbose() -> bool:
    """True when the CLI asked for everything on the terminal (`--verbose`) or none was set up."""
    return _State.verbose or not _State.configured


class _LineHandler(logging.Handler):
    """Writes a record as one line to the current sys.stdout (or `stream`); a live progress line
    is cleared first and redrawn after."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            with _State.lock:
                live = _State.top()
                if live is not None:
                    live._clear()
                out = self.stream or sys.stdout
                out.write(text + "\n")
                out.flush()
                if live is not None:
                    live._draw()
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


class _LazyFileHandler(logging.FileHandler):
    """A log file (and its folder) that exists only once a line is written to it."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def setup(verbose: bool = False, log_file: str | os.PathLike | None = None, stream: TextIO | None = None) -> None:
    """Configure the console for a CLI run (idempotent; a later call may add the log file)."""
    _State.verbose = verbose
    root = logging.getLogger("pipeline")
    if not _State.configured:
        handler = _LineHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        root.propagate = False
        logging.captureWarnings(True)
        _State.configured = True
    if log_file is not None and _State.log_file != Path(log_file):
        path = Path(log_file)
        fh = _LazyFileHandler(path)
        fh.setFormatter(_FILE_FORMAT)
        fh.setLevel(logging.INFO)  # Ray Data logs at DEBUG by default: megabytes of scheduler state
        if _State.file_handler is not None:
            root.removeHandler(_State.file_handler)
            _State.file_handler.close()
        root.addHandler(fh)  # our own lines too: the file is the whole story of the run
        _State.log_file, _State.file_handler = path, fh
    if not verbose:  # transformers' "Loading weights" bars (read at its import; Ray workers inherit it)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # read when Ray's logging module is first imported: set here, before any stage imports ray
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", BENIGN_FORWARDED)
        # MLflow's client prints two "View run ... at" lines per run it ends on a server: one pair
        # per series run of a grid. The grid names its parent run and the UI command at the end.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # plain tqdm bars the libraries draw with no off switch of their own (transformers' GGUF
        # conversion: "Converting and de-quantizing GGUF tensors"), which redirected output turns
        # into one endless carriage-return line; the stage's own progress line says the same
        os.environ.setdefault("TQDM_DISABLE", "1")
    route_third_party()
    if not verbose and sys.stderr.isatty():
        _filter_native_stderr()


# Lines Ray's C++ core prints straight to file descriptor 2 (not through Python logging) that say
# nothing a user can act on. Ray Data passes every actor pool's constructor through the object
# store and keeps actor restarts on (our fault tolerance), so Ray warns about it on every pool.
BENIGN_NATIVE = ("has constructor arguments in the object store and max_restarts > 0",)
# Lines Ray forwards from its own actors' output to the driver that say nothing a user can act on
# (Ray's RAY_DEDUP_LOGS_SKIP_REGEX drops them from the driver's output; they stay in Ray's worker
# logs under its session folder). Ray Train's placement-group cleaner polls the state API, which a
# local Ray without the dashboard does not serve, and warns on every poll.
BENIGN_FORWARDED = ("Failed to query Ray Train Controller actor state|"
                    "has constructor arguments in the object store and max_restarts > 0")



def _filter_native_stderr() -> None:
    """On a terminal, route known-benign native lines on fd 2 to the log file; pass the rest through.

    Python's own sys.stderr is pointed at the real terminal first, so tracebacks never depend
    on the filter thread; only what C/C++ code writes to fd 2 goes through the pipe.
    """
    if _State.native_filter:
        return
    real = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    sys.stderr = open(real, "w", buffering=1, closefd=False, errors="backslashreplace")
    native = logging.getLogger("ray.native")

    def pump() -> None:
        with open(r, "rb", buffering=0) as pipe:
            for raw in iter(pipe.readline, b""):
                line = raw.decode(errors="backslashreplace").rstrip("\n")
                if any(p in line for p in BENIGN_NATIVE):
                    native.warning(line)
                else:
                    os.write(real, raw)

    threading.Thread(target=pump, name="tart-native-stderr", daemon=True).start()
    _State.native_filter = True


def route_third_party() -> None:
    """Send the libraries' log records to the log file (errors also to stderr) unless verbose.

    Libraries install their own handlers when first imported or started (MLflow on import,
    Ray Data on import, Ray at `ray.init`), so this is called again after each of those
    (`runtime.init_ray`, the embed stage before it builds a Ray Data pipeline).
    """
    if not _State.configured or _State.verbose:
        return
    if _State.file_handler is not None:  # ray.init re-formats every handler of the 'ray' logger: undo it
        _State.file_handler.setFormatter(_FILE_FORMAT)
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    errors.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    for name in THIRD_PARTY:
        lg = logging.getLogger(name)
        lg.handlers = [h for h in (_State.file_handler, errors) if h is not None]
        lg.propagate = False
    data = sys.modules.get("ray.data")  # only once something uses it: importing it costs ~1 s and warnings
    if data is not None:  # Ray Data's tqdm bars overlap our progress line; its plan INFO lines go to the file
        ctx = data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False


def log_file_note() -> str:
    """A line naming the log file, for the end of a run ('' when there is none)."""
    if _State.log_file is None:
        return ""
    return f"library logs (Ray, MLflow): {_State.log_file}" + ("" if not _State.verbose else " (also shown above)")


def _fmt_s(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """A progress display for `total` units of `what` (e.g. Progress("cells", 108, "cells")).

    `advance(n, note)` after each unit (or batch of units); `fail(n, note)` for failed ones;
    `close()` at the end prints the final line. On a terminal the line is redrawn in place;
    otherwise a line is written at most every `every_s` seconds (and at the end).
    """

    def __init__(self, what: str, total: int, unit: str = "", every_s: float = 30.0,
                 stream: TextIO | None = None):
        self.what, self.total, self.unit, self.every_s = what, int(total), unit, every_s
        self.done = self.failed = 0
        self.note = ""
        self.t0 = self._last = time.time()
        self.stream = stream or sys.stdout
        self.live = _State.configured and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._width = 0
        if self.live:  # a nested display (an embedding pass inside the grid's cells) takes the line
            with _State.lock:
                outer = _State.top()
                if outer is not None:
                    outer._clear()
                _State.stack.append(self)
                self._draw()

    @property
    def elapsed(self) -> float:
        return time.time() - self.t0

    def line(self) -> str:
        n = self.done + self.failed
        el = self.elapsed
        eta = el / n * (self.total - n) if n else float("nan")
        failed = f", {self.failed} failed" if self.failed else ""
        unit = f" {self.unit}" if self.unit else ""
        text = f"[{self.what}] {n}/{self.total}{unit}{failed}, {_fmt_s(el)} elapsed, ETA {_fmt_s(eta)}"
        return f"{text}  {self.note}" if self.note else text

    def advance(self, n: int = 1, note: str = "") -> None:
        self._step(n, 0, note)

    def fail(self, n: int = 1, note: str = "") -> None:
        self._step(0, n, note)
        if note:
            logger.warning(f"[{self.what}] {note}")

    def _step(self, ok: int, bad: int, note: str) -> None:
        with _State.lock:
            self.done += ok
            self.failed += bad
            if note:
                self.note = note
            if self.live:
                if _State.top() is self:
                    self._clear()
                    self._draw()
            elif time.time() - self._last >= self.every_s or self.done + self.failed >= self.total:
                self._last = time.time()
                self._emit_line()

    def close(self) -> None:
        with _State.lock:
            if self.live:
                self._clear()
                if self in _State.stack:
                    _State.stack.remove(self)
                self.live = False
            if self.done + self.failed < self.total or self._last == self.t0:
                self._emit_line()
            outer = _State.top()
            if outer is not None:
                outer._draw()

    def _emit_line(self) -> None:
        logging.getLogger("pipeline.progress").info(self.line())

    def _draw(self) -> None:
        text = self.line()
        cols = _columns()
        if len(text) > cols - 1:
            text = text[: cols - 2] + "…"
        self.stream.write("\r" + text)
        self.stream.flush()
        self._width = len(text)

    def _clear(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _columns() -> int:
    try:
        cols = os.get_terminal_size().columns
    except OSError:
        return 160
    return cols if cols >= 20 else 160  # a pseudo-terminal without a size says 0
