"""Uncond Lab's AlwaysOn script: reads the UI/API args and hands every hook to lib_ext."""
from lib_ext.hosts import HOST, SUPPORTED

if not SUPPORTED:
    print(HOST.unsupported_message(), flush=True)  # which WebUI this is and what is supported; nothing else loads
else:
    from modules import script_callbacks, scripts

    from lib_ext.hosts import comfy_bridge, common, compare_grid, ui

    class UncondLabScript(scripts.Script):
        def title(self):
            return "Uncond Lab"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            accordion = ui.UncondAccordion(self.elem_id)
            controls = accordion.build()
            self.infotext_fields = accordion.infotext_fields()
            self.paste_field_names = accordion.paste_field_names()
            return controls

        def before_process(self, p, *args):
            common.before_generation(p, args)

        def process(self, p, *args):
            common.start_run(p, args)

        def process_batch(self, p, *args, **kwargs):
            common.begin_batch(p)

        def process_before_every_sampling(self, p, *args, **kwargs):
            common.begin_pass(p, x=kwargs.get("x"), noise=kwargs.get("noise"))

        def postprocess_batch(self, p, *args, **kwargs):
            common.write_stats(p)

        def postprocess(self, p, processed, *args):
            run = common.current_run(p)
            common.end_run(p)
            if run is not None and run.settings.compare and not compare_grid.is_variant(p) \
                    and not getattr(p, "_ad_inner", False):  # not for each face ADetailer inpaints
                compare_grid.run_compare(p, processed, run.settings)


    common.register_rf_scheduler()  # at import: the UI builds its 'Schedule type' dropdowns from the list after this
    if common.xyz_axes_at_import():  # --nowebui: the API's axis list is built before on_before_ui
        common.register_xyz_axes(common.all_axes)

    script_callbacks.on_cfg_denoiser(common.on_cfg_denoiser, name="uncond_lab")
    script_callbacks.on_ui_settings(common.add_options, name="uncond_lab_options")
    script_callbacks.on_before_ui(lambda: common.register_xyz_axes(common.all_axes), name="uncond_lab_xyz")
    script_callbacks.on_model_loaded(common.merge_model_loaded, name="uncond_lab_merge")
    script_callbacks.on_script_unloaded(common.release_merge, name="uncond_lab_merge")
    script_callbacks.on_script_unloaded(common.unregister_rf_scheduler, name="uncond_lab_rf_scheduler")
    # ComfyUI's PNGs in PNG Info; optionally ComfyUI's graph in the WebUI's PNGs (lib_ext/hosts/comfy_bridge.py).
    comfy_bridge.install_png_info_reader()
    script_callbacks.on_script_unloaded(comfy_bridge.remove_png_info_reader, name="uncond_lab_png_info")
    script_callbacks.on_ui_settings(comfy_bridge.add_options, name="uncond_lab_comfy_options")
    script_callbacks.on_before_image_saved(comfy_bridge.add_comfy_chunks, name="uncond_lab_comfy_chunks")
