"""Cohorts: the HECKTOR-layout reader, the synthetic generator, splits and MONAI pipelines."""
