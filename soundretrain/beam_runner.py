"""Running a stage as an Apache Beam pipeline: the ``--runner`` flags, the pipeline options,
and the journal shards in which both pipelines keep their per-item results.

``spectrograms --runner=...`` and ``retrain --runner=...`` build their pipelines in their own
stage (:mod:`spectrograms.beam_pipeline`, :mod:`retrain.beam_bottlenecks`); what both need
lives here. Apache Beam is an optional extra (``pip install 'soundretrain[beam]'``): nothing
here imports it until a runner is asked for.

Results flow back through the filesystem, not through the runner: every worker appends one
JSON record per item (a clip, a batch of images) to its own shard files, written atomically
every few seconds (:class:`JournalShards`). A pipeline killed mid-way keeps what it finished,
the next run reads it back, and the launcher reads the shards at the end to write the
manifest, the failures and the summary. Records can repeat (a runner retries a bundle): they
are keyed, and a repeat says the same thing.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from soundretrain import filesystems

#: Runners named by ``--runner`` (Beam also takes a dotted class path).
RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner", "PrismRunner")
INSTALL_HINT = "pip install 'soundretrain[beam]'"


class BeamError(Exception):
    """The pipeline cannot be built or run as asked; the message is one line."""


def define_runner_flags(define: Callable[..., None], group: Optional[str] = None) -> None:
    """Define ``--runner`` and ``--beam_pipeline_args`` with ``define(kind, name, default,
    help, **kw)`` (a stage's definer; ``group`` is its help group, when it has groups)."""
    kw = {} if group is None else {"group": group}
    define("string", "runner", "",
           "Run this stage as an Apache Beam pipeline on this runner: DirectRunner (this machine, "
           "one worker process per core), DataflowRunner, FlinkRunner, SparkRunner, PortableRunner "
           "or PrismRunner. Empty: the local writer. Needs the beam extra; see docs/scale.md.", **kw)
    define("string", "beam_pipeline_args", "",
           "More Beam pipeline options, as Beam's own command line takes them, e.g. "
           "\"--project=P --region=R --temp_location=gs://B/tmp\" or "
           "\"--direct_num_workers=4\". Only with --runner.", **kw)


@dataclass(frozen=True)
class RunnerSettings:
    runner: str  # a name of RUNNERS, or a dotted class path
    pipeline_args: tuple[str, ...] = ()

    @property
    def is_direct(self) -> bool:
        return self.runner.lower() in ("directrunner", "direct")

    @property
    def is_dataflow(self) -> bool:
        return self.runner.lower() in ("dataflowrunner", "dataflow")

    def describe(self) -> str:
        if self.is_direct:
            given = {a.split("=", 1)[0] for a in self.pipeline_args}
            options = parse_known(self.pipeline_args)
            workers = getattr(options, "direct_num_workers", 0) if "--direct_num_workers" in given else 0
            workers = workers or os.cpu_count() or 1
            mode = getattr(options, "direct_running_mode", "") if "--direct_running_mode" in given \
                else "multi_processing"
            unit = {"multi_processing": "worker processes", "multi_threading": "worker threads"}.get(mode, "")
            return f"DirectRunner ({workers} {unit})" if unit else "DirectRunner (in memory)"
        return self.runner


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Importing Beam logs warnings about optional cloud clients it did not find (apitools,
    bigquery): noise on a command line that uses neither."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def import_beam():
    """``apache_beam``, or a :class:`BeamError` saying how to install it."""
    try:
        with _quiet_logging():
            import apache_beam
    except ImportError as err:
        raise BeamError(f"--runner needs Apache Beam, which is not installed ({err}); "
                        f"{INSTALL_HINT}") from None
    return apache_beam


def _known_options_parser():
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access

    def refuse(message: str) -> None:  # argparse would print its usage and exit
        raise ValueError(message)

    parser.error = refuse
    return parser


def parse_known(args) -> object:
    """Beam's known options in ``args`` as an argparse namespace (empty when Beam is absent)."""
    try:
        import_beam()
        known, _ = _known_options_parser().parse_known_args(list(args))
    except (BeamError, ValueError):
        return object()
    return known


def runner_settings(runner: str, beam_pipeline_args: str = "") -> Optional[RunnerSettings]:
    """The ``--runner`` and ``--beam_pipeline_args`` flags, checked; None without a runner.

    Raises ValueError (one line) for an unknown runner, unknown or malformed Beam options, or
    pipeline options without a runner; :class:`BeamError` when Beam is not installed.
    """
    runner = (runner or "").strip()
    try:
        args = tuple(shlex.split(beam_pipeline_args or ""))
    except ValueError as err:
        raise ValueError(f"--beam_pipeline_args cannot be split into options ({err})") from None
    if not runner:
        if args:
            raise ValueError("--beam_pipeline_args applies only with --runner (e.g. --runner=DirectRunner)")
        return None
    if any(a.split("=", 1)[0] == "--runner" for a in args):
        raise ValueError("give the runner with --runner, not inside --beam_pipeline_args")
    known = {r.lower(): r for r in RUNNERS}
    if "." not in runner:
        name = known.get(runner.lower()) or known.get(runner.lower() + "runner")
        if name is None:
            raise ValueError(f"--runner {runner!r} is not one of {', '.join(RUNNERS)} (or a dotted "
                             "path of a runner class)")
        runner = name
    stray = [a for a in args if not a.startswith("-")]
    import_beam()
    try:
        _, unknown = _known_options_parser().parse_known_args(list(args))
    except ValueError as err:  # a malformed value: a number that is not one, a missing value
        raise ValueError(f"--beam_pipeline_args: {err}") from None
    unknown = [a for a in unknown if a.startswith("-")] or stray
    if unknown:
        raise ValueError(f"--beam_pipeline_args: {', '.join(unknown)} is not a Beam pipeline option "
                         "(Beam's options: https://beam.apache.org/documentation/runners/capability-matrix/ "
                         "and each runner's page; docs/scale.md lists the usual ones)")
    return RunnerSettings(runner, args)


def pipeline_options(settings: RunnerSettings):
    """Beam ``PipelineOptions`` for ``settings``. The DirectRunner runs one worker process per
    core unless ``--direct_num_workers`` / ``--direct_running_mode`` say otherwise."""
    import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(settings.pipeline_args)
    given = {a.split("=", 1)[0] for a in args}
    if settings.is_direct:
        if "--direct_num_workers" not in given:
            args.append("--direct_num_workers=0")  # 0: one per core
        if "--direct_running_mode" not in given:
            args.append("--direct_running_mode=multi_processing")
        if "--default_sdk_harness_log_level" not in given:  # workers' INFO lines would bury the summary
            args.append("--default_sdk_harness_log_level=WARNING")
    return PipelineOptions([f"--runner={settings.runner}", *args])


def configure_filesystems(settings: RunnerSettings) -> None:
    """Give Beam's filesystems the pipeline options (``--hdfs_host``, ``--s3_region_name``,
    ``--project``, ...) before the launcher lists or writes anything through them."""
    import_beam()
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(pipeline_options(settings))


def make_pipeline(settings: RunnerSettings):
    """A ``beam.Pipeline`` for ``settings``.

    The DirectRunner is Beam's FnApiRunner, its batch engine, given directly: Beam 2.77's
    DirectRunner first tries to download the Prism runner from GitHub, which fails offline
    and ignores ``--direct_num_workers`` where it works.
    """
    beam = import_beam()
    options = pipeline_options(settings)
    if settings.is_direct:
        return beam.Pipeline(runner=_direct_runner(options), options=options)
    try:
        return beam.Pipeline(options=options)
    except (ValueError, ImportError) as err:
        raise BeamError(f"cannot start the {settings.runner}: {' '.join(str(err).split())}") from None


def _direct_runner(options):
    """Beam's FnApiRunner as the DirectRunner builds it (the pipeline options reach the worker
    processes through its provision info), its workers started by :mod:`soundretrain.beam_worker`."""
    from apache_beam.portability import python_urns
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    class QuietFnApiRunner(fn_runner.FnApiRunner):
        def run_via_runner_api(self, pipeline_proto, options):
            quiet = f"{sys.executable} -m soundretrain.beam_worker".encode("utf-8")
            for env in pipeline_proto.components.environments.values():
                if env.urn == python_urns.SUBPROCESS_SDK and b"sdk_worker_main" in env.payload:
                    env.payload = quiet
            return super().run_via_runner_api(pipeline_proto, options)

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return QuietFnApiRunner(provision_info=info)


def run_pipeline(pipeline, settings: RunnerSettings) -> None:
    """Run ``pipeline`` to the end; a failed run is a :class:`BeamError` naming the runner's
    last reason (bad items never fail it: they are failure records)."""
    # Workers' log records arrive through this logger; their setup warnings are noise, their
    # errors (a DoFn's traceback) are not.
    relay = logging.getLogger("apache_beam.runners.portability.local_job_service")
    level = relay.level
    relay.setLevel(logging.ERROR)
    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - runners raise anything from grpc to RuntimeError
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise BeamError(f"the {settings.describe()} pipeline failed: {reason}") from None
    finally:
        relay.setLevel(level)
    if state is not None and str(state).upper().split(".")[-1] not in ("DONE", "UNKNOWN"):
        raise BeamError(f"the {settings.describe()} pipeline ended in state {state}")


def new_run_id() -> str:
    """A sortable, unique name for one pipeline run (its journal shards carry it)."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def check_paths_for_runner(settings: RunnerSettings, paths: dict[str, str]) -> None:
    """Dataflow's workers run on other machines: a local ``--data_dir`` or ``--output_dir`` is
    not there. Refused before the job is submitted (Flink and Spark clusters may share a
    local or NFS path, so they are not refused)."""
    if not settings.is_dataflow:
        return
    local = [f"--{flag} {path}" for flag, path in paths.items() if path and not filesystems.is_remote(path)]
    if local:
        raise ValueError(f"the DataflowRunner's workers cannot read this machine's files: use gs:// "
                         f"paths for {', '.join(local)}")


# ------------------------------------------------------------------ journal shards

SHARD_SUFFIX = ".jsonl"


class JournalShards:
    """One worker's results, kept as JSON-lines shard files in ``folder``.

    :meth:`add` buffers a record; every ``every`` records or ``seconds`` (and at
    :meth:`flush`) the buffer becomes a new shard ``<prefix><random>.jsonl``, written
    atomically, so a killed pipeline loses at most the last few seconds of one worker.
    """

    def __init__(self, folder: str, prefix: str, every: int = 64, seconds: float = 10.0) -> None:
        self.folder = folder
        self.prefix = prefix
        self.every = every
        self.seconds = seconds
        self._buffer: list[dict] = []
        self._since = time.monotonic()

    def add(self, record: dict) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.every or time.monotonic() - self._since >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            text = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in self._buffer)
            name = f"{self.prefix}{uuid.uuid4().hex}{SHARD_SUFFIX}"
            filesystems.write_text(filesystems.join(self.folder, name), text, durable=False)
            self._buffer = []
        self._since = time.monotonic()


def shard_paths(folder: str, prefix: str = "") -> list[str]:
    """The shard files in ``folder`` whose names start with ``prefix``."""
    try:
        paths = filesystems.list_files(folder)
    except OSError:
        return []
    return [p for p in paths if filesystems.basename(p).startswith(prefix)
            and p.endswith(SHARD_SUFFIX) and filesystems.dirname(p).rstrip("/") == folder.rstrip("/")]


def read_shard(path: str) -> list[dict]:
    """The records of one shard; a damaged line is skipped (shards are written whole, but a
    foreign or torn file must not stop a run)."""
    try:
        text = filesystems.read_text(path)
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_shards(folder: str, prefix: str = "") -> list[dict]:
    return [r for p in shard_paths(folder, prefix) for r in read_shard(p)]


class ShardProgress:
    """A progress bar for a running pipeline, fed by its journal shards (read once each): the
    launcher cannot see inside the runner, but it sees what the workers finished."""

    def __init__(self, folder: str, prefix: str, total: int, desc: str, count: Callable[[dict], int],
                 progress: bool = True, interval: float = 2.0) -> None:
        self.folder, self.prefix, self.count = folder, prefix, count
        self.interval = interval if not filesystems.is_remote(folder) else max(interval, 15.0)
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar = None
        if progress:
            import sys

            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="item", disable=None, file=sys.stderr,
                             dynamic_ncols=True, leave=False)

    def _poll(self) -> None:
        done = 0
        for path in shard_paths(self.folder, self.prefix):
            if path not in self._seen:
                self._seen.add(path)
                done += sum(self.count(r) for r in read_shard(path))
        if done and self._bar is not None:
            self._bar.update(done)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self._poll()

    def __enter__(self) -> "ShardProgress":
        if self._bar is not None and not self._bar.disable:
            self._thread = threading.Thread(target=self._loop, name="beam-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()
