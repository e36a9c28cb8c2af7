"""The ``fedunlearn`` sub-commands, one module each; :mod:`fedunlearn.cli` dispatches.

Each command is a function taking the arguments after its name and returning the
exit code. A module is imported only when its command runs, and this package
imports none of them: ``fedunlearn forget`` loads neither Hydra nor torch.
"""
