"""Temporal mechanisms as graph pieces (``VSR_TEMPORAL``): each node adds one to a chain that any sampler's
optional ``temporal`` input runs, in chain order, after the method's own published mechanisms."""
from __future__ import annotations

from vsr_core.sampling import mechanisms as mech

from .common import CATEGORY, UNCONNECTED

TEMPORAL = "VSR_TEMPORAL"
CHAIN_INPUT = (TEMPORAL, {"tooltip": "Mechanisms earlier in the chain; this one runs after them."})
SAMPLER_INPUT = (TEMPORAL, {"tooltip": "Temporal mechanisms to run in this sampler, in chain order, after the "
                                       "method's own (Latent Propagation, Motion Guidance, Flow-Warped "
                                       "Conditioning, Window Merge nodes). Empty: the method as published."})


def refuse_early(temporal, method: str, num_frames: int, steps: int, model=None) -> None:
    """A sampler node's first act: refuse a mechanism that cannot act on it, with the reason, before any
    work (prompt encoding, memory planning, the networks)."""
    if temporal:
        mech.check_mechanisms(temporal, mech.Site(method, num_frames, steps,
                                                  has_controlnet=getattr(model, "controlnet", None) is not None))


# ------------------------------------------------------------------------------------ queue-time check
# ComfyUI validates a queued prompt node by node and hands a linked input to VALIDATE_INPUTS as None, so a
# sampler cannot see there which mechanisms its chain holds. The pack's prompt check (an on_prompt handler,
# nodes/__init__.py) walks the graph instead: where a chain cannot act on its sampler it puts the reason in
# place of the sampler's temporal link, and the sampler's VALIDATE_INPUTS reports it on that input. The
# prompt is then refused as a whole, before any node runs.

REFUSED = "VSR_TEMPORAL refused: "
SAMPLER_METHODS = {"VSR_X4PerFrameSampler": "sd_x4", "VSR_StableVSRSampler": "stablevsr",
                   "VSR_UpscaleAVideoSampler": "upscale_a_video", "VSR_MGLDSampler": "mgld",
                   "VSR_SATeCoSampler": "satec"}


def validate_temporal(temporal) -> bool | str:
    """A sampler's VALIDATE_INPUTS part for ``temporal``: the reason the prompt check found, if any."""
    if isinstance(temporal, str) and temporal.startswith(REFUSED):
        return temporal[len(REFUSED):]
    return True


def _linked(value) -> str | None:
    return str(value[0]) if isinstance(value, list) and len(value) == 2 else None


def _model_has_controlnet(prompt: dict, node: dict) -> bool:
    """False only when the sampler's model visibly comes from a loader set to a model without a ControlNet."""
    src = prompt.get(_linked(node["inputs"].get("model")) or "", {})
    choice = src.get("inputs", {}).get("model") if src.get("class_type") == "VSR_LoadDiffusionModel" else None
    return not isinstance(choice, str) or choice.split("/", 1)[0] == "stablevsr"


def chain_problem(prompt: dict, sampler_id: str) -> str | None:
    """Why the mechanism chain linked to a sampler of an API prompt cannot run there (None: it can, or the
    chain comes from nodes this check does not know)."""
    node = prompt[sampler_id]
    chain, nid = [], _linked(node.get("inputs", {}).get("temporal"))
    while nid is not None:
        src = prompt.get(nid, {})
        cls = NODE_CLASS_MAPPINGS.get(src.get("class_type"))
        if cls is None:
            return None
        try:
            chain.append(cls.probe(src.get("inputs", {})))
        except (TypeError, ValueError) as e:
            return f"{src.get('class_type')}: {e}"
        nid = _linked(src.get("inputs", {}).get("temporal"))
    chain.reverse()
    steps = node["inputs"].get("steps")
    steps = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 0
    site = mech.Site(SAMPLER_METHODS[node["class_type"]], 2, steps or 1,
                     has_controlnet=_model_has_controlnet(prompt, node))
    try:
        mech.check_mechanisms(chain, site)
        for m in chain:
            if steps and isinstance(m, mech.Propagation):
                m.loop_steps(steps)  # e.g. -6,-4,-2 with a sampler of 4 steps
    except ValueError as e:
        return str(e)
    return None


