"""Build, validate and convert the shipped workflows (ComfyUI UI format, schema 0.4).

The shipped files in ``workflows/`` are generated from the compact graphs in ``GRAPHS`` against the
pack's own node definitions, so widget order always matches ``INPUT_TYPES``:

    python tests/workflow_tools.py          # rewrite workflows/*.json

``validate`` checks a UI workflow the way the frontend + server would: node types exist, links join
matching types, every required input is linked or has a widget value, widget values are in range, in
the positional order the frontend uses (including the ``control_after_generate`` entry after a seed
and the upload button's entry after the last widget of a node with an upload combo). ``to_api`` converts it to a ``/prompt`` body.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
EXAMPLE_VIDEO = "vsr_example_coffee.mp4"  # the bundled clip, put into ComfyUI's input folder by the pack
# model hints (the frontend's missing-models dialog): one direct file URL per file where one exists
UAV_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1O8pbeR1hsRlFUU8O4EULe-lOKNGEWZl1"
MGLD_MIRROR = "https://huggingface.co/Iceclear/MGLD-VSR/resolve/main"
RAFT_THINGS = {"name": "raft-things.pth", "url": f"{MGLD_MIRROR}/raft-things.pth", "directory": "vsr_flow"}
UI_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# what every workflow ends with: the loader's fps, audio and frames (for the compare slider) into Save Video,
# and (the diffusion ones) the model and latents into the decoder, the frames into Save Video
SAVE_LINKS = [("load", 2, "save", "fps"), ("load", 3, "save", "audio"), ("load", 0, "save", "compare_with")]
DECODE_SAVE_LINKS = [("model", 0, "decode", "model"), ("sampler", 0, "decode", "latent"),
                     ("decode", 0, "save", "images"), *SAVE_LINKS]


def _inputs(cls) -> list[tuple[str, object, dict, bool]]:
    spec = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            out.append((name, kind, opts, section == "required"))
    return out


def _is_widget(kind, opts) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def widget_slots(cls) -> list[tuple[str, object, dict]]:
    """Positional widgets_values layout: (input name or a '#control'/'#upload' extra, kind, opts).

    As the frontend (1.32) serializes a node: one entry per widget input in INPUT_TYPES order, a seed's
    ``control_after_generate`` right after it, and the upload button (added once every input widget
    exists) last, with the value "image" — checked against the real frontend in headless Chromium.
    """
    slots, upload = [], False
    for name, kind, opts, _ in _inputs(cls):
        if not _is_widget(kind, opts):
            continue
        slots.append((name, kind, opts))
        if kind == "INT" and (name in ("seed", "noise_seed") or opts.get("control_after_generate")):
            slots.append(("#control", ["fixed", "increment", "decrement", "randomize"], {}))
        if isinstance(kind, list) and (opts.get("video_upload") or opts.get("image_upload")):
            upload = True
    if upload:
        slots.append(("#upload", None, {}))
    return slots


def _check_value(name, kind, opts, value, where) -> list[str]:
    if isinstance(kind, list):
        if kind and value not in kind:
            return [f"{where}: {name}={value!r} is not one of {kind}"]
        return []
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: {name}={value!r} is not an int"]
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{where}: {name}={value!r} is not a number"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {name}={value!r} is not a string"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {name}={value!r} is not a boolean"]
    errs = []
    if "min" in opts and value < opts["min"]:
        errs.append(f"{where}: {name}={value} < min {opts['min']}")
    if "max" in opts and value > opts["max"]:
        errs.append(f"{where}: {name}={value} > max {opts['max']}")
    return errs


def validate(wf: dict, mappings: dict, combo_values_known: bool = False) -> list[str]:
    """Errors of a UI-format workflow against node classes (empty list = valid).

    combo_values_known: check combo values whose option list depends on installed files (model and
    video names) too; off by default since a user's files decide those lists.
    """
    errors = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    for link_id, origin, oslot, target, tslot, ltype in wf["links"]:
        for nid in (origin, target):
            if nid not in nodes:
                errors.append(f"link {link_id}: node {nid} does not exist")
    for nid, node in nodes.items():
        where = f"node {nid} ({node['type']})"
        if node["type"] in UI_ONLY:
            continue
        cls = mappings.get(node["type"])
        if cls is None:
            errors.append(f"{where}: unknown node type")
            continue
        declared = {name: (kind, opts, req) for name, kind, opts, req in _inputs(cls)}
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            link = links.get(inp["link"])
            if link is None:
                errors.append(f"{where}: input {inp['name']} uses missing link {inp['link']}")
                continue
            if inp["name"] not in declared:
                errors.append(f"{where}: input {inp['name']} is not declared by the node")
                continue
            kind = declared[inp["name"]][0]
            want = "COMBO" if isinstance(kind, list) else kind
            origin = nodes[link[1]]
            ocls = mappings.get(origin["type"])
            got = ocls.RETURN_TYPES[link[2]] if ocls else link[5]
            if got != want and "*" not in (got, want):
                errors.append(f"{where}: input {inp['name']} wants {want}, link {link[0]} carries {got}")
            if link[5] != got:
                errors.append(f"{where}: link {link[0]} is labelled {link[5]} but carries {got}")
            linked[inp["name"]] = link
        slots = widget_slots(cls)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            errors.append(f"{where}: {len(values)} widget values, the node has {len(slots)} "
                          f"({[s[0] for s in slots]})")
            continue
        for (name, kind, opts), value in zip(slots, values):
            if name == "#upload" or name in linked:
                continue
            if name == "#control":
                errors += _check_value("control_after_generate", kind, opts, value, where)
                continue
            if isinstance(kind, list) and name in getattr(cls, "FILE_COMBOS", ()) and not combo_values_known:
                continue
            errors += _check_value(name, kind, opts, value, where)
        for name, (kind, opts, required) in declared.items():
            if required and not _is_widget(kind, opts) and name not in linked:
                errors.append(f"{where}: required input {name} is not linked")
    return errors


def to_api(wf: dict, mappings: dict) -> dict:
    """The ``/prompt`` body's ``prompt`` for a UI workflow (what the frontend's graphToPrompt makes)."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    prompt = {}
    for nid, node in nodes.items():
        if node["type"] in UI_ONLY or node.get("mode", 0) in (2, 4):
            continue
        cls = mappings[node["type"]]
        inputs = {}
        for (name, _, _), value in zip(widget_slots(cls), node.get("widgets_values", [])):
            if not name.startswith("#"):
                inputs[name] = value
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(nid)] = {"class_type": node["type"], "inputs": inputs,
                            "_meta": {"title": node.get("title", node["type"])}}
    return prompt


