"""Widgets for a method's settings, derived from the engine's config dataclasses.

``erase.methods.describe(name)`` gives (field, default, help); the dataclass's type hints pick
the widget (checkbox, integer/float box, choice list, text). Choices come from help texts of the
form "... : a | b (note) | c". Nothing here knows a particular method beyond which settings are
shown first (``MAIN``); a new method's settings appear without changes here.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass

# Settings shown outside the "Advanced settings" accordion, per method (others fall back to lr,
# where the method has one, plus the method's own fields).
MAIN = {
    "fmn": ("steps", "lr", "scope"),
    "salun": ("epochs", "lr", "alpha", "mask_fraction"),
    "esd": ("train_method", "iterations", "lr", "negative_guidance"),
    "uce": ("anchor", "preserve", "token_positions", "preserve_scale", "erase_scale"),
    "advunlearn": ("scope", "iterations", "lr", "attack_steps", "retain_on"),
    "rece": ("epochs", "adversary", "preserve_scale", "erase_scale"),
    "rece-adv": ("epochs", "adversary", "iterations", "lr", "retain_weight"),
}


@dataclass
class Setting:
    method: str
    name: str
    default: object
    help: str
    kind: str  # "bool" | "int" | "float" | "choice" | "text" | "lines"
    optional: bool = False
    choices: tuple[str, ...] = ()
    main: bool = False

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def to_widget(self, value):
        """Engine value -> widget value."""
        if self.kind == "lines":
            return "\n".join(value) if value else ""
        if self.kind == "text":
            return "" if value is None else str(value)
        return value

    def from_widget(self, value):
        """Widget value -> engine value (the engine validates ranges and types)."""
        if self.kind == "lines":
            lines = [x.strip() for x in str(value or "").splitlines() if x.strip()]
            return lines or None
        if self.kind in ("int", "float") and value is None:
            return None
        if self.kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if self.kind == "text":
            text = str(value or "").strip()
            return None if (not text and self.optional) else text
        return value


def _choices(help_text: str, default) -> tuple[str, ...]:
    if "|" not in help_text:
        return ()
    head, _, _ = help_text.partition("|")
    text = help_text[help_text.index(":") + 1 :] if ":" in head else help_text
    out = []
    for piece in text.split("|"):
        m = re.match(r"\s*([\w.-]+)", piece)
        if m:
            out.append(m.group(1))
    return tuple(out) if isinstance(default, str) and default in out else ()


def method_settings(method: str) -> list[Setting]:
    from erase import methods

    spec = methods.get(method)
    hints = typing.get_type_hints(spec.config_cls)
    base = set(typing.get_type_hints(methods.MethodConfig))
    main = MAIN.get(spec.name)
    if main is None:
        own = [name for name, _, _ in methods.describe(spec.name) if name not in base]
        main = (("lr",) if "lr" in hints else ()) + tuple(own[:4])
    out = []
    for name, default, help_text in methods.describe(spec.name):
        hint = hints.get(name, type(default))
        args = typing.get_args(hint)
        optional = type(None) in args
        core = [a for a in args if a is not type(None)][0] if optional else hint
        core = typing.get_origin(core) or core
        if core is bool:
            kind = "bool"
        elif core is int:
            kind = "int"
        elif core is float:
            kind = "float"
        elif core is list:
            kind = "lines"
        else:
            kind = "text"
        choices = _choices(help_text, default) if kind == "text" else ()
        if choices:
            kind = "choice"
        out.append(Setting(spec.name, name, default, help_text, kind, optional, choices, name in main))
    # main settings first, in MAIN's order
    order = {n: i for i, n in enumerate(main)}
    return sorted(out, key=lambda s: (0, order[s.name]) if s.main else (1, 0))


def all_settings(method_names: list[str]) -> list[Setting]:
    return [s for m in method_names for s in method_settings(m)]


def make_widget(setting: Setting):
    import gradio as gr

    kw = dict(label=setting.label, info=setting.help, value=setting.to_widget(setting.default),
              elem_id=f"setting-{setting.method}-{setting.name}")
    if setting.kind == "bool":
        return gr.Checkbox(**kw)
    if setting.kind == "int":
        return gr.Number(precision=0, **kw)
    if setting.kind == "float":
        return gr.Number(**kw)
    if setting.kind == "choice":
        return gr.Dropdown(choices=list(setting.choices), **kw)
    if setting.kind == "lines":
        return gr.Textbox(lines=3, placeholder="one per line; empty: the model's defaults", **kw)
    return gr.Textbox(**kw)


def config_values(method: str, settings: list[Setting], values: list) -> dict:
    """The chosen method's settings as a config dict (widgets of other methods are ignored)."""
    return {s.name: s.from_widget(v) for s, v in zip(settings, values) if s.method == method}


def defaults_for(pipe, settings: list[Setting]) -> list:
    """Widget values for ``pipe``: the papers' defaults, or the toy-world presets on the bundled model."""
    import dataclasses

    from erase.api import config_for

    cache = {}
    out = []
    for s in settings:
        if s.method not in cache:
            cache[s.method] = dataclasses.asdict(config_for(pipe, s.method)) if pipe is not None else {}
        out.append(s.to_widget(cache[s.method].get(s.name, s.default)))
    return out
