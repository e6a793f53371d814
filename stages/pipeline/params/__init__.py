"""Every stage's parameters, each setting declared once on its field (stages.config.settings): default, domain,
help, flag. Plain Python (no torch, numpy or zarr): the command line builds its options from these classes at parse
time, so `drdc --help` and an option error never load torch. The stages import their classes from here."""
from stages.pipeline.params.base import InferBaseParams, TrainBaseParams
from stages.pipeline.params.data import ExtractParams, IndexParams
from stages.pipeline.params.diffusion import InferDiffParams, TrainDiffParams
from stages.pipeline.params.fusion import FuseParams, ScoreParams, TuneParams
from stages.pipeline.params.vocab import OBJECTIVES, SCHEDULES, SOURCES, TASKS

__all__ = ["IndexParams", "ExtractParams", "TrainBaseParams", "InferBaseParams", "TrainDiffParams",
           "InferDiffParams", "FuseParams", "TuneParams", "ScoreParams", "OBJECTIVES", "SCHEDULES", "SOURCES",
           "TASKS"]
