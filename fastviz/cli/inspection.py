"""`fastviz filters | embed`: first-layer filter grids and 2-D maps of the penultimate features."""

from __future__ import annotations

from pathlib import Path


from .. import embedding, image, inspection
from .common import add_model_args, add_out_arg, model_from_args, out_dir, slug


def register(sub) -> None:
    p = sub.add_parser("filters", help="the first convolution's filters as a picture")
    add_model_args(p)
    p.add_argument("--layer", default=None, help="an RGB nn.Conv2d by dotted name (default: the first conv)")
    p.add_argument("--normalize", choices=inspection.NORMALIZE, default="per_filter",
                   help="per_filter (default: each filter's own range) or shared (one range: relative strength)")
    p.add_argument("--scale", type=int, default=None, help="pixels per weight (default: a filter >= 24 px)")
    p.add_argument("--nrow", type=int, default=None, help="filters per row")
    add_out_arg(p, "out/filters")
    p.set_defaults(func=run_filters)

    p = sub.add_parser("embed", help="map images to 2-D by the network's features (t-SNE or PCA)")
    p.add_argument("paths", nargs="+", help="image files or folders, or 'demo' for the built-in demo set")
    add_model_args(p)
    p.add_argument("--method", choices=embedding.METHODS, default="tsne")
    p.add_argument("--layer", default=None, help="feature layer (default: the classifier's input)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell", type=int, default=48, help="thumbnail size in the map, pixels")
    p.add_argument("--per-photo", type=int, default=40, help="demo only: views per sample photo")
    add_out_arg(p, "out/embed")
    p.set_defaults(func=run_embed)


def run_filters(args) -> int:
    model = model_from_args(args)
    grid = inspection.filter_grid(model, args.layer, normalize=args.normalize, scale=args.scale,
                                   nrow=args.nrow)
    n, _, kh, kw = inspection.filters(model, args.layer, normalize=args.normalize).shape
    path = image.save_image(grid, out_dir(args.out) / f"filters_{slug(model.name)}.png")
    print(f"{model.name}: {n} filters of 3x{kh}x{kw} ({args.normalize}); wrote {path}")
    return 0


def run_embed(args) -> int:
    model = model_from_args(args)
    demo = args.paths == ["demo"] and not Path("demo").exists()
    names = sources = None
    if demo:
        from ..demo_data import demo_set

        images, sources, names = demo_set(per_photo=args.per_photo)
    else:
        images = args.paths
    e = embedding.embed(model, images, method=args.method, layer=args.layer, batch_size=args.batch_size,
                        perplexity=args.perplexity, seed=args.seed, progress=True, names=names)
    out = out_dir(args.out)
    stem = f"{args.method}_{slug(model.name)}" + ("_demo" if demo else "")
    written = [image.save_image(e.thumbnail_map(cell=args.cell), out / f"{stem}_map.png"),
               e.to_csv(out / f"{stem}.csv")]
    if e.predictions is not None:
        written.insert(1, image.save_image(e.scatter(), out / f"{stem}_scatter.png"))
    if demo:
        groups = [n.split("/")[0] for n in e.names]
        written.insert(2, image.save_image(e.scatter(groups=groups), out / f"{stem}_scatter_photo.png"))
        pixels = embedding.reduce(images, args.method, args.perplexity, args.seed)
        k = 5
        net_score = embedding.neighbour_agreement(e.coords, sources, k)
        pix_score = embedding.neighbour_agreement(pixels, sources, k)
        print(f"{k}-NN agreement of the source photo in the 2-D {args.method} map of {len(e)} views: "
              f"network features {net_score:.3f}, raw pixels {pix_score:.3f}")
    print(f"{len(e)} images, {e.features.shape[1]}-d features -> {args.method}; wrote "
          + ", ".join(str(p) for p in written))
    return 0
