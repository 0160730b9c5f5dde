"""Which cells a grid holds: (quant, attack, attack source, eps, defense with its parameters)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...attacks import attack_kind, draws_globally, is_black_box
from ...defenses import DEFENSES, defense_gradient, is_randomized
from ...models import quant_mode
from ..spec import EvaluateSpec
from .settings import AttackSetting, DefenseSetting

EPS_DIGITS = 10     # eps as a cell's key holds it: 8/255 from a float sum and from a fraction are one cell


def eps_key(eps):
    """eps rounded as every cell key rounds it: a float (Python's round), or a pandas column (its .round)."""
    return eps.round(EPS_DIGITS) if hasattr(eps, "iloc") else round(float(eps), EPS_DIGITS)


@dataclass(frozen=True)
class Cell:
    quant: str
    attack: str
    attack_source: str
    eps: float
    defense: str
    defense_setting: DefenseSetting     # the defense's full parameters (+ the defender's draws, randomized)
    # the attack's full parameters (+ how its gradient is taken: through the defense, adaptive; the STE twin)
    attack_setting: AttackSetting = field(default_factory=AttackSetting)
    threat: str = "oblivious"   # oblivious: the attacker differentiates the model; adaptive: model o defense
    quant_params: str = "{}"    # canonical JSON of what made the quantized model (int8_static: calibration_images)
    corruption: str = "none"    # CIFAR-10-C: the test images under this corruption (none: the test images)
    severity: int = 0           # ... at this severity (1-5; 0 with none)

    def key(self, trial_id: str, n: int, seed: int) -> tuple:
        """The cell's identity in the eval table (EVAL_KEY's order, settings as its columns spell them): never
        computed or written twice."""
        return (trial_id, self.quant, self.quant_params, self.attack, self.attack_setting.to_json(), self.attack_source,
                self.threat, eps_key(self.eps), self.defense, self.defense_setting.to_json(), n, seed, self.corruption,
                self.severity)

    @property
    def source_model(self) -> str:
        """The model the attacker differentiates: the evaluated one (self) or the FP32 one (transfer)."""
        return self.quant if self.attack_source == "self" else "fp32"


def defense_setting_of(name: str, overrides: dict[str, Any], draws: int = 1) -> DefenseSetting:
    """A defense's full parameters (defaults filled in): part of the cell's key. A randomized defense adds the
    defender's draws it is scored over (another number is another cell)."""
    return DefenseSetting(DEFENSES.resolve(name, overrides), draws if is_randomized(name) else None)


def attack_setting_of(attack) -> AttackSetting:
    """A grid's attack (spec) as its cells' setting: its own parameters, defaults filled in."""
    return AttackSetting.of_json(attack.params_json)


def adaptive_setting(setting: AttackSetting, defense: str, eot_samples: int, attack: str) -> AttackSetting:
    """An adaptive cell's attack setting names the gradient taken through the defense (and, through a randomized
    defense, the draws its expectation is taken over; an attack of the torchattacks zoo gets a fresh draw at every
    forward call instead, and says so)."""
    randomized = is_randomized(defense)
    zoo = randomized and draws_globally(attack)
    return setting.through_defense(defense_gradient(defense), eot_samples if randomized and not zoo else None, zoo)


def plan_cells(ev: EvaluateSpec) -> list[Cell]:
    """Every meaningful cell of the grid.

    - an int8 model has no input gradient: its white-box ('self') rows for eps > 0 attack its
      fake-quant twin (straight-through estimator, attack_params model_gradient: ste) and are scored
      on the real int8 model; a mode without a twin has no such row, never a faked one; a black-box attack
      (Square) queries the real int8 model itself, the model it is scored on;
    - on the fp32 model, source 'fp32' is the white-box row itself: recorded once, as 'self';
    - adaptive cells exist where there is an attack (eps > 0) and a defense to attack through
      (through 'none' the adaptive attacker is the oblivious one).
    """
    cells = []
    for attack in ev.attacks:
        for eps in ev.eps_of(attack):
            for source in ev.sources:
                for quant in ev.quant:
                    mode = quant_mode(quant)
                    # a model-free attack reads no model (one oblivious white-box row says it all); a black-box
                    # one queries the real int8 model
                    model_free = attack_kind(attack.name) == "model-free"
                    ste = (source == "self" and eps > 0 and not mode.has_input_grad and not model_free
                           and not is_black_box(attack.name))
                    if ste and mode.twin is None:
                        continue
                    if source == "fp32" and (quant == "fp32" or model_free):
                        continue
                    for threat in ev.threats:
                        for name, params in ev.defenses.items():
                            adaptive = threat == "adaptive"
                            if adaptive and (eps == 0 or name == "none" or model_free):
                                continue
                            setting = attack_setting_of(attack)
                            if adaptive:
                                setting = adaptive_setting(setting, name, eot_samples(ev, attack), attack.name)
                            if ste:
                                setting = setting.with_ste()
                            cells.append(Cell(quant, attack.name, source, float(eps), name,
                                              defense_setting_of(name, params, ev.defense_draws), setting, threat,
                                              quant_params_json(ev, quant)))
    return cells + corruption_cells(ev)


def corruption_cells(ev: EvaluateSpec) -> list[Cell]:
    """CIFAR-10-C: every quant mode under every defense, unattacked, on the corrupted images of each corruption and
    severity (labelled with the grid's first attack at eps 0, as a clean cell of the grid is)."""
    if ev.corruptions is None:
        return []
    attack = ev.attacks[0]
    return [Cell(quant, attack.name, "self", 0.0, name, defense_setting_of(name, params, ev.defense_draws),
                 attack_setting_of(attack), "oblivious", quant_params_json(ev, quant), corruption, severity)
            for corruption, severity in ev.corruptions.settings() for quant in ev.quant
            for name, params in ev.defenses.items()]


def eot_samples(ev: EvaluateSpec, attack) -> int:
    """The attacker's EOT draws through a randomized defense: evaluate.eot_samples, unless the attack sets its
    own (AutoAttack rand: 20, as its authors run it)."""
    own = attack_setting_of(attack).own.get("eot_iter") or 1
    return own if own > 1 else ev.eot_samples


def quant_params_json(ev: EvaluateSpec, quant: str) -> str:
    """What made a quant mode's model beyond its name: int8_static's calibration set size."""
    params = {"calibration_images": ev.calibration_images} if quant_mode(quant).needs_calibration else {}
    return json.dumps(params, sort_keys=True)


@dataclass(frozen=True)
class ImageSet:
    """Which images a cell is scored on: the clean ones (`CLEAN`), or those made by (source model, attack, eps),
    shared by every defense (oblivious) or made through one defense (adaptive: `threat`, `defense` and its
    parameters set). The engine makes each set once and judges every cell of it."""
    source: str = ""            # the model the attacker differentiates or queries ("": the clean images)
    attack: str = ""
    attack_setting: AttackSetting = field(default_factory=AttackSetting)
    eps: float = 0.0
    threat: str = "oblivious"
    defense: str = ""           # adaptive only: the defense the attacker differentiates through
    defense_setting: DefenseSetting | None = None

    @property
    def is_clean(self) -> bool:
        return not self.source

    @property
    def adaptive(self) -> bool:
        return self.threat == "adaptive"

    @property
    def gradient_source(self) -> tuple:
        """What a clean input gradient depends on: the source model, and (adaptive) the defense in front of it."""
        return (self.source, self.threat, self.defense, self.defense_setting) if self.adaptive else (self.source,)

    @property
    def shared(self) -> bool:
        """Made once for many cells: the clean images and the FP32 model's oblivious ones (they transfer)."""
        return self.is_clean or (self.source == "fp32" and not self.adaptive)

    @property
    def run_order(self) -> tuple:
        """Clean first; then per (source, attack, threat, defense) every eps in a row, so one single-step
        gradient (per defense, adaptive) serves them all."""
        through = (self.threat, self.defense, self.defense_setting.to_json()) if self.adaptive else ()
        return (not self.is_clean, (self.source, self.attack, self.attack_setting.to_json()), through, self.eps)


CLEAN = ImageSet()


def image_key(c: Cell) -> ImageSet:
    """The image set cell `c` is scored on."""
    if c.eps == 0:
        return CLEAN
    if c.threat == "adaptive":
        return ImageSet(c.source_model, c.attack, c.attack_setting, c.eps, c.threat, c.defense, c.defense_setting)
    return ImageSet(c.source_model, c.attack, c.attack_setting, c.eps)


def count_cells(ev: EvaluateSpec) -> int:
    return len(plan_cells(ev))
