"""Score new images with a run's trained models: the production path of index -> extract -> infer-base ->
infer-diff -> fuse -> score, applied to images that are not in the run store.

Every step calls the functions the stages use: `images.load_rgb` (decode + resize exactly as `index`),
`extract.images_to_tensor` + `backbone.load_backbone` (as `extract`), `train_base.load_model` + `residual_map`
(as `infer-base`), `infer_diff.image_heatmaps` with per-(image, c) generators (as `infer-diff`, heatmaps rounded
to float16 as the store keeps them) and `fusion`'s Eq 17-19 with the run's current `fuse` settings.

Image ids seed the diffusion noise: an image that is a record of the run's dataset gets its record index (so it
scores exactly as the pipeline scored it), any other image -(1 + 60 bits of the sha256 of its bytes) (stable
across calls, never equal to a record index).
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .anomaly_map import image_score
from .backbone import load_matching
from .cache import CHUNK, Entry, RunStore
from .common import check, resolve_device
from .errors import CacheMissError, ConfigError, DataError
from .extract import images_to_tensor
from .fusion import check_fusion
from .heatmaps import CrossFitStats, FusionSettings, array_name, default_settings, fuse_maps, select
from .validation import folds
from .geometry import to_original, valid
from .images import IMAGE_SUFFIXES, load_mask, load_rgb, to_model_space
from .infer_diff import InferDiffParams, image_heatmaps
from .masks import check_grid
from .presets import DEFAULT_PRESET, build
from .commands import command
from .infer_base import ResidualStats
from .residual import residual_map
from .train_base import load_model
from .train_diff import load_unet

_SKIP_DIRS = {"ground_truth"}  # MVTec/BTAD mask folders: never predicted on when a whole dataset folder is given


# ------------------------------------------------------------------------------------------------- inputs
def collect_images(inputs: list[Path]) -> list[Path]:
    """Files given, plus the image files under folders given (recursive, sorted; hidden files, non-images and
    ground_truth/ folders skipped). A missing path, a non-image file named explicitly or an input with no image
    at all is a DataError naming it."""
    found: list[Path] = []
    if not inputs:
        raise DataError("no image or folder given; pass IMAGE_OR_FOLDER...")
    for p in inputs:
        p = Path(p).expanduser()
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{p}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
            found.append(p)
            continue
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") or part in _SKIP_DIRS for part in f.relative_to(p).parts))
        if not files:
            raise DataError(f"{p}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        found.extend(files)
    return list(dict.fromkeys(found))


def content_id(path: Path) -> int:
    """A stable negative id from the file's bytes: record indices are >= 0, so the two never collide."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return -1 - int(digest[:15], 16)


@dataclass(frozen=True)
class Known:
    """What the run's index knows about an image given on the command line."""

    record: int | None  # record index when the file is one of the run's dataset images
    category: str | None
    defect: str | None  # ground truth ("good" or a defect name) of a dataset record
    mask: str | None  # its mask, relative to the data root


def identify(path: Path, index: Entry, category: str | None) -> Known:
    """Match a file to a record of the run's dataset (same resolved path); else guess the category from an
    MVTec-like path <category>/{train,test}/<defect>/<file> when that category exists in the run."""
    cats = set(index.attrs["categories"])
    if category is not None and category not in cats:
        raise ConfigError(f"--category: '{category}' is not a category of this run ({', '.join(sorted(cats))})")
    root = Path(index.params["root"])
    try:
        rel = path.resolve().relative_to(root).as_posix()
    except ValueError:
        rel = None
    if rel is not None:
        for i, r in enumerate(index.attrs["records"]):
            if r["path"] == rel:
                return Known(i, category or r["category"], r["defect"], r["mask"])
    parts = path.resolve().parts
    guess = parts[-4] if len(parts) >= 4 and parts[-3] in ("train", "test") and parts[-4] in cats else None
    return Known(None, category or guess, None, None)


