"""The reasoner as an MLflow Model: a pyfunc whose artifact is the reasoner checkpoint folder.

    model = mlflow.pyfunc.load_model("models:/tart-reasoner@champion")
    p = model.predict({"x_context": xc, "y_context": yc, "x_query": xq})   # (B,k,d), (B,k), (B,q,d) -> (B,q)

`predict` runs the reasoner itself (`Reasoner.predict_proba`): all q queries of each
episode in one pass, each conditioned on its k context pairs. The checkpoint is loaded
from `model.safetensors` + `config.json`, strictly (`load_reasoner`): no pickle. The
wrapper object MLflow stores holds no state; loading it imports this module, so the
project (`pipeline`) must be installed where the model is loaded.

`SIGNATURE` is the model's input/output schema; `pipeline.registry` logs and registers it.
"""

from __future__ import annotations

import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Schema, TensorSpec

ARTIFACT = "reasoner"  # the key of the checkpoint folder among the model's artifacts
INPUTS = ("x_context", "y_context", "x_query")

# d may be below the trained d (zero-padded), k and q vary: every axis but the rank is free.
SIGNATURE = ModelSignature(
    inputs=Schema([
        TensorSpec(np.dtype(np.float32), (-1, -1, -1), "x_context"),  # (B, k, d) context points
        TensorSpec(np.dtype(np.float32), (-1, -1), "y_context"),  # (B, k) labels in {0, 1}
        TensorSpec(np.dtype(np.float32), (-1, -1, -1), "x_query"),  # (B, q, d) queries
    ]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1), "p")]),  # (B, q) P(label = 1)
)


class ReasonerPyfunc(PythonModel):
    """pyfunc flavour of a TART reasoner checkpoint (see the module docstring)."""

    # The input is a mapping of tensors, validated against SIGNATURE; MLflow's type-hint validation
    # cannot express it (and would warn on every class definition that it has no hints).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from .reasoner import load_reasoner  # imports torch; the strict safetensors loader

        self.reasoner = load_reasoner(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):
        missing = [k for k in INPUTS if k not in model_input]
        if missing:
            raise ValueError(f"reasoner model input lacks {missing}: expected a mapping with {', '.join(INPUTS)}")
        return self.reasoner.predict_proba(*(np.asarray(model_input[k]) for k in INPUTS))


if __name__ != "pipeline.reasoner_model":
    # MLflow runs this file as the logged model's code ("models from code", no pickle): hand it an
    # instance of the library's class, so the model and `pipeline.reasoner_model` share one class.
    from mlflow.models import set_model

    from pipeline.reasoner_model import ReasonerPyfunc as _LibraryPyfunc

    set_model(_LibraryPyfunc())
