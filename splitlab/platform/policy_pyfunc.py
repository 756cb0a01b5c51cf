"""The code of the split policy's MLflow model (logged as code, never pickled; see
:mod:`splitlab.platform.policy_model`).

MLflow runs this file when it loads the model, with the model's ``code/`` folder (holding
``policy_net.py``) on ``sys.path``; it needs mlflow, numpy and safetensors, not splitlab, torch or Ray.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model


class SplitPolicyModel(mlflow.pyfunc.PythonModel):
    """Observation rows [N, F] -> split points k [N]: the greedy action of the exported policy network."""

    def load_context(self, context):  # no type hints: MLflow would read them as a schema
        from policy_net import load_net  # the model's code/ folder, or splitlab's own when splitlab logs it

        folder = Path(context.artifacts["run"])
        self.candidate_ks = np.asarray(json.loads((folder / "policy.json").read_text())["candidate_ks"])
        self.layers, self.tensors = load_net(folder)

    def predict(self, context, model_input, params=None):
        from policy_net import logits

        obs = np.asarray(model_input, dtype=np.float64)  # [N, F]
        return self.candidate_ks[logits(self.layers, self.tensors, obs).argmax(-1)]


set_model(SplitPolicyModel())
