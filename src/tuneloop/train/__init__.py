"""One module per stage; each reads top to bottom: its config dataclass, then ``train(cfg)``."""
