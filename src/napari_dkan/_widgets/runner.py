"""Running the dock's step generators off the GUI thread, with progress, cancel and errors.

:class:`JobRunner` owns a progress bar, a status line and a Predict/Cancel button pair.  It
starts one job at a time with napari's ``create_worker`` (quiet jobs, such as listing devices,
may run beside it and show nothing), shows each :class:`~napari_dkan._widgets.jobs.Progress`,
and turns failures into napari notifications: :class:`~napari_dkan.io.errors.DataError` as its
message, anything else with the exception logged.

Qt repaints a progress bar at once when its value changes, and in a window holding napari's
OpenGL canvas that repaint composes the whole window: ~30 ms on average, up to 0.7 s, on a
2-core CPU without a GPU, for each of the ~700 reports of a 100-s prediction (21 s of the GUI
thread, measured by ``benchmarks/progressive_map.py``).  The runner shows at most one report per
:data:`PROGRESS_INTERVAL_S`, and the latest one always within that time.

Closing the viewer deletes the dock's widgets while a job may still run.  The runner then
cancels the job (when its progress bar is destroyed) and its slots, still called as the
worker winds down, touch no deleted widget: no "Internal C++ object already deleted".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from napari_dkan._widgets.jobs import Progress, frozen_heap
from napari_dkan.io.errors import DataError
from napari_dkan.progress import Cancelled

log = logging.getLogger(__name__)

#: shortest time between two progress reports shown (see the module docstring)
PROGRESS_INTERVAL_S = 0.5


class JobRunner:
    """One visible job at a time; see the module docstring."""

    def __init__(self, progress: QProgressBar, status: QLabel, start_button: QPushButton,
                 cancel_button: QPushButton) -> None:
        self.progress, self.status = progress, status
        self.start_button, self.cancel_button = start_button, cancel_button
        self.worker: Any = None
        self.what = ""
        self.cancel_event = threading.Event()
        self._failed = self._settled = False
        self.closed = False
        self._shown_at = 0.0  # time.monotonic() of the last progress shown
        self._pending: Progress | None = None  # the latest report, not shown yet
        self._pending_timer = QTimer(progress)
        self._pending_timer.setSingleShot(True)
        self._pending_timer.timeout.connect(self.show_pending)
        cancel_button.setEnabled(False)
        cancel_button.clicked.connect(self.cancel)
        # the viewer (or the dock) is going: stop the job, and show nothing more
        progress.destroyed.connect(lambda *_: self.shutdown())

    def shutdown(self) -> None:
        """Cancel the running job and stop touching the widgets (they are being deleted)."""
        self.closed = True
        self.cancel_event.set()

    def _alive(self) -> bool:
        """False once the widgets are gone (the viewer closed under a running job)."""
        if self.closed:
            return False
        try:
            self.progress.objectName()
            self.status.objectName()
        except RuntimeError:  # the C++ object is deleted
            self.shutdown()
            return False
        return True

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, steps: Generator, on_return: Callable[[Any], None], what: str, *,
              cancel: threading.Event | None = None, quiet: bool = False,
              on_yield: Callable[[Any], None] | None = None,
              on_finished: Callable[[], None] | None = None) -> Any:
        """Run ``steps`` in a worker; ``on_return`` gets its result on the GUI thread.

        ``on_yield`` gets each progress report too, and ``on_finished`` is called when the worker
        ends, whatever the outcome; both are connected before the worker starts (a short job may
        end before the caller could connect them).
        Returns the worker, or None when another visible job is still running.
        """
        from napari.qt.threading import create_worker

        if self.closed:
            steps.close()
            return None
        if self.busy and not quiet:
            show_warning(f"wait for {self.what} to finish, or cancel it")
            steps.close()
            return None
        driver = _drive(steps)
        worker = create_worker(_relay, driver, _ignore_errors=True)
        # A worker that is quit (napari does so when its window closes) drops the generator
        # mid-job without closing it; sitting in the heap frozen by frozen_heap(), it would never
        # be collected and the heap would stay frozen for good.  Close it when the worker ends.
        worker.finished.connect(driver.close)
        if on_yield is not None:
            worker.yielded.connect(lambda item: on_yield(item) if self._alive() else None)
        if on_finished is not None:
            worker.finished.connect(lambda: on_finished() if self._alive() else None)
        if quiet:
            worker.returned.connect(lambda r: None if not self._alive() else
                                    self._report(what, r.error) if isinstance(r, _Failure)
                                    else on_return(r))
            worker.start()
            return worker
        self.cancel_event = cancel or threading.Event()
        self._failed = self._settled = False
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda r: self._on_error(what, r.error) if isinstance(r, _Failure)
                                else self._settle(on_return, r))
        worker.finished.connect(self._on_finished)
        self.worker, self.what = worker, what
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText(f"{what}…")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop; the dock is free again within a fraction of a second.

        Only the job's own event is set: the step generator notices it within 50 ms and ends
        with :class:`Cancelled`.  (``worker.quit()`` would make the worker drop that ending;
        napari's activity panel uses it, and :meth:`_on_finished` covers that case.)
        """
        self.cancel_event.set()

    def _settle(self, on_return: Callable[[Any], None], result: Any) -> None:
        self._settled = True
        self._drop_pending()
        if self._alive():
            on_return(result)

    def _on_progress(self, step: Progress) -> None:
        if self.cancel_event.is_set() or not self._alive():
            return  # reports still queued when the user cancelled, or the dock is gone
        wait = PROGRESS_INTERVAL_S - (time.monotonic() - self._shown_at)
        if wait > 0:  # shown soon, unless a newer one comes first
            self._pending = step
            if not self._pending_timer.isActive():
                self._pending_timer.start(max(1, round(wait * 1000)))
            return
        self._show_progress(step)

    def show_pending(self) -> None:
        """Show the latest report now, if it is waiting (e.g. before the job goes on)."""
        self._pending_timer.stop()
        step, self._pending = self._pending, None
        if (step is not None and self.worker is not None and not self._settled
                and not self.cancel_event.is_set() and self._alive()):
            self._show_progress(step)

    def _drop_pending(self) -> None:
        """The job has ended: a report not shown yet must not cover what the end shows."""
        self._pending = None
        if self._alive():
            self._pending_timer.stop()

    def _show_progress(self, step: Progress) -> None:
        self._pending = None
        self._shown_at = time.monotonic()
        if step.total > 0:
            self.progress.setRange(0, step.total)
            self.progress.setValue(step.done)
            self.progress.setFormat(f"{getattr(step, 'label', step.stage)} %v/%m {step.unit}".rstrip())
        else:
            self.progress.setRange(0, 0)
        self.status.setText(step.text)

    def _on_error(self, what: str, exc: BaseException) -> None:
        self._failed = self._settled = True
        self._drop_pending()
        if self._alive():
            self._report(what, exc)

    def _report(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.status.setText(f"{what}: cancelled")
        elif isinstance(exc, DataError):
            self.status.setText(f"{what} failed")
            show_error(str(exc))
        else:
            log.error("%s failed", what, exc_info=exc)
            self.status.setText(f"{what} failed: {exc}")
            show_error(f"{what} failed: {exc}")

    def _on_finished(self) -> None:
        if not self._settled:  # aborted from napari's activity panel: no result, no error
            self._on_error(self.what, Cancelled())
        self._drop_pending()
        self.worker = None
        if not self._alive():
            return
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if self._failed else 1)
        self.progress.setFormat("stopped" if self._failed else "done")


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _relay(driver: Generator) -> Generator:
    """The worker's generator function (create_worker needs one): relays ``driver``, which the
    runner keeps so that it can close it whatever becomes of the worker."""
    return (yield from driver)


def _drive(steps: Generator) -> Generator:
    """Run a step generator inside the worker (create_worker wants a generator function).

    Errors come back as a :class:`_Failure` result instead of through the worker's ``errored``
    signal: napari 0.9.2's ``create_worker`` connects a task-status handler to ``errored`` that
    does not accept the exception argument, and itself raises in the event loop.
    """
    try:
        with frozen_heap():  # no full garbage collection of napari's heap while the job runs
            return (yield from steps)
    except Exception as exc:  # noqa: BLE001 - every failure is shown to the user by _report
        return _Failure(exc)
