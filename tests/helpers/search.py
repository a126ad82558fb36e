"""A search space file at the ci profile over the main suite, with changes."""

from __future__ import annotations

import yaml

SPLIT = "data.split=[0.5,0.25,0.25]"  # the ci cohort's 4 adaptation patients: 2 train, 1 val, 1 test


def space_file(tmp_path, cohort, name="space", **changes):
    doc = {
        "description": "ci search",
        "suite": "main",
        "method": "pemma-lora",
        "profile": "ci",
        "seeds": [0],
        "set": [SPLIT, f"data.root={cohort}"],
        "objectives": [{"metric": "val_dice/ctpet/mean", "direction": "maximize"}],
        "params": {"adapter.rank": {"low": 1, "high": 16, "log": True}},
        "sampler": {"name": "tpe", "seed": 0},
        "trials": 3,
    }
    doc.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
