"""Quality-gate verdicts, measures and preprocessed tiles of a set of images, for comparing two code versions.

Usage (once per source tree, then compare the two outputs):
    PYTHONPATH=OLD/src python experiments/quality_verdicts.py old.json IMAGES...
    PYTHONPATH=NEW/src python experiments/quality_verdicts.py new.json IMAGES...
    python experiments/quality_verdicts.py --compare old.json new.json
Each run writes ``X.json`` (per image: gate verdict, reason, measures, SHA-256 of the tile) and ``X.npz`` (the
tiles of ``pipeline.prepare``, the path the cache builder and ``Predictor`` use, and of ``preprocess_image``
on the eagerly read image). ``--compare`` prints the images whose verdict or tiles differ and the largest
tile difference. Issue 18 used the 322 mini-MIAS films (/work/shared/data/mini-mias/images/*.png) and a
6-patient synthetic cohort; issue 19 the same plus the benchmark's 3328x2560 DICOMs.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def record(out: str, files: list[str]) -> None:
    from mammolens.data.cache import PreprocessCfg
    from mammolens.io import read_image
    from mammolens.pipeline.prepare import prepare
    from mammolens.transforms.breast import preprocess_image
    from mammolens.transforms.quality import QualityCfg, check_image

    cfg = PreprocessCfg(size=224)
    res, tiles = {}, {}
    for i, f in enumerate(files):
        im = read_image(f)
        q = check_image(im.pixels)
        tile, _ = preprocess_image(im.pixels, cfg)
        p = prepare(f, cfg, QualityCfg())
        prepared = p.pixels if p.pixels is not None else np.zeros((0, 0), np.uint16)
        res[f] = {"ok": q.ok, "reason": q.reason, "measures": {k: round(v, 4) for k, v in q.measures.items()},
                  "prepare_status": p.status, "tile_sha": hashlib.sha256(tile.tobytes()).hexdigest(),
                  "prepared_sha": hashlib.sha256(prepared.tobytes()).hexdigest()}
        tiles[f"t{i}"], tiles[f"p{i}"] = tile, prepared
    Path(out).write_text(json.dumps({"files": files, "v": res}))
    np.savez_compressed(Path(out).with_suffix(".npz"), **tiles)
    print(f"{len(res)} images, {sum(v['ok'] for v in res.values())} pass the gate")


def compare(a: str, b: str) -> int:
    ja, jb = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    ta, tb = np.load(Path(a).with_suffix(".npz")), np.load(Path(b).with_suffix(".npz"))
    if ja["files"] != jb["files"]:
        print("the two runs read different files")
        return 2
    bad, max_diff = 0, 0
    for i, f in enumerate(ja["files"]):
        va, vb = ja["v"][f], jb["v"][f]
        keys = ("ok", "reason", "measures", "prepare_status")
        if any(va[k] != vb[k] for k in keys):
            bad += 1
            print(f"verdict differs: {f}: {[va[k] for k in keys]} vs {[vb[k] for k in keys]}")
        for t in ("t", "p"):
            x, y = ta[f"{t}{i}"].astype(np.int64), tb[f"{t}{i}"].astype(np.int64)
            if x.shape != y.shape:
                bad += 1
                print(f"tile shape differs: {f}")
            elif x.size:
                max_diff = max(max_diff, int(np.abs(x - y).max()))
    n = len(ja["files"])
    print(f"{n} images: {n - bad} same verdicts and tile shapes; largest tile difference {max_diff} (uint16)")
    return int(bad > 0 or max_diff > 0)


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    record(sys.argv[1], sys.argv[2:])
