"""What surrounds every Trainer run of the estimators: Lightning quiet, its known warnings
silenced, the global random generators untouched, Ctrl+C a KeyboardInterrupt.

Nothing here changes the user's program outside a run. Lightning's info messages are dropped
by a logging filter only for records emitted by a thread that is running one of our runs, so
a fit in a background thread neither silences nor is disturbed by other threads. The warnings
a scikit-learn user cannot act on are silenced by filters that exist only while one of our
runs does (put first in the list when the first run starts, taken out when the last one
ends), never at import: they stay silent under ``python -W error`` and in a pytest run, which
resets filters set at import, and runs in several threads do not take each other's filters
away, as ``warnings.catch_warnings`` (not thread-safe) would. (A thread pool that puts its own
copy of the filter list back while a run is going on, as scikit-learn's does for each task,
can still let one through.)
"""

import logging
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module

_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")

# warnings of Lightning and torch that a run of ours triggers and its user cannot act on
KNOWN_WARNINGS = (
    # torch >= 2.13 deprecates a class Lightning 2.6 still builds per batch
    r".*isinstance\(treespec, LeafSpec\).*",
    # every module defines validation_step; only early stopping gives it data
    r".*`validation_step` but have no `val_dataloader`.*",
    # batches are sliced from memory or read by the estimator: workers are the user's choice
    r".*does not have many workers.*",
    r".*`IterableDataset` has `__len__` defined.*",
    # inference runs with the user's callbacks, which may not define every predict hook
    r".*predict returned None.*",
    # the estimators log epoch means, not steps: a user's logger gets one row per epoch
    r".*smaller than the logging interval.*",
)


class _QuietThreads(logging.Filter):
    """Drops Lightning's records emitted by threads in a quiet fit (a set of thread ids)."""

    def __init__(self):
        super().__init__()
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.thread not in self.threads


_QUIET = _QuietThreads()


def _install_filter() -> None:
    """Attach the filter to every Lightning logger and to the handlers their records reach."""
    names = [
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in _LIGHTNING_LOGGERS
    ]
    for name in names:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if _QUIET not in target.filters:
                target.addFilter(_QUIET)
    for handler in logging.root.handlers:
        if _QUIET not in handler.filters:
            handler.addFilter(_QUIET)


_IN_OUR_FIT = threading.local()
_PATCH_LOCK = threading.Lock()
_PATCH_USERS: dict[str, int] = {}


def _isolate_rng_outside_our_fits(isolate_rng):
    """Lightning's ``isolate_rng`` (saving the global generators' states around the sanity
    check and restoring them after), skipped in threads running one of our fits: they draw
    from no global generator, and the restore would rewind the draws other threads made in
    between (a fit in a background thread then changed the main thread's random numbers)."""

    @contextmanager
    def isolated(*args, **kwargs):
        if getattr(_IN_OUR_FIT, "active", False):
            yield
            return
        with isolate_rng(*args, **kwargs):
            yield

    isolated.original = isolate_rng
    return isolated


@contextmanager
def global_generators_untouched(namespace: str = "pytorch_lightning"):
    """Run one of our fits in this thread without Lightning rewinding the global generators.

    While at least one of our fits runs, the trainer module's ``isolate_rng`` is a version
    that skips the save-and-restore in threads marked here; Lightning is left as it was when
    the last one ends, so nothing is changed at import or outside our fits.
    """
    trainer_module = import_module(f"{namespace}.trainer.trainer")
    with _PATCH_LOCK:
        if _PATCH_USERS.get(namespace, 0) == 0:
            trainer_module.isolate_rng = _isolate_rng_outside_our_fits(trainer_module.isolate_rng)
        _PATCH_USERS[namespace] = _PATCH_USERS.get(namespace, 0) + 1
    before = getattr(_IN_OUR_FIT, "active", False)
    _IN_OUR_FIT.active = True
    try:
        yield
    finally:
        _IN_OUR_FIT.active = before
        with _PATCH_LOCK:
            _PATCH_USERS[namespace] -= 1
            if _PATCH_USERS[namespace] == 0:
                trainer_module.isolate_rng = trainer_module.isolate_rng.original


_FILTER_LOCK = threading.Lock()
_FILTER_USERS = 0


@contextmanager
def known_warnings_silenced() -> Iterator[None]:
    """The ``KNOWN_WARNINGS`` ignored while at least one of our runs is going on."""
    global _FILTER_USERS
    ours = [("ignore", message) for message in KNOWN_WARNINGS]
    with _FILTER_LOCK:
        # present at every run's start: a thread pool (scikit-learn's, joblib's) may have put
        # its own copy of the list back since the first run began
        present = {(f[0], getattr(f[1], "pattern", f[1])) for f in warnings.filters}
        for _, message in ours:
            if ("ignore", message) not in present:
                warnings.filterwarnings("ignore", message=message)
        _FILTER_USERS += 1
    try:
        yield
    finally:
        with _FILTER_LOCK:
            _FILTER_USERS -= 1
            if _FILTER_USERS == 0:
                # ours are the entries with these messages (a user's catch_warnings may have
                # put the list back meanwhile; then there is nothing to take out)
                warnings.filters[:] = [
                    f
                    for f in warnings.filters
                    if (f[0], getattr(f[1], "pattern", f[1])) not in ours
                ]
                getattr(warnings, "_filters_mutated", lambda: None)()


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Drop Lightning's info messages (device summaries, tips) emitted by this thread."""
    _install_filter()
    ident = threading.get_ident()
    with _QUIET.lock:
        _QUIET.threads.add(ident)
    try:
        yield
    finally:
        with _QUIET.lock:
            _QUIET.threads.discard(ident)


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is how Lightning ends a fit on Ctrl+C: ``sys.exit(1)`` in the main
    thread, a ValueError from ``signal.signal`` in another, both raised while handling the
    KeyboardInterrupt."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


@contextmanager
def lightning_run(namespace: str = "pytorch_lightning") -> Iterator[str]:
    """Around a Trainer's run: a temporary root directory (removed after; yielded), Lightning
    quiet, its known warnings silenced, the global generators untouched, and Ctrl+C a
    KeyboardInterrupt with the caller's SIGINT handler back."""
    with (
        tempfile.TemporaryDirectory(prefix="nidl_vae_") as root,
        known_warnings_silenced(),
        quiet_lightning(),
        _sigint_restored(),
        global_generators_untouched(namespace),
    ):
        try:
            yield root
        except (SystemExit, ValueError) as exc:
            if interrupted(exc):
                raise KeyboardInterrupt from None
            raise


@contextmanager
def _sigint_restored() -> Iterator[None]:
    """Lightning ignores Ctrl+C after catching one; put the caller's handler back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
