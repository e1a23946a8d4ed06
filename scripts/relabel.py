"""Batch relabeling of a Label Studio project through label-studio-sdk.

Moves, renames and merges labels, lists shifts and undoes or retries them. Every change
is a shift transaction in the same Redis log the bulk-shift service keeps, so the
service's history page lists it and either side can undo it. A task a person confirmed
is only moved with --include-confirmed.

Examples
--------
    # After scripts/up.sh, the defaults find its Label Studio, token and Redis.
    python scripts/relabel.py --api-key-file var/credentials.json shifts --project 1
    python scripts/relabel.py move --project 1 --from sock --to shoe --dry-run
    python scripts/relabel.py move --project 1 --from sock --to shoe --rank 2
    python scripts/relabel.py rename --project 1 --from "Cluster 03" --to chair
    python scripts/relabel.py merge --project 1 --from stool seat --into chair
    python scripts/relabel.py shifts --project 1
    python scripts/relabel.py undo 3f2a9c0b11de
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from bulk_shift_plugin import keys
from bulk_shift_plugin.config import (
    ConfigError,
    connect_redis,
    default_credentials_file,
    default_label_studio_url,
    read_api_key,
)
from bulk_shift_plugin.errors import BulkShiftServiceError
from bulk_shift_plugin.labelstudio import LabelStudioGateway
from bulk_shift_plugin.shifts import ShiftApplier
from bulk_shift_plugin.state import TaskStore
from bulk_shift_plugin.transactions import ShiftLog, ShiftRecord

logger = logging.getLogger("relabel")


class RelabelError(Exception):
    """A request the CLI cannot carry out, with what to do instead."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relabel.py",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        epilog="Connection settings fall back to LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY "
        "and REDIS_URL, then to the stack scripts/up.sh starts (its Label Studio, "
        "BULKSHIFT_DATA_DIR/credentials.json and its embedded Redis).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--label-studio-url",
        default=default_label_studio_url(),
        help="Label Studio's URL (default: LABEL_STUDIO_URL, else "
        "http://127.0.0.1:BULKSHIFT_LS_PORT, port 8080 unless set; now "
        "%(default)s)",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key, or the credentials.json scripts/up.sh writes "
        '(JSON with a "token"); default: LABEL_STUDIO_API_KEY, else '
        "BULKSHIFT_DATA_DIR/credentials.json when it exists",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="Redis of the bulk-shift service (default: REDIS_URL, else the "
        "embedded Redis of scripts/up.sh under BULKSHIFT_DATA_DIR)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=500,
        help="tasks per batch of Label Studio calls (default 500)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    move = commands.add_parser("move", help="move tasks from one label to another")
    move.add_argument("--project", type=int, required=True)
    move.add_argument("--from", dest="source", required=True, help="label A")
    move.add_argument("--to", dest="destination", required=True, help="label B")
    move.add_argument(
        "--rank",
        type=int,
        help="only tasks whose RANK-th recommended label (1 = best) is B",
    )
    move.add_argument(
        "--include-confirmed",
        action="store_true",
        help="also move tasks a person confirmed as A",
    )
    move.add_argument(
        "--create-label",
        action="store_true",
        help="add B to the project's labels when it is not one yet (otherwise a "
        "label that does not exist is refused, to catch typos)",
    )
    move.add_argument(
        "--dry-run", action="store_true", help="show what would move; change nothing"
    )

    rename = commands.add_parser(
        "rename", help="rename a label (its tasks keep their origin)"
    )
    rename.add_argument("--project", type=int, required=True)
    rename.add_argument("--from", dest="source", required=True)
    rename.add_argument("--to", dest="destination", required=True)
    rename.add_argument("--dry-run", action="store_true")

    merge = commands.add_parser("merge", help="merge labels into an existing one")
    merge.add_argument("--project", type=int, required=True)
    merge.add_argument("--from", dest="sources", nargs="+", required=True)
    merge.add_argument("--into", dest="destination", required=True)
    merge.add_argument("--dry-run", action="store_true")

    shifts = commands.add_parser("shifts", help="list the project's shifts")
    shifts.add_argument("--project", type=int, required=True)
    shifts.add_argument("--json", action="store_true", help="print JSON lines")

    undo = commands.add_parser("undo", help="undo an applied shift")
    undo.add_argument("shift_id")
    undo.add_argument("--dry-run", action="store_true")

    retry = commands.add_parser("retry", help="complete a failed shift")
    retry.add_argument("shift_id")

    cleanup = commands.add_parser(
        "cleanup",
        help="delete helper predictions that failed shifts left in the project",
    )
    cleanup.add_argument("--project", type=int, required=True)
    return parser