def check_prompt(prompt: dict) -> dict:
    """The pack's prompt check: for every sampler whose chain cannot run, the reason replaces its temporal
    link (the sampler's VALIDATE_INPUTS then refuses the prompt on that input). Returns {node: reason}."""
    found = {}
    for nid, node in list(prompt.items()):
        if isinstance(node, dict) and node.get("class_type") in SAMPLER_METHODS and \
                _linked(node.get("inputs", {}).get("temporal")):
            why = chain_problem(prompt, nid)
            if why:
                node["inputs"]["temporal"] = REFUSED + why
                found[nid] = why
    return found


def _chain(temporal, mechanism) -> tuple:
    return (*(temporal or ()), mechanism)


class _MechanismNode:
    CATEGORY = f"{CATEGORY}/temporal"
    FUNCTION = "add"
    RETURN_TYPES = (TEMPORAL,)
    RETURN_NAMES = ("temporal",)
    OUTPUT_TOOLTIPS = ("The chain with this mechanism added; connect it to a sampler's temporal input or to the "
                       "next mechanism.",)


class VSR_TemporalLatentPropagation(_MechanismNode):
    DESCRIPTION = ("Upscale-A-Video's training-free recurrent latent propagation, for any sampler: at the chosen "
                   "steps each frame's predicted clean latent is carried along the flow through the whole clip "
                   "(backward, then forward) and blended where the flow passes its forward-backward check.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flow": ("VSR_FLOW", {"tooltip": "Flow of the LR frames (Flow Guidance)."}),
                "steps": ("STRING", {"default": "-6,-4,-2",
                                     "tooltip": "Steps at which to propagate; negative numbers count from the end "
                                                "(-6,-4,-2 = the published 24,26,28 of 30 steps)."}),
                "interpolation": (["nearest", "bilinear"], {"default": "nearest",
                                                            "tooltip": "Warp: nearest as published."}),
                "mode": (list(mech.PROPAGATION_MODES), {"default": "fuse",
                                                        "tooltip": "fuse: blend the carried latent with the "
                                                                   "frame's own; copy: replace it."}),
                "fuse_scale": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                         "tooltip": "Weight of the carried latent when fusing (0.5 published)."}),
                "alpha1": ("FLOAT", {"default": 0.001, "min": 0.0, "max": 1.0, "step": 0.001,
                                     "tooltip": "Forward-backward check, relative term (0.001 published)."}),
                "alpha2": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 10.0, "step": 0.01,
                                     "tooltip": "Forward-backward check, absolute term (0.05 published)."}),
            },
            "optional": {"temporal": CHAIN_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, steps=UNCONNECTED):
        if isinstance(steps, str):
            from vsr_core.sampling.propagation import parse_step_numbers

            try:
                parse_step_numbers(steps)
            except ValueError as e:
                return str(e)
        return True

    def add(self, flow, steps="-6,-4,-2", interpolation="nearest", mode="fuse", fuse_scale=0.5, alpha1=0.001,
            alpha2=0.05, temporal=None):
        return (_chain(temporal, mech.Propagation(flow, steps, interpolation, mode, fuse_scale, alpha1, alpha2)),)

    @staticmethod
    def probe(inputs: dict) -> mech.Mechanism:
        """The mechanism an API prompt's inputs describe, without its flow (for the prompt check)."""
        steps = inputs.get("steps", "-6,-4,-2")
        return mech.Propagation(None, steps if isinstance(steps, str) else "")


