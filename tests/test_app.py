"""The web app end to end through gradio_client: load, erase, compare, export, errors, sessions.

Runs on the bundled toy-world model when its weights are present, else on a tiny random
pipeline folder (printed at the start, never skipped).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


from conftest import bundled_available, free_port  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """'' (the bundled model) when its weights exist, else a tiny random pipeline folder."""
    if bundled_available():
        print("\n[test_app] using the bundled toy-world model")
        return ""
    from erase.synthetic import save_pipeline_folder

    folder = tmp_path_factory.mktemp("tinypipe") / "pipe"
    save_pipeline_folder("tiny", folder)
    print(f"\n[test_app] bundled toy-world weights absent: using a tiny random pipeline at {folder}")
    return str(folder)


@pytest.fixture(scope="module")
def concept(model) -> str:
    return "circle" if model == "" else "van gogh"


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    from ui.app import CSS, build_app

    # judge_steps=2: the judge's scores (108 prompts per model) in seconds instead of minutes on a CPU
    demo = build_app(model, work_root=tmp_path_factory.mktemp("exports"), judge_steps=2)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    yield demo, url
    demo.close()


def client_for(url: str) -> Client:
    return Client(url, verbose=False, download_files=True)


def settings_values(demo, load_output, method: str, **overrides) -> list:
    """The settings widgets' values as /load_model returned them, with ``overrides`` for ``method``."""
    values = list(load_output[4:])
    names = [(s.method, s.name) for s in demo.erase_settings]
    assert len(values) == len(names)
    for key, value in overrides.items():
        values[names.index((method, key))] = value
    return values


def fast_fmn(model: str) -> dict:
    """FMN settings that run in seconds on CPU and change the images visibly."""
    return dict(steps=3, lr=1e-2 if model else 1e-4, n_forget_images=2, generation_steps=4)


def images(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"]).convert("RGB"), dtype=np.int16) for item in gallery]


@pytest.fixture(scope="module")
def erased(server, model, concept):
    """One session that loaded the model and erased the concept; its client and outputs."""
    demo, url = server
    client = client_for(url)
    loaded = client.predict(model, api_name="/load_model")
    values = settings_values(demo, loaded, "fmn", **fast_fmn(model))
    status, stats = client.predict([concept], "fmn", *values, api_name="/erase")
    return client, loaded, status, stats


def test_load_reports_model_and_defaults(server, erased, model):
    demo, _ = server
    _, loaded, _, _ = erased
    status, concepts, steps, guidance = loaded[:4]
    assert "Model:" in status and ("bundled" in status if model == "" else model in status)
    assert steps >= 1 and guidance >= 0
    if model == "":
        choices = {c[0] if isinstance(c, (list, tuple)) else c for c in concepts["choices"]}
        assert "circle" in choices  # the bundled model's concepts are suggested
    # the settings shown are what the engine would use on this model (presets on the bundled one)
    from erase.api import config_for

    pipe = demo.erase_cache.get(model)
    values = dict(zip([(s.method, s.name) for s in demo.erase_settings], loaded[4:]))
    assert values[("fmn", "steps")] == config_for(pipe, "fmn").steps
    assert values[("salun", "lr")] == pytest.approx(config_for(pipe, "salun").lr)


def test_erase_compare_export_and_reload(server, erased, model, concept, tmp_path):
    demo, _ = server
    client, _, status, stats = erased
    assert "Erased" in status and concept in status
    assert stats["changed_tensors"] > 0

    seeds, steps, guidance = "0, 1", 4, 7.5
    out = client.predict(2, seeds, steps, guidance, api_name="/compare")
    concept_before, concept_after, kept_before, kept_after, slider = out
    assert len(concept_before) == len(concept_after) == 4  # 2 prompts x 2 seeds
    assert len(kept_before) == len(kept_after) == 4
    assert [i["caption"] for i in concept_before] == [i["caption"] for i in concept_after]
    b, a = images(concept_before), images(concept_after)
    assert max(np.abs(x - y).max() for x, y in zip(b, a)) >= 3, "erasure changed none of the concept images"
    assert len(slider) == 2
    metrics, note = client.predict(api_name="/scores")
    if model == "":
        rows = metrics["data"]
        assert {r[0] for r in rows} == {"original", "erased"}
        for r in rows:
            for v in r[3:6]:  # UA, IRA, CRA
                assert 0.0 <= v <= 100.0
    else:
        assert "bundled" in note

    heat = client.predict(seeds, steps, api_name="/heatmaps")
    assert len(heat) == 4 and "attention" in heat[1]["caption"]

    # the shared base pipeline was left as it was loaded
    from erase.evaluation import generate
    from erase.export import apply_delta
    from erase.models import load_pipeline

    fresh = load_pipeline(model or None)
    cached = demo.erase_cache.get(model)
    base = fresh.unet.state_dict()
    for name, t in cached.unet.state_dict().items():
        assert np.array_equal(t.numpy(), base[name].numpy()), f"base pipeline modified: {name}"

    # the exported delta, applied to a fresh pipeline, renders the erased images again
    delta = Path(client.predict(api_name="/export_delta"))
    assert delta.suffix == ".safetensors" and delta.stat().st_size > 0
    meta = apply_delta(fresh, delta)
    assert meta["method"] == "fmn" and concept in meta["concepts"]
    prompts = [c["caption"].rsplit(" · seed ", 1) for c in concept_after]
    again = generate(fresh, [p for p, _ in prompts], [int(s) for _, s in prompts], steps=steps, guidance_scale=guidance)
    for x, y in zip(again, a):
        assert np.abs(np.asarray(x, dtype=np.int16) - y).max() <= 2

    archive = Path(client.predict(api_name="/export_folder"))
    assert archive.suffix == ".zip"
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        assert "model_index.json" in names and "erase.json" in names
        assert any(n.startswith("unet/") and n.endswith(".safetensors") for n in names)
        z.extractall(tmp_path / "erased")
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "erased" / "unet")
    for name, t in fresh.unet.state_dict().items():
        assert np.array_equal(unet.state_dict()[name].numpy(), t.numpy()), name


