"""The "Probe" part of the Uncond Lab tab (gradio, no logic): the probe of the loaded model, its plot, downloads."""
from __future__ import annotations

import html
import json
import math
import tempfile
from pathlib import Path

import gradio as gr
from modules import shared

from lib_ext.hosts.probe_checkpoints import CheckpointProbe, loaded_title
from lib_ext.hosts.probe_service import ProbeService, merge_request, result_json, sweep_json
from lib_ext.hosts.webui_state import webui_job
from lib_ext.hosts.ui import NO_MERGE, TE_FOLLOWS, TE_RATIO_CHOICES, checkpoint_choices
from lib_ext.probe import (DEFAULT_PROBE_PROMPT, LEVEL_COLUMNS, SWEEP_COLUMNS, ProbeError, ProbeResult,
                           ProbeSettings, RatioSweep)
from lib_ext.probe_shelf import SHELF_COLUMNS, ShelfProbe, progress_text, significant
from lib_ext.settings import MERGE_METHOD_LABELS, PREDICTIONS

PLOT_METRICS = {"cfg_rel_diff": "CFG prediction, relative change", "x0_rel_diff": "x0 prediction, relative change",
                "guidance_cosine": "cosine of the guidance directions"}


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise ProbeError(f"Uncond Lab probe: seeds must be integers separated by commas, got {text!r}") from None


def _settings(prompt_text, seeds_text, level_count, cfg, pixels, reference_name, rf, shift) -> ProbeSettings:
    """The tab's controls as ProbeSettings (square latents of 4 channels)."""
    latent = int(pixels) // 8
    return ProbeSettings(prompt=prompt_text, seeds=_seeds(seeds_text), levels=int(level_count), cfg_scale=float(cfg),
                         latent_shape=(4, latent, latent), reference=reference_name, rf=rf, shift=shift)


def _plot_rows(result: ProbeResult):
    import pandas as pd  # the WebUIs ship pandas (gradio needs it for its plots)
    return pd.DataFrame([{"log10 sigma": math.log10(sigma), "sigma": sigma, "metric": label, "value": value}
                         for metric, label in PLOT_METRICS.items()
                         for sigma, value in zip(result.sigmas, getattr(result, metric))])


def _interrupted_note(interrupted: bool, what: str) -> str:
    return f"**Interrupted**: {what}  \n" if interrupted else ""


def _summary(result: ProbeResult, cached: bool) -> str:
    embedding = ", ".join(f"{key} {value:.4g}" for key, value in result.embedding.items())
    levels = f"the first {len(result.sigmas)} of {result.settings.levels} noise levels"
    non_finite = result.non_finite_text()
    return (_interrupted_note(result.interrupted, levels) +
            (f"**No score**: {non_finite}  \n" if non_finite else "") +
            f"**Score {result.score:.4f}** (mean relative change of the CFG prediction when the zero uncond "
            f"replaces te(\"\"); 0 = no dependence)  \n"
            f"Cost: {result.unet_calls} UNet calls, {result.unet_rows} latents{' (cached)' if cached else ''}  \n"
            f"te(\"\"): {embedding}")


def _write_downloads(stem: str, csv_text: str, data: dict) -> list[str]:
    """`<stem>.csv` and `<stem>.json` in a fresh temporary folder, for the File component."""
    folder = Path(tempfile.mkdtemp(prefix=f"uncond_lab_{stem}_"))
    (folder / f"{stem}.csv").write_text(csv_text)
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=2))
    return [str(folder / f"{stem}.csv"), str(folder / f"{stem}.json")]


def _rounded(value):
    """A table cell for reading: floats to 4 significant digits (the CSV and JSON keep every digit)."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _table(rows: list[dict], columns: tuple[str, ...]):
    import pandas as pd
    return pd.DataFrame([[_rounded(row[c]) for c in columns] for row in rows], columns=list(columns))


def _sweep_plot_rows(sweep: RatioSweep):
    import pandas as pd
    return pd.DataFrame([{"merge ratio": row["ratio"], "score": row["score"]} for row in sweep.csv_rows()])


def _sweep_level_rows(sweep: RatioSweep):
    """The CFG prediction's relative change over sigma, one line per ratio."""
    import pandas as pd
    return pd.DataFrame([{"log10 sigma": math.log10(sigma), "sigma": sigma, "metric": f"ratio {ratio:g}",
                          "value": value}
                         for ratio, result in zip(sweep.ratios, sweep.results)
                         for sigma, value in zip(result.sigmas, result.cfg_rel_diff)])


