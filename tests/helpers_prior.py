"""What the engine's pre-pass decides for the estimate (engine.refine.prior), for tests that compare a streamed run
with one whole-image estimate."""

from __future__ import annotations

import numpy as np

from engine.config import RunConfig
from engine.refine import prior


def engine_colours_and_sar(config: RunConfig) -> tuple[prior.SceneColours | None, np.ndarray | None]:
    """The scene's colours as the engine's pre-pass fits them, and its SAR on the optical grid in the network's
    units, read whole (what one whole-image estimate needs)."""
    from contextlib import ExitStack

    from rasterio.windows import Window

    from engine.align.inputs import read_optical
    from engine.progress import Progress
    from engine.stream.chunks import sar_on
    from engine.stream.scene import open_aligned_readers, open_scene_and_model, prepare_inputs

    with ExitStack() as stack:
        inp, model, _ = open_scene_and_model(config, None, stack, Progress(), [])
        prepare_inputs(config, inp, model)
        open_aligned_readers(config, inp, stack)
        win = Window(0, 0, inp.grid.width, inp.grid.height)
        _, x, _ = read_optical(inp.optical, inp.band_index, inp.optical_scale, win)
        assert inp.prior_input is not None
        return inp.prior_input.colours, sar_on(inp, win, x)
