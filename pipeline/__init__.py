"""TART on Ray: a synthetic-trained reasoner composed with frozen backbones.

Public API (imported lazily so `import pipeline` stays cheap):
    load_reasoner(path=None)   -> Reasoner with predict_proba(x_context, y_context, x_query)
    TartClassifier(backbone=...) -> scikit-learn style few-shot classifier
"""

__all__ = ["load_reasoner", "TartClassifier"]


def __getattr__(name):
    if name == "load_reasoner":
        from .reasoner import load_reasoner

        return load_reasoner
    if name == "TartClassifier":
        from .classifier import TartClassifier

        return TartClassifier
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
