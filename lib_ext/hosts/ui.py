"""Gradio controls of the AlwaysOn accordion (no logic). Their order is the order of `Settings` fields."""
from __future__ import annotations

import gradio as gr
from modules.ui_components import InputAccordion

from lib_ext.settings import FIELD_BY_NAME, HIRES_MODES, PREDICTIONS, Settings


def _label(name: str) -> str:
    return FIELD_BY_NAME[name].metadata["label"]


class UncondAccordion:
    """Builds the controls for one tab. Keeps no component on the Script: the API calls `ui()` again inside a
    throwaway Blocks just to read defaults, which must not overwrite the real UI's components."""

    def __init__(self, elem_id):
        self.elem_id = elem_id  # the Script's elem_id(), so ids are script_txt2img_uncond_lab_<name>
        self.controls: dict[str, gr.components.Component] = {}

    def build(self) -> list:
        defaults = Settings()
        with InputAccordion(False, label="Uncond Lab", elem_id=self.elem_id("enabled")) as enabled:
            self.controls["enabled"] = enabled
            with gr.Row():
                self._slider("zero_weight", "Zero weight", defaults.zero_weight)
            with gr.Row():
                self._slider("start", "Start", defaults.start)
                self._slider("end", "End", defaults.end)
            with gr.Accordion("Hires fix pass", open=False, elem_id=self.elem_id("hires")):
                hr_mode = gr.Radio(list(HIRES_MODES.values()), value=HIRES_MODES[defaults.hr_mode],
                                   label="Hires pass uncond", elem_id=self.elem_id("hr_mode"))
                self.controls["hr_mode"] = hr_mode
                with gr.Row(visible=defaults.hr_mode == "own") as own_row:
                    self._slider("hr_zero_weight", "Hires zero weight", defaults.hr_zero_weight)
                    self._slider("hr_start", "Hires start", defaults.hr_start)
                    self._slider("hr_end", "Hires end", defaults.hr_end)
                hr_mode.change(lambda mode: gr.update(visible=mode == HIRES_MODES["own"]), hr_mode, own_row,
                               show_progress=False)
            self.controls["compare"] = gr.Checkbox(
                defaults.compare, label="Compare zero vs null (renders the WebUI default, null and zero too)",
                elem_id=self.elem_id("compare"))
            with gr.Accordion("Rectified flow", open=False, elem_id=self.elem_id("rf_group")):
                self.controls["rf"] = gr.Radio(list(PREDICTIONS.values()), value=PREDICTIONS[defaults.rf],
                                               label="Prediction", elem_id=self.elem_id("rf"))
                with gr.Row():
                    self.controls["shift"] = gr.Number(value=defaults.shift, label="Shift", step=0.1,
                                                       elem_id=self.elem_id("shift"))
                    with gr.Accordion("Advanced", open=False, elem_id=self.elem_id("rf_advanced")):
                        self.controls["multiplier"] = gr.Number(value=defaults.multiplier, label="Timestep multiplier",
                                                                step=1, elem_id=self.elem_id("multiplier"))
        return [self.controls[name] for name in FIELD_BY_NAME]

    def _slider(self, name: str, label: str, value: float) -> None:
        self.controls[name] = gr.Slider(0.0, 1.0, value=value, step=0.01, label=label, elem_id=self.elem_id(name))

    def infotext_fields(self) -> list:
        """Paste support: each control reads its own key; the accordion opens when any of ours is present."""
        fields = [(self.controls["enabled"], lambda params: bool(Settings.infotext_to_ui(params)))]
        for name, control in self.controls.items():
            if name != "enabled":
                fields.append((control, lambda params, name=name: Settings.infotext_to_ui(params).get(name)))
        return fields

    @staticmethod
    def paste_field_names() -> list[str]:
        return [_label(name) for name in FIELD_BY_NAME if FIELD_BY_NAME[name].metadata["infotext"]]
