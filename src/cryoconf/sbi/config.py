"""Typed, validated configuration of ``cryoconf sbi train`` (a YAML file; units in the key names).

The YAML has up to eight sections; every key is optional except ``templates.path``,
``image.box`` and ``image.apix_A``. Unknown keys and bad values raise
:class:`~cryoconf.errors.InputError` naming the key, the expected unit or range and
the fix. See ``configs/sbi_hsp90_box64.yaml`` for a documented example.

``templates``  the structural hypotheses: ``path`` (ensemble .npz with θ, PDB/mmCIF,
               or an MD topology with ``trajectory``), ``frames``, ``theta`` (a list,
               ``"rmsd"`` = aligned RMSD to the first template in Å, or ``"index"``;
               needed when the file carries no θ), ``mode`` (ca | ca+sc | allatom),
               ``center`` (first | each | none), ``amplitudes`` (topology | equal).
``image``      ``box`` (px), ``apix_A`` (Å/px), ``voltage_kV``, ``cs_mm`` (fixed),
               ``pad_factor`` (zero padding for the CTF), ``projector`` (point | pixel),
               ``snr_definition`` (box | mask), ``snr_mask_radius_px``; optionally
               ``simulation_box`` (px) and ``simulation_apix_A`` (Å/px): render the
               training particles at the data's sampling (padding, SNR and mask radius
               then refer to that grid) and resample them to ``box``/``apix_A`` as
               ``sbi infer`` resamples experimental particles.
``priors``     nuisance priors, each ``[min, max]`` drawn uniformly per particle
               (``snr`` log-uniformly): ``sigma_A`` (one Gaussian width per particle),
               ``defocus_A``, ``astigmatism_A`` (|U − V|, angle uniform in [0, 180)°),
               ``bfactor_A2``, ``amplitude_contrast``, ``snr``; ``shift_A`` is a single
               maximum: x and y uniform in [−shift_A, shift_A] Å. Pose: uniform on SO(3).
``posterior``  ``parameters``: ``[theta]`` plus optional nuisance dimensions
               (``log10_snr``, ``defocus_A``, ``sigma_A``, ``bfactor_A2``), each bounded to its prior range.
``embedding``  ``name`` (a registered embedding: ``cnn``, ``resnet18``, …) and ``params``;
               optionally ``average_over`` (C2, C4 or D4): the features are averaged over
               that group's rotations (and mirrors) of each image, which makes the
               posterior exactly invariant to them at |G| embeddings per image.
``flow``       neural spline flow: ``transforms``, ``hidden_features`` (list), ``bins``.
``training``   ``optimizer`` (adamw | adam), ``lr``, ``weight_decay``, ``clip_grad_norm``,
               ``batch_size``, ``steps``, ``validation_size``, ``validation_interval``,
               ``checkpoint_interval``, ``seed``, ``sim_chunk_size``.
``distillation`` optional: ``teacher`` (a checkpoint or run directory; null = none),
               ``symmetrize`` (learn from the teacher's D4-pooled posterior at the
               temperature of its run's symmetry.json), ``weight`` (of the teacher's
               term in the loss, in [0, 1]), ``samples`` (teacher draws per particle).
               See :mod:`cryoconf.sbi.distillation`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from cryoconf.errors import InputError

__all__ = [
    "SBIConfig", "TemplatesConfig", "ImageConfig", "PriorsConfig", "PosteriorConfig", "EmbeddingConfig",
    "FlowConfig", "TrainingConfig", "DistillationConfig", "load_config", "EXTRA_PARAMETERS",
]

# posterior dimensions beyond θ: name → (prior key, transform description)
EXTRA_PARAMETERS = {
    "log10_snr": "snr",
    "defocus_A": "defocus_A",
    "sigma_A": "sigma_A",
    "bfactor_A2": "bfactor_A2",
}


def _fail(key: str, msg: str) -> None:
    raise InputError(f"config key '{key}': {msg}")


def _number(key: str, value, *, unit: str = "", minimum=None, maximum=None, strict_min=False,
            integer: bool = False) -> float | int:
    what = "an integer" if integer else "a number"
    u = f" ({unit})" if unit else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                _fail(key, f"expected {what}{u}, got {value!r}; write e.g. {key.split('.')[-1]}: 1.0")
        else:
            _fail(key, f"expected {what}{u}, got {value!r}")
    if integer:
        if float(value) != int(value):
            _fail(key, f"expected an integer{u}, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if not math.isfinite(value):
        _fail(key, f"must be finite{u}, got {value!r}")
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        rel = ">" if strict_min else "≥"
        _fail(key, f"must be {rel} {minimum}{u}, got {value!r}")
    if maximum is not None and value > maximum:
        _fail(key, f"must be ≤ {maximum}{u}, got {value!r}")
    return value


def _range(key: str, value, *, unit: str, minimum=None, maximum=None, strict_min=False, below_max=False):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        _fail(key, f"expected a range [min, max] in {unit}, got {value!r}; write e.g. {key.split('.')[-1]}: [1, 2] "
                   "(a single number fixes the value)")
    lo = _number(key, value[0], unit=unit, minimum=minimum, maximum=maximum, strict_min=strict_min)
    hi = _number(key, value[1], unit=unit, minimum=minimum, maximum=maximum, strict_min=strict_min)
    if below_max and maximum is not None and hi >= maximum:
        _fail(key, f"must be < {maximum} ({unit}), got {hi!r}")
    if lo > hi:
        _fail(key, f"range [min, max] must have min ≤ max ({unit}), got [{lo}, {hi}]; swap the two values")
    return (lo, hi)


def _choice(key: str, value, choices) -> str:
    if value not in choices:
        _fail(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


@dataclass
class TemplatesConfig:
    path: str = ""
    trajectory: str | None = None
    frames: object = None
    theta: object = None  # None (from the file) | list | "rmsd" | "index"
    mode: str = "ca"
    center: str = "first"
    amplitudes: str = "topology"

    def validate(self) -> None:
        if not self.path or not isinstance(self.path, str):
            _fail("templates.path", "required: the ensemble .npz (with θ) or PDB/mmCIF/topology of the templates")
        if self.trajectory is not None and not isinstance(self.trajectory, str):
            _fail("templates.trajectory", f"expected a file path, got {self.trajectory!r}")
        if self.frames is not None and not isinstance(self.frames, (str, int, list)):
            _fail("templates.frames", f"expected 'start:stop:step', '0,5,7' or a list of ints, got {self.frames!r}")
        if isinstance(self.theta, str):
            _choice("templates.theta", self.theta, ("rmsd", "index"))
        elif isinstance(self.theta, list):
            self.theta = [float(_number(f"templates.theta[{i}]", t)) for i, t in enumerate(self.theta)]
        elif self.theta is not None:
            _fail("templates.theta", f"expected a list of θ values, 'rmsd' or 'index', got {self.theta!r}")
        _choice("templates.mode", self.mode, ("ca", "ca+sc", "allatom"))
        _choice("templates.center", self.center, ("first", "each", "none"))
        _choice("templates.amplitudes", self.amplitudes, ("topology", "equal"))


@dataclass
class ImageConfig:
    box: int = 0
    apix_A: float = 0.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    pad_factor: int = 1
    projector: str = "point"
    snr_definition: str = "box"
    snr_mask_radius_px: float | None = None
    simulation_box: int | None = None
    simulation_apix_A: float | None = None

    @property
    def render_grid(self) -> tuple[int, float]:
        """(box px, Å/px) the training particles are rendered at: ``simulation_box`` and
        ``simulation_apix_A`` when given (then resampled to ``box`` and ``apix_A`` as
        ``sbi infer`` resamples data), else the model's own grid."""
        if self.simulation_box is None:
            return self.box, self.apix_A
        return self.simulation_box, self.simulation_apix_A

    def validate(self) -> None:
        self.box = _number("image.box", self.box, unit="px", minimum=8, integer=True)
        if self.box % 2:
            _fail("image.box", f"must be even (px), got {self.box}; e.g. 64 or 128")
        self.apix_A = _number("image.apix_A", self.apix_A, unit="Å/px", minimum=0, strict_min=True)
        self.voltage_kV = _number("image.voltage_kV", self.voltage_kV, unit="kV", minimum=0, strict_min=True)
        self.cs_mm = _number("image.cs_mm", self.cs_mm, unit="mm", minimum=0)
        self.pad_factor = _number("image.pad_factor", self.pad_factor, minimum=1, maximum=4, integer=True)
        _choice("image.projector", self.projector, ("point", "pixel"))
        _choice("image.snr_definition", self.snr_definition, ("box", "mask"))
        if self.snr_mask_radius_px is not None:
            self.snr_mask_radius_px = _number("image.snr_mask_radius_px", self.snr_mask_radius_px, unit="px",
                                              minimum=0, strict_min=True)
        if (self.simulation_box is None) != (self.simulation_apix_A is None):
            _fail("image.simulation_box" if self.simulation_box is None else "image.simulation_apix_A",
                  "simulation_box (px) and simulation_apix_A (Å/px) go together: give both (the data's sampling) "
                  "or neither (render on the model's grid)")
        if self.simulation_box is not None:
            self.simulation_box = _number("image.simulation_box", self.simulation_box, unit="px", minimum=8,
                                          integer=True)
            if self.simulation_box % 2:
                _fail("image.simulation_box", f"must be even (px), got {self.simulation_box}; e.g. 128 or 256")
            self.simulation_apix_A = _number("image.simulation_apix_A", self.simulation_apix_A, unit="Å/px",
                                             minimum=0, strict_min=True)
            fov, model_fov = self.simulation_box * self.simulation_apix_A, self.box * self.apix_A
            if fov < model_fov * (1 - 1e-6):
                _fail("image.simulation_box", f"the simulated field of view ({self.simulation_box} px × "
                                              f"{self.simulation_apix_A} Å/px = {fov:g} Å) is smaller than the model's "
                                              f"({self.box} px × {self.apix_A} Å/px = {model_fov:g} Å); enlarge it")
            from cryoconf.data.preprocess import plan_resampling

            try:
                plan_resampling(self.simulation_box, self.simulation_apix_A, self.box, self.apix_A)
            except InputError as exc:
                _fail("image.simulation_apix_A", str(exc))


