"""Peak resident memory of one streamed training epoch over N synthetic documents.

    python scripts/measure_stream_rss.py 20000 200000 [--workdir DIR]

Writes N small documents (an 8x8 PNG and a short text each) as WebDataset shards of 10,000, then
trains one epoch of the ``clip`` recipe on ``score-fusion-tiny-random`` from the stream (2 reader
processes, batch 256) in a fresh process per N, and prints the peak RSS of the training process
and of its largest reader.  Flat memory means the two N give about the same peaks.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

RUN = r"""
import json, resource, sys, time
from solar.train import TrainConfig, train
t0 = time.perf_counter()
s = train(TrainConfig(recipe="clip", model="score-fusion-tiny-random", data=sys.argv[1],
                      val_data=[sys.argv[1] + "/00000.tar"], out_dir=sys.argv[2], epochs=1,
                      batch_size=256, stream=True, data_workers=2, progress=False, val_max=0,
                      warmup_steps=1))
print(json.dumps({"steps": s["steps"], "docs": s["docs"], "seconds": time.perf_counter() - t0,
                  "rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_reader_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_shards(folder: Path, n: int, per: int = 10_000) -> None:
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(0, n, per):
        with tarfile.open(folder / f"{s // per:05d}.tar", "w") as tar:
            for i in range(s, min(n, s + per)):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
                for name, data in ((f"{i:09d}.png", buf.getvalue()),
                                   (f"{i:09d}.txt", f"document {i} colour {i % 7}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="+", type=int)
    ap.add_argument("--workdir", default="/tmp/solar-stream-rss")
    a = ap.parse_args()
    for n in a.sizes:
        data = Path(a.workdir) / f"docs-{n}"
        if not data.is_dir():
            write_shards(data, n)
        out = Path(a.workdir) / f"run-{n}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        res = subprocess.run([sys.executable, "-c", RUN, str(data), str(out)], check=True,
                             capture_output=True, text=True)
        print(json.dumps({"n": n, **json.loads(res.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
