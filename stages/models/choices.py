"""The backbones drdc can build, as plain Python: importable without torch (the command line checks --backbone
against it at parse time; stages.models.backbone builds them)."""
from __future__ import annotations

SUPPORTED: tuple[str, ...] = (
    "tf_efficientnet_lite0",
    "efficientnet_b4",
    *(f"efficientnet_b{i}" for i in range(4)),
    *(f"tf_efficientnet_b{i}" for i in range(5)),
    *(f"tf_efficientnet_lite{i}" for i in range(1, 5)),
)
