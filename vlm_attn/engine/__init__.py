"""vlm_attn.engine: the attention implementation, hooks and per-call state that run attention methods.

Public for passes (code that runs its own forwards): `engine_of`, `unsteered`, `capturing`.
"""

from .api import capturing, engine_of, keep_text_tokens, lookahead, replaying, truncate_call, unsteered

__all__ = ["capturing", "engine_of", "keep_text_tokens", "lookahead", "replaying", "truncate_call", "unsteered"]
