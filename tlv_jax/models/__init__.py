"""Model definitions: backbones (SigLIP, Qwen2, Phi-2), connectors and the TinyLLaVA-Video composition."""
