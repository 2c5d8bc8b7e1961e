"""Stage 1 of the data path — what the user gave → an opened raster.

Products as analysts download them (Sentinel-1 GRD SAFE → σ⁰ VRT in :mod:`.s1`, Sentinel-2 SAFE in :mod:`.s2`,
split VV/VH, UDM2/SCL masks) are resolved to dataset names by :mod:`.resolve`; :mod:`.raster` opens and checks them;
:mod:`.bounds` makes the ``--bounds`` window; :mod:`.dates`, :mod:`.normalise` (units and scaling),
:mod:`.landcover`, :mod:`.masks`, :mod:`.metric_grid` and :mod:`.gdal_errors` are the facts about inputs that every
later stage shares. Nothing here knows about grids other than the file's own, tiles or networks.
"""
