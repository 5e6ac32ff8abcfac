"""Optional integrations with training frameworks.

Each submodule imports its framework itself, so ``import mmrelearn`` never needs one:
``mmrelearn.integrations.lightning`` holds :class:`DiagnoseRelearnCallback` for PyTorch
Lightning (``pip install 'mmrelearn[lightning]'``).
"""
