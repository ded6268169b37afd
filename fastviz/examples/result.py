"""`Examples`: the top-k dataset images of every channel of one layer, their crops, and saving them.

Files written by `Examples.save(out)` (the atlas's layout: a unit's files sit beside its picture):

    out/examples.json                   per layer: settings, images read, skipped items (and why)
    out/examples.jsonl                  one JSON line per unit (target "_blocks.10/0005")
    out/_blocks.10/0005_e0.png          crop of the unit's best image (its receptive field)
    out/_blocks.10/0005_e0_act.png      the same crop with the unit's activation as an overlay
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import FastvizError
from ..hooks import session
from ..image import save_image
from ..io import atomic_write
from ..models import Model
from .source import Source

EXAMPLES_MANIFEST = "examples.jsonl"
EXAMPLES_SETTINGS = "examples.json"
OVERLAY_ALPHA = 0.45
CHANNEL_CHUNK = 64  # channels whose images are decoded together when saving (bounded memory)


def unit_name(layer: str, channel: int, channels: int) -> str:
    """The unit's stable id, as the atlas names it: "_blocks.10/0005"."""
    return f"{layer}/{channel:0{max(4, len(str(channels - 1)))}d}"


@dataclass
class Examples:
    """The dataset images that excite each channel of `layer` most, best first.

    Rows are channels of the layer: `indices[c]`, `scores[c]` are channel c's (k,) image indices
    and scores; a channel that was not scanned has index -1 and score nan.

    Attributes:
        layer: the layer's dotted name.
        channels: the channels scanned.
        k: examples per channel (at most the number of images read).
        score: "max", "mean" or (y, x) (a neuron's value).
        indices: (C, k) long, image indices in the data's order (a folder: files sorted by name).
        scores: (C, k) float32.
        positions: (C, k, 2) long, (y, x) in the layer's map of the crop centre.
        boxes: (C, k, 4) long, the receptive field (top, left, bottom, right) in input pixels.
        names: the name of every image (a folder: file names).
        skipped: (index, reason) of every item that could not be read.
        images: images read.
        map_size, image_size: (h, w) of the layer's map and of the scanned images.
        field_size: (rows, cols) of the receptive field of one position (clipped to the image).
    """

    layer: str
    channels: list[int]
    k: int
    score: object
    indices: torch.Tensor
    scores: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    names: list[str]
    skipped: list[tuple[int, str]]
    images: int
    map_size: tuple[int, int]
    image_size: tuple[int, int]
    field_size: tuple[int, int]
    settings: dict = field(default_factory=dict, repr=False)
    _model: Model | None = field(default=None, repr=False)
    _source: Source | None = field(default=None, repr=False)

    def _channel(self, c) -> int:
        try:
            c = int(c)
        except (TypeError, ValueError):
            raise FastvizError(f"c: expected a channel index, got {c!r:.40}") from None
        if c not in self._rows:
            raise FastvizError(f"c: channel {c} of {self.layer!r} was not scanned (scanned: "
                               f"{self.channels[0]}..{self.channels[-1]}, {len(self.channels)} channels)")
        return c

    @property
    def _rows(self) -> set[int]:
        return set(self.channels)

    def windows(self, c: int) -> torch.Tensor:
        """(k, 4) crop windows: the receptive field's full size, centred on the box, kept inside the image."""
        H, W = self.image_size
        fh, fw = self.field_size
        b = self.boxes[c]
        cy, cx = (b[:, 0] + b[:, 2]) // 2, (b[:, 1] + b[:, 3]) // 2
        top = (cy - fh // 2).clamp(0, H - fh)
        left = (cx - fw // 2).clamp(0, W - fw)
        return torch.stack([top, left, top + fh, left + fw], 1)

    def crops(self, c: int, *, overlay: bool = False) -> torch.Tensor:
        """(k, 3, fh, fw) the receptive field around each of channel c's maxima, best first.

        Args:
            c: a scanned channel.
            overlay: blend the channel's activation map (upsampled, min-max per image) over it.
        """
        c = self._channel(c)
        if self._source is None:
            raise FastvizError("c: these examples were loaded without their images; crops are in the saved folder")
        imgs = self._source.load(self.indices[c].tolist())
        if overlay:
            imgs = self._overlays(imgs, self._activations(imgs)[:, c])
        return torch.stack([img[:, t:b, l:r] for img, (t, l, b, r) in zip(imgs, self.windows(c).tolist())])

    def _activations(self, imgs: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """(N, C, h, w) of the layer for images (N, 3, H, W), on the CPU, in batches."""
        m = self._model
        out = []
        with session(m, no_inplace=True) as s, torch.no_grad():
            for a in range(0, len(imgs), batch):
                acts, _ = s.forward(imgs[a:a + batch].to(m.device), [self.layer], stop=True)
                out.append(acts[self.layer].float().cpu())
        return torch.cat(out)

    def _overlays(self, imgs: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Each (h, w) map, upsampled and min-max scaled, blended over its image."""
        from ..image import overlay

        maps = F.interpolate(maps[:, None], size=imgs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return overlay(imgs.cpu(), maps, alpha=OVERLAY_ALPHA)

    def records(self) -> list[dict]:
        """One manifest line per scanned channel (what `save` writes to examples.jsonl)."""
        C = self.indices.shape[0]
        out = []
        for c in self.channels:
            target = unit_name(self.layer, c, C)
            ex = []
            for j in range(self.k):
                i = int(self.indices[c, j])
                ex.append({"image": i, "name": self.names[i], "score": float(self.scores[c, j]),
                           "position": self.positions[c, j].tolist(), "box": self.boxes[c, j].tolist(),
                           "file": f"{target}_e{j}.png", "overlay": f"{target}_e{j}_act.png"})
            out.append({"target": target, "layer": self.layer, "index": c, "score": _score_name(self.score),
                        "examples": ex})
        return out

    def save(self, out: str | os.PathLike) -> Path:
        """Write the crops (plain and with the activation), examples.jsonl and examples.json into `out`.

        Every file is written whole (temporary name + rename) and the manifests last, so a killed
        save leaves the previous manifests; the same call again writes it all.

        Returns:
            The path of examples.jsonl.
        """
        if not isinstance(out, (str, os.PathLike)):
            raise FastvizError(f"out: expected a directory path, got {type(out).__name__}")
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise FastvizError(f"out: expected a directory, got the file {str(out)!r}")
        if self._source is None:
            raise FastvizError("out: these examples were loaded without their images")
        (out / self.layer).mkdir(parents=True, exist_ok=True)
        recs = self.records()
        by_target = {r["target"]: r for r in recs}
        for a in range(0, len(self.channels), CHANNEL_CHUNK):
            chans = self.channels[a:a + CHANNEL_CHUNK]
            wanted = sorted({int(i) for c in chans for i in self.indices[c].tolist()})
            imgs = self._source.load(wanted)
            acts = self._activations(imgs)  # each image once, however many units it serves
            row = {i: r for r, i in enumerate(wanted)}
            for c in chans:
                rows = [row[int(i)] for i in self.indices[c].tolist()]
                sel = imgs[rows]
                both = torch.cat([sel, self._overlays(sel, acts[rows, c])])
                wins = self.windows(c).tolist() * 2
                files = [e[key] for key in ("file", "overlay") for e in by_target[unit_name(self.layer, c, self.indices.shape[0])]["examples"]]
                for img, (t, l, b, r), name in zip(both, wins, files):
                    save_image(img[:, t:b, l:r], out / name)  # whole or not at all
        # Other layers' lines in the folder stay (one folder can hold the examples of several layers).
        kept = [r for r in _read_jsonl(out / EXAMPLES_MANIFEST) if r.get("layer") != self.layer]
        with atomic_write(out / EXAMPLES_MANIFEST, fsync=True) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept + recs))
        info = {"settings": self.settings, "images": self.images, "k": self.k,
                "map_size": list(self.map_size), "image_size": list(self.image_size),
                "field_size": list(self.field_size),
                "skipped": [{"index": i, "name": self.names[i], "reason": why} for i, why in self.skipped]}
        try:
            layers = json.loads((out / EXAMPLES_SETTINGS).read_text()).get("layers", {})
        except (FileNotFoundError, json.JSONDecodeError, AttributeError):
            layers = {}
        layers[self.layer] = info
        with atomic_write(out / EXAMPLES_SETTINGS, fsync=True) as tmp:
            tmp.write_text(json.dumps({"layers": layers}, indent=1, sort_keys=True))
        return out / EXAMPLES_MANIFEST


def _score_name(score) -> str:
    return score if isinstance(score, str) else f"neuron {score[0]},{score[1]}"


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in out if isinstance(r, dict)]
