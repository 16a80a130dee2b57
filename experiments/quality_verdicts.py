"""Quality-gate verdicts, measures and preprocessed tiles of a set of images, for comparing two code versions.

Usage (once per source tree, then compare the two JSON files):
    PYTHONPATH=OLD/src python experiments/quality_verdicts.py old.json IMAGES...
    PYTHONPATH=NEW/src python experiments/quality_verdicts.py new.json IMAGES...
Issue 18 used the 322 mini-MIAS films (../shared/data/mini-mias/images/*.png) and a 6-patient synthetic cohort.
"""

import json
import sys

import numpy as np

from mammolens.data.cache import PreprocessCfg
from mammolens.io import read_image
from mammolens.transforms.breast import preprocess_image
from mammolens.transforms.quality import check_image

out, tiles = {}, []
for f in sys.argv[2:]:
    im = read_image(f)
    q = check_image(im.pixels)
    tile, _ = preprocess_image(im.pixels, PreprocessCfg(size=224))
    out[f] = [q.ok, q.reason, {k: round(v, 4) for k, v in q.measures.items()}]
    tiles.append(int(tile.astype(np.int64).sum()))
json.dump({"v": out, "tiles": tiles}, open(sys.argv[1], "w"))
print(f"{len(out)} images, {sum(v[0] for v in out.values())} pass the gate")
