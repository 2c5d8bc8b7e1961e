"""Fine-tune a trained model on the user's own archive of one area (``python -m engine finetune``, issue 14).

No public Align-CR weights exist and a model trained on a few dozen public patches will never know a user's
landscape, but every analyst has an archive of their own area: optical acquisitions (some cloudy, some clear) and
Sentinel-1 scenes. This package turns such an archive into training data with the acquisition-layout index of
:mod:`training.layout` (Cresson et al. 2022) and fine-tunes the bundled model on it with the training loop of
:mod:`training.train`:

* :mod:`training.finetune.config` — the settings (one dataclass);
* :mod:`training.finetune.samples` — index the archive, pair cloudy/clear/SAR patches (real pairs) and clear/SAR
  patches (synthetic-cloud pairs), hold out spatial blocks for validation, write the split CSVs;
* :mod:`training.finetune.scores` — the validation table: the model before and after, the flat and fill baselines
  and the cloudy input, inside and outside the cloud, real and synthetic pairs apart;
* :mod:`training.finetune.run` — the whole run: checks first (nothing trains on a bad archive or towards an
  unwritable output), then the index, the base model's scores, training within the budget, and the output weights
  with their model card, rewritten (atomically) each time the held-out score improves, so a cancel keeps the best.
"""