@dataclass
class PriorsConfig:
    sigma_A: tuple = (0.5, 5.0)
    defocus_A: tuple = (5000.0, 20000.0)
    astigmatism_A: tuple = (0.0, 0.0)
    bfactor_A2: tuple = (1.0, 100.0)
    amplitude_contrast: tuple = (0.1, 0.1)
    snr: tuple = (0.001, 0.5)
    shift_A: float = 0.0

    def validate(self) -> None:
        self.sigma_A = _range("priors.sigma_A", self.sigma_A, unit="Å", minimum=0, strict_min=True)
        self.defocus_A = _range("priors.defocus_A", self.defocus_A, unit="Å, positive = underfocus", minimum=0)
        self.astigmatism_A = _range("priors.astigmatism_A", self.astigmatism_A, unit="Å, |U − V|", minimum=0)
        if self.astigmatism_A[1] / 2 > self.defocus_A[0] and self.astigmatism_A[1] > 0:
            _fail("priors.astigmatism_A", f"max |U − V| ({self.astigmatism_A[1]} Å) exceeds twice the smallest "
                                          f"defocus ({self.defocus_A[0]} Å): V would be negative; lower it")
        self.bfactor_A2 = _range("priors.bfactor_A2", self.bfactor_A2, unit="Å²", minimum=0)
        self.amplitude_contrast = _range("priors.amplitude_contrast", self.amplitude_contrast,
                                         unit="fraction in [0, 1)", minimum=0, maximum=1, below_max=True)
        self.snr = _range("priors.snr", self.snr, unit="signal/noise variance, log-uniform; > 0",
                          minimum=0, strict_min=True)
        self.shift_A = _number("priors.shift_A", self.shift_A, unit="Å, maximum |shift| per axis", minimum=0)


