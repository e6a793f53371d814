"""`drdc predict`: score images outside the run store with its trained models.

loop (the verdict loop over the inputs), inputs (which files), settings (which fusion), predictor (the models and
the maps of one batch), outputs (table, CSV/JSON) and figures (one picture per image)."""
