// Uncond Lab tab: the WebUI's progress bar (cell count, ETA) for the sweep and for "Save this merge".
// Same pattern as the WebUI's own submit() (javascript/ui.js): a task id for the progress API as first argument.
function uncondLabSweepSubmit() {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById("uncond_lab_tab_gallery_container"),
        gradioApp().getElementById("uncond_lab_tab_gallery"), function() {});
    var args = Array.from(arguments);
    args[0] = id;
    return args;
}
