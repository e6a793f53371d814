"""The settings, below the run store: how a setting is declared once on its Params field (settings) with its
domain (domains), the stages and what their entries hold (registry), the presets as overrides of the settings'
defaults (presets), equal settings spelled one way before they are keyed (settle), and each setting's flag, with
which a stage's entry is spelled back as the command that makes it (commands).
Imports nothing of drdc but stages.errors; the store, the stages and the command line read it."""
