"""`manage.py listen_chain [--mode ws|poll]`: turn vault events into orders (chain.listener)."""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chain.exceptions import ChainError, NodeMisconfigured
from chain.listener import ChainListener, ListenerConfig


class Command(BaseCommand):
    help = "Listen to the vault: subscribe (or poll), backfill, and create orders from events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mode", choices=("ws", "poll"), default="ws")
        parser.add_argument("--confirmations", type=int, default=None)
        parser.add_argument(
            "--finality",
            choices=("confirmations", "finalized", "safe"),
            default=None,
            help="what confirmed means (default CHAIN_FINALITY)",
        )
        parser.add_argument("--start-block", type=int, default=None)
        parser.add_argument("--poll-interval", type=float, default=None)
        parser.add_argument(
            "--replay",
            metavar="FROM:TO",
            default=None,
            help="re-read blocks FROM..TO (inclusive), act on logs not yet recorded, and exit",
        )

    def handle(self, *args: object, **options: object) -> None:
        try:
            config = ListenerConfig.from_settings(
                confirmations=options["confirmations"],
                finality=options["finality"],
                start_block=options["start_block"],
                poll_interval=options["poll_interval"],
            )
        except ChainError as exc:  # no vault recorded, a bad address, a node that is away
            raise CommandError(str(exc)) from exc
        stop = threading.Event()
        if options["replay"]:
            self._replay(config, str(options["replay"]))
            return

        def request_stop(signum: int, frame: object) -> None:
            self.stderr.write(f"signal {signum}: stopping after the current batch")
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.stdout.write(
            f"listening to {config.vault} on chain {config.chain_id} ({options['mode']}, "
            f"{config.confirmations} confirmations, finality {config.finality})"
        )
        try:
            ChainListener(config, stop_event=stop).run(mode=str(options["mode"]))
        except NodeMisconfigured as exc:
            raise CommandError(f"the node is not the one Bronco expects: {exc}") from exc

    def _replay(self, config: ListenerConfig, span: str) -> None:
        try:
            first, last = (int(part) for part in span.split(":"))
        except ValueError as exc:
            raise CommandError(f"--replay wants FROM:TO block numbers, got {span!r}") from exc
        try:
            stats = ChainListener(config).replay(first, last)
        except (NodeMisconfigured, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except ChainError as exc:  # the node is away or does not have the blocks now
            raise CommandError(
                f"the node could not serve the replay ({type(exc).__name__}: {exc}); "
                "nothing doubles: run it again once the node answers"
            ) from exc
        read_to = min(last, stats.checkpoint)
        if read_to >= first:
            self.stdout.write(
                f"replayed blocks {first}..{read_to}: {stats.committed} new events, "
                f"{stats.duplicates} already recorded, {stats.quarantined} quarantined"
            )
        if last > stats.checkpoint:
            self.stdout.write(
                f"blocks {max(first, stats.checkpoint + 1)}..{last} are above the listener's "
                f"checkpoint ({stats.checkpoint}): not replayed, the listener reads them once "
                "they are confirmed"
            )
