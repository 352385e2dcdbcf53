"""iiet: numerical Transformers (IIET, E-IIET, PCformer, DLCL, Transformer++, weight sharing) for PyTorch.

Importing the package registers the models with HF ``AutoConfig`` / ``AutoModelForCausalLM`` (``model_type="iiet"``).
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModel

from .models import IIETConfig, IIETForCausalLM, IIETModel, parse_scheme

AutoConfig.register(IIETConfig.model_type, IIETConfig, exist_ok=True)
AutoModel.register(IIETConfig, IIETModel, exist_ok=True)
AutoModelForCausalLM.register(IIETConfig, IIETForCausalLM, exist_ok=True)
# Checkpoints carry an ``auto_map`` and a copy of the model code, so tools that only know transformers (the plain
# ``lm_eval`` CLI, ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``) load them too.
IIETConfig.register_for_auto_class()
IIETForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__version__ = "0.1.0"
__all__ = ["IIETConfig", "IIETForCausalLM", "IIETModel", "parse_scheme", "__version__"]
