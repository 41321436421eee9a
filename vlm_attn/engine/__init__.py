"""vlm_attn.engine"""