def test_bad_input_shows_message_and_server_keeps_running(server, model, concept):
    demo, url = server
    client = client_for(url)
    with pytest.raises(AppError, match="load a model first"):
        client.predict(["x"], "fmn", *[s.to_widget(s.default) for s in demo.erase_settings], api_name="/erase")
    with pytest.raises(AppError, match="not found"):
        client.predict("/no/such/model/folder", api_name="/load_model")
    loaded = client.predict(model, api_name="/load_model")
    values = settings_values(demo, loaded, "fmn", **fast_fmn(model))
    with pytest.raises(AppError, match="no concept"):
        client.predict([], "fmn", *values, api_name="/erase")
    with pytest.raises(AppError, match="no concept"):
        client.predict(["  "], "fmn", *values, api_name="/erase")
    with pytest.raises(AppError, match="tokeniz|concept"):
        client.predict(["\u68b5\u9ad8"], "fmn", *values, api_name="/erase")  # nothing the tokenizer can place
    bad = settings_values(demo, loaded, "fmn", lr=-1.0)
    with pytest.raises(AppError, match="lr"):
        client.predict([concept], "fmn", *bad, api_name="/erase")
    with pytest.raises(AppError, match="erase a concept first"):
        client.predict(1, "0", 2, 7.5, api_name="/compare")
    # still answering
    again = client.predict(model, api_name="/load_model")
    assert "Model:" in again[0]


def test_sessions_are_separate_and_cancel_restores(server, erased, model, concept):
    """Tabs do not see or disturb each other's erasures; cancelling a run leaves the model as it was."""
    import time

    demo, url = server
    first = erased[0]
    mine = images(first.predict(1, "0", 2, 7.5, api_name="/compare")[1])  # the first tab's erased images

    other = client_for(url)
    loaded = other.predict(model, api_name="/load_model")
    with pytest.raises(AppError, match="erase a concept first"):
        other.predict(1, "0", 2, 7.5, api_name="/compare")

    pipe = demo.erase_cache.get(model)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    values = settings_values(demo, loaded, "fmn", **(fast_fmn(model) | {"steps": 400}))
    job = other.submit([concept], "fmn", *values, api_name="/erase")
    deadline = time.time() + 60
    while time.time() < deadline:
        st = job.status()
        if st.progress_data and any("fmn" in (p.desc or "") for p in st.progress_data):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the run never reported training progress: {job.status()}")
    # the first tab asks for its images while the second tab's run holds the engine: it waits its turn
    waiting = first.submit(1, "0", 2, 7.5, api_name="/compare")
    assert "Cancelling" in other.predict(api_name="/cancel")
    with pytest.raises(AppError, match="cancelled"):
        job.result(timeout=60)
    for k, v in pipe.unet.state_dict().items():
        assert np.array_equal(v.numpy(), before[k].numpy()), f"cancel left {k} modified"
    assert all(np.array_equal(x, y) for x, y in zip(images(waiting.result(timeout=120)[1]), mine))

    # a finished erasure in the second tab (stronger) changes nothing the first tab sees
    values = settings_values(demo, loaded, "fmn", **(fast_fmn(model) | {"lr": 10 * fast_fmn(model)["lr"]}))
    other.predict([concept], "fmn", *values, api_name="/erase")
    theirs = images(other.predict(1, "0", 2, 7.5, api_name="/compare")[1])
    again = images(first.predict(1, "0", 2, 7.5, api_name="/compare")[1])
    assert all(np.array_equal(x, y) for x, y in zip(again, mine))
    assert any(not np.array_equal(x, y) for x, y in zip(theirs, mine))
    for k, v in pipe.unet.state_dict().items():
        assert np.array_equal(v.numpy(), before[k].numpy()), f"the shared pipeline was left modified: {k}"


def test_classifier_tab_runs_against_retrain(server):
    _, url = server
    client = client_for(url)
    table, plot, summary, stats = client.predict("pru", "digits", "k:10", 0, "", api_name="/unlearn_classifier")
    models = [row[0] for row in table["data"]]
    assert "retrain" in models and "pru" in models
    plot = plot.get("value", plot)  # the plot comes as an update (its bar order changes per run)
    assert "pru" in summary and plot["data"]
    with pytest.raises(AppError, match="option"):
        client.predict("pru", "digits", "k:10", 0, "no_such_option=1", api_name="/unlearn_classifier")


def test_cli_binds_locally_by_default():
    from app import parse_args

    args = parse_args([])
    assert args.host == "127.0.0.1" and not args.share and args.model is None
    args = parse_args(["--model", "x", "--port", "7999", "--share", "--host", "0.0.0.0"])
    assert (args.model, args.port, args.share, args.host) == ("x", 7999, True, "0.0.0.0")


def test_single_file_checkpoint_with_config(server, model, tmp_path):
    from erase.export import export_single_file

    demo, url = server
    pipe = demo.erase_cache.get(model)
    path = export_single_file(pipe, None, tmp_path / "model.safetensors")
    if model:
        config = model
    else:
        from erase.toyworld import weights_dir

        config = str(weights_dir())
    client = client_for(url)
    status = client.predict(str(path), config, api_name="/load_model")[0]
    assert "single-file" in status
    with pytest.raises(AppError, match="model file not found"):
        client.predict(str(tmp_path / "missing.safetensors"), config, api_name="/load_model")
