"""Applications on a run's cached results and trained models: predict, calibrate, ablate, bound, report, pictures,
the HTML report and export."""