def _sweep_summary(sweep: RatioSweep, cached: list[bool]) -> str:
    scores = ", ".join(f"r={ratio:g}: {result.score:.4f}" for ratio, result in zip(sweep.ratios, sweep.results))
    calls = sum(result.unet_calls for result, hit in zip(sweep.results, cached) if not hit)
    return (_interrupted_note(sweep.interrupted, f"{len(sweep.ratios)} ratios probed, the last one in part") +
            f"**Score by merge ratio** {scores}  \n"
            f"Cost: {calls} UNet calls ({sum(cached)} of {len(cached)} ratios from the cache)")


def _merge_values(model_b, method, model_c, te_ratio, ratios) -> dict | None:
    """The merge section's values as the API's `merge` object, or None without a partner."""
    if model_b in ("", NO_MERGE, None):
        return None
    return {"merge_model": model_b, "merge_method": method,
            "merge_model_c": "" if model_c in ("", NO_MERGE, None) else model_c,
            "merge_te_ratio": te_ratio, "merge_ratio": ratios}


def _shelf_label(rank: int, title: str) -> str:
    return f"{rank}. {title}"  # the bar chart orders its bars by label: the rank keeps the table's order


def _shelf_bar_rows(shelf: ShelfProbe):
    import pandas as pd
    return pd.DataFrame([{"checkpoint": _shelf_label(rank, row.checkpoint), "score": row.score}
                         for rank, row in enumerate(shelf.ranked(), 1) if row.score is not None],
                        columns=["checkpoint", "score"])  # the columns even when no checkpoint has a score


BAR_PLOT = {"x": "checkpoint", "y": "score", "vertical": False, "tooltip": ["checkpoint", "score"],
            "title": "Score by checkpoint", "width": 600, "height": 240}


def _bars(rows, visible: bool = True):
    """An update of the bar chart. Gradio 3.41's BarPlot.update rebuilds the chart from every property it is given
    and counts its `vertical` default as one, so each update hands it the data and all its properties."""
    return gr.update(value=rows, visible=visible, **BAR_PLOT)


def _hidden_bars():
    import pandas as pd
    return _bars(pd.DataFrame({"checkpoint": [], "score": []}), visible=False)


def _shelf_level_rows(shelf: ShelfProbe):
    """The CFG prediction's relative change over sigma, one line per checkpoint."""
    import pandas as pd
    return pd.DataFrame([{"log10 sigma": math.log10(sigma), "sigma": sigma,
                          "metric": _shelf_label(rank, row.checkpoint), "value": value}
                         for rank, row in enumerate(shelf.ranked(), 1) if row.result is not None
                         for sigma, value in zip(row.result.sigmas, row.result.cfg_rel_diff)],
                        columns=["log10 sigma", "sigma", "metric", "value"])  # also when no level was probed


def _shelf_table(shelf: ShelfProbe):
    """Ranked by score, 4 significant digits (the CSV and JSON keep every digit)."""
    rows = [{key: significant(value) for key, value in row.items()} for row in shelf.csv_rows()]
    return _table(rows, SHELF_COLUMNS)


def _shelf_summary(shelf: ShelfProbe, model: str) -> str:
    probed = [row for row in shelf.rows if row.result is not None]
    failed = [row for row in shelf.rows if row.error is not None]
    lines = [f"**{len(probed)} of {len(shelf.rows) + len(shelf.not_probed)} checkpoints probed** "
             f"({sum(row.cached for row in shelf.rows)} from the cache); loaded again: {model}"]
    if shelf.interrupted:
        lines.append(f"Interrupted; not probed: {', '.join(shelf.not_probed) or 'none'}")
    lines += [f"{row.checkpoint}: {row.error}" for row in failed]
    return "  \n".join(html.escape(line) if index else line for index, line in enumerate(lines))


