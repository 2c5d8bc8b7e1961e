"""Training for every registered model: the Align-CR paper's and the official code's recipes, DSen2-CR with CARL,
and the recipe of the bundled ``aligncr-lite`` weights.

``python -m training.train --config training/configs/<recipe>.toml`` trains (resumable, DDP through torchrun);
``python -m training.evaluate --weights W --data D`` scores a weights file next to the identity baseline.
Models are built only through :func:`engine.models.build_model` and written only through
:func:`engine.models.weights.save`, so what training produces is exactly what the engine and the plugin load.
"""