class Relabeler:
    """The CLI's operations, on the service's transaction log."""

    def __init__(self, gateway: LabelStudioGateway, redis_client, chunk_size: int):
        self.gateway = gateway
        self.redis = redis_client
        self.tasks = TaskStore(redis_client)
        self.log = ShiftLog(redis_client)
        self.applier = ShiftApplier(redis_client, gateway, chunk_size=chunk_size)

    def current_labels(self, project: int) -> dict[int, str]:
        """Every task's current label: its annotation, else the service's record."""
        states = self.tasks.all(project)
        labels = {task: state.label for task, state in states.items()}
        for task, entry in self.gateway.task_annotations(project).items():
            if entry.annotations:
                labels[task] = entry.label
        return labels

    def label_names(self, project: int) -> list[str]:
        raw = self.redis.get(keys.labels(project))
        names = json.loads(raw) if raw else []
        for name in self.gateway.choices_control(project, refresh=True).labels:
            if name not in names:
                names.append(name)
        return names

    def select(self, project, sources, destination, rank=None, include_confirmed=False):
        labels = self.current_labels(project)
        states = self.tasks.all(project)
        chosen = [t for t, label in labels.items() if label in sources]
        if not include_confirmed:
            chosen = [t for t in chosen if not (t in states and states[t].confirmed)]
        if rank is not None:
            if rank < 1:
                raise RelabelError(f"--rank counts from 1 (the best label); got {rank}")
            recommendations = (
                self.redis.hmget(
                    keys.recommendations(project), [str(t) for t in chosen]
                )
                if chosen
                else []
            )
            chosen = [
                task
                for task, raw in zip(chosen, recommendations)
                if raw is not None
                and len(json.loads(raw)["labels"]) >= rank
                and json.loads(raw)["labels"][rank - 1] == destination
            ]
        return sorted(chosen)

    def apply(self, project, kind, tasks, label, keep_origin, **details):
        record = self.applier.record(
            project, kind, {t: label for t in tasks}, origin="shift", **details
        )
        if keep_origin:
            # A renamed label is the same decision under a new name: a person's
            # confirmation stays a confirmation.
            for move in record.moves:
                move.origin = move.previous_origin or "shift"
            self.log.save(record)
        with tqdm(total=len(tasks), unit="task", desc=f"{kind} -> {label}") as bar:
            return self.applier.apply(record, progress=bar.update)

    def ensure_label(self, project: int, name: str) -> list[str]:
        names = self.label_names(project)
        if name not in names:
            names.append(name)
            self.gateway.set_label_names(project, names)
            self.redis.set(keys.labels(project), json.dumps(names))
        return names

    def drop_labels(self, project: int, dropped: list[str]) -> None:
        names = [n for n in self.label_names(project) if n not in dropped]
        self.gateway.set_label_names(project, names)
        self.redis.set(keys.labels(project), json.dumps(names))


def print_record(record: ShiftRecord) -> None:
    print(record.summary())


def api_key_of(arguments) -> str:
    """The API key: --api-key-file, else LABEL_STUDIO_API_KEY, else the stack's
    credentials file."""
    if arguments.api_key_file:
        return read_api_key(arguments.api_key_file)
    if os.environ.get("LABEL_STUDIO_API_KEY"):
        return os.environ["LABEL_STUDIO_API_KEY"].strip()
    credentials = default_credentials_file()
    if credentials.exists():
        return read_api_key(credentials)
    raise RelabelError(
        "no API key: pass --api-key-file (a file holding the key, or the "
        "credentials.json scripts/up.sh writes) or set LABEL_STUDIO_API_KEY"
    )


