"""Centre plans: which centres serve CT pretraining, multi-modal adaptation and continual stages."""