@dataclass
class PosteriorConfig:
    parameters: list = field(default_factory=lambda: ["theta"])

    def validate(self) -> None:
        p = self.parameters
        if isinstance(p, str):
            p = [p]
        if not isinstance(p, list) or not p or p[0] != "theta":
            _fail("posterior.parameters", f"must be a list starting with 'theta', e.g. [theta, log10_snr], got {p!r}")
        for name in p[1:]:
            _choice("posterior.parameters", name, tuple(EXTRA_PARAMETERS))
        if len(set(p)) != len(p):
            _fail("posterior.parameters", f"lists a parameter twice: {p!r}")
        self.parameters = list(p)


@dataclass
class EmbeddingConfig:
    name: str = "cnn"
    params: dict = field(default_factory=dict)
    average_over: str | None = None  # C2 | C4 | D4: features averaged over the group's transforms of each image

    def validate(self) -> None:
        from cryoconf.sbi.embeddings import available_embeddings
        from cryoconf.sbi.symmetry import GROUPS

        _choice("embedding.name", self.name, tuple(available_embeddings()))
        if self.average_over in (None, False, "none"):
            self.average_over = None
        else:
            _choice("embedding.average_over", self.average_over, ("none", *GROUPS))
        if self.params is None:
            self.params = {}
        if not isinstance(self.params, dict):
            _fail("embedding.params", f"expected a mapping of keyword arguments, got {self.params!r}")
        for k in ("in_channels", "box"):
            if k in self.params:
                _fail(f"embedding.params.{k}", "is set from image.box; remove it")