def check_labels(project: int, wanted: list[str], names: list[str], hint: str) -> None:
    """Refuse label names the project does not have, listing the ones it has."""
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise RelabelError(
            f"label {', '.join(map(repr, unknown))} is not in project {project}; its "
            f"labels are: {', '.join(names) or '(none)'}. {hint}"
        )


def run(arguments) -> int:
    api_key = api_key_of(arguments)
    gateway = LabelStudioGateway(arguments.label_studio_url, api_key)
    redis_client = connect_redis(arguments.redis_url)
    relabeler = Relabeler(gateway, redis_client, arguments.chunk_size)
    command = arguments.command

    if command == "shifts":
        for record in relabeler.log.list(arguments.project):
            if arguments.json:
                print(
                    json.dumps(
                        {
                            "id": record.id,
                            "kind": record.kind,
                            "source": record.source,
                            "destination": record.destination,
                            "tasks": len(record.moves),
                            "status": record.status,
                            "purity": record.purity,
                            "created_at": record.created_at,
                        }
                    )
                )
            else:
                print(f"{record.created_at}  {record.summary()}")
        return 0

    if command == "undo":
        original = relabeler.log.get(arguments.shift_id)
        if arguments.dry_run:
            print(f"would undo {original.summary()}")
            return 0
        record = relabeler.applier.undo(arguments.shift_id)
        print(f"undone by {record.summary()}")
        return 0

    if command == "retry":
        record = relabeler.applier.retry(arguments.shift_id)
        print_record(record)
        return 0

    if command == "cleanup":
        versions = gateway.helper_model_versions(arguments.project)
        deleted = sum(
            gateway.delete_model_version(arguments.project, v) for v in versions
        )
        print(f"deleted {deleted} helper predictions of {len(versions)} shift attempts")
        return 0

    project = arguments.project
    names = relabeler.label_names(project)
    if command == "move":
        check_labels(project, [arguments.source], names, "Check the spelling.")
        if not arguments.create_label:
            check_labels(
                project,
                [arguments.destination],
                names,
                "Check the spelling, or pass --create-label to add it.",
            )
        sources, keep_origin, kind = [arguments.source], False, "relabel"
        tasks = relabeler.select(
            project,
            sources,
            arguments.destination,
            arguments.rank,
            arguments.include_confirmed,
        )
    elif command == "rename":
        if arguments.source not in names:
            raise RelabelError(
                f"label {arguments.source!r} is not in project {project}; "
                f"labels: {', '.join(names)}"
            )
        if arguments.destination in names:
            raise RelabelError(
                f"label {arguments.destination!r} exists already; use "
                "`merge` to put both together"
            )
        sources, keep_origin, kind = [arguments.source], True, "relabel"
        tasks = relabeler.select(
            project, sources, arguments.destination, include_confirmed=True
        )
    else:  # merge
        if arguments.destination not in names:
            raise RelabelError(
                f"label {arguments.destination!r} is not in project "
                f"{project}; use `rename` for a new name"
            )
        sources, keep_origin, kind = list(arguments.sources), True, "relabel"
        tasks = relabeler.select(
            project, sources, arguments.destination, include_confirmed=True
        )

    print(
        f"{len(tasks)} tasks {'would move' if arguments.dry_run else 'to move'}: "
        f"{' + '.join(sources)} -> {arguments.destination}"
        + (f" (first: {tasks[:10]})" if tasks else "")
    )
    if arguments.dry_run:
        return 0
    relabeler.ensure_label(project, arguments.destination)
    if tasks:
        record = relabeler.apply(
            project,
            kind,
            tasks,
            arguments.destination,
            keep_origin,
            source=" + ".join(sources),
            destination=arguments.destination,
        )
        print_record(record)
    if command in ("rename", "merge"):
        relabeler.drop_labels(project, sources)
        print(f"labels now: {', '.join(relabeler.label_names(project))}")
    return 0


def main(argv=None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(arguments)
    except (RelabelError, ConfigError, BulkShiftServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