# ------------------------------------------------------------------------------------------ building

def build(graph: dict, mappings: dict) -> dict:
    """A UI workflow from a compact graph: {"nodes": {key: (type, {widget: value}, (x, y))},
    "links": [(from_key, output_index, to_key, input_name)], "models": [...], "notes": [(text, (x, y))]}."""
    _pack()  # node titles come from the pack's display names
    ids = {key: i + 1 for i, key in enumerate(graph["nodes"])}
    ui_nodes, ui_links = [], []
    node_inputs: dict[str, list] = {}
    node_outputs: dict[str, list] = {}
    for key, (ntype, widgets, pos) in graph["nodes"].items():
        cls = mappings[ntype]
        ins = []
        for name, kind, opts, _ in _inputs(cls):
            entry = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind, "link": None}
            if _is_widget(kind, opts):
                entry["widget"] = {"name": name}
            ins.append(entry)
        node_inputs[key] = ins
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        node_outputs[key] = [{"name": n, "type": t, "links": []} for n, t in zip(names, cls.RETURN_TYPES)]
    for link_id, (src, slot, dst, name) in enumerate(graph["links"], start=1):
        stype = mappings[graph["nodes"][src][0]].RETURN_TYPES[slot]
        entry = next(i for i in node_inputs[dst] if i["name"] == name)
        entry["link"] = link_id
        node_outputs[src][slot]["links"].append(link_id)
        tslot = node_inputs[dst].index(entry)
        ui_links.append([link_id, ids[src], slot, ids[dst], tslot, stype])
    for order, (key, (ntype, widgets, pos)) in enumerate(graph["nodes"].items()):
        cls = mappings[ntype]
        values = []
        for name, kind, opts in widget_slots(cls):
            if name == "#control":
                values.append("fixed")
            elif name == "#upload":
                values.append("image")
            elif name in widgets:
                values.append(widgets[name])
            else:
                values.append(opts.get("default", kind[0] if isinstance(kind, list) and kind else None))
        unknown = set(widgets) - {s[0] for s in widget_slots(cls)}
        if unknown:
            raise KeyError(f"{key} ({ntype}) has no widgets {sorted(unknown)}")
        ui_nodes.append({"id": ids[key], "type": ntype, "pos": list(pos), "size": [320, 120], "flags": {},
                         "order": order, "mode": 0, "inputs": node_inputs[key], "outputs": node_outputs[key],
                         "title": mappings_display(ntype),
                         "properties": {"Node name for S&R": ntype, "cnr_id": "diffusion-vsr"},
                         "widgets_values": values})
    next_id = len(ui_nodes) + 1
    for text, pos in graph.get("notes", []):
        ui_nodes.append({"id": next_id, "type": "Note", "pos": list(pos), "size": [420, 160], "flags": {},
                         "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                         "widgets_values": [text]})
        next_id += 1
    wf = {"id": graph["id"], "revision": 0, "last_node_id": next_id - 1, "last_link_id": len(ui_links),
          "nodes": ui_nodes, "links": ui_links, "groups": [], "config": {},
          "extra": {"ds": {"scale": 0.8, "offset": [80, 60]}}, "version": 0.4}
    if graph.get("models"):
        wf["models"] = graph["models"]
    return wf


_DISPLAY: dict = {}


def mappings_display(ntype: str) -> str:
    return _DISPLAY.get(ntype, ntype)


def _pack():
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from pack import load_pack

    pack = load_pack()
    _DISPLAY.update(pack.NODE_DISPLAY_NAME_MAPPINGS)
    return pack


GRAPHS = {
    "StableVSR": {
        "id": "7d1f3a52-6b0e-4c39-9a5e-2f8f3e6a1b01",
        "nodes": {
            "load": ("VSR_LoadVideoFrames", {"video": EXAMPLE_VIDEO, "frame_load_cap": 16}, (0, 0)),
            "model": ("VSR_LoadDiffusionModel", {"model": "stablevsr/StableVSR"}, (0, 600)),
            "bicubic": ("VSR_VideoUpscaler", {"scale": 4, "method": "bicubic"}, (380, 0)),
            "flow": ("VSR_FlowGuidance", {"raft_convention": "stablevsr"}, (760, 0)),
            "lr": ("VSR_LatentEncoderLR", {"noise_level": 0}, (380, 300)),
            "sampler": ("VSR_StableVSRSampler", {"steps": 50, "seed": 42}, (1140, 200)),
            "decode": ("VSR_TemporalVAEDecode", {}, (1520, 200)),
            "save": ("VSR_SaveVideo", {"filename_prefix": "VSR/StableVSR"}, (1900, 200)),
        },
        "links": [
            ("load", 0, "bicubic", "frames"),
            ("bicubic", 0, "flow", "frames"),
            ("load", 0, "lr", "frames"),
            ("model", 0, "lr", "model"),
            ("model", 0, "sampler", "model"),
            ("lr", 0, "sampler", "lr"),
            ("flow", 0, "sampler", "flow"),
            *DECODE_SAVE_LINKS,
        ],
        "models": [
            *[{"name": f"StableVSR/{f}", "url": f"https://huggingface.co/claudiom4sir/StableVSR/resolve/main/{f}",
               "directory": "vsr_stablevsr"}
              for f in ("unet/diffusion_pytorch_model.safetensors", "controlnet/diffusion_pytorch_model.safetensors",
                        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")],
            {"name": "raft_large_C_T_SKHT_V2-ff5fadd5.pth",
             "url": "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
             "directory": "vsr_flow"},
        ],
        "notes": [("StableVSR (Rota et al., ECCV 2024). Put the StableVSR diffusers folder in "
                   "ComfyUI/models/vsr/stablevsr/StableVSR/ (from huggingface.co/claudiom4sir/StableVSR). Flow is "
                   "computed on the bicubic x4 frames, as the paper does; pick the RAFT file in Flow Guidance for the "
                   "published setting (DIS works without weights). 50 DDPM steps as published; DPM++ 2M with "
                   "~20 steps is much faster.", (0, 860))],
    },
}


GRAPHS["UpscaleAVideo"] = {
    "id": "3b9e5c1d-8a47-4f0e-b6d2-51c7a0e9f302",
    "nodes": {
        "load": ("VSR_LoadVideoFrames", {"video": EXAMPLE_VIDEO, "frame_load_cap": 16}, (0, 0)),
        "model": ("VSR_LoadDiffusionModel", {"model": "upscale_a_video/upscale_a_video"}, (0, 600)),
        "flow": ("VSR_FlowGuidance", {"raft_convention": "uav", "occlusion": "uav"}, (380, 0)),
        "lr": ("VSR_LatentEncoderLR", {"noise_level": 120}, (380, 300)),
        "sampler": ("VSR_UpscaleAVideoSampler", {"steps": 30, "seed": 10, "propagation_steps": "-6,-4,-2"},
                    (760, 200)),
        "decode": ("VSR_TemporalVAEDecode", {"mode": "auto"}, (1140, 200)),
        "save": ("VSR_SaveVideo", {"filename_prefix": "VSR/UpscaleAVideo"}, (1520, 200)),
    },
    "links": [
        ("load", 0, "flow", "frames"),
        ("load", 0, "lr", "frames"),
        ("model", 0, "lr", "model"),
        ("model", 0, "sampler", "model"),
        ("lr", 0, "sampler", "lr"),
        ("flow", 0, "sampler", "flow"),
        *DECODE_SAVE_LINKS,
    ],
    "models": [
        # the weights exist only as a Google Drive folder: one entry per file (the dialog merges entries that share
        # a URL, so each names its file in the fragment); the note and README say where the folder goes
        *[{"name": f"upscale_a_video/{f}", "url": f"{UAV_DRIVE_FOLDER}#{f}", "directory": "vsr_upscale_a_video"}
          for f in ("unet/unet_video.bin", "vae/vae_video.bin", "vae/vae_3d.bin")],
        RAFT_THINGS,
    ],
    "notes": [("Upscale-A-Video (Zhou et al., CVPR 2024; weights non-commercial, S-Lab License). Put the official "
               "pretrained_models/upscale_a_video folder (a Google Drive folder: the missing-models dialog cannot "
               "fetch it) in ComfyUI/models/vsr/upscale_a_video/. Flow is computed on the LR frames (RAFT with "
               "the 'uav' convention is the published setting). noise_level 120, CFG 6, 30 steps as the official "
               "CLI; propagation at the steps -6,-4,-2 counted from the end (24, 26, 28 of 30, as in its README "
               "examples).", (0, 860))],
}


GRAPHS["MGLD"] = {
    "id": "c5a0e7f4-2d91-4b63-8e1f-9a4d6b2c7e03",
    "nodes": {
        "load": ("VSR_LoadVideoFrames", {"video": EXAMPLE_VIDEO, "frame_load_cap": 15}, (0, 0)),
        "model": ("VSR_LoadDiffusionModel", {"model": "mgld/MGLD"}, (0, 600)),
        "flow": ("VSR_FlowGuidance", {"raft_convention": "mgld", "occlusion": "mgld"}, (380, 0)),
        "sampler": ("VSR_MGLDSampler", {"steps": 50, "seed": 42}, (760, 200)),
        "decode": ("VSR_TemporalVAEDecode", {"mode": "auto", "color_fix": "auto"}, (1140, 200)),
        "save": ("VSR_SaveVideo", {"filename_prefix": "VSR/MGLD"}, (1520, 200)),
    },
    "links": [
        ("load", 0, "flow", "frames"),
        ("load", 0, "sampler", "frames"),
        ("model", 0, "sampler", "model"),
        ("flow", 0, "sampler", "flow"),
        *DECODE_SAVE_LINKS,
    ],
    "models": [
        *[{"name": f"MGLD/{f}", "url": f"{MGLD_MIRROR}/{f}", "directory": "vsr_mgld"}
          for f in ("mgldvsr_unet.ckpt", "video_vae_cfw.ckpt")],
        RAFT_THINGS,
    ],
    "notes": [("MGLD (Yang et al., ECCV 2024; weights non-commercial, S-Lab License). Put mgldvsr_unet.ckpt and "
               "video_vae_cfw.ckpt (official release: BaiduNetDisk/OneDrive links in github.com/IanYeung/MGLD-VSR; "
               "mirror huggingface.co/Iceclear/MGLD-VSR) in ComfyUI/models/vsr/mgld/MGLD/; `python -m vsr_core "
               "convert` turns them into .safetensors once. Published: 50 steps, motion guidance -10, 5-frame "
               "segments, dec_w 1, AdaIN colour fix; 'overlap' removes the seams between segments.", (0, 860))],
}


GRAPHS["SATeCo"] = {
    "id": "9e4b1c27-3d5a-4f86-b0c1-7a2e5d8f6b04",
    "nodes": {
        "load": ("VSR_LoadVideoFrames", {"video": EXAMPLE_VIDEO, "frame_load_cap": 12, "resize": "multiple_of_8"},
                 (0, 0)),
        "upscale": ("VSR_VideoUpscaler", {"scale": 4, "method": "learned"}, (380, 0)),
        "model": ("VSR_LoadSATeCo", {"base": "checkpoints/v2-1_768-ema-pruned.safetensors",
                                     "adapters": "satec.safetensors"}, (0, 600)),
        "sampler": ("VSR_SATeCoSampler", {"strength": 0.5, "steps": 20, "seed": 0, "clip_length": 6}, (760, 200)),
        "decode": ("VSR_TemporalVAEDecode", {"mode": "satec SFA/TFA"}, (1140, 200)),
        "refine": ("VSR_VideoRefiner", {"weight": 0.5}, (1520, 200)),
        "save": ("VSR_SaveVideo", {"filename_prefix": "VSR/SATeCo"}, (1900, 200)),
    },
    "links": [
        ("load", 0, "upscale", "frames"),
        ("model", 0, "sampler", "model"),
        ("upscale", 0, "sampler", "upscaled"),
        ("model", 0, "decode", "model"),
        ("sampler", 0, "decode", "latent"),
        ("model", 0, "refine", "model"),
        ("upscale", 0, "refine", "upscaled"),
        ("decode", 0, "refine", "decoded"),
        ("refine", 0, "save", "images"),
        *SAVE_LINKS,
    ],
    "models": [
        {"name": "v2-1_768-ema-pruned.safetensors",
         "url": "https://huggingface.co/stabilityai/stable-diffusion-2-1/resolve/main/v2-1_768-ema-pruned.safetensors",
         "directory": "checkpoints"},
    ],
    "notes": [("SATeCo (Chen et al., CVPR 2024) on your Stable Diffusion 2.1 checkpoint (models/checkpoints). SATeCo has "
               "no published weights: train its adapters with `python -m vsr_core train-satec --stage 2/3/4 --data "
               "YOUR_HR_CLIPS --base v2-1_768-ema-pruned.safetensors` and put the resulting satec.safetensors in "
               "ComfyUI/models/vsr/satec/ (README, 'SATeCo'). The learned upscaler gives X_u; strength 0.5 over 20 "
               "DDIM steps; clips of 6 frames (the tubelet length); refiner w = 0.5 as published.", (0, 860))],
}


SD_X4_REPO = "https://huggingface.co/stabilityai/stable-diffusion-x4-upscaler/resolve/main"

GRAPHS["Combine"] = {
    "id": "2f6d8b13-7c4e-4a95-9d20-6e1b3c8a5f06",
    "nodes": {
        "load": ("VSR_LoadVideoFrames", {"video": EXAMPLE_VIDEO, "frame_load_cap": 16}, (0, 0)),
        "model": ("VSR_LoadDiffusionModel", {"model": "sd_x4/stable-diffusion-x4-upscaler"}, (0, 600)),
        "flow": ("VSR_FlowGuidance", {}, (380, 0)),
        "prop": ("VSR_TemporalLatentPropagation", {"steps": "-6,-4,-2"}, (760, 0)),
        "mg": ("VSR_TemporalMotionGuidance", {"scale": -10.0}, (1140, 0)),
        "lr": ("VSR_LatentEncoderLR", {"noise_level": 20}, (380, 360)),
        "sampler": ("VSR_X4PerFrameSampler", {"steps": 50, "seed": 0}, (1140, 360)),
        "decode": ("VSR_TemporalVAEDecode", {}, (1520, 360)),
        "save": ("VSR_SaveVideo", {"filename_prefix": "VSR/Combine"}, (1900, 360)),
    },
    "links": [
        ("load", 0, "flow", "frames"),
        ("flow", 0, "prop", "flow"),
        ("flow", 0, "mg", "flow"),
        ("prop", 0, "mg", "temporal"),
        ("load", 0, "lr", "frames"),
        ("model", 0, "lr", "model"),
        ("model", 0, "sampler", "model"),
        ("lr", 0, "sampler", "lr"),
        ("mg", 0, "sampler", "temporal"),
        *DECODE_SAVE_LINKS,
    ],
    "models": [{"name": f"stable-diffusion-x4-upscaler/{f}", "url": f"{SD_X4_REPO}/{f}", "directory": "vsr_sd_x4"}
               for f in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                         "text_encoder/model.safetensors")],
    "notes": [("Temporal mechanisms combined: the Stable Diffusion x4 upscaler, which sees one frame at a time, "
               "with Upscale-A-Video's latent propagation and then MGLD's motion guidance, chained into the "
               "sampler's temporal input (they act in chain order, after the method's own). Put the "
               "stabilityai/stable-diffusion-x4-upscaler folder (unet/, vae/, text_encoder/, tokenizer/, "
               "scheduler/, low_res_scheduler/) in ComfyUI/models/vsr/sd_x4/. Disconnect the temporal input to "
               "compare with plain per-frame upscaling; the same chain fits the StableVSR, Upscale-A-Video, MGLD "
               "and SATeCo samplers (README, 'Temporal mechanisms').", (0, 860))],
}


GRAPHS["QuickStart"] = {
    "id": "5c2a7e90-1f3b-4d68-8e0a-9b4d2c6f7a03",
    "nodes": {
        "load": ("VSR_LoadVideoFrames", {"video": EXAMPLE_VIDEO, "frame_load_cap": 0}, (0, 0)),
        "upscale": ("VSR_VideoUpscaler", {"scale": 4, "method": "learned"}, (380, 0)),
        "save": ("VSR_SaveVideo", {"filename_prefix": "VSR/QuickStart"}, (760, 0)),
    },
    "links": [
        ("load", 0, "upscale", "frames"),
        ("upscale", 0, "save", "images"),
        *SAVE_LINKS,
    ],
    "models": [],
    "notes": [("Quick start: no download needed. The pack's own learned multi-frame upscaler (weights ship with "
               "the pack) upscales x4 (or x2); switch 'method' to bicubic or lanczos to compare, or connect core's "
               "'Load Upscale Model' to the upscale_model input to use an ESRGAN/SPAN/SwinIR file you have. Pick "
               "your clip in the loader (frame_load_cap limits the frames for a first try).", (0, 600))],
}


def write_all() -> list[Path]:
    pack = _pack()
    out = []
    for name, graph in GRAPHS.items():
        wf = build(graph, pack.NODE_CLASS_MAPPINGS)
        errs = validate(wf, pack.NODE_CLASS_MAPPINGS)
        if errs:
            raise ValueError(f"{name}: " + "; ".join(errs))
        path = REPO / "workflows" / f"{name}.json"
        path.write_text(json.dumps(wf, indent=2) + "\n")
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write_all():
        print("wrote", p)


def run_api(prompt: dict, mappings: dict) -> dict:
    """Execute an API prompt in-process, the way ComfyUI's executor calls V1 nodes (no caching, no UI).

    Returns {node_id: outputs tuple}. Only for tests: ComfyUI itself runs the shipped workflows in e2e.
    """
    import torch

    done: dict[str, tuple] = {}

    def run(nid: str) -> tuple:
        if nid in done:
            return done[nid]
        node = prompt[nid]
        cls = mappings[node["class_type"]]
        kwargs = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                kwargs[name] = run(value[0])[value[1]]
            else:
                kwargs[name] = value
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
        done[nid] = tuple(out["result"] if isinstance(out, dict) else out)
        return done[nid]

    for nid in prompt:
        run(nid)
    return done
