"""
What keeps a run safe around the training loop: pre-flight checks of its inputs (`preflight`), complete checkpoints
(`checkpoints`), the weight files it loads (`weight_files`) and the generation state that makes a resume exact
(`resume`).
"""
