"""``tuneloop label …``: serve, import, export, stats, users, settings, simulate, backup.

Wired into the main command by ``register(subparsers)``; also runnable alone as
``python -m tuneloop.feedback label …``. Every handler is ``fn(args, extra) -> int`` and raises
ValueError / FileNotFoundError for user errors (the main CLI prints them as one line, exit 2).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import sys

from tuneloop.feedback.settings import DEFAULT_SETTINGS, TOKEN_SCOPES

DB_HELP = "the label store: a SQLite file (created if missing) or postgresql://user@host:port/db"


def register(subparsers) -> argparse.ArgumentParser:
    label = subparsers.add_parser("label", help="the labelling app: people rate and rank candidates",
                                  description=__doc__.splitlines()[0])
    sub = label.add_subparsers(dest="label_command", required=True, metavar="ACTION")

    p = sub.add_parser("serve", help="run the web app (127.0.0.1:8000 by default)")
    _db(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (put TLS in front)")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (when served over HTTPS)")
    p.add_argument("--sync", choices=["FULL", "NORMAL"], default="FULL",
                   help="SQLite durability: FULL survives power loss, NORMAL only process crashes (faster)")
    p.add_argument("--no-rate-limits", action="store_true", help="for load tests and simulated raters only")
    p.set_defaults(handler=serve_cmd)

    p = sub.add_parser("import", help="import candidates files (the output of `tuneloop sample`)")
    _db(p)
    p.add_argument("files", nargs="+", metavar="CANDIDATES")
    p.add_argument("--mode", choices=["pairwise", "ranking", "rating"], default="pairwise",
                   help="pairwise: one item per candidate pair; ranking: one K-way item per prompt; "
                        "rating: one item per response, scored on every aspect")
    p.add_argument("--pairs-per-prompt", type=int, help="pairwise: draw this many pairs per prompt (default all)")
    p.add_argument("--gold", action="store_true", help="these are gold items: each record has 'gold_ranking'")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=import_cmd)

    p = sub.add_parser("export", help="write pairs, rankings, raw judgments and a manifest into a folder")
    _db(p)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --replace)")
    p.add_argument("--pairs", choices=["none", "majority", "soft"], default="majority",
                   help="pair aggregation across annotators")
    p.add_argument("--rankings", choices=["none", "bradley_terry", "ranked_pairs"], default="none",
                   help="ranking aggregation across annotators")
    p.add_argument("--rankings-in-pairs", action="store_true", help="also expand K-way rankings into pairs")
    p.add_argument("--include-unacceptable", action="store_true", help="keep 'both bad' / 'none acceptable'")
    p.add_argument("--adjust-raters", action="store_true",
                   help="scores.jsonl: also write rater-adjusted means (each annotator's offset and scale taken out)")
    p.add_argument("--pairs-from-scores", metavar="WEIGHTS", nargs="?", const="",
                   help="also write score_pairs.jsonl: pairs from aspect scores, weights like quality=1,safety=2 "
                        "(default every aspect 1)")
    p.add_argument("--score-min-gap", type=float, default=0.5, help="smallest weighted score gap that makes a pair")
    p.add_argument("--replace", action="store_true")
    p.set_defaults(handler=export_cmd)

    p = sub.add_parser("stats", help="agreement and per-annotator cards")
    _db(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--check", action="store_true", help="also run the integrity check (exit 1 on problems)")
    p.set_defaults(handler=stats_cmd)

    _users(sub)

    p = sub.add_parser("settings", help="show or change settings: overlap, lease_seconds, gold_rate, ...")
    _db(p)
    p.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help=f"keys: {', '.join(DEFAULT_SETTINGS)}")
    p.set_defaults(handler=settings_cmd)

    p = sub.add_parser("simulate", help="a simulated rater panel judging through the same API and store")
    _db(p)
    p.add_argument("--candidates", help="import this candidates file first")
    p.add_argument("--mode", choices=["pairwise", "ranking", "rating"], default="pairwise",
                   help="rating: one item per response, every aspect scored (needs the aspect scorers)")
    p.add_argument("--aspect-scores", action="store_true",
                   help="score aspects with the demo task's scorers (VADER, MiniLM, better-profanity); "
                        "on by default in rating mode")
    p.add_argument("--annotators", type=int, default=5)
    p.add_argument("--overlap", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", default="auto", help="σ of the rater noise, or 'auto' to hit --target-agreement")
    p.add_argument("--target-agreement", type=float, default=0.75)
    p.add_argument("--scorer", default="vader",
                   help="gold scorer (vader, readability) or module:function / file.py:function (text → float)")
    p.set_defaults(handler=simulate_cmd)

    p = sub.add_parser("backup", help="online backup of the store while it is in use")
    _db(p)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=backup_cmd)
    return label


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help=DB_HELP)


def _users(sub) -> None:
    p = sub.add_parser("users", help="create users (the first admin too), issue and revoke API tokens")
    _db(p)
    actions = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="create a user; the password is asked for (or read from stdin)")
    a.add_argument("name")
    a.add_argument("--role", choices=["admin", "annotator"], default="annotator")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.add_argument("--no-password", action="store_true", help="token-only account (cannot log in)")
    a = actions.add_parser("passwd", help="set a user's password")
    a.add_argument("name")
    a.add_argument("--password-stdin", action="store_true")
    actions.add_parser("list", help="list users")
    a = actions.add_parser("token", help="issue an API token (printed once)")
    a.add_argument("name")
    a.add_argument("--scope", action="append", choices=TOKEN_SCOPES, help="repeatable; default judge")
    a.add_argument("--label", default="")
    a = actions.add_parser("revoke", help="revoke an API token by its id (the part after tl_)")
    a.add_argument("token_id")
    for name in ("disable", "enable"):
        a = actions.add_parser(name, help=f"{name} a user")
        a.add_argument("name")
    p.set_defaults(handler=users_cmd)


def _open(args, create: bool = False):
    from tuneloop.feedback.store import Store

    return Store.open(args.db, create=create)


def serve_cmd(args, extra) -> int:
    import uvicorn

    from tuneloop.feedback.server import create_app
    from tuneloop.feedback.store import Store

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not args.allow_remote:
        raise ValueError(f"--host {args.host} is reachable from other machines; add --allow-remote "
                         "(and serve through HTTPS with --secure-cookies)")
    store = Store.open(args.db, synchronous=args.sync)
    if not any(u["role"] == "admin" for u in store.list_users()):
        print(f"[tuneloop] no admin yet: create one with `tuneloop label users --db {args.db} add NAME --role admin`")
    limits = {"login_limit": None, "submit_limit": None} if args.no_rate_limits else {}
    app = create_app(store, secure_cookies=args.secure_cookies, **limits)
    print(f"[tuneloop] labelling app on http://{args.host}:{args.port}/  (store {args.db})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def import_cmd(args, extra) -> int:
    from tuneloop.feedback.importer import import_candidates

    store = _open(args, create=True)
    for path in args.files:
        counts = import_candidates(store, path, mode=args.mode, pairs_per_prompt=args.pairs_per_prompt,
                                   gold=args.gold, seed=args.seed)
        print(f"[tuneloop] {path}: {counts['prompts']} prompts, {counts['items']} {args.mode} items"
              f"{' (gold)' if args.gold else ''}; {counts['skipped']} already present")
    return 0


def export_cmd(args, extra) -> int:
    from tuneloop.feedback.export import export_all

    manifest = export_all(_open(args), args.out, pair_aggregate=args.pairs, ranking_aggregate=args.rankings,
                          include_rankings_in_pairs=args.rankings_in_pairs,
                          include_unacceptable=args.include_unacceptable, replace=args.replace,
                          adjust_raters=args.adjust_raters, score_pairs=_weights(args.pairs_from_scores),
                          score_pair_min_gap=args.score_min_gap)
    counts = manifest["counts"]
    print(f"[tuneloop] exported {counts['pairs.jsonl']} pairs, {counts['rankings.jsonl']} rankings, "
          f"{counts['scores.jsonl']} scored responses, {counts['judgments.jsonl']} judgments → {args.out}/ "
          "(manifest.json has hashes and agreement)")
    return 0


def _weights(spec: str | None) -> dict[str, float] | None:
    """'quality=1,safety=2' → {"quality": 1.0, "safety": 2.0}; '' → {} (every aspect 1); None → None."""
    if spec is None:
        return None
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--pairs-from-scores: expected aspect=weight, got {part!r}")
    return out


def stats_cmd(args, extra) -> int:
    from tuneloop.feedback.quality import format_report, quality_report

    store = _open(args)
    report = quality_report(store)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.check:
        problems = store.check_integrity()
        print("integrity: ok" if not problems else "integrity problems:\n  " + "\n  ".join(problems))
        return 1 if problems else 0
    return 0


def _password(args) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise ValueError("the two passwords differ")
    return first


def users_cmd(args, extra) -> int:
    store = _open(args, create=True)
    action = args.users_command
    if action == "add":
        password = None if args.no_password else _password(args)
        store.create_user(args.name, args.role, password)
        print(f"[tuneloop] created {args.role} {args.name}")
    elif action == "passwd":
        store.set_password(args.name, _password(args))
        print(f"[tuneloop] password set for {args.name}")
    elif action == "list":
        for u in store.list_users():
            print(f"{u['name']:<24} {u['role']:<10} {'disabled' if u['disabled'] else ''}")
    elif action == "token":
        token = store.issue_token(args.name, args.scope or ["judge"], args.label)
        print(token)
        print(f"[tuneloop] token for {args.name} (scopes {', '.join(args.scope or ['judge'])}); it is shown only "
              "now — the store keeps only its hash", file=sys.stderr)
    elif action == "revoke":
        store.revoke_token(args.token_id)
        print(f"[tuneloop] revoked token {args.token_id}")
    else:
        store.set_disabled(args.name, action == "disable")
        print(f"[tuneloop] {action}d {args.name}")
    return 0


def settings_cmd(args, extra) -> int:
    store = _open(args)
    for assignment in args.assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {assignment!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        store.set_setting(key, value)
    for key, value in store.settings().items():
        print(f"{key} = {json.dumps(value)}")
    return 0


def load_scorer(spec: str):
    """A gold scorer name ('vader', 'readability') or 'module:function' / 'file.py:function' → text → float."""
    from tuneloop.rewards import load_text_scorer

    return load_text_scorer(spec)


def simulate_cmd(args, extra) -> int:
    from tuneloop.feedback.panel import simulate, summary_line

    noise = args.noise if args.noise == "auto" else float(args.noise)
    aspect_scorers = None
    if args.mode == "rating" or args.aspect_scores:
        from tuneloop.feedback.aspect_scorers import default_aspect_scorers

        aspect_scorers = default_aspect_scorers()
    result = simulate(args.db, args.candidates, num_annotators=args.annotators, overlap=args.overlap,
                      seed=args.seed, scorer=load_scorer(args.scorer), mode=args.mode, noise=noise,
                      target_agreement=args.target_agreement, aspect_scorers=aspect_scorers)
    print(f"[tuneloop] {summary_line(result)}")
    print(f"[tuneloop] to have people judge the same items: tuneloop label serve --db {args.db}")
    return 0


def backup_cmd(args, extra) -> int:
    dest = _open(args).backup(args.out)
    print(f"[tuneloop] backup written to {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneloop.feedback")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args, []) or 0
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tuneloop label: error: {err}", file=sys.stderr)
        return 2