# ------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class FuseOverrides:
    """Options that replace the run's fuse settings (None: keep)."""

    gamma: float | None = None
    filter: int | None = None
    t: tuple[int, ...] | None = None
    c: tuple[int, ...] | None = None
    l: tuple[int, ...] | None = None  # noqa: E741


def _fuse_settings(store: RunStore, preset: str) -> FusionSettings:
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
        return FusionSettings(q["gamma"], q["filter"], tuple(q["t"]), tuple(sorted(q["c"])), tuple(q["l"]),
                              q["spatio_temporal"], q["multiscale_base"], q["n_s"], q["test_time_condition"],
                              q["seed"], tuple(sorted(chains)), q.get("norm", "none"), q.get("init", "paper"),
                              q.get("distance", "pixel"), source=f"fuse {e.key}{stale}")
    d = build(InferDiffParams, "infer_diff", preset)
    s = default_settings(d.t, d.c, d.l, d.n_s, d.test_time_condition, d.seed,
                         source=f"preset {preset} (no fuse result in the run)")
    return replace(s, init=d.init)  # the preset's pixel maps, started as its infer-diff starts


def apply_overrides(s: FusionSettings, o: FuseOverrides) -> FusionSettings:
    """Replace what the options give, then resolve like `fuse` (spatio-temporal fusion off: last t, l = 1).
    A c keeps its infer-diff t-list as its chain unless --t is given (then every chain runs over --t)."""
    if o == FuseOverrides():
        return s
    if s.norm != "none":
        raise ConfigError(f"--gamma/--filter/--t/--c/--l: the run fuses normalised maps (norm {s.norm}) whose "
                          "statistics belong to its fuse settings; run `drdc fuse` (or `drdc tune`) with these "
                          "options first, then predict without them")
    known = dict(s.chains)
    t = tuple(sorted(set(o.t), reverse=True)) if o.t else s.t
    c = tuple(sorted(set(o.c))) if o.c else s.c
    ls = tuple(sorted(set(o.l))) if o.l else s.l
    default_chain = s.chains[0][1] if s.chains else t
    chains = tuple((v, t if o.t else known.get(v, default_chain)) for v in c)
    if not s.spatio_temporal:
        t, ls = (min(t),), (1,)
    return replace(s, gamma=o.gamma if o.gamma is not None else s.gamma,
                   filter=o.filter if o.filter is not None else s.filter, t=t, c=c, l=ls, chains=chains,
                   source=s.source + " + options")


def validate(s: FusionSettings, size: int) -> None:
    """ConfigError naming the option for settings the diffusion resolution cannot take."""
    check_fusion(s.gamma, s.filter)
    for c, chain in s.chains:
        check_grid(size, c, s.n_s)
        check(set(s.t) <= set(chain), "--t", f"every fused step must be in the t-list of c={c} {list(chain)}", s.t)
    for v in s.l:
        check(isinstance(v, int) and v >= 1 and size % v == 0, "--l", f"must divide the diffusion size {size}", v)
    check(s.distance == "pixel" or s.l == (1,), "--l", "feature maps have one scale: l = 1", s.l)


# ------------------------------------------------------------------------------------------------- predictor
@dataclass
class Batch:
    """Results for k images: maps at image size S."""

    h_base: np.ndarray  # (k, S, S) float32, H_base upsampled
    h_st: np.ndarray | None  # (k, S, S) float32, diffusion H_ST (Eq 17), None when base only
    h_out: np.ndarray  # (k, S, S) float32, what is scored
    scores: np.ndarray  # (k,) float32


