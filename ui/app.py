"""The Blocks layout: a concept-erasure tab and a classifier-unlearning tab.

    demo = build_app(model=None)     # None: the bundled toy-world model
    demo.queue(default_concurrency_limit=1).launch()

All heavy events share the concurrency group "engine" (one job at a time across every tab);
"Cancel" runs outside the queue so it can reach a running job.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui.diffusion import METRIC_COLUMNS, DiffusionCallbacks
from ui.load_file import LoadFileCallbacks
from ui.robustness import UA_COLUMNS, RobustnessCallbacks, attack_label
from ui.settings import all_settings, make_widget
from ui.state import ModelCache, Session, close_session

ENGINE = dict(concurrency_id="engine", concurrency_limit=1)

CSS = """
.pixelated img { image-rendering: pixelated; }
#erase-status { min-height: 2em; }
"""

HELP = """# erase: make a model forget
Load a model, pick concepts and a method, erase, and compare the same prompts and seeds before and
after. The base model is never modified: each tab keeps only its own change (a delta) and swaps it
in to render. Export the delta or the whole erased model when you like the result."""


def build_app(model: str | None = None, *, config: str | None = None, cache: ModelCache | None = None, work_root: str | Path | None = None,
              classifier: bool = True, judge_seeds=None, judge_steps: int | None = None) -> gr.Blocks:
    """Build the app; ``model`` (and ``config``, for single files) pre-fill the model box; it loads when a tab opens.

    ``judge_seeds`` / ``judge_steps``: how the bundled model's judge scores are computed (default: one seed,
    the judge's measured sampling steps).
    """
    from erase import methods
    from erase.lora import DEFAULT_RANK

    cache = cache or ModelCache()
    method_names = methods.available()
    settings = all_settings(method_names)
    judge = {"judge_seeds": judge_seeds} if judge_seeds else {}
    cb = DiffusionCallbacks(cache, settings, Path(work_root) if work_root else None, judge_steps=judge_steps, **judge)
    rb = RobustnessCallbacks(cb)
    lf = LoadFileCallbacks(cb)

    with gr.Blocks(title="erase", analytics_enabled=False) as demo:  # a local tool: no telemetry
        session = gr.State(Session(), delete_callback=close_session)
        gr.Markdown(HELP)
        with gr.Tab("Concept erasure (diffusion)", id="diffusion"):
            with gr.Row(equal_height=False):
                model_box = gr.Textbox(
                    value=model or "", label="Model", scale=4, elem_id="model-box",
                    placeholder="empty: the bundled toy-world model · a diffusers folder · a .safetensors file · a Hub id",
                )
                load_btn = gr.Button("Load model", scale=1, elem_id="load-btn", size="md")
            with gr.Accordion("Single-file checkpoint options", open=False):
                config_box = gr.Textbox(
                    value=config or "", label="Config for a .safetensors checkpoint", elem_id="config-box",
                    placeholder="a local diffusers folder (or Hub id) of the same architecture; needed offline",
                )
            model_status = gr.Markdown("No model loaded yet.", elem_id="model-status")

            with gr.Row():
                with gr.Column(scale=2):
                    concepts = gr.Dropdown(
                        choices=[], value=[], multiselect=True, allow_custom_value=True, label="Concepts to forget",
                        info="type a concept and press Enter (several allowed); the bundled model's concepts are suggested",
                        elem_id="concepts",
                    )
                    method = gr.Radio(method_names, value=methods.RECOMMENDED if methods.RECOMMENDED in method_names else method_names[0],
                                      label="Method", elem_id="method")
                    summaries = {m: methods.get(m).summary for m in method_names}
                    method_info = gr.Markdown(summaries.get(method.value, ""))
                with gr.Column(scale=3):
                    widgets = []
                    groups = {}
                    for m in method_names:
                        own = [s for s in settings if s.method == m]
                        with gr.Column(visible=(m == method.value), elem_id=f"settings-{m}") as group:
                            gr.Markdown(f"**{m} settings** (papers' defaults; toy-world presets on the bundled model)")
                            main = [s for s in own if s.main]
                            advanced = [s for s in own if not s.main]
                            by_name = {}
                            with gr.Row():
                                for s in main:
                                    by_name[s.name] = make_widget(s)
                            with gr.Accordion("Advanced settings", open=False, elem_id=f"advanced-{m}"):
                                for s in advanced:
                                    by_name[s.name] = make_widget(s)
                            widgets += [by_name[s.name] for s in own]
                        groups[m] = group
            with gr.Row():
                erase_btn = gr.Button("Erase", variant="primary", elem_id="erase-btn")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
            with gr.Accordion("Or load an erasure file (delta, UNet state dict or LoRA)", open=False, elem_id="load-file"):
                gr.Markdown("A delta or LoRA exported here, a LoRA in the kohya or diffusers layout, or the partial UNet "
                            "state dict ESD's and UCE's own scripts save (.safetensors). It is checked against the loaded "
                            "model and then compared, scored and attacked like a fresh erasure; files that do not name their "
                            "concepts take them from 'Concepts to forget'.")
                with gr.Row():
                    erasure_file = gr.File(label="upload", file_types=[".safetensors"], type="filepath", elem_id="erasure-file")
                    erasure_path = gr.Textbox(label="or a path on this machine", elem_id="erasure-path",
                                              placeholder="runs/no-star/lora/erase-star-uce.safetensors")
                load_file_btn = gr.Button("Load onto the model", elem_id="load-file-btn")
            erase_status = gr.Markdown("", elem_id="erase-status")
            with gr.Accordion("Run statistics", open=False):
                stats = gr.JSON(label="stats")

            gr.Markdown("## Compare: same prompts, same seeds")
            with gr.Row():
                n_prompts = gr.Number(3, precision=0, minimum=1, maximum=16, label="Prompts per group", elem_id="n-prompts")
                seeds = gr.Textbox("0, 1", label="Seeds", elem_id="seeds")
                steps = gr.Number(25, precision=0, minimum=1, label="Sampling steps", elem_id="sample-steps")
                guidance = gr.Number(7.5, label="Guidance scale", elem_id="guidance")
                score = gr.Checkbox(True, label="Score with the judge (bundled model)", elem_id="score")
            with gr.Row():
                compare_btn = gr.Button("Render comparison", elem_id="compare-btn")
                heat_btn = gr.Button("Show heat maps", elem_id="heat-btn")
            gallery_kw = dict(columns=4, height=260, format="png", object_fit="contain", elem_classes=["pixelated"])
            gr.Markdown("**Prompts naming the concept** (should change)")
            with gr.Row():
                concept_before = gr.Gallery(label="original", elem_id="concept-before", **gallery_kw)
                concept_after = gr.Gallery(label="erased", elem_id="concept-after", **gallery_kw)
            gr.Markdown("**Unrelated prompts** (should stay)")
            with gr.Row():
                kept_before = gr.Gallery(label="original", elem_id="kept-before", **gallery_kw)
                kept_after = gr.Gallery(label="erased", elem_id="kept-after", **gallery_kw)
            with gr.Row():
                slider = gr.ImageSlider(label="first concept prompt: original | erased", type="pil", format="png", height=320,
                                        elem_id="slider", elem_classes=["pixelated"])
                with gr.Column():
                    metrics = gr.Dataframe(headers=METRIC_COLUMNS, label="Judge scores (this run)", elem_id="metrics",
                                           interactive=False)
                    metrics_note = gr.Markdown("")
                    score_btn = gr.Button("Score now", size="sm", elem_id="score-btn")
            gr.Markdown("## Where the concept lives: cross-attention to its tokens (one colour scale for before and after)")
            heat = gr.Gallery(label="attention heat maps", columns=4, height=300, format="png",
                              elem_id="heatmaps", elem_classes=["pixelated"])

            with gr.Accordion("Robustness: attack the erasure", open=False, elem_id="robustness"):
                gr.Markdown("Try to bring an erased concept back: textual inversion, a discrete prompt attack, and "
                            "benign fine-tuning (relapse), each against this tab's erasure. The original, erased and "
                            "attacked galleries use the same prompts and seeds (sampling steps and guidance as above); "
                            "on the bundled model the judge gives the UA after each attack. Each attack takes about a "
                            "minute on a CPU on the bundled model (toy-world presets).")
                with gr.Row():
                    attack_choice = gr.CheckboxGroup([(attack_label(a), a) for a in rb.attacks], value=list(rb.attacks),
                                                     label="Attacks", elem_id="attacks")
                    # custom values allowed: the choices change per session (rb.run checks the value against the erasure)
                    attack_concept = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Erased concept to attack",
                                                 info="a concept of the current erasure (empty: its first)", elem_id="attack-concept")
                    attack_seeds = gr.Textbox("0", label="Scoring seeds", elem_id="attack-seeds")
                    attack_restarts = gr.Number(1, precision=0, minimum=1, maximum=10, label="Restarts",
                                                info="bundled model: run each attack N times, keep the attacker's best run",
                                                elem_id="attack-restarts")
                attack_settings = gr.Textbox("", label="Attack settings (optional)", elem_id="attack-settings",
                                             placeholder="attack.key=value, e.g. ti.steps=300, relapse.lr=1e-4 "
                                                         "(defaults: toy-world presets on the bundled model, else the papers')")
                with gr.Row():
                    attack_btn = gr.Button("Run attacks", variant="primary", elem_id="attack-btn")
                    attack_cancel_btn = gr.Button("Cancel", variant="stop", elem_id="attack-cancel-btn")
                attack_status = gr.Markdown("", elem_id="attack-status")
                attack_table = gr.Dataframe(headers=UA_COLUMNS, label="UA before and after each attack (toy world: judge)",
                                            interactive=False, elem_id="attack-table")
                with gr.Row():
                    attack_before = gr.Gallery(label="original", elem_id="attack-before", **gallery_kw)
                    attack_after = gr.Gallery(label="erased", elem_id="attack-after", **gallery_kw)
                attack_galleries = []
                with gr.Row():
                    for a in rb.attacks:
                        attack_galleries.append(gr.Gallery(label=f"after {attack_label(a)}", elem_id=f"attack-{a}", **gallery_kw))
                with gr.Accordion("Attack details", open=False):
                    attack_details = gr.JSON(label="settings, statistics and what each attack found")

            gr.Markdown("## Export")
            with gr.Row():
                delta_btn = gr.Button("Export delta (.safetensors)", elem_id="delta-btn")
                folder_btn = gr.Button("Export diffusers folder (.zip)", elem_id="folder-btn")
                with gr.Column():
                    lora_rank = gr.Textbox(str(DEFAULT_RANK), label="LoRA rank (a number or 'full')", elem_id="lora-rank")
                    lora_btn = gr.Button("Export LoRA (A1111 / ComfyUI and diffusers)", elem_id="lora-btn")
            with gr.Row():
                delta_file = gr.File(label="delta", elem_id="delta-file")
                folder_file = gr.File(label="diffusers folder", elem_id="folder-file")
                lora_files = gr.File(label="LoRA: kohya file, diffusers file, model card", file_count="multiple", elem_id="lora-files")
            gr.Markdown("A delta or LoRA shows which weights the erasure changed, which published work uses to bring "
                        "concepts back: share the merged model (the diffusers folder) when that matters.")

        if classifier:
            with gr.Tab("Classifier unlearning (digits)", id="classifier"):
                from ui.classifier_tab import build_classifier_tab

                build_classifier_tab(session)

        # ---- events ----
        def on_method(m):
            return [gr.update(visible=(k == m)) for k in groups] + [summaries.get(m, "")]

        method.change(on_method, method, [*groups.values(), method_info], queue=False, api_name="show_method", api_visibility="private")

        load_outputs = [model_status, concepts, steps, guidance, *widgets]
        load_ev = dict(fn=cb.load_model, inputs=[model_box, session, config_box], outputs=load_outputs, **ENGINE)
        # a new model drops the erasure: the panel's concept list follows the session's erasure
        attack_concepts = dict(fn=rb.concept_choices, inputs=session, outputs=attack_concept, queue=False, api_visibility="private")
        load_btn.click(api_name="load_model", **load_ev).then(**attack_concepts)
        model_box.submit(api_name="load_model_submit", api_visibility="private", **load_ev).then(**attack_concepts)
        demo.load(api_name="load_model_on_open", api_visibility="private", **load_ev).then(**attack_concepts)

        compare_inputs = [session, n_prompts, seeds, steps, guidance]
        compare_outputs = [concept_before, concept_after, kept_before, kept_after, slider]
        heat_inputs = [session, seeds, steps]
        private = dict(api_visibility="private", **ENGINE)
        # erase -> compare -> heat maps -> judge scores: images appear as soon as they exist
        erased = erase_btn.click(cb.erase, [session, concepts, method, *widgets], [erase_status, stats],
                                 api_name="erase", **ENGINE)
        erased.success(cb.compare, compare_inputs, compare_outputs, api_name="compare_after_erase", **private).success(
            cb.heatmaps, heat_inputs, heat, api_name="heatmaps_after_erase", **private).success(
            cb.scores, [session, score], [metrics, metrics_note], api_name="scores_after_erase", **private)
        erased.success(**attack_concepts)
        loaded = load_file_btn.click(lf.load, [session, erasure_file, erasure_path, concepts], [erase_status, stats],
                                     api_name="load_erasure_file", **ENGINE)
        loaded.success(cb.compare, compare_inputs, compare_outputs, api_name="compare_after_load", **private).success(
            cb.heatmaps, heat_inputs, heat, api_name="heatmaps_after_load", **private).success(
            cb.scores, [session, score], [metrics, metrics_note], api_name="scores_after_load", **private)
        loaded.success(**attack_concepts)
        cancel_btn.click(cb.cancel, session, erase_status, queue=False, api_name="cancel")
        attack_outputs = [attack_status, attack_table, attack_before, attack_after, *attack_galleries, attack_details]
        attack_btn.click(rb.run, [session, attack_choice, attack_concept, attack_seeds, attack_settings, steps, guidance,
                                  attack_restarts],
                         attack_outputs, api_name="run_attacks", **ENGINE)
        attack_cancel_btn.click(rb.cancel, session, attack_status, queue=False, api_name="cancel_attacks")
        compare_btn.click(cb.compare, compare_inputs, compare_outputs, api_name="compare", **ENGINE)
        score_btn.click(cb.score_now, session, [metrics, metrics_note], api_name="scores", **ENGINE)
        heat_btn.click(cb.heatmaps, heat_inputs, heat, api_name="heatmaps", **ENGINE)
        delta_btn.click(cb.export_delta, session, delta_file, api_name="export_delta", **ENGINE)
        folder_btn.click(cb.export_folder, session, folder_file, api_name="export_folder", **ENGINE)
        lora_btn.click(cb.export_lora, [session, lora_rank], lora_files, api_name="export_lora", **ENGINE)

    demo.erase_callbacks = cb  # for tests and embedding
    demo.robustness_callbacks = rb
    demo.load_file_callbacks = lf
    demo.erase_settings = settings
    demo.erase_cache = cache
    return demo


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kw):
    demo.queue(default_concurrency_limit=1)
    return demo.launch(server_name=host, server_port=port, share=share, css=CSS, **kw)
