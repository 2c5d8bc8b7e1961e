"""Stage 5 — what a run writes: the atomic GeoTIFF writer (:mod:`.writer`), provenance tags (:mod:`.provenance`),
NDVI (:mod:`.ndvi`) and the metrics (:mod:`.metrics`) the report and the scene check score with."""
