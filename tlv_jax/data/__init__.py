"""Data: video frame reading (`frames`), SigLIP preprocessing (`preprocess`), a synthetic video-QA generator
(`synthetic`), conversation templates and the Grain loaders."""
