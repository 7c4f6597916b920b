"""
Scoring a model on math benchmarks: generation (`generation`), the Avg@k / Cons@k / Pass@k maths (`metrics`) and
`evaluate`, the driver behind `fipo-trl eval` and the held-out check of `fipo-trl train`.
"""
