"""The OCR baseline of bench/containers.py: RapidOCR in a bare loop, inside the ocr-rapidocr image.

Mounted read-only into the image and run with its Python (entrypoint
override). The engine comes from the image's own ``entrypoint.make_engine``
with the same (default) params the platform run uses, so both sides run one
engine configuration. Only the loop is timed, after the same warm-up the SDK
does: each sample's end is noted, and, when a lines file is given, one short
line is appended and flushed there, so that the host times this loop with the
same watcher it times the platform's predictions.jsonl with. Prints one JSON
line: {"n", "span_s", "intervals_s"} (end of sample k minus end of sample k-1,
from the 2nd on, timed inside).

    python /bench/ocr_bare_loop.py /data/manifest.jsonl <n> [<lines file>]
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, "/opt/hyperbench")

import entrypoint  # the image's module, found through the path above


def main() -> int:
    manifest, n = Path(sys.argv[1]), int(sys.argv[2])
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][:n]
    paths = [str(manifest.parent / r["image"]) for r in rows]
    params: dict[str, object] = {}
    entrypoint.warmup(params)
    engine = entrypoint.engine(params)
    done_at = []
    with contextlib.ExitStack() as stack:
        lines: IO[str] | None = None
        if len(sys.argv) > 3:
            lines = stack.enter_context(open(sys.argv[3], "w", encoding="utf-8"))
        for k, p in enumerate(paths):
            engine(p)
            done_at.append(time.perf_counter())
            if lines is not None:
                lines.write(f'{{"k": {k}}}\n')
                lines.flush()
    # Sample k's time = its end minus sample k-1's end: what the platform side sees from the host.
    intervals = [b - a for a, b in itertools.pairwise(done_at)]
    print(json.dumps({"n": len(paths), "span_s": done_at[-1] - done_at[0], "intervals_s": intervals}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
