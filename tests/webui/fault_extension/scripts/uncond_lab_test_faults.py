"""Test-only WebUI extension: makes a generation fail or be interrupted in the middle of sampling.

The integration tests install it beside Uncond Lab (never in a user's WebUI) to check that a generation that
breaks mid-sampling leaves nothing behind. API: alwayson_scripts {"Uncond Lab test faults": {"args": [
{"fail_at_call": N}]}} makes the UNet fail at the N-th denoiser call; {"interrupt_at_call": N} interrupts there.
Each generation counts from 1; "fail_at_job_call" / "interrupt_at_job_call" count over all the generations of one
request instead (X/Y/Z cells share the request's args), so that only one cell of a plot breaks.
{"probe": true} writes what the previous generations left on the model into the infotext ("Uncond Lab probe"):
instance attributes a sampling patch would leave (create_denoiser, add_noise_to_latent, model_sampling) and, in
reForge, the class of the UNet's current model_sampling, read before any script of this generation runs.

The WebUIs swallow exceptions raised in callbacks, so the failure is planted in the model call itself: a cond
with a wrong width, which the UNet's cross-attention refuses.
"""
import gradio as gr
from modules import script_callbacks, scripts, shared


class UncondLabTestFaults(scripts.Script):
    def title(self):
        return "Uncond Lab test faults"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        # One hidden control, so the API has a slot for the plan dict.
        return [gr.Textbox(visible=False, value="")]

    def before_process(self, p, *args):
        plan = args[0] if args and isinstance(args[0], dict) else {}
        if plan.get("probe"):
            p.extra_generation_params["Uncond Lab probe"] = probe(p.sd_model)

    def process(self, p, *args):
        plan = args[0] if args and isinstance(args[0], dict) else {}
        p.uncond_lab_test_faults = {"calls": 0, "job": plan, **plan} if plan else None


def probe(sd_model) -> str:
    """Leftovers on the model object, as 'name=value' items joined by ';' (no ',' or ':' for the infotext)."""
    own = vars(sd_model)
    items = [f"{name}={name in own or name in own.get('_modules', {})}"
             for name in ("create_denoiser", "add_noise_to_latent", "model_sampling")]
    forge_objects = getattr(sd_model, "forge_objects", None)
    if forge_objects is not None:  # reForge's model_sampling; Forge Neo calls it the predictor
        model = forge_objects.unet.model
        sampling = getattr(model, "model_sampling", None) or getattr(model, "predictor", None)
        items.append(f"unet_model_sampling={type(sampling).__name__}")
    return ";".join(items)


def on_cfg_denoiser(params):
    plan = getattr(getattr(params.denoiser, "p", None), "uncond_lab_test_faults", None)
    if not plan:
        return
    plan["calls"] += 1
    job = plan["job"]
    job["job_calls"] = job.get("job_calls", 0) + 1
    if plan["calls"] == plan.get("fail_at_call") or job["job_calls"] == plan.get("fail_at_job_call"):
        cond = params.text_cond
        if isinstance(cond, dict):
            cond["crossattn"] = cond["crossattn"][..., :1]
        else:
            params.text_cond = cond[..., :1]
    if plan["calls"] == plan.get("interrupt_at_call") or job["job_calls"] == plan.get("interrupt_at_job_call"):
        shared.state.interrupt()


script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="uncond_lab_test_faults")
