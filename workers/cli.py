"""``kindling``: the command line. Each sub-command is a thin call into the packages."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from engine.settings import SettingsError
from workers.flags import add_settings_flags, settings_from

log = logging.getLogger("kindling")


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


EVENT_LOOPS = ("uvloop", "asyncio")


def use_event_loop(name: str) -> None:
    """Make ``name`` (``uvloop`` | ``asyncio``) the event loop of every loop created from now on,
    through mode's loop registry (what ``faust -L uvloop`` does): the worker's main loop and the
    loop of Faust's consumer thread alike."""
    import mode.loop

    if name not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {name!r}")
    mode.loop.use("aio" if name == "asyncio" else name)


# ----------------------------------------------------------------------------- commands
def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

    settings = settings_from(args)
    _logging(settings.log_level)
    broker = EmbeddedBroker.from_settings(settings, port=args.port)

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt  # also while starting: the finally below cleans up

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        broker.start()
        if broker.persistent:
            where = broker.local_s3.endpoint if broker.local_s3 else settings.s3_endpoint
            storage = f"{broker.engine} storage at {where or 'AWS'}"
        else:
            storage = "memory storage"
        print(f"broker ready: {broker.url}  (tansu, {storage}; Ctrl-C stops it)", flush=True)
        while broker.running():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    print("broker stopped", flush=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streams.topics import ensure_topics
    from workers.app import Kindling
    from workers.logs import configure, logging_config

    settings = settings_from(args)
    use_event_loop(settings.event_loop)  # before anything creates a loop (Faust's threads too)
    configure(settings.log_format, settings.log_level)
    log.info("settings: %s", json.dumps(settings.public()))
    ensure_topics(settings)
    kindling = Kindling(settings)
    if settings.gc_freeze:
        # Everything built so far (imports, torch, the model, the app) lives as long as the
        # process. Moved out of the cyclic collector's reach, its full collections no longer
        # walk it: they paused the event loop for 50-80 ms every ~2 s under load (p99 at 2,000
        # events/s through the embedded broker 114 -> 58 ms).
        gc.collect()
        gc.freeze()
        log.info("gc.freeze(): %d start-up objects out of the cyclic collector",
                 gc.get_freeze_count())
    worker = faust.Worker(kindling.app, loglevel=settings.log_level.upper(), quiet=True,
                          logging_config=logging_config(settings.log_format, settings.log_level))
    worker.execute_from_commandline()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.kafka import EventProducer
    from streams.sources import read_items, read_log
    from streams.topics import ensure_topics

    settings = settings_from(args)
    _logging(settings.log_level)
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        if args.items:
            for item in read_items(args.items):
                producer.item(item)
        n = producer.interactions(read_log(args.file))
    print(f"produced {n} interactions to {settings.topic('interactions')}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from streams.kafka import consume

    settings = settings_from(args)
    topic = settings.topic(args.topic)
    n = 0
    for _, value in consume(settings, topic, from_beginning=args.from_beginning,
                            idle_timeout_s=args.idle, max_messages=args.max):
        print(value.decode("utf-8", "replace"), flush=True)
        n += 1
    return 0 if n or args.idle else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ops.demo import run_demo

    return run_demo(args)


def cmd_train(args: argparse.Namespace) -> int:
    from workers.training import run_train

    settings = settings_from(args)
    _logging(settings.log_level)
    return run_train(settings, args)


def cmd_retrain(args: argparse.Namespace) -> int:
    """Train on a snapshot and promote only if not worse (what the worker's retrain timer runs)."""
    # Lower CPU priority than the worker that started us: on a small machine back-to-back
    # rounds otherwise starve serving (seen on 2 cores: the stream fell minutes behind). First
    # thing, so that importing torch (seconds of CPU) is niced too.
    os.nice(args.nice)
    import torch

    from engine.retrain import retrain_from_snapshot

    settings = settings_from(args)
    _logging(settings.log_level)
    torch.set_num_threads(max(1, args.threads))
    outcome = retrain_from_snapshot(settings, args.snapshot)
    print(outcome.to_json(), flush=True)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from workers.replay import run

    settings = settings_from(args)
    _logging(settings.log_level)
    return run(settings, args)


def cmd_bandits(args: argparse.Namespace) -> int:
    import torch

    from evaluation.offpolicy import POLICY_NAMES, render_markdown, run_bandits

    torch.set_num_threads(1)
    _logging("info")
    policies = args.policies.split(",") if args.policies else list(POLICY_NAMES)
    seeds = range(args.seeds)
    report = run_bandits(args.out, rounds=args.rounds, seeds=seeds, movielens=args.movielens,
                         policies=policies, ips=not args.no_ips)
    print(render_markdown(report))
    print(f"report written to {args.out}")
    return 0


def cmd_finetune_encoder(args: argparse.Namespace) -> int:
    from workers.pretrain import run_finetune

    settings = settings_from(args)
    _logging(settings.log_level)
    return run_finetune(settings, args)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from workers.pretrain import run_pretrain

    settings = settings_from(args)
    _logging(settings.log_level)
    return run_pretrain(settings, args)


def cmd_bench(args: argparse.Namespace) -> int:
    from ops.bench import run

    settings = settings_from(args)
    _logging(settings.log_level if not args.json else "warning")
    return run(settings, args)


def cmd_fuzz(args: argparse.Namespace) -> int:
    from ops.fuzz import run

    settings = settings_from(args)
    _logging("warning")
    return run(settings, args)


def cmd_chaos(args: argparse.Namespace) -> int:
    from ops.chaos import run

    settings = settings_from(args)
    _logging("warning" if args.json else settings.log_level)
    return run(settings, args)


def cmd_request(args: argparse.Namespace) -> int:
    from workers.requests import run

    settings = settings_from(args)
    _logging("warning")
    return run(settings, args.user, args.domain, args.timeout, args.json)


def cmd_load(args: argparse.Namespace) -> int:
    from ops.load import run

    settings = settings_from(args)
    _logging("warning")
    return run(settings, args)


# ----------------------------------------------------------------------------- parser
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``kindling`` parser. ``command``: add the settings flags to that sub-command only
    (about 60 flags per command: building them all for every invocation is wasted)."""
    parser = argparse.ArgumentParser(
        prog="kindling",
        description="Kindling: a streaming cold-start recommender worker on Kafka. Settings come "
        "from KINDLING_* environment variables and --flags: 'kindling worker --help' lists them "
        "(the other commands: COMMAND --help-settings). Start with 'kindling demo'.")
    sub = parser.add_subparsers(dest="command", required=True)

    def settings_flags(p: argparse.ArgumentParser, listed: bool = False) -> None:
        if command is None or p.prog.rsplit(" ", 1)[-1] == command:
            add_settings_flags(p, listed)

    p = sub.add_parser("broker", help="start the embedded Kafka-protocol broker (Tansu; "
                       "memory or S3 storage)")
    p.add_argument("--port", type=int, default=None, help="default: a free loopback port")
    p.add_argument("--storage", dest="broker_storage", default=argparse.SUPPRESS,
                   help="memory | s3://BUCKET/ (same as --broker-storage); S3 credentials only "
                   "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment")
    settings_flags(p)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="run the Faust worker")
    settings_flags(p, listed=True)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("produce", help="send a log (JSONL, CSV, MovieLens) as interactions")
    p.add_argument("file")
    p.add_argument("--items",
                   help="an items file or folder (e.g. MovieLens movies.csv) to send first")
    settings_flags(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("tail", help="print recommendations (or another topic) as they arrive")
    p.add_argument("--topic", default="recommendations", help="topic name without the prefix")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--idle", type=float, default=0.0,
                   help="stop after this many idle seconds (0: never)")
    p.add_argument("--max", type=int, default=None)
    settings_flags(p)
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("demo", help="embedded broker + worker + a synthetic stream, end to end")
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--items-count", type=int, default=400)
    p.add_argument("--seconds", type=float, default=90.0, help="hard time limit")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="offline meta-training from a log; writes a model version")
    p.add_argument("log", nargs="?", help="interaction log (omit with --synthetic)")
    p.add_argument("--synthetic", action="store_true", help="train on the synthetic generator")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=None, help="checkpoint directory (default: next version)")
    settings_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("retrain", help="train on a worker snapshot; promote only if not worse")
    p.add_argument("snapshot", help="a snapshot directory written by the worker's retrain timer")
    p.add_argument("--threads", type=int, default=1, help="torch threads (leave cores to serving)")
    p.add_argument("--nice", type=int, default=10, help="CPU niceness increment (0: none)")
    settings_flags(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("replay", help="offline evaluation through the serving code path")
    p.add_argument("log", nargs="+",
                   help="interaction log(s) or 'synthetic'; several logs (or --seeds with more "
                   "than one seed) run the quality matrix with intervals over users")
    p.add_argument("--protocol", default="few-shot",
                   choices=["prequential", "few-shot", "new-items", "query-rank"])
    p.add_argument("--seeds", default=None,
                   help="comma-separated model seeds, e.g. 0,1,2 (default: --seed)")
    p.add_argument("--jobs", type=int, default=1,
                   help="quality matrix: replays run in this many processes at once")
    p.add_argument("--models", default=None, help="comma-separated; default: all")
    p.add_argument("--out", default="reports/replay")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--via-kafka", action="store_true",
                   help="prequential: serve Kindling learners through the embedded broker and a "
                   "real worker process instead of in-process")
    p.add_argument("--worker-processes", type=int, default=1,
                   help="with --via-kafka: this many worker processes in one consumer group; "
                   "the others join mid-stream (partitions move while events flow)")
    settings_flags(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("bandits", help="offline evaluation of exploration policies "
                       "(Li et al. replay on simulated arms and MovieLens; IPS on Kindling's log)")
    p.add_argument("--out", default="reports/bandits")
    p.add_argument("--rounds", type=int, default=20000, help="simulated logged rounds")
    p.add_argument("--seeds", type=int, default=3, help="policy seeds per policy")
    p.add_argument("--movielens", default=None, help="an ml-latest-small directory")
    p.add_argument("--policies", default=None, help="comma-separated; default: all")
    p.add_argument("--no-ips", action="store_true")
    p.set_defaults(func=cmd_bandits)

    p = sub.add_parser("pretrain", help="pretrain the item tower (autoencoder / InfoNCE), "
                       "then meta-train; compares with the default initialiser")
    p.add_argument("log", nargs="?", help="interaction log (omit with --synthetic)")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--items", default=None, help="item file (default: beside the log)")
    p.add_argument("--method", default="both", choices=["autoencoder", "infonce", "both"])
    p.add_argument("--objective", default="softmax", choices=["bce", "bpr", "softmax", "mse"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--infonce-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=300, help="meta-training steps")
    p.add_argument("--save", action="store_true", help="write the next model version")
    settings_flags(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune-encoder",
                       help="fine-tune the text encoder's last layer on co-interactions")
    p.add_argument("log", help="interaction log (training events only: no leakage)")
    p.add_argument("--items", default=None, help="item file (default: beside the log)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", required=True, help="model folder to write")
    settings_flags(p)
    p.set_defaults(func=cmd_finetune_encoder)

    p = sub.add_parser("bench",
                       help="benchmarks: adapt | pipeline | encode | kafka | produce | retrain | "
                       "online")
    p.add_argument("what", nargs="?", default="pipeline",
                   choices=["adapt", "pipeline", "encode", "kafka", "produce", "retrain",
                            "online"])
    p.add_argument("--items", default=None,
                   help="encode: an item file (default: MovieLens movies.csv when present)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--rate", type=float, default=2000.0,
                   help="retrain: paced produce rate (events/s) for the latency figures")
    p.add_argument("--paced-s", type=float, default=5.0,
                   help="kafka: seconds of each paced latency run (at 25%% and 50%% of the "
                   "capacity each column measured in the same run)")
    p.add_argument("--columns", default=None,
                   help="kafka: comma-separated columns of bare,echo,state,serving,pipeline "
                        "(default: bare,echo,serving,pipeline; state = serving without the model)")
    p.add_argument("--baseline-s", type=float, default=20.0,
                   help="retrain: seconds of latency measured before the retrain round starts")
    p.add_argument("--after-s", type=float, default=5.0,
                   help="retrain: seconds measured after the retrain child exited (hot swap)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compare-storage", action="store_true",
                   help="kafka: the serving worker through the embedded broker on memory and on "
                   "S3 storage side by side (a loopback S3 endpoint unless --s3-endpoint)")
    settings_flags(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("fuzz", help="fuzz decode -> apply -> rank -> encode in process")
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--throughput-events", type=int, default=20_000,
                   help="good events for the clean vs mixed throughput check (0: skip)")
    p.add_argument("--bad-ratio", type=float, default=0.1, help="share of bad events mixed in")
    p.add_argument("--repeats", type=int, default=3, help="throughput runs per mode (best kept)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    settings_flags(p)
    p.set_defaults(func=cmd_fuzz)

    p = sub.add_parser("chaos", help="embedded broker + worker; SIGKILL the worker or the "
                       "broker K times; audit state, outputs and offsets from the broker")
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--kill", choices=["worker", "broker"], default="worker",
                   help="what to SIGKILL: the worker (restarted each time) or the embedded "
                   "broker (restarted on its S3 storage; default a loopback S3 endpoint)")
    p.add_argument("--users", type=int, default=150)
    p.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    settings_flags(p)
    p.set_defaults(func=cmd_chaos)

    p = sub.add_parser("request", help="ask the running workers for USER's ranking in a domain "
                       "(no event added) and print the answer")
    p.add_argument("user")
    p.add_argument("--domain", default="default", help="the domain to rank (e.g. the target)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true", help="print the answer as one JSON line")
    settings_flags(p)
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("load", help="embedded broker + worker: produce at FACTOR x the "
                       "sustainable rate; report lag, RSS, recovery and drops")
    p.add_argument("--rate-per-s", type=float, default=None,
                   help="the sustainable rate (events/s); default: measure it (saturation run)")
    p.add_argument("--factor", type=float, default=2.0, help="burst rate / sustainable rate")
    p.add_argument("--seconds", type=float, default=180.0, help="burst duration")
    p.add_argument("--saturation-events", type=int, default=20_000,
                   help="events of the saturation run that measures the sustainable rate")
    p.add_argument("--users", type=int, default=5000, help="fixed user population")
    p.add_argument("--catalog-items", type=int, default=2000)
    p.add_argument("--steps", type=int, default=100,
                   help="meta-training steps of the served model (0: untrained)")
    p.add_argument("--drain-timeout-s", type=float, default=None,
                   help="how long to wait for the lag to return to 0 (default: 3x the backlog)")
    p.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    p.add_argument("--json", action="store_true", help="print one JSON line (no samples)")
    p.add_argument("--out", default=None, help="write the JSON report (with samples) here")
    settings_flags(p)
    p.set_defaults(func=cmd_load)

    from workers.transfer import add_parser as add_transfer

    add_transfer(sub, settings_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv and not argv[0].startswith("-") else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:  # a bad value: say which and what is accepted, no traceback
        print(f"kindling {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
