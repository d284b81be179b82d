"""How precisely DIS finds the sub-pixel moves the learned upscaler is handed, and what each setting costs.

The learned upscaler moves each neighbour by the whole-pixel part of a DIS flow on the low-resolution
frames and hands the network the remainder, the sub-pixel phase. How near that phase is to the truth
decides how much the neighbours can add. On the held-out clips of ``quality.py`` (a virtual camera over
two photographs) the truth is known: ``vsr_core.synthetic.view_flow`` gives the exact flow between
any two views. This prints, for each DIS setting, the mean end-point error (low-resolution pixels,
4-pixel border left out) of the flows centre -> neighbour at 1 to 3 frames apart, per camera motion,
and the time per flow at 320x180 (a 1280x720 x4 output), the same process for every row.

    python bench/flow_precision.py                    # DIS medium (finest level 1, as the preset has it) and 0
    python bench/flow_precision.py --finest 2,1,0 --scale 2
"""
from __future__ import annotations

import argparse
import time

from common import REPO, machine_line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--finest", default="1,0", help="DIS finest pyramid levels to compare (medium's own is 1)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 4))
    p.add_argument("--images", default=str(REPO / "train_data" / "images"),
                   help="where the photographs are (fetched with pip if missing)")
    p.add_argument("--frames", type=int, default=16, help="frames per held-out clip")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from vsr_core.flow import DISEngine
    from vsr_core.synthetic import camera_path, render_views, view_flow
    from vsr_core.training.data import HELDOUT_IMAGES, fetch_images, heldout_views, load_images

    print(machine_line())
    levels = [int(v) for v in args.finest.split(",")]
    engines = {lv: DISEngine("medium", finest_scale=lv) for lv in levels}
    images = load_images(fetch_images(args.images, list(HELDOUT_IMAGES)), list(HELDOUT_IMAGES))
    s, b = args.scale, 4
    errors = {lv: {} for lv in levels}
    for image_name, img in images.items():  # the clips quality.py scores, each with its camera path
        for name, params, hr, lr in heldout_views({image_name: img}, s, args.frames):
            motion = name.rsplit("_", 1)[1]
            lr = lr.permute(0, 3, 1, 2)
            for c in range(3, args.frames - 3, 3):
                for k in (-3, -2, -1, 1, 2, 3):
                    truth = view_flow(img.shape[:2], hr.shape[1:3], params[c], params[c + k], scale=s)
                    for lv, engine in engines.items():
                        flow = engine(lr[c:c + 1], lr[c + k:c + k + 1])[0].numpy()
                        epe = np.linalg.norm((flow - truth)[:, b:-b, b:-b], axis=0).mean()
                        errors[lv].setdefault(motion, []).append(epe)
    # the time of one flow where a user's run spends it: 320x180 frames of a moving camera
    img = next(iter(images.values()))
    params = camera_path(8, "mixed", 1.0)
    clip = torch.from_numpy(render_views(img, (180, 320), params)).float().permute(0, 3, 1, 2) / 255
    ms = {}
    for lv, engine in engines.items():
        engine(clip[3:], clip[:5])  # warm
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            engine(clip[3:], clip[:5])
            runs.append((time.perf_counter() - t0) / 5 * 1000)
        ms[lv] = min(runs)

    motions = list(errors[levels[0]])
    print(f"\nDIS end-point error against the exact flow, x{s} low-resolution frames "
          f"({len(images)} photographs x {len(motions)} motions, LR pixels)")
    print("| DIS (medium preset) | " + " | ".join(motions) + " | mean | ms per flow at 320x180 | time ratio |")
    print("|---" * (len(motions) + 4) + "|")
    base = ms[levels[0]]
    for lv in levels:
        row = [float(np.mean(errors[lv][m])) for m in motions]
        mean = float(np.mean([e for m in motions for e in errors[lv][m]]))
        own = " (the preset's own)" if lv == 1 else " (full resolution)" if lv == 0 else ""
        print(f"| finest level {lv}{own} | " + " | ".join(f"{v:.3f}" for v in row)
              + f" | {mean:.3f} | {ms[lv]:.1f} | {ms[lv] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
