"""Stage 3 — tile → network → blend, in chunks.

:mod:`.pipeline` drives a run (open → plan → stream → result); :mod:`.chunks` is what happens to one chunk of the
tile grid (read, predict, blend, keep clear pixels); :mod:`.tiling`, :mod:`.prefetch`, :mod:`.accel`,
:mod:`.device`, :mod:`.memory`, :mod:`.malloc`, :mod:`.tta` and :mod:`.composite` are its parts.
"""