class Predictor:
    """The run's trained models, loaded once; `run(images, ids)` scores a batch of decoded images.

    Raises CacheMissError naming the command when the run has no trained base model."""

    def __init__(self, store: RunStore, device: str = "auto", overrides: FuseOverrides = FuseOverrides(),
                 base_only: bool = False, weights: Path | None = None, preset: str | None = None) -> None:
        self.store = store
        require_trained(store)
        self.index = store.current("index")
        self.extract = store.current("extract")
        self.train_base = store.current("train_base")
        self.dev = resolve_device(device)
        self.size = int(self.index.params["image_size"])
        self.c_feat = int(self.extract.attrs["channels"])
        ep = self.extract.params
        self.backbone = load_matching(ep, weights).to(self.dev).eval()
        self.base = load_model(self.train_base, self.dev)
        # H_base as infer-base made it: Eq 2, or the run's residual Gaussians (--residual-norm mahalanobis)
        ib = store.get("infer_base", store.current_keys["infer_base"]) if "infer_base" in store.current_keys else None
        self.residual = ResidualStats.load(ib) if ib is not None else None
        self.notes: list[str] = []
        if ib is None:
            self.notes.append("no infer-base result in the run: H_base is Eq 2's L2 norm")
        elif self.residual is not None and ib.inputs.get("train_base") != self.train_base.key:
            raise CacheMissError(f"the residual Gaussians of infer-base {ib.key} belong to another base model than "
                                 f"the current {self.train_base.key}; refit them with "
                                 f"`{command('infer_base', store.name, ib.params)}`")
        self.pool = _score_pool(store)
        self.fusion: FusionSettings | None = None
        self.unet = None
        self.train_diff: Entry | None = None
        if base_only:
            self.notes.append("--base-only: base heatmap H_base only")
        elif "train_diff" not in store.current_keys:
            self.notes.append(f"no trained diffusion model in the run: base heatmap H_base only "
                              f"(train one with `drdc train-diff --run {store.name}`)")
        else:
            self.train_diff = store.current("train_diff")
            self.diff_size = int(self.train_diff.params["size"])
            self.fusion = apply_overrides(_fuse_settings(store, preset or store.attr("preset") or DEFAULT_PRESET),
                                          overrides)
            validate(self.fusion, self.diff_size)
            if self.fusion.uses_diffusion:
                self.unet = load_unet(self.train_diff, self.dev)
        self.stats = None
        if self.fusion is not None and self.fusion.norm != "none":
            e = store.get("fuse", store.current_keys["fuse"])
            self.stats = CrossFitStats.load(e)
            self._fold = folds(self.index.attrs["records"])  # a validation image: the other fold's statistics
            if self.stats is None:
                raise CacheMissError(f"the fuse result {e.key} has no normalisation statistics; rerun "
                                     f"`drdc fuse --run {store.name} --norm {self.fusion.norm}`")

    @property
    def mode(self) -> str:
        return "base" if self.fusion is None else "fuse"

    def settings(self) -> dict:
        """Everything a score depends on: a calibration holds only for the same settings."""
        d = {"mode": self.mode, "train_base": self.train_base.key, "extract": self.extract.key,
             "image_size": self.size, "pool": self.pool}
        if self.residual is not None:
            d["residual_channels"] = self.residual.channels
        if self.fusion is not None:
            d.update(train_diff=self.train_diff.key, fusion=self.fusion.as_dict())
        return d

    @torch.inference_mode()
    def run(self, images: np.ndarray, ids: np.ndarray, categories: list[str | None] | None = None,
            valid: np.ndarray | None = None) -> Batch:
        """images (k, S, S, 3) uint8 at the run's image size, ids (k,) int64 (record index or content id),
        categories (for normalised fusion: each category's own statistics; None: the mean over categories),
        valid (k, S, S) bool: the pixels that show the image (index --resize pad; None: all)."""
        f_in = self.backbone(images_to_tensor(images, self.dev))
        cats = list(categories) if categories is not None else [None] * len(images)
        f_out = self.base(f_in)
        h_base = (residual_map(f_in, f_out) if self.residual is None  # Eq 2, (k, fs, fs)
                  else self.residual.heatmap(f_in, f_out, cats)).cpu()
        h_diff = self._diffusion(images, ids) if self.unet is not None else None
        stats = (self.stats.per_row(cats, [self._fold.get(int(i)) for i in ids]) if self.stats is not None
                 else None)
        hb, h_st, h_out = fuse_maps(h_base, h_diff, self.size, self.fusion, self.c_feat, stats)
        scores = image_score(h_out, self.pool, None if valid is None else torch.from_numpy(valid))
        return Batch(hb.numpy(), None if h_st is None else h_st.numpy(), h_out.numpy(), scores.numpy())

    def _diffusion(self, images: np.ndarray, ids: np.ndarray) -> torch.Tensor:
        """(k, K, S_d, S_d) float32: the selected heatmaps, computed as infer-diff does (the c sharing a t-list
        in one batch) and rounded through float16 as the store keeps them."""
        s = self.fusion
        x = to_model_space(images, self.diff_size)
        by_chain: dict[tuple[int, ...], list[int]] = {}
        for c, chain in s.chains:
            by_chain.setdefault(chain, []).append(c)
        per_c: dict[int, torch.Tensor] = {}
        for chain, cs in by_chain.items():
            p = InferDiffParams(t=chain, c=tuple(cs), l=s.l, n_s=s.n_s, test_time_condition=s.test_time_condition,
                                seed=s.seed, init=s.init, distance=s.distance)
            maps = image_heatmaps(self.unet, p, x, ids, sorted(cs), self.diff_size, self.dev, self.backbone,
                                  self.size)[array_name(s)]
            for c, m in maps.items():  # (k, n_t * n_l, S_d, S_d), rounded as the store keeps them
                per_c[c] = select(m.cpu().half(), {"t": list(chain), "l": list(s.l)}, s)
        return torch.cat([per_c[c] for c in sorted(per_c)], 1)


