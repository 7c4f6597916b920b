"""
DAPO's dynamic sampling: the group filter, prompt stream and round checks in pure Python/torch (`group_filter`), the
config fields as a dataclass mixin (`config`), and the trainer mixin that runs the rounds (`trainer`, which imports
TRL).
"""
