"""The dock's "Adapt to this image": stage 1 of the chosen weights fine-tuned on the image's own
noise (`training.adapt`), and the adapted weights added to the list and chosen when they denoise
held-out rows of the image better."""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import FloatSpinBox, PushButton, SpinBox

from napari_etdms.plugin.worker import AdaptJob
from napari_etdms.training import ADAPT_SETTINGS, DEFAULT_ADAPT_MINUTES
from napari_etdms.weights import user_folder


class AdaptPanel:
    """Its budget and step fields (advanced settings), its button, the job it starts and what its
    end shows."""

    def __init__(self):
        self.minutes = FloatSpinBox(label="adapt budget (min)", min=0.05, max=600, step=0.5,
                                    value=DEFAULT_ADAPT_MINUTES, visible=False)
        self.steps = SpinBox(label="adapt steps", min=1, max=100000, value=ADAPT_SETTINGS.iterations,
                             visible=False, tooltip="the most training steps adapting takes (the budget "
                                                    "above may end it sooner)")
        self.button = PushButton(
            text="Adapt to this image",
            tooltip="fine-tune the denoiser of the chosen weights on this image's own noise (a few minutes, no "
                    "clean frame needed); the adapted weights are added to the list and chosen if they denoise "
                    "held-out rows of the image better")

    def job(self, layer, planes: list[int | None], base: str, device: str, precision: str) -> AdaptJob:
        """Adapting on the layer's whole frame, or on each of `planes` of a stack."""
        frames = [np.array(layer.data if i is None else layer.data[i]) for i in planes]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in layer.name)[:40]
        # training has no float16 (no loss scaling): that choice adapts in the automatic precision
        precision = "auto" if precision == "float16" else precision
        return AdaptJob(frames, layer.name, base, user_folder() / f"adapted-{safe}-{stamp}", device,
                        float(self.minutes.value), int(self.steps.value), precision)

    @staticmethod
    def finish(outcome: dict, weights, status) -> None:
        """Show how adapting ended; kept weights become the `weights` choice."""
        from napari.utils.notifications import show_error, show_info

        result = outcome.get("results")
        if "error" in outcome:
            show_error(f"ETDMS adapting failed: {outcome['error']}")
            status.value = f"error: {outcome['error']}"
        elif result is None:
            show_info("ETDMS: adapting cancelled; no weights were written")
            status.value = "adapting cancelled"
        elif not result.kept:
            show_info(f"ETDMS: {result.message}")
            status.value = "the chosen weights fit this image better: nothing added"
        else:
            weights.reset_choices()
            weights.value = result.entry.name
            show_info(f"ETDMS: {result.message}")
            status.value = f"adapted weights '{result.entry.name}' chosen: press Run"
