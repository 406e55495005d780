"""Policy evaluation (``tuneloop eval``).

  stats.py             bootstrap intervals, win-rate outcomes, k1/k3 KL, distinct-n and repetition (pure)
  overoptimization.py  Gao et al.'s fits, best-of-n KL and expectation (pure)
  best_of_n.py         best-of-n selection over a candidates file (``tuneloop sample --best-of``)
  config.py            EvalConfig (typed, strict)
  policy.py            sampling, teacher-forced KL, scoring, summaries of one policy; win rates, curves
  checkpoints.py       model folders from a run's checkpoints (for the over-optimisation curve)
  runner.py            ``evaluate(cfg)``: the steps in order, eval.json and the printed table
  cli.py               the ``eval`` subcommand
"""
