"""The settings' registry, below the run store: the stages and what their entries hold (registry), the presets as
overrides of the stages' parameters (presets), equal settings spelled one way before they are keyed (settle), and
each parameter's flag, with which a stage's entry is spelled back as the command that makes it (commands).
Imports nothing of drdc but stages.errors; the store, the stages and the command line read it."""
