"""The run store and what every stage needs around it: keyed entries, locks, chunk claims, checkpoints, roll-back,
verification, fault points, torchrun helpers, presets, the stage registry and the command line of an entry."""
