"""The app's helpers without a server: settings widgets <-> configs, parsing, cache, sessions."""

from __future__ import annotations

import copy
import threading

import gradio as gr
import pytest

from ui.diffusion import DiffusionCallbacks, parse_concepts, parse_seeds, spread, user_errors
from ui.settings import all_settings, config_values, method_settings
from ui.state import BUNDLED, ModelCache, Session, model_key, split_key


def test_every_engine_method_gets_widgets_that_round_trip_to_a_valid_config():
    from erase import methods

    names = methods.available()
    settings = all_settings(names)
    assert {s.method for s in settings} == set(names)
    values = [s.to_widget(s.default) for s in settings]
    for m in names:
        cfg = config_values(m, settings, values)
        assert set(cfg) == {f for f, _, _ in methods.describe(m)}
        methods.make_config(m, cfg)  # the defaults shown are accepted as they are
        assert any(s.main for s in method_settings(m))


def test_widget_kinds_and_choices():
    by_name = {s.name: s for s in method_settings("salun")}
    assert by_name["scope"].kind == "choice" and "cross_attn_kv" in by_name["scope"].choices
    assert by_name["mask_threshold"].kind == "float" and by_name["mask_threshold"].optional
    assert by_name["templates"].kind == "lines"
    assert by_name["templates"].from_widget("a photo of {}\n\n  {} \n") == ["a photo of {}", "{}"]
    assert by_name["templates"].from_widget("") is None
    assert by_name["epochs"].from_widget(3.0) == 3


def test_parsing():
    assert parse_concepts(["van gogh", " ", "circle, red"]) == ["van gogh", "circle", "red"]
    assert parse_concepts("a\nb") == ["a", "b"]
    assert parse_concepts(None) == []
    assert parse_seeds("0, 1 2") == [0, 1, 2]
    with pytest.raises(gr.Error):
        parse_seeds("zero")
    with pytest.raises(gr.Error):
        parse_seeds("")
    picked = spread(list(range(10)), 3)
    assert len(picked) == 3 and picked[0] == 0 and picked[-1] == 9
    assert spread([1, 2], 5) == [1, 2]


def test_user_errors_turn_engine_errors_into_page_messages():
    from erase.errors import EraseError
    from erase.training import Cancelled

    with pytest.raises(gr.Error, match="bad thing"):
        with user_errors("test"):
            raise EraseError("bad thing")
    with pytest.raises(gr.Error, match="ZeroDivisionError"):
        with user_errors("test"):
            1 / 0
    with pytest.raises(Cancelled):  # cancellation is handled by the caller, not reported as a bug
        with user_errors("test"):
            raise Cancelled()


def test_model_cache_loads_once_and_evicts_least_recent():
    calls = []

    def loader(model, config):
        calls.append((model, config))
        return object()

    cache = ModelCache(max_models=2, loader=loader)
    a = cache.get("")
    assert cache.get("bundled") is a and calls == [(None, None)]
    cache.get("x")
    cache.get("y.safetensors", "cfg")
    assert calls[-1] == ("y.safetensors", "cfg")
    assert cache.loaded() == ["x", model_key("y.safetensors", "cfg")]
    assert split_key(model_key("y.safetensors", "cfg")) == ("y.safetensors", "cfg")
    assert split_key(BUNDLED) == (None, None)
    cache.get("")  # evicted earlier: loaded again
    assert calls.count((None, None)) == 2


def test_sessions_are_fresh_per_tab_and_clean_up(tmp_path):
    s = Session()
    s.model, s.result = "x", object()
    s.cancel.set()
    t = copy.deepcopy(s)  # what gr.State does for each new tab
    assert t.model is None and t.result is None and not t.cancel.is_set()
    folder = s.folder(tmp_path)
    assert folder.is_dir() and folder.parent == tmp_path
    s.close()
    assert not folder.exists() and s.result is None


def test_callbacks_need_a_model_and_a_result():
    cb = DiffusionCallbacks(ModelCache(loader=lambda m, c: object()), all_settings(["fmn"]))
    s = Session()
    with pytest.raises(gr.Error, match="load a model first"):
        cb.erase(s, ["x"], "fmn")
    s.model = "x"
    with pytest.raises(gr.Error, match="erase a concept first"):
        cb.export_delta(s)
    assert "Cancelling" in cb.cancel(s) and s.cancel.is_set()
    assert isinstance(s.cancel, type(threading.Event()))
