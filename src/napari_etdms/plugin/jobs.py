"""A job (a generator of `worker.Progress`) run in napari's worker thread while the dock shows
its progress: the button that started it reads "Cancel", the other actions wait, napari's
activity panel has a bar, and the outcome reaches the main thread once, when it ends."""

from __future__ import annotations

import threading

from qtpy.QtCore import QTimer


class JobControls:
    """The dock's running state. `buttons` are the actions that start jobs (one at a time);
    `progress_bar` and `status` are the form's widgets that show a job's progress."""

    def __init__(self, parent, buttons: list, progress_bar, status):
        self.worker = None
        self.buttons, self.progress_bar, self.status = buttons, progress_bar, status
        self._cancel: threading.Event | None = None
        self._activity = None  # napari.utils.progress in the activity panel
        self._latest = None  # newest progress event, drawn by the timer
        self._button = None  # the one that started the running job (it reads "Cancel")
        self._idle_text = ""
        self._timer = QTimer(parent)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, make_job, finish, button, status: str) -> None:
        """Run `make_job(cancel)` in napari's worker; `finish(outcome)` on completion, with the
        job's result under "results" (None if cancelled) or its error under "error"."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._cancel = threading.Event()
        outcome: dict = {}
        self.worker = create_worker(_collect, make_job(self._cancel), outcome)
        self._activity = progress(total=0, desc="ETDMS")
        self.worker.yielded.connect(self._on_progress)
        cancel = self._cancel
        self.worker.aborted.connect(lambda: cancel.set())  # napari's task manager may quit the worker
        # One completion handler, on `finished`: Qt may deliver `returned` after `finished`.
        self.worker.finished.connect(lambda: self._finished(finish, outcome))
        self._button, self._idle_text = button, button.text
        button.text = "Cancel"
        for other in self.buttons:
            other.enabled = other is button
        self.progress_bar.visible = True
        self.progress_bar.value = 0
        self.status.value = status
        self._timer.start()
        self.worker.start()

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.status.value = "cancelling..."
            self._button.enabled = False

    def _finished(self, finish, outcome: dict) -> None:
        self._reset()
        finish(outcome)

    def _on_progress(self, p):
        # Only remember the event: the timer draws it on the main thread, so a late or
        # cross-thread delivery can never overwrite the final status.
        self._latest = p

    def _show_progress(self):
        p, self._latest = self._latest, None
        if p is None or not self.running:
            return
        self.progress_bar.max = p.total
        self.progress_bar.value = p.done
        if self._activity is not None:
            self._activity.total = p.total * p.frames
            self._activity.n = p.frame * p.total + p.done
            self._activity.set_description(f"ETDMS {p.stage}")
        eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        frame = f"slice {p.frame + 1}/{p.frames} " if p.frames > 1 else ""
        self.status.value = f"{frame}{p.stage}: {p.done}/{p.total}{eta}"

    def _reset(self):
        self._timer.stop()
        self._latest = None
        self.worker = None
        self._cancel = None
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        if self._button is not None:
            self._button.text = self._idle_text
        for button in self.buttons:
            button.enabled = True
        self._button = None
        self.progress_bar.visible = False


def _collect(job, outcome: dict):
    """Relay a job's progress; keep its result or error for the main thread (worker thread)."""
    try:
        outcome["results"] = yield from job
    except Exception as err:  # shown by the widget, with the widget reset
        outcome["error"] = err
