"""The classifier-unlearning tab: pick a method and a forget set, run, compare with retraining.

A thin layer over ``erase.classifier`` (``METHODS``, ``make_config``) and
``erase.classifier.experiment`` (``prepare_scenario``, ``run_torch_method``, ``run_sisa``,
``run_pru``). The original model and the retrained reference of a scenario (dataset, forget set,
seed) are trained once and reused by later runs on the same scenario.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

import gradio as gr

from ui.diffusion import user_errors
from ui.state import ENGINE_LOCK

PLOT_METRICS = ("UA", "RA", "TA", "MIA")


def _fmt(v):
    if isinstance(v, float):
        return None if v != v else float(f"{v:.4g}")
    return v


def method_help(method: str) -> str:
    from erase.classifier import get_method

    with user_errors("describe the method"):
        spec = get_method(method)
    lines = [f"**{spec.name}**: {spec.summary}. Options (`key=value`, one per line; defaults shown):"]
    for f in dataclasses.fields(spec.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else "(default recipe)"
        lines.append(f"- `{f.name}` = `{default}`: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_options(text: str) -> dict:
    import yaml

    out = {}
    for raw in str(text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise gr.Error(f"option {line!r} is not key=value", title="Bad options", print_exception=False)
        key, value = line.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            out[key.strip()] = value.strip()
    return out


class ClassifierCallbacks:
    def __init__(self, max_scenarios: int = 3):
        self._scenarios: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.max_scenarios = max_scenarios

    def scenario(self, dataset: str, forget: str, seed: int):
        from erase.classifier.experiment import prepare_scenario

        key = (dataset, forget.strip(), int(seed))
        with self._lock:
            if key not in self._scenarios:
                self._scenarios[key] = prepare_scenario(dataset, forget.strip(), int(seed))
                while len(self._scenarios) > self.max_scenarios:
                    self._scenarios.popitem(last=False)
            self._scenarios.move_to_end(key)
            return self._scenarios[key]

    def run(self, method: str, dataset: str, forget: str, seed, options: str, progress=gr.Progress()):
        """-> table rows, plot data frame, summary markdown, stats dict."""
        import pandas as pd

        from erase.classifier import get_method, make_config
        from erase.classifier.experiment import COLUMNS, run_pru, run_sisa, run_torch_method

        seed = int(seed or 0)
        with user_errors("unlearn"), ENGINE_LOCK:
            spec = get_method(method)
            if not str(forget or "").strip():
                from erase.errors import EraseError

                raise EraseError("give a forget set: class:C, random:FRACTION or k:COUNT")
            overrides = parse_options(options)
            config = make_config(method, overrides) if overrides else None
            if spec.model_kind == "linear":
                progress(None, desc="fitting the linear model, PRU, Newton and exact retraining")
                result = run_pru(dataset, forget, seed, config)
            else:
                progress(None, desc="training the original model and the retrained reference (once per scenario)")
                sc = self.scenario(dataset, forget, seed)
                progress(None, desc=f"unlearning with {method}")
                result = run_sisa(sc, config) if spec.model_kind == "sisa" else run_torch_method(sc, method, config)
        cols = [c for c in COLUMNS if any(c in r for r in result.rows.values())]
        table = pd.DataFrame([[name, *(_fmt(r.get(c)) for c in cols)] for name, r in result.rows.items()],
                             columns=["model", *cols])
        metrics = [m for m in PLOT_METRICS if m in cols] or [c for c in cols if c not in ("seconds", "speedup")]
        plot = pd.DataFrame(
            [{"metric": m, "model": name, "bar": f"{m} · {name}", "value": float(r[m])}
             for m in metrics for name, r in result.rows.items() if m in r and r[m] == r[m]]
        )
        summary = (f"**{result.method}** on **{result.dataset}**, forget `{result.forget}` "
                   f"({result.n_forget} training samples), seed {result.seed}. "
                   "Closer to the `retrain` row is better"
                   + (" (AvgGap: mean |difference| over UA, RA, TA, MIA)." if "AvgGap" in cols else
                      " (L2_to_retrain: distance to the retrained weights relative to the original's; FIT: weight"
                      " left on a feature only the deleted samples have, 0 = forgotten)."))
        stats = {k: _fmt(v) if isinstance(v, float) else v for k, v in result.stats.items()
                 if isinstance(v, (int, float, str, bool, dict, list))}
        # bars grouped by metric, models in the table's order (Vega would sort them alphabetically)
        return table, gr.BarPlot(value=plot, sort=list(plot["bar"]) if len(plot) else None), summary, stats


def build_classifier_tab(session=None) -> ClassifierCallbacks:
    """Lay out the tab inside the current Blocks/Tab context and wire its events."""
    from erase.classifier import DATASETS, METHODS

    cb = ClassifierCallbacks()
    methods = list(METHODS)
    gr.Markdown("Unlearn part of a digits classifier's training set and compare with retraining from scratch "
                "on the rest (the gold standard).")
    with gr.Row():
        with gr.Column(scale=2):
            method = gr.Dropdown(methods, value="boundary-shrink" if "boundary-shrink" in methods else methods[0],
                                 label="Method", elem_id="clf-method")
            dataset = gr.Dropdown(list(DATASETS), value="digits" if "digits" in DATASETS else DATASETS[0],
                                  label="Dataset", elem_id="clf-dataset")
            forget = gr.Textbox("class:3", label="Forget set", elem_id="clf-forget",
                                info="class:C (a whole class) · random:FRACTION · k:COUNT")
            seed = gr.Number(0, precision=0, label="Seed", elem_id="clf-seed")
            run_btn = gr.Button("Unlearn", variant="primary", elem_id="clf-run")
        with gr.Column(scale=3):
            with gr.Accordion("Method options", open=False):
                help_md = gr.Markdown(method_help(method.value))
                options = gr.Textbox("", lines=3, label="Options (key=value per line; empty: the paper's defaults)",
                                     elem_id="clf-options")
    summary = gr.Markdown("", elem_id="clf-summary")
    table = gr.Dataframe(label="Metrics (%) against retraining", interactive=False, elem_id="clf-table")
    plot = gr.BarPlot(x="bar", y="value", color="model", label="UA / RA / TA / MIA per model", x_title="metric · model",
                      y_title="%", x_label_angle=-40, elem_id="clf-plot", height=320)
    with gr.Accordion("Run statistics", open=False):
        stats = gr.JSON()
    method.change(method_help, method, help_md, queue=False, api_name="clf_method_help", api_visibility="private")
    run_btn.click(cb.run, [method, dataset, forget, seed, options], [table, plot, summary, stats],
                  api_name="unlearn_classifier", concurrency_id="engine", concurrency_limit=1)
    return cb