def _score_pool(store: RunStore) -> int:
    """The pooling kernel of the run's scores (16 unless `score --pool` said otherwise)."""
    if "score" in store.current_keys:
        e = store.get("score", store.current_keys["score"])
        if e is not None:
            return int(e.params.get("pool", 16))
    return 16


# ------------------------------------------------------------------------------------------------- predict
@dataclass
class Prediction:
    path: Path
    category: str | None
    score: float
    threshold: float | None
    verdict: str  # "anomalous" | "normal" | "uncalibrated"
    truth: str | None  # ground truth of a dataset record ("good" or the defect)
    image: np.ndarray  # (S, S, 3) uint8 as scored
    h_base: np.ndarray
    h_st: np.ndarray | None
    h_out: np.ndarray
    gt_mask: np.ndarray | None  # (S, S) uint8 ground truth of a dataset record with a mask
    pixel_threshold: float | None
    pixel_normal: float | None = None  # median calibration-normal pixel (the pictures' colour scale)
    picture: Path | None = None
    seconds: float = 0.0  # scoring wall time per image of its batch (pictures not included)
    orig: tuple[int, int] | None = None  # (width, height) of the file
    resize: str = "squash"  # the run's index --resize: how the image became the square

    def shown(self) -> dict[str, np.ndarray | None]:
        """image, maps and ground truth as a user sees the file: its own aspect (the longer side S). Squashed
        images are unsquashed, the fill of padded ones cut away, a center crop's lost borders read NaN."""
        s = self.image.shape[0]
        if self.orig is None or self.resize == "squash" and self.orig[0] == self.orig[1]:
            return {"image": self.image, "h_base": self.h_base, "h_st": self.h_st, "h_out": self.h_out,
                    "gt_mask": self.gt_mask}
        w, h = self.orig
        w, h = max(1, round(w * s / max(w, h))), max(1, round(h * s / max(w, h)))
        back = lambda m: None if m is None else to_original(m, w, h, self.resize)  # noqa: E731
        rgb = np.stack([np.nan_to_num(back(self.image[..., i].astype(np.float32))) for i in range(3)], -1)
        gt = back(self.gt_mask)
        return {"image": rgb.round().clip(0, 255).astype(np.uint8), "h_base": back(self.h_base),
                "h_st": back(self.h_st), "h_out": back(self.h_out),
                "gt_mask": None if gt is None else (np.nan_to_num(gt) >= 0.5).astype(np.uint8)}

    def row(self) -> dict:
        return {"path": str(self.path), "category": self.category or "", "score": float(self.score),
                "threshold": "" if self.threshold is None else float(self.threshold), "verdict": self.verdict,
                "truth": self.truth or "", "picture": "" if self.picture is None else str(self.picture),
                "seconds": round(self.seconds, 4)}


