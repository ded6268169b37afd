"""Dataset examples: images/s of the scan against the forward-only floor, and bytes held over 5,000 images.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest bench/test_bench_examples.py --benchmark-only -s

The scan (`fastviz.examples.scan.scan`, what `dataset_examples` runs between its one-time
checks and the receptive-field probe) reads 128 JPEGs of the demo crops from a folder at batch
32, decoding in 1 or 2 DataLoader workers (0: in the main process, for reference), forward stopped at `_blocks.10`, top-9 of all 112
channels kept. Its floor, timed in the same run and interleaved round by round (`paired`), is
the network's forward alone on the same 128 images already decoded, stopped at the same layer,
batch 32, no_grad: decoding, batching and the top-k are what the ratio charges to the scan.
`extra_info` records images/s, the ratio (target >= 0.9) and the one-time cost of the rest of
the call (layer check, receptive-field probe).

The memory test scans 5,000 images (64 px, so that it takes seconds) and samples the process's
resident set (and its workers') as it goes: the top-k state is a few (C, k) tensors, so the
bytes held must not grow with the images read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import fastviz as fv
from fastviz.atlas.distributed import Dist
from fastviz.cli.common import tune_malloc
from fastviz.examples.scan import scan
from fastviz.examples.source import Source
from fastviz.hooks import session
from fastviz.render import layer_shape
from conftest import paired

LAYER, BATCH, N, K = "_blocks.10", 32, 128, 9
ROUNDS = 7  # a round is about 4 s + 4 s on the 2-core CPU; the machine is shared, so more rounds


@pytest.fixture(scope="module")
def lite0():
    return fv.load_model(device="cpu")


def _write_jpegs(folder: Path, images: torch.Tensor) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=90)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """128 JPEGs at 224: demo crops (7 photos x 40 views, the first 128), as a user's folder would hold them."""
    from fastviz.demo_data import demo_set

    folder = tmp_path_factory.mktemp("examples_bench") / "photos"
    _write_jpegs(folder, demo_set().images[:N])
    return folder


def _scan(m, source, channels, workers):
    return scan(m, source, [LAYER], {LAYER: channels}, K, "max", batch_size=BATCH, num_workers=workers,
                dev=torch.device("cpu"), d=Dist(), checkpoint=None, every=50, force=False, settings={},
                progress=None)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_scan_against_the_forward_floor(benchmark, lite0, photos, workers):
    source = Source(photos, 224)
    decoded = fv.load_images(photos)  # the floor's input, decoded once
    C = layer_shape(lite0, LAYER, 224)[0]

    def floor():
        with session(lite0) as s, torch.no_grad():
            for a in range(0, N, BATCH):
                s.forward(decoded[a:a + BATCH], [LAYER], stop=True)

    r = paired(benchmark, lambda: _scan(lite0, source, list(range(C)), workers), floor, rounds=ROUNDS)
    t = time.perf_counter()
    fv.dataset_examples(lite0, decoded[:1], layer=LAYER, k=1)  # one image: the call's fixed costs
    once = time.perf_counter() - t
    states, skipped, read = r["fn"]
    assert read == N and not skipped and states[LAYER]["indices"].shape == (C, K)
    ratio = r["floor_s"] / r["fn_s"]
    benchmark.extra_info.update(workers=workers, batch=BATCH, images=N, threads=torch.get_num_threads(),
                                malloc_tuned=tune_malloc(), scan_images_per_s=round(N / r["fn_s"], 2),
                                floor_images_per_s=round(N / r["floor_s"], 2), ratio_to_floor=round(ratio, 3),
                                floor_times=[round(x, 3) for x in r["floor_times"]],
                                call_fixed_cost_s=round(once, 2))
    print(f"\nworkers {workers}: scan {N / r['fn_s']:.1f} img/s, floor {N / r['floor_s']:.1f} img/s, "
          f"ratio {ratio:.3f}; fixed cost of a call {once:.2f} s")


def _rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children_rss_kib() -> int:
    me, total = os.getpid(), 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    total += _rss_kib(p)
            except (OSError, ValueError, IndexError):
                continue
    return total


def test_bytes_held_do_not_grow_over_5000_images(lite0, tmp_path):
    images, side = 5000, 64
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(images, 3, 8, 8, generator=gen)
    _write_jpegs(tmp_path / "many", torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear"))
    samples: list[tuple[int, int, int]] = []

    def sample(done, total):
        samples.append((done, _rss_kib(), _children_rss_kib()))

    ex = fv.dataset_examples(lite0, tmp_path / "many", layer=LAYER, k=K, size=side, batch_size=64,
                             num_workers=2, progress=sample)
    assert ex.images == images
    # after the first 1,000 images (allocator and workers warmed up) to the end
    warm = [s for s in samples if s[0] >= 1000]
    main_growth = warm[-1][1] - warm[0][1]
    workers_growth = warm[-1][2] - warm[0][2]
    print(f"\nRSS main {warm[0][1] / 1024:.0f} -> {warm[-1][1] / 1024:.0f} MiB, max "
          f"{max(s[1] for s in warm) / 1024:.0f}; workers {warm[0][2] / 1024:.0f} -> {warm[-1][2] / 1024:.0f} MiB "
          f"(images {warm[0][0]} -> {warm[-1][0]})")
    from fastviz.examples.topk import TopK
    state = TopK(len(ex.channels), K, "cpu").nbytes()
    print(f"top-k state: {state} bytes for {len(ex.channels)} channels x k={K}, whatever the images")
    assert main_growth < 32 * 1024, f"the main process grew {main_growth / 1024:.0f} MiB over {images} images"
    assert workers_growth < 32 * 1024, f"the workers grew {workers_growth / 1024:.0f} MiB"
