"""Workflows built on the engine: data sets and their loading (images, text, the embedded digits), evaluation
(accuracy, retention, embedding agreement), fine-tuning with distillation, the rate sweep with its tables and
figures, the prune report, and the demos. The engine (`vbp.calibrate`, `vbp.select`, `vbp.prune`, ...) imports
nothing from here; submodules load when first used (`vbp.workflows.data`)."""

import importlib

MODULES = ("data", "demo", "digits", "distill", "evaluate", "export", "figures", "finetune", "generation", "images",
           "minilm", "report", "sweep", "teacher_text", "text", "text_demo", "unreadable")


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
