#!/usr/bin/env python
"""erase's web app: erase concepts from a Stable Diffusion model and see the difference.

    python app.py                              # the bundled toy-world model, http://127.0.0.1:7860
    python app.py --model path/to/diffusers-folder --port 7861
    python app.py --model org/model-id --host 0.0.0.0     # reachable from other machines
    python app.py --share                                 # a public gradio.live link
"""

from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="erase's web app (concept erasure and classifier unlearning)")
    p.add_argument("--model", default=None,
                   help="model opened at start: a diffusers folder, a .safetensors file or a Hub id (default: the bundled toy-world model)")
    p.add_argument("--config", default=None,
                   help="for a single-file --model: a local diffusers folder (or Hub id) with the matching configs")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or the next free one)")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--max-models", type=int, default=2, help="pipelines kept in memory at once (default 2)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from ui.app import build_app, launch
    from ui.state import ModelCache

    cache = ModelCache(args.max_models)
    cache.preload(args.model, args.config)  # the first tab then opens on a loaded model
    demo = build_app(args.model, config=args.config, cache=cache)
    launch(demo, host=args.host, port=args.port, share=args.share)


if __name__ == "__main__":
    main()
