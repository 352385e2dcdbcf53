"""The numerical-Transformer model family (one config, one model, a scheme module per numerical method)."""

from .configuration_iiet import (
    SCHEMES,
    DLCLScheme,
    EulerScheme,
    IIETConfig,
    ImplicitEulerScheme,
    PredictorCorrectorScheme,
    SchemeConfig,
    WeightSharedScheme,
    parse_scheme,
)
from .modeling_iiet import IIETForCausalLM, IIETModel, IIETOutput
from .schemes import SchemeOptions, SchemeOutput

__all__ = [
    "SCHEMES",
    "DLCLScheme",
    "EulerScheme",
    "IIETConfig",
    "IIETForCausalLM",
    "IIETModel",
    "IIETOutput",
    "ImplicitEulerScheme",
    "PredictorCorrectorScheme",
    "SchemeConfig",
    "SchemeOptions",
    "SchemeOutput",
    "WeightSharedScheme",
    "parse_scheme",
]
