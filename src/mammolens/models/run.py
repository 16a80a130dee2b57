"""The old import path of the run folder's model and loaders: everything now lives in ``mammolens.run``
(``run.model``: ``RunModel`` and its heads; ``run.folder``: reading, writing, verifying run folders).
Kept so that ``from mammolens.models.run import load_run`` keeps working."""

from __future__ import annotations

from mammolens.run.folder import (  # noqa: F401  (re-exported)
    LoadedRun,
    load_checkpoint,
    load_run,
    read_checkpoint,
)
from mammolens.run.model import (  # noqa: F401  (re-exported)
    HEAD_METHODS,
    RunModel,
    build_run_model,
    zeroshot_head,
)
from mammolens.tasks import resolve_task  # noqa: F401  (re-exported: the old import path)
