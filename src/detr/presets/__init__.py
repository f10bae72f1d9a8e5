"""Named option sets, one small module each (flat dicts of official flag names, as `config_from_flags` takes).

- `recipes`: what `--recipe NAME` sets (RECIPES, FAST_DEFAULTS, FROM_SCRATCH, FROM_WEIGHTS);
- `demo`: `detr demo`'s model, data and drawing threshold;
- `panoptic_demo`: `detr demo --masks`' two stages and data;
- `finetune`: what `--data DIR` starts from (detr_r50) and its schedule.
"""

from .demo import DEMO_DATA, DEMO_DRAW_THRESHOLDS, DEMO_PRESET
from .finetune import FINETUNE_PRESET
from .panoptic_demo import PANOPTIC_DEMO, PANOPTIC_DEMO_DATA, PANOPTIC_DEMO_MASKS
from .recipes import FAST_DEFAULTS, FROM_SCRATCH, FROM_WEIGHTS, RECIPES

__all__ = ["DEMO_DATA", "DEMO_DRAW_THRESHOLDS", "DEMO_PRESET", "FAST_DEFAULTS", "FINETUNE_PRESET", "FROM_SCRATCH",
           "FROM_WEIGHTS", "PANOPTIC_DEMO", "PANOPTIC_DEMO_DATA", "PANOPTIC_DEMO_MASKS", "RECIPES"]
