"""vlm_attn.eval"""
