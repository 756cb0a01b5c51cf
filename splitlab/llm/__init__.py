"""The LLM side of splitlab: loading, the split, generation across it, corpora and evaluation."""
from splitlab.llm.loading import DEFAULT_MODEL, ModelNotAvailable, load_model, resolve_checkpoint
from splitlab.llm.package_files import MissingPackageFile
from splitlab.llm.split_model import Activation, SplitModel

__all__ = ["DEFAULT_MODEL", "Activation", "MissingPackageFile", "ModelNotAvailable", "SplitModel",
           "load_model", "resolve_checkpoint"]
