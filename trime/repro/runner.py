"""Resumable steps: each a console-script command run once, recorded in WORK/steps/NAME.json."""

import contextlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time

from trime.files import open_whole

WORK_WORD, USER_DIR_WORD = "{work}", "{user_dir}"  # in step records (Runner.portable)


class StepMismatch(ValueError):
    """A step was started with other options than it is asked to run with now."""


def console_script(name: str) -> str:
    """The console script of this Python environment (fairseq-train, trime-tune, ...)."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"console script {name!r} not found: install trime (pip install -e .)")
    return found


LOADING_SCRIPTS = ("fairseq-train", "fairseq-eval-lm", "fairseq-generate", "fairseq-interactive",
                   "fairseq-validate")  # the fairseq commands with --num-workers


def run_in_process(argv, log) -> int:
    """Run a console script's entry point in this process, output and log records to ``log``
    (tests: saves the interpreter and fairseq start-up of every step; same commands)."""
    from importlib.metadata import entry_points

    entry = next(e for e in entry_points(group="console_scripts") if e.name == argv[0])
    if argv[0] in LOADING_SCRIPTS and "--num-workers" not in argv:
        # fairseq's batches come through a DataLoader with 1 worker process by default; forked
        # from this long-lived process, the worker of the previous command does not exit when its
        # iterator is collected, and torch waits 5 s for it every time. Load in this process.
        argv = [*argv, "--num-workers", "0"]
    if argv[0] == "fairseq-train":
        # fairseq keeps the best validation loss so far on the function save_checkpoint (.best),
        # for the life of the process: a second training here would compare with the first's
        # and never write its own checkpoint_best.pt
        from fairseq import checkpoint_utils

        if hasattr(checkpoint_utils.save_checkpoint, "best"):
            del checkpoint_utils.save_checkpoint.best
    root = logging.getLogger()
    level, handler, saved_argv = root.level, logging.FileHandler(log), sys.argv
    # the format fairseq's console scripts give their log lines (e.g. "... | train | epoch 001 | loss")
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    sys.argv = list(argv)
    try:
        with open(log, "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                entry.load()()
            except SystemExit as exit:
                return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        return 0
    finally:
        sys.argv = saved_argv
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)


def _write_json(path, content):
    with open_whole(path) as f:
        json.dump(content, f, indent=1)


class Runner:
    """Runs the steps of a reproduction in the folder ``work`` and remembers them.

    Args:
        work: the folder of every step's outputs, records (steps/) and logs (logs/).
        echo: where progress lines go.
        in_process: run the console scripts' entry points in this process instead of a
            subprocess each (the tests' tiny configs; real runs keep each step isolated).
        jobs: steps that ``run_many`` may run at once (each subprocess then gets
            cores / jobs threads: on a small CPU machine two 1-thread trainings beat one
            2-thread training, the matrices of a 7M model being too small to use 2 threads well).
    """

    dry_run = False  # DryRun: print the steps instead

    def __init__(self, work: str, echo=print, in_process: bool = False, jobs: int = 1):
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        if in_process and jobs > 1:
            raise ValueError("in-process steps run one at a time (they share sys.argv): use jobs = 1")
        self.work = os.path.abspath(work)
        self.in_process, self.jobs = in_process, jobs
        os.makedirs(self.path("steps"), exist_ok=True)
        os.makedirs(self.path("logs"), exist_ok=True)
        self.echo = echo
        self.records = {}  # the steps used by this invocation, by name

    def path(self, *parts) -> str:
        return os.path.join(self.work, *parts)

    def folder(self, path: str) -> str:
        """A folder given on the command line as the steps name it: absolute, so that one inside
        the work folder is recorded as ``{work}/...`` whichever folder the run starts from."""
        return os.path.abspath(path)

    def portable(self, argv) -> list:
        """A command as its record keeps it: the work folder as ``{work}`` and trime's user dir
        as ``{user_dir}``, so that a moved work folder or checkout still resumes and results/
        holds no path of this machine (older records with absolute paths read the same)."""
        import trime

        words, after_user_dir = [], False
        for word in argv:
            word = USER_DIR_WORD if after_user_dir or word == trime.USER_DIR else self.portable_value(word)
            words.append(word)
            after_user_dir = word == "--user-dir"
        return words

    def portable_value(self, value):
        """``value`` (nested lists, tuples and dicts) with every path in the work folder written
        as ``{work}/...`` (a table's rows name datastores and checkpoints)."""
        if isinstance(value, str):
            return WORK_WORD + value[len(self.work):] if (
                value == self.work or value.startswith(self.work + os.sep)) else value
        if isinstance(value, dict):
            return {key: self.portable_value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.portable_value(item) for item in value]
        return value

    def run_many(self, steps, jobs: int = None) -> list:
        """Run steps, ``jobs`` (default: the runner's) at a time; the records in order. A step is
        (name, argv) or (name, argv, dict of ``run``'s other arguments). A failed step does not
        stop the others; the first failure is raised once all have ended."""
        steps = [(step[0], step[1], step[2] if len(step) > 2 else {}) for step in steps]
        jobs = self.jobs if jobs is None else jobs
        if jobs == 1 or len(steps) < 2 or self.in_process:
            return [self.run(name, argv, **options) for name, argv, options in steps]
        from concurrent.futures import ThreadPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(self.run, name, argv, **{"threads": threads, **options})
                       for name, argv, options in steps]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    def run(self, name: str, argv, done_if=(), threads: int = None, note: str = None,
            env: dict = None) -> dict:
        """Run ``argv`` (a console script and its arguments) as step ``name`` unless its record
        says it finished with this very command. ``done_if``: files whose existence means the
        step finished (e.g. a datastore renamed into place just before an interruption).
        ``note``: what the step costs (disk, memory, GPU-hours), printed by a dry run; ``env``:
        variables of its subprocess (e.g. CUDA_VISIBLE_DEVICES). Returns the record: command,
        done, seconds (all attempts of an interrupted step together), log (every attempt's, in
        order), and for a resumed step its attempts."""
        argv = [str(a) for a in argv]
        record_path = self.path("steps", f"{name}.json")
        record = {"command": self.portable(argv), "done": False}
        if os.path.exists(record_path):
            with open(record_path) as f:
                previous = json.load(f)
            if self.portable(previous["command"]) != record["command"]:
                raise StepMismatch(
                    f"step {name!r} in {self.work} was run with other options:\n  before: "
                    f"{shlex.join(previous['command'])}\n  now:    {shlex.join(record['command'])}"
                    f"\nIts outputs (e.g. a checkpoint) belong to the old options: use another "
                    f"--work folder, or delete {record_path} and the step's outputs to redo it.")
            record = dict(previous, command=record["command"])
        if record["done"] and done_if and not all(os.path.exists(p) for p in done_if):
            # its outputs were removed since (e.g. a datastore not kept with the records): redo it
            self.echo(f"== {name}: done before, but {', '.join(p for p in done_if if not os.path.exists(p))}"
                      " is gone: run again")
            record = {"command": record["command"], "done": False}  # a new run, not a resumed one
        if not record["done"] and done_if and all(os.path.exists(p) for p in done_if):
            record.update(done=True, seconds=record.get("seconds", 0.0))
            _write_json(record_path, record)
        if record["done"]:
            self.echo(f"== {name}: done ({record['seconds']:.0f} s), skipped")
            self.records[name] = record
            return record
        log = self.path("logs", f"{name}.log")
        if "started" in record and os.path.exists(log):
            # an interrupted attempt (e.g. a training resumed from checkpoint_last.pt): its time is
            # counted up to its log's last write, and its log is kept above this attempt's
            record["earlier_seconds"] = round(record.get("earlier_seconds", 0.0) + max(
                0.0, os.path.getmtime(log) - record["started"]), 1)
            with open(log, "a") as out:
                out.write(f"\n== {name}: attempt {record.get('attempts', 1) + 1}, resumed "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n")
            record["attempts"] = record.get("attempts", 1) + 1
        else:
            open(log, "w").close()
        started = record["started"] = time.time()
        _write_json(record_path, record)  # started: a rerun must use the same command
        self.echo(f"== {name}: {shlex.join(argv)}  (log: {log})")
        if self.in_process:
            code = run_in_process(argv, log)
        else:
            variables = dict(env or {})
            if threads is not None:
                variables.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            with open(log, "a") as out:
                code = subprocess.run([console_script(argv[0]), *argv[1:]], stdout=out,
                                      stderr=subprocess.STDOUT,
                                      env=dict(os.environ, **variables) if variables else None).returncode
        if code != 0:
            with open(log) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"step {name!r} failed (exit {code}); rerun to resume. Log {log}:\n{tail}")
        # seconds: every attempt's, the interrupted ones up to their log's last write
        record.update(done=True, seconds=round(time.time() - started + record.get("earlier_seconds", 0.0), 1),
                      log=self.portable_value(log))
        _write_json(record_path, record)
        self.records[name] = record
        return record

    def log_text(self, name: str) -> str:
        with open(self.path("logs", f"{name}.log")) as f:  # where run() writes it (any record's "log")
            return f.read()


class DryRun(Runner):
    """The steps a run would take, printed as shell lines (each step's note as a comment before
    it), nothing run or written; paths are the work folder as given. Steps that a real run would
    read the outputs of (tuning, scores) are the callers' to stand in for (``dry_run``)."""

    dry_run = True

    def __init__(self, work: str, echo=print, user_dir: str = None):
        self.work, self.echo, self.in_process, self.jobs = work, echo, False, 1
        self.user_dir = user_dir
        self.records, self.lines = {}, []

    def _shell(self, argv) -> str:
        return " ".join('"$(trime-user-dir)"' if word == self.user_dir else
                        word if word.startswith("$(cat ") else shlex.quote(word) for word in argv)

    def run(self, name: str, argv, done_if=(), threads: int = None, note: str = None,
            env: dict = None) -> dict:
        argv = [str(a) for a in argv]
        self._print(f"# {name}" + (f": {note}" if note else ""))
        prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
        self._print(prefix + self._shell(argv) + (" &" if self._in_wave else ""))
        self.records[name] = {"command": argv, "done": False, "dry_run": True}
        return self.records[name]

    def folder(self, path: str) -> str:
        return path  # printed as given, as the work folder is

    _in_wave = False

    def run_many(self, steps, jobs: int = None) -> list:
        """Steps a real run starts side by side (``jobs`` > 1): each line ends with ``&``, then
        ``wait``."""
        jobs = self.jobs if jobs is None else jobs
        self._in_wave = jobs > 1 and len(steps) > 1
        try:
            records = [self.run(step[0], step[1], **(step[2] if len(step) > 2 else {}))
                       for step in steps]
        finally:
            if self._in_wave:
                self._print("wait")
            self._in_wave = False
        return records

    def _print(self, line: str):
        self.lines.append(line)
        self.echo(line)
