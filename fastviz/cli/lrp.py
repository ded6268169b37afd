"""`fastviz lrp`: layer-wise relevance propagation maps of image files (signed, blue-white-red)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import image, io
from ..relevance import COMPOSITES, lrp
from .attribution import batches
from .common import add_model_args, add_out_arg, model_from_args, out_dir, parse_targets, slug


def register(sub) -> None:
    p = sub.add_parser("lrp", help="layer-wise relevance propagation maps (signed: red for, blue against)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--composite", default="epsilon_plus_flat", choices=COMPOSITES,
                   help="rules by layer kind (default epsilon_plus_flat; docs/methods.md compares them)")
    p.add_argument("--target", nargs="*", help="class index for all images, or one per image (default: top-1)")
    add_model_args(p)
    add_out_arg(p, "out/lrp")
    p.set_defaults(func=run)


def run(args) -> int:
    model = model_from_args(args)
    files = io._expand(args.paths)
    out = out_dir(args.out)
    target = parse_targets(args.target, len(files))
    report = {}
    for i, (chunk, x) in enumerate(batches(files, args.batch_size, "lrp")):
        t = target[i * args.batch_size:(i + 1) * args.batch_size] if isinstance(target, list) else target
        r = lrp(model, x, t, composite=args.composite)
        maps = r.maps.cpu()
        for j, f in enumerate(chunk):
            stem = slug(Path(f).stem)
            image.save_image(x[j], out / f"{stem}.png")
            image.save_image(image.heatmap(maps[j], colormap="bwr", normalize_mode="signed"),
                             out / f"{stem}_lrp.png")
            report[str(f)] = {"class": int(r.targets[j]), "logit": round(float(r.logits[j]), 5),
                              "conservation": round(float(r.conservation[j]), 5)}
    (out / "lrp.json").write_text(json.dumps({"composite": args.composite, "images": report}, indent=2))
    print(f"wrote {len(files)} LRP maps ({args.composite}) into {out}/")
    return 0