def predict(pred: Predictor, paths: list[Path], thresholds, category: str | None = None, progress: bool = True,
            on_batch=None) -> list[Prediction]:
    """Score every path in chunks of CHUNK images. thresholds: a calibrate.Thresholds or None (uncalibrated).
    on_batch(list[Prediction]) is called after each chunk (pictures are written there, so memory stays flat)."""
    from tqdm import tqdm

    out: list[Prediction] = []
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for a in range(0, len(paths), CHUNK):
            t0 = time.perf_counter()
            chunk = paths[a : a + CHUNK]
            known = [identify(p, pred.index, category) for p in chunk]
            resize = pred.index.params.get("resize", "squash")
            imgs, origs = zip(*(load_rgb(p, pred.size, resize) for p in chunk))
            ids = np.array([k.record if k.record is not None else content_id(p) for p, k in zip(chunk, known)],
                           dtype=np.int64)
            shows = (np.stack([valid(w, h, pred.size, resize) for w, h in origs]) if resize == "pad" else None)
            b = pred.run(np.stack(imgs), ids, [k.category for k in known], shows)
            dt = (time.perf_counter() - t0) / len(chunk)
            root = Path(pred.index.params["root"])
            batch = []
            for j, (p, k) in enumerate(zip(chunk, known)):
                thr = thresholds.image_threshold(k.category) if thresholds is not None else None
                verdict = "uncalibrated" if thr is None else ("anomalous" if b.scores[j] > thr else "normal")
                gt = load_mask(root / k.mask, origs[j], pred.size, resize) if k.mask else None
                batch.append(Prediction(p, k.category, float(b.scores[j]), thr, verdict, k.defect, imgs[j],
                                        b.h_base[j], None if b.h_st is None else b.h_st[j], b.h_out[j], gt,
                                        thresholds.pixel_threshold(k.category) if thresholds is not None else None,
                                        thresholds.pixel_normal_level(k.category) if thresholds is not None else None,
                                        seconds=dt, orig=origs[j], resize=resize))
            if on_batch is not None:
                on_batch(batch)
            for q in batch:  # keep the table, drop the maps
                q.image = q.h_base = q.h_st = q.h_out = q.gt_mask = None  # type: ignore[assignment]
            out.extend(batch)
            bar.update(len(chunk))
    return out


def display_names(paths: list[Path]) -> list[str]:
    """Paths relative to the images' common folder (just the name for a single image): short table rows."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return [p.resolve().relative_to(common).as_posix() for p in paths]


def picture_names(paths: list[Path]) -> list[str]:
    """Unique, readable PNG names: the stem, prefixed by as many parent folders as it takes to be unique."""
    depth = 1
    while True:
        names = ["_".join([*p.parent.parts[len(p.parent.parts) - depth + 1 :], p.stem]) if depth > 1 else p.stem
                 for p in paths]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths):
            break
        depth += 1
    if len(set(names)) != len(names):  # identical paths cannot happen (deduplicated); symlinks might
        names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
    return [f"{n}.png" for n in names]


def require_trained(store: RunStore) -> None:
    """A clear error before any model loads when the base model is missing."""
    if "train_base" not in store.current_keys:
        raise CacheMissError(f"the run {store.name} has no trained base model; run "
                             f"`drdc train-base --run {store.name}` (after index and extract) first")
