"""Loading a CREMA-D-format clip from the prepared cache vs decoding it on every access.

Usage: python benchmarks/media_throughput.py [--clips 24] [--out benchmarks/results/media_throughput.json]

Writes CREMA-D-format media of CREMA-D's size (VideoFlash .flv, 480x360, 30 fps, 2.5 s of
moving synthetic frames; AudioWAV 16 kHz mono, 2.5 s of a chirp plus noise) into a temporary
folder, prepares the cache with the paper's settings (1 frame at 224x224, the ``crema_d``
spectrogram preset), then measures, side by side in one process, samples/s of (a) the cached
loader and (b) decoding each clip with PyAV + resampling + STFT (``decode_clip``) and turning
it into the same network inputs. The clips are synthetic: only their format and size matter.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch

from mmrelearn.data.cremad import list_cremad_clips, load_cremad, prepare_cremad
from mmrelearn.data.media import decode_clip
from mmrelearn.train.checkpoint import atomic_write_text

HERE = Path(__file__).resolve().parent
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def _write_clip(root: Path, name: str, k: int, seconds: float = 2.5) -> None:
    import av

    rng = np.random.default_rng(k)
    with av.open(str(root / "VideoFlash" / f"{name}.flv"), "w") as out:
        video = out.add_stream("flv", rate=30)
        video.width, video.height, video.pix_fmt = 480, 360, "yuv420p"
        base = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
        for t in range(int(30 * seconds)):
            img = np.roll(base, 4 * t, axis=1)  # moving texture
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)
    with wave.open(str(root / "AudioWAV" / f"{name}.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes((x * 32767).astype("<i2").tobytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--out", default=str(HERE / "results" / "media_throughput.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw, cache = Path(tmp) / "raw", Path(tmp) / "cache"
        (raw / "VideoFlash").mkdir(parents=True)
        (raw / "AudioWAV").mkdir()
        for k in range(args.clips):
            _write_clip(raw, f"{1001 + k // 6}_DFA_{EMOTIONS[k % 6]}_XX", k)
        t0 = time.perf_counter()
        prepare_cremad(str(raw), str(cache), progress=False)
        prepare_s = time.perf_counter() - t0
        loader = load_cremad(cache=str(cache), progress=False).dataset.load
        sources = list_cremad_clips(str(raw))
        n = len(sources)
        t0 = time.perf_counter()
        cached = [loader(i) for i in range(n)]
        cached_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = [loader.inputs(decode_clip(src, 1, 224, loader.cfg), i)
                   for i, src in enumerate(sources)]
        decode_s = time.perf_counter() - t0
    same = all(torch.equal(a[m], b[m]) for a, b in zip(cached, decoded) for m in a)
    out = {"clips": n, "prepare_s": round(prepare_s, 2),
           "cached_samples_per_s": round(n / cached_s, 1),
           "decode_samples_per_s": round(n / decode_s, 1),
           "cached_vs_decode": round(decode_s / cached_s, 1), "identical_inputs": same,
           "input_shapes": {m: list(x.shape) for m, x in cached[0].items()}}
    atomic_write_text(json.dumps(out, indent=2) + "\n", Path(args.out))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
