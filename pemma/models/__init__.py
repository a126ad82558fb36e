"""Networks: backbones, the PEMMA wrapper, fusion baselines, and the peft glue."""
