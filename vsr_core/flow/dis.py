"""A weight-free flow engine: OpenCV's DIS optical flow (Kroeger et al., ECCV 2016).

Used when no RAFT weights are available, so every workflow still runs. It follows the engine protocol
of ``vsr_core.flow``: ``engine(src, dst) -> flow_src_to_dst`` with ``src(p) ~ dst(p + flow(p))``.
DIS runs on the CPU one pair at a time on 8-bit grayscale; inputs on a GPU are copied over and the
result is returned on the input's device.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["DISEngine", "DIS_PRESETS"]

# cv2.DISOPTICAL_FLOW_PRESET_* values; cv2 itself is imported on first use so that a broken OpenCV
# install fails the DIS engine with a clear message instead of the whole pack at import.
DIS_PRESETS = {
    "ultrafast": 0,
    "fast": 1,
    "medium": 2,
}

# ITU-R BT.601 luma, the weights cv2.cvtColor(RGB2GRAY) uses.
_LUMA = (0.299, 0.587, 0.114)

_SETTERS = {
    "finest_scale": "setFinestScale",
    "patch_size": "setPatchSize",
    "patch_stride": "setPatchStride",
    "gradient_descent_iterations": "setGradientDescentIterations",
    "variational_refinement_iterations": "setVariationalRefinementIterations",
    "variational_refinement_alpha": "setVariationalRefinementAlpha",
    "variational_refinement_delta": "setVariationalRefinementDelta",
    "variational_refinement_gamma": "setVariationalRefinementGamma",
    "use_mean_normalization": "setUseMeanNormalization",
    "use_spatial_propagation": "setUseSpatialPropagation",
}


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError(f"the DIS flow engine needs OpenCV: `pip install opencv-python` ({e})") from e
    return cv2


class DISEngine:
    """Dense Inverse Search optical flow via ``cv2.DISOpticalFlow``.

    preset: ``"ultrafast" | "fast" | "medium"`` (OpenCV's presets; medium is the most accurate).
    **params: optional overrides of the preset, by name: ``finest_scale``, ``patch_size``,
    ``patch_stride``, ``gradient_descent_iterations``, ``variational_refinement_iterations``,
    ``variational_refinement_{alpha,delta,gamma}``, ``use_mean_normalization``, ``use_spatial_propagation``.

    ``engine(src, dst)``: src, dst ``[N, 3, H, W]`` RGB in [0, 1] (or ``[N, 1, H, W]`` gray), any H, W,
    any device. Returns ``[N, 2, H, W]`` float32 flow src -> dst in pixels, on src's device.
    """

    def __init__(self, preset: str = "medium", **params) -> None:
        key = str(preset).lower()
        if key not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
        unknown = sorted(set(params) - set(_SETTERS))
        if unknown:
            raise ValueError(f"unknown DIS parameter(s) {unknown}; known: {sorted(_SETTERS)}")
        self.preset = key
        self.params = dict(params)
        self.name = f"dis-{key}"
        self._dis = self._make()
        # OpenCV 4.x/5.0 reads past its buffers (segfault, not an exception) when a side of the image
        # at the finest pyramid level is shorter than about two patches; small or thin frames are
        # therefore padded (replicate) up to this size and the flow cropped back.
        self.min_side = 2 * self._dis.getPatchSize() * 2 ** self._dis.getFinestScale()

    def _make(self):
        cv2 = _cv2()
        dis = cv2.DISOpticalFlow.create(DIS_PRESETS[self.preset])
        for k, v in self.params.items():
            getattr(dis, _SETTERS[k])(v)
        return dis

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"DISEngine(preset={self.preset!r}{extra})"

    def __getstate__(self):
        # cv2 objects do not pickle; rebuild from the settings.
        return {"preset": self.preset, "params": self.params}

    def __setstate__(self, state) -> None:
        self.__init__(state["preset"], **state["params"])

    @staticmethod
    def _to_gray_u8(x: Tensor) -> np.ndarray:
        """[N, 3|1, H, W] float in [0, 1] -> [N, H, W] uint8 on the CPU."""
        x = x.detach().float()
        if x.shape[1] == 3:
            g = _LUMA[0] * x[:, 0] + _LUMA[1] * x[:, 1] + _LUMA[2] * x[:, 2]
        else:
            g = x[:, 0]
        g = torch.nan_to_num(g, nan=0.0).clamp_(0.0, 1.0).mul_(255.0).round_()
        return g.to(device="cpu", dtype=torch.uint8).numpy()

    def _pad(self, a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        ph, pw = max(0, self.min_side - h), max(0, self.min_side - w)
        if ph == 0 and pw == 0:
            return a
        cv2 = _cv2()
        return cv2.copyMakeBorder(a, 0, ph, 0, pw, cv2.BORDER_REPLICATE)

    @torch.no_grad()
    def __call__(self, src: Tensor, dst: Tensor) -> Tensor:
        """Flow src -> dst: ``[N, 3, H, W]`` x2 in [0, 1] -> ``[N, 2, H, W]`` float32 on src's device."""
        for name, t in (("src", src), ("dst", dst)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4 or t.shape[1] not in (1, 3):
                raise ValueError(f"{name} must be [N, 3, H, W] RGB in [0, 1], got {tuple(t.shape)}")
        if src.shape != dst.shape:
            raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} differ in shape")
        n, _, h, w = src.shape
        a_all, b_all = self._to_gray_u8(src), self._to_gray_u8(dst)
        out = np.empty((n, 2, h, w), dtype=np.float32)
        for i in range(n):
            flow = self._dis.calc(self._pad(a_all[i]), self._pad(b_all[i]), None)
            out[i] = flow[:h, :w].transpose(2, 0, 1)
        return torch.from_numpy(out).to(src.device)
