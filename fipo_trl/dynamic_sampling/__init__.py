"""
DAPO's dynamic sampling: the group filter, prompt stream and round checks in pure Python/torch (`group_filter`), and
the trainer mixin that runs the rounds (`mixin`, which imports TRL).
"""