@dataclass
class FlowConfig:
    transforms: int = 5
    hidden_features: list = field(default_factory=lambda: [256, 256])
    bins: int = 8

    def validate(self) -> None:
        self.transforms = _number("flow.transforms", self.transforms, minimum=1, maximum=64, integer=True)
        self.bins = _number("flow.bins", self.bins, minimum=2, maximum=256, integer=True)
        h = self.hidden_features
        if isinstance(h, int) and not isinstance(h, bool):
            h = [h]
        if not isinstance(h, list) or not h:
            _fail("flow.hidden_features", f"expected a list of layer widths, e.g. [256, 256], got {h!r}")
        self.hidden_features = [_number(f"flow.hidden_features[{i}]", v, minimum=1, integer=True)
                                for i, v in enumerate(h)]


@dataclass
class TrainingConfig:
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.01
    clip_grad_norm: float = 5.0
    batch_size: int = 256
    steps: int = 10000
    validation_size: int = 1024
    validation_interval: int = 200
    checkpoint_interval: int = 1000
    seed: int = 0
    sim_chunk_size: int | None = None
    lr_schedule: str = "constant"
    lr_final: float | None = None
    lr_decay_start: int = 0

    def validate(self) -> None:
        _choice("training.optimizer", self.optimizer, ("adamw", "adam"))
        self.lr = _number("training.lr", self.lr, unit="learning rate", minimum=0, strict_min=True, maximum=1)
        _choice("training.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        if self.lr_final is not None:
            self.lr_final = _number("training.lr_final", self.lr_final, unit="learning rate at the last step",
                                    minimum=0, maximum=1)
        self.lr_decay_start = _number("training.lr_decay_start", self.lr_decay_start, unit="step", minimum=0,
                                      integer=True)
        self.weight_decay = _number("training.weight_decay", self.weight_decay, minimum=0)
        self.clip_grad_norm = _number("training.clip_grad_norm", self.clip_grad_norm,
                                      unit="max gradient norm; 0 = no clipping", minimum=0)
        self.batch_size = _number("training.batch_size", self.batch_size, unit="particles", minimum=1, integer=True)
        self.steps = _number("training.steps", self.steps, unit="optimiser steps", minimum=0, integer=True)
        self.validation_size = _number("training.validation_size", self.validation_size, unit="particles",
                                       minimum=1, integer=True)
        self.validation_interval = _number("training.validation_interval", self.validation_interval, unit="steps",
                                           minimum=1, integer=True)
        self.checkpoint_interval = _number("training.checkpoint_interval", self.checkpoint_interval, unit="steps",
                                           minimum=1, integer=True)
        self.seed = _number("training.seed", self.seed, minimum=0, maximum=2**62, integer=True)
        if self.sim_chunk_size is not None:
            self.sim_chunk_size = _number("training.sim_chunk_size", self.sim_chunk_size, unit="particles",
                                          minimum=1, integer=True)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): a pure function of the step, so resuming
        needs no scheduler state. ``cosine`` holds ``lr`` until ``lr_decay_start`` and then follows half
        a cosine down to ``lr_final`` (default lr / 10) at the last step ``steps``."""
        if self.lr_schedule == "constant" or step < self.lr_decay_start:
            return self.lr
        final = self.lr / 10 if self.lr_final is None else self.lr_final
        t = min((step - self.lr_decay_start) / max(self.steps - self.lr_decay_start, 1), 1.0)
        return final + 0.5 * (self.lr - final) * (1.0 + math.cos(math.pi * t))


@dataclass
class DistillationConfig:
    teacher: str | None = None
    symmetrize: bool | str = True  # true: the D4 pool; false: the plain flow; or a group (C2, C4, D4)
    weight: float = 0.75
    samples: int = 32

    @property
    def enabled(self) -> bool:
        return self.teacher is not None

    def validate(self) -> None:
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher):
            _fail("distillation.teacher", f"expected a checkpoint.N.pt or run directory path, got {self.teacher!r}")
        from cryoconf.sbi.symmetry import GROUPS

        if not isinstance(self.symmetrize, bool) and self.symmetrize not in GROUPS:
            _fail("distillation.symmetrize", f"expected true (D4), false or one of {', '.join(GROUPS)}, "
                  f"got {self.symmetrize!r}")
        self.weight = _number("distillation.weight", self.weight,
                              unit="weight of the teacher's term; 0 = the true θ only, 1 = the teacher only",
                              minimum=0, maximum=1)
        self.samples = _number("distillation.samples", self.samples, unit="teacher draws per particle",
                               minimum=1, maximum=4096, integer=True)


_SECTIONS = {
    "templates": TemplatesConfig,
    "image": ImageConfig,
    "priors": PriorsConfig,
    "posterior": PosteriorConfig,
    "embedding": EmbeddingConfig,
    "flow": FlowConfig,
    "training": TrainingConfig,
    "distillation": DistillationConfig,
}


def _section(name: str, cls, values):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        _fail(name, f"expected a mapping of keys, got {values!r}")
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise InputError(f"config key '{name}.{key}' is unknown; known keys of '{name}': {', '.join(sorted(known))}")
    return cls(**copy.deepcopy(values))


@dataclass
class SBIConfig:
    """The whole ``sbi train`` configuration. Build with :meth:`from_dict` or :func:`load_config`."""

    templates: TemplatesConfig
    image: ImageConfig
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path | None = None) -> "SBIConfig":
        """Validate a nested mapping (as read from YAML). Relative template and teacher paths
        are resolved against ``base_dir`` (the config file's folder)."""
        if not isinstance(data, dict):
            raise InputError(f"the SBI config must be a mapping with sections {', '.join(_SECTIONS)}; got {type(data).__name__}")
        for key in data:
            if key not in _SECTIONS:
                raise InputError(f"config key '{key}' is unknown; the sections are {', '.join(_SECTIONS)}")
        for key in ("templates", "image"):
            if key not in data:
                raise InputError(f"config section '{key}' is missing; see configs/sbi_hsp90_box64.yaml for an example")
        parts = {name: _section(name, c, data.get(name)) for name, c in _SECTIONS.items()}
        conf = cls(**parts)
        if base_dir is not None:
            for attr in ("path", "trajectory"):
                value = getattr(conf.templates, attr)
                if value and not Path(value).is_absolute():
                    setattr(conf.templates, attr, str((Path(base_dir) / value).resolve()))
            teacher = conf.distillation.teacher
            if isinstance(teacher, str) and teacher and not Path(teacher).is_absolute():
                conf.distillation.teacher = str((Path(base_dir) / teacher).resolve())
        return conf.validate()

    def validate(self) -> "SBIConfig":
        for name in _SECTIONS:
            getattr(self, name).validate()
        for name in self.posterior.parameters[1:]:
            lo, hi = getattr(self.priors, EXTRA_PARAMETERS[name])
            if not lo < hi:
                _fail("posterior.parameters", f"'{name}' needs a prior range with min < max, but priors."
                                              f"{EXTRA_PARAMETERS[name]} is [{lo}, {hi}]; widen it or drop '{name}'")
        if self.image.snr_definition == "mask" and self.image.snr_mask_radius_px is None:
            self.image.snr_mask_radius_px = self.image.render_grid[0] / 2
        return self

    def to_dict(self) -> dict:
        d = asdict(self)

        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, list):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        d = plain(d)
        for key in ("simulation_box", "simulation_apix_A"):  # unset: omitted, so runs written before the
            if d["image"][key] is None:                      # option existed keep their config unchanged
                del d["image"][key]
        if d["embedding"]["average_over"] is None:
            del d["embedding"]["average_over"]
        if d["distillation"]["teacher"] is None:  # likewise: no distillation, no section
            del d["distillation"]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(path: str | Path, overrides: dict | None = None) -> SBIConfig:
    """Read and validate an SBI YAML config; ``overrides`` maps 'section.key' to a value."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: config file not found; check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        if not isinstance(data.get(section), dict):
            data[section] = {}
        data[section][key] = value
    try:
        return SBIConfig.from_dict(data, base_dir=path.parent)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
