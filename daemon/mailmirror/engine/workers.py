"""The folders of one pass over several connection pairs: a queue of tasks (plan a folder, copy a run of
its messages, finish it) taken by workers, each with one session per side, and the retries with backoff
after a throttling answer or a cut connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from mailmirror.engine.transfer import backoff_delay, bound_heap, split_evenly
from mailmirror.errors import ConnectionFailure, ServerRefused, Stopped
from mailmirror.imap.types import FolderMissing, FolderVanished

if TYPE_CHECKING:
    from mailmirror.engine.context import PassContext
    from mailmirror.engine.folder_pass import FolderPass
    from mailmirror.engine.planner import Copy
    from mailmirror.imap.interface import ImapSession

log = logging.getLogger(__name__)


class ExtraConnections(Protocol):
    """Connection slots beyond a pass's first connection per side (the daemon's limits): taken without
    waiting, so that passes never wait on each other for them."""

    def try_acquire(self) -> bool: ...
    def release(self) -> None: ...


class Worker:
    """One connection per side. Worker 0 starts with the pass's sessions; the others log in on their
    first task. After a cut connection or a throttling answer a worker logs in again on its next task."""

    def __init__(
        self, ctx: PassContext, index: int, source: ImapSession | None = None, destination: ImapSession | None = None
    ) -> None:
        self.ctx = ctx
        self.index = index
        self.source = source
        self.destination = destination

    def sessions(self) -> tuple[ImapSession, ImapSession]:
        pair = self.ctx.pair
        if self.source is None:
            self.source = self.ctx.connect(pair.source, self.ctx.source_account)
            self.source.enable_condstore()
        if self.destination is None:
            self.destination = self.ctx.connect(pair.destination, self.ctx.destination_account)
            self.destination.enable_condstore()
        return self.source, self.destination

    def close(self) -> None:
        for session in (self.source, self.destination):
            if session is not None:
                session.close()
        self.source = self.destination = None


@dataclass
class FolderJob:
    """One folder in the queue, with its retry bookkeeping (changed under the queue's condition)."""

    folder: FolderPass
    outstanding: int = 0  # copy runs queued or in flight
    attempts: int = 0  # retries after throttling / cut connections
    resume_after: float = 0.0  # time.monotonic() before which the folder's next try waits (backoff)
    interrupted: bool = False  # a copy run was cut: resume the rest once the journal is resolved


TaskKind = Literal["finish", "copy", "plan"]
_PRIORITY: dict[str, int] = {"finish": 0, "copy": 1, "plan": 2}


@dataclass
class Task:
    kind: TaskKind
    job: FolderJob
    copies: list[Copy] = field(default_factory=list)
    not_before: float = 0.0
    seq: int = 0


class Transfer:
    """The folders of one pass over `workers` connection pairs.

    Tasks: *plan* a folder (list, plan, flags, adoptions), *copy* a run of its messages (a large folder's
    copies are split into UID ranges for several workers), *finish* it (resolve unconfirmed appends,
    deletions, save the markers) once its last copy task is done. Finishing goes first, then copying,
    then planning more folders, so that a folder's plan is not held longer than needed.

    A throttling answer or a cut connection interrupts the task: the worker logs out, and the task (or,
    for a copy, the folder's remaining messages, once none of its copies is in flight and its journal
    is resolved) is retried after an exponential backoff, up to transfer.retries times per folder.
    """

    def __init__(self, ctx: PassContext, first: Worker, wanted: int, slots: ExtraConnections | None) -> None:
        self.ctx = ctx
        self.first = first
        self.wanted = wanted  # workers (connection pairs) to use, the first one included
        self.slots = slots
        self.workers = 1
        self.cond = threading.Condition()
        self.tasks: list[Task] = []
        self.running = 0
        self.seq = 0
        self.failure: BaseException | None = None

    def run(self, folders: Sequence[FolderPass]) -> None:
        if not folders:
            return
        bound_heap()
        for folder in folders:
            self.put(Task("plan", FolderJob(folder)))
        extra: list[threading.Thread] = []
        taken = 0
        for index in range(1, self.wanted):
            if self.slots is not None:
                if not self.slots.try_acquire():
                    break
                taken += 1
            worker = Worker(self.ctx, index)
            thread = threading.Thread(
                target=self._work, args=(worker,), name=f"{self.ctx.name}-worker-{index}", daemon=True
            )
            extra.append(thread)
        self.workers = 1 + len(extra)
        try:
            for thread in extra:
                thread.start()
            self._work(self.first)
            for thread in extra:
                thread.join()
        finally:
            if self.slots is not None:
                for _ in range(taken):
                    self.slots.release()
        if self.failure is not None:
            raise self.failure

    # -- the queue -----------------------------------------------------------------------------------

    def put(self, task: Task) -> None:
        with self.cond:
            self.seq += 1
            task.seq = self.seq
            self.tasks.append(task)
            self.cond.notify_all()

    def _get(self) -> Task | None:
        with self.cond:
            while True:
                if self.failure is None and self.ctx.stop is not None and self.ctx.stop.is_set():
                    try:  # a stop request ends the pass also while tasks wait for their backoff
                        self.ctx.check_stop()
                    except Stopped as stopped:
                        self.failure = stopped
                        self.ctx.abort.set()
                        self.cond.notify_all()
                if self.failure is not None:
                    return None
                now = time.monotonic()
                due = [t for t in self.tasks if t.not_before <= now]
                if due:
                    task = min(due, key=lambda t: (_PRIORITY[t.kind], t.seq))
                    self.tasks.remove(task)
                    self.running += 1
                    return task
                if not self.tasks and self.running == 0:
                    self.cond.notify_all()
                    return None
                timeout = min(t.not_before for t in self.tasks) - now if self.tasks else 0.5
                self.cond.wait(min(timeout, 0.5))  # and look at the stop request twice a second

    def _done(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self.cond:
            if self.failure is None:
                self.failure = error
            self.ctx.abort.set()
            self.cond.notify_all()

    # -- the workers ---------------------------------------------------------------------------------

    def _work(self, worker: Worker) -> None:
        try:
            while (task := self._get()) is not None:
                try:
                    self._do(worker, task)
                except FolderVanished as error:  # not a network problem: that folder is gone, the others go on
                    worker.close()
                    self._folder_error(task, str(error))
                except ConnectionFailure as error:  # Throttled too: retried after a backoff
                    worker.close()
                    self._interrupted(task, error)
                except (ServerRefused, FolderMissing) as error:
                    self._folder_error(task, str(error))
                except BaseException as error:  # Stopped, a bug: the pass ends
                    self._fail(error)
                finally:
                    self._done()
        finally:
            if worker is not self.first:
                worker.close()

    def _do(self, worker: Worker, task: Task) -> None:
        job = task.job
        folder = job.folder
        if folder.report.error is not None and task.kind == "copy":
            self._copy_done(job)  # the folder failed meanwhile: its other copies are not attempted
            return
        source, destination = worker.sessions()
        self.ctx.check_stop()
        if task.kind == "plan":
            folder.bind(source, destination)
            copies = folder.prepare()
            if copies:
                self._put_copies(job, copies)
            else:
                self.put(Task("finish", job))
        elif task.kind == "copy":
            folder.copy_run(source, destination, task.copies)
            self._copy_done(job)
        else:
            folder.bind(source, destination)
            remaining = folder.finish(resume=job.interrupted)
            job.interrupted = False
            if remaining:
                self._put_copies(job, remaining)
            else:
                with self.ctx.lock:
                    self.ctx.progress.folder_finished(self.ctx.name, folder.report)

    def _put_copies(self, job: FolderJob, copies: list[Copy]) -> None:
        rules = self.ctx.pair.transfer
        if len(copies) > rules.split_above:
            runs = split_evenly(copies, self.wanted, max(1, rules.split_above // 2))
        else:
            runs = [copies]
        log.debug(
            "%s: %s: copying %d messages in %d runs", self.ctx.name, job.folder.mapping.source, len(copies), len(runs)
        )
        with self.cond:
            job.outstanding += len(runs)
        for run in runs:
            self.put(Task("copy", job, run))

    def _copy_done(self, job: FolderJob) -> None:
        with self.cond:
            job.outstanding -= 1
            last = job.outstanding == 0
        if last:  # after the backoff of any of its runs that was cut, not only of the last one
            self.put(Task("finish", job, not_before=job.resume_after))

    def _interrupted(self, task: Task, error: ConnectionFailure) -> None:
        job = task.job
        rules = self.ctx.pair.transfer
        with self.cond:
            now = time.monotonic()
            if now >= job.resume_after:  # workers of one folder cut by the same event count one retry
                job.attempts += 1
            attempts = job.attempts
            job.resume_after = max(job.resume_after, now + backoff_delay(attempts, rules.backoff.total_seconds()))
            delay = job.resume_after - now
        if attempts > rules.retries:
            if task.kind == "copy":
                job.interrupted = True
            self._fail(error)
            return
        log.warning(
            "%s: %s: %s; %s again in %.1fs (retry %d of %d)",
            self.ctx.name,
            job.folder.mapping.source,
            error,
            "resuming" if task.kind == "copy" else "trying",
            delay,
            attempts,
            rules.retries,
        )
        if task.kind == "copy":
            job.interrupted = True
            self._copy_done(job)
        else:
            task.not_before = job.resume_after
            self.put(task)

    def _folder_error(self, task: Task, error: str) -> None:
        folder = task.job.folder
        with self.ctx.lock:
            if folder.report.error is None:
                folder.report.error = error
        log.error("%s: folder %s: %s", self.ctx.name, folder.mapping.source, error)
        if task.kind == "copy":
            self._copy_done(task.job)  # its finish resolves what is in flight, keeps the old markers
        else:
            with self.ctx.lock:
                self.ctx.progress.folder_finished(self.ctx.name, folder.report)
