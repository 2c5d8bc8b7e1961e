"""Stage 4 — what works beside or after the network.

The non-learned baselines (:mod:`.baselines`: flat, fill), the colour anchor (:mod:`.colour_anchor`), scene
adaptation (:mod:`.scene_adapt`) with the synthetic clouds it trains on (:mod:`.synthetic_clouds`, also the training
package's generator) and the reference-free scene check (:mod:`.scene_check`), and the stripe check
(:mod:`.stripes`).
"""
