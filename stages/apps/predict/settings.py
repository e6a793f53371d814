"""Which fusion `drdc predict` applies: the run's current fuse settings (or the preset's when the run has no
fuse result), with some of fuse's settings replaced (OVERRIDES: `drdc predict --gamma ...`) and checked against
the diffusion resolution."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from stages.apps.choices import OVERRIDES
from stages.config.settings import settings_of
from stages.errors import CacheMissError, ConfigError, Step, check
from stages.method.masks import check_grid
from stages.pipeline.heatmaps import FusionSettings, default_settings
from stages.pipeline.infer_diff import InferDiffParams
from stages.pipeline.selection import last_step_only
from stages.store.cache import RunStore
from stages.config.presets import build


def fuse_settings(store: RunStore, preset: str) -> FusionSettings:
    """The current fuse entry's resolved params (with its infer-diff entries' t-lists), or, when the run has a
    diffusion model but no fuse result, the preset's infer-diff defaults with fuse's default gamma and filter."""
    if "fuse" in store.current_keys:
        try:
            e, stale = store.current("fuse"), ""
        except CacheMissError:  # e.g. the base model was retrained since: its settings still say what to fuse
            e, stale = store.get("fuse", store.current_keys["fuse"]), " (its maps are stale; the settings apply)"
            if e is None or not e.is_complete:
                raise
        q = e.params
        chains = []
        for name, key in e.inputs.items():
            if name.startswith("infer_diff@"):
                d = store.get("infer_diff", key)  # gone: the chain runs over the fused steps
                chains.append((int(name.split("=")[1]), tuple(d.params["t"]) if d is not None else tuple(q["t"])))
        names = settings_of(FusionSettings)
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in q.items() if k in names}
        return FusionSettings(**known, chains=tuple(sorted(chains)), source=f"fuse {e.key}{stale}")
    d = build(InferDiffParams, "infer_diff", preset)
    s = default_settings(d.t, d.c, d.l, d.n_s, d.test_time_condition, d.seed,
                         source=f"preset {preset} (no fuse result in the run)")
    return replace(s, init=d.init)  # the preset's pixel maps, started as its infer-diff starts


def apply_overrides(s: FusionSettings, o: Mapping[str, Any]) -> FusionSettings:
    """Replace what the options give, then resolve like `fuse` (spatio-temporal fusion off: last t, l = 1).
    A c keeps its infer-diff t-list as its chain unless t is given (then every chain runs over that t)."""
    unknown = set(o) - set(OVERRIDES)
    if unknown:  # a caller's bug, not a user's setting
        raise ValueError(f"not replaceable here: {sorted(unknown)}")
    if not o:
        return s
    if s.norm != "none":
        raise ConfigError((f"the run fuses normalised maps (norm {s.norm}) whose statistics belong to its fuse "
                           "settings; run ", Step("fuse"), " (or ", Step("tune"), ") with these options first, then "
                           "predict without them"), "gamma/filter/t/c/l")
    known = dict(s.chains)
    t = tuple(sorted(set(o["t"]), reverse=True)) if o.get("t") else s.t
    c = tuple(sorted(set(o["c"]))) if o.get("c") else s.c
    ls = tuple(sorted(set(o["l"]))) if o.get("l") else s.l
    default_chain = s.chains[0][1] if s.chains else t
    chains = tuple((v, t if o.get("t") else known.get(v, default_chain)) for v in c)
    if not s.spatio_temporal:
        t, ls = last_step_only(t)
    return replace(s, gamma=o.get("gamma", s.gamma), filter=o.get("filter", s.filter), t=t, c=c, l=ls,
                   chains=chains, source=s.source + " + options")


def validate(s: FusionSettings, size: int) -> None:
    """ConfigError naming the option for settings the diffusion resolution cannot take (the settings' own
    domains FusionSettings checked when it was made)."""
    for c, chain in s.chains:
        check_grid(size, c, s.n_s)
        check(set(s.t) <= set(chain), "t", f"every fused step must be in the t-list of c={c} {list(chain)}", s.t)
    for v in s.l:
        check(isinstance(v, int) and v >= 1 and size % v == 0, "l", f"must divide the diffusion size {size}", v)
    check(s.distance == "pixel" or s.l == (1,), "l", "feature maps have one scale: l = 1", s.l)