class VSR_TemporalMotionGuidance(_MechanismNode):
    DESCRIPTION = ("MGLD's motion guidance, for any sampler: after every step one gradient step that lowers the "
                   "flow-warped, occlusion-masked difference between neighbouring frames' latents.")

    @classmethod
    def INPUT_TYPES(cls):
        from vsr_core.sampling.motion_guidance import OCCLUSION_HANDLING, PAIRINGS

        return {
            "required": {
                "flow": ("VSR_FLOW", {"tooltip": "Flow of the LR frames (Flow Guidance, mgld convention)."}),
                "scale": ("FLOAT", {"default": -10.0, "min": -100.0, "max": 100.0, "step": 0.5,
                                    "tooltip": "Guidance scale g (MGLD: -10; more negative = stronger; 0 = off). "
                                               "The step also scales with the noise level."}),
                "pairing": (list(PAIRINGS), {"default": "official",
                                             "tooltip": "official: MGLD's loss as published; aligned: each frame "
                                                        "pair with its own flow and mask."}),
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "Fraction of the run where it starts acting."}),
                "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Fraction of the run where it stops."}),
                "occlusion": (list(OCCLUSION_HANDLING), {"default": "mgld",
                                                         "tooltip": "mgld: pixels failing the flow's forward-"
                                                                    "backward check are left out, as published; "
                                                                    "none: every pixel counts."}),
            },
            "optional": {"temporal": CHAIN_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start=UNCONNECTED, end=UNCONNECTED):
        if isinstance(start, float) and isinstance(end, float) and start > end:
            return f"start ({start}) must not be after end ({end})"
        return True

    def add(self, flow, scale=-10.0, pairing="official", start=0.0, end=1.0, occlusion="mgld", temporal=None):
        return (_chain(temporal, mech.MotionGuidanceMechanism(flow, scale, pairing, start, end, occlusion)),)

    @staticmethod
    def probe(inputs: dict) -> mech.Mechanism:
        return mech.MotionGuidanceMechanism(None)


class VSR_TemporalFlowConditioning(_MechanismNode):
    DESCRIPTION = ("StableVSR's Temporal Conditioning Module: every step the neighbouring frame's prediction is "
                   "decoded, warped onto the current frame with the flow and fed to a ControlNet trained for it, "
                   "with the frame order reversed every step. Only the StableVSR sampler with a StableVSR model "
                   "runs it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                    "tooltip": "Strength of the ControlNet's residuals (1 published)."}),
                "bidirectional": ("BOOLEAN", {"default": True,
                                              "tooltip": "Reverse the frame order every step, as published."}),
            },
            "optional": {"temporal": CHAIN_INPUT},
        }

    def add(self, scale=1.0, bidirectional=True, temporal=None):
        return (_chain(temporal, mech.FlowWarpedConditioning(scale, bidirectional)),)

    @staticmethod
    def probe(inputs: dict) -> mech.Mechanism:
        return mech.FlowWarpedConditioning()


class VSR_TemporalWindowMerge(_MechanismNode):
    DESCRIPTION = ("How windows of frames denoised together are merged where they overlap: Upscale-A-Video's "
                   "running average, a uniform average, a Hann crossfade, or separate segments (MGLD's published "
                   "mode). For the Upscale-A-Video and MGLD samplers.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mode": (list(mech.WINDOW_MERGES), {"default": "hann",
                                                    "tooltip": "running / uniform / hann: Upscale-A-Video; hann "
                                                               "(overlapping windows) or segments: MGLD."}),
            },
            "optional": {"temporal": CHAIN_INPUT},
        }

    def add(self, mode="hann", temporal=None):
        return (_chain(temporal, mech.WindowMerge(mode)),)

    @staticmethod
    def probe(inputs: dict) -> mech.Mechanism:
        mode = inputs.get("mode", "hann")
        return mech.WindowMerge(mode if isinstance(mode, str) else "hann")


NODE_CLASS_MAPPINGS = {
    "VSR_TemporalLatentPropagation": VSR_TemporalLatentPropagation,
    "VSR_TemporalMotionGuidance": VSR_TemporalMotionGuidance,
    "VSR_TemporalFlowConditioning": VSR_TemporalFlowConditioning,
    "VSR_TemporalWindowMerge": VSR_TemporalWindowMerge,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VSR_TemporalLatentPropagation": "Latent Propagation (VSR temporal)",
    "VSR_TemporalMotionGuidance": "Motion Guidance (VSR temporal)",
    "VSR_TemporalFlowConditioning": "Flow-Warped Conditioning (VSR temporal)",
    "VSR_TemporalWindowMerge": "Window Merge (VSR temporal)",
}
