"""Stage 2 — every input on the optical grid, normalised.

:mod:`.reader` reads any input window by window on the optical image's grid (``AlignedReader``); :mod:`.inputs`
opens the roles a model declares (SAR in :mod:`.sar`, DEM in :mod:`.dem`, other dates in :mod:`.temporal`) and
reads their windows; :mod:`.cloudmask` detects clouds where no mask was given.
"""
