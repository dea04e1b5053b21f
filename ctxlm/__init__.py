"""ctxlm: a recurrent ContextBlock trained alone (OACD diversity loss) feeding a TokenBlock language model."""

from ctxlm.errors import CtxlmError

__all__ = ["CtxlmError"]