def run_checkpoints(checkpoints: CheckpointProbe, settings: ProbeSettings, names: list[str], progress) -> tuple:
    """The shelf probe for the tab: (summary, curves, bar chart, table, downloads)."""
    infos = checkpoints.resolve(names)

    def on_model(index: int, total: int, entry, eta) -> None:
        progress((index, total), desc=progress_text(index, total, entry.title, eta), unit="models")

    with webui_job("uncond_lab_probe"):
        shelf, memory = checkpoints.run(settings, infos, on_model=on_model)
        model = loaded_title()
    data = {"model": model, **shelf.to_dict(), "memory": memory}
    return (_shelf_summary(shelf, model), _shelf_level_rows(shelf),
            _bars(_shelf_bar_rows(shelf)), _shelf_table(shelf),
            _write_downloads("probe_checkpoints", shelf.to_csv(), data))


def build_probe_tab(service: ProbeService, checkpoints: CheckpointProbe) -> None:
    defaults = ProbeSettings()
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(DEFAULT_PROBE_PROMPT, label="Probe prompt (gives the guidance direction)", lines=2,
                                elem_id="uncond_lab_probe_prompt")
            seeds = gr.Textbox(", ".join(map(str, defaults.seeds)), label="Seeds", elem_id="uncond_lab_probe_seeds")
            levels = gr.Slider(2, 50, value=defaults.levels, step=1, label="Noise levels",
                               elem_id="uncond_lab_probe_levels")
            cfg_scale = gr.Slider(1.5, 30, value=defaults.cfg_scale, step=0.5, label="CFG scale",
                                  elem_id="uncond_lab_probe_cfg")
            size = gr.Slider(64, 2048, value=defaults.latent_shape[-1] * 8, step=64, label="Size (px, square)",
                             elem_id="uncond_lab_probe_size")
            reference = gr.Radio(["prediction", "zeros"], value=defaults.reference, label="Reference picture",
                                 elem_id="uncond_lab_probe_reference")
            with gr.Row():
                rf = gr.Radio(list(PREDICTIONS.values()), value=PREDICTIONS[defaults.rf], label="Prediction",
                              elem_id="uncond_lab_probe_rf")
                shift = gr.Number(defaults.shift, label="RF shift", elem_id="uncond_lab_probe_shift")
            shelf_models = gr.Dropdown(checkpoint_choices()[1:], value=[], multiselect=True,
                                       label="Checkpoints to probe (the loaded model is always one row)",
                                       elem_id="uncond_lab_probe_checkpoints")
            with gr.Accordion("Probe a merge (the loaded model is A)", open=False,
                              elem_id="uncond_lab_probe_merge"):
                model_b = gr.Dropdown(checkpoint_choices(), value=NO_MERGE, label="Merge partner B",
                                      elem_id="uncond_lab_probe_merge_model")
                method = gr.Radio(list(MERGE_METHOD_LABELS.values()), value=MERGE_METHOD_LABELS["weighted_sum"],
                                  label="Method", elem_id="uncond_lab_probe_merge_method")
                model_c = gr.Dropdown(checkpoint_choices(), value=NO_MERGE, label="Model C (add difference)",
                                      elem_id="uncond_lab_probe_merge_model_c")
                with gr.Row():
                    ratios = gr.Textbox("0-1 [5]", label="Merge ratios (one, or a sweep: 0-1 [5], 0, 0.3, 0.5)",
                                        elem_id="uncond_lab_probe_merge_ratios")
                    te_ratio = gr.Dropdown(TE_RATIO_CHOICES, value=TE_FOLLOWS, allow_custom_value=True,
                                           label="Text-encoder ratio", elem_id="uncond_lab_probe_merge_te_ratio")
                refresh = gr.Button("Refresh the checkpoint lists", elem_id="uncond_lab_probe_merge_refresh")
            with gr.Row():
                run = gr.Button("Probe", variant="primary", elem_id="uncond_lab_probe_run")
                interrupt = gr.Button("Interrupt", elem_id="uncond_lab_probe_interrupt")
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="uncond_lab_probe_summary")
            plot = gr.LinePlot(x="log10 sigma", y="value", color="metric", tooltip=["sigma", "metric", "value"],
                               title="Zero vs null uncond over the noise levels", width=600, height=320,
                               elem_id="uncond_lab_probe_plot")
            sweep_plot = gr.LinePlot(x="merge ratio", y="score", tooltip=["merge ratio", "score"],
                                     title="Score by merge ratio", width=600, height=240, visible=False,
                                     elem_id="uncond_lab_probe_sweep_plot")
            shelf_plot = gr.BarPlot(visible=False, elem_id="uncond_lab_probe_checkpoints_plot", **BAR_PLOT)
            table = gr.Dataframe(headers=list(LEVEL_COLUMNS), interactive=False, elem_id="uncond_lab_probe_table")
            files = gr.File(label="CSV / JSON", file_count="multiple", interactive=False,
                            elem_id="uncond_lab_probe_files")
            error = gr.HTML(elem_id="uncond_lab_probe_error")

    def run_probe(prompt_text, seeds_text, level_count, cfg, pixels, reference_name, *merge_controls,
                  flow=(None, 3.0)):
        try:
            settings = _settings(prompt_text, seeds_text, level_count, cfg, pixels, reference_name, *flow)
            merge, sweep_ratios = merge_request(_merge_values(*merge_controls))
            with webui_job("uncond_lab_probe"):
                if sweep_ratios is not None and len(sweep_ratios) > 1:
                    sweep, cached = service.sweep(settings, merge, sweep_ratios)
                else:
                    sweep, (result, cached) = None, service.run(settings, merge)
        except ProbeError as problem:
            return (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                    f"<p class='error'>{html.escape(str(problem))}</p>")
        if sweep is not None:
            return (_sweep_summary(sweep, cached), _sweep_level_rows(sweep),
                    gr.update(value=_sweep_plot_rows(sweep), visible=True), _table(sweep.csv_rows(), SWEEP_COLUMNS),
                    _write_downloads("probe_sweep", sweep.to_csv(), sweep_json(sweep, cached, merge)), "")
        return (_summary(result, cached), _plot_rows(result), gr.update(visible=False),
                _table(result.csv_rows(), LEVEL_COLUMNS),
                _write_downloads("probe", result.to_csv(), result_json(result, cached, merge)), "")

    def run_any(prompt_text, seeds_text, level_count, cfg, pixels, reference_name, model_b_name, *rest,
                progress=gr.Progress()):
        """Run: several checkpoints when some are picked, else the probe of the loaded model (or its merge)."""
        *merge_controls, names, prediction, flow_shift = rest
        if not names:
            return (*run_probe(prompt_text, seeds_text, level_count, cfg, pixels, reference_name, model_b_name,
                               *merge_controls, flow=(prediction, flow_shift)), _hidden_bars())
        try:
            if model_b_name not in ("", NO_MERGE, None):
                raise ProbeError("Uncond Lab probe: probe several checkpoints or a merge, not both: set the merge "
                                 "partner to None or clear the checkpoint list")
            settings = _settings(prompt_text, seeds_text, level_count, cfg, pixels, reference_name, prediction,
                                 flow_shift)
            summary_text, curves, bars, rows, downloads = run_checkpoints(checkpoints, settings, names, progress)
        except ProbeError as problem:
            return (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                    f"<p class='error'>{html.escape(str(problem))}</p>", _hidden_bars())
        return summary_text, curves, gr.update(visible=False), rows, downloads, "", bars

    run.click(run_any, inputs=[prompt, seeds, levels, cfg_scale, size, reference, model_b, method, model_c,
                               te_ratio, ratios, shelf_models, rf, shift],
              outputs=[summary, plot, sweep_plot, table, files, error, shelf_plot])
    interrupt.click(lambda: shared.state.interrupt(), inputs=[], outputs=[])
    refresh.click(lambda: [gr.update(choices=checkpoint_choices())] * 2 + [gr.update(choices=checkpoint_choices()[1:])],
                  inputs=[], outputs=[model_b, model_c, shelf_models])
